"""Choosing the next question: the variance-reduction criterion and next_comparison."""

import numpy as np
import pytest

from moerm_lite import UserProfile, fit_map
from moerm_lite.active import all_pairs, preference_probability, variance_reduction
from moerm_lite.head import expert_features
from tests.test_online import COMPS


def test_criterion_matches_an_explicit_rank_one_update():
    rng = np.random.default_rng(0)
    phi, mean = rng.normal(size=(12, 5)), rng.normal(size=5)
    A = rng.normal(size=(5, 5))
    cov = A @ A.T / 5 + 0.1 * np.eye(5)
    got = variance_reduction(phi, mean, cov)
    for x in range(12):
        p = preference_probability(phi[x:x + 1], mean, cov)[0]
        prec = np.linalg.inv(cov) + p * (1 - p) * np.outer(phi[x], phi[x])  # Laplace step after one answer
        after = np.einsum("tk,kl,tl->", phi, np.linalg.inv(prec), phi)
        before = np.einsum("tk,kl,tl->", phi, cov, phi)
        assert got[x] == pytest.approx(before - after, rel=1e-9)
    np.testing.assert_allclose(variance_reduction(-phi, mean, cov), got)  # the order of the two does not matter


def test_preference_probability_against_monte_carlo():
    rng = np.random.default_rng(1)
    phi, mean, cov = rng.normal(size=(4, 3)), rng.normal(size=3), 0.5 * np.eye(3)
    w = rng.multivariate_normal(mean, cov, size=200_000)  # (S, K)
    mc = (1 / (1 + np.exp(-(w @ phi.T)))).mean(0)
    np.testing.assert_allclose(preference_probability(phi, mean, cov), mc, atol=0.02)


def planted_run(seed: int, K: int = 12, lam: float = 1.0, n_questions: int = 8) -> dict[str, float]:
    """A user with 3 of K experts that matter; comparisons touch 2 experts each (like top-2 routing)."""
    rng = np.random.default_rng(seed)
    w_true = np.zeros(K)
    w_true[rng.choice(K, 3, replace=False)] = rng.choice([-2.0, 2.0], 3)

    def comparisons(n: int) -> np.ndarray:
        X = np.zeros((n, K))
        for r in range(n):
            X[r, rng.choice(K, 2, replace=False)] = rng.normal(size=2)
        X = X[np.abs(X @ w_true) > 1e-9]  # the user has a preference (as in the persona recipe)
        return np.where((X @ w_true > 0)[:, None], X, -X)  # oriented as the user answers

    pool, test = comparisons(400), comparisons(2000)
    acc = {}
    for how in ("active", "random"):
        asked: list[int] = []
        w, cov = np.zeros(K), np.eye(K) / lam
        for n in range(n_questions):
            if how == "active":
                g = variance_reduction(pool, w, cov)
                g[asked] = -np.inf
                asked.append(int(np.argmax(g)))
            else:
                asked.append(n)  # the pool is in random order
            w, cov = fit_map(pool[asked], np.zeros(K), lam)
        acc[how] = float(np.mean(test @ w > 0))
    return acc


def test_active_questions_beat_random_on_planted_users():
    runs = [planted_run(seed) for seed in range(20)]
    active, random = np.mean([r["active"] for r in runs]), np.mean([r["random"] for r in runs])
    assert active > random + 0.02, (active, random)  # measured: 0.931 vs 0.889


def test_next_comparison_picks_the_best_pair(tiny_fp32):
    cands = ["the cat is kind and good", "it is rude and bad", "thanks for the question", "math and art"]
    q = tiny_fp32.next_comparison("why", cands)
    out = tiny_fp32.expert_outputs([("why", c) for c in cands])
    f = expert_features(out["gating_output"], out["rewards"])
    i, j = all_pairs(len(cands))
    gains = variance_reduction(f[i] - f[j], tiny_fp32.w0, np.eye(tiny_fp32.n_experts) / 1.0)
    b = int(np.argmax(gains))
    assert q["pair"] == (i[b], j[b]) and q["responses"] == (cands[i[b]], cands[j[b]])
    assert q["variance_reduction"] == pytest.approx(gains[b])
    assert 0 < q["p_first"] < 1 and q["variance"] > 0


def test_next_comparison_uses_the_profile_posterior(tiny_fp32):
    cands = ["the cat is kind and good", "it is rude and bad", "thanks for the question"]
    fresh = tiny_fp32.next_comparison("why", cands)
    sure = UserProfile(prior_strength=1.0).fit(np.zeros((0, tiny_fp32.n_experts)), tiny_fp32.w0)
    sure.covariance_ = sure.covariance_ * 1e-6  # a user we already know well
    sure.model_hash = tiny_fp32.model_hash
    assert tiny_fp32.next_comparison("why", cands, user=sure)["variance_reduction"] < 1e-3 * fresh["variance_reduction"]
    p = tiny_fp32.fit_user(COMPS)
    q = tiny_fp32.next_comparison("why", cands, user=p)
    a, b = q["responses"]
    diff = tiny_fp32.comparison_features([{"prompt": "why", "chosen": a, "rejected": b}])[0]  # (K,)
    assert q["variance"] == pytest.approx(float(p.uncertainty(diff)))


def test_next_comparison_bad_input(tiny_fp32):
    with pytest.raises(ValueError, match="at least 2"):
        tiny_fp32.next_comparison("why", ["only one"])
    with pytest.raises(TypeError, match="list of strings"):
        tiny_fp32.next_comparison("why", "not a list")
    with pytest.raises(TypeError, match=r"candidates\[1\] must be a string"):
        tiny_fp32.next_comparison("why", ["good", None])


def test_variance_reduction_equals_the_sum_over_targets_and_scales():
    """The (K, K) form equals the brute-force sum over targets, and 300 candidates (44,850 pairs) stay small."""

    rng = np.random.default_rng(0)
    K = 6
    A = rng.normal(size=(K, K))
    cov, mean = A @ A.T / K + 0.1 * np.eye(K), rng.normal(size=K)
    phi, targets = rng.normal(size=(20, K)), rng.normal(size=(15, K))
    p = preference_probability(phi, mean, cov)
    s = p * (1 - p)
    brute = [s[i] * sum((t @ cov @ x) ** 2 for t in targets) / (1 + s[i] * x @ cov @ x) for i, x in enumerate(phi)]
    np.testing.assert_allclose(variance_reduction(phi, mean, cov, targets), brute, rtol=1e-10)
    big = rng.normal(size=(300 * 299 // 2, K))  # every pair of 300 candidates, each its own target
    assert variance_reduction(big, mean, cov).shape == (44850,)


def test_candidate_pair_gains_equal_the_pair_table():
    """The (n, n) Gram form equals variance_reduction on the explicit (P, K) table of differences."""
    from moerm_lite.active import candidate_pair_gains

    rng = np.random.default_rng(5)
    F = rng.normal(size=(30, 7))
    A = rng.normal(size=(7, 7))
    mean, cov = rng.normal(size=7), A @ A.T / 7 + 0.1 * np.eye(7)
    i, j = all_pairs(30)
    phi = F[i] - F[j]
    gain, p, v = candidate_pair_gains(F, mean, cov)
    np.testing.assert_allclose(gain[i, j], variance_reduction(phi, mean, cov), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(p[i, j], preference_probability(phi, mean, cov), rtol=1e-10)
    np.testing.assert_allclose(v[i, j], np.einsum("pk,kl,pl->p", phi, cov, phi), rtol=1e-8, atol=1e-12)
