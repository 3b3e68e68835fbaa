"""The Python API: ``tasksift.select(pool, target, method=..., budget=...)``."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .budget import Budget, allocate_quotas, allocate_token_quotas, cut_to_tokens, max_rows_within
from .data.example import Example
from .data.loading import LoadedData, load_examples
from .data.pool import Pool, as_pool
from .errors import ConfigError, DataError, SelectionWarning
from .exec import make_executor
from .features.embed import EmbedConfig
from .manifest import embedding_block, manifest_dict, peak_memory_mb
from .methods.base import MethodResult, SelectionContext
from .methods.params import Interval
from .methods.registry import get_method
from .outputs import OutputUnit


@dataclass
class Selection:
    """The result of :func:`select`.

    ``indices``: selected pool positions, best first; ``ids``: their example ids;
    ``scores``: one score per pool row (NaN = not scored; ``selected_scores`` gives them per
    selected row, in the order of ``indices``); ``columns``: per-pool-row arrays
    written to the output; ``subset``: the selected Examples (each keeps its original row in
    ``.raw``); ``info``/``timings``: diagnostics for the manifest; ``output_files``: the names
    the last :meth:`save` wrote.
    """

    indices: np.ndarray
    ids: list[str]
    scores: np.ndarray | None
    columns: dict[str, np.ndarray]
    method: str
    config: dict[str, Any]
    budget: Budget
    seed: int
    pool: LoadedData
    target: LoadedData
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    embedding: dict[str, Any] = field(default_factory=dict)
    output_files: list[str] = field(default_factory=list)
    explanation: Any = None   # a tasksift.report.explain.Explanation (None: select(explain=False))

    @property
    def subset(self) -> list[Example]:
        return self.pool.pool.examples(self.indices)

    @property
    def probabilities(self) -> np.ndarray | None:
        """Selection probabilities per pool row, for methods that define them (TSDS)."""
        for k in ("tsds_prob", "prob", "probability"):
            if k in self.columns:
                return self.columns[k]
        return None

    @property
    def selected_scores(self) -> np.ndarray | None:
        """``scores`` of the selected rows, one per entry of ``indices`` (same order)."""
        return None if self.scores is None else np.asarray(self.scores)[self.indices]

    @property
    def selected_probabilities(self) -> np.ndarray | None:
        """``probabilities`` of the selected rows, one per entry of ``indices`` (same order)."""
        p = self.probabilities
        return None if p is None else np.asarray(p)[self.indices]

    def source_mix(self, depth: int = 1) -> dict[str, int]:
        """Selected rows per pool source (first ``depth`` path parts), largest first."""
        out: dict[str, int] = {}
        for source, n in self.pool.pool.source_counts(self.indices).items():
            key = "/".join(Path(source).parts[:depth]) if source else Path(self.pool.path).name
            out[key] = out.get(key, 0) + n
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def manifest(self) -> dict[str, Any]:
        return manifest_dict(
            method=self.method, config=self.config, budget=self.budget.describe(), seed=self.seed,
            pool={"path": self.pool.path, "format": self.pool.format, "layout": self.pool.layout,
                  "rows": len(self.pool), "fingerprint": self.pool.fingerprint(),
                  "skipped_rows": len(self.pool.skipped), "skipped": self.pool.skipped[:100]},
            target={"path": self.target.path, "format": self.target.format, "layout": self.target.layout,
                    "rows": len(self.target), "fingerprint": self.target.fingerprint(),
                    "skipped_rows": len(self.target.skipped), "skipped": self.target.skipped[:100]},
            counts={"pool": len(self.pool), "target": len(self.target), "selected": len(self.indices),
                    "skipped_pool_rows": len(self.pool.skipped),
                    "skipped_target_rows": len(self.target.skipped)},
            selected_fraction=len(self.indices) / max(1, len(self.pool)),
            source_mix=self.source_mix(), timings={k: round(v, 4) for k, v in self.timings.items()},
            peak_memory_mb=round(peak_memory_mb(), 1), info=self.info, embedding=self.embedding,
            selected_ids=self.ids)

    def save(self, out_dir: str | Path, fmt: str | None = None, export: str | None = None,
             report: bool = True) -> Path:
        """Write every output (:data:`OUTPUT_WRITERS`: the subset, in the input's format and
        layout + score columns, or in the training layout ``export`` (messages, sharegpt,
        alpaca, llamafactory: see :mod:`tasksift.data.export`); ``report.html`` when ``report``
        and the selection was explained; then ``manifest.json``) into
        ``out_dir`` as one unit (:mod:`tasksift.outputs`: a failure leaves the previous result;
        outputs of the previous run not written again are removed); returns the subset's path."""
        from .data.export import check_export

        settings = SaveSettings(fmt=check_export(export, fmt), export=export, report=report)
        t = time.perf_counter()
        with OutputUnit(out_dir) as unit:
            for write in OUTPUT_WRITERS:
                write(self, unit, settings)
            subset = unit.file("subset")
            for path in unit.kept_outputs():
                _warn(self.info, f"kept {path}: an output of an earlier run, changed since tasksift wrote it")
            self.timings["write"] = time.perf_counter() - t
            man = self.manifest()
            page = unit.file("report")
            man["output"] = {"path": str(unit.final(subset.name)), **subset.info,
                             "report": str(unit.final(page.name)) if page else None}
            unit.commit(man)
        self.output_files = [f.name for f in unit.files] + ["manifest.json"]
        return unit.final(subset.name)


@dataclass(frozen=True)
class SaveSettings:
    """What :meth:`Selection.save` was asked for: output format and export (None = the input's)."""

    fmt: str | None = None
    export: str | None = None
    report: bool = True


def write_subset_output(sel: Selection, unit: OutputUnit, settings: SaveSettings) -> None:
    """The subset: ``selected.<ext>``, with ``tasksift_*`` score columns."""
    from .data.export import row_layout
    from .data.writers import write_subset

    cols = dict(sel.columns)
    if sel.scores is not None:
        cols = {"score": sel.scores, **cols}
    layout = None
    if settings.export is not None:
        layout = row_layout(settings.export, sel.pool.pool.take(sel.indices).batches(), sel.pool.path)
    path, score_cols = write_subset(sel.pool, sel.indices, cols, unit.staging, settings.fmt, export=layout)
    info: dict[str, Any] = {"score_columns": score_cols}
    if settings.export is not None:
        info["export"] = {"as": settings.export, "layout": layout}
    unit.add(path.name, "subset", **info)


def write_llamafactory_entry(sel: Selection, unit: OutputUnit, settings: SaveSettings) -> None:
    """``dataset_info.json`` for ``export="llamafactory"``: the entry naming the subset file."""
    from .atomic import write_json
    from .data.export import LLAMAFACTORY_NAME, llamafactory_entry

    if settings.export != "llamafactory":
        return
    subset = unit.file("subset")
    entry = llamafactory_entry(subset.info["export"]["layout"], subset.name)
    write_json(unit.path("dataset_info.json"), {LLAMAFACTORY_NAME: entry})
    unit.add("dataset_info.json", "llamafactory_dataset_info", dataset=LLAMAFACTORY_NAME)


def write_report_output(sel: Selection, unit: OutputUnit, settings: SaveSettings) -> None:
    """``report.html`` explaining the choice (:mod:`tasksift.report.select_report`), when asked
    for and the selection was explained (``select(explain=True)``)."""
    from .report.select_report import write_select_report

    if not settings.report or sel.explanation is None:
        return
    write_select_report(sel, unit.path("report.html"))
    unit.add("report.html", "report")


#: Every output of :meth:`Selection.save` but the manifest, written in this order: a function
#: (selection, unit, settings) writing into ``unit.path(name)`` and calling ``unit.add(name,
#: role)``. ``manifest.json`` is written last and lists them all.
OUTPUT_WRITERS = [write_subset_output, write_llamafactory_entry, write_report_output]


def _as_loaded(data: Any, role: str, layout: str, fields, skip_bad: bool, split, executor=None) -> LoadedData:
    if isinstance(data, LoadedData):
        return data
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, Example) for x in data):
        return LoadedData(examples=list(data), path=f"<{role} examples>", format="jsonl", layout="mixed")
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, Mapping) for x in data):
        from .data.layouts import normalise
        from .data.readers import RawRows

        raw = RawRows(rows=list(data), row_numbers=list(range(1, len(data) + 1)), format="jsonl",
                      path=f"<{role} rows>")
        exs, lay = normalise(raw, layout, fields, skip_bad=skip_bad, role=role)
        return LoadedData(examples=exs, path=raw.path, format="jsonl", layout=lay, skipped=raw.skipped,
                          sources={raw.path: raw}, layouts={raw.path: lay})
    if isinstance(data, (list, tuple)) and not data:
        from .errors import DataError

        raise DataError(f"{role} is empty")
    return load_examples(data, layout=layout, fields=fields, skip_bad=skip_bad, split=split, role=role,
                         executor=executor)


def make_budget(budget: Budget | int | float | None = None, *, count: int | None = None,
                ratio: float | None = None, tokens: int | None = None) -> Budget:
    """A Budget from ``budget`` (Budget, int = count, float < 1 = ratio) or keywords."""
    if isinstance(budget, Budget):
        return budget
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ConfigError(f"budget must be a Budget, a count or a ratio, got {budget!r}")
        if isinstance(budget, float) and budget < 1:
            ratio = budget
        else:
            count = int(budget)
    return Budget(count=count, ratio=ratio, tokens=tokens)


def run_method(method: str | Sequence | Mapping, config: Mapping[str, Any], ctx: SelectionContext,
               k: int) -> MethodResult:
    """Run a registered method, or a recipe (``"dedup -> tsds"``, a list or a mapping)."""
    if isinstance(method, str) and "->" not in method:
        return get_method(method)(**dict(config)).select(ctx, k)
    from .recipe import Recipe, Step, parse_recipe

    recipe = parse_recipe(method)
    if config:  # options given beside a recipe belong to its selecting (last) step
        last = recipe.steps[-1]
        merged = {**last.options, **dict(config)}
        Step(name=last.name, options=merged, filter=last.filter, keep=last.keep).method()  # ConfigError now
        recipe = Recipe(recipe.steps[:-1] + [Step(name=last.name, options=merged, filter=last.filter,
                                                  keep=last.keep)])
    return recipe.run(ctx, k)


def select(pool: Any, target: Any, method: str | Sequence | Mapping = "tsds",
           budget: Budget | int | float | None = None, *, count: int | None = None,
           ratio: float | None = None, tokens: int | None = None, seed: int = 0,
           config: Mapping[str, Any] | None = None, group_by: str | None = None,
           quotas: Mapping | str = "proportional", embed: EmbedConfig | None = None,
           cache_dir: str | Path | None = None, progress: bool = True, skip_bad: bool = False,
           pool_layout: str = "auto", pool_fields=None, target_layout: str = "auto",
           target_fields=None, split: str | None = None, backend: str = "local",
           num_workers: int | None = None, ray_address: str | None = None,
           distinct: bool = True, explain: bool = True) -> Selection:
    """Select a subset of ``pool`` for the task that ``target`` exemplifies.

    pool, target: a path (file or folder), hub id, ``datasets.Dataset``, list of row dicts,
        list of :class:`Example`, or :class:`LoadedData`.
    method: a registered method name (see ``tasksift methods``) or a recipe such as
        ``"dedup -> tsds"``; ``config`` holds the method's options (for a recipe: options of
        its last, selecting step, overriding those written in the recipe).
    budget / count / ratio / tokens: how much to select (``budget=500`` or ``ratio=0.01``).
    group_by: a raw-row field (or ``"source"``) to split the budget by, with ``quotas``
        ("proportional", "equal" or a mapping group -> fraction or count); the method runs
        within each group.
    seed: every random choice derives from it; equal inputs and seed give equal output.
    backend: "local" (in-process), "processes" (``num_workers`` worker processes on this
        machine, default one per core, in the roles Ray's workers take), "ray" (features
        computed by Ray actors, ``num_workers`` of them, on the cluster at ``ray_address`` /
        ``$RAY_ADDRESS`` or a local one; TSDS also runs its neighbour search and KDE as Ray
        tasks over shards of the pool), or an
        :class:`~tasksift.exec.Executor` already built (see :func:`tasksift.exec.make_executor`).
    distinct: count distinct content (default): pool rows repeating an earlier row's content
        (same example id) are collapsed before the method runs, so no content is picked
        twice (``info["duplicates_collapsed"]``); False keeps every row as a candidate.
    explain: find each selected row's nearest target example (output columns
        ``nearest_target``/``nearest_target_sim``, ``sel.explanation``, the data of
        ``report.html``; see :mod:`tasksift.report.explain`).
    """
    check_seed(seed)
    config = dict(config or {})
    check_method_options(method, config)   # before any expensive work
    t0 = time.perf_counter()
    executor = make_executor(backend, workers=num_workers, address=ray_address)
    timings: dict[str, float] = {}
    pool_d = _as_loaded(pool, "pool", pool_layout, pool_fields, skip_bad, split, executor)  # Ray: workers parse it
    target_d = _as_loaded(target, "target", target_layout, target_fields, skip_bad, split)
    timings["load"] = time.perf_counter() - t0
    b = make_budget(budget, count=count, ratio=ratio, tokens=tokens)
    k = b.rows(len(pool_d)) if tokens is None else 0   # rows: of the pool as given
    info: dict[str, Any] = {"backend": executor.name}
    full_d, (pool_d, keep) = pool_d, candidates(pool_d, distinct, info)   # pool_d: the candidates
    n_tok = None
    if tokens is not None:   # the budget's unit: whitespace-separated words of the rendered row
        n_tok = pool_d.pool.words.astype(np.int64)
        k = b.rows(len(pool_d), n_tok)
    budget_rows, k = k, min(k, len(pool_d))
    name = method if isinstance(method, str) else "recipe"
    ctx = SelectionContext(pool_d.pool, list(target_d.examples), seed=seed, cache_dir=cache_dir,
                           progress=progress, embed_config=embed, executor=executor)
    ctx.timings = timings
    if group_by:
        groups = _groups(pool_d, group_by)
        garr = np.asarray([str(g) for g in groups])
        if n_tok is None:
            alloc = allocate_quotas(groups, k, quotas)
        else:   # a token budget is shared out in tokens, then each group is cut to its share
            alloc = allocate_token_quotas(groups, n_tok, tokens, quotas)
        parts, per_group_info = [], {}
        scores = np.full(len(pool_d), np.nan)
        columns: dict[str, np.ndarray] = {}
        for g, kg in alloc.items():
            members = np.flatnonzero(garr == g)
            if n_tok is not None:
                if kg < int(n_tok[members].min()):
                    continue         # its share is smaller than any of its rows
                kg, group_tokens = max_rows_within(n_tok[members], kg), kg
            if kg == 0:
                continue
            sub = ctx.restrict(members)
            res = run_method(method, config, sub, kg)
            picked = np.asarray(res.indices, dtype=np.int64)
            if n_tok is not None:
                picked = cut_to_tokens(picked, n_tok[members], group_tokens)
            parts.append(members[picked])
            if res.scores is not None:
                scores[members] = res.scores
            for cname, col in res.columns.items():
                full = columns.setdefault(cname, np.full(len(pool_d), np.nan))
                full[members] = col
            per_group_info[g] = {"quota": kg, **res.info}
            if n_tok is not None:
                per_group_info[g]["quota_tokens"] = group_tokens
        if not parts:
            raise ConfigError(f"token budget of {tokens} leaves no group a share that holds one of its rows "
                              f"(shortest row: {int(n_tok.min())} words)")
        result = MethodResult(indices=np.concatenate(parts),
                              scores=scores, columns=columns, info={"groups": per_group_info})
        info["group_by"] = group_by
        info["quotas"] = {g: n for g, n in alloc.items()}
    else:
        result = run_method(method, config, ctx, k)
    info.update(result.info)
    if n_tok is not None:
        if not group_by:       # groups were each cut to their share above
            result.indices = cut_to_tokens(np.asarray(result.indices, dtype=np.int64), n_tok, tokens)
        info["token_budget"] = {"tokens": tokens, "counted_as": "whitespace-separated words",
                                "rows_ranked": k, "selected_tokens": int(n_tok[result.indices].sum())}
    idx = np.asarray(result.indices, dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        raise RuntimeError(f"method {name} returned duplicate indices")
    if k < budget_rows and not info.get("short") and not (info.get("selector") or {}).get("short"):
        info["short"] = (f"the pool holds {len(pool_d)} distinct rows "      # only collapsing makes k short
                         f"({info.get('duplicates_collapsed', 0)} duplicates collapsed)")
    scores, columns, explanation = result.scores, dict(result.columns), None
    if explain and len(idx):   # on the candidates the method saw; mapped back with the columns below
        from .report.explain import explain_selection

        explanation = explain_selection(ctx, idx, columns)
        columns.update(explanation.pool_columns(len(pool_d), idx))
        info["nearest_target"] = explanation.describe()
    if keep is not None:   # back to positions in the pool as given
        idx = keep[idx]
        scores = None if scores is None else spread(scores, keep, len(full_d))
        columns = {c: spread(v, keep, len(full_d)) for c, v in columns.items()}
        if explanation is not None:
            explanation.duplicate_groups = [keep[np.asarray(g, dtype=np.int64)].tolist()
                                            for g in explanation.duplicate_groups]
    check_result_size(idx, budget_rows, len(full_d), info, counted_in_tokens=n_tok is not None)
    note_targets_in_pool(full_d.pool, target_d.pool, idx, info)
    timings["total"] = time.perf_counter() - t0
    return Selection(indices=idx, ids=full_d.pool.id_list(idx), scores=scores,
                     columns=columns, method=name if isinstance(method, str) else str(method),
                     config=config, budget=b, seed=seed, pool=full_d, target=target_d, info=info,
                     timings=timings, embedding=embedding_block(ctx.embed_config, timings),
                     explanation=explanation)


#: The seeds numpy's generators take.
SEED_RANGE = Interval(int, 0, 2**32 - 1)


def check_seed(seed: Any) -> None:
    """One-line ConfigError for a seed numpy would refuse (negative, too large, not an int)."""
    if not SEED_RANGE.accepts(seed):
        raise ConfigError(f"seed must be {SEED_RANGE.describe()}, got {seed!r}")


def check_method_options(method: str | Sequence | Mapping, config: Mapping[str, Any]) -> None:
    """Options checked against the (last, selecting) method's declared table: one
    ConfigError before anything is loaded."""
    if isinstance(method, str) and "->" not in method:
        get_method(method)(**dict(config))
        return
    from .recipe import parse_recipe

    last = parse_recipe(method).steps[-1]
    get_method(last.name)(**{**last.options, **dict(config)})


def candidates(data: LoadedData, distinct: bool, info: dict[str, Any]) -> tuple[LoadedData, np.ndarray | None]:
    """The rows a method chooses from: with ``distinct``, the first row of each content
    (and their positions in ``data``), else every row (positions None). Records
    ``info["duplicates_collapsed"]`` (or ``duplicates_kept``: rows repeating earlier content)."""
    first = distinct_rows(data.pool)
    repeats = 0 if first is None else len(data) - len(first)
    if not distinct or first is None:
        info["duplicates_collapsed"] = 0
        if repeats:
            info["duplicates_kept"] = repeats
        return data, None
    info["duplicates_collapsed"] = repeats
    view = LoadedData(data.pool.take(first), path=data.path, format=data.format, layout=data.layout,
                      sources=data.sources, layouts=data.layouts)
    return view, first


def distinct_rows(pool: Any) -> np.ndarray | None:
    """Positions of the first row of each distinct content (example id), in pool order;
    None when no row repeats another.

    Ids of one width (content hashes) are compared as a fixed-width numpy view of the Arrow
    string buffer: a stable sort puts equal ids side by side in pool order, so the first of
    each run is the row kept. At 10M ids the step peaks ~0.37 GB above its input, where an
    Arrow hash group-by peaked ~1.3 GB (README, scale section). Other ids (mixed widths,
    nulls) go through a dictionary encoding."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pool.ids
    if len(ids) < 2:
        return None
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.chunk(0) if ids.num_chunks == 1 else ids.combine_chunks()
    fixed = _fixed_width(ids)
    if fixed is not None:
        order = np.argsort(fixed, kind="stable")
        ranked = fixed[order]
        starts = np.empty(len(ranked), dtype=bool)
        starts[0] = True
        np.not_equal(ranked[1:], ranked[:-1], out=starts[1:])
        if starts.all():
            return None
        return np.sort(order[starts])
    codes = pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    return None if len(first) == len(codes) else np.sort(first)


def _fixed_width(ids: Any) -> np.ndarray | None:
    """The Arrow string array ``ids`` as a numpy ``S<width>`` array over its data buffer,
    when every id has the same byte width and none is null; else None."""
    import pyarrow as pa

    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)) or ids.null_count:
        return None
    offset_type = np.int64 if pa.types.is_large_string(ids.type) else np.int32
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[ids.offset: ids.offset + len(ids) + 1]
    widths = np.diff(offsets)
    width = int(widths[0])
    if width == 0 or (widths != width).any():
        return None
    data = np.frombuffer(data_buf, dtype=np.uint8)[int(offsets[0]): int(offsets[-1])]
    # numpy's S compare ignores trailing NUL bytes, which at one width keeps distinct ids apart
    return data.view(f"S{width}")


def spread(values: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """Per-candidate ``values`` as one entry per pool row (``positions`` of the candidates);
    the other rows get NaN (float values) or None."""
    values = np.asarray(values)
    if values.dtype.kind in "fc":
        out = np.full(n, np.nan, dtype=values.dtype)
    else:
        out = np.full(n, None, dtype=object)
    out[positions] = values
    return out


def _warn(info: dict[str, Any], message: str) -> None:
    """Record a warning line (the CLI prints each one; the manifest keeps them)."""
    info.setdefault("warnings", []).append(message)
    warnings.warn(message, SelectionWarning, stacklevel=4)   # at the caller of select()


def check_result_size(indices: np.ndarray, k: int, n_pool: int, info: dict[str, Any], *,
                      counted_in_tokens: bool = False) -> None:
    """The rule for empty and short results: zero selected rows is an error (nothing to train
    on, exit 2); fewer rows than the budget asked for is a warning and ``info["shortfall"]``
    (budget rows, selected, missing, and the method's reason when it gave one). A token budget
    is cut in tokens, so only the empty case applies to it."""
    reason = info.get("short") or (info.get("selector") or {}).get("short")
    if len(indices) == 0:
        why = f" ({reason})" if reason else ""
        raise DataError(f"selected 0 of {n_pool} pool rows{why}: nothing to write; loosen the filters "
                        f"or check the method's options")
    if counted_in_tokens or len(indices) >= k:
        return
    info["shortfall"] = {"budget_rows": int(k), "selected": int(len(indices)),
                         "missing": int(k - len(indices)), "reason": reason}
    _warn(info, f"selected {len(indices)} rows, {k - len(indices)} fewer than the budget of {k}"
                + (f" ({reason})" if reason else ""))


def note_targets_in_pool(pool: Pool | Sequence[Example], target: Pool | Sequence[Example], indices: np.ndarray,
                         info: dict[str, Any]) -> None:
    """Target examples whose content also sits in the pool (same example id) make a selection
    look better on them than it is: count them (and how many were selected) in
    ``info["target_in_pool"]`` with one warning line. Matched on the id columns
    (``pyarrow.compute.is_in``), without reading the pool's rows."""
    import pyarrow.compute as pc

    target_ids = pc.unique(as_pool(target).ids)
    if not len(target_ids) or not len(pool):
        return
    ids = as_pool(pool).ids
    hit_column = pc.is_in(ids, value_set=target_ids)   # ids are never null
    hit = hit_column.to_numpy(zero_copy_only=False)
    if not hit.any():
        return
    in_pool = len(pc.unique(ids.filter(hit_column)))
    picked = int(hit[np.asarray(indices, dtype=np.int64)].sum())
    info["target_in_pool"] = {"target_examples": in_pool, "selected_pool_rows": picked}
    _warn(info, f"{in_pool} of {len(target_ids)} target examples also sit in the pool "
                f"({picked} of the selected rows are copies of them)")


def _groups(data: LoadedData, field_name: str) -> list[str]:
    """The group of every pool row (read from the source column, or from raw rows a batch at a time)."""
    if field_name == "source":
        return [Path(s).parts[0] if s else "<input>" for s in data.pool.sources]
    return [_group_of(ex, field_name) for batch in data.pool.batches() for ex in batch]


def _group_of(ex: Example, field_name: str) -> str:
    if field_name == "source":
        return Path(ex.source).parts[0] if ex.source else "<input>"
    if isinstance(ex.raw, Mapping) and field_name in ex.raw:
        return str(ex.raw[field_name])
    from .errors import DataError

    raise DataError(f"group field missing (group_by={field_name})", file=ex.source, row=ex.row,
                    field=field_name)
