"""Which comparison to ask a user next: first the answer that most shrinks their predictive uncertainty, then
the one after which their comparisons are expected to be ordered right most often.

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
rewards).

Variance reduction stalls after a few answers. From the ``ACCURACY_AFTER``-th answer on, the question is the
one after whose answer the target comparisons are expected to be ordered right most often
(:func:`expected_accuracy`: the posterior moved by one Newton step and the rank-one update above, either
answer weighted by its probability). Both choose under the posterior of a prior ``SELECTION_PRIOR`` times
stronger than the user's (the weights a user is scored with stay their own fit). The two settings were
chosen on validation users of eight kinds and confirmed on fresh ones (docs/decisions/active.md).
``python -m moerm_build active`` measures the rule against random questions; the model card has the curve.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_KAPPA2 = math.pi / 8.0  # sigmoid(z) ~ Phi(sqrt(pi / 8) z)
ACCURACY_AFTER = 5  # answers a user has given before questions are chosen by expected accuracy
SELECTION_PRIOR = 3.0  # questions are chosen under a prior this many times the user's prior strength
MAX_PAIRS = 2000  # expected accuracy over candidate pairs: at most this many questions and target pairs
BLOCK = 256  # questions per block of the (targets, questions) table


def preference_probability_from(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """P(first preferred) from the posterior mean ``m`` and variance ``v`` of score differences."""
    from scipy.special import ndtr  # here, not at import: scoring never needs scipy

    return ndtr(math.sqrt(_KAPPA2) * m / np.sqrt(1.0 + _KAPPA2 * v))


def preference_probability(phi: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """P(the user prefers the first response), averaged over the posterior, (P,)."""
    phi = np.asarray(phi, dtype=np.float64)
    m = phi @ mean  # (P,)
    v = np.einsum("pk,kl,pl->p", phi, cov, phi)  # (P,)
    return preference_probability_from(m, v)


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


def accuracy_after_answer(m: np.ndarray, v: np.ndarray, C: np.ndarray, p: np.ndarray,
                          vq: np.ndarray) -> np.ndarray:
    """(Q,) the expected share of T target comparisons ordered right after answering each of Q questions.

    Args:
        m, v: (T,) the targets' posterior mean score differences and their variances.
        C: (T, Q) ``t^T cov x``, each target's covariance with each question.
        p, vq: (Q,) P(first preferred) and the variance of each question's score difference.
    """
    from scipy.special import ndtr  # here, not at import: scoring never needs scipy

    s = p * (1.0 - p)  # (Q,)
    v_new = np.maximum(v[:, None] - s * C**2 / (1.0 + s * vq), 0.0)  # (T, Q) after the rank-one update
    scale = np.sqrt(1.0 + _KAPPA2 * v_new)  # (T, Q)
    out = np.zeros(len(p))
    for prob, step in ((p, (1.0 - p) / (1.0 + s * vq)), (1.0 - p, -p / (1.0 + s * vq))):  # either answer
        out += prob * ndtr(math.sqrt(_KAPPA2) * np.abs(m[:, None] + C * step) / scale).mean(0)
    return out


def expected_accuracy(phi: np.ndarray, mean: np.ndarray, cov: np.ndarray,
                      targets: np.ndarray | None = None) -> np.ndarray:
    """(P,) the expected share of ``targets`` (T, K; default ``phi``) ordered right by the posterior mean
    after the answer to each question ``phi`` (P, K): one Newton step of the posterior and the rank-one
    Laplace update, for either answer weighted by its probability."""
    phi = np.asarray(phi, dtype=np.float64)
    targets = phi if targets is None else np.asarray(targets, dtype=np.float64)
    cx = phi @ cov  # (P, K)
    vq = np.einsum("pk,pk->p", cx, phi)  # (P,)
    v = np.einsum("tk,kl,tl->t", targets, cov, targets)  # (T,)
    p = preference_probability(phi, mean, cov)  # (P,)
    return accuracy_after_answer(targets @ mean, v, targets @ cx.T, p, vq)


def question_scores(phi: np.ndarray, mean: np.ndarray, cov: np.ndarray, answers: int) -> np.ndarray:
    """(P,) how good each comparison of ``phi`` (P, K) is to ask a user who has given ``answers`` answers,
    under the selection posterior ``mean``, ``cov``: variance reduction before ``ACCURACY_AFTER`` answers,
    expected accuracy after (the pool itself as targets). Higher is better."""
    if answers < ACCURACY_AFTER:
        return variance_reduction(phi, mean, cov)
    return expected_accuracy(phi, mean, cov)


def candidate_pair_accuracy(expert_features: np.ndarray, mean: np.ndarray, cov: np.ndarray,
                            questions: tuple[np.ndarray, np.ndarray], targets: tuple[np.ndarray, np.ndarray],
                            offset: np.ndarray | None = None) -> np.ndarray:
    """:func:`expected_accuracy` of the candidate pairs ``questions`` (index arrays i, j) with the pairs
    ``targets`` as targets, from the candidates' (n, n) Gram matrices (``t^T cov x`` is four entries of
    ``F cov F^T``), questions in blocks of ``BLOCK``. ``offset`` as in :func:`candidate_pair_gains`.
    Returns (Q,)."""
    F = np.asarray(expert_features, dtype=np.float64)  # (n, K)
    G = F @ cov @ F.T  # (n, n)
    d = np.diag(G)  # (n,)
    a = F @ mean + (0.0 if offset is None else np.asarray(offset, dtype=np.float64))  # (n,)
    (qi, qj), (ti, tj) = questions, targets
    m = a[ti] - a[tj]  # (T,)
    v = np.maximum(d[ti] + d[tj] - 2.0 * G[ti, tj], 0.0)  # (T,)
    out = np.zeros(len(qi))
    for start in range(0, len(qi), BLOCK):
        i, j = qi[start:start + BLOCK], qj[start:start + BLOCK]
        C = G[np.ix_(ti, i)] - G[np.ix_(ti, j)] - G[np.ix_(tj, i)] + G[np.ix_(tj, j)]  # (T, b)
        vq = np.maximum(d[i] + d[j] - 2.0 * G[i, j], 0.0)  # (b,)
        p = preference_probability_from(a[i] - a[j], vq)  # (b,)
        out[start:start + BLOCK] = accuracy_after_answer(m, v, C, p, vq)
    return out


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
    p = preference_probability_from(m, v)  # (n, n)
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


def choose_pair(expert_features: np.ndarray, mean: np.ndarray, cov: np.ndarray, answers: int,
                offset: np.ndarray | None = None) -> dict[str, Any]:
    """The pair of n candidates to ask a user about next, under the selection posterior ``mean``, ``cov``,
    for a user who has given ``answers`` answers: the largest :func:`candidate_pair_gains` before
    ``ACCURACY_AFTER`` answers, the largest :func:`candidate_pair_accuracy` over all pairs after (with more
    than ``MAX_PAIRS`` pairs: among the ``MAX_PAIRS`` of largest variance reduction, targets a fixed sample
    of ``MAX_PAIRS`` pairs). Ties go to the first pair in (i, j) order.

    Returns:
        ``{"pair": (i, j), "criterion": "variance_reduction" or "expected_accuracy",
        "variance_reduction", "expected_accuracy" (None before ``ACCURACY_AFTER`` answers)}``.
    """
    F = np.asarray(expert_features, dtype=np.float64)  # (n, K)
    gain, _, _ = candidate_pair_gains(F, mean, cov, offset)  # (n, n)
    i, j = all_pairs(len(F))
    accuracy = None
    if answers < ACCURACY_AFTER:
        b = int(np.argmax(gain[i, j]))
    else:
        P = len(i)
        q = np.arange(P) if P <= MAX_PAIRS else np.sort(np.argsort(-gain[i, j], kind="stable")[:MAX_PAIRS])
        t = (np.arange(P) if P <= MAX_PAIRS
             else np.sort(np.random.default_rng(0).choice(P, MAX_PAIRS, replace=False)))
        acc = candidate_pair_accuracy(F, mean, cov, (i[q], j[q]), (i[t], j[t]), offset)  # (Q,)
        b, accuracy = int(q[np.argmax(acc)]), float(acc.max())
    a, c = int(i[b]), int(j[b])
    return {"pair": (a, c), "criterion": "variance_reduction" if accuracy is None else "expected_accuracy",
            "variance_reduction": float(gain[a, c]), "expected_accuracy": accuracy}
