"""The evaluation recipe: what ``tasksift evaluate RECIPE.yaml`` reads.

A recipe is a YAML mapping (every key optional except ``pool``, ``task`` and ``methods``)::

    name: commonsenseqa
    pool: ../shared/data/pool          # any input tasksift.select accepts (file or folder)
    pool_sample: 20000                 # optional: a seeded random sample of the pool rows
    pool_layout: auto                  # optional, as in `tasksift select --layout`
    task:                              # see tasksift.evaluate.tasks.load_task
      kind: csqa                       # gsm8k | bbh | csqa | xcopa | strategyqa | jsonl
      path: ../shared/data/targets/zscot_commonsenseqa
      n_target: 50                     # target examples given to the selectors
      n_test: 300                      # held-out gold-labelled test items (disjoint)
      seed: 0
    methods: [knn, "dedup -> knn",     # registered names or recipe strings; a trailing
              "knn [embed_text=prompt]"]  # [settings] makes an arm of other features (.variants)
    method_options: {knn: {k: 5}}      # per-method options (config= of tasksift.select)
    budgets: [0.01, 0.05]              # floats < 1 = ratios of the pool, ints = row counts
    seeds: [0, 1]
    full: false                        # also train on the whole pool
    base_model: default                # "default" (SmolLM2-135M-Instruct), hub id, path or .gguf
    gguf_file: null
    device: auto
    finetune: {steps: 60, lr: 2.0e-4, r: 8, alpha: 16, batch_size: 8, max_length: 512,
               gradient_checkpointing: false,   # true: less memory, ~1/3 more compute
               dtype: float32}                  # bfloat16: autocast (weights stay float32)
    scorers: [loss, mc, em]            # loss = target-test NLL of the gold answer as the target
                                       # examples write it, loss_answer = of the bare final answer
                                       # (GSM8K), mc = multiple choice, em = exact match
    primary_scorer: mc                 # the score PIR and efficiency use (default: first scorer)
    generation: {max_new_tokens: 256, batch_size: 8}
    contamination: {drop_contaminated: true, ngram: 5, near_threshold: 0.5, min_shared: 3,
                    char_ngram: 5, jaccard_threshold: 0.8}
    scoring: {max_length: 1024, batch_tokens: 4096, dtype: float32}
    embed_model: default               # sentence-transformers model for embedding methods
    embed_dtype: auto                  # as `tasksift select --embed-dtype` (auto: bfloat16 where the
                                       # CPU has it); float32 reproduces runs from before that option
    cache_dir: null                    # feature cache (default: <out>/cache)
    sweep: {lr: [1.0e-4, 2.0e-4, 5.0e-4], warmup_ratio: [0.0, 0.1],   # optional: choose the
            budget: 0.01, seeds: [0], n_val: 100, scorer: loss}      # finetune lr/warm-up (.sweep)

Relative paths are resolved against the current directory (run from the project root);
``random`` at every budget and the base model without fine-tuning are always evaluated.
Every arm gets the same fine-tuning: ``steps`` optimizer steps of ``batch_size`` rows (so the
compute is equal; an arm whose subset is smaller than steps x batch_size sees its rows more
than once, and ``full`` sees steps x batch_size rows of the pool). Give ``epochs`` instead of
``steps`` to train every arm for the same number of passes over its own subset.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .variants import split_arm

SCORERS = ("loss", "loss_answer", "mc", "em")
SWEEP_KEYS = ("lr", "warmup_ratio", "budget", "seeds", "n_val", "scorer")
DTYPES = ("float32", "bfloat16")
EMBED_DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")   # tasksift.features.embed_models.DTYPES
TASK_KINDS = ("gsm8k", "bbh", "csqa", "xcopa", "strategyqa", "jsonl")

FINETUNE_DEFAULTS: dict[str, Any] = {"steps": 60, "epochs": None, "lr": 2e-4, "r": 8, "alpha": 16,
                                     "dropout": 0.05, "batch_size": 8, "max_length": 512,
                                     "warmup_ratio": 0.03, "gradient_checkpointing": False, "dtype": "float32"}
GENERATION_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256, "batch_size": 8}
CONTAMINATION_DEFAULTS: dict[str, Any] = {"drop_contaminated": False, "ngram": 5, "near_threshold": 0.5,
                                          "char_ngram": 5, "jaccard_threshold": 0.8, "min_shared": 3}
SCORING_DEFAULTS: dict[str, Any] = {"max_length": 1024, "batch_tokens": 4096, "dtype": "float32"}

_TOP_KEYS = {"name", "pool", "pool_sample", "pool_layout", "pool_fields", "task", "methods", "method_options",
             "budgets", "seeds", "full", "base_model", "gguf_file", "device", "finetune", "scorers",
             "primary_scorer", "generation", "contamination", "embed_model", "embed_dtype", "cache_dir", "scoring",
             "out", "keep_adapters", "progress", "sweep"}


@dataclass
class EvalRecipe:
    """A validated evaluation recipe (see the module docstring for the YAML form)."""

    pool: Any
    task: dict[str, Any]
    methods: list[Any]
    name: str = "eval"
    pool_sample: int | None = None
    pool_layout: str = "auto"
    pool_fields: Any = None
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    budgets: list[int | float] = field(default_factory=lambda: [0.01, 0.05])
    seeds: list[int] = field(default_factory=lambda: [0])
    full: bool = False
    base_model: str = "default"
    gguf_file: str | None = None
    device: str = "auto"
    finetune: dict[str, Any] = field(default_factory=lambda: dict(FINETUNE_DEFAULTS))
    scorers: list[str] = field(default_factory=lambda: ["loss", "mc", "em"])
    primary_scorer: str | None = None
    generation: dict[str, Any] = field(default_factory=lambda: dict(GENERATION_DEFAULTS))
    contamination: dict[str, Any] = field(default_factory=lambda: dict(CONTAMINATION_DEFAULTS))
    scoring: dict[str, Any] = field(default_factory=lambda: dict(SCORING_DEFAULTS))
    embed_model: str = "default"
    embed_dtype: str = "auto"
    cache_dir: str | None = None
    out: str | None = None
    keep_adapters: bool = False
    progress: bool = True
    sweep: dict[str, Any] | None = None

    @property
    def primary(self) -> str:
        """The scorer PIR and efficiency are computed from."""
        return self.primary_scorer or self.scorers[0]

    def method_names(self) -> list[str]:
        """Display names of the methods, ``random`` first (always evaluated)."""
        names = ["random"] + [method_label(m) for m in self.methods]
        return list(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not output/progress settings)."""
        return recipe_hash(comparable_recipe(self.to_dict()))


#: recipe keys that never change results
OUTPUT_KEYS = ("out", "progress", "keep_adapters", "cache_dir")


def comparable_recipe(recipe: Mapping[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    """A recipe dict as results depend on it, for fingerprints and comparisons: without the
    output keys (:data:`OUTPUT_KEYS`) and ``drop``, without ``finetune.gradient_checkpointing``
    (same numbers), and without options at their defaults that recipes from before those
    options lacked (``dtype: float32`` in finetune/scoring, ``embed_dtype: auto``, no sweep),
    so that such recipes keep their fingerprints."""
    d = {k: v for k, v in recipe.items() if k not in OUTPUT_KEYS and k not in drop}
    for part in ("finetune", "scoring"):
        if isinstance(d.get(part), dict):
            d[part] = {k: v for k, v in d[part].items()
                       if not (k == "gradient_checkpointing" and part == "finetune")
                       and not (k == "dtype" and v == "float32")}
    if d.get("embed_dtype") in (None, "auto"):
        d.pop("embed_dtype", None)
    if "sweep" in d and d["sweep"] is None:
        d.pop("sweep")
    return d


def recipe_hash(d: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-1 of ``d`` as sorted JSON."""
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def method_label(m: Any) -> str:
    """A readable name for a method spec (name, recipe string, list or mapping)."""
    if isinstance(m, str):
        return " ".join(m.split())
    if isinstance(m, (list, tuple)):
        return " -> ".join(method_label(x) for x in m)
    if isinstance(m, Mapping):
        return str(m.get("name") or json.dumps(m, sort_keys=True))
    raise ConfigError(f"a method must be a name or a recipe string, got {m!r}")


def budget_label(b: int | float) -> str:
    """``0.05`` -> ``ratio=0.05``, ``200`` -> ``count=200``."""
    return f"ratio={b:g}" if isinstance(b, float) and b < 1 else f"count={int(b)}"


def _merge(defaults: Mapping[str, Any], given: Any, what: str, strict: bool = True) -> dict[str, Any]:
    if given is None:
        return dict(defaults)
    if not isinstance(given, Mapping):
        raise ConfigError(f"'{what}' must be a mapping, got {type(given).__name__}")
    unknown = set(given) - set(defaults)
    if strict and unknown:
        raise ConfigError(f"unknown '{what}' setting(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **given}


def recipe_from_dict(d: Mapping[str, Any], source: str = "<recipe>") -> EvalRecipe:
    """Validate a recipe mapping and fill in defaults (ConfigError on any problem)."""
    if not isinstance(d, Mapping):
        raise ConfigError("an evaluation recipe must be a YAML mapping", file=source)
    unknown = set(d) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {sorted(unknown)}", file=source)
    for req in ("pool", "task", "methods"):
        if d.get(req) in (None, "", []):
            raise ConfigError(f"recipe needs '{req}'", file=source)
    task = d["task"]
    if not isinstance(task, Mapping) or task.get("kind") not in TASK_KINDS:
        raise ConfigError(f"task.kind must be one of {', '.join(TASK_KINDS)}", file=source)
    methods = d["methods"]
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list):
        raise ConfigError("'methods' must be a list of method names or recipe strings", file=source)
    labels: list[str] = []
    for m in methods:
        labels.append(method_label(m))
        try:
            split_arm(labels[-1])
        except ConfigError as e:
            raise ConfigError(str(e), file=source) from None
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ConfigError(f"method(s) listed twice: {', '.join(twice)}", file=source)
    methods = [m for m in methods if method_label(m) != "random"]
    budgets = d.get("budgets", [0.01, 0.05])
    if not isinstance(budgets, list) or not budgets:
        raise ConfigError("'budgets' must be a non-empty list (floats < 1 = ratios, ints = counts)", file=source)
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 0:
            raise ConfigError(f"bad budget {b!r}: use a ratio in (0, 1) or a positive row count", file=source)
        if isinstance(b, float) and b >= 1 and not b.is_integer():
            raise ConfigError(f"bad budget {b!r}: ratios must be below 1", file=source)
    budgets = [int(b) if isinstance(b, float) and b >= 1 else b for b in budgets]
    seeds = d.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError("'seeds' must be a non-empty list of integers", file=source)
    scorers = d.get("scorers", ["loss", "mc", "em"])
    if isinstance(scorers, str):
        scorers = [scorers]
    bad = [s for s in scorers if s not in SCORERS]
    if bad or not scorers:
        raise ConfigError(f"unknown scorer(s) {bad}; choose from {', '.join(SCORERS)}", file=source)
    primary = d.get("primary_scorer")
    if primary is not None and primary not in scorers:
        raise ConfigError(f"primary_scorer '{primary}' is not one of the recipe's scorers {scorers}", file=source)
    mo = d.get("method_options") or {}
    if not isinstance(mo, Mapping) or not all(isinstance(v, Mapping) for v in mo.values()):
        raise ConfigError("'method_options' must map a method name to a mapping of options", file=source)
    ft = _merge(FINETUNE_DEFAULTS, d.get("finetune"), "finetune")
    if ft.get("epochs") is not None and "steps" not in (d.get("finetune") or {}):
        ft["steps"] = None
    if ft["steps"] is None and ft["epochs"] is None:
        raise ConfigError("finetune needs 'steps' (same for every arm) or 'epochs'", file=source)
    sc = _merge(SCORING_DEFAULTS, d.get("scoring"), "scoring")
    for part, where in ((ft, "finetune"), (sc, "scoring")):
        if part["dtype"] not in DTYPES:
            raise ConfigError(f"{where}.dtype must be one of {', '.join(DTYPES)}, got {part['dtype']!r}", file=source)
    ed = str(d.get("embed_dtype") or "auto")
    if ed not in EMBED_DTYPES:
        raise ConfigError(f"embed_dtype must be one of {', '.join(EMBED_DTYPES)}, got {ed!r}", file=source)
    ps = d.get("pool_sample")
    if ps is not None and (isinstance(ps, bool) or not isinstance(ps, int) or ps < 1):
        raise ConfigError(f"pool_sample must be a positive integer, got {ps!r}", file=source)
    return EvalRecipe(
        pool=d["pool"], task=dict(task), methods=list(methods), name=str(d.get("name") or "eval"),
        pool_sample=ps, pool_layout=d.get("pool_layout") or "auto", pool_fields=d.get("pool_fields"),
        method_options={str(k): dict(v) for k, v in mo.items()}, budgets=list(budgets), seeds=list(seeds),
        full=bool(d.get("full", False)), base_model=str(d.get("base_model") or "default"),
        gguf_file=d.get("gguf_file"), device=str(d.get("device") or "auto"), finetune=ft,
        scorers=list(dict.fromkeys(scorers)), primary_scorer=primary,
        generation=_merge(GENERATION_DEFAULTS, d.get("generation"), "generation"),
        contamination=_merge(CONTAMINATION_DEFAULTS, d.get("contamination"), "contamination"),
        scoring=sc,
        embed_model=str(d.get("embed_model") or "default"), embed_dtype=ed, cache_dir=d.get("cache_dir"),
        out=d.get("out"), keep_adapters=bool(d.get("keep_adapters", False)),
        progress=bool(d.get("progress", True)), sweep=parse_sweep(d.get("sweep"), ft, budgets, source))


def _numbers(v: Any, what: str, positive: bool, source: str) -> list[float]:
    """A sweep list (or one value) of learning rates (``positive``: > 0) or warm-up shares
    (in [0, 1)), distinct."""
    vals = v if isinstance(v, list) else [v]
    out = []
    for x in vals:
        ok = not isinstance(x, bool) and isinstance(x, (int, float)) and bool(np.isfinite(x))
        ok = ok and (x > 0 if positive else 0 <= x < 1)
        if not ok:
            raise ConfigError(f"sweep.{what}: {x!r} is not a number {'> 0' if positive else 'in [0, 1)'}", file=source)
        out.append(float(x))
    if not out:
        raise ConfigError(f"sweep.{what} must list at least one value", file=source)
    if len(set(out)) != len(out):
        raise ConfigError(f"sweep.{what} lists a value twice: {out}", file=source)
    return out


def parse_sweep(d: Any, finetune: Mapping[str, Any], budgets: Sequence[Any], source: str) -> dict[str, Any] | None:
    """The recipe's ``sweep`` mapping validated, with its defaults filled in (None: no sweep)."""
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise ConfigError(f"'sweep' must be a mapping with keys {', '.join(SWEEP_KEYS)}", file=source)
    unknown = sorted(set(d) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown 'sweep' setting(s) {unknown}; known: {list(SWEEP_KEYS)}", file=source)
    lrs = _numbers(d.get("lr", finetune["lr"]), "lr", True, source)
    warm = _numbers(d.get("warmup_ratio", finetune["warmup_ratio"]), "warmup_ratio", False, source)
    budget = d.get("budget", budgets[0])
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0 or \
            (isinstance(budget, float) and budget >= 1 and not budget.is_integer()):
        raise ConfigError(f"sweep.budget {budget!r}: use a ratio in (0, 1) or a positive row count", file=source)
    budget = int(budget) if isinstance(budget, float) and budget >= 1 else budget
    seeds = d.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError("sweep.seeds must be a non-empty list of distinct integers", file=source)
    n_val = d.get("n_val", 100)
    if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 1:
        raise ConfigError(f"sweep.n_val must be a positive integer, got {n_val!r}", file=source)
    scorer = d.get("scorer", "loss")
    if scorer not in SCORERS:
        raise ConfigError(f"sweep.scorer must be one of {', '.join(SCORERS)}, got {scorer!r}", file=source)
    if len(lrs) * len(warm) < 2:
        raise ConfigError("a sweep needs at least two settings (several lr or warmup_ratio values)", file=source)
    return {"lr": lrs, "warmup_ratio": warm, "budget": budget, "seeds": list(seeds), "n_val": n_val,
            "scorer": scorer}


def load_recipe(path: str | Path) -> EvalRecipe:
    """Read and validate a recipe YAML file."""
    from ..yamlfile import read_yaml

    data = read_yaml(path, "recipe file")
    return recipe_from_dict(data, source=str(path))
