"""Score tables of rows in batches, one model per worker: the callable classes for Ray Data.

``BatchScorer`` follows the ``Dataset.map_batches`` contract for a callable class: it is built once per
worker (loading the model, and profiles as they are first needed), then called with a batch of columns
(``{"prompt": array, "response": array[, "user_id": array]}``) and returns the batch with new columns.
It imports neither Ray nor pandas, so it also scores plain dicts of numpy arrays or lists::

    import ray
    from moerm_lite.batch import BatchScorer

    ds = ray.data.read_json("replies.jsonl")
    scored = ds.map_batches(BatchScorer, fn_constructor_kwargs={"profiles": "profiles/"},
                            batch_size=256, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                            batch_format="numpy")

with ``workers`` one fewer than Ray's CPUs (docs/scaling.md: a pool holding every core starves the read).

A row whose ``user_id`` is set is scored with that user's profile (``profiles/<user_id>.json``); a row
without one (``None``, ``""``, or NaN, which Ray and pandas put in empty cells) with the population weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .model import BATCH_SIZE, RewardModel
from .personalize import UserProfile


class BatchScorer:
    """Scores batches of rows with one model (and the profiles of their users), loaded once.

    Args:
        model: a model folder (``None``: the installed default model).
        threads: threads per worker (default 1: one worker per core is the usual layout).
        engine: what runs the backbone, ``"onnxruntime"`` or ``"openvino"`` (``RewardModel.load``).
        int8_compute: onnxruntime multiplies the 8-bit weights in int8 (``RewardModel.load``): more
            texts per second on CPUs with VNNI, scores moved slightly.
        profiles: a folder of ``<user_id>.json`` profiles, or a mapping ``user_id -> path``; each is
            loaded on first use and kept.
        breakdown: also return each row's per-expert contributions, an (N, K) column ``contributions``,
            and ``residual`` (N,), the term of a profile's residual over pair features (0 without one).
        score_column: the name of the score column.
        unknown_user: ``"error"`` (default) raises ``KeyError`` for a user_id with no profile;
            ``"population"`` scores such rows with the population weights.
    """

    def __init__(self, model: str | Path | None = None, *, threads: int = 1, precision: str = "int8",
                 profiles: str | Path | Mapping[str, str | Path] | None = None, breakdown: bool = False,
                 score_column: str = "score", unknown_user: str = "error", batch_size: int = BATCH_SIZE,
                 engine: str = "onnxruntime", int8_compute: bool = False) -> None:
        self.model = RewardModel.load(model, threads=threads, precision=precision, engine=engine,
                                      int8_compute=int8_compute)
        self.breakdown, self.score_column = breakdown, score_column
        self.batch_size = batch_size
        self._users = _Users(profiles, unknown_user, self.model.user_terms)  # user_id -> (w, v or None)

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
        terms = [self._users(u) for u in users]  # (w, v or None) per row
        contributions, residual = self.model.score_rows(pairs, terms, batch_size=self.batch_size)
        result = dict(batch)
        result[self.score_column] = contributions.sum(1) + residual  # (N,)
        if self.breakdown:
            result["contributions"] = contributions  # (N, K)
            result["residual"] = residual  # (N,): a profile's residual term, 0 without one
        return result


class CatalogRanker:
    """Ranks one encoded catalog (:class:`moerm_lite.Catalog`) for each row's user: the callable class
    for ``map_batches`` over a table of users, e.g. nightly per-user feeds. No model and no backbone:
    each worker loads the catalog file and the profiles it meets.

    The batch needs a ``user_id`` column (``None`` / ``""`` / NaN: the population weights); the result
    adds ``top_ids`` (N,) of lists of ``top_k`` catalog ids and ``top_scores`` (N, top_k), best first.
    """

    def __init__(self, catalog: str | Path, *, profiles: str | Path | Mapping[str, str | Path] | None = None,
                 top_k: int = 10, unknown_user: str = "error") -> None:
        from .catalog import Catalog

        self.catalog = Catalog.load(catalog)
        self.top_k = min(top_k, len(self.catalog))
        self._users = _Users(profiles, unknown_user, self._checked)  # user_id -> profile (None: population)

    def _checked(self, profile: UserProfile | None) -> UserProfile | None:
        self.catalog.user_terms(profile)  # for this catalog's model, residual and all: refused now, by name
        return profile

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if "user_id" not in batch:
            raise KeyError(f"the batch needs a 'user_id' column; it has {sorted(batch)}")
        ids, scores = [], []
        for u in batch["user_id"]:
            top = self.catalog.rank(self._users(u), top_k=self.top_k)
            ids.append([t["id"] for t in top])
            scores.append([t["score"] for t in top])
        result = dict(batch)
        top_ids = np.empty(len(ids), dtype=object)  # (N,) of lists: Arrow stores them as list<string>
        top_ids[:] = ids
        result["top_ids"] = top_ids
        result["top_scores"] = np.array(scores, dtype=np.float64).reshape(len(ids), self.top_k)  # (N, top_k)
        return result


class _Users:
    """What each user scores with, their profile loaded on first use and kept (one worker's cache).

    ``resolve`` turns a profile (or ``None``) into what the model or catalog at hand scores with, with its
    checks; a row without a user, or (with ``unknown_user="population"``) without a profile, gets
    ``resolve(None)``, the population's.
    """

    def __init__(self, profiles: str | Path | Mapping[str, str | Path] | None, unknown_user: str,
                 resolve: Callable[[UserProfile | None], Any]) -> None:
        if unknown_user not in ("error", "population"):
            raise ValueError(f"unknown_user must be 'error' or 'population', got {unknown_user!r}")
        self.profiles, self.unknown_user, self.resolve = profiles, unknown_user, resolve
        self._cache: dict[str, Any] = {}  # user_id -> resolved profile, None: no profile

    def __call__(self, user_id: Any) -> Any:
        if _no_user(user_id):
            return self.resolve(None)
        uid = str(user_id)
        if uid not in self._cache:
            path = _profile_path(self.profiles, uid)
            self._cache[uid] = self.resolve(UserProfile.load(path)) if path is not None and path.is_file() else None
        w = self._cache[uid]
        if w is None:
            if self.unknown_user == "error":
                raise KeyError(f"no profile for user_id {uid!r} (profiles: {self.profiles})")
            return self.resolve(None)
        return w


def _no_user(user_id: Any) -> bool:
    """A row without a user: ``None``, ``""``, or the NaN that Ray and pandas put in an empty cell."""
    if user_id is None or (isinstance(user_id, str) and not user_id):
        return True
    return isinstance(user_id, (float, np.floating)) and bool(np.isnan(user_id))


def _profile_path(profiles: str | Path | Mapping[str, str | Path] | None, user_id: str) -> Path | None:
    """Where ``user_id``'s profile would be: a mapping's entry, or ``<folder>/<user_id>.json``."""
    if isinstance(profiles, Mapping):
        return Path(profiles[user_id]) if user_id in profiles else None
    return None if profiles is None else Path(profiles) / f"{user_id}.json"
