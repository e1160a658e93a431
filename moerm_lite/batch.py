"""Score tables of rows in batches, one model per worker: the callable class for Ray Data.

``BatchScorer`` follows the ``Dataset.map_batches`` contract for a callable class: it is built once per
worker (loading the model, and profiles as they are first needed), then called with a batch of columns
(``{"prompt": array, "response": array[, "user_id": array]}``) and returns the batch with new columns.
It imports neither Ray nor pandas, so it also scores plain dicts of numpy arrays or lists::

    import ray
    from moerm_lite.batch import BatchScorer

    ds = ray.data.read_json("replies.jsonl")
    scored = ds.map_batches(BatchScorer, fn_constructor_kwargs={"profiles": "profiles/"},
                            batch_size=256, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                            batch_format="numpy")

A row whose ``user_id`` is set is scored with that user's profile (``profiles/<user_id>.json``); a row
without one (or with ``None`` or ``""``) with the population weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .head import expert_features
from .model import BATCH_SIZE, RewardModel
from .personalize import UserProfile


class BatchScorer:
    """Scores batches of rows with one model (and the profiles of their users), loaded once.

    Args:
        model: a model folder (``None``: the installed default model).
        threads: onnxruntime threads per worker (default 1: one worker per core is the usual layout).
        profiles: a folder of ``<user_id>.json`` profiles, or a mapping ``user_id -> path``; each is
            loaded on first use and kept.
        breakdown: also return each row's per-expert contributions, an (N, K) column ``contributions``.
        score_column: the name of the score column.
        unknown_user: ``"error"`` (default) raises ``KeyError`` for a user_id with no profile;
            ``"population"`` scores such rows with the population weights.
    """

    def __init__(self, model: str | Path | None = None, *, threads: int = 1, precision: str = "int8",
                 profiles: str | Path | Mapping[str, str | Path] | None = None, breakdown: bool = False,
                 score_column: str = "score", unknown_user: str = "error", batch_size: int = BATCH_SIZE) -> None:
        if unknown_user not in ("error", "population"):
            raise ValueError(f"unknown_user must be 'error' or 'population', got {unknown_user!r}")
        self.model = RewardModel.load(model, threads=threads, precision=precision)
        self.profiles = profiles
        self.breakdown, self.score_column = breakdown, score_column
        self.unknown_user, self.batch_size = unknown_user, batch_size
        self._weights: dict[str, np.ndarray | None] = {}  # user_id -> (K,) weights, None: no profile

    def _user_weights(self, user_id: str) -> np.ndarray:
        if user_id not in self._weights:
            path: Path | None = None
            if isinstance(self.profiles, Mapping):
                path = Path(self.profiles[user_id]) if user_id in self.profiles else None
            elif self.profiles is not None:
                path = Path(self.profiles) / f"{user_id}.json"
            if path is not None and path.is_file():
                self._weights[user_id] = self.model.user_weights(UserProfile.load(path))
            else:
                self._weights[user_id] = None
        w = self._weights[user_id]
        if w is None:
            if self.unknown_user == "error":
                raise KeyError(f"no profile for user_id {user_id!r} (profiles: {self.profiles})")
            return self.model.w0
        return w

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``batch`` with ``score_column`` (N,) float64 (and ``contributions`` (N, K)) added."""
        if "response" not in batch:
            raise KeyError(f"the batch needs a 'response' column; it has {sorted(batch)}")
        responses = [str(r) if r is not None else "" for r in batch["response"]]
        n = len(responses)
        prompts = batch["prompt"] if "prompt" in batch else [""] * n
        pairs = [(p if isinstance(p, (str, list, tuple)) else ("" if p is None else str(p)), r)
                 for p, r in zip(prompts, responses)]
        users = batch["user_id"] if "user_id" in batch else [None] * n
        W = np.stack([self.model.w0 if u is None or u == "" else self._user_weights(str(u))
                      for u in users]).reshape(n, self.model.n_experts)  # (N, K)
        out = self.model.expert_outputs(pairs, batch_size=self.batch_size)
        x = expert_features(out["gating_output"], out["rewards"])  # (N, K)
        result = dict(batch)
        result[self.score_column] = (x * W).sum(1)  # (N,)
        if self.breakdown:
            result["contributions"] = x * W  # (N, K)
        return result
