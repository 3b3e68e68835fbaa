"""``perplexity``: keep rows by the base model's response perplexity exp(L).

``keep="middle"`` (default) ranks rows by closeness of log-perplexity to the pool's median,
so the selection is a middle band (neither trivial nor noisy text); ``"low"`` keeps the most
predictable rows, ``"high"`` the least. ``low_quantile``/``high_quantile`` (optional) first
exclude rows outside that quantile band of the scored pool.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..features.lm import LMConfig, lm_losses
from ..features.lm_select import cache_dir_for, group_labels, select_top
from .base import MethodResult, SelectionContext, SelectionMethod
from .lm_options import GROUP_PARAMETERS, LM_PARAMETERS
from .params import Choices, Interval, Option
from .registry import register

KEEP_CHOICES = ("middle", "low", "high")


def perplexity_scores(loss: np.ndarray, keep: str) -> np.ndarray:
    """Higher = preferred, per ``keep``; NaN where the loss is missing."""
    loss = np.asarray(loss, dtype=np.float64)
    fin = np.isfinite(loss)
    out = np.full(loss.shape, np.nan)
    if not fin.any():
        return out
    if keep == "middle":
        out[fin] = -np.abs(loss[fin] - np.median(loss[fin]))
    elif keep == "low":
        out[fin] = -loss[fin]
    elif keep == "high":
        out[fin] = loss[fin]
    else:
        raise ConfigError(f"perplexity option keep must be one of {KEEP_CHOICES}, got {keep!r}")
    return out


@register("perplexity", description="response perplexity under the base LM: a middle band, or the lowest/highest",
          needs=("lm",), cost="moderate", survey=dict(llms_trained=0, steps=2, model_dependent=True))
class PerplexitySelection(SelectionMethod):
    parameters = {**LM_PARAMETERS, **GROUP_PARAMETERS,
                  "keep": Option("middle", "which perplexities rank first", Choices(*KEEP_CHOICES)),
                  "low_quantile": Option(None, "drop rows below this loss quantile", Interval(float, 0, 1), None),
                  "high_quantile": Option(None, "drop rows above this loss quantile", Interval(float, 0, 1), None)}

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        c = self.config
        if c["keep"] not in KEEP_CHOICES:
            raise ConfigError(f"perplexity option keep must be one of {KEEP_CHOICES}, got {c['keep']!r}")
        lo, hi = c["low_quantile"], c["high_quantile"]
        for name, v in (("low_quantile", lo), ("high_quantile", hi)):
            if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ConfigError(f"perplexity option {name} must be in [0, 1], got {v!r}")
        if lo is not None and hi is not None and lo >= hi:
            raise ConfigError(f"perplexity low_quantile ({lo}) must be below high_quantile ({hi})")
        groups = group_labels(ctx.pool, c["group_by"])
        res = lm_losses(ctx, ctx.pool, LMConfig.from_options(c), stage="lm_loss", cache_dir=cache_dir_for(ctx, c))
        with ctx.timed("perplexity_select"):
            scores = perplexity_scores(res.loss, c["keep"])
            scored = np.isfinite(scores)
            eligible = scored.copy()
            band = {}
            if scored.any() and (lo is not None or hi is not None):
                fin = res.loss[scored]
                if lo is not None:
                    band["low_loss"] = float(np.quantile(fin, lo))
                    eligible &= ~(res.loss < band["low_loss"])
                if hi is not None:
                    band["high_loss"] = float(np.quantile(fin, hi))
                    eligible &= ~(res.loss > band["high_loss"])
            idx, sel_info = select_top(scores, k, eligible, groups, c["quotas"])
        ppl = np.exp(res.loss)
        info = {
            "score": f"perplexity exp(mean response NLL), keep={c['keep']}",
            "lm": {k2: v for k2, v in res.info.items() if k2 != "unscorable"},
            "unscorable": res.info["unscorable"],
            "n_truncated": int(res.truncated.sum()),
            "outside_band": int((scored & ~eligible).sum()),
            **({"band_loss": band} if band else {}),
            **sel_info,
        }
        fin = ppl[np.isfinite(ppl)]
        if len(fin):
            info["perplexity_quantiles"] = {q: float(np.quantile(fin, float(q))) for q in ("0.1", "0.5", "0.9")}
        return MethodResult(indices=idx, scores=scores, info=info,
                            columns={"perplexity": ppl, "lm_loss": res.loss})
