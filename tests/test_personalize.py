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
    p = UserProfile(user_id="alice", prior_strength=1.5).fit(phi, np.zeros(8))
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
    assert [f.name for f in tmp_path.iterdir()] == ["alice.json"]  # no temp file left behind


def test_profile_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        UserProfile.load(tmp_path / "nobody.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        UserProfile.load(bad)
    _, phi = planted(N=5)
    d = UserProfile().fit(phi, np.zeros(8)).to_dict()
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
    p = UserProfile(prior_strength=2.0, prior_precision=P).fit(phi[:10], np.zeros(8))
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
