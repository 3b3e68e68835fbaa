"""``select --estimate``: row counts (all, unique, cached) without computing features."""
from __future__ import annotations

import json

import pytest

from tasksift.estimate import embedding_ids, estimate_select, method_needs
from tasksift.features.embed import EmbedConfig, Embedder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def tiny_pool(tmp_path):
    rows = [{"instruction": f"how many apples does cat {i} buy", "output": f"{i} apples"} for i in range(30)]
    rows += rows[:5]                                     # 5 duplicate rows: 30 unique of 35
    target = [{"instruction": "how many apples", "output": "3"}, {"instruction": "sum of list", "output": "6"}]
    return write_jsonl(tmp_path / "pool.jsonl", rows), write_jsonl(tmp_path / "target.jsonl", target)


def shards(cache_dir):
    return sorted(p.name for p in cache_dir.rglob("shard-*.npz"))


def test_estimate_counts_rows_and_computes_no_features(tiny_pool, tiny_embed_model, tmp_path, monkeypatch):
    from tasksift.data import load_examples

    pool, target = tiny_pool
    cache = tmp_path / "cache"
    cfg = EmbedConfig(model=tiny_embed_model, device="cpu")
    first = load_examples(pool).examples[:12]
    Embedder(cfg, cache_dir=cache, progress=False).embed(first)   # 12 rows cached beforehand
    before = shards(cache)
    from sentence_transformers import SentenceTransformer

    monkeypatch.setattr(SentenceTransformer, "encode",
                        lambda *a, **k: pytest.fail("the estimate called the model's encode"))
    est = estimate_select(pool, target, "tsds", ratio=0.1, embed=cfg, cache_dir=cache, sample=8, method_sample=20)
    assert (est.rows, est.unique_rows, est.cached_rows) == (35, 30, 12)
    assert (est.target_rows, est.target_unique_rows, est.target_cached_rows) == (2, 2, 0)
    assert shards(cache) == before                                 # nothing computed or written
    stages = {s.stage: s for s in est.stages}
    assert [s.stage for s in est.stages] == ["load", "embed pool", "embed target", "tsds"]
    assert stages["embed pool"].rows == 18 and stages["embed target"].rows == 2
    assert all(s.seconds is not None and s.seconds >= 0 for s in est.stages)
    assert stages["embed pool"].seconds > 0 and stages["embed pool"].memory_mb > 0
    assert est.total_seconds == pytest.approx(sum(s.seconds for s in est.stages))
    assert "30 unique, 12 already cached" in est.table()


def test_estimate_ids_are_the_embedders_ids(tiny_pool, tiny_embed_model, tmp_path):
    """Once the embedder has run, the estimate sees every row as cached."""
    from tasksift.data import load_examples

    pool, target = tiny_pool
    cfg = EmbedConfig(model=tiny_embed_model, device="cpu", text="prompt")
    exs = load_examples(pool).examples
    e = Embedder(cfg, cache_dir=tmp_path / "c", progress=False)
    e.embed(exs)
    e.embed(load_examples(target).examples)
    assert e.cache.missing(list(dict.fromkeys(embedding_ids(exs, cfg)))) == []
    est = estimate_select(pool, target, "knn", k=3, embed=cfg, cache_dir=tmp_path / "c", method_sample=20)
    assert est.cached_rows == est.unique_rows == 30 and est.target_cached_rows == 2
    assert [s.seconds for s in est.stages[1:3]] == [0.0, 0.0]


def test_estimate_names_stages_it_cannot_estimate(tiny_pool, tiny_embed_model, tmp_path):
    pool, target = tiny_pool
    est = estimate_select(pool, target, "perplexity", ratio=0.1, embed=EmbedConfig(model=tiny_embed_model),
                          cache_dir=tmp_path / "c")
    assert [s.stage for s in est.stages] == ["load", "perplexity"]
    assert est.stages[-1].seconds is None and "not estimated (needs lm)" in est.stages[-1].how
    assert method_needs("dedup -> tsds") == {"embeddings"}


def test_cli_estimate_needs_no_out_and_writes_nothing(tiny_pool, tiny_embed_model, tmp_path, capsys):
    from tasksift.cli import main

    pool, target = tiny_pool
    rc = main(["select", "--pool", str(pool), "--target", str(target), "--ratio", "0.1", "--estimate",
               "--embed-model", tiny_embed_model, "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "pool 35 rows, 30 unique, 0 already cached" in out and "| embed pool | 30 |" in out
    assert shards(tmp_path / "c") == []


def test_estimate_reads_only_the_sampled_rows_of_a_stored_pool(tiny_pool, tiny_embed_model, tmp_path, monkeypatch):
    """A columnar pool's ids and text lengths come from its columns: the estimate decodes only
    the rows it times (it once read all 113k pool rows one at a time, ~60 s)."""
    from tasksift.data import load_examples
    from tasksift.data.pool import ArrowRows, Pool
    from tasksift.estimate import text_chars

    pool_path, target_path = tiny_pool
    pool = load_examples(pool_path)
    assert isinstance(pool.examples, Pool) and isinstance(pool.examples._store, ArrowRows)
    exs = list(pool.examples)
    cfg = EmbedConfig(model=tiny_embed_model, device="cpu", max_chars=30)
    assert embedding_ids(pool.examples, cfg) == embedding_ids(exs, cfg)
    positions = [3, 0, 17, 3]
    want = [min(len(exs[i].text), 30) for i in positions]
    assert text_chars(pool.examples, positions, cfg).tolist() == want == text_chars(exs, positions, cfg).tolist()
    resp = EmbedConfig(model=tiny_embed_model, device="cpu", text="response")
    assert text_chars(pool.examples, positions, resp).tolist() == [len(exs[i].response) for i in positions]

    read = []
    real_read = ArrowRows.read
    monkeypatch.setattr(ArrowRows, "read", lambda self, pos, cols: read.append(len(pos)) or real_read(self, pos, cols))
    est = estimate_select(pool, load_examples(target_path), "tsds", ratio=0.1, sample=4,
                          embed=EmbedConfig(model=tiny_embed_model, device="cpu"), cache_dir=tmp_path / "c")
    assert est.unique_rows == 30
    assert sum(read) <= 4 + 2                            # the pool sample (+ the target's rows)
