"""The scoring formula of the sparse MoE reward model, in numpy.

For a (prompt, response) the head graph returns the indices of its ``top_k``
routed experts, their gates (softmax over the selected router logits) and
their rewards. The runtime scatters those into dense ``(K,)`` vectors and
combines them with a user's signed weights ``w``::

    s = sum_k  pi_k * w_k * r_k

``pi`` is zero for unselected experts, so only routed experts contribute.
The score is a raw logit: higher is better, and ``sigmoid(s_a - s_b)`` is the
Bradley-Terry probability that the user prefers ``a`` over ``b``.
"""

from __future__ import annotations

import numpy as np


def scatter_topk(
    expert_index: np.ndarray, gates: np.ndarray, rewards: np.ndarray, n_experts: int
) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``(gating_output, rewards)`` of shape (B, K) from the head's sparse outputs.

    Args:
        expert_index: (B, k) int indices of the routed experts.
        gates: (B, k) gate of each routed expert.
        rewards: (B, k) reward of each routed expert.
        n_experts: K.
    """
    B = expert_index.shape[0]
    rows = np.arange(B)[:, None]  # (B, 1)
    dense_gates = np.zeros((B, n_experts), dtype=np.float32)  # (B, K)
    dense_rewards = np.zeros((B, n_experts), dtype=np.float32)  # (B, K)
    dense_gates[rows, expert_index] = gates
    dense_rewards[rows, expert_index] = rewards
    return dense_gates, dense_rewards


def expert_features(gating_output: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """The expert features ``pi * r``, (B, K): a score is linear in the user weights, ``s = (pi * r) @ w``.
    (A comparison's features, ``phi`` elsewhere, are the chosen row minus the rejected one.)"""
    return (gating_output.astype(np.float64) * rewards.astype(np.float64))  # (B, K)


def combine(gating_output: np.ndarray, rewards: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Scores ``s = sum_k pi_k * w_k * r_k`` of shape (B,), float64."""
    return expert_features(gating_output, rewards) @ np.asarray(weights, dtype=np.float64)  # (B,)


def user_scores(outputs: dict[str, np.ndarray], weights: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
    """Scores (B,) of expert outputs (``"gating_output"``, ``"rewards"`` (B, K) and, with a residual,
    ``"features"`` (B, F)) under weights (K,) and a residual over pair features (F,) or None."""
    s = combine(outputs["gating_output"], outputs["rewards"], weights)  # (B,)
    return s if residual is None else s + outputs["features"].astype(np.float64) @ residual  # (B,)


def row_terms(gating_output: np.ndarray, rewards: np.ndarray, features: np.ndarray | None,
              terms: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Each row scored for its own user: ``terms[i] = (w, v)``, weights (K,) and a residual over pair
    features (F,) or None. Returns contributions ``pi * r * w`` (B, K) and residual terms ``x . v`` (B,)
    (0 where ``v`` is None; ``features`` (B, F) is needed only where it is not); a row's score is
    ``contributions.sum() + residual``."""
    W = (np.stack([w for w, _ in terms]) if terms else np.zeros((0, gating_output.shape[1])))  # (B, K)
    residual = np.zeros(len(terms))  # (B,)
    for i, (_, v) in enumerate(terms):
        if v is not None:
            if features is None:
                raise ValueError(f"row {i}'s user has a residual over pair features; pass the rows' features")
            residual[i] = float(features[i].astype(np.float64) @ v)
    return expert_features(gating_output, rewards) * W, residual  # (B, K), (B,)
