"""Selection recipes: filters, then one selector, e.g. ``dedup(threshold=0.95) -> knn``.

A recipe is a list of steps. Every step but the last is a *filter*: it shrinks the candidate
set; the last step *selects* k rows from what is left (run on ``ctx.restrict(kept)``, so pool
embeddings already computed are sliced, not recomputed) and its positions are mapped back to
the full pool.

A filter step uses the method's ``keep_mask(ctx)`` when it has one (``dedup``, ``length``).
Any other method can filter too: it is asked for ``keep`` rows (a fraction of the current
candidates when < 1, a count when >= 1; default: all of them) and the rows it returns stay,
so ``ifd(filter) -> kcenter`` keeps the rows IFD deems eligible (IFD <= 1) and
``dsir(keep=0.2) -> kcenter`` keeps the 20% DSIR draws.

Forms accepted by :func:`parse_recipe`:

- a string ``"a -> b(opt=1, other=[1, 2]) -> c"``; inside the parentheses ``name=value``
  pairs (values parsed as YAML) and bare flags (``filter`` = ``filter=true``);
- a path to a YAML file holding one of the forms below (``.yaml`` / ``.yml``);
- a list of steps, each a string as above, ``{"method": name, "options": {...}}`` (optional
  ``"filter"``/``"keep"`` keys), or a one-key mapping ``{name: {options}}``;
- a mapping ``{"steps": [...]}`` (or ``{"recipe": [...]}``).

Step-level keys ``filter`` and ``keep`` are not passed to the method. If the filters leave
fewer than k rows, the selector gets all of them and the result says so (``info["short"]``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ConfigError
from .methods.base import MethodResult, SelectionContext, SelectionMethod
from .methods.registry import get_method

_STEP = re.compile(r"^\s*([A-Za-z_][\w\-.]*)\s*(?:\((.*)\))?\s*$", re.S)
STEP_KEYS = ("filter", "keep")


@dataclass
class Step:
    """One recipe step: a registered method, its options, and (for filters) how much it keeps."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    filter: bool = False
    keep: float | int | None = None

    def method(self) -> SelectionMethod:
        return get_method(self.name)(**self.options)

    def describe(self) -> str:
        parts = [f"{k}={json.dumps(v, default=str)}" for k, v in self.options.items()]
        if self.keep is not None:
            parts.append(f"keep={self.keep}")
        return f"{self.name}({', '.join(parts)})" if parts else self.name


def _split_top_level(s: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets, braces, parentheses and quotes."""
    out, depth, quote, cur = [], 0, None, []
    i = 0
    while i < len(s):
        ch = s[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            out.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        cur.append(ch)
        i += 1
    if quote or depth:
        raise ConfigError(f"unbalanced brackets or quotes in recipe {s!r}")
    out.append("".join(cur))
    return out


def _parse_step_string(text: str) -> Step:
    import yaml

    m = _STEP.match(text)
    if not m:
        raise ConfigError(f"bad recipe step {text.strip()!r}: expected name or name(opt=value, ...)")
    name, inner = m.group(1), m.group(2)
    opts: dict[str, Any] = {}
    if inner and inner.strip():
        for part in _split_top_level(inner, ","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                if not re.fullmatch(r"[A-Za-z_]\w*", part):
                    raise ConfigError(f"bad option {part!r} in recipe step {name!r}: expected name=value")
                opts[part] = True
                continue
            k, v = part.split("=", 1)
            try:
                opts[k.strip()] = yaml.safe_load(v.strip())
            except yaml.YAMLError:
                raise ConfigError(f"bad value for option {k.strip()!r} in recipe step {name!r}: {v.strip()!r}") from None
    return _make_step(name, opts)


def _make_step(name: str, opts: Mapping[str, Any], flt: Any = None, keep: Any = None) -> Step:
    opts = dict(opts or {})
    flt = opts.pop("filter", flt)
    keep = opts.pop("keep", keep)
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or keep <= 0:
            raise ConfigError(f"recipe step {name!r}: keep must be a fraction in (0, 1) or a row count >= 1, got {keep!r}")
    step = Step(name=str(name), options=opts, filter=bool(flt), keep=keep)
    step.method()  # unknown method or options: ConfigError now, before any work
    return step


def _parse_step(item: Any) -> Step:
    if isinstance(item, str):
        return _parse_step_string(item)
    if isinstance(item, Mapping):
        if "method" in item:
            extra = set(item) - {"method", "options", "filter", "keep"}
            if extra:
                raise ConfigError(f"recipe step has unknown key(s) {sorted(extra)}; "
                                  f"keys: method, options, filter, keep")
            opts = item.get("options") or {}
            if not isinstance(opts, Mapping):
                raise ConfigError(f"recipe step {item['method']!r}: options must be a mapping")
            return _make_step(item["method"], opts, item.get("filter"), item.get("keep"))
        if len(item) == 1:
            (name, opts), = item.items()
            if opts is not None and not isinstance(opts, Mapping):
                raise ConfigError(f"recipe step {name!r}: options must be a mapping")
            return _make_step(name, opts or {})
    raise ConfigError(f"bad recipe step {item!r}: expected 'name(opt=value)', {{method: name, options: {{...}}}} "
                      f"or {{name: {{options}}}}")


@dataclass
class Recipe:
    """Filters then a selector. :meth:`run` returns a :class:`MethodResult` over the full pool."""

    steps: list[Step]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError("a recipe needs at least one step")
        if self.steps[-1].filter and len(self.steps) > 1:
            raise ConfigError(f"the last recipe step ({self.steps[-1].name}) selects; it cannot be marked filter")

    def describe(self) -> str:
        """The recipe as a string that :func:`parse_recipe` reads back."""
        return " -> ".join(s.describe() for s in self.steps)

    @property
    def needs(self) -> tuple[str, ...]:
        """Features any step needs (union of the methods' ``needs``), e.g. ("embeddings", "lm")."""
        out: dict[str, None] = {}
        for s in self.steps:
            out.update(dict.fromkeys(get_method(s.name).info.needs))
        return tuple(out)

    @property
    def stochastic(self) -> bool:
        """Whether the seed can change the result (some step is stochastic)."""
        return any(get_method(s.name).info.stochastic for s in self.steps)

    def keep_mask(self, ctx: SelectionContext) -> np.ndarray:
        """Apply every filter step (all but the last) in turn; True = the row is still a candidate."""
        return self._filter(ctx, self.steps[:-1], {}, [])[0]

    def _filter(self, ctx: SelectionContext, steps: Sequence[Step], columns: dict[str, np.ndarray],
                log: list[dict]) -> tuple[np.ndarray, SelectionContext]:
        """Run the filter steps; each works on the context of the rows the previous ones kept
        (so features computed by one filter are sliced for the next, not recomputed).
        Returns (mask over the full pool, context over the kept rows)."""
        n = len(ctx.pool)
        kept = np.arange(n)
        cur = ctx
        for step in steps:
            method = step.method()
            rows_in = len(kept)
            entry: dict[str, Any] = {"step": step.describe(), "rows_in": rows_in}
            if rows_in == 0:
                entry["rows_kept"] = 0
                log.append(entry)
                continue
            if hasattr(method, "keep_mask") and step.keep is None:
                mask = np.asarray(method.keep_mask(cur), dtype=bool)
                if mask.shape != (rows_in,):
                    raise RuntimeError(f"{step.name}.keep_mask returned shape {mask.shape} for {rows_in} rows")
                entry["info"] = dict(getattr(method, "last_info", {}))
                local = np.flatnonzero(mask)
            else:
                m = rows_in if step.keep is None else (
                    int(round(step.keep * rows_in)) if step.keep < 1 else min(int(step.keep), rows_in))
                res = method.select(cur, max(m, 1))
                local = np.sort(np.asarray(res.indices, dtype=np.int64))
                entry["info"] = res.info
                _merge_columns(columns, res, kept, n, step.name)
            if len(local) < rows_in:
                kept = kept[local]
                cur = cur.restrict(local)
            entry["rows_kept"] = int(len(kept))
            log.append(entry)
        mask = np.zeros(n, dtype=bool)
        mask[kept] = True
        return mask, cur

    def run(self, ctx: SelectionContext, k: int) -> MethodResult:
        """Filter, then select ``k`` rows (or all that remain) from the survivors."""
        n = len(ctx.pool)
        log: list[dict] = []
        columns: dict[str, np.ndarray] = {}
        with ctx.timed("recipe_filters"):
            mask, sub = self._filter(ctx, self.steps[:-1], columns, log)
        kept = np.flatnonzero(mask)
        final = self.steps[-1]
        info: dict[str, Any] = {"recipe": self.describe(), "filters": log, "candidates": int(len(kept))}
        kk = min(int(k), len(kept))
        if kk < k:
            info["short"] = f"the filters left {len(kept)} rows, fewer than the budget of {k}"
        scores = np.full(n, np.nan)
        if kk == 0:
            return MethodResult(indices=np.zeros(0, dtype=np.int64), scores=scores, columns=columns, info=info)
        res = final.method().select(sub, kk)
        indices = kept[np.asarray(res.indices, dtype=np.int64)]
        if res.scores is not None:
            scores[kept] = np.asarray(res.scores, dtype=np.float64)
        _merge_columns(columns, res, kept, n, final.name)
        columns["recipe_candidate"] = mask.astype(np.float64)
        info["selector"] = {"step": final.describe(), **res.info}
        return MethodResult(indices=indices, scores=scores, columns=columns, info=info)

    # a Recipe can stand where a method is expected
    select = run


def _merge_columns(columns: dict[str, np.ndarray], res: MethodResult, kept: np.ndarray, n: int,
                   step_name: str) -> None:
    for cname, col in res.columns.items():
        name = cname if cname not in columns else f"{step_name}_{cname}"
        full = np.full(n, np.nan)
        full[kept] = np.asarray(col, dtype=np.float64)
        columns[name] = full


def load_recipe(path: str | Path) -> Recipe:
    """A recipe from a YAML file (a list of steps, ``{steps: [...]}`` or a ``"a -> b"`` string)."""
    from .yamlfile import read_yaml

    data = read_yaml(path, "recipe file")
    if data is None:
        raise ConfigError("recipe file is empty", file=str(path))
    try:
        return parse_recipe(data)
    except ConfigError as e:
        raise ConfigError(str(e), file=str(path)) from None


def parse_recipe(spec: str | Sequence | Mapping | Recipe) -> Recipe:
    """A :class:`Recipe` from ``"a -> b"``, a YAML file path, a list of steps or ``{steps: [...]}``."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, str):
        s = spec.strip()
        if not s:
            raise ConfigError("empty recipe")
        if "->" not in s and s.lower().endswith((".yaml", ".yml")):
            return load_recipe(s)
        parts = _split_top_level(s, "->")
        if any(not p.strip() for p in parts):
            raise ConfigError(f"recipe {spec!r} has an empty step")
        return Recipe([_parse_step_string(p) for p in parts])
    if isinstance(spec, Mapping):
        for key in ("steps", "recipe"):
            if key in spec:
                extra = set(spec) - {key}
                if extra:
                    raise ConfigError(f"recipe mapping has unknown key(s) {sorted(extra)}")
                return parse_recipe(spec[key])
        return Recipe([_parse_step(spec)])
    if isinstance(spec, Sequence):
        return Recipe([_parse_step(item) for item in spec])
    raise ConfigError(f"a recipe is a string 'a -> b', a list of steps or {{steps: [...]}}, got {type(spec).__name__}")
