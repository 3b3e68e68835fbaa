"""The survey's own efficiency and feasibility, beside tasksift's variants (:mod:`.metrics`).

Source: Liu et al., "Take the Essence and Discard the Dross: A Rethinking on Data Selection
for Fine-Tuning Large Language Models" (NAACL 2025, arXiv 2406.14115) and its TEDD-Ranker page
(github.com/tREeFrOGcoder/TEDD-Ranker, ``index.html``), which tabulate twelve methods.

* **Efficiency (survey)**: the signed distance of (SDF, PIR) from the line through
  Instruction-Mining (0.025, 1.400) and InstructionGPT-4 (0.058, 1.443); positive = above it.
  Here the distance is Euclidean in data units; the TEDD-Ranker page measures it on its chart's
  pixel scale, so its magnitudes differ from these (the sign is the same).
* **Feasibility (survey)**: simplicity penalty = 2 x LLMs trained + algorithm steps + 1 if not
  reproducible (the page caps more than 100 trained LLMs at a penalty of 200); flexibility
  penalty = 3 x model-dependent + 2 x dataset-dependent + 1 x GPT-dependent; each penalty is
  dense-ranked (1 = smallest), and the feasibility rank is the dense rank of simplicity rank +
  flexibility rank. Ranks are taken over the twelve published methods together with ours, so
  our methods land on the survey's map.

PIRs from different setups (other models, pools, benchmarks; the survey's come from GPT-4
win rates and leaderboards, mapped onto one scale) are only roughly comparable with ours.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .variants import method_parts

#: The survey's twelve published (SDF, PIR) points (TEDD-Ranker page, current version).
PUBLISHED_POINTS: dict[str, tuple[float, float]] = {
    "AlpaGasus": (0.173, 1.284), "Superfiltering": (0.05, 1.475), "InsTag": (0.02, 1.344),
    "DEITA": (0.1, 1.426), "InstructionGPT-4": (0.058, 1.443), "Nuggets": (0.145, 1.519),
    "IFD": (0.05, 1.747), "LESS": (0.05, 1.491), "Instruction-Mining": (0.025, 1.400),
    "SHED": (0.09, 1.460), "CaR": (0.0196, 1.343), "SelectIT": (0.2, 1.653),
}
#: The survey's reference line: through these two published methods.
REFERENCE = ("Instruction-Mining", "InstructionGPT-4")

#: The published feasibility inputs: (LLMs trained, steps, reproducible, model-dependent,
#: dataset-dependent, GPT-dependent). Superfiltering's LLM is half-counted on the page ("1*",
#: weight 1.5 instead of 2), written here as 0.75 LLMs.
PUBLISHED_FEASIBILITY: dict[str, tuple[float, int, bool, bool, bool, bool]] = {
    "AlpaGasus": (0, 2, False, False, False, True), "InsTag": (0, 3, False, False, False, True),
    "CaR": (0, 4, True, False, False, False), "Nuggets": (0, 4, True, False, False, False),
    "SelectIT": (0, 4, True, False, False, False), "Superfiltering": (0.75, 3, True, True, True, False),
    "IFD": (1, 3, True, True, True, False), "LESS": (1, 4, True, True, True, False),
    "DEITA": (2, 5, True, True, True, True), "InstructionGPT-4": (30, 4, True, True, False, True),
    "SHED": (500, 3, True, True, True, False), "Instruction-Mining": (129, 4, False, True, False, True),
}
#: trained-LLM counts above this get the page's fixed simplicity penalty
LLM_CAP, CAPPED_PENALTY = 100, 200.0


def reference_line() -> tuple[float, float]:
    """(intercept, slope) of the survey's line in (SDF, PIR)."""
    (x1, y1), (x2, y2) = PUBLISHED_POINTS[REFERENCE[0]], PUBLISHED_POINTS[REFERENCE[1]]
    slope = (y2 - y1) / (x2 - x1)
    return y1 - slope * x1, slope


def survey_efficiency(sdf_value: float, pir_value: float) -> float:
    """Signed Euclidean distance of (SDF, PIR) above the survey's reference line."""
    if sdf_value is None or pir_value is None or not (math.isfinite(sdf_value) and math.isfinite(pir_value)):
        return float("nan")
    a, b = reference_line()
    return (pir_value - (a + b * sdf_value)) / math.sqrt(1 + b * b)


def simplicity_penalty(llms_trained: float, steps: int, reproducible: bool) -> float:
    """2 x LLMs trained + steps + 1 if not reproducible (over 100 LLMs: 200, as on the page)."""
    if llms_trained > LLM_CAP:
        return CAPPED_PENALTY
    return 2.0 * llms_trained + steps + (0.0 if reproducible else 1.0)


def flexibility_penalty(model_dependent: bool, dataset_dependent: bool, gpt_dependent: bool) -> float:
    """3 x model-dependent + 2 x dataset-dependent + 1 x GPT-dependent."""
    return 3.0 * model_dependent + 2.0 * dataset_dependent + 1.0 * gpt_dependent


def _dense(values: Mapping[str, float]) -> dict[str, int]:
    uniq = sorted(set(values.values()))
    return {k: uniq.index(v) + 1 for k, v in values.items()}


def _traits_of(method: str, infos: Mapping[str, Any]) -> tuple[float, int, bool, bool, bool, bool] | None:
    """A method's (or a recipe's, parts summed / or-ed) survey traits from the registry."""
    got = [getattr(infos.get(p), "survey", None) for p in method_parts(method)]
    if not got or any(g is None for g in got):
        return None
    return (sum(g.llms_trained for g in got), sum(g.steps for g in got), all(g.reproducible for g in got),
            any(g.model_dependent for g in got), any(g.dataset_dependent for g in got),
            any(g.gpt_dependent for g in got))


def survey_feasibility(methods: Sequence[str], infos: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Survey feasibility of ``methods`` (registry infos give their traits; a method without
    declared traits is left out) ranked together with the twelve published methods. Returns
    name -> penalties, ranks and ``published`` (True for the survey's own rows)."""
    traits: dict[str, tuple] = {}
    for m in methods:
        t = _traits_of(m, infos)
        if t is not None:
            traits[m] = t
    ours = set(traits)
    for m, t in PUBLISHED_FEASIBILITY.items():
        traits.setdefault(m if m not in ours else f"{m} (survey)", t)
    simp = {m: simplicity_penalty(t[0], t[1], t[2]) for m, t in traits.items()}
    flex = {m: flexibility_penalty(t[3], t[4], t[5]) for m, t in traits.items()}
    rs, rf = _dense(simp), _dense(flex)
    final = _dense({m: rs[m] + rf[m] for m in traits})
    return {m: {"llms_trained": t[0], "steps": t[1], "reproducible": t[2], "model_dependent": t[3],
                "dataset_dependent": t[4], "gpt_dependent": t[5], "simplicity_penalty": simp[m],
                "flexibility_penalty": flex[m], "simplicity_rank": rs[m], "flexibility_rank": rf[m],
                "feasibility_rank": final[m], "published": m not in ours}
            for m, t in traits.items()}
