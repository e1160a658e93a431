"""Per-user weights: the MAP Bradley-Terry fit and the ``UserProfile`` that stores it.

A user's comparison (chosen c, rejected j) gives the feature vector
``phi = (pi * r)(c) - (pi * r)(j)``, (K,). The user's signed weights ``w`` are

    argmax_w  sum_i log sigmoid(w . phi_i)  -  (lambda / 2) (w - w0)^T P (w - w0)

a strictly convex problem (one answer for one input) solved by Newton's method with
a backtracking line search (K is small). ``P`` is the prior precision: the identity, or (shipped
models) the inverse covariance of the training users' weights around ``w0``, so
the prior knows which experts people actually disagree on. The Laplace posterior
covariance is the inverse Hessian at the optimum:
``(sum_i s_i (1 - s_i) phi_i phi_i^T + lambda P)^-1``.

A profile keeps its comparisons' features, so :meth:`UserProfile.partial_fit` /
:meth:`UserProfile.update` fold in new comparisons and give exactly the weights of a
fit on all of them at once (the objective is convex; the refit starts from w0 every time).

With a ``residual_strength`` (``RewardModel.fit_user``'s default) a profile also fits a *residual* ``v``
over the pair features ``x`` the head sees (:mod:`moerm_lite.features`, (F,)): a user's score is then
``w . (pi * r) + x . v``. It is fitted after ``w``, on what ``w`` leaves unexplained, with a strong
L2 penalty on the features scaled by the root mean square of the user's own differences, so that
only many comparisons move it: for tastes the expert basis cannot express (``fit_residual``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .deprecated import renamed
from .features import BlockPrior
from .files import file_lock, locked_write_text

PROFILE_SCHEMA_VERSION = 6  # 6: residual_prior; 5: residual_strength "evidence"; 4: "auto"; 3: an optional
#                             residual over pair features; 2: comparisons' features stored
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4, 5, 6)  # 1 has no features: it scores but cannot be updated
AUTO = "auto"  # residual_strength chosen per user at each fit by approximate leave-one-out (choose_residual)
EVIDENCE = "evidence"  # residual_strength chosen per user at each fit by Laplace evidence (choose_residual)
PER_USER = {AUTO: "loo", EVIDENCE: "evidence"}  # the residual strengths chosen per user, and their criterion
RECOMMENDED = "recommended"  # RewardModel.fit_user's default: the folder's recommended_residual_strength
RESIDUAL_SCALE_FLOOR = 1e-3  # a feature's scale is at least this share of the median scale
MAX_WEIGHT = 1e100  # larger user weights are refused: with bounded rewards a score stays finite below it


def fit_map(phi: np.ndarray, w0: np.ndarray, prior_strength: float,
            prior_precision: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MAP weights and Laplace covariance for comparison features ``phi``.

    Args:
        phi: (N, K) chosen-minus-rejected features; N may be 0.
        w0: (K,) prior mean, the population weights.
        prior_strength: lambda > 0.
        prior_precision: (K, K) symmetric positive definite ``P``; ``None`` is the identity.

    Returns:
        ``(w, cov)`` with shapes (K,) and (K, K).
    """
    from scipy.special import expit, log_expit  # here, not at import: scoring never needs scipy

    w0 = np.asarray(w0, dtype=np.float64)  # (K,)
    phi = np.asarray(phi, dtype=np.float64).reshape(-1, len(w0))  # (N, K)
    strength = float(prior_strength)
    if not (math.isfinite(strength) and strength > 0):
        raise ValueError(f"prior_strength must be a positive finite number, got {prior_strength!r}")
    if not np.isfinite(phi).all():
        raise ValueError("comparison features contain NaN or inf")
    P = np.eye(len(w0)) if prior_precision is None else np.asarray(prior_precision, np.float64)  # (K, K)
    if P.shape != (len(w0), len(w0)):
        raise ValueError(f"prior_precision must be ({len(w0)}, {len(w0)}), got {P.shape}")
    check_spd(P, "prior_precision")
    strength_p = strength * P  # (K, K)
    if not np.isfinite(strength_p).all():
        raise ValueError(f"prior_strength {prior_strength!r} times prior_precision overflows")

    def loss(w: np.ndarray) -> float:
        d = w - w0  # (K,)
        return float(-log_expit(phi @ w).sum() + 0.5 * d @ strength_p @ d)

    # Newton's method with a backtracking line search: the loss is strictly convex (the prior), K is small
    w = w0.copy()
    f = loss(w)
    for _ in range(100 if len(phi) else 0):
        s = expit(phi @ w)  # (N,)
        grad = -((1 - s) @ phi) + strength_p @ (w - w0)  # (K,)
        if not np.isfinite(grad).all() or np.abs(grad).max() < 1e-10:
            break
        try:
            step = -np.linalg.solve((phi * (s * (1 - s))[:, None]).T @ phi + strength_p, grad)  # (K,)
        except np.linalg.LinAlgError:  # reported below, where the covariance is checked
            break
        w, f = backtrack(loss, w, step, f, float(grad @ step))
    s = expit(phi @ w)  # (N,)
    hess = (phi * (s * (1 - s))[:, None]).T @ phi + strength_p  # (K, K)
    try:
        cov = np.linalg.inv(hess)  # (K, K); LinAlgError (a ValueError) if singular
        if not np.isfinite(w).all():
            raise ValueError("weights are not finite")
        check_spd(cov, "the posterior covariance")
    except ValueError as e:
        raise ValueError(f"the fit failed with prior_strength {prior_strength!r} ({e}); use a moderate "
                         "prior_strength") from None
    return w, cov


def fit_residual(X: np.ndarray, offset: np.ndarray, strength: float, prior: np.ndarray | None = None
                 ) -> np.ndarray:
    """The residual ``v`` (F,) over pair-feature differences ``X`` (N, F) on top of the scores ``offset``
    (N,) the expert weights give the same comparisons:

        argmin_v  -sum_i log sigmoid(offset_i + X_i . v)  +  strength * ||v * s||^2

    with ``s = residual_scale(X, prior)`` (F,): each feature's root mean square over these differences
    (floored at ``RESIDUAL_SCALE_FLOOR`` of the median, so a feature constant in the user's data cannot blow
    up), divided by its prior scale (``prior`` (F,), default 1: ``prior_scales``). Zero comparisons give
    ``v = 0``.
    """
    X = np.asarray(X, dtype=np.float64)  # (N, F)
    offset = np.asarray(offset, dtype=np.float64).reshape(-1)  # (N,)
    if X.ndim != 2 or len(X) != len(offset):
        raise ValueError(f"fit_residual: X must be (N, F) with N = len(offset) = {len(offset)}, "
                         f"got {X.shape}")
    if not (math.isfinite(strength) and strength > 0):
        raise ValueError(f"residual_strength must be a positive finite number, got {strength!r}")
    if not (np.isfinite(X).all() and np.isfinite(offset).all()):
        raise ValueError("pair features or scores contain NaN or inf")
    if not len(X):
        return np.zeros(X.shape[1])
    scale = residual_scale(X, prior)  # (F,)
    return penalized_logistic(X / scale, offset, strength) / scale  # (F,) in the features' own units


def penalized_logistic(Z: np.ndarray, offset: np.ndarray, strength: float) -> np.ndarray:
    """u (F,) = argmin  -sum_i log sigmoid(offset_i + Z_i . u)  +  strength * ||u||^2  for Z (N, F), offset
    (N,): the one penalised logistic fit of the project (the residual here; the build side's probes).
    Newton's method on the N coefficients of the row span of Z when N <= F (``_residual_newton``), else
    L-BFGS with an analytic gradient; both to the optimum (a strictly convex problem), not to a tolerance
    that depends on the solver."""
    from scipy.optimize import minimize  # here, not at import: scoring never needs scipy
    from scipy.special import expit, log_expit

    Z = np.asarray(Z, dtype=np.float64)  # (N, F)
    offset = np.asarray(offset, dtype=np.float64).reshape(-1)  # (N,)
    if not len(Z):
        return np.zeros(Z.shape[1])
    if len(Z) <= Z.shape[1]:  # fewer comparisons than features: Newton on the N coefficients of u = Z^T a
        return _residual_newton(Z, offset, strength)

    def loss_grad(u: np.ndarray) -> tuple[float, np.ndarray]:
        z = offset + Z @ u  # (N,)
        return float(-log_expit(z).sum() + strength * u @ u), -(expit(-z) @ Z) + 2 * strength * u

    return minimize(loss_grad, np.zeros(Z.shape[1]), jac=True, method="L-BFGS-B",
                    options={"maxiter": 1000, "gtol": 1e-10, "ftol": 1e-15}).x


def _residual_newton(Z: np.ndarray, offset: np.ndarray, strength: float, tol: float = 1e-10,
                     max_iter: int = 100) -> np.ndarray:
    """``penalized_logistic``'s minimiser u (F,) in the span of the rows of Z (N, F), where it lies (the
    representer theorem): u = Z^T a, Newton's method on a (N,) with a backtracking line search.

    With G = Z Z^T and s = sigmoid(offset + G a): the gradient in u is Z^T r with r = 2 strength a - (1 - s),
    and the Newton step solves (diag(s (1 - s)) G + 2 strength I) d = -r (N x N)."""
    from scipy.special import expit, log_expit

    N = len(Z)
    G = Z @ Z.T  # (N, N)
    a = np.zeros(N)  # (N,)

    def loss(a: np.ndarray) -> float:
        return float(-log_expit(offset + G @ a).sum() + strength * a @ G @ a)

    f = loss(a)
    for _ in range(max_iter):
        s = expit(offset + G @ a)  # (N,)
        r = 2 * strength * a - (1 - s)  # (N,)
        if np.abs(Z.T @ r).max() < tol:
            break
        d = -np.linalg.solve((s * (1 - s))[:, None] * G + 2 * strength * np.eye(N), r)  # (N,)
        a, f = backtrack(loss, a, d, f, float((G @ r) @ d))  # slope: the directional derivative, < 0
    return Z.T @ a  # (F,)


def backtrack(loss: Callable[[np.ndarray], float], x: np.ndarray, step: np.ndarray, f: float,
              slope: float) -> tuple[np.ndarray, float]:
    """One damped Newton step: the longest ``x + t step`` (t = 1, 1/2, ...) whose ``loss`` meets the Armijo
    condition ``loss <= f + 1e-4 t slope`` (``f = loss(x)``, ``slope`` the directional derivative), and its loss."""
    t = 1.0
    while True:
        f_new = loss(x + t * step)
        if f_new <= f + 1e-4 * t * slope or t <= 1e-12:
            return x + t * step, f_new
        t /= 2


def residual_scale(X: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """(F,) each feature's root mean square over the differences X (N, F), floored at
    ``RESIDUAL_SCALE_FLOOR`` of the median, divided by its prior scale ``prior`` (F,) (default 1): the units
    in which the residual's penalty is isotropic. A feature of prior scale c may take c times the weight
    (in its own standardised units) at the same penalty."""
    rms = np.sqrt((np.asarray(X, np.float64) ** 2).mean(0))  # (F,)
    scale = np.maximum(rms, RESIDUAL_SCALE_FLOOR * max(float(np.median(rms)), 1e-12)) + 1e-6  # (F,)
    return scale if prior is None else scale / prior


def margin_covariance(phi: np.ndarray, X: np.ndarray | None, prior_strength: float,
                      prior_precision: np.ndarray | None, residual_strength: float | None,
                      scale: np.ndarray | None = None) -> np.ndarray:
    """(N, N) prior covariance of the margins ``phi w + X v`` of N comparisons under the user model:
    ``phi (lambda P)^-1 phi^T``, plus ``Z Z^T / (2 rho)`` with a residual (``Z = X / scale``, ``scale`` (F,)
    the residual penalty's units, default ``residual_scale(X)``, as fitted)."""
    phi = np.asarray(phi, np.float64)  # (N, K)
    K = phi.shape[1]
    P = np.eye(K) if prior_precision is None else np.asarray(prior_precision, np.float64)  # (K, K)
    A = phi @ np.linalg.solve(prior_strength * P, phi.T)  # (N, N)
    if residual_strength is not None and X is not None:
        Z = np.asarray(X, np.float64) / (residual_scale(X) if scale is None else scale)  # (N, F)
        A = A + Z @ Z.T / (2 * residual_strength)
    return A


def n_weights(phi: np.ndarray, X: np.ndarray | None, residual_strength: float | None) -> int:
    """D, the user model's weights: K, and F more with a residual."""
    return int(np.shape(phi)[1]) + (0 if residual_strength is None or X is None else int(np.shape(X)[1]))


def weight_prior(phi: np.ndarray, X: np.ndarray | None, prior_strength: float, prior_precision: np.ndarray | None,
                 residual_strength: float | None, scale: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The same model over its D = K (+ F) weights: the design ``[phi, Z]`` (N, D), ``Z = X / scale``, and
    the prior precision ``diag(lambda P, 2 rho I)`` (D, D) of (w, v * scale); ``margin_covariance`` is
    ``design Lambda^-1 design^T``. For more comparisons than weights, where the N x N form costs N^3."""
    phi = np.asarray(phi, np.float64)  # (N, K)
    K = phi.shape[1]
    P = np.eye(K) if prior_precision is None else np.asarray(prior_precision, np.float64)  # (K, K)
    if residual_strength is None or X is None:
        return phi, prior_strength * P
    Z = np.asarray(X, np.float64) / (residual_scale(X) if scale is None else scale)  # (N, F)
    F = Z.shape[1]
    return np.hstack([phi, Z]), np.block([[prior_strength * P, np.zeros((K, F))],
                                          [np.zeros((F, K)), 2 * residual_strength * np.eye(F)]])


def loo_log_likelihood(phi: np.ndarray, X: np.ndarray | None, w: np.ndarray, v: np.ndarray | None,
                       prior_strength: float, prior_precision: np.ndarray | None,
                       residual_strength: float | None, scale: np.ndarray | None = None) -> float:
    """Mean approximate leave-one-out log-likelihood of a fit (w, v) on its own N comparisons.

    Each comparison's margin without it is ``z_i + h_i g_i / (1 - h_i s_i (1 - s_i))`` (one Newton step
    from the full fit; Rad & Maleki's approximate leave-one-out), with ``g_i = -(1 - s_i)`` the loss's
    slope and ``h_i`` the leverage ``x_i^T H^-1 x_i`` of the joint Laplace Hessian over (w, v), computed
    in the N-dimensional form ``diag(A (I + S A)^-1)``, ``A = phi (lambda P)^-1 phi^T + Z Z^T / (2 rho)``,
    ``Z = X / scale`` (``scale`` (F,): the residual penalty's units, default ``residual_scale(X)``, as fitted),
    or, for more than 2 D comparisons (D weights), as ``diag(M H^-1 M^T)`` over the weights (``weight_prior``).
    Higher is better; N = 0 gives 0.
    """
    from scipy.special import expit, log_expit

    phi = np.asarray(phi, np.float64)  # (N, K)
    N = len(phi)
    if N == 0:
        return 0.0
    z = phi @ w  # (N,)
    if residual_strength is not None and v is not None and X is not None:
        z = z + np.asarray(X, np.float64) @ v
    else:
        residual_strength = None
    s = expit(z)  # (N,)
    c = s * (1 - s)  # (N,)
    if N > 2 * n_weights(phi, X, residual_strength):  # over the weights: H = Lambda + M^T C M, h_i = m_i^T H^-1 m_i
        M, Lam = weight_prior(phi, X, prior_strength, prior_precision, residual_strength, scale)  # (N, D), (D, D)
        h = np.einsum("nd,nd->n", M @ np.linalg.inv(Lam + (M * c[:, None]).T @ M), M)  # (N,) leverages
    else:
        A = margin_covariance(phi, X, prior_strength, prior_precision, residual_strength, scale)  # (N, N)
        h = np.diag(A @ np.linalg.inv(np.eye(N) + c[:, None] * A))  # (N,) leverages
    z_loo = z - h * (1 - s) / np.maximum(1 - h * c, 1e-12)  # (N,)
    return float(log_expit(z_loo).mean())


def log_evidence(phi: np.ndarray, X: np.ndarray | None, w0: np.ndarray, prior_strength: float,
                 prior_precision: np.ndarray | None, residual_strength: float | None,
                 scale: np.ndarray | None = None, tol: float = 1e-10, max_iter: int = 100) -> float:
    """Laplace approximation of the log marginal likelihood of N comparisons under the user model, the
    weights and residual integrated out: ``log p(all N chosen | prior_strength, residual_strength)``.

    The margins ``f = phi w + X v`` (N,) have the Gaussian prior ``N(phi w0, A)``,
    ``A = phi (lambda P)^-1 phi^T + Z Z^T / (2 rho)`` with ``Z = X / scale`` (the residual's penalty
    ``rho ||v * scale||^2`` of :func:`fit_residual`; ``scale`` defaults to ``residual_scale(X)``, as fitted;
    no residual: the first term alone). With ``s = sigmoid(f)``, Newton's method finds the mode
    ``f = phi w0 + A a`` of ``sum log s - a^T A a / 2`` (Rasmussen & Williams, algorithms 3.1 and 3.2, with a
    prior mean; ``A`` may be singular), and the evidence is that objective minus
    ``log det(I + W^1/2 A W^1/2) / 2``, ``W = diag(s (1 - s))``. It equals the weight-space Laplace evidence
    of the same model, which is how it is computed for more comparisons than weights. Higher is better; N = 0
    gives 0. Unlike leave-one-out, the determinant charges a residual for the margins it could have fitted and
    did not need to.
    """
    from scipy.special import expit, log_expit

    phi = np.asarray(phi, np.float64)  # (N, K)
    N = len(phi)
    if N == 0:
        return 0.0
    if residual_strength is not None and X is None:
        raise ValueError("log_evidence: a residual_strength needs the pair features X")
    if N > 2 * n_weights(phi, X, residual_strength):  # cheaper over the weights
        return _log_evidence_over_weights(phi, X, w0, prior_strength, prior_precision, residual_strength, scale)
    A = margin_covariance(phi, X, prior_strength, prior_precision, residual_strength, scale)  # (N, N)
    m = phi @ np.asarray(w0, np.float64)  # (N,) prior mean of the margins

    def objective(a: np.ndarray) -> float:
        return float(log_expit(m + A @ a).sum() - 0.5 * a @ A @ a)

    a = np.zeros(N)  # (N,)
    psi = objective(a)
    for _ in range(max_iter):
        f = m + A @ a  # (N,)
        s = expit(f)  # (N,)
        sw = np.sqrt(s * (1 - s))  # (N,) W^1/2
        b = (s * (1 - s)) * (f - m) + (1 - s)  # (N,)
        B = np.eye(N) + sw[:, None] * A * sw[None, :]  # (N, N), eigenvalues >= 1
        step = b - sw * np.linalg.solve(B, sw * (A @ b)) - a  # (N,) full Newton step in a
        t, psi_new = 1.0, objective(a + step)
        while psi_new < psi - 1e-12 and t > 1e-8:  # damped when a full step overshoots
            t /= 2
            psi_new = objective(a + t * step)
        a, done = a + t * step, abs(psi_new - psi) < tol
        psi = psi_new
        if done:
            break
    s = expit(m + A @ a)  # (N,)
    sw = np.sqrt(s * (1 - s))  # (N,)
    _, logdet = np.linalg.slogdet(np.eye(N) + sw[:, None] * A * sw[None, :])
    return float(psi - 0.5 * logdet)


def _log_evidence_over_weights(phi: np.ndarray, X: np.ndarray | None, w0: np.ndarray, prior_strength: float,
                               prior_precision: np.ndarray | None, residual_strength: float | None,
                               scale: np.ndarray | None = None) -> float:
    """:func:`log_evidence` written over the D weights (``weight_prior``), for more than 2 D comparisons (its
    N x N form costs N^3 a step, this one N D^2 + D^3): the joint MAP ``theta`` of (w, v * scale) by
    :func:`fit_map`, then ``sum log sigmoid(margins) - d^T Lambda d / 2 + log det Lambda / 2 - log det H / 2``,
    ``d = theta - theta0``."""
    from scipy.special import log_expit

    design, Lam = weight_prior(phi, X, prior_strength, prior_precision, residual_strength, scale)  # (N, D), (D, D)
    theta0 = np.concatenate([np.asarray(w0, np.float64), np.zeros(design.shape[1] - phi.shape[1])])  # (D,)
    theta, cov = fit_map(design, theta0, 1.0, Lam)  # (D,), (D, D) = H^-1
    d = theta - theta0  # (D,)
    return float(log_expit(design @ theta).sum() - 0.5 * d @ Lam @ d + 0.5 * np.linalg.slogdet(Lam)[1]
                 + 0.5 * np.linalg.slogdet(cov)[1])


RESIDUAL_GRID: tuple[float | None, ...] = (None, 1.0, 3.0, 10.0, 30.0, 100.0)  # the per-user choices' strengths
CRITERIA = ("loo", "evidence")  # how choose_residual compares them (PER_USER: which choice uses which)


def choose_residual(phi: np.ndarray, X: np.ndarray, w: np.ndarray, prior_strength: float,
                    prior_precision: np.ndarray | None, grid: Sequence[float | None] = RESIDUAL_GRID,
                    criterion: str = "loo", w0: np.ndarray | None = None, prior: np.ndarray | None = None
                    ) -> tuple[float | None, np.ndarray | None, dict[str, float]]:
    """Given the expert weights ``w`` fitted on phi (N, K), the residual strength of ``grid`` (None: no
    residual) that scores highest on these comparisons: ``criterion="loo"``, the approximate leave-one-out
    log-likelihood of the fit (:func:`loo_log_likelihood`); ``"evidence"``, the Laplace marginal likelihood
    of the model around the prior mean ``w0`` (:func:`log_evidence`; ``w0`` required). ``prior`` (F,): the
    residual's prior scale per feature (:func:`fit_residual`). Ties go to the earlier (simpler) entry.
    Returns the strength, its residual (F,) or None, and every entry's score keyed ``"none"`` or the
    strength."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion == "evidence" and w0 is None:
        raise ValueError("choose_residual: criterion 'evidence' needs the prior mean w0")
    mean = np.zeros(len(w)) if w0 is None else w0  # (K,) the evidence's prior mean
    offset = np.asarray(phi, np.float64) @ w  # (N,)
    scale = residual_scale(X, prior) if len(X) else None  # (F,); no comparisons, no residual to scale
    scores: dict[str, float] = {}
    best: tuple[float, float | None, np.ndarray | None] | None = None
    for rho in grid:  # the evidence integrates the residual out: only the chosen one is fitted, below
        v = None if rho is None or criterion == "evidence" else fit_residual(X, offset, float(rho), prior)
        if criterion == "loo":
            score = loo_log_likelihood(phi, X, w, v, prior_strength, prior_precision, rho, scale)
        else:
            score = log_evidence(phi, X, mean, prior_strength, prior_precision, rho, scale)
        scores["none" if rho is None else f"{rho:g}"] = score
        if best is None or score > best[0] + 1e-12:
            best = (score, rho, v)
    if best is None:
        return None, None, scores
    rho, v = best[1], best[2]
    if rho is not None and v is None:
        v = fit_residual(X, offset, float(rho), prior)
    return rho, v, scores


def select_residual(phi: np.ndarray, X: np.ndarray, w0: np.ndarray, prior_strength: float,
                    prior_precision: np.ndarray | None, grid: Sequence[float | None] = RESIDUAL_GRID
                    ) -> tuple[float | None, dict[str, float]]:
    """:func:`choose_residual` after the MAP fit of the expert weights: the chosen strength and the scores."""
    w, _ = fit_map(phi, w0, prior_strength, prior_precision)
    rho, _, scores = choose_residual(phi, X, w, prior_strength, prior_precision, grid)
    return rho, scores


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """A float array as JSON: float16 values, base64 (a profile's stored pair features)."""
    a16 = np.ascontiguousarray(a, dtype="<f2")
    return {"dtype": "float16", "shape": list(a16.shape), "base64": base64.b64encode(a16.tobytes()).decode()}


def decode_array(d: Any, what: str) -> np.ndarray:
    """Inverse of :func:`encode_array`, float64; ``ValueError`` naming ``what`` if malformed."""
    try:
        if d.get("dtype") != "float16":
            raise ValueError(f"dtype {d.get('dtype')!r}")
        shape = tuple(int(n) for n in d["shape"])
        raw = np.frombuffer(base64.b64decode(d["base64"], validate=True), dtype="<f2")
        return raw.reshape(shape).astype(np.float64)
    except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as e:
        raise ValueError(f"user profile is malformed: {what}: {e}") from None


def check_spd(M: np.ndarray, what: str) -> None:
    """``ValueError`` unless ``M`` is a finite, symmetric, positive definite matrix."""
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or not np.isfinite(M).all():
        raise ValueError(f"{what} must be a finite square matrix, got shape {M.shape}")
    scale = max(float(np.abs(M).max()), 1e-300)
    if not np.allclose(M, M.T, rtol=0, atol=1e-8 * scale):
        raise ValueError(f"{what} is not symmetric")
    if len(M) and np.linalg.eigvalsh((M + M.T) / 2).min() <= 0:
        raise ValueError(f"{what} is not positive definite")


def check_residual_strength(strength: Any) -> None:
    """``ValueError`` unless ``strength`` is None, ``"auto"``, ``"evidence"`` or a positive finite number."""
    if strength is None or (isinstance(strength, str) and strength in PER_USER):
        return
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
            math.isfinite(strength) and strength > 0):
        raise ValueError(f"residual_strength must be None, {AUTO!r}, {EVIDENCE!r} or a positive finite number, "
                         f"got {strength!r}")


def check_residual_prior(prior: Any) -> BlockPrior | None:
    """A residual prior as a profile keeps it: None (every feature of prior scale 1), or the pair features'
    blocks in order, each ``(name, size, scale)`` (``moerm_lite.features.feature_blocks`` names them), a
    positive size and a positive finite scale. Returns it as a tuple of tuples; ``ValueError`` naming what is
    wrong otherwise."""
    if prior is None:
        return None
    try:
        rows = [tuple(b) for b in prior]
        out = tuple((str(name), int(size), float(scale)) for name, size, scale in rows)
    except (TypeError, ValueError) as e:
        raise ValueError(f"residual_prior must be a list of [block, size, scale], got {prior!r} ({e})") from None
    if not out or any(size < 1 or size != raw[1] or not (math.isfinite(scale) and scale > 0)
                      for (_, size, scale), raw in zip(out, rows)):
        raise ValueError(f"residual_prior needs at least one block, each of a positive whole size and a positive "
                         f"finite scale; got {prior!r}")
    return out


def prior_scales(prior: BlockPrior | None, F: int) -> np.ndarray | None:
    """The (F,) prior scale of each pair feature from the blocks of ``check_residual_prior`` (None: None);
    ``ValueError`` when the blocks do not cover exactly F features."""
    if prior is None:
        return None
    sizes = [size for _, size, _ in prior]
    if sum(sizes) != F:
        blocks = ", ".join(f"{name} {size}" for name, size, _ in prior)
        raise ValueError(f"residual_prior covers {sum(sizes)} features ({blocks}), the pair features have {F}")
    return np.repeat([scale for _, _, scale in prior], sizes).astype(np.float64)  # (F,)


def resolve_weights(user: Any, w0: np.ndarray, model_id: str, model_hash: str, *,
                    allow_residual: bool = False) -> np.ndarray:
    """The (K,) weights scores use for ``user``: ``w0`` for ``None``; a fitted profile's own, if it was
    fitted for the model ``model_hash``; a vector of K finite numbers. Clear errors otherwise.

    A profile with a residual over pair features is refused unless ``allow_residual``: weights alone do
    not give its scores (callers that apply the residual too pass ``allow_residual=True``)."""
    K = len(w0)
    if user is None:
        return w0
    if isinstance(user, UserProfile):
        if not hasattr(user, "weights_"):
            raise ValueError(f"user profile {user.user_id!r} is not fitted: build it with "
                             "RewardModel.fit_user(...) or UserProfile.load(path)")
        if user.model_hash is None:
            raise ValueError(f"user profile {user.user_id!r} names no model (model_hash is None); fit it with "
                             "RewardModel.fit_user, or pass model_hash=model.model_hash to UserProfile")
        if user.model_hash != model_hash:
            raise ValueError(f"user profile {user.user_id!r} was fitted for model {user.model_id!r} "
                             f"({user.model_hash}), not this one ({model_id!r}, {model_hash}); refit it")
        if user.residual_ is not None and not np.isfinite(user.residual_).all():
            raise ValueError(f"user profile {user.user_id!r} has a residual containing NaN or inf")
        if user.residual_ is not None and not allow_residual:
            raise ValueError(f"user profile {user.user_id!r} has a residual over pair features (fitted "
                             "with residual_strength): its weights alone do not give its scores; use "
                             "RewardModel.user_terms (weights and residual) or the scoring methods")
        w = user.weights_
    elif isinstance(user, (str, Path)):
        raise TypeError("user must be a UserProfile or a weight vector; load a profile file "
                        "with UserProfile.load(path)")
    else:
        try:
            w = np.asarray(user, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"user must be None, a UserProfile or {K} weights, got "
                            f"{type(user).__name__} ({e})") from None
    if w.shape != (K,):
        raise ValueError(f"user weights have shape {w.shape}, this model has n_experts={K}")
    if not np.isfinite(w).all():
        raise ValueError("user weights contain NaN or inf")
    if np.abs(w).max(initial=0.0) > MAX_WEIGHT:
        raise ValueError(f"user weights are too large (largest |w| {np.abs(w).max():.3g} > {MAX_WEIGHT:g}): "
                         "scores would overflow")
    return w


class UserProfile:
    """One user's signed expert weights, fitted from their comparisons.

    scikit-learn style: ``__init__`` stores settings, :meth:`fit` learns
    ``weights_`` (K,), ``covariance_`` (K, K), the comparisons' expert-feature differences
    ``expert_features_`` (N, K) and ``n_comparisons_``; :meth:`partial_fit` adds comparisons. A profile
    remembers the model it was fitted for and is refused by any other model.
    With a ``residual_strength`` it also learns ``residual_`` (F,) over the
    comparisons' pair-feature differences ``pair_features_`` (N, F), kept as float16, under the prior
    ``residual_prior`` (the blocks of ``check_residual_prior``; None: every feature alike).
    """

    features_ = renamed("features_", "expert_features_", "the pair features are ``pair_features_``")

    def __init__(self, user_id: str | None = None, prior_strength: float = 1.0,
                 prior_precision: np.ndarray | None = None, *, model_id: str | None = None,
                 model_hash: str | None = None, residual_strength: float | str | None = None,
                 residual_prior: Sequence[tuple[str, int, float]] | None = None) -> None:
        if user_id is not None and not isinstance(user_id, str):
            raise TypeError(f"user_id must be a string or None, got {type(user_id).__name__}")
        self.user_id = user_id
        self.prior_strength = prior_strength
        self.prior_precision = prior_precision  # (K, K) or None: the identity
        self.model_id = model_id
        self.model_hash = model_hash  # the model this profile belongs to; required to save and to score
        check_residual_strength(residual_strength)
        self.residual_strength = residual_strength  # None: no residual; "auto", "evidence": chosen at each fit
        self.residual_prior = check_residual_prior(residual_prior)  # the residual's prior scale per block
        self.residual_chosen_: float | None = None  # chosen per user: the strength the last fit chose (None: none)
        self.residual_: np.ndarray | None = None  # (F,) once fitted with a residual_strength

    def fit(self, features: np.ndarray, w0: np.ndarray,
            pair_features: np.ndarray | None = None) -> UserProfile:
        """Fit ``weights_`` from (N, K) comparison features around the prior ``w0``; with a
        ``residual_strength``, then ``residual_`` from the (N, F) pair-feature differences."""
        w0 = np.asarray(w0, dtype=np.float64)  # (K,)
        phi = np.asarray(features, dtype=np.float64).reshape(-1, len(w0))  # (N, K)
        if self.residual_strength is not None:
            if pair_features is None:
                raise ValueError(f"user profile {self.user_id!r} fits a residual (residual_strength "
                                 f"{self.residual_strength}): pass the comparisons' pair_features")
            # float16, as stored: a fit after reloading and updating equals one fit on everything
            X = np.asarray(pair_features, dtype=np.float16).astype(np.float64)  # (N, F)
            if X.ndim != 2 or len(X) != len(phi):
                raise ValueError(f"pair_features must be ({len(phi)}, F), one row per comparison, "
                                 f"got {X.shape}")
        w, cov = fit_map(phi, w0, self.prior_strength, self.prior_precision)
        if isinstance(self.residual_strength, str):  # chosen per user; an all-zero residual where none wins
            self.residual_chosen_, v, _ = choose_residual(phi, X, w, self.prior_strength, self.prior_precision,
                                                          criterion=PER_USER[self.residual_strength], w0=w0,
                                                          prior=prior_scales(self.residual_prior, X.shape[1]))
            self.residual_ = np.zeros(X.shape[1]) if v is None else v  # (F,)
            self.pair_features_: np.ndarray | None = X  # (N, F)
        elif self.residual_strength is not None:
            self.residual_ = fit_residual(X, phi @ w, float(self.residual_strength),
                                          prior_scales(self.residual_prior, X.shape[1]))  # (F,)
            self.pair_features_ = X
        self.weights_ = w  # (K,)
        self.covariance_ = cov  # (K, K)
        self.w0_ = w0
        self.expert_features_: np.ndarray | None = phi.copy()  # (N, K)
        self.n_comparisons_ = len(phi)
        return self

    def partial_fit(self, features: np.ndarray, pair_features: np.ndarray | None = None) -> UserProfile:
        """Add (M, K) comparison features (and, for a residual, their (M, F) pair features) and refit on all
        comparisons so far.

        The result equals :meth:`fit` on the concatenated features, in any order of arrival.
        """
        self._check_fitted()
        if self.expert_features_ is None:
            raise ValueError(f"user profile {self.user_id!r} was saved without its comparisons "
                             "(schema_version 1) and cannot be updated; refit it from all comparisons")
        K = len(self.w0_)
        new = np.asarray(features, dtype=np.float64)
        if new.ndim not in (1, 2) or new.shape[-1] != K:
            raise ValueError(f"features must have shape (M, {K}), got {new.shape}")
        new = new.reshape(-1, K)
        X = None
        if self.residual_strength is not None:
            if pair_features is None:
                raise ValueError(f"user profile {self.user_id!r} has a residual: pass the new comparisons' "
                                 "pair_features too")
            if self.pair_features_ is None:
                raise ValueError(f"user profile {self.user_id!r} was saved without its pair features and "
                                 "cannot be updated; refit it from all comparisons")
            add = np.asarray(pair_features, dtype=np.float64)
            F = self.pair_features_.shape[1]
            if add.ndim not in (1, 2) or add.shape[-1] != F:
                raise ValueError(f"pair_features must have shape (M, {F}), got {add.shape}")
            X = np.vstack([self.pair_features_, add.reshape(-1, F)])
        return self.fit(np.vstack([self.expert_features_, new]), self.w0_, X)

    def update(self, comparisons: Any, model: Any) -> UserProfile:
        """Deprecated: use ``model.update_user(profile, comparisons)`` (the model computes the
        comparisons' features; the profile only folds them in with :meth:`partial_fit`)."""
        warnings.warn("UserProfile.update(comparisons, model) is deprecated; use "
                      "model.update_user(profile, comparisons)", DeprecationWarning, stacklevel=2)
        return model.update_user(self, comparisons)

    @classmethod
    def update_saved(cls, path: str | Path, features: np.ndarray, model_hash: str,
                     pair_features: np.ndarray | None = None) -> UserProfile:
        """Fold (M, K) comparison features (and, for a profile with a residual, their (M, F) pair features)
        into the profile saved at ``path`` and save it, as one step.

        Read, update and write happen under a lock on the file, so concurrent updates of one
        profile (two ``moerm-lite fit --update`` at once) all land. ``model_hash`` is the hash of
        the model that computed ``features``; a profile of another model is refused.
        """
        path = Path(path)
        with file_lock(path):
            profile = cls.load(path)
            if profile.model_hash != model_hash:
                raise ValueError(f"user profile {path} was fitted for model {profile.model_id!r} "
                                 f"({profile.model_hash}), not this one ({model_hash}); refit it")
            profile.partial_fit(features, pair_features)
            locked_write_text(path, profile.to_json())
        return profile

    def uncertainty(self, features: np.ndarray) -> np.ndarray:
        """Posterior variance of score differences, ``phi^T Sigma phi``, for (N, K) or (K,) features.

        ``features`` are chosen-minus-rejected (or first-minus-second) feature differences,
        as :meth:`RewardModel.comparison_features` returns them. Returns (N,) or a float array ().
        """
        self._check_fitted()
        phi = np.asarray(features, dtype=np.float64)
        if phi.shape[-1:] != self.weights_.shape:
            raise ValueError(f"features must end in n_experts={len(self.weights_)}, got shape {phi.shape}")
        return np.einsum("...k,kl,...l->...", phi, self.covariance_, phi)  # (N,)

    def describe(self, expert_names: Sequence[str] | None = None, top: int = 3,
                 min_z: float = 0.5) -> dict[str, Any]:
        """What this user's weights favour and disfavour compared with the population, in words.

        An expert's shift is ``weights_ - w0`` and its certainty ``z = shift / sd``, ``sd`` from the
        posterior covariance. An expert whose reward rises with what its name says (``expert_names``,
        e.g. "longer replies") is *favoured* when its shift is positive and *disfavoured* when negative.
        Lists up to ``top`` experts each way with ``|z| >= min_z``, most certain first, each with the
        posterior probability that its shift has that sign (``p_sign``; a few comparisons leave the size of
        a taste uncertain across experts that measure similar things, so it is modest early on).

        Returns plain types: ``{"user_id", "n_comparisons", "favours": [...], "disfavours": [...],
        "residual": bool, "residual_share": :meth:`residual_share` or None, "text": str}``, each list item
        ``{"expert", "name", "shift", "z", "p_sign", "certainty"}`` (certainty: "sure" for p_sign >= 0.975,
        "likely" >= 0.84, else "a hint").
        """
        self._check_fitted()
        K = len(self.weights_)
        names = [f"expert {k}" for k in range(K)] if expert_names is None else list(expert_names)
        if len(names) != K:
            raise ValueError(f"expert_names has {len(names)} names, this profile has {K} weights")
        shift = self.weights_ - self.w0_  # (K,)
        z = shift / np.sqrt(np.maximum(np.diag(self.covariance_), 1e-300))  # (K,)

        def items(sign: int) -> list[dict[str, Any]]:
            out = []
            for k in [int(k) for k in np.argsort(-sign * z) if sign * z[k] >= min_z][:top]:
                p = 0.5 * (1 + math.erf(abs(float(z[k])) / math.sqrt(2)))  # P(shift has this sign)
                out.append({"expert": k, "name": names[k], "shift": float(shift[k]), "z": float(z[k]),
                            "p_sign": p, "certainty": "sure" if p >= 0.975 else "likely" if p >= 0.84 else "a hint"})
            return out

        fav, dis = items(+1), items(-1)
        n = self.n_comparisons_
        lines = [f"Fitted on {n} comparison{'s' if n != 1 else ''}."]
        for label, group in (("Favours", fav), ("Disfavours", dis)):
            if group:
                lines.append(f"{label} " + "; ".join(f"{g['name']} ({g['certainty']}, {100 * g['p_sign']:.0f}%)"
                                                   for g in group) + ".")
        if not fav and not dis:
            lines.append("No clear difference from the population's taste yet.")
        residual = self.residual_ is not None and bool(self.residual_.any())  # "auto" may have chosen none
        share = self.residual_share() if residual else None
        if share is not None:
            lines.append(f"A residual over the pair features, for tastes the experts do not name, makes "
                         f"{'under 1%' if share < 0.01 else f'{100 * share:.0f}%'} of its score differences "
                         "on these comparisons.")
        elif residual:
            lines.append("Also uses a residual over the pair features, for tastes the experts do not name.")
        return {"user_id": self.user_id, "n_comparisons": int(n), "favours": fav, "disfavours": dis,
                "residual": residual, "residual_share": share, "text": " ".join(lines)}

    def residual_share(self) -> float | None:
        """How much of this profile's score differences on its own comparisons its residual makes:
        ``mean |x . v| / (mean |x . v| + mean |phi . w|)`` over them, in [0, 1]; None without a residual or
        without stored comparisons. Small while a few comparisons barely move the residual."""
        self._check_fitted()
        if self.residual_ is None or self.pair_features_ is None or self.expert_features_ is None \
                or not len(self.expert_features_):
            return None
        r = float(np.abs(self.pair_features_ @ self.residual_).mean())  # residual part
        e = float(np.abs(self.expert_features_ @ self.weights_).mean())  # expert part
        return r / (r + e) if r + e > 0 else 0.0

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise ValueError("this UserProfile is not fitted yet")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the on-disk format)."""
        self._check_fitted()
        if not isinstance(self.model_hash, str) or not self.model_hash:
            raise ValueError(f"user profile {self.user_id!r} names no model (model_hash is {self.model_hash!r}); "
                             "fit it with RewardModel.fit_user or pass model_hash= to UserProfile")
        return {
            "schema_version": PROFILE_SCHEMA_VERSION,
            "user_id": self.user_id,
            "model_id": self.model_id,
            "model_hash": self.model_hash,
            "prior_strength": self.prior_strength,
            "prior_precision": (None if self.prior_precision is None
                                else np.asarray(self.prior_precision).tolist()),
            "n_comparisons": self.n_comparisons_,
            "weights": self.weights_.tolist(),
            "w0": self.w0_.tolist(),
            "covariance": self.covariance_.tolist(),
            "features": None if self.expert_features_ is None else self.expert_features_.tolist(),
            "residual_strength": self.residual_strength,
            "residual_chosen": self.residual_chosen_,
            "residual_prior": None if self.residual_prior is None else [list(b) for b in self.residual_prior],
            "residual": None if self.residual_ is None else self.residual_.tolist(),
            "pair_features": (None if self.residual_ is None or self.pair_features_ is None
                              else encode_array(self.pair_features_)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UserProfile:
        """Inverse of :meth:`to_dict`, with checks."""
        if not isinstance(d, dict):
            raise ValueError(f"user profile must be a JSON object, got {type(d).__name__}")
        if d.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(f"user profile has schema_version {d.get('schema_version')!r}, "
                             f"expected one of {READABLE_SCHEMA_VERSIONS}")
        if not isinstance(d.get("model_hash"), str) or not d["model_hash"]:
            raise ValueError(f"user profile names no model: model_hash must be a string, got {d.get('model_hash')!r}")
        for key in ("user_id", "model_id"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ValueError(f"user profile is malformed: {key} must be a string or null")
        try:
            pp = d.get("prior_precision")
            rs = d.get("residual_strength")
            p = cls(user_id=d["user_id"], prior_strength=float(d["prior_strength"]),
                    prior_precision=None if pp is None else np.asarray(pp, dtype=np.float64),
                    model_id=d["model_id"], model_hash=d["model_hash"],
                    residual_strength=None if rs is None else rs if rs in PER_USER else float(rs),
                    residual_prior=d.get("residual_prior"))  # before schema 6: none, every feature alike
            rc = d.get("residual_chosen")
            p.residual_chosen_ = None if rc is None else float(rc)
            p.weights_ = np.asarray(d["weights"], dtype=np.float64)
            p.w0_ = np.asarray(d["w0"], dtype=np.float64)
            p.covariance_ = np.asarray(d["covariance"], dtype=np.float64)
            p.n_comparisons_ = int(d["n_comparisons"])
            feats = d.get("features")
            p.expert_features_ = (None if feats is None
                           else np.asarray(feats, dtype=np.float64).reshape(-1, len(p.w0_)))
            res = d.get("residual")
            p.residual_ = None if res is None else np.asarray(res, dtype=np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"user profile is malformed: {e}") from e
        if (p.residual_strength is None) != (p.residual_ is None):
            raise ValueError("user profile is malformed: residual and residual_strength must both be set "
                             "or null")
        if p.residual_ is not None and p.residual_strength is not None:
            if not np.isfinite(p.residual_).all():
                raise ValueError("user profile is malformed: the residual must be finite")
            X = d.get("pair_features")
            p.pair_features_ = None if X is None else decode_array(X, "pair_features")
            want = (p.n_comparisons_, len(p.residual_))
            prior_scales(p.residual_prior, len(p.residual_))  # its blocks cover the residual
            if p.pair_features_ is not None and (p.pair_features_.shape != want
                                                 or not np.isfinite(p.pair_features_).all()):
                raise ValueError(f"user profile is malformed: pair_features {p.pair_features_.shape}, "
                                 f"expected {want} finite values")
        K = p.weights_.shape
        if (p.weights_.ndim != 1 or p.w0_.shape != K or p.covariance_.shape != K * 2
                or (p.prior_precision is not None and p.prior_precision.shape != K * 2)):
            raise ValueError("user profile is malformed: weights, w0 and covariance shapes disagree")
        if p.expert_features_ is not None and len(p.expert_features_) != p.n_comparisons_:
            raise ValueError(f"user profile is malformed: {len(p.expert_features_)} stored comparisons, "
                             f"n_comparisons says {p.n_comparisons_}")
        if not (np.isfinite(p.weights_).all() and np.isfinite(p.w0_).all()
                and (p.expert_features_ is None or np.isfinite(p.expert_features_).all())):
            raise ValueError("user profile contains NaN or inf weights or features")
        if not (math.isfinite(p.prior_strength) and p.prior_strength > 0):
            raise ValueError(f"user profile is malformed: prior_strength must be positive, got {p.prior_strength}")
        check_spd(p.covariance_, "user profile covariance")
        if p.prior_precision is not None:
            check_spd(p.prior_precision, "user profile prior_precision")
        if p.n_comparisons_ < 0:
            raise ValueError("user profile is malformed: n_comparisons is negative")
        return p

    def to_json(self) -> str:
        """The on-disk text of the profile."""
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON, atomically (temp file + rename, under a lock on the file)."""
        path = Path(path)
        text = self.to_json()
        with file_lock(path):
            locked_write_text(path, text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> UserProfile:
        """Read a profile written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no user profile at {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise ValueError(f"user profile {path} is not valid JSON: {str(e)[:200]}") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        n = getattr(self, "n_comparisons_", None)
        return f"UserProfile(user_id={self.user_id!r}, model_id={self.model_id!r}, n_comparisons={n})"
