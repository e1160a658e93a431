"""The MAP Bradley-Terry user fit and UserProfile files."""

import json
import os

import numpy as np
import pytest
from scipy.special import expit

from moerm_lite import UserProfile, fit_map


def planted(K=8, N=200, seed=0):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=K) * 2
    phi = rng.normal(size=(N, K))
    y = rng.random(N) < expit(phi @ w_true)  # Bradley-Terry labels
    phi = np.where(y[:, None], phi, -phi)  # chosen - rejected
    return w_true, phi


def test_recovers_planted_user():
    w_true, phi = planted()
    w, cov = fit_map(phi, np.zeros(8), prior_strength=1.0)
    cos = w @ w_true / np.linalg.norm(w) / np.linalg.norm(w_true)
    assert cos >= 0.95


def test_gradient_zero_and_laplace_covariance():
    w_true, phi = planted(N=50, seed=3)
    w0 = np.full(8, 0.2)
    lam = 2.0
    w, cov = fit_map(phi, w0, lam)
    grad = -(expit(-(phi @ w)) @ phi) + lam * (w - w0)
    assert np.abs(grad).max() < 1e-6  # the optimum, not merely "close"
    s = expit(phi @ w)
    hess = phi.T @ (phi * (s * (1 - s))[:, None]) + lam * np.eye(8)
    np.testing.assert_allclose(cov @ hess, np.eye(8), atol=1e-8)


def test_zero_comparisons_give_w0():
    w0 = np.array([0.5, -1.0, 2.0])
    w, cov = fit_map(np.zeros((0, 3)), w0, 3.0)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_allclose(cov, np.eye(3) / 3.0)


def test_deterministic_and_robust_to_contradictions():
    _, phi = planted(N=30, seed=5)
    a, _ = fit_map(phi, np.zeros(8), 1.0)
    b, _ = fit_map(phi.copy(), np.zeros(8), 1.0)
    np.testing.assert_array_equal(a, b)
    # every comparison plus its exact contradiction: no direction is preferred, w stays at w0 = 0
    w, _ = fit_map(np.vstack([phi, -phi]), np.zeros(8), 1.0)
    np.testing.assert_allclose(w, np.zeros(8), atol=1e-6)
    # ... and around a non-zero prior the contradictions pull towards indifference (|w| shrinks)
    w, _ = fit_map(np.vstack([phi, -phi]), np.ones(8), 1.0)
    assert np.isfinite(w).all() and np.linalg.norm(w) < np.linalg.norm(np.ones(8))
    # duplicates only sharpen, never break
    w2, _ = fit_map(np.vstack([phi] * 20), np.zeros(8), 1.0)
    assert np.isfinite(w2).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        fit_map(np.array([[np.nan, 1.0]]), np.zeros(2), 1.0)
    with pytest.raises(ValueError, match="prior_strength"):
        fit_map(np.ones((1, 2)), np.zeros(2), 0.0)


def test_profile_round_trip_and_atomic_save(tmp_path, monkeypatch):
    _, phi = planted(N=20)
    p = UserProfile(user_id="alice", prior_strength=1.5, model_hash="0" * 16).fit(phi, np.zeros(8))
    path = p.save(tmp_path / "alice.json")
    q = UserProfile.load(path)
    np.testing.assert_array_equal(q.weights_, p.weights_)
    np.testing.assert_array_equal(q.covariance_, p.covariance_)
    assert (q.user_id, q.n_comparisons_, q.prior_strength) == ("alice", 20, 1.5)
    before = path.read_text()

    def crash(*a, **k):
        raise OSError("disk died")

    monkeypatch.setattr(os, "replace", crash)  # the process "dies" before the rename
    p.weights_ = p.weights_ + 1
    with pytest.raises(OSError):
        p.save(path)
    assert path.read_text() == before  # the old profile is intact
    assert sorted(f.name for f in tmp_path.iterdir()) == [".alice.json.lock", "alice.json"]  # no temp file


def test_profile_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        UserProfile.load(tmp_path / "nobody.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        UserProfile.load(bad)
    _, phi = planted(N=5)
    d = UserProfile(model_hash="0" * 16).fit(phi, np.zeros(8)).to_dict()
    d["weights"][0] = float("nan")
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="NaN"):
        UserProfile.load(bad)


def random_precision(K, seed=0):
    A = np.random.default_rng(seed).normal(size=(K, K))
    return A @ A.T / K + 0.2 * np.eye(K)


def test_prior_precision_optimum_and_covariance():
    """With P, the fit is the MAP of the prior N(w0, (lambda P)^-1): zero gradient, Laplace covariance."""
    _, phi = planted(N=40, seed=6)
    w0, lam, P = np.full(8, 0.1), 1.5, random_precision(8)
    w, cov = fit_map(phi, w0, lam, P)
    grad = -(expit(-(phi @ w)) @ phi) + lam * P @ (w - w0)
    assert np.abs(grad).max() < 1e-6
    s = expit(phi @ w)
    np.testing.assert_allclose(cov @ (phi.T @ (phi * (s * (1 - s))[:, None]) + lam * P), np.eye(8), atol=1e-8)
    np.testing.assert_allclose(fit_map(phi, w0, lam, np.eye(8))[0], fit_map(phi, w0, lam)[0], atol=1e-9)
    with pytest.raises(ValueError, match="prior_precision"):
        fit_map(phi, w0, lam, np.eye(3))


def test_prior_precision_pins_the_experts_users_never_vary_on():
    """A huge precision on expert 0 keeps its weight at w0 however strongly the data pull."""
    _, phi = planted(N=200, seed=7)
    w0 = np.zeros(8)
    P = np.eye(8)
    P[0, 0] = 1e6
    w, _ = fit_map(phi, w0, 1.0, P)
    free, _ = fit_map(phi, w0, 1.0)
    assert abs(w[0]) < 1e-3 < abs(free[0])


def test_profile_keeps_its_prior_precision(tmp_path):
    _, phi = planted(N=20, seed=8)
    P = random_precision(8, seed=1)
    p = UserProfile(prior_strength=2.0, prior_precision=P, model_hash="0" * 16).fit(phi[:10], np.zeros(8))
    p.save(tmp_path / "p.json")
    q = UserProfile.load(tmp_path / "p.json").partial_fit(phi[10:])
    np.testing.assert_allclose(q.prior_precision, P)
    np.testing.assert_allclose(q.weights_, fit_map(phi, np.zeros(8), 2.0, P)[0], atol=1e-6)


@pytest.mark.parametrize("content", ["[]", "null", "3"])
def test_profile_that_is_not_an_object_is_a_clear_error(tmp_path, content):
    f = tmp_path / "p.json"
    f.write_text(content)
    with pytest.raises(ValueError, match="must be a JSON object"):
        UserProfile.load(f)


def saved_profile(tmp_path, **edits):
    _, phi = planted(N=6, seed=3)
    d = UserProfile(user_id="u", model_hash="0" * 16).fit(phi, np.zeros(8)).to_dict()
    d.update(edits)
    path = tmp_path / "u.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("edits,match", [
    ({"model_hash": None}, "names no model"),
    ({"model_hash": ""}, "names no model"),
    ({"covariance": (-np.eye(8)).tolist()}, "covariance is not positive definite"),
    ({"covariance": (np.eye(8) + np.triu(np.ones((8, 8)), 1)).tolist()}, "covariance is not symmetric"),
    ({"prior_precision": [[float("nan")] * 8] * 8}, "prior_precision must be a finite"),
    ({"prior_strength": float("nan")}, "prior_strength"),
    ({"prior_strength": -1.0}, "prior_strength"),
    ({"user_id": ["x"]}, "user_id must be a string"),
    ({"n_comparisons": 3}, "stored comparisons"),
])
def test_malformed_profile_files_are_refused_by_name(tmp_path, edits, match):
    path = saved_profile(tmp_path, **edits)
    with pytest.raises(ValueError, match=match) as e:
        UserProfile.load(path)
    assert str(path) in str(e.value)


def test_profile_without_a_model_cannot_be_saved_or_used(tmp_path, tiny_fp32):
    _, phi = planted(N=6, K=tiny_fp32.n_experts)
    p = UserProfile().fit(phi, tiny_fp32.w0)
    with pytest.raises(ValueError, match="names no model"):
        p.save(tmp_path / "p.json")
    with pytest.raises(ValueError, match="names no model"):
        tiny_fp32.score("q", "ok", user=p)
    assert not (tmp_path / "p.json").exists()


def test_absurd_prior_strength_is_refused_or_round_trips(tmp_path):
    """A fit either fails with a clear error or writes a profile that loads again."""
    _, phi = planted(N=6)
    for lam in (float("inf"), 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="prior_strength"):
            fit_map(phi, np.zeros(8), lam)
    with pytest.raises(ValueError, match="overflows"):
        fit_map(phi, np.zeros(8), 1e308, 2 * np.eye(8))
    p = UserProfile(prior_strength=1e308, model_hash="0" * 16).fit(phi, np.zeros(8))
    q = UserProfile.load(p.save(tmp_path / "p.json"))
    np.testing.assert_array_equal(q.weights_, p.weights_)
    assert np.abs(q.weights_).max() < 1e-300  # the prior holds the weights at w0 = 0
    with pytest.raises(ValueError, match="prior_precision is not positive definite"):
        fit_map(phi, np.zeros(8), 1.0, -np.eye(8))


def test_save_keeps_mode_and_reuses_one_temp_name(tmp_path):
    """A save killed mid-write leaves at most one `.NAME.tmp`, which the next save replaces."""
    path = saved_profile(tmp_path)
    p = UserProfile.load(path)
    os.chmod(path, 0o640)
    (tmp_path / ".u.json.tmp").write_text("half a profile from a killed writer")
    p.save(path)
    assert (path.stat().st_mode & 0o777) == 0o640
    assert sorted(f.name for f in tmp_path.iterdir()) == [".u.json.lock", "u.json"]
    assert UserProfile.load(path).n_comparisons_ == 6


def _add_one(args):
    path, seed = args
    from moerm_lite import UserProfile as UP

    phi = np.random.default_rng(seed).normal(size=(1, 8))
    UP.update_saved(path, phi, "0" * 16)


def test_concurrent_updates_all_land(tmp_path):
    """Many processes folding comparisons into one profile at once: none is lost (read-modify-write
    under a file lock)."""
    import multiprocessing as mp

    path = saved_profile(tmp_path)
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_add_one, [(path, s) for s in range(24)], chunksize=1)
    p = UserProfile.load(path)
    assert p.n_comparisons_ == 6 + 24
    with pytest.raises(ValueError, match="fitted for model"):
        UserProfile.update_saved(path, np.zeros((1, 8)), "f" * 16)


def test_describe_names_the_planted_taste_and_grows_sure_with_data():
    """A planted user who loads on expert 1 against expert 0: described as favouring 1 and disfavouring 0,
    more surely with more comparisons; names must match the weights."""
    rng = np.random.default_rng(0)
    K, w0 = 4, np.zeros(4)
    w_true = np.array([-2.0, 2.0, 0.0, 0.0])
    names = ["longer replies", "shorter replies", "lists", "code"]

    def planted(n):
        phi = rng.normal(size=(n, K))
        return phi * np.where(rng.random(n) < expit(phi @ w_true), 1, -1)[:, None]  # chosen minus rejected

    few = UserProfile(prior_strength=1.0).fit(planted(10), w0).describe(names)
    many = UserProfile(prior_strength=1.0).fit(planted(400), w0).describe(names)
    for d in (few, many):
        assert d["favours"][0]["name"] == "shorter replies" and d["disfavours"][0]["name"] == "longer replies"
    assert many["favours"][0]["certainty"] == "sure" and many["favours"][0]["p_sign"] > few["favours"][0]["p_sign"]
    assert many["n_comparisons"] == 400 and "Fitted on 400 comparisons" in many["text"]
    assert all(g["name"] not in ("lists", "code") or abs(g["z"]) < 3 for g in many["favours"] + many["disfavours"])
    assert UserProfile().fit(planted(3), w0).describe()["favours"][0]["name"].startswith("expert ")
    with pytest.raises(ValueError, match="expert_names has 2 names"):
        UserProfile().fit(planted(3), w0).describe(names[:2])


def test_approximate_leave_one_out_matches_refitting():
    """loo_log_likelihood (one Newton step per left-out comparison) is close to refitting without it; with a
    residual it is close where the residual is not fitted to noise (a weak one; strong ones it rates lower
    than refitting does, which errs towards less residual)."""
    from scipy.special import log_expit

    from moerm_lite.personalize import fit_residual, loo_log_likelihood

    rng = np.random.default_rng(0)
    K, F, N = 6, 20, 40
    w_true = rng.normal(size=K)
    phi = rng.normal(size=(N, K))
    phi *= np.where(rng.random(N) < expit(phi @ w_true), 1, -1)[:, None]
    X = rng.normal(size=(N, F))
    w0 = np.zeros(K)
    w, _ = fit_map(phi, w0, 1.0)
    exact = np.mean([log_expit(phi[i] @ fit_map(np.delete(phi, i, 0), w0, 1.0)[0]) for i in range(N)])
    assert loo_log_likelihood(phi, None, w, None, 1.0, None, None) == pytest.approx(exact, abs=0.01)
    loo = {}
    for rho in (1.0, 10.0):
        out = []
        for i in range(N):
            wi = fit_map(np.delete(phi, i, 0), w0, 1.0)[0]
            vi = fit_residual(np.delete(X, i, 0), np.delete(phi, i, 0) @ wi, rho)
            out.append(log_expit(phi[i] @ wi + X[i] @ vi))
        loo[rho] = (loo_log_likelihood(phi, X, w, fit_residual(X, phi @ w, rho), 1.0, None, rho), np.mean(out))
    assert loo[10.0][0] == pytest.approx(loo[10.0][1], abs=0.02)
    assert loo[1.0][0] < loo[1.0][1] and loo[1.0][0] < loo[10.0][0]  # both say: noise is not worth fitting


def test_leave_one_out_and_evidence_have_one_value_in_either_form():
    """Above 2 D comparisons (D weights) the leverages and the evidence are computed over the weights, below over
    the N margins: the same model with zero features added (so that D passes N / 2) gives the same numbers."""
    from moerm_lite.personalize import fit_residual, log_evidence, loo_log_likelihood, residual_scale

    rng = np.random.default_rng(5)
    K, F, N, pad = 3, 5, 40, 30  # D = 8 < N / 2; padded, D = 38 > N / 2
    phi, X = rng.normal(size=(N, K)), rng.normal(size=(N, F))
    chosen = np.where(rng.random(N) < expit(phi[:, 0] + X[:, 1]), 1, -1)[:, None]  # which reply was chosen
    phi, X = phi * chosen, X * chosen  # chosen minus rejected
    w0, P, rho = np.zeros(K), np.eye(K), 3.0
    scale = residual_scale(X)
    Xp, scale_p = np.hstack([X, np.zeros((N, pad))]), np.concatenate([scale, np.ones(pad)])
    w = fit_map(phi, w0, 1.0, P)[0]
    v = fit_residual(X, phi @ w, rho)
    vp = np.concatenate([v, np.zeros(pad)])
    assert loo_log_likelihood(phi, X, w, v, 1.0, P, rho, scale) == pytest.approx(
        loo_log_likelihood(phi, Xp, w, vp, 1.0, P, rho, scale_p), abs=1e-9)
    assert log_evidence(phi, X, w0, 1.0, P, rho, scale) == pytest.approx(
        log_evidence(phi, Xp, w0, 1.0, P, rho, scale_p), abs=1e-7)


def test_select_residual_small_inside_the_basis_large_outside():
    """A planted user the experts express gets no residual (or the weakest); one whose taste lies in the pair
    features alone gets a strong residual (a small strength)."""
    from moerm_lite.personalize import RESIDUAL_GRID, select_residual

    rng = np.random.default_rng(1)
    K, F, N = 5, 40, 50
    phi, X = rng.normal(size=(N, K)), rng.normal(size=(N, F))
    inside = np.where(rng.random(N) < expit(3 * phi[:, 0]), 1, -1)[:, None]
    outside = np.where(rng.random(N) < expit(3 * X[:, 7] + 2 * X[:, 3]), 1, -1)[:, None]
    chosen_in, scores = select_residual(phi * inside, X * inside, np.zeros(K), 1.0, None)
    chosen_out, _ = select_residual(phi * outside, X * outside, np.zeros(K), 1.0, None)
    assert set(scores) == {"none" if r is None else f"{r:g}" for r in RESIDUAL_GRID}
    assert chosen_in is None or chosen_in >= 30
    assert chosen_out is not None and chosen_out <= 3


def test_log_evidence_equals_the_weight_space_laplace_evidence():
    """log_evidence works on the N margins; the same Laplace approximation written over the weights (and the
    residual) -- log-likelihood at the joint MAP, minus the prior's penalty, plus half the log-determinant of the
    prior precision over that of the posterior's -- gives the same number, with and without a residual."""
    from scipy.optimize import minimize
    from scipy.special import log_expit

    from moerm_lite.personalize import log_evidence, residual_scale

    rng = np.random.default_rng(3)
    K, F, N = 4, 6, 30  # N > 2 (K + F): computed over the weights; N <= K: over the margins
    phi, X, w0 = rng.normal(size=(N, K)), rng.normal(size=(N, F)), 0.3 * rng.normal(size=K)
    P, lam, rho = np.eye(K) + 0.3 * np.ones((K, K)), 2.0, 3.0
    for n in (N, K):
        w, cov = fit_map(phi[:n], w0, lam, P)
        by_weights = (log_expit(phi[:n] @ w).sum() - 0.5 * (w - w0) @ (lam * P) @ (w - w0)
                      + 0.5 * np.linalg.slogdet(lam * P)[1] + 0.5 * np.linalg.slogdet(cov)[1])
        assert log_evidence(phi[:n], None, w0, lam, P, None) == pytest.approx(by_weights, abs=1e-8)
    Q = np.diag(2 * rho * residual_scale(X) ** 2)  # the residual's prior precision: rho ||v * scale||^2

    def loss(t: np.ndarray) -> float:
        d, v = t[:K] - w0, t[K:]
        return float(-log_expit(phi @ t[:K] + X @ v).sum() + 0.5 * d @ (lam * P) @ d + 0.5 * v @ Q @ v)

    t = minimize(loss, np.zeros(K + F), method="BFGS", options={"gtol": 1e-12}).x
    M = np.hstack([phi, X])  # (N, K + F)
    s = expit(M @ t)
    prior = np.block([[lam * P, np.zeros((K, F))], [np.zeros((F, K)), Q]])
    by_weights = (-loss(t) + 0.5 * np.linalg.slogdet(prior)[1]
                  - 0.5 * np.linalg.slogdet((M * (s * (1 - s))[:, None]).T @ M + prior)[1])
    assert log_evidence(phi, X, w0, lam, P, rho) == pytest.approx(by_weights, abs=1e-6)
    # fewer comparisons than weights: the margins' form, on the same numbers (the scale fixed, as fitted above)
    Xw = np.hstack([X, np.zeros((N, 40))])  # F = 46: the extra features are zero, so the model is the same
    sw = np.concatenate([residual_scale(X), np.ones(40)])
    assert log_evidence(phi, Xw, w0, lam, P, rho, scale=sw) == pytest.approx(by_weights, abs=1e-6)
    assert log_evidence(phi[:0], X[:0], w0, lam, P, rho) == 0.0


def test_evidence_chooses_no_residual_inside_the_basis_and_one_outside():
    """The evidence criterion on planted users: one the experts express gets no residual already at N = 10;
    one whose taste lies in the pair features alone gets a strong residual at N = 50."""
    from moerm_lite.personalize import RESIDUAL_GRID, choose_residual

    rng = np.random.default_rng(1)
    K, F, N = 5, 40, 50
    phi, X = rng.normal(size=(N, K)), rng.normal(size=(N, F))
    inside = np.where(rng.random(N) < expit(3 * phi[:, 0]), 1, -1)[:, None]
    outside = np.where(rng.random(N) < expit(3 * X[:, 7] + 2 * X[:, 3]), 1, -1)[:, None]
    w0 = np.zeros(K)
    for n in (10, 50):
        p, x = phi[:n] * inside[:n], X[:n] * inside[:n]
        chosen, v, scores = choose_residual(p, x, fit_map(p, w0, 1.0)[0], 1.0, None, criterion="evidence", w0=w0)
        assert chosen is None and v is None and set(scores) == {"none" if r is None else f"{r:g}" for r in RESIDUAL_GRID}
    p, x = phi * outside, X * outside
    chosen, v, _ = choose_residual(p, x, fit_map(p, w0, 1.0)[0], 1.0, None, criterion="evidence", w0=w0)
    assert chosen is not None and chosen <= 3 and v is not None
    with pytest.raises(ValueError, match="needs the prior mean w0"):
        choose_residual(p, x, w0, 1.0, None, criterion="evidence")
    with pytest.raises(ValueError, match="criterion must be one of"):
        choose_residual(p, x, w0, 1.0, None, criterion="aic")


def test_user_id_must_be_a_string_and_a_nan_residual_is_refused():
    """Regressions the fuzzer found: a non-string user_id made a profile whose file could not be loaded again;
    a residual with NaN gave NaN scores."""
    from moerm_lite.personalize import resolve_weights

    with pytest.raises(TypeError, match="user_id must be a string or None, got int"):
        UserProfile(user_id=7)
    p = UserProfile(model_hash="0" * 16, residual_strength=30.0).fit(np.ones((2, 2)), np.zeros(2), np.ones((2, 3)))
    p.residual_ = np.array([0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="residual containing NaN or inf"):
        resolve_weights(p, np.zeros(2), "m", "0" * 16, allow_residual=True)
