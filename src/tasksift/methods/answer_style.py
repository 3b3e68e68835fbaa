"""answer-style: a filter keeping the pool rows whose responses are written like the target's.

Similarity selectors (knn, tsds) match *what* a row is about; a row can be on the task and
still answer in another style. On CommonsenseQA, whose target answers are bare ("B. bookstore"),
tsds picked FLAN chain-of-thought rows ("<reasoning> So the answer is ..."), and the fine-tuned
model then found the bare gold answer less likely than after random rows (issue #18). Placed
before a selector (``answer-style -> tsds``), this filter restricts the candidates to rows whose
responses have the target's shape, measured with :mod:`tasksift.data.style`:

* **length band**: the response's word count lies in ``[p10 / length_factor, p90 * length_factor]``
  of the target responses' word counts (the upper end at least ``min_upper_words``, the lower
  end at least 1, so rows without a response never pass);
* **rationale** (``rationale=match``): if most target responses are rationale-first (a final
  answer statement after >= 10 words of reasoning, e.g. GSM8K worked solutions), only
  rationale-first rows are kept, otherwise only rows that are not; ``rationale=any`` skips this.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..data.style import is_rationale_first, word_count
from ..errors import ConfigError
from .base import SelectionContext
from .dedup import ORDER_OPTION, FilterMethod
from .params import Choices, Interval, Option
from .registry import register


def target_band(words: np.ndarray, length_factor: float, min_upper_words: int) -> tuple[int, int]:
    """(lowest, highest) response word count kept for target responses of ``words`` words."""
    lo = max(1, int(np.floor(np.percentile(words, 10) / length_factor)))
    hi = max(int(min_upper_words), int(np.ceil(np.percentile(words, 90) * length_factor)))
    return lo, hi


@register("answer-style", description="keep rows whose responses are written like the target's "
          "(length band, rationale-first or not); a filter, e.g. 'answer-style -> tsds'",
          needs=(), cost="cheap", stochastic=True, survey=dict(llms_trained=0, steps=2))
class AnswerStyleFilter(FilterMethod):
    parameters = {
        "length_factor": Option(3.0, "response word counts kept: [target p10 / f, target p90 * f]",
                                Interval(float, 1.0)),
        "min_upper_words": Option(12, "the band's upper end is at least this many words (bare-answer "
                                  "targets still admit a one-sentence answer)", Interval(int, 1)),
        "rationale": Option("match", "'match': rationale-first rows only if most target responses are, "
                            "else only rows that are not; 'any': the length band only", Choices("match", "any")),
        "order": ORDER_OPTION,
    }

    def keep_mask(self, ctx: SelectionContext) -> np.ndarray:
        """True for pool rows whose response lies in the target's length band (and style)."""
        c = self.config
        target = [str(getattr(t, "response", "") or "") for t in ctx.target]
        target = [t for t in target if t.strip()]
        if not target:
            raise ConfigError("answer-style needs target examples with responses (prompt/response pairs); "
                              "the target has none")
        t_words = np.array([word_count(t) for t in target], dtype=float)
        lo, hi = target_band(t_words, float(c["length_factor"]), int(c["min_upper_words"]))
        t_share = float(np.mean([is_rationale_first(t) for t in target]))
        want_rationale = None if c["rationale"] == "any" else t_share >= 0.5
        keep = np.zeros(len(ctx.pool), dtype=bool)
        start = 0
        for texts in ctx.pool.text_batches("response"):   # the conversations only, not the raw rows
            for j, resp in enumerate(texts):
                ok = lo <= word_count(resp) <= hi
                if ok and want_rationale is not None:
                    ok = is_rationale_first(resp) == want_rationale
                keep[start + j] = ok
            start += len(texts)
        info: dict[str, Any] = {"band_words": [lo, hi], "target_words_p10_p90":
                                [float(np.percentile(t_words, 10)), float(np.percentile(t_words, 90))],
                                "target_rationale_first_share": t_share,
                                "rationale": ("rationale-first only" if want_rationale else
                                              "not rationale-first" if want_rationale is False else "any")}
        self.last_info = info
        return keep
