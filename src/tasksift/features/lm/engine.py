"""The loss engine: masked response losses (and pooled hidden states) of tokenised rows,
in token-budget batches, with the output layer run only where a response token is predicted."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .render import STATUS_OK, Rendered, padded_batch
from .threads import ThreadRetuner

#: Default padded tokens per forward batch ("auto" batch_tokens) on CPU and on GPU.
CPU_BATCH_TOKENS = 1024
GPU_BATCH_TOKENS = 16384
# rows per batch at most: on a GPU the token budget should bind, not the row count (SmolLM2 on an
# H200, 500 rows in bfloat16: 0.50 s with 64 rows per batch, 0.27 s with 512: launch-bound)
CPU_MAX_BATCH = 64
GPU_MAX_BATCH = 512


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int = 64) -> list[list[int]]:
    """Group row positions into batches, longest first, so that (rows x longest row) stays
    within ``batch_tokens`` (a row longer than that gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        L = max(1, lengths[i])
        new_max = max(cur_max, L)
        if cur and (new_max * (len(cur) + 1) > batch_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur, cur_max = [], 0
            new_max = L
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def shared_prefix_length(rows: Sequence[Rendered]) -> int:
    """Leading tokens that every row of ``rows`` shares and that predict no response token.

    The longest common prefix of the rows' ids, cut so that it ends before the token that
    precedes each row's first response token: position t predicts token t + 1, so with the
    prefix ``ids[:c]`` and ``c <= first_response - 1`` every counted prediction is made by a
    position of the row's own suffix ``ids[c:]``. 0 for an empty list or a row with no
    response token."""
    if not rows:
        return 0
    first = rows[0].ids
    c = min(len(r.ids) for r in rows)
    for r in rows[1:]:
        ids = r.ids
        j = 0
        while j < c and ids[j] == first[j]:
            j += 1
        c = j
    for r in rows:
        try:
            c = min(c, r.mask.index(True) - 1)
        except ValueError:
            return 0
    return max(0, c)


def cache_argument(decoder) -> str:
    """The name under which ``decoder.forward`` takes a key/value cache: ``cache`` from
    transformers 5.24 (where ``past_key_values`` is deprecated), ``past_key_values`` before."""
    import inspect

    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def decoder_and_head(model):
    """(decoder, lm_head) when the model's logits are a plain linear map of the decoder's last
    hidden state; None for models whose head needs more (then full logits are used)."""
    cfg = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        v = getattr(cfg, attr, None)
        if v not in (None, 1, 1.0, 0):
            return None
    try:
        dec = model.get_decoder()
        head = model.get_output_embeddings()
    except Exception:
        return None
    if dec is None or head is None or dec is model:
        return None
    return dec, head


def verified_decoder_and_head(model, ids, att):
    """``(decoder, output layer)`` for running the output layer on chosen positions only, when
    that gives the model's own logits; None when the full logits must be used.

    Two checks: the config has no logit scaling or soft-capping (:func:`decoder_and_head`),
    and on the probe batch ``ids``/``att`` the output layer applied to the decoder's last
    hidden state reproduces ``model(...).logits`` (to 1e-4 of the largest logit in float32,
    2e-2 in lower precision). The second catches heads that transform the hidden state in ways
    no config field announces. Used by the loss engine and the per-example gradients."""
    import torch

    dh = decoder_and_head(model)
    if dh is None:
        return None
    dec, head = dh
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=att).logits
        fast = head(dec(input_ids=ids, attention_mask=att).last_hidden_state)
    keep = att.bool()
    if fast.shape != full.shape:
        return None
    a, b = fast[keep].float(), full[keep].float()
    err = float((a - b).abs().max())
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    return dh if math.isfinite(err) and err <= tol * max(1.0, float(b.abs().max())) else None


class LossEngine:
    """Masked response losses (and optional mean-pooled hidden states) for a loaded model.

    Rows are sorted by length and grouped into token-budget batches with right padding, so a
    batch costs about ``batch_tokens`` tokens of compute; the vocabulary projection runs only
    on positions that predict a response token.
    """

    def __init__(self, model, tokenizer, *, batch_tokens: int | None = None, max_batch: int | None = None,
                 head_chunk: int = 2048) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if batch_tokens is None:
            # CPU: small batches stay in cache (measured on 2 cores: 1024 ~1.25x faster than
            # one row at a time, 4096 no faster, 16384 2x slower); GPU: big batches.
            batch_tokens = CPU_BATCH_TOKENS if self.device.type == "cpu" else GPU_BATCH_TOKENS
        self.batch_tokens = int(batch_tokens)
        if max_batch is None:
            max_batch = CPU_MAX_BATCH if self.device.type == "cpu" else GPU_MAX_BATCH
        self.max_batch = int(max_batch)
        self.head_chunk = int(head_chunk)
        self._fast = None          # the output-layer shortcut, verified on the first row scored
        self._checked = False
        #: re-choose the CPU thread count every 30 s of scoring (see set_cpu_threads)
        self._retuner = ThreadRetuner(30.0, cpu=self.device.type == "cpu")
        self._retuner.last = 0.0                 # the first batch chooses
        #: shared-prefix scoring (:meth:`score_groups`): None until checked against plain scoring
        self._prefix_ok: bool | None = None

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _batch_tensors(self, rows: Sequence[Rendered]):
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return padded_batch(rows, pad, self.device)

    def _forward(self, ids, att, msk, want_embed: bool, fast: bool):
        """Per-row (sum of NLL, count) and optional pooled hidden state, for one batch."""
        import torch
        import torch.nn.functional as F

        pred = msk[:, 1:] & att[:, 1:].bool()           # positions t predicting token t+1
        if fast and self._fast is not None:
            hidden = self._fast[0](input_ids=ids, attention_mask=att).last_hidden_state
            sums = self._head_nll_sums(hidden, ids, pred)
        else:
            out = self.model(input_ids=ids, attention_mask=att, output_hidden_states=want_embed)
            nll = F.cross_entropy(out.logits[:, :-1][pred].float(), ids[:, 1:][pred], reduction="none")
            rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(pred)[pred]
            sums = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
            sums.index_add_(0, rows, nll.double())
            hidden = out.hidden_states[-1] if want_embed else None
        counts = pred.sum(dim=1)
        emb = None
        if want_embed:
            a = att.unsqueeze(-1).to(hidden.dtype)
            emb = ((hidden * a).sum(1) / a.sum(1).clamp(min=1)).float()
        return sums, counts, emb

    def _retune_threads(self) -> None:
        self._retuner()

    def _forward_shared(self, groups: Sequence[Sequence[Rendered]], cuts: Sequence[int]):
        """Per-row (sum of NLL, count) for groups of rows that share their first ``cuts[q]``
        tokens: the prefixes run once per group (right-padded), their key/value cache is
        repeated for each row of the group, and the rows' suffixes run on it."""
        import torch

        dec = self._fast[0]
        dev = self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        P = max(cuts)
        pids = torch.full((len(groups), P), pad, dtype=torch.long)
        patt = torch.zeros((len(groups), P), dtype=torch.long)
        for q, (rows, c) in enumerate(zip(groups, cuts)):
            pids[q, :c] = torch.tensor(rows[0].ids[:c], dtype=torch.long)
            patt[q, :c] = 1
        pids, patt = pids.to(dev), patt.to(dev)
        out = dec(input_ids=pids, attention_mask=patt, use_cache=True)
        cache = out.get("cache", None) or out.get("past_key_values", None)   # transformers >= 5.24 / older
        owner = torch.tensor([q for q, rows in enumerate(groups) for _ in rows], dtype=torch.long, device=dev)
        cache.reorder_cache(owner)                    # one cache row per suffix row
        suffix = [Rendered(ids=r.ids[c:], mask=r.mask[c:]) for rows, c in zip(groups, cuts) for r in rows]
        sids, satt, smsk = padded_batch(suffix, pad, dev)
        start = torch.tensor([c for rows, c in zip(groups, cuts) for _ in rows], dtype=torch.long, device=dev)
        pos = start[:, None] + torch.arange(sids.shape[1], device=dev)[None, :]
        hidden = dec(input_ids=sids, attention_mask=torch.cat([patt[owner], satt], dim=1), position_ids=pos,
                     use_cache=True, **{cache_argument(dec): cache}).last_hidden_state
        pred = smsk[:, 1:] & satt[:, 1:].bool()
        return self._head_nll_sums(hidden, sids, pred).cpu().numpy(), pred.sum(dim=1).cpu().numpy()

    def _head_nll_sums(self, hidden, ids, pred):
        """Per-row float64 sum of the NLL of ``ids[:, 1:]`` where ``pred`` is set, with the output
        layer (the verified shortcut) run on those positions only, ``head_chunk`` at a time."""
        import torch
        import torch.nn.functional as F

        head = self._fast[1]
        targets = ids[:, 1:][pred]
        h = hidden[:, :-1][pred]
        nll = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], self.head_chunk):
            logits = head(h[s:s + self.head_chunk]).float()
            nll[s:s + self.head_chunk] = F.cross_entropy(logits, targets[s:s + self.head_chunk], reduction="none")
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(pred)[pred]
        sums = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
        sums.index_add_(0, rows, nll.double())
        return sums

    def score_groups(self, rendered: Sequence[Rendered], groups: Sequence[Sequence[int]], *,
                     min_prefix: int = 8, on_batch: Callable[[int, int], None] | None = None,
                     ) -> dict[str, np.ndarray]:
        """:meth:`score`'s losses, computing each group's shared prefix once.

        ``groups`` lists row positions whose rows begin with the same tokens (e.g. one
        multiple-choice question's options: the same prompt, different answers). A group whose
        rows share at least ``min_prefix`` tokens (:func:`shared_prefix_length`) runs that
        prefix once and its rows' suffixes on the prefix's key/value cache; other rows are
        scored as :meth:`score` does. The first shared group is also scored plainly, once per
        engine: if the two differ by more than the fast path's tolerance (1e-4 of the loss in
        float32, 2e-2 under autocast or in lower precision), or the model has no verified
        output-layer shortcut, every row is scored plainly. Results: ``loss`` and
        ``n_response_tokens`` as :meth:`score`; ``shared_rows``, how many rows used a shared prefix."""
        import torch

        n = len(rendered)
        ok = {i for i, r in enumerate(rendered) if r.status == STATUS_OK}
        if ok and not self._checked:
            self._self_check(min((rendered[i] for i in ok), key=lambda r: len(r.ids)))
        shared: list[tuple[list[int], int]] = []
        plain: list[int] = sorted(ok - {i for g in groups for i in g})
        for g in groups:
            members = [i for i in g if i in ok]
            c = shared_prefix_length([rendered[i] for i in members]) if len(members) > 1 else 0
            if self._fast is not None and self._prefix_ok is not False and c >= min_prefix:
                shared.append((members, c))
            else:
                plain.extend(members)
        loss = np.full(n, np.nan, dtype=np.float64)
        n_resp = np.zeros(n, dtype=np.int64)

        def put(pos: Sequence[int], sums, counts) -> None:
            for j, p in enumerate(pos):
                n_resp[p] = counts[j]
                loss[p] = sums[j] / counts[j] if counts[j] > 0 else np.nan

        def score_plain(pos: Sequence[int]) -> None:
            if pos:
                sub = self.score([rendered[p] for p in pos], on_batch=on_batch)
                loss[list(pos)], n_resp[list(pos)] = sub["loss"], sub["n_response_tokens"]

        n_shared = 0
        if shared and self._prefix_ok is None:
            members, c = shared[0]
            with torch.inference_mode():
                sums, counts = self._forward_shared([[rendered[i] for i in members]], [c])
            ref = self.score([rendered[i] for i in members])
            got = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            low = (torch.is_autocast_enabled(self.device.type)
                   or next(self.model.parameters()).dtype != torch.float32)
            tol = (2e-2 if low else 1e-4) * np.maximum(1.0, np.abs(ref["loss"]))
            same = np.array_equal(counts, ref["n_response_tokens"]) and bool(
                np.all((np.abs(got - ref["loss"]) <= tol) | (np.isnan(got) & np.isnan(ref["loss"]))))
            self._prefix_ok = same
            if same:                                  # the checked group keeps its shared-prefix result
                put(members, sums, counts)
                n_shared += len(members)
                if on_batch is not None:
                    on_batch(len(members), sum(len(rendered[i].ids) for i in members))
                shared = shared[1:]
            else:
                plain.extend(i for m, _ in shared for i in m)
                shared = []
        score_plain(sorted(plain))
        # pack groups longest prefix first, so that (groups x longest prefix + rows x longest suffix)
        # stays within the token budget
        shared.sort(key=lambda mc: -mc[1])
        with torch.inference_mode():
            s = 0
            while s < len(shared):
                e, P, S, R = s, 0, 0, 0
                while e < len(shared):
                    members, c = shared[e]
                    P2 = max(P, c)
                    S2 = max(S, max(len(rendered[i].ids) - c for i in members))
                    R2 = R + len(members)
                    if e > s and ((e + 1 - s) * P2 + R2 * S2 > self.batch_tokens or R2 > self.max_batch):
                        break
                    e, P, S, R = e + 1, P2, S2, R2
                self._retune_threads()
                batch = shared[s:e]
                sums, counts = self._forward_shared([[rendered[i] for i in m] for m, _ in batch], [c for _, c in batch])
                pos = [i for m, _ in batch for i in m]
                put(pos, sums, counts)
                n_shared += len(pos)
                if on_batch is not None:
                    on_batch(len(pos), sum(len(rendered[i].ids) for i in pos))
                s = e
        return {"loss": loss, "n_response_tokens": n_resp, "shared_rows": np.int64(n_shared)}

    def _self_check(self, row: Rendered) -> None:
        """Once per engine: the fast path (head on response positions only) must match the
        model's own logits (:func:`verified_decoder_and_head`); otherwise full logits."""
        ids, att, _ = self._batch_tensors([row])
        self._fast = verified_decoder_and_head(self.model, ids, att)
        self._checked = True

    def score(self, rendered: Sequence[Rendered], *, embed: bool = False,
              on_batch: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Loss per row (NaN where ``status != 0``), response-token counts and, with
        ``embed``, mean-pooled last hidden states. ``on_batch(n_rows, n_tokens)`` is called
        after every batch (progress)."""
        import torch

        n = len(rendered)
        loss = np.full(n, np.nan, dtype=np.float64)
        n_resp = np.zeros(n, dtype=np.int64)
        emb_out: np.ndarray | None = None
        ok = [i for i, r in enumerate(rendered) if r.status == STATUS_OK]
        if not ok:
            hidden = getattr(self.model.config, "hidden_size", 0)
            res = {"loss": loss, "n_response_tokens": n_resp}
            if embed:
                res["embedding"] = np.full((n, hidden), np.nan, dtype=np.float32)
            return res
        if not self._checked:
            self._self_check(min((rendered[i] for i in ok), key=lambda r: len(r.ids)))
        batches = length_batches([len(rendered[i].ids) for i in ok], self.batch_tokens, self.max_batch)
        with torch.inference_mode():
            for b in batches:
                self._retune_threads()
                pos = [ok[j] for j in b]
                ids, att, msk = self._batch_tensors([rendered[p] for p in pos])
                sums, counts, emb = self._forward(ids, att, msk, embed, True)
                sums, counts = sums.cpu().numpy(), counts.cpu().numpy()
                for j, p in enumerate(pos):
                    n_resp[p] = counts[j]
                    loss[p] = sums[j] / counts[j] if counts[j] > 0 else np.nan
                if embed:
                    e = emb.cpu().numpy()
                    if emb_out is None:
                        emb_out = np.full((n, e.shape[1]), np.nan, dtype=np.float32)
                    emb_out[pos] = e
                if on_batch is not None:
                    on_batch(len(pos), int(att.sum()))
        res = {"loss": loss, "n_response_tokens": n_resp}
        if embed:
            res["embedding"] = emb_out
        return res

