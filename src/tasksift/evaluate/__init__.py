"""``tasksift evaluate``: a fair, reproducible comparison of selection methods.

Every method (and random at the same sizes, the base model, optionally the full pool) is run
at each budget and seed: select, fine-tune the same base model the same way (LoRA), score on
the target task's held-out test part, then report SDF, PIR, efficiency, feasibility, seed
noise and contamination in ``results.jsonl``, ``summary.json`` and ``report.html``.

Entry points: :func:`run_evaluation` (Python), ``tasksift evaluate RECIPE.yaml`` (CLI).
"""
from .config import EvalRecipe, load_recipe, recipe_from_dict
from .presets import preset_recipe
from .runner import Evaluation, run_evaluation

__all__ = ["EvalRecipe", "Evaluation", "load_recipe", "preset_recipe", "recipe_from_dict", "run_evaluation"]
