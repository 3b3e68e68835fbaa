"""One contract suite over every registered method (the pattern of scikit-learn's
``parametrize_with_checks``): whatever the method, its result holds unique in-range indices,
at most k of them, one score per pool row; the same seed gives the same result; an unknown or
badly typed option is a ConfigError raised by the constructor; it works on a tiny pool and on
a pool full of duplicates. Embedding methods use the tiny random sentence model, LM methods
the tiny random llama (lobass and less train a LoRA: marked slow)."""
from __future__ import annotations

import numpy as np
import pytest

from lm_fixtures import chat, sample_examples, save_tiny
from tasksift.errors import ConfigError
from tasksift.features.embed import EmbedConfig
from tasksift.methods.base import SelectionContext
from tasksift.methods.params import Choices, Interval, Option, validate_options
from tasksift.methods.registry import available_methods, get_method

METHODS = [m.name for m in available_methods()]
SLOW = {"lobass", "less"}                 # each fine-tunes a LoRA on the tiny model


def _options(name: str, tiny_llama) -> dict:
    """Options that make each method quick on a dozen rows."""
    needs = get_method(name).info.needs
    opts: dict = {}
    if "lm" in needs:
        opts.update(model=str(tiny_llama), max_length=64, device="cpu")
    opts.update({
        "length": {"min_words": 2},
        "lobass": {"ref_sample": 6, "ref_steps": 2, "ref_batch_size": 3},
        "less": {"warmup_sample": 6, "warmup_steps": 2, "warmup_batch_size": 3, "lora_r": 2, "lora_alpha": 4,
                 "proj_dim": 32},
        "tsds": {"max_k": 50, "kde_k": 20},
        "facility-location": {"neighbors": 4},
    }.get(name, {}))
    return opts


def _marks(name: str):
    return [pytest.mark.slow] if name in SLOW else []


RUNNABLE = [pytest.param(n, marks=_marks(n), id=n) for n in METHODS]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("contract-llama"))


def _target():
    return [chat("Tom has 3 apples and buys 4 more. How many apples?", "3 + 4 = 7. The answer is 7.", row=1),
            chat("What is the capital of France?", "Paris.", row=2)]


def _pools():
    tiny = sample_examples(3)
    dup_base = sample_examples(5)
    dups = dup_base + [chat(ex.prompt or "x", ex.response, row=10 + i) if ex.prompt else ex
                       for i, ex in enumerate(dup_base[:4])] + dup_base[:3]
    return {"dozen": sample_examples(12), "tiny": tiny, "duplicates": dups}


def _context(pool, seed, tmp_path, tiny_embed_model) -> SelectionContext:
    return SelectionContext(pool, _target(), seed=seed, cache_dir=tmp_path / "cache", progress=False,
                            embed_config=EmbedConfig(model=tiny_embed_model, device="cpu"))


def _check_result(res, n: int, k: int, name: str) -> None:
    idx = np.asarray(res.indices)
    assert idx.ndim == 1 and np.issubdtype(idx.dtype, np.integer), f"{name}: indices are not integers"
    assert len(idx) <= k, f"{name}: {len(idx)} indices for a budget of {k}"
    assert len(np.unique(idx)) == len(idx), f"{name}: duplicate indices {idx.tolist()}"
    assert ((idx >= 0) & (idx < n)).all(), f"{name}: index out of range"
    if res.scores is not None:
        assert np.shape(res.scores) == (n,), f"{name}: {np.shape(res.scores)} scores for {n} pool rows"
    for cname, col in res.columns.items():
        assert np.shape(col) == (n,), f"{name}: column {cname} has shape {np.shape(col)}"


@pytest.mark.parametrize("name", RUNNABLE)
def test_method_contract(name, tmp_path, tiny_embed_model, tiny_llama):
    opts = _options(name, tiny_llama)
    for label, pool in _pools().items():
        k = 2 if label == "tiny" else 4
        first = get_method(name)(**opts).select(_context(pool, 7, tmp_path, tiny_embed_model), k)
        _check_result(first, len(pool), k, f"{name} on the {label} pool")
        if label == "dozen":
            assert len(first.indices) > 0, f"{name} selected nothing from a dozen rows"
            again = get_method(name)(**opts).select(_context(pool, 7, tmp_path, tiny_embed_model), k)
            assert np.array_equal(first.indices, again.indices), f"{name}: same seed, other rows"
            if first.scores is not None:
                np.testing.assert_array_equal(first.scores, again.scores)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_option_is_a_config_error(name):
    with pytest.raises(ConfigError, match=f"method '{name}' has no option.*no_such_option"):
        get_method(name)(no_such_option=1)


_PROBES = ["five", 12345, -7, 2.5, True, None, [1, 2], {"a": 1}]


def _bad_values(opt: Option) -> list:
    """Values of different types that ``opt`` rejects."""
    return [v for v in _PROBES if not opt.allows(v)]


@pytest.mark.parametrize("name", [m for m in METHODS if get_method(m).parameters])
def test_badly_typed_options_are_config_errors(name):
    cls = get_method(name)
    checked = 0
    for opt_name, opt in cls.parameters.items():
        for bad in _bad_values(opt):
            with pytest.raises(ConfigError, match=f"option {opt_name} must be"):
                cls(**{opt_name: bad})
            checked += 1
        cls(**{opt_name: opt.default})            # the default itself is accepted
    assert checked > 0


def test_every_option_has_help_and_an_accepted_default():
    for name in METHODS:
        for opt_name, opt in get_method(name).parameters.items():
            assert opt.help and "\n" not in opt.help, f"{name}.{opt_name} needs one line of help"
            assert opt.allows(opt.default), f"{name}.{opt_name}: default {opt.default!r} is rejected"
        assert get_method(name).defaults == {k: o.default for k, o in get_method(name).parameters.items()}


def test_constraints_by_hand():
    assert Interval(int, 1).accepts(3) and not Interval(int, 1).accepts(0)
    assert not Interval(int, 1).accepts(2.0) and not Interval(int, 1).accepts(True)
    assert Interval(float, 0, 1).accepts(1) and not Interval(float, 0, 1, "neither").accepts(1)
    assert not Interval(float).accepts(float("nan")) and not Interval(float).accepts("0.5")
    assert Choices("a", "b").accepts("a") and not Choices(1).accepts(True)
    opt = Option(0.5, "x", Interval(float, 0, 1), None)
    assert opt.describe() == "a number in [0, 1] or null" and opt.type_name() == "float[0,1]|null"
    with pytest.raises(ConfigError) as e:
        validate_options("tsds", {"alpha": opt}, {"alpha": 2})
    assert str(e.value) == "method 'tsds' option alpha must be a number in [0, 1] or null, got 2"


def test_validation_runs_before_any_feature(tmp_path):
    """A bad option fails in the constructor: no embedder, no model is touched."""
    with pytest.raises(ConfigError, match="option alpha must be a number in \\[0, 1\\], got 'high'"):
        get_method("tsds")(alpha="high")
    with pytest.raises(ConfigError, match="option max_length must be an integer >= 1"):
        get_method("ifd")(max_length=-4)
