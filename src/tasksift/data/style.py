"""Answer-style diagnostics of a set of responses (a selected subset, or the target examples).

* **Length**: words (whitespace-separated tokens) of the response (every assistant turn of a
  chat joined); mean and median.
* **Rationale-first** (a documented heuristic): the response *ends* with an explicit final-answer
  statement and at least :data:`MIN_RATIONALE_WORDS` words come before that statement.
  A final-answer statement is a marker from :data:`ANSWER_MARKER` ("the answer is",
  "answer:", "####", "so the final answer ...") found in the response's last line (or, in a
  one-line response, its last sentence). FLAN chain-of-thought rows ("<reasoning>\\nSo the
  answer is X.") and GSM8K worked solutions ("... #### 72") are rationale-first; a bare
  answer ("(B) bedroom") is not, and neither is a long free-form answer without a final-answer
  statement (an essay), which is why length alone is not used.
* **Bare share**: responses of fewer than :data:`MIN_RATIONALE_WORDS` words.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import numpy as np

#: words that must precede the final-answer statement for a response to count as rationale-first
MIN_RATIONALE_WORDS = 10
#: an explicit final-answer statement
ANSWER_MARKER = re.compile(r"####|\b(?:final\s+)?answer\s*(?:is|:|would be|=)", flags=re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def word_count(text: str) -> int:
    """Whitespace-separated words in ``text``."""
    return len((text or "").split())


def is_rationale_first(text: str, min_words: int = MIN_RATIONALE_WORDS) -> bool:
    """Whether ``text`` ends with a final-answer statement preceded by >= ``min_words`` words."""
    text = (text or "").strip()
    if not text:
        return False
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1]
    if len(lines) == 1:
        last = _SENTENCE.split(last)[-1]
    m = ANSWER_MARKER.search(last)
    if m is None:
        return False
    head = text[: text.rfind(last) + m.start()]      # everything before the marker
    return word_count(head) >= min_words


def answer_style(responses: Iterable[str]) -> dict[str, Any]:
    """``n``, ``words_mean``, ``words_median``, ``rationale_first_share`` and ``bare_share`` of
    the responses (None values for an empty set)."""
    rs = list(responses)
    if not rs:
        return {"n": 0, "words_mean": None, "words_median": None, "rationale_first_share": None,
                "bare_share": None}
    w = np.array([word_count(r) for r in rs], dtype=float)
    return {"n": len(rs), "words_mean": float(w.mean()), "words_median": float(np.median(w)),
            "rationale_first_share": float(np.mean([is_rationale_first(r) for r in rs])),
            "bare_share": float((w < MIN_RATIONALE_WORDS).mean())}


def example_responses(examples: Sequence[Any]) -> list[str]:
    """The response text of each :class:`~tasksift.data.example.Example`."""
    return [str(getattr(e, "response", "") or "") for e in examples]
