"""The request gate: a few routed experts switched off where the request is benign.

The experts that red-team conversations route to learn that a bare "No." is the better reply to a harmful
request; the head sees the request only through its product with the reply and the cosine, so they also
prefer "No." to the answer of a benign everyday request ("What should I cook for dinner tonight?"). The gate
reads the request itself: a logistic regression over the request's unit embedding and a bias,

    on = (no request)  or  ([p / |p|, 1] @ weights > 0)                                 (N,) bool

and where it is off the gates of its ``experts`` are 0, so they add nothing to the score, to a user's
expert features or to an explanation (``RewardModel.expert_outputs``). Everything else is as the head
graph returns it. A folder without ``request_gate`` in its config has no gate. The build fits it after
training (``moerm_build.train.request_gate``); docs/decisions/bad-replies.md measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def gate_inputs(prompt_embeddings: np.ndarray) -> np.ndarray:
    """The gate's inputs (N, H + 1) for prompt embeddings (N, H): the unit embedding (0 for a zero one) and a
    bias column; the build fits the gate's weights on these (``moerm_build.train.request_gate``)."""
    P = np.asarray(prompt_embeddings, dtype=np.float64)  # (N, H)
    norm = np.linalg.norm(P, axis=1, keepdims=True)  # (N, 1)
    unit = np.divide(P, norm, out=np.zeros_like(P), where=norm > 0)  # (N, H)
    return np.hstack([unit, np.ones((len(P), 1))])  # (N, H + 1)


@dataclass(frozen=True)
class RequestGate:
    """Which experts the gate switches (indices into the model's K) and its logistic weights (H + 1,)."""

    experts: tuple[int, ...]
    weights: tuple[float, ...]  # over [unit prompt embedding (H), 1]

    @classmethod
    def from_dict(cls, d: Any, n_experts: int, hidden_size: int) -> RequestGate:
        """The gate of config.json's ``request_gate`` object; a ValueError says what is wrong with it."""
        if not isinstance(d, dict) or not {"experts", "weights"} <= set(d):
            raise ValueError(f"request_gate must be an object with 'experts' and 'weights', got {d!r:.80}")
        experts = tuple(int(k) for k in d["experts"])
        weights = tuple(float(x) for x in d["weights"])
        if not experts or len(set(experts)) != len(experts) or not all(0 <= k < n_experts for k in experts):
            raise ValueError(f"request_gate.experts must be distinct expert indices in [0, {n_experts}), "
                             f"got {list(experts)}")
        if len(weights) != hidden_size + 1 or not np.isfinite(weights).all():
            raise ValueError(f"request_gate.weights must be {hidden_size + 1} finite numbers (hidden_size "
                             f"+ 1), got {len(weights)}")
        return cls(experts, weights)

    def to_dict(self) -> dict[str, Any]:
        return {"experts": list(self.experts), "weights": list(self.weights)}

    def on(self, prompt_embeddings: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """(N,) bool: where the gate lets its experts score, for the prompts' backbone embeddings (N, H)."""
        has = np.array([bool(p.strip()) for p in prompts], dtype=bool)  # (N,)
        return ~has | (gate_inputs(prompt_embeddings) @ np.asarray(self.weights) > 0)  # (N,)

    def apply(self, expert_index: np.ndarray, gates: np.ndarray, on: np.ndarray) -> np.ndarray:
        """``gates`` (N, W) of the experts ``expert_index`` (N, W) names, with the gate's experts at 0 in the
        rows where ``on`` (N,) is False (a copy). Dense gates (N, K): ``apply_dense``."""
        off = np.isin(expert_index, self.experts) & ~np.asarray(on, dtype=bool)[:, None]  # (N, W)
        return np.where(off, np.zeros((), gates.dtype), gates)  # (N, W)

    def apply_dense(self, gates: np.ndarray, on: np.ndarray) -> np.ndarray:
        """``apply`` to dense gates (N, K), column k being expert k's (a torch head's ``gating_output``)."""
        return self.apply(np.broadcast_to(np.arange(gates.shape[1]), gates.shape), gates, on)  # (N, K)
