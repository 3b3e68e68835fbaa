"""Scoring a (fine-tuned) model on held-out test items.

* ``loss``: mean NLL (nats/token) of each item's gold answer *as the target examples write it*
  (GSM8K: the worked solution ending in ``#### N``) given its prompt, with the chat template
  and response masking of :mod:`tasksift.features.lm` (lower is better);
* ``loss_answer``: the same on the item's bare final answer (``TestItem.bare_answer``, GSM8K:
  the number alone); NaN, so left out of the scores, for tasks without a separate one;
* ``mc``: multiple choice by log-likelihood: the option with the lowest mean NLL per token
  (length-normalised, so long options are not penalised) is the prediction; accuracy;
* ``em``: exact match after greedy generation, with a task-specific answer extractor.

Extractors (pure functions, see :data:`EXTRACTORS`): ``gsm8k`` (number after ``####``,
else after "the answer is", else the last number), ``last_number``, ``bbh`` (an ``(X)``
option or the first word/line), ``mc_letter`` (an ``(X)`` option or a lone capital letter),
``yesno`` and ``exact`` (first line, stripped).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from ..data.example import Example
from .tasks import TestItem

HIGHER_IS_BETTER = {"loss": False, "loss_answer": False, "mc": True, "em": True}
#: per-item score arrays the scorers produce (stored per item in results.jsonl)
ITEM_SCORERS = tuple(HIGHER_IS_BETTER)

_NUM = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _clean_number(s: str) -> str:
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f.is_integer() else f"{f:g}"


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` (commas and ``$`` removed, ``18.0`` -> ``18``)."""
    nums = _NUM.findall(text or "")
    return _clean_number(nums[-1]) if nums else None


def extract_gsm8k(text: str) -> str | None:
    """GSM8K: the number after ``####``; else after "the answer is"; else the last number."""
    text = text or ""
    if "####" in text:
        m = _NUM.search(text.rsplit("####", 1)[1])
        if m:
            return _clean_number(m.group())
    m = re.search(r"answer is[:\s]*(-?\$?\d[\d,]*(?:\.\d+)?)", text, flags=re.I)
    if m:
        return _clean_number(m.group(1))
    return extract_last_number(text)


def extract_mc_letter(text: str) -> str | None:
    """``(B)`` from "... the answer is (B) bank", or from a lone capital letter ("B", "B.")."""
    text = text or ""
    m = re.search(r"answer is:?\s*\(?([A-Z])\)", text)
    if m:
        return f"({m.group(1)})"
    found = _LETTER_OPT.findall(text)
    if found:
        return f"({found[0]})"
    m = re.match(r"\s*([A-Z])(?:[.):\s]|$)", text)
    return f"({m.group(1)})" if m else None


_LETTER_OPT = re.compile(r"\(([A-Z])\)")


def extract_bbh(text: str) -> str | None:
    """BBH: an ``(X)`` option if present (after "the answer is" when given), else the text
    after "the answer is", else the first line; trailing punctuation removed."""
    text = (text or "").strip()
    m = re.search(r"answer is:?\s*(.+)", text, flags=re.I)
    tail = m.group(1) if m else text
    opt = _LETTER_OPT.search(tail)
    if opt:
        return f"({opt.group(1)})"
    first = tail.strip().splitlines()[0] if tail.strip() else ""
    return first.strip().rstrip(".").strip() or None


def extract_yesno(text: str) -> str | None:
    """``Yes``/``No`` from the first yes/no word (case-insensitive)."""
    m = re.search(r"\b(yes|no)\b", text or "", flags=re.I)
    return m.group(1).capitalize() if m else None


def extract_exact(text: str) -> str | None:
    """The first non-empty line, stripped."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "gsm8k": extract_gsm8k, "last_number": extract_last_number, "bbh": extract_bbh,
    "mc_letter": extract_mc_letter, "yesno": extract_yesno, "exact": extract_exact,
}


def answers_match(pred: str | None, gold: str, extractor: str) -> bool:
    """Compare an extracted answer with the gold one (numbers numerically, text case-folded)."""
    if pred is None:
        return False
    if extractor in ("gsm8k", "last_number"):
        return _clean_number(pred) == _clean_number(gold)
    norm = lambda s: " ".join(s.strip().rstrip(".").split()).casefold()  # noqa: E731
    return norm(pred) == norm(gold)


def score_em_text(output: str, item: TestItem) -> bool:
    """Whether a generated ``output`` answers ``item`` correctly."""
    fn = EXTRACTORS.get(item.extractor, extract_exact)
    return answers_match(fn(output), item.gold, item.extractor)


#: scorers computed from (prompt, answer) log-likelihoods, in one pass (:meth:`ModelScorer.pair_scores`)
PAIR_SCORERS = ("loss", "loss_answer", "mc")


def _add_pair(pairs: list[tuple[str, str]], mine: dict[str, int], prompt: str, answer: str) -> int:
    """Position of (prompt, answer) in ``pairs``, appended unless this item already has it."""
    if answer not in mine:
        mine[answer] = len(pairs)
        pairs.append((prompt, answer))
    return mine[answer]


def _pair(prompt: str, answer: str, i: int) -> Example:
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                   raw={}, row=i, layout="messages")


class ModelScorer:
    """Scores one loaded model (plain or with a LoRA adapter) on test items."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 1024, batch_tokens: int = 4096,
                 max_new_tokens: int = 256, gen_batch_size: int = 8, progress: bool = False,
                 dtype: str = "float32") -> None:
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"scoring dtype must be float32 or bfloat16, got {dtype!r}")
        self.model, self.tok = model, tokenizer
        self.max_length, self.batch_tokens = int(max_length), int(batch_tokens)
        self.max_new_tokens, self.gen_batch_size = int(max_new_tokens), int(gen_batch_size)
        self.progress, self.dtype = bool(progress), dtype

    def _autocast(self):
        """bfloat16 autocast when ``dtype`` asks for it (float32 weights kept), else a no-op."""
        import torch

        dev = next(self.model.parameters()).device.type
        return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")

    def _bar(self, total: int, desc: str, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True, leave=False)

    def pair_losses(self, pairs: Sequence[tuple[str, str]], desc: str = "scoring",
                    groups: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean response NLL and response-token count of each (prompt, answer) pair
        (a progress bar per batch with ``progress``). ``groups``: positions of pairs with the
        same prompt, whose rendered prompt then runs once per group
        (:meth:`~tasksift.features.lm.LossEngine.score_groups`; the same losses to 1e-4)."""
        from ..features.lm import LossEngine, tokenize_examples

        exs = [_pair(p, a, i) for i, (p, a) in enumerate(pairs)]
        rendered = tokenize_examples(self.tok, exs, max_length=self.max_length, truncation=True)
        with self._bar(len(rendered), desc, "row") as bar, self._autocast():
            engine = LossEngine(self.model, self.tok, batch_tokens=self.batch_tokens)
            on_batch = lambda n_rows, n_tokens: bar.update(n_rows)  # noqa: E731
            res = (engine.score_groups(rendered, groups, on_batch=on_batch) if groups
                   else engine.score(rendered, on_batch=on_batch))
        return res["loss"], res["n_response_tokens"]

    def pair_scores(self, items: Sequence[TestItem], scorers: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-item arrays of the likelihood scorers among ``scorers`` (``loss``, ``loss_answer``,
        ``mc``), from one pass over every (prompt, answer) pair they need.

        An item's pairs (its gold answer, its bare answer, its options) share its prompt, which
        runs once per item (:meth:`pair_losses` with ``groups``); a pair two scorers need (the
        gold answer is usually one of the options) is scored once."""
        wanted = [sc for sc in PAIR_SCORERS if sc in scorers]
        pairs: list[tuple[str, str]] = []
        groups: list[list[int]] = []
        at = {sc: [None] * len(items) for sc in wanted}
        for j, t in enumerate(items):
            mine: dict[str, int] = {}          # this item's answers -> their pair positions
            if "loss" in at:
                at["loss"][j] = _add_pair(pairs, mine, t.prompt, t.answer)
            if "loss_answer" in at and t.bare_answer:
                at["loss_answer"][j] = _add_pair(pairs, mine, t.prompt, str(t.bare_answer))
            if "mc" in at and t.choices and t.label is not None:
                at["mc"][j] = [_add_pair(pairs, mine, t.prompt, c) for c in t.choices]
            if mine:
                groups.append(sorted(mine.values()))
        out = {sc: np.full(len(items), np.nan) for sc in wanted}
        if not pairs:
            return out
        loss, _ = self.pair_losses(pairs, desc=f"{' + '.join(wanted)} ({len(pairs)} answers)", groups=groups)
        for j, t in enumerate(items):
            for sc in ("loss", "loss_answer"):
                if sc in at and at[sc][j] is not None:
                    out[sc][j] = loss[at[sc][j]]
            if "mc" in at and at["mc"][j] is not None:
                ls = loss[at["mc"][j]]
                if np.isfinite(ls).any():
                    out["mc"][j] = float(int(np.nanargmin(ls)) == int(t.label))
        return out

    def loss(self, items: Sequence[TestItem]) -> np.ndarray:
        """Per-item mean NLL of the gold answer as the target examples write it (NaN where unscorable)."""
        return self.pair_scores(items, ["loss"])["loss"]

    def loss_answer(self, items: Sequence[TestItem]) -> np.ndarray:
        """Per-item mean NLL of the bare final answer (NaN for items without one)."""
        return self.pair_scores(items, ["loss_answer"])["loss_answer"]

    def mc(self, items: Sequence[TestItem]) -> np.ndarray:
        """Per-item 1.0/0.0 correctness by lowest mean option NLL (NaN: item has no options)."""
        return self.pair_scores(items, ["mc"])["mc"]

    def _chat_prompt(self, prompt: str) -> str:
        msgs = [{"role": "user", "content": prompt}]
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return f"User: {prompt}\n\nAssistant:"

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy completions of each prompt (chat template with a generation prompt)."""
        import torch

        from ..features.lm.threads import ThreadRetuner

        tok = self.tok
        dev = next(self.model.parameters()).device
        side = tok.padding_side
        tok.padding_side = "left"
        eos = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
               if isinstance(i, int) and i >= 0 and i != tok.unk_token_id]
        outs: list[str] = []
        try:
            order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
            res: dict[int, str] = {}
            bar = self._bar(len(prompts), "exact match (generation)", "item")
            retune = ThreadRetuner(60.0, cpu=dev.type == "cpu")   # a batch can take minutes on a CPU
            for s in range(0, len(order), self.gen_batch_size):
                retune()
                idx = order[s:s + self.gen_batch_size]
                texts = [self._chat_prompt(prompts[i]) for i in idx]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                          truncation=True, max_length=self.max_length)
                with torch.inference_mode(), self._autocast():
                    gen = self.model.generate(input_ids=enc["input_ids"].to(dev),
                                              attention_mask=enc["attention_mask"].to(dev),
                                              max_new_tokens=self.max_new_tokens, do_sample=False,
                                              pad_token_id=tok.pad_token_id, eos_token_id=eos or None)
                new = gen[:, enc["input_ids"].shape[1]:]
                for i, row in zip(idx, new):
                    res[i] = tok.decode(row, skip_special_tokens=True)
                bar.update(len(idx))
            bar.close()
            outs = [res[i] for i in range(len(prompts))]
        finally:
            tok.padding_side = side
        return outs

    def em(self, items: Sequence[TestItem]) -> tuple[np.ndarray, list[str]]:
        """Per-item exact match (1.0/0.0) after greedy generation, and the raw outputs."""
        outputs = self.generate([t.prompt for t in items])
        return np.array([float(score_em_text(o, t)) for o, t in zip(outputs, items)]), outputs

    def score(self, items: Sequence[TestItem], scorers: Sequence[str]) -> dict[str, Any]:
        """Per-item arrays for each scorer, plus ``em_outputs`` (first 20) when ``em`` ran."""
        out: dict[str, Any] = {}
        likelihood = self.pair_scores(items, scorers) if any(sc in PAIR_SCORERS for sc in scorers) else {}
        for s in scorers:
            if s in likelihood:
                out[s] = likelihood[s]
            elif s == "em":
                out["em"], gens = self.em(items)
                out["em_outputs"] = gens[:20]
        return out


def aggregate(items: Sequence[TestItem], per_item: dict[str, Any], scorers: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean per scorer and test set (``subtask``), plus ``all`` over every item.
    Scorers with no finite value on a test set (e.g. mc on a task without options) are left out."""
    subs = list(dict.fromkeys(t.subtask for t in items))
    sub_a = np.array([t.subtask for t in items])
    out: dict[str, dict[str, float]] = {}
    for s in scorers:
        if s not in per_item:
            continue
        v = np.asarray(per_item[s], dtype=float)
        d: dict[str, float] = {}
        for sub in subs:
            x = v[sub_a == sub]
            if np.isfinite(x).any():
                d[sub] = float(np.nanmean(x))
        if np.isfinite(v).any():
            d["all"] = float(np.nanmean(v))
        if d:
            out[s] = d
    return out
