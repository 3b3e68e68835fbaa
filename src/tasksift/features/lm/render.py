"""Rendering examples for a causal LM: chat template -> text -> token ids + response mask."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...data.example import Example

#: Bumped whenever rendering or masking changes, so cached losses are recomputed.
RENDER_VERSION = "lm-render-v1"
#: Fallback rendering for models without a chat template.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
)


#: Status codes stored per row; 0 = scored.
STATUS_OK = 0
STATUS_REASONS = {
    1: "empty response",
    2: "longer than max_length (truncation disabled)",
    3: "no response token within max_length",
    4: "response not found in the rendered template",
    5: "no prompt (plain text has no unconditional loss)",
    6: "the chat template rejected the conversation",
}



def template_fingerprint(tokenizer) -> str:
    """Hash of the chat template (or of the fallback) plus the rendering version."""
    tpl = getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE
    if isinstance(tpl, dict):
        tpl = repr(sorted(tpl.items()))
    return RENDER_VERSION + ":" + hashlib.sha1(str(tpl).encode()).hexdigest()[:16]



@dataclass
class Rendered:
    """One tokenised example: ``ids`` and a bool ``mask`` (True = response token)."""

    ids: list[int]
    mask: list[bool]
    status: int = STATUS_OK
    truncated: bool = False
    n_full: int = 0     # token count before truncation


def padded_batch(rows: Sequence[Rendered], pad_id: int, device: Any):
    """``(ids, attention, response mask)`` tensors of ``rows``, right-padded with ``pad_id`` to
    the longest row, on ``device``."""
    import torch

    L = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    msk = torch.zeros((len(rows), L), dtype=torch.bool)
    for b, r in enumerate(rows):
        n = len(r.ids)
        ids[b, :n] = torch.tensor(r.ids, dtype=torch.long)
        att[b, :n] = 1
        msk[b, :n] = torch.tensor(r.mask, dtype=torch.bool)
    return ids.to(device), att.to(device), msk.to(device)


def _apply_template(tokenizer, messages: list[dict]) -> str:
    tpl = getattr(tokenizer, "chat_template", None)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                         **({} if tpl else {"chat_template": FALLBACK_TEMPLATE}))


def render_text(tokenizer, messages: Sequence[dict], *, force_template: bool = False) -> tuple[str, list[tuple[int, int]], bool]:
    """Render a conversation to text plus the character spans of its response.

    Returns ``(text, spans, plain)``. ``plain`` is True for plain text (a single assistant
    message and ``force_template`` False): the whole text is the response and no template is
    used. For chat, each assistant turn's span runs from its content to the end of the
    template's end-of-turn marker (trailing whitespace excluded).
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not force_template and len(messages) == 1 and messages[0]["role"] == "assistant":
        text = messages[0]["content"]
        return text, ([(0, len(text))] if text else []), True
    full = _apply_template(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        content = m["content"].strip()
        if not content:
            continue
        partial = full if i == len(messages) - 1 else _apply_template(tokenizer, messages[:i + 1])
        pos = partial.rfind(content)
        end = len(partial.rstrip())
        if pos >= cursor and full.startswith(partial[:end]):
            spans.append((pos, end))
            cursor = end
            continue
        pos = full.find(content, cursor)   # template not incremental: content only
        if pos >= 0:
            spans.append((pos, pos + len(content)))
            cursor = pos + len(content)
    return full, spans, False


def _mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    mask = [False] * len(offsets)
    if not spans:
        return mask
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        j = int(np.searchsorted(starts, b, side="left")) - 1   # last span starting before b
        if j >= 0 and ends[j] > a:
            mask[t] = True
    return mask


def _render_with_fallbacks(tokenizer, msgs: Sequence[dict], unconditional: bool):
    """render_text with fallbacks for strict templates; None if every attempt fails.

    Conditional: as is, then with system turns folded into the first user turn (templates
    without a system role). Unconditional: assistant turns alone, then the conversation with
    every non-assistant turn emptied (templates that insist on alternating roles)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
    if unconditional:
        tries = [[m for m in msgs if m["role"] == "assistant"],
                 [m if m["role"] == "assistant" else {"role": m["role"], "content": ""}
                  for m in msgs if m["role"] != "system"]]
    else:
        tries = [msgs]
        if any(m["role"] == "system" for m in msgs):
            sys_txt = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
            rest = [dict(m) for m in msgs if m["role"] != "system"]
            for m in rest:
                if m["role"] == "user":
                    m["content"] = sys_txt + "\n\n" + m["content"]
                    break
            tries.append(rest)
    for t in tries:
        try:
            return render_text(tokenizer, t, force_template=unconditional)
        except Exception:  # jinja TemplateError / raise_exception in the template
            continue
    return None


def _encode_with_masks(tokenizer, texts: Sequence[str], spans_list: Sequence[Sequence[tuple[int, int]]]):
    """Token ids and response masks of rendered texts: from character offsets with a fast
    tokenizer; with a slow one, by tokenising prompt and response pieces separately."""
    if not texts:
        return []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [(list(enc["input_ids"][j]), _mask_from_offsets(enc["offset_mapping"][j], spans_list[j]))
                for j in range(len(texts))]
    out = []
    for text, spans in zip(texts, spans_list):
        ids: list[int] = []
        mask: list[bool] = []
        cur = 0
        pieces = []
        for a, b in spans:
            pieces += [(text[cur:a], False), (text[a:b], True)]
            cur = b
        pieces.append((text[cur:], False))
        for piece, is_resp in pieces:
            if piece:
                t = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += t
                mask += [is_resp] * len(t)
        out.append((ids, mask))
    return out


def tokenize_examples(tokenizer, examples: Sequence[Example] | Sequence[Sequence[dict]], *, max_length: int,
                      truncation: bool = True, unconditional: bool = False) -> list[Rendered]:
    """Render and tokenise examples (or raw message lists) into ids + response masks.

    ``unconditional=True`` drops every non-assistant turn before rendering (the response
    alone, for IFD's ``L(A)``); plain-text rows then get status 5.
    """
    msgs_list = [ex.messages if isinstance(ex, Example) else list(ex) for ex in examples]
    texts: list[str] = []
    spans_list: list[list[tuple[int, int]]] = []
    plain_list: list[bool] = []
    status: list[int] = []
    for msgs in msgs_list:
        is_plain = len(msgs) == 1 and msgs[0]["role"] == "assistant"
        if unconditional and (is_plain or not any(m["role"] != "assistant" for m in msgs)):
            st, rendered = 5, None
        elif not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            st, rendered = 1, None
        else:
            rendered = _render_with_fallbacks(tokenizer, msgs, unconditional)
            st = 6 if rendered is None else (STATUS_OK if rendered[1] else 4)
        text, spans, plain = rendered if rendered is not None else ("", [], True)
        texts.append(text)
        spans_list.append(spans)
        plain_list.append(plain)
        status.append(st)
    bos = tokenizer.bos_token_id
    out: list[Rendered] = []
    todo = [i for i, s in enumerate(status) if s == STATUS_OK]
    by_pos = _encode_with_masks(tokenizer, [texts[i] for i in todo], [spans_list[i] for i in todo])
    by_pos = {i: by_pos[j] for j, i in enumerate(todo)}
    for i in range(len(msgs_list)):
        if status[i] != STATUS_OK:
            out.append(Rendered([], [], status[i]))
            continue
        ids, mask = by_pos[i]
        if plain_list[i] and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
            mask = [False] + mask
        r = Rendered(ids, mask, STATUS_OK, False, len(ids))
        if len(ids) > max_length:
            if not truncation:
                r = Rendered([], [], 2, False, len(ids))
            else:
                r.ids, r.mask, r.truncated = ids[:max_length], mask[:max_length], True
        if r.status == STATUS_OK and not any(r.mask[1:]):
            r = Rendered([], [], 3 if r.truncated else 4, r.truncated, r.n_full)
        out.append(r)
    return out

