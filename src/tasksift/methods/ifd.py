"""``ifd``: Instruction-Following Difficulty (Cherry LLM, Li et al. 2024).

    IFD = L(A | Q) / L(A)

with L the mean response-token NLL of the answer given the question (the chat rendered with
the model's template) and of the answer alone (the same assistant turns rendered without
any system/user turn). IFD > 1 means the question does not help predict the answer (the pair
is likely misaligned), so those rows are dropped (``max_ifd``, default 1.0, as in the paper);
the rest are ranked by IFD, highest first (the instruction matters most there).

Plain-text rows (no prompt) have no IFD and are counted as unscorable, never selected.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..features.lm import STATUS_OK, LMConfig, lm_losses, unscorable_summary
from ..features.lm_select import cache_dir_for, group_labels, select_top
from .base import MethodResult, SelectionContext, SelectionMethod
from .lm_options import GROUP_PARAMETERS, LM_PARAMETERS
from .params import Interval, Option
from .registry import register


def ifd_scores(cond_loss: np.ndarray, uncond_loss: np.ndarray) -> np.ndarray:
    """L(A|Q) / L(A); NaN where either is missing or L(A) <= 0."""
    c = np.asarray(cond_loss, dtype=np.float64)
    u = np.asarray(uncond_loss, dtype=np.float64)
    out = np.full(c.shape, np.nan)
    ok = np.isfinite(c) & np.isfinite(u) & (u > 0)
    out[ok] = c[ok] / u[ok]
    return out


@register("ifd", description="instruction-following difficulty L(A|Q)/L(A) (Cherry LLM), drop IFD > 1, top-k",
          needs=("lm",), cost="moderate", survey=dict(llms_trained=0, steps=3, model_dependent=True))
class IFDSelection(SelectionMethod):
    parameters = {**LM_PARAMETERS, **GROUP_PARAMETERS,
                  "max_ifd": Option(1.0, "rows with IFD above this are dropped (null: keep all)",
                                    Interval(float), None)}

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        c = self.config
        try:
            max_ifd = float(c["max_ifd"]) if c["max_ifd"] is not None else np.inf
        except (TypeError, ValueError):
            raise ConfigError(f"ifd option max_ifd must be a number or null, got {c['max_ifd']!r}") from None
        groups = group_labels(ctx.pool, c["group_by"])
        res = lm_losses(ctx, ctx.pool, LMConfig.from_options(c), unconditional=True, stage="lm_loss",
                        cache_dir=cache_dir_for(ctx, c))
        with ctx.timed("ifd_select"):
            scores = ifd_scores(res.loss, res.uncond_loss)
            status = np.where(res.status != STATUS_OK, res.status, res.uncond_status)
            scored = np.isfinite(scores)
            dropped = scored & (scores > max_ifd)
            idx, sel_info = select_top(scores, k, scored & ~dropped, groups, c["quotas"])
        info = {
            "score": "IFD = L(A|Q) / L(A) (mean response-token NLL with and without the prompt)",
            "max_ifd": None if not np.isfinite(max_ifd) else max_ifd,
            "dropped_ifd_above_max": int(dropped.sum()),
            "lm": {k2: v for k2, v in res.info.items() if k2 != "unscorable"},
            "unscorable": unscorable_summary(np.where(scored | (status != STATUS_OK), status, 4),
                                             examples=ctx.pool),
            "n_truncated": int(res.truncated.sum()),
            **sel_info,
        }
        return MethodResult(indices=idx, scores=scores, info=info,
                            columns={"ifd": scores, "loss_cond": res.loss, "loss_uncond": res.uncond_loss,
                                     "ifd_dropped": dropped})
