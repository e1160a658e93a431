"""The population guard of a personalized ranking (moerm_lite.guard, RewardModel.rank(population_guard=...))."""

import math

import numpy as np
import pytest

from moerm_lite import UserProfile
from moerm_lite.guard import (check_guard, guard_margin, guarded_margins, guarded_order, guarded_out,
                              guarded_rewards)
from moerm_lite.integrations import openrlhf_reward_func, trl_reward_func

PROMPT = "why is the cat nice"
RESPONSES = ["the cat is kind and good", "it is rude and bad", "thanks for the question", "cats purr when calm"]


def test_guard_margin_is_the_population_logit():
    assert guard_margin(0.9) == pytest.approx(math.log(9))
    assert guard_margin(0.5 + 1e-12) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("bad", [0.5, 1.0, 0.2, 1.5, True, "0.9", float("nan"), None])
def test_a_guard_is_a_probability_above_one_half(bad):
    with pytest.raises(ValueError, match="population_guard"):
        check_guard(bad)


def test_known_order():
    """Population 5 and 4.9 are within log(9) = 2.2 of the best: the user's scores order them; 0 and -1 are
    guarded out and follow in the population's order, whatever the user's scores."""
    scores, population = np.array([3.0, 2.0, 1.0, 9.0]), np.array([0.0, 5.0, 4.9, -1.0])
    assert guarded_out(population, 0.9).tolist() == [True, False, False, True]
    assert guarded_order(scores, population, 0.9).tolist() == [1, 2, 0, 3]


def test_ties_keep_input_order():
    assert guarded_order(np.zeros(4), np.zeros(4), 0.9).tolist() == [0, 1, 2, 3]
    assert guarded_order(np.array([1.0, 0, 0, 0]), np.array([9.0, 0, 0, 0]), 0.9).tolist() == [0, 1, 2, 3]
    assert guarded_order(np.zeros(0), np.zeros(0), 0.9).tolist() == []


def test_extreme_guards_give_the_users_order_and_the_populations():
    rng = np.random.default_rng(0)
    scores, population = rng.normal(size=20), rng.normal(size=20)
    assert guarded_order(scores, population, 1 - 1e-12).tolist() == np.argsort(-scores, kind="stable").tolist()
    assert guarded_order(scores, population, 0.5 + 1e-12).tolist() == \
        np.argsort(-population, kind="stable").tolist()


def test_pairs_are_decided_as_a_ranking_of_two():
    """guarded_margins (what the evaluation scores) is guarded_order of each pair."""
    rng = np.random.default_rng(1)
    user, population = rng.normal(size=(2, 500)) * 3
    first = guarded_margins(user, population, 0.9) > 0
    for u, p, f in zip(user, population, first):
        order = guarded_order(np.array([u, 0.0]), np.array([p, 0.0]), 0.9)
        assert (order[0] == 0) == f


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="differ"):
        guarded_order(np.zeros(3), np.zeros(2), 0.9)


def test_rank_with_a_guard(tiny_fp32):
    """A user who wants the opposite of the population: unguarded, the order flips; guarded, replies the
    population is sure are worse than its best come last in its order; each item says so."""
    m = tiny_fp32
    population = {r["corpus_id"]: r["score"] for r in m.rank(PROMPT, RESPONSES)}
    contrarian = UserProfile(user_id="contrarian")
    contrarian.weights_ = -m.w0
    contrarian.model_hash = m.model_hash
    pop = np.array([population[i] for i in range(len(RESPONSES))])  # (n,)
    for guard in (0.5 + 1e-9, 0.55, 0.6, 0.75, 0.9, 1 - 1e-9):
        got = m.rank(PROMPT, RESPONSES, user=contrarian, population_guard=guard)
        assert [r["corpus_id"] for r in got] == guarded_order(-pop, pop, guard).tolist()
        for r in got:
            assert r["population_score"] == pytest.approx(population[r["corpus_id"]], abs=1e-9)
            assert r["score"] == pytest.approx(-population[r["corpus_id"]], abs=1e-9)
            assert r["guarded"] == (pop.max() - pop[r["corpus_id"]] > guard_margin(guard))
    assert [r["corpus_id"] for r in m.rank(PROMPT, RESPONSES, user=contrarian, population_guard=1 - 1e-9)] == \
        [r["corpus_id"] for r in m.rank(PROMPT, RESPONSES, user=contrarian)]
    assert [r["corpus_id"] for r in m.rank(PROMPT, RESPONSES, user=contrarian, population_guard=0.5 + 1e-9)] == \
        [r["corpus_id"] for r in m.rank(PROMPT, RESPONSES)]
    assert len(m.rank(PROMPT, RESPONSES, user=contrarian, population_guard=0.9, top_k=2)) == 2
    with pytest.raises(ValueError, match="population_guard"):
        m.rank(PROMPT, RESPONSES, population_guard=2)


def test_cli_rank_with_a_guard(tiny_folder, tmp_path):
    import json
    import subprocess
    import sys

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": PROMPT, "responses": RESPONSES}) + "\n")
    run = [sys.executable, "-m", "moerm_lite", "rank", "--model", str(tiny_folder), "-i", str(src)]
    out = subprocess.run(run + ["--population-guard", "0.6"], capture_output=True, text=True, check=True)
    ranking = json.loads(out.stdout)["ranking"]
    assert {"population_score", "guarded"} <= set(ranking[0])
    bad = subprocess.run(run + ["--population-guard", "1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "population_guard" in bad.stderr
    both = subprocess.run(run[:4] + ["--catalog", "c.npz", "--population-guard", "0.9"], capture_output=True,
                          text=True)
    assert both.returncode != 0 and "--population-guard" in both.stderr


def test_guarded_rewards_known_answer():
    """Group a: population 5, 4.9, 0 with log(9) = 2.2 the margin: row 2 is guarded out and gets the group's
    lowest kept score (2) minus (5 - 2.2 - 0); in group b, row 3 gets 7 - (9 - 2.2 - 0)."""
    scores, population = np.array([3.0, 2.0, 9.0, 1.0, 7.0]), np.array([5.0, 4.9, 0.0, 0.0, 9.0])
    got = guarded_rewards(scores, population, ["a", "a", "a", "b", "b"], 0.9)
    np.testing.assert_allclose(got, [3.0, 2.0, 2.0 - (5.0 - math.log(9)), 7.0 - (9.0 - math.log(9)), 7.0])
    np.testing.assert_allclose(guarded_rewards(scores, population, ["a", "b", "c", "d", "e"], 0.9), scores)


def test_guarded_rewards_order_each_group_as_a_guarded_ranking():
    """Within each group the rewards' order is guarded_order's (ties included); groups do not interact, so
    shuffling the rows moves each row's reward with it."""
    rng = np.random.default_rng(2)
    scores, population = rng.normal(size=(2, 60)) * 3
    scores[:6] = 0.0  # ties
    groups = rng.integers(0, 7, size=60).tolist()
    for guard in (0.55, 0.9, 0.99):
        got = guarded_rewards(scores, population, groups, guard)
        for g in set(groups):
            idx = np.flatnonzero(np.array(groups) == g)
            assert np.argsort(-got[idx], kind="stable").tolist() == \
                guarded_order(scores[idx], population[idx], guard).tolist()
        perm = rng.permutation(60)
        np.testing.assert_allclose(guarded_rewards(scores[perm], population[perm], [groups[i] for i in perm],
                                                   guard), got[perm])
    with pytest.raises(ValueError, match="group labels"):
        guarded_rewards(scores, population, groups[:-1], 0.9)


def test_rl_rewards_with_a_guard_follow_the_guarded_ranking(tiny_fp32):
    """GRPO passes each prompt once per completion: with a guard, one prompt's completions are rewarded in the
    order rank(population_guard=...) gives them, whatever else is in the batch; OpenRLHF's too."""
    m = tiny_fp32
    contrarian = UserProfile(user_id="contrarian")
    contrarian.weights_ = -m.w0
    contrarian.model_hash = m.model_hash
    other = ["it depends", "no idea"]
    prompts, completions = [PROMPT] * len(RESPONSES) + ["how"] * 2, RESPONSES + other
    pop = m.score(PROMPT, RESPONSES)  # (n,)
    guard = 1 / (1 + math.exp(-(pop.max() - pop.min()) / 2))  # guards out the population's last reply
    want = [r["corpus_id"] for r in m.rank(PROMPT, RESPONSES, user=contrarian, population_guard=guard)]
    assert want != [r["corpus_id"] for r in m.rank(PROMPT, RESPONSES, user=contrarian)]  # the guard acts
    trl = trl_reward_func(m, contrarian, population_guard=guard)(prompts, completions)
    rlhf = openrlhf_reward_func(m, contrarian, population_guard=guard)(
        [p + c for p, c in zip(prompts, completions)], prompts)["rewards"]
    alone = trl_reward_func(m, contrarian, population_guard=guard)(["how"] * 2, other)
    for got in (np.array(trl), np.asarray(rlhf, np.float64)):
        assert np.argsort(-got[:len(RESPONSES)], kind="stable").tolist() == want
        np.testing.assert_allclose(got[len(RESPONSES):], alone, atol=1e-5)
    kept = [r["corpus_id"] for r in m.rank(PROMPT, RESPONSES, user=contrarian, population_guard=guard)
            if not r["guarded"]]
    np.testing.assert_allclose(np.array(trl)[kept], m.score_pairs([(PROMPT, RESPONSES[i]) for i in kept],
                                                                  user=contrarian), atol=1e-9)
    per_user = trl_reward_func(m, profiles={"c": contrarian}, population_guard=guard)
    np.testing.assert_allclose(per_user(prompts, completions, user_id=["c"] * len(prompts)), trl, atol=1e-9)
    chat = trl_reward_func(m, contrarian, population_guard=guard)(  # equal message lists make one group
        [[{"role": "user", "content": p}] for p in prompts], [[{"role": "assistant", "content": c}]
                                                              for c in completions])
    np.testing.assert_allclose(chat, trl_reward_func(m, contrarian, population_guard=guard)(
        [f"user: {p}" for p in prompts], completions), atol=1e-9)
    with pytest.raises(ValueError, match="population_guard"):
        trl_reward_func(m, population_guard=1.0)
    with pytest.raises(ValueError, match="population_guard"):
        openrlhf_reward_func(m, population_guard=0.5)
