"""``tasksift select ... --estimate``: what a run would cost, before running it.

Counts the pool's rows, unique rows and rows already in the feature cache, then times each
stage on a small sample instead of computing its features:

* embedding: the model's forward pass on a seeded sample of the rows still to embed
  (nothing is cached, ``encode`` is not used); the time per token of that sample, times the
  token count of every row to embed (estimated from its length in characters, at the
  sample's characters per token, capped at the model's maximum);
* the method (for methods that need embeddings only): a trial run on at most
  ``method_sample`` pool rows with random unit vectors, scaled linearly to the pool.

Methods that need a language model, gradients or n-grams are listed as not estimated.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .data.example import Example
from .data.loading import LoadedData, load_examples
from .data.pool import Pool
from .errors import ConfigError
from .store import FeatureStore
from .features.embed import EmbedConfig, Embedder, example_texts
from .features.embed_models import StaticEncoder
from .manifest import peak_memory_mb

EMBEDDING_NEEDS = {"embeddings"}


@dataclass
class StageEstimate:
    """One stage: rows it would compute, estimated seconds and peak process memory (MiB)."""

    stage: str
    rows: int
    seconds: float | None
    memory_mb: float | None
    how: str


@dataclass
class Estimate:
    """Row counts and per-stage cost of a ``select`` run (see :func:`estimate_select`)."""

    method: str
    rows: int
    unique_rows: int
    cached_rows: int
    target_rows: int
    target_unique_rows: int
    target_cached_rows: int
    stages: list[StageEstimate] = field(default_factory=list)
    seconds_spent: float = 0.0

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds or 0.0 for s in self.stages)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_seconds": self.total_seconds}

    def table(self) -> str:
        lines = [f"tasksift select --estimate ({self.method}): pool {self.rows:,} rows, "
                 f"{self.unique_rows:,} unique, {self.cached_rows:,} already cached; target "
                 f"{self.target_rows:,} rows, {self.target_unique_rows:,} unique, "
                 f"{self.target_cached_rows:,} cached",
                 "| stage | rows to compute | est. time | est. peak memory | from |",
                 "|---|---:|---:|---:|---|"]
        for s in self.stages:
            t = "-" if s.seconds is None else fmt_seconds(s.seconds)
            m = "-" if s.memory_mb is None else f"{s.memory_mb:,.0f} MiB"
            lines.append(f"| {s.stage} | {s.rows:,} | {t} | {m} | {s.how} |")
        lines.append(f"estimated total {fmt_seconds(self.total_seconds)} "
                     f"(this estimate took {self.seconds_spent:.1f} s)")
        return "\n".join(lines)


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def embedding_ids(examples: Sequence[Example], config: EmbedConfig) -> list[str]:
    """The feature-cache ids the embedder uses for ``examples`` (checked against the
    embedder by the tests); a :class:`Pool`'s ids come from its id column, no row is read."""
    ids = examples.id_list() if isinstance(examples, Pool) else [ex.id for ex in examples]
    return [i + ":" + config.text for i in ids]


def rows_at(examples: Sequence[Example], positions: Sequence[int]) -> list[Example]:
    """The examples at ``positions`` (a :class:`Pool` reads each stored batch once)."""
    if isinstance(examples, Pool):
        return examples.examples(np.asarray(positions, dtype=np.int64))
    return [examples[i] for i in positions]


def text_chars(examples: Sequence[Example], positions: Sequence[int], config: EmbedConfig) -> np.ndarray:
    """Characters of the text the embedder would embed for each row at ``positions`` (cut at
    ``max_chars``): a :class:`Pool`'s ``chars`` column for the whole text (no row is read),
    else the texts themselves, read a batch at a time."""
    if isinstance(examples, Pool) and config.text == "text":
        return np.minimum(examples.chars[np.asarray(positions, dtype=np.int64)], config.max_chars).astype(np.float64)
    out = np.empty(len(positions), dtype=np.float64)
    for s in range(0, len(positions), 4096):
        part = rows_at(examples, positions[s:s + 4096])
        out[s:s + len(part)] = [len(t) for t in example_texts(part, config.text, config.max_chars)]
    return out


def method_needs(method: str | Sequence | Mapping) -> set[str]:
    """The features a method or recipe needs (the union over a recipe's steps)."""
    from .methods.registry import available_methods

    needs = {i.name: set(i.needs) for i in available_methods()}
    if isinstance(method, str) and "->" not in method:
        names = [method]
    else:
        from .recipe import parse_recipe

        names = [s.name for s in parse_recipe(method).steps]
    out: set[str] = set()
    for n in names:
        if n not in needs:
            raise ConfigError(f"unknown method {n!r} (see `tasksift methods`)")
        out |= needs[n]
    return out


def count_rows(examples: Sequence[Example], config: EmbedConfig, cache: FeatureStore) -> tuple[int, list[int]]:
    """(unique rows, positions of the first occurrence of each unique row not yet cached)."""
    first: dict[str, int] = {}
    for pos, ex_id in enumerate(embedding_ids(examples, config)):
        first.setdefault(ex_id, pos)
    unique = list(first)
    return len(unique), [first[unique[i]] for i in cache.missing(unique)]


def time_transformer(model: Any, texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds of the forward passes over ``texts`` (batched, longest first, after one
    untimed warm-up batch) and the token count of each text."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    batches = [[texts[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    device = model.device
    tokens = []

    def run(batch: list[str]) -> None:
        feats = (getattr(model, "preprocess", None) or model.tokenize)(batch)
        tokens.extend(feats["attention_mask"].sum(1).tolist())
        feats = {k: v.to(device) if hasattr(v, "to") else v for k, v in feats.items()}
        with torch.inference_mode():
            model(feats)

    run(batches[-1][:8])
    tokens.clear()
    t = time.perf_counter()
    for b in batches:
        run(b)
    if device.type == "cuda":  # pragma: no cover - GPU only
        torch.cuda.synchronize()
    return time.perf_counter() - t, np.asarray(tokens, dtype=np.float64)


def estimate_embedding(embedder: Embedder, examples: Sequence[Example], todo: list[int], *,
                       stage: str, sample: int, seed: int, measured: dict | None) -> tuple[StageEstimate, dict]:
    """Estimate embedding ``todo`` (positions into ``examples``); ``measured`` reuses an
    earlier stage's per-token rate (same model)."""
    cfg = embedder.config
    n = len(todo)
    chars = text_chars(examples, todo, cfg)
    if n == 0:
        return StageEstimate(stage, 0, 0.0, None, "all cached"), measured or {}
    if measured is None:
        t0 = time.perf_counter()
        model = embedder.model
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(seed)
        static = isinstance(model, StaticEncoder)
        k = min(n, sample * (16 if static else 1))
        pick = rng.choice(n, size=k, replace=False)
        texts = example_texts(rows_at(examples, [todo[i] for i in pick]), cfg.text, cfg.max_chars)
        if static:
            model.encode(texts[:8])                         # warm-up
            t = time.perf_counter()
            model.encode(texts, batch_size=cfg.resolved_batch_size())   # the path the run takes
            secs = time.perf_counter() - t
            measured = {"per_char": secs / max(1.0, chars[pick].sum()), "static": True, "load_s": load_s,
                        "dim": int(model.model.dim), "sample": k}
        else:
            secs, tok = time_transformer(model, texts, cfg.resolved_batch_size())
            max_len = int(getattr(model, "max_seq_length", 0) or tok.max())
            uncapped = tok < max_len
            ratio = (chars[pick][uncapped].sum() / max(1.0, tok[uncapped].sum())) if uncapped.any() \
                else chars[pick].sum() / max(1.0, tok.sum())
            measured = {"per_token": secs / max(1.0, tok.sum()), "chars_per_token": float(ratio),
                        "max_len": max_len, "static": False, "load_s": load_s,
                        "dim": model_dim(model), "sample": k}
    if measured["static"]:
        secs = float(chars.sum() * measured["per_char"])
        how = f"{measured['sample']}-row sample, static model"
    else:
        est_tok = np.minimum(np.ceil(chars / measured["chars_per_token"]) + 2, measured["max_len"])
        secs = float(est_tok.sum() * measured["per_token"])
        how = (f"{measured['sample']}-row sample, {cfg.resolved_dtype()}: "
               f"{1 / measured['per_token']:,.0f} tokens/s, {est_tok.mean():.0f} tokens/row")
    if stage == "embed pool":
        secs += measured["load_s"]
        how += f", model load {measured['load_s']:.0f} s"
    mem = peak_memory_mb() + 2 * n * measured["dim"] * 4 / 2 ** 20
    return StageEstimate(stage, n, secs, mem, how), measured


def estimate_method(method: Any, config: Mapping[str, Any], n_pool: int, n_target: int, k: int, dim: int,
                    *, seed: int, method_sample: int, target_sample: int = 256) -> StageEstimate:
    """A trial of an embeddings-only method on at most ``method_sample`` pool rows and
    ``target_sample`` target rows of random unit vectors, scaled linearly in both."""
    from .api import run_method
    from .methods.base import SelectionContext

    m = min(n_pool, method_sample)
    t_rows = min(n_target, target_sample)
    rng = np.random.default_rng(seed)

    def unit(rows: int) -> np.ndarray:
        v = rng.standard_normal((rows, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    pool = [Example(messages=[{"role": "user", "content": f"row {i}"}, {"role": "assistant", "content": "."}],
                    raw={}, row=i) for i in range(m)]
    target = [Example(messages=[{"role": "user", "content": f"target {i}"}, {"role": "assistant", "content": "."}],
                      raw={}, row=i) for i in range(t_rows)]
    ctx = SelectionContext(pool, target, seed=seed, progress=False)
    ctx.set_embeddings("pool", unit(m))
    ctx.set_embeddings("target", unit(t_rows))
    km = max(1, min(m, round(k * m / max(1, n_pool))))
    base = peak_memory_mb()
    t = time.perf_counter()
    run_method(method, config, ctx, km)
    secs = time.perf_counter() - t
    scale = n_pool / m * (n_target / t_rows)
    return StageEstimate(str(method), n_pool, secs * scale, base + (peak_memory_mb() - base) * n_pool / m,
                         f"trial: {m:,} pool x {t_rows:,} target rows of random vectors, time x{scale:.1f}")


def estimate_select(pool: Any, target: Any, method: str | Sequence | Mapping = "tsds", *,
                    k: int | None = None, ratio: float | None = None, config: Mapping[str, Any] | None = None,
                    embed: EmbedConfig | None = None, cache_dir: Any = None, seed: int = 0,
                    sample: int = 64, method_sample: int = 2000, load_kwargs: Mapping[str, Any] | None = None,
                    target_load_kwargs: Mapping[str, Any] | None = None) -> Estimate:
    """Estimate a ``select`` run: row counts (all, unique, cached) and per-stage time and
    memory from samples (see the module doc). Writes nothing to the cache."""
    t_start = time.perf_counter()
    t = time.perf_counter()
    pool_d = pool if isinstance(pool, LoadedData) else load_examples(pool, role="pool", **dict(load_kwargs or {}))
    target_d = target if isinstance(target, LoadedData) else load_examples(
        target, role="target", **dict(target_load_kwargs or {}))
    load_s = time.perf_counter() - t
    cfg = embed or EmbedConfig()
    embedder = Embedder(cfg, cache_dir=cache_dir, progress=False)
    n_unique, todo = count_rows(pool_d.examples, cfg, embedder.cache)
    t_unique, t_todo = count_rows(target_d.examples, cfg, embedder.cache)
    needs = method_needs(method)
    name = method if isinstance(method, str) else "recipe"
    est = Estimate(method=name, rows=len(pool_d), unique_rows=n_unique, cached_rows=n_unique - len(todo),
                   target_rows=len(target_d), target_unique_rows=t_unique, target_cached_rows=t_unique - len(t_todo))
    est.stages.append(StageEstimate("load", len(pool_d) + len(target_d), load_s, peak_memory_mb(), "measured"))
    if "embeddings" in needs:
        st, measured = estimate_embedding(embedder, pool_d.examples, todo, stage="embed pool", sample=sample,
                                          seed=seed, measured=None)
        est.stages.append(st)
        st, measured = estimate_embedding(embedder, target_d.examples, t_todo, stage="embed target",
                                          sample=sample, seed=seed, measured=measured or None)
        est.stages.append(st)
    if needs <= EMBEDDING_NEEDS:
        if k is None:
            k = max(1, round((ratio or 0.01) * len(pool_d)))
        if "embeddings" not in needs:
            dim = 8                           # the method ignores the vectors
        else:
            dim = measured.get("dim") if measured else None
            dim = dim or embed_dim(embedder)  # everything cached: nothing was sampled
        est.stages.append(estimate_method(method, config or {}, len(pool_d), len(target_d), k, dim,
                                          seed=seed, method_sample=method_sample))
    else:
        est.stages.append(StageEstimate(str(method), len(pool_d), None, None,
                                        f"not estimated (needs {', '.join(sorted(needs - EMBEDDING_NEEDS))})"))
    est.seconds_spent = time.perf_counter() - t_start
    return est


def embed_dim(embedder: Embedder) -> int:
    """Width of the embedder's vectors (loads the model)."""
    return model_dim(embedder.model)


def model_dim(model: Any) -> int:
    """Width of a SentenceTransformer's or StaticEncoder's vectors."""
    if isinstance(model, StaticEncoder):
        return int(model.model.dim)
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())
