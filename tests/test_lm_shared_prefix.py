"""Shared-prefix scoring (LossEngine.score_groups): each group's common prompt runs once, and the
losses equal plain per-row scoring (the oracle) on a tiny random llama."""
from __future__ import annotations

import numpy as np
import pytest

from lm_fixtures import build_model, build_tokenizer, scaled_logits_model
from tasksift.evaluate.scorers import ModelScorer, _pair
from tasksift.evaluate.tasks import TestItem
from tasksift.features.lm import LossEngine, tokenize_examples
from tasksift.features.lm.engine import shared_prefix_length
from tasksift.features.lm.render import Rendered

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok)


def R(ids, first_resp):
    return Rendered(ids=list(ids), mask=[i >= first_resp for i in range(len(ids))])


def test_shared_prefix_length_hand_cases():
    # common prefix of 5 tokens, responses from index 4: cut at 3 (position 3 predicts token 4)
    assert shared_prefix_length([R([1, 2, 3, 4, 5, 6], 4), R([1, 2, 3, 4, 5, 7, 8], 4)]) == 3
    # the rows part at index 2, before the responses: the common prefix binds
    assert shared_prefix_length([R([1, 2, 3, 4, 5], 4), R([1, 2, 9, 4, 5], 4)]) == 2
    # one row's response starts earlier: its cut binds
    assert shared_prefix_length([R([1, 2, 3, 4, 5], 2), R([1, 2, 3, 4, 5], 4)]) == 1
    # a row without a response token, or no rows: nothing to share
    assert shared_prefix_length([R([1, 2, 3], 9), R([1, 2, 3], 1)]) == 0
    assert shared_prefix_length([]) == 0
    # one row shares with itself up to its cut
    assert shared_prefix_length([R(range(10), 6)]) == 5


def _rendered(tok, pairs, max_length=256):
    return tokenize_examples(tok, [_pair(p, a, i) for i, (p, a) in enumerate(pairs)], max_length=max_length)


PROMPTS = ["What is the capital of France? Answer with one word, please, and nothing else at all.",
           "Add 2 and 3. Give only the number that is the answer to this sum.",
           "List three colours that you like the most in the world and say why."]
ANSWERS = [["Paris", "Lyon", "Marseille is the answer", "Nice"],
           ["5", "six", "The answer is 5."],
           ["red, green, blue", "red"]]


def _groups_and_pairs(extra_plain=True):
    pairs, groups = [], []
    for p, answers in zip(PROMPTS, ANSWERS):
        groups.append(list(range(len(pairs), len(pairs) + len(answers))))
        pairs += [(p, a) for a in answers]
    if extra_plain:
        pairs += [("Translate hello to Spanish.", "Hola."), ("Say nothing.", "")]   # ungrouped; empty answer
    return pairs, groups


@pytest.mark.parametrize("batch_tokens", [64, 4096])
def test_score_groups_equals_plain_scoring(tok, model, batch_tokens):
    pairs, groups = _groups_and_pairs()
    rendered = _rendered(tok, pairs)
    ref = LossEngine(model, tok, batch_tokens=4096).score(rendered)
    seen = []
    got = LossEngine(model, tok, batch_tokens=batch_tokens).score_groups(
        rendered, groups, on_batch=lambda n, t: seen.append(n))
    assert got["shared_rows"] == sum(len(g) for g in groups)
    np.testing.assert_array_equal(got["n_response_tokens"], ref["n_response_tokens"])
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=0, atol=1e-5, equal_nan=True)
    assert np.isnan(got["loss"][-1])                         # the empty answer stays unscorable
    assert sum(seen) == sum(r.status == 0 for r in rendered)  # progress counts every scored row once


def test_groups_without_a_shared_prompt_are_scored_plainly(tok, model):
    pairs = [(PROMPTS[0], "Paris"), ("Completely different words here now.", "Paris")]
    rendered = _rendered(tok, pairs)
    got = LossEngine(model, tok).score_groups(rendered, [[0, 1]], min_prefix=8)
    assert got["shared_rows"] == 0
    np.testing.assert_allclose(got["loss"], LossEngine(model, tok).score(rendered)["loss"], atol=1e-6)


def test_model_without_the_output_layer_shortcut_scores_plainly(tok):
    odd = scaled_logits_model(tok)
    pairs, groups = _groups_and_pairs(extra_plain=False)
    rendered = _rendered(tok, pairs)
    got = LossEngine(odd, tok).score_groups(rendered, groups)
    assert got["shared_rows"] == 0
    np.testing.assert_allclose(got["loss"], LossEngine(odd, tok).score(rendered)["loss"], atol=1e-6)


def test_a_cache_that_disagrees_with_plain_scoring_turns_sharing_off(tok, model, monkeypatch):
    """The once-per-engine check: a shared-prefix result off by more than 1e-4 (here: the
    prefix's keys/values shifted, as a model whose cache semantics differ would be) is never
    returned; every row is scored plainly."""
    pairs, groups = _groups_and_pairs(extra_plain=False)
    rendered = _rendered(tok, pairs)
    engine = LossEngine(model, tok)
    real = LossEngine._forward_shared

    def skewed(self, groups_, cuts):
        sums, counts = real(self, groups_, cuts)
        return sums + 0.01 * counts, counts
    monkeypatch.setattr(LossEngine, "_forward_shared", skewed)
    got = engine.score_groups(rendered, groups)
    assert got["shared_rows"] == 0 and engine._prefix_ok is False
    np.testing.assert_allclose(got["loss"], LossEngine(model, tok).score(rendered)["loss"], atol=1e-6)


def test_truncated_rows_share_only_what_they_still_have_in_common(tok, model):
    """With max_length cutting the prompts, the rows' ids decide what is shared: the result
    still equals plain scoring of the same rendered rows."""
    pairs, groups = _groups_and_pairs(extra_plain=False)
    rendered = _rendered(tok, pairs, max_length=24)
    ref = LossEngine(model, tok).score(rendered)
    got = LossEngine(model, tok).score_groups(rendered, groups, min_prefix=1)
    np.testing.assert_array_equal(got["n_response_tokens"], ref["n_response_tokens"])
    np.testing.assert_allclose(got["loss"], ref["loss"], atol=1e-5, equal_nan=True)


def test_multiple_choice_scorer_picks_the_same_options_as_plain_scoring(tok, model):
    items = [TestItem(id=str(q), prompt=p, answer=a[0], gold=a[0], choices=a, label=q % len(a))
             for q, (p, a) in enumerate(zip(PROMPTS, ANSWERS))]
    items.append(TestItem(id="open", prompt="Say hi.", answer="hi", gold="hi"))    # no options: NaN
    scorer = ModelScorer(model, tok)
    mc = scorer.mc(items)
    pairs = [(t.prompt, c) for t in items[:-1] for c in t.choices]
    plain, _ = scorer.pair_losses(pairs)
    expect, s = [], 0
    for t in items[:-1]:
        expect.append(float(int(np.argmin(plain[s:s + len(t.choices)])) == t.label))
        s += len(t.choices)
    np.testing.assert_array_equal(mc[:-1], expect)
    assert np.isnan(mc[-1])


def test_all_likelihood_scorers_come_from_one_pass_with_each_pair_once(tok, model, monkeypatch):
    """score(mc, loss, loss_answer): one pair_losses call; the gold answer (one of the options)
    is scored once; every score equals scoring its pairs alone and plainly."""
    items = [TestItem(id=str(q), prompt=p, answer=a[1], gold=a[1], choices=a, label=1,
                      bare_answer=a[0] if q != 2 else None)
             for q, (p, a) in enumerate(zip(PROMPTS, ANSWERS))]
    items.append(TestItem(id="open", prompt="Say hi.", answer="hi there", gold="hi", bare_answer="hi"))
    scorer = ModelScorer(model, tok)
    calls = []
    real = ModelScorer.pair_losses

    def counting(self, pairs, desc="scoring", groups=None):
        calls.append((len(pairs), groups))
        return real(self, pairs, desc, groups)
    monkeypatch.setattr(ModelScorer, "pair_losses", counting)
    got = scorer.score(items, ["mc", "loss", "loss_answer"])
    # options (4 + 3 + 2), plus the open item's answer and bare answer; bare "Paris"/"5" are options
    assert len(calls) == 1 and calls[0][0] == 4 + 3 + 2 + 2
    assert [len(g) for g in calls[0][1]] == [4, 3, 2, 2]
    monkeypatch.setattr(ModelScorer, "pair_losses", real)
    plain_loss, _ = scorer.pair_losses([(t.prompt, t.answer) for t in items])
    np.testing.assert_allclose(got["loss"], plain_loss, atol=1e-5)
    bare = [j for j, t in enumerate(items) if t.bare_answer]
    plain_bare, _ = scorer.pair_losses([(items[j].prompt, items[j].bare_answer) for j in bare])
    np.testing.assert_allclose(got["loss_answer"][bare], plain_bare, atol=1e-5)
    assert np.isnan(got["loss_answer"][2]) and np.isnan(got["mc"][-1])
    np.testing.assert_array_equal(got["mc"][:-1], scorer.mc(items)[:-1])
