"""Encoded catalogs: rank a fixed set of candidates for any user without running the backbone.

A user changes only the weights ``w``; a candidate's gates ``pi`` and expert rewards ``r`` do not
depend on the user. A :class:`Catalog` holds them for N (prompt, response) candidates, as the head
emitted them (``expert_index``, ``gates``, ``rewards``: (N, k + n_shared) each), with the model's hash
and population weights ``w0``. Ranking is then one (N, K) @ (K,) product: the same arithmetic as
``RewardModel.rank`` on the same texts, so the scores are the same.

A profile with a residual over pair features (``fit_user``'s default) also needs each candidate's pair
features x (F,): a catalog encoded ``with_features=True`` (the default) keeps them (float32, about 3 KB a
candidate) and adds ``x . v`` as ``rank()`` does; one encoded without them refuses such a profile.

On disk a catalog is one ``.npz`` file (numpy arrays, read with ``allow_pickle=False``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from .deprecated import renamed
from .files import atomic_write_text
from .head import expert_features, scatter_topk
from .personalize import UserProfile, resolve_weights

CATALOG_FORMAT = "moerm-lite-catalog"
CATALOG_VERSION = 2  # 2: optional pair features
READABLE_CATALOG_VERSIONS = (1, 2)
RESIDUAL_ROWS = 4096  # candidates per block when adding a residual term (a 25 MB float64 block at F = 781)
Weights = Union[None, UserProfile, Sequence[float], np.ndarray]


class Catalog:
    """N encoded candidates of one model: rank them for any user in milliseconds.

    Build one with :meth:`moerm_lite.RewardModel.encode_catalog`; :meth:`save` / :meth:`load` it.
    """

    def __init__(self, ids: Sequence[str], expert_index: np.ndarray, gates: np.ndarray, rewards: np.ndarray, *,
                 n_experts: int, w0: np.ndarray, model_id: str, model_hash: str,
                 pair_features: np.ndarray | None = None) -> None:
        self.ids = [str(i) for i in ids]
        self.expert_index = np.asarray(expert_index, dtype=np.int16)  # (N, k + n_shared)
        self.gates = np.asarray(gates, dtype=np.float32)  # (N, k + n_shared)
        self.rewards = np.asarray(rewards, dtype=np.float32)  # (N, k + n_shared)
        self.n_experts, self.model_id, self.model_hash = int(n_experts), str(model_id), str(model_hash)
        self.w0 = np.asarray(w0, dtype=np.float64)  # (K,)
        N = len(self.ids)
        if not (self.expert_index.shape == self.gates.shape == self.rewards.shape and len(self.gates) == N
                and self.expert_index.ndim == 2 and self.w0.shape == (self.n_experts,)):
            raise ValueError(f"catalog arrays disagree: {N} ids, expert_index {self.expert_index.shape}, gates "
                             f"{self.gates.shape}, rewards {self.rewards.shape}, w0 {self.w0.shape}")
        if N and not (0 <= self.expert_index.min() and self.expert_index.max() < self.n_experts):
            raise ValueError(f"catalog expert_index outside 0..{self.n_experts - 1}")
        if not (np.isfinite(self.gates).all() and np.isfinite(self.rewards).all() and np.isfinite(self.w0).all()):
            raise ValueError("catalog contains NaN or inf")
        self.pair_features = None if pair_features is None else np.asarray(pair_features, dtype=np.float32)
        if self.pair_features is not None and (self.pair_features.ndim != 2 or len(self.pair_features) != N
                                               or not np.isfinite(self.pair_features).all()):
            raise ValueError(f"catalog pair_features must be ({N}, F) finite values, "
                             f"got {self.pair_features.shape}")
        gating, rewards_dense = scatter_topk(self.expert_index, self.gates, self.rewards, self.n_experts)
        self.expert_features = expert_features(gating, rewards_dense)  # (N, K): pi * r, what scores are made of

    features = renamed("features", "expert_features", "the pair features are ``pair_features``")

    def __len__(self) -> int:
        return len(self.ids)

    def weights(self, user: Weights = None) -> np.ndarray:
        """(K,) weights for ``user``: ``w0`` for ``None``, a profile of this catalog's model, or a vector."""
        return resolve_weights(user, self.w0, self.model_id, self.model_hash)

    def user_terms(self, user: Weights = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(w, v)`` for ``user``: weights (K,) and a profile's residual (F,) or None, checked against this
        catalog (a residual needs a catalog encoded with pair features)."""
        w = resolve_weights(user, self.w0, self.model_id, self.model_hash, allow_residual=True)  # (K,)
        if not isinstance(user, UserProfile) or user.residual_ is None:
            return w, None
        v = user.residual_  # (F,)
        if self.pair_features is None:
            raise ValueError(f"user profile {user.user_id!r} has a residual over pair features, and this "
                             "catalog was encoded without them (with_features=False, moerm-lite encode "
                             "--no-features): encode it again with them, the default")
        if self.pair_features.shape[1] != len(v):
            raise ValueError(f"user profile {user.user_id!r} has a residual over {len(v)} features, the "
                             f"catalog stores {self.pair_features.shape[1]}")
        return w, v

    def scores(self, user: Weights = None) -> np.ndarray:
        """Scores of every candidate for ``user``, (N,) float64, in catalog order."""
        w, v = self.user_terms(user)
        s = self.expert_features @ w  # (N,)
        if v is None or self.pair_features is None:
            return s
        for i in range(0, len(s), RESIDUAL_ROWS):  # float64 like rank(), a block at a time: no (N, F) copy
            s[i:i + RESIDUAL_ROWS] += self.pair_features[i:i + RESIDUAL_ROWS].astype(np.float64) @ v
        return s

    def rank(self, user: Weights = None, *, top_k: int | None = None) -> list[dict[str, Any]]:
        """Candidates best first for ``user``: ``[{"corpus_id", "id", "score"}, ...]``; ties keep catalog
        order, exactly as ``RewardModel.rank`` orders them."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        s = self.scores(user)  # (N,)
        if top_k is None or top_k >= len(s):
            order = np.argsort(-s, kind="stable")
        else:
            kth = s[np.argpartition(-s, top_k - 1)[top_k - 1]]  # the top_k-th best score
            near = np.flatnonzero(s >= kth)  # every candidate that can be in the top_k, ties included
            order = near[np.argsort(-s[near], kind="stable")][:top_k]
        return [{"corpus_id": int(i), "id": self.ids[i], "score": float(s[i])} for i in order]

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the catalog as one ``.npz`` file, atomically."""
        path = Path(path)
        meta = {"format": CATALOG_FORMAT, "version": CATALOG_VERSION, "model_id": self.model_id,
                "model_hash": self.model_hash, "n_experts": self.n_experts, "w0": self.w0.tolist()}
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta)), "ids": np.array(self.ids, dtype=str),
                                         "expert_index": self.expert_index, "gates": self.gates,
                                         "rewards": self.rewards}
        if self.pair_features is not None:
            arrays["pair_features"] = self.pair_features
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds too narrowly
        atomic_write_text(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        """Read a catalog written by :meth:`save` (no pickle)."""
        import zipfile  # here, not at module level: it and its compressors cost ~5 ms of `import moerm_lite`

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no catalog at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if not isinstance(meta, dict) or meta.get("format") != CATALOG_FORMAT:
                    raise ValueError("not a moerm-lite catalog")
                if meta.get("version") not in READABLE_CATALOG_VERSIONS:
                    raise ValueError(f"catalog version {meta.get('version')!r}, this moerm-lite reads "
                                     f"{READABLE_CATALOG_VERSIONS}")
                return cls(z["ids"].tolist(), z["expert_index"], z["gates"], z["rewards"],
                           n_experts=meta["n_experts"], w0=np.asarray(meta["w0"]), model_id=meta["model_id"],
                           model_hash=meta["model_hash"],
                           pair_features=z["pair_features"] if "pair_features" in z.files else None)
        except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a readable catalog: {str(e)[:200]}") from None

    def __repr__(self) -> str:
        return f"Catalog({len(self)} candidates, model_id={self.model_id!r})"
