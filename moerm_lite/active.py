"""Which comparison to ask a user next: the answer that most shrinks their predictive uncertainty.

A user's weights have the posterior ``w ~ N(mean, cov)`` (the MAP fit and its Laplace covariance;
before any comparison, the prior ``N(w0, (lambda P)^-1)``). For a comparison with feature difference
``phi`` (K,), the score difference ``z = w . phi`` is Gaussian with variance ``phi^T cov phi``,
and the answer is Bernoulli(sigmoid(z)) with ``p`` ~ ``Phi(m sqrt(pi/8) / sqrt(1 + pi/8 v))``.

Observing the answer to ``x`` updates the Laplace covariance by the rank-one step
``cov' = cov - s cov x x^T cov / (1 + s x^T cov x)`` with ``s = p (1 - p)``. The criterion is the
resulting drop in the summed variance of the score differences of a set of *target*
comparisons (by default the candidates themselves):

    gain(x) = s_x * sum_t (t^T cov x)^2 / (1 + s_x x^T cov x)

so a question is worth asking when the model cannot predict its answer and the answer would
also settle the comparisons the user is likely to face, rather than one that only pins down ``w``
along directions no candidate differs in (which is what information gain about ``w`` itself, BALD,
rewards). ``python -m moerm_build active`` measures it against random questions; the model card has the curve.
"""

from __future__ import annotations

import math

import numpy as np

_KAPPA2 = math.pi / 8.0  # sigmoid(z) ~ Phi(sqrt(pi / 8) z)


def preference_probability(phi: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """P(the user prefers the first response), averaged over the posterior, (P,)."""
    from scipy.special import ndtr  # here, not at import: scoring never needs scipy

    phi = np.asarray(phi, dtype=np.float64)
    m = phi @ mean  # (P,)
    v = np.einsum("pk,kl,pl->p", phi, cov, phi)  # (P,)
    return ndtr(math.sqrt(_KAPPA2) * m / np.sqrt(1.0 + _KAPPA2 * v))


def variance_reduction(phi: np.ndarray, mean: np.ndarray, cov: np.ndarray,
                       targets: np.ndarray | None = None) -> np.ndarray:
    """Expected drop in the summed posterior variance of ``targets``' score differences, (P,).

    Args:
        phi: (P, K) feature differences of the candidate questions (first minus second).
        mean: (K,) posterior mean of the user's weights; cov: (K, K) posterior covariance.
        targets: (T, K) comparisons whose predictions matter; default ``phi``.
    """
    phi = np.asarray(phi, dtype=np.float64)
    targets = phi if targets is None else np.asarray(targets, dtype=np.float64)
    p = preference_probability(phi, mean, cov)  # (P,)
    s = p * (1.0 - p)  # (P,) Bernoulli variance of the answer
    cx = phi @ cov  # (P, K)
    v = np.einsum("pk,pk->p", cx, phi)  # (P,) variance of each candidate's score difference
    # sum_t (t^T cov x)^2 = x^T cov (T^T T) cov x: a (K, K) matrix, never the (T, P) table of covariances
    M = cov @ (targets.T @ targets) @ cov  # (K, K)
    return s * np.einsum("pk,kl,pl->p", phi, M, phi) / (1.0 + s * v)


def candidate_pair_gains(expert_features: np.ndarray, mean: np.ndarray, cov: np.ndarray,
                         offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`variance_reduction` of every pair of n candidates, targets all pairs, in O(n^2 + n K^2).

    Each pair's quantities are quadratic forms in ``phi = f_i - f_j``, so they come from (n, n)
    Gram matrices (``phi^T A phi = g_ii + g_jj - 2 g_ij`` with ``g = F A F^T``) and the (P, K)
    table of differences is never built: 1,000 candidates (499,500 pairs) stay under 100 MB.

    Args:
        expert_features: (n, K) the candidates' ``pi * r``.
        offset: (n,) a part of each candidate's score taken as known (a profile's residual term ``x . v``);
            it moves the predicted answers, not the uncertainty, which is the weights' alone.
    Returns:
        ``(gain, p_first, variance)``, each (n, n); entry (i, j), i < j, is about "i or j?".
    """
    from scipy.special import ndtr  # here, not at import: scoring never needs scipy

    F = np.asarray(expert_features, dtype=np.float64)  # (n, K)
    n = len(F)
    total = F.sum(0)  # (K,)
    targets_gram = n * (F.T @ F) - np.outer(total, total)  # (K, K) = sum over pairs of phi phi^T

    def pair_form(A: np.ndarray) -> np.ndarray:
        g = F @ A @ F.T  # (n, n)
        d = np.diag(g)  # (n,)
        return d[:, None] + d[None, :] - 2.0 * g  # (n, n)

    a = F @ mean + (0.0 if offset is None else np.asarray(offset, dtype=np.float64))  # (n,)
    m = a[:, None] - a[None, :]  # (n, n) mean score difference
    v = np.maximum(pair_form(cov), 0.0)  # (n, n) variance of the score difference
    u = np.maximum(pair_form(cov @ targets_gram @ cov), 0.0)  # (n, n) sum_t (t^T cov phi)^2
    p = ndtr(math.sqrt(_KAPPA2) * m / np.sqrt(1.0 + _KAPPA2 * v))  # (n, n)
    s = p * (1.0 - p)  # (n, n)
    return s * u / (1.0 + s * v), p, v


def prior_covariance(prior_strength: float, prior_precision: np.ndarray | None, n_experts: int) -> np.ndarray:
    """(lambda P)^-1, (K, K): the covariance of a user before any comparison (P = None: the identity)."""
    P = np.eye(n_experts) if prior_precision is None else prior_precision
    return np.linalg.inv(prior_strength * P)


def all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j) of every unordered pair i < j of n candidates."""
    i, j = np.triu_indices(n, k=1)
    return i, j
