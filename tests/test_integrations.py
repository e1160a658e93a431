"""RL adapters (TRL GRPO and OpenRLHF conventions), tested with plain lists, no trainer imported."""

import sys
import types

import numpy as np
import pytest

from moerm_lite.integrations import completion_text, openrlhf_reward_func, trl_reward_func
from tests.test_online import COMPS

PROMPTS = ["why is the cat nice", "how", "what"]
COMPLETIONS = ["the cat is kind and good", "it is rude and bad", "thanks for the question"]


def test_trl_plain_text_equals_score_pairs(tiny_fp32):
    f = trl_reward_func(tiny_fp32)
    got = f(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1], [2], [3]], trainer_state=None)
    assert isinstance(got, list) and all(isinstance(x, float) for x in got)
    np.testing.assert_allclose(got, tiny_fp32.score_pairs(list(zip(PROMPTS, COMPLETIONS))), atol=1e-12)
    assert f.__name__ == "moerm_lite_reward"  # TRL logs each reward function under its name


def test_trl_conversational_uses_the_chat_template(tiny_fp32):
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    got = trl_reward_func(tiny_fp32)(prompts, completions)
    want = tiny_fp32.score_pairs([(f"user: {p}", c) for p, c in zip(PROMPTS, COMPLETIONS)])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_trl_per_user_profiles(tiny_fp32):
    ann = tiny_fp32.fit_user(COMPS, user_id="ann")
    f = trl_reward_func(tiny_fp32, profiles={"ann": ann})
    got = f(PROMPTS, COMPLETIONS, user_id=["ann", None, "ann"])
    pairs = list(zip(PROMPTS, COMPLETIONS))
    want_ann, want_pop = tiny_fp32.score_pairs(pairs, user=ann), tiny_fp32.score_pairs(pairs)
    np.testing.assert_allclose(got, [want_ann[0], want_pop[1], want_ann[2]], atol=1e-9)
    assert not np.allclose(want_ann, want_pop)  # the profile really changes scores
    with pytest.raises(KeyError, match="bob"):
        f(PROMPTS, COMPLETIONS, user_id=["bob", None, None])
    with pytest.raises(ValueError, match="3 prompts but 2"):
        f(PROMPTS, COMPLETIONS[:2])


def test_openrlhf_splits_queries_and_returns_the_three_keys(tiny_fp32):
    f = openrlhf_reward_func(tiny_fp32)
    queries = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    out = f(queries, PROMPTS, labels=[None] * 3)
    assert set(out) == {"rewards", "scores", "extra_logs"}
    want = tiny_fp32.score_pairs(list(zip(PROMPTS, COMPLETIONS)))
    np.testing.assert_allclose(np.asarray(out["rewards"]), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["scores"]), 1 / (1 + np.exp(-want)), atol=1e-5)
    with pytest.raises(ValueError, match="start with its prompt"):
        f(["something else"], ["why"], None)


def test_openrlhf_returns_tensors_only_when_torch_is_loaded(tiny_fp32, monkeypatch):
    f = openrlhf_reward_func(tiny_fp32)
    args = ([PROMPTS[0] + COMPLETIONS[0]], [PROMPTS[0]], None)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert isinstance(f(*args)["rewards"], np.ndarray) and "torch" not in sys.modules  # never imports it
    fake = types.SimpleNamespace(from_numpy=lambda a: ("tensor", a))
    monkeypatch.setitem(sys.modules, "torch", fake)
    out = f(*args)
    assert out["rewards"][0] == "tensor" and out["scores"][0] == "tensor"


def test_completion_text():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\n\nb"
    with pytest.raises(TypeError, match="completion"):
        completion_text(3)


def test_rl_adapters_score_every_sample(tiny_fp32):
    """GRPO samples empty completions (EOS first) and runaway ones: each gets a float, as the core API
    scores it; one odd sample never fails the batch."""
    ann = tiny_fp32.fit_user(COMPS, user_id="ann")
    huge = "the cat is good " * 10_000  # over max_chars
    completions = COMPLETIONS[:2] + ["", huge] + COMPLETIONS[2:]
    prompts = PROMPTS[:2] + ["q", "q"] + PROMPTS[2:]
    expect_text = completions[:3] + [huge[:tiny_fp32.config.max_chars]] + completions[4:]
    for f, kw in ((trl_reward_func(tiny_fp32), {}),
                  (trl_reward_func(tiny_fp32, profiles={"ann": ann}), {"user_id": ["ann", None, "ann", None, "ann"]})):
        got = f(prompts, completions, **kw)
        users = kw.get("user_id", [None] * 5)
        assert len(got) == 5 and all(isinstance(g, float) for g in got)
        for i in range(5):
            assert got[i] == pytest.approx(tiny_fp32.score(prompts[i], expect_text[i],
                                                           user=ann if users[i] else None), abs=1e-6)
    r = openrlhf_reward_func(tiny_fp32)(["q", "q" + huge], ["q", "q"], None)["rewards"]
    assert r.shape == (2,) and r[0] == pytest.approx(tiny_fp32.score("q", ""), abs=1e-5)
    assert completion_text([{"role": "assistant", "content": None}]) == ""


def test_unfitted_profile_is_a_clear_error(tiny_fp32):
    from moerm_lite import UserProfile

    with pytest.raises(ValueError, match="not fitted"):
        tiny_fp32.score("p", "the cat", user=UserProfile(user_id="new"))
