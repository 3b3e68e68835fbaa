"""Runs an evaluation recipe: every arm (method x budget x seed, plus random at every budget,
the base model and optionally the full pool), each selected, fine-tuned and scored the same way.

With a ``sweep`` in the recipe, its points run first (:mod:`.sweep`: random subsets, scored
on validation items) and choose the learning rate and warm-up every arm then trains with.

An *arm* is one (method, budget, seed). For each arm not finished yet:

1. select with :func:`tasksift.select` (same pool, target examples and seed for every method);
2. fine-tune the base model with LoRA (:func:`tasksift.finetune.finetune_lora`) on the subset,
   with the same steps, learning rate, rank and batch size for every arm, seeded by the arm's
   seed (:meth:`Evaluation.train`);
3. score the adapted model on the held-out test part (loss / multiple choice / exact match);
4. append one row to ``results.jsonl`` (atomically: the file is rewritten whole through a
   temporary file), so a killed run resumes from the last finished arm.

When every arm is done, PIR/efficiency/feasibility are filled in (:mod:`.metrics`), and
``results.jsonl``, ``summary.json`` and ``report.html`` are written.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..atomic import write_json, write_text
from ..data.loading import LoadedData, load_examples
from ..errors import ConfigError
from ..finetune import finetune_lora
from ..manifest import peak_memory_mb
from .arms import RESULTS, arm_id, json_line, plan_arms, read_results, safe_name
from .config import EvalRecipe, budget_label, method_label
from .variants import method_of, split_arm
from .contamination import OverlapResult, find_overlaps, pool_text
from .metrics import compute_metrics
from .scorers import ITEM_SCORERS, ModelScorer, aggregate
from ..data.style import answer_style, example_responses
from .summary import enrich_summary
from .tasks import TaskData, load_task

def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append a row to results.jsonl atomically (old file + new line, replaced in one rename)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, old + json_line(row))


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[tasksift evaluate] {msg}", file=sys.stderr, flush=True)


def load_pool(recipe: EvalRecipe) -> LoadedData:
    """The pool, optionally a seeded sample of ``pool_sample`` rows (order kept)."""
    pool = recipe.pool
    if isinstance(pool, LoadedData):
        data = pool
    else:
        if isinstance(pool, str) and not Path(pool).expanduser().exists() and "/" in pool and pool.startswith((".", "/", "~")):
            raise ConfigError(f"pool not found (paths are relative to the current directory {Path.cwd()})",
                              file=pool)
        data = load_examples(pool, layout=recipe.pool_layout, fields=recipe.pool_fields, role="pool")
    if recipe.pool_sample and recipe.pool_sample < len(data):
        rng = np.random.default_rng(int(recipe.task.get("seed", 0)))
        keep = np.sort(rng.choice(len(data), recipe.pool_sample, replace=False))
        data = LoadedData(examples=[data.examples[int(i)] for i in keep], path=data.path, format=data.format,
                          layout=data.layout, skipped=data.skipped)
    return data


def _method_config(recipe: EvalRecipe, label: str) -> dict[str, Any]:
    """The method's options from the recipe (under the arm's whole label, else, for an arm
    with [settings], under its method's); LM-based methods default to the base model."""
    from ..methods.registry import get_method

    spec = method_of(label)
    opts = recipe.method_options.get(label)
    if opts is None and isinstance(spec, str):
        opts = recipe.method_options.get(spec)
    opts = dict(opts or {})
    if not isinstance(spec, str) or "->" in spec:
        return opts
    cls = get_method(spec)
    defaults = getattr(cls, "defaults", {}) or {}
    if "lm" in cls.info.needs and "model" in defaults and "model" not in opts:
        opts["model"] = recipe.base_model
        if recipe.gguf_file and "gguf_file" in defaults and "gguf_file" not in opts:
            opts["gguf_file"] = recipe.gguf_file
    if "device" in defaults and "device" not in opts and recipe.device != "auto":
        opts["device"] = recipe.device
    return opts


def validate_methods(recipe: EvalRecipe) -> None:
    """Fail before any work when a method (or a recipe string's step) is unknown or its options
    are invalid (ConfigError naming the choices)."""
    from ..methods.registry import get_method

    for m in recipe.methods:
        label = method_label(m)
        spec = method_of(m)
        if isinstance(spec, str) and "->" not in spec:
            get_method(spec)(**_method_config(recipe, label))
            continue
        try:
            from ..recipe import parse_recipe
        except ImportError:
            raise ConfigError(f"method recipe '{label}' needs tasksift.recipe, which this install lacks") from None
        parse_recipe(spec)


class Evaluation:
    """One evaluation run in ``out_dir`` (see the module docstring)."""

    def __init__(self, recipe: EvalRecipe, out_dir: str | Path, *, resume: bool = True,
                 progress: bool | None = None, cache_dir: str | Path | None = None) -> None:
        self.recipe = recipe
        self.out = Path(out_dir)
        self.resume = resume
        self.progress = recipe.progress if progress is None else progress
        self.cache_dir = str(cache_dir or recipe.cache_dir or (self.out / "cache"))
        self.results_path = self.out / RESULTS
        self.pool: LoadedData | None = None
        self.task: TaskData | None = None
        self.overlap: OverlapResult | None = None
        self.pool_info: dict[str, Any] = {}
        self._model = None
        self._tok = None
        self.val_flags: np.ndarray | None = None
        self.sweep_result: dict[str, Any] | None = None

    # -- setup ------------------------------------------------------------------------
    def _check_run_file(self) -> None:
        run_file = self.out / "run.json"
        fp = self.recipe.fingerprint()
        if self.resume and run_file.is_file():
            old = json.loads(run_file.read_text(encoding="utf-8"))
            if old.get("fingerprint") != fp and self.results_path.is_file():
                raise ConfigError(f"{self.out} holds results of a different recipe; use another --out or --no-resume")
        if not self.resume and self.results_path.is_file():
            self.results_path.unlink()
        write_json(run_file, {"fingerprint": fp, "recipe": self.recipe.to_dict()})

    def prepare(self) -> None:
        """Load pool and task, check contamination, optionally drop contaminated pool rows."""
        t0 = time.perf_counter()
        pool = load_pool(self.recipe)
        sweep = self.recipe.sweep
        task = load_task(self.recipe.task, n_val=int(sweep["n_val"]) if sweep else 0)
        c = self.recipe.contamination
        keys = [t.key for t in task.test]
        ov = find_overlaps([pool_text(ex) for ex in pool.examples], keys, ngram=int(c["ngram"]),
                           near_threshold=float(c["near_threshold"]), char_ngram=int(c["char_ngram"]),
                           jaccard_threshold=float(c["jaccard_threshold"]), min_shared=int(c["min_shared"]))
        test_ids = [t.id for t in task.test]
        before = ov.summary(ids=[e.id for e in pool.examples], test_ids=test_ids)
        by_source: dict[str, int] = {}
        for i in np.flatnonzero(ov.flag > 0):
            key = pool.examples[int(i)].source or Path(pool.path).name
            by_source[key] = by_source.get(key, 0) + 1
        dropped = 0
        if c["drop_contaminated"] and (ov.flag > 0).any():
            keep = np.flatnonzero(ov.flag == 0)
            dropped = int(len(pool) - len(keep))
            pool = LoadedData(examples=[pool.examples[int(i)] for i in keep], path=pool.path, format=pool.format,
                              layout=pool.layout, skipped=pool.skipped)
            ov = OverlapResult(ov.flag[keep], ov.test_index[keep], ov.containment[keep], ov.jaccard[keep], ov.settings)
        self.pool, self.task, self.overlap = pool, task, ov
        if task.validation:   # which pool rows hold a validation item (counted per sweep subset, not dropped)
            self.val_flags = find_overlaps([pool_text(ex) for ex in pool.examples], [t.key for t in task.validation],
                                           ngram=int(c["ngram"]), near_threshold=float(c["near_threshold"]),
                                           char_ngram=int(c["char_ngram"]), jaccard_threshold=float(c["jaccard_threshold"]),
                                           min_shared=int(c["min_shared"])).flag
        self.pool_info = {"rows": len(pool), "rows_before_drop": len(pool) + dropped, "dropped_contaminated": dropped,
                          "contamination_before_drop": before, "contaminated_by_source": by_source,
                          "sources": pool.counts_by_source(), "seconds": time.perf_counter() - t0,
                          "task": task.info}
        _log(f"pool {len(pool)} rows ({dropped} contaminated rows dropped; found exact {before['exact']}, "
             f"near {before['near']}), task {task.name}: {len(task.target)} target, {len(task.test)} test items",
             self.progress)

    def model(self):
        """The base model and tokenizer, loaded once per run."""
        if self._model is None:
            from ..features.lm import load_causal_lm, resolve_device

            dev = resolve_device(self.recipe.device)
            self._model, self._tok = load_causal_lm(self.recipe.base_model, self.recipe.gguf_file, device=dev,
                                                    dtype="float32" if dev == "cpu" else "auto")
        return self._model, self._tok

    def task_meta(self) -> dict[str, Any]:
        """Per-test-item metadata (no texts) and the target examples' answer style, stored in
        the base row so a summary of results.jsonl alone can compute distance from chance and
        compare answer styles: ``item_n_choices``, ``item_subtasks``, ``target_answer_style``."""
        assert self.task is not None
        return {"item_n_choices": [len(t.choices) if t.choices and t.label is not None else None
                                   for t in self.task.test],
                "item_subtasks": [t.subtask for t in self.task.test],
                "target_answer_style": answer_style(example_responses(self.task.target))}

    # -- arms -------------------------------------------------------------------------
    def _select(self, arm: dict[str, Any]) -> tuple[np.ndarray, dict[str, float], dict[str, Any]]:
        from ..api import select

        assert self.pool is not None and self.task is not None
        n = len(self.pool)
        if arm["kind"] == "full":
            return np.arange(n), {"total": 0.0}, {}
        b = arm["budget_value"]
        kw = {"ratio": b} if isinstance(b, float) and b < 1 else {"count": min(int(b), n)}
        method = method_of(arm["spec"])
        label = arm["method"]
        sel = select(self.pool, self.task.target, method=method, seed=int(arm["seed"]),
                     config=_method_config(self.recipe, label), cache_dir=self.cache_dir, progress=self.progress,
                     embed=self.embed_config(label), explain=False, **kw)   # an arm needs the indices only, not report.html's data
        return sel.indices, dict(sel.timings), dict(sel.info)

    def embed_config(self, label: str | None = None):
        """The embedding settings of an arm's selection: the recipe's embed_model / embed_dtype,
        and the text its label's [settings] name (default: prompt and response)."""
        from ..features.embed import EmbedConfig

        text = split_arm(label)[1].get("embed_text", "text") if label else "text"
        return EmbedConfig(model=self.recipe.embed_model, device=self.recipe.device, dtype=self.recipe.embed_dtype,
                           text=text)

    def _score(self, model, tok) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.task is not None
        per_item = self._score_items(model, tok, self.task.test, self.recipe.scorers)
        return aggregate(self.task.test, per_item, self.recipe.scorers), per_item

    def _score_items(self, model, tok, items: list, scorers: list[str]) -> dict[str, Any]:
        g, s = self.recipe.generation, self.recipe.scoring
        scorer = ModelScorer(model, tok, max_length=int(s["max_length"]), batch_tokens=int(s["batch_tokens"]),
                             max_new_tokens=int(g["max_new_tokens"]), gen_batch_size=int(g["batch_size"]),
                             progress=self.progress, dtype=str(s.get("dtype", "float32")))
        return scorer.score(items, scorers)

    def finetune_settings(self) -> dict[str, Any]:
        """The recipe's finetune settings, with the sweep's chosen lr and warm-up when it has run."""
        ft = dict(self.recipe.finetune)
        if self.sweep_result is not None:
            ft.update(lr=self.sweep_result["chosen"]["lr"], warmup_ratio=self.sweep_result["chosen"]["warmup_ratio"])
        return ft

    def train(self, subset: list, *, seed: int, adapter_dir: Path, lr: float | None = None,
              warmup_ratio: float | None = None) -> dict[str, Any]:
        """LoRA fine-tune the base model on ``subset`` with the run's settings
        (:meth:`finetune_settings`; ``lr``/``warmup_ratio`` override them, for the sweep) into
        ``adapter_dir``; returns the training facts an arm row records."""
        from ..finetune import read_train_log

        model, tok = self.model()
        ft = self.finetune_settings()
        lr = float(ft["lr"] if lr is None else lr)
        warm = float(ft["warmup_ratio"] if warmup_ratio is None else warmup_ratio)
        finetune_lora(model, subset, tokenizer=tok, steps=ft["steps"], epochs=ft["epochs"] or 1.0, lr=lr,
                      r=int(ft["r"]), alpha=int(ft["alpha"]), dropout=float(ft["dropout"]),
                      batch_size=int(ft["batch_size"]), max_length=int(ft["max_length"]), seed=int(seed),
                      out_dir=adapter_dir, progress=self.progress, warmup_ratio=warm,
                      gradient_checkpointing=bool(ft["gradient_checkpointing"]), dtype=str(ft.get("dtype", "float32")),
                      resume=True)
        log = read_train_log(adapter_dir)
        return {"steps": log.get("steps"), "epochs": log.get("epochs"),
                "first_loss": (log.get("loss") or [None])[0], "last_loss": (log.get("loss") or [None])[-1],
                "trained_examples": log.get("trained_examples"), "lr": lr, "warmup_ratio": warm}

    def score_adapter(self, adapter_dir: Path, items: list, scorers: list[str], *,
                      remove: bool | None = None) -> dict[str, Any]:
        """Per-item scores of the base model with the adapter in ``adapter_dir`` (unloaded
        afterwards). Once scored, the folder is removed unless ``keep_adapters``; a run stopped
        while scoring keeps it, and its resumed run scores it without training again
        (:meth:`train` reuses a finished adapter with the same settings and examples).
        ``remove``: whether to remove it once scored (default: unless ``keep_adapters``)."""
        from peft import PeftModel

        model, tok = self.model()
        pm = PeftModel.from_pretrained(model, str(adapter_dir))
        pm.eval()
        try:
            scores = self._score_items(pm, tok, items, scorers)
        finally:
            pm.unload()
            model.eval()
        if (not self.recipe.keep_adapters) if remove is None else remove:
            shutil.rmtree(adapter_dir, ignore_errors=True)
        return scores

    def validation_overlap(self, idx: np.ndarray) -> int:
        """How many of the selected pool rows ``idx`` hold a validation item (0 without any)."""
        return 0 if self.val_flags is None else int((self.val_flags[np.asarray(idx, dtype=np.int64)] > 0).sum())

    def run_arm(self, arm: dict[str, Any]) -> dict[str, Any]:
        """Select, fine-tune and score one arm; returns its results row."""
        assert self.pool is not None and self.task is not None and self.overlap is not None
        model, tok = self.model()
        timings: dict[str, Any] = {}
        row: dict[str, Any] = {"arm": arm["id"], "method": arm["method"], "kind": arm["kind"], "budget": arm["budget"],
                               "budget_value": arm["budget_value"], "seed": arm["seed"], "n_pool": len(self.pool)}
        train_info: dict[str, Any] = {}
        if arm["kind"] == "base":
            row["n_selected"] = 0
            row.update(self.task_meta())
            t = time.perf_counter()
            scores, per_item = self._score(model, tok)
            timings["score"] = time.perf_counter() - t
        else:
            t = time.perf_counter()
            idx, sel_timings, sel_info = self._select(arm)
            timings["select"] = time.perf_counter() - t
            timings["select_stages"] = {k: round(v, 4) for k, v in sel_timings.items()}
            row["peak_rss_mb_after_select"] = round(peak_memory_mb(), 1)
            cfg = self.embed_config(arm["method"])
            row["embed"] = {"model": cfg.model, "dtype": cfg.resolved_dtype(), "text": cfg.text}   # what the vectors were, if used
            subset = [self.pool.examples[int(i)] for i in idx]
            row["n_selected"] = len(subset)
            mix: dict[str, int] = {}
            for ex in subset:
                key = Path(ex.source).parts[0] if ex.source else Path(self.pool.path).name
                mix[key] = mix.get(key, 0) + 1
            row["source_mix"] = dict(sorted(mix.items(), key=lambda kv: -kv[1]))
            row["answer_style"] = answer_style(example_responses(subset))
            row["contamination"] = self.overlap.summary(idx, ids=[e.id for e in self.pool.examples],
                                                        test_ids=[t_.id for t_ in self.task.test], limit=10)
            row["selection_info"] = {k: v for k, v in sel_info.items() if isinstance(v, (int, float, str, bool))}
            adir = self.out / "adapters" / safe_name(arm["id"])
            t = time.perf_counter()
            train_info = self.train(subset, seed=int(arm["seed"]), adapter_dir=adir)
            timings["finetune"] = time.perf_counter() - t
            row["peak_rss_mb_after_finetune"] = round(peak_memory_mb(), 1)
            t = time.perf_counter()
            per_item = self.score_adapter(adir, self.task.test, self.recipe.scorers)
            scores = aggregate(self.task.test, per_item, self.recipe.scorers)
            timings["score"] = time.perf_counter() - t
        row["train"] = train_info
        row["scores"] = scores
        row["item_scores"] = {k: [None if not np.isfinite(x) else round(float(x), 5) for x in v]
                              for k, v in per_item.items() if k in ITEM_SCORERS}
        if "em_outputs" in per_item:
            row["em_outputs"] = per_item["em_outputs"][:5]
        row["timings"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timings.items()}
        row["peak_rss_mb"] = round(peak_memory_mb(), 1)
        row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        for k in ("sdf", "pir", "pir_random", "efficiency"):
            row.setdefault(k, None)
        return row

    def run_sweep(self, finished_arms: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        """Run the unfinished points of the recipe's sweep (:mod:`.sweep`; rows to
        ``<out>/sweep.jsonl``) on the prepared pool and task, and return its table and choice
        (:func:`.sweep.choose`). A point trains exactly what the random arm of its seed trains
        once its setting is chosen, so the chosen points' adapters become those arms' adapters
        (unless in ``finished_arms``): the random arms score them without training again
        (:meth:`train` checks the settings and examples); the other points' adapters are
        removed unless ``keep_adapters``."""
        from .sweep import SWEEP_FILE, choose, read_sweep, sweep_fingerprint, sweep_points

        sweep = self.recipe.sweep
        assert sweep is not None and self.task is not None and self.pool is not None
        fp = sweep_fingerprint(self.recipe.to_dict())
        path = self.out / SWEEP_FILE
        rows = read_sweep(path, fp)
        done = {r["point"] for r in rows}
        points = sweep_points(sweep)
        if len(self.task.validation) < int(sweep["n_val"]):
            raise ConfigError(f"the sweep needs {sweep['n_val']} validation items, the task gave {len(self.task.validation)}")
        items = self.task.validation
        todo = [p for p in points if p["id"] not in done]
        if todo:
            _log(f"sweep: {len(todo)} of {len(points)} points to run ({sweep['scorer']} on {len(items)} validation items)",
                 self.progress)
        for k, p in enumerate(todo, 1):
            _log(f"sweep point {k}/{len(todo)}: {p['id']}", self.progress)
            arm = {"id": f"sweep|{p['id']}", "kind": "random", "method": "random", "spec": "random",
                   "budget": budget_label(sweep["budget"]), "budget_value": sweep["budget"], "seed": p["seed"]}
            t = time.perf_counter()
            idx, _, _ = self._select(arm)
            subset = [self.pool.examples[int(i)] for i in idx]
            timings = {"select": time.perf_counter() - t}
            t = time.perf_counter()
            adir = self.out / "adapters" / safe_name("sweep|" + p["id"])
            train = self.train(subset, seed=p["seed"], adapter_dir=adir, lr=p["lr"], warmup_ratio=p["warmup_ratio"])
            timings["finetune"] = time.perf_counter() - t
            t = time.perf_counter()
            per_item = self.score_adapter(adir, items, [sweep["scorer"]], remove=False)
            timings["score"] = time.perf_counter() - t
            score = aggregate(items, per_item, [sweep["scorer"]]).get(sweep["scorer"], {}).get("all")
            row = {"point": p["id"], "sweep_fingerprint": fp, "lr": p["lr"], "warmup_ratio": p["warmup_ratio"],
                   "seed": p["seed"], "budget": budget_label(sweep["budget"]), "n_selected": len(subset),
                   "n_val": len(items), "scorer": sweep["scorer"], "score": score,
                   "val_overlap": self.validation_overlap(idx), "train": train,
                   "timings": {k2: round(v, 4) for k2, v in timings.items()},
                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            append_row(path, row)
            rows.append(row)
        result = choose(rows, sweep)
        c = result["chosen"]
        _log(f"sweep: chose lr {c['lr']:g}, warmup_ratio {c['warmup_ratio']:g} ({sweep['scorer']} {c['mean']:.4f} "
             "on the validation items)", self.progress)
        self._hand_over_sweep_adapters(points, c, finished_arms)
        return result

    def _hand_over_sweep_adapters(self, points: list[dict[str, Any]], chosen: dict[str, Any],
                                  finished_arms: frozenset[str] | set[str]) -> None:
        """Move each chosen point's kept adapter to the folder of the random arm of its seed
        and budget (when that arm is planned, unfinished and has none); remove the rest."""
        sweep = self.recipe.sweep
        assert sweep is not None
        random_arms = {(a["budget"], int(a["seed"])): a["id"] for a in plan_arms(self.recipe)
                       if a["kind"] == "random" and a["seed"] is not None}
        for p in points:
            adir = self.out / "adapters" / safe_name("sweep|" + p["id"])
            if not adir.is_dir():
                continue
            arm_id = random_arms.get((budget_label(sweep["budget"]), int(p["seed"])))
            target = None if arm_id is None or arm_id in finished_arms else self.out / "adapters" / safe_name(arm_id)
            if (p["lr"], p["warmup_ratio"]) == (chosen["lr"], chosen["warmup_ratio"]) and target is not None \
                    and not target.exists():
                os.replace(adir, target)
            elif not self.recipe.keep_adapters:
                shutil.rmtree(adir, ignore_errors=True)

    # -- the whole run ----------------------------------------------------------------
    def run(self, on_arm: Callable[[dict[str, Any]], None] | None = None, estimate: bool = True) -> dict[str, Any]:
        """Run every unfinished arm, then write metrics, summary.json and report.html. With
        ``estimate`` (and progress on), first time a small sample and print the run's estimated
        duration (:mod:`.estimate`)."""
        validate_methods(self.recipe)
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_run_file()
        self.prepare()
        arms = plan_arms(self.recipe)
        done = {r["arm"] for r in read_results(self.results_path)}
        skipped = [a["id"] for a in arms if a["id"] in done]
        if skipped:
            _log(f"resuming: {len(skipped)} of {len(arms)} arms already finished", self.progress)
        if estimate and self.progress and len(skipped) < len(arms):
            from .estimate import estimate_run, format_estimate

            _log(format_estimate(estimate_run(self)), True)
        if self.recipe.sweep is not None:
            self.sweep_result = self.run_sweep(finished_arms=done)
        ran = []
        for k, arm in enumerate(arms, 1):
            if arm["id"] in done:
                continue
            _log(f"arm {k}/{len(arms)}: {arm['id']}", self.progress)
            row = self.run_arm(arm)
            append_row(self.results_path, row)
            ran.append(arm["id"])
            if on_arm is not None:
                on_arm(row)
        return self.finish(ran=ran, skipped=skipped)

    def finish(self, ran: list[str] | None = None, skipped: list[str] | None = None) -> dict[str, Any]:
        """Compute metrics over all finished rows and write results, summary and report."""
        from ..methods.registry import available_methods
        from .report import write_report

        rows = read_results(self.results_path)
        planned = {a["id"] for a in plan_arms(self.recipe)}
        rows = [r for r in rows if r["arm"] in planned]
        infos = {i.name: i for i in available_methods()}
        summary = compute_metrics(rows, self.recipe.scorers, self.recipe.primary, infos)
        meta = self.task_meta() if self.task is not None else {}
        enrich_summary(summary, rows, self.recipe.scorers, infos, n_choices=meta.get("item_n_choices"),
                       subtasks=meta.get("item_subtasks"), target_style=meta.get("target_answer_style"))
        write_text(self.results_path, "".join(json_line(r) for r in rows))
        if self.sweep_result is not None:
            summary["sweep"] = self.sweep_result
        summary.update({"name": self.recipe.name, "fingerprint": self.recipe.fingerprint(), "pool": self.pool_info,
                        "arms_run": ran or [], "arms_skipped": skipped or [], "n_arms": len(rows),
                        "recipe": self.recipe.to_dict(),
                        "test_sets": self.task.subtasks if self.task else []})
        write_json(self.out / "summary.json", summary)
        report = write_report(self.out / "report.html", rows, summary)
        summary["report"] = str(report)
        _log(f"wrote {self.results_path}, {self.out / 'summary.json'}, {report}", self.progress)
        return summary


def run_evaluation(recipe: EvalRecipe, out_dir: str | Path, *, resume: bool = True,
                   progress: bool | None = None, cache_dir: str | Path | None = None,
                   estimate: bool = True) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary (also written to summary.json).
    ``estimate``: print an up-front time estimate first (when progress is on)."""
    return Evaluation(recipe, out_dir, resume=resume, progress=progress, cache_dir=cache_dir).run(estimate=estimate)
