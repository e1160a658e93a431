"""Choosing the next question: variance reduction, expected accuracy after the answer, and next_comparison."""

import numpy as np
import pytest

from moerm_lite import fit_map
from moerm_lite import active
from moerm_lite.active import (ACCURACY_AFTER, SELECTION_PRIOR, all_pairs, candidate_pair_accuracy,
                               choose_pair, expected_accuracy, preference_probability, question_scores,
                               variance_reduction)
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
    for how in ("active", "random", "shipped rule"):
        asked: list[int] = []
        select = lam * (SELECTION_PRIOR if how == "shipped rule" else 1.0)  # the selection posterior's prior
        w, cov = np.zeros(K), np.eye(K) / select
        for n in range(n_questions):
            if how == "random":
                asked.append(n)  # the pool is in random order
            else:
                g = (variance_reduction(pool, w, cov) if how == "active"
                     else question_scores(pool, w, cov, len(asked)))
                g[asked] = -np.inf
                asked.append(int(np.argmax(g)))
                w, cov = fit_map(pool[asked], np.zeros(K), select)
        acc[how] = float(np.mean(test @ fit_map(pool[asked], np.zeros(K), lam)[0] > 0))
    return acc


def test_active_questions_beat_random_on_planted_users():
    runs = [planted_run(seed) for seed in range(20)]
    active, random = np.mean([r["active"] for r in runs]), np.mean([r["random"] for r in runs])
    assert active > random + 0.02, (active, random)  # measured: 0.941 vs 0.897
    # next_comparison's rule (expected accuracy from the 5th answer, a 3x selection prior): measured 0.929
    assert np.mean([r["shipped rule"] for r in runs]) > random + 0.02


def test_next_comparison_picks_the_best_pair(tiny_fp32):
    cands = ["the cat is kind and good", "it is rude and bad", "thanks for the question", "math and art"]
    q = tiny_fp32.next_comparison("why", cands)
    out = tiny_fp32.expert_outputs([("why", c) for c in cands])
    f = expert_features(out["gating_output"], out["rewards"])
    i, j = all_pairs(len(cands))
    lam = tiny_fp32.config.default_prior_strength  # a new user: the prior, SELECTION_PRIOR times stronger
    cov = np.eye(tiny_fp32.n_experts) / (SELECTION_PRIOR * lam)  # (K, K)
    gains = variance_reduction(f[i] - f[j], tiny_fp32.w0, cov)
    b = int(np.argmax(gains))
    assert q["pair"] == (i[b], j[b]) and q["responses"] == (cands[i[b]], cands[j[b]])
    assert q["criterion"] == "variance_reduction" and q["expected_accuracy"] is None
    assert q["variance_reduction"] == pytest.approx(gains[b])
    assert 0 < q["p_first"] < 1 and q["variance"] > 0


def test_next_comparison_uses_the_profile_comparisons(tiny_fp32):
    """A profile's comparisons, fitted again under the stronger selection prior, are what the question is
    chosen under: before ACCURACY_AFTER answers by variance reduction, after them the pair of largest
    expected accuracy under that posterior (the profile's residual a known offset); the predicted answer
    stays the user's own."""
    cands = ["the cat is kind and good", "it is rude and bad", "thanks for the question", "math and art"]
    p = tiny_fp32.fit_user(COMPS[:ACCURACY_AFTER - 1])
    assert tiny_fp32.next_comparison("why", cands, user=p)["criterion"] == "variance_reduction"
    p = tiny_fp32.fit_user(COMPS[:ACCURACY_AFTER])
    q = tiny_fp32.next_comparison("why", cands, user=p)
    mean, cov = fit_map(p.expert_features_, p.w0_, SELECTION_PRIOR * p.prior_strength, p.prior_precision)
    out = tiny_fp32.expert_outputs([("why", c) for c in cands], with_features=True)
    f = expert_features(out["gating_output"], out["rewards"])  # (n, K)
    offset = out["features"].astype(np.float64) @ p.residual_  # (n,) the residual terms, known
    i, j = all_pairs(len(cands))
    acc = candidate_pair_accuracy(f, mean, cov, (i, j), (i, j), offset)
    b = int(np.argmax(acc))
    assert q["criterion"] == "expected_accuracy" and q["pair"] == (i[b], j[b])
    assert q["expected_accuracy"] == pytest.approx(acc[b])
    diff = f[i[b]] - f[j[b]]  # (K,) the predicted answer: the user's own posterior
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


def test_expected_accuracy_matches_an_explicit_update():
    """The criterion after ACCURACY_AFTER answers: for each question, the pool's comparisons ordered right
    after either answer (one Newton step and the Laplace update, from explicit matrices), weighted by the
    answer's probability."""
    from scipy.special import ndtr

    from moerm_lite.active import expected_accuracy, preference_probability

    KAPPA = np.sqrt(np.pi / 8)

    rng = np.random.default_rng(3)
    pool, mean = rng.normal(size=(9, 5)), rng.normal(size=5)
    A = rng.normal(size=(5, 5))
    cov = A @ A.T / 5 + 0.1 * np.eye(5)
    want = []
    for x in pool:
        p = preference_probability(x[None], mean, cov)[0]
        cov_new = np.linalg.inv(np.linalg.inv(cov) + p * (1 - p) * np.outer(x, x))
        v = np.einsum("tk,kl,tl->t", pool, cov_new, pool)
        want.append(sum(prob * np.mean(ndtr(KAPPA * np.abs(pool @ (mean + cov_new @ x * step))
                                            / np.sqrt(1 + KAPPA**2 * v)))
                        for prob, step in ((p, 1 - p), (1 - p, -p))))
    got = expected_accuracy(pool, mean, cov)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert ((got > 0.5) & (got < 1)).all()


def test_candidate_pair_accuracy_equals_the_pair_table():
    """The Gram form over candidate pairs (in blocks, with a residual offset) equals expected_accuracy on the
    explicit (P, K) table of differences, each pair a question and every pair a target."""
    rng = np.random.default_rng(7)
    F, offset = rng.normal(size=(12, 5)), rng.normal(size=12)
    A = rng.normal(size=(5, 5))
    cov, mean = A @ A.T / 5 + 0.1 * np.eye(5), rng.normal(size=5)
    i, j = all_pairs(12)
    # the offset moves each candidate's score: as an extra feature with weight 1 and no uncertainty
    Fx = np.hstack([F, offset[:, None]])
    covx = np.zeros((6, 6))
    covx[:5, :5] = cov
    want = expected_accuracy(Fx[i] - Fx[j], np.append(mean, 1.0), covx)
    got = candidate_pair_accuracy(F, mean, cov, (i, j), (i, j), offset)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    half = len(i) // 2  # other targets than the questions
    targets = F[i[:half]] - F[j[:half]]  # (T, K)
    np.testing.assert_allclose(candidate_pair_accuracy(F, mean, cov, (i, j), (i[:half], j[:half])),
                               expected_accuracy(F[i] - F[j], mean, cov, targets), rtol=1e-10)


def test_choose_pair_switches_criterion_and_bounds_the_work(monkeypatch):
    """Before ACCURACY_AFTER answers the pair of largest variance reduction, after it that of largest expected
    accuracy; beyond MAX_PAIRS pairs only the MAX_PAIRS of largest variance reduction are questions."""
    rng = np.random.default_rng(8)
    F, mean, cov = rng.normal(size=(9, 4)), rng.normal(size=4), np.eye(4)
    i, j = all_pairs(9)
    first = choose_pair(F, mean, cov, ACCURACY_AFTER - 1)
    b = int(np.argmax(variance_reduction(F[i] - F[j], mean, cov)))
    assert first["pair"] == (i[b], j[b]) and first["criterion"] == "variance_reduction"
    later = choose_pair(F, mean, cov, ACCURACY_AFTER)
    acc = expected_accuracy(F[i] - F[j], mean, cov)
    assert later["pair"] == (i[int(np.argmax(acc))], j[int(np.argmax(acc))])
    assert later["expected_accuracy"] == pytest.approx(acc.max())
    monkeypatch.setattr(active, "MAX_PAIRS", 5)
    short = choose_pair(F, mean, cov, ACCURACY_AFTER)
    top5 = np.argsort(-variance_reduction(F[i] - F[j], mean, cov), kind="stable")[:5]
    assert short["pair"] in {(int(i[q]), int(j[q])) for q in top5}
