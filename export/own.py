"""Your own preferences in one command: a TRL-style JSONL -> a working model folder.

    python -m export own prefs.jsonl -o moerm-models/mine

Frozen backbone with cached embeddings, so it runs on a CPU. Comparisons are split by prompt: a
``test_fraction`` is held out and the folder's accuracy on it is reported (population weights, and per
``user_id`` when the file has them).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from . import data

log = logging.getLogger("export")


def train_own(jsonl: Path, out: Path, *, backbone: str = "", test_fraction: float = 0.1,
              **overrides: Any) -> dict[str, Any]:
    """Train on ``jsonl`` (minus a held-out split), export an int8 folder to ``out``; return the accuracies."""
    from .evaluate import RuntimeFeaturizer, records_phi, pair_accuracy
    from .onnx_export import export_model
    from .train import TrainConfig, train

    recs = data.load_jsonl(jsonl)
    test = [r for r in recs if data.in_split(r["prompt"] + "|own", "test", test_fraction)]
    train_recs = [r for r in recs if not data.in_split(r["prompt"] + "|own", "test", test_fraction)]
    if not train_recs or not test:
        raise ValueError(f"{jsonl}: need comparisons on several distinct prompts to hold some out "
                         f"({len(recs)} comparisons, {len({r['prompt'] for r in recs})} prompts)")
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
    # a small default for small files: fewer experts, more passes
    defaults = {"n_experts": 8, "n_shared": 2, "epochs": max(8, min(200, 20_000 // max(len(train_recs), 1))),
                "batch_size": min(512, max(16, len(train_recs) // 4))}
    cfg = TrainConfig(**{**defaults, **overrides, "backbone": backbone, "sources": [], "jsonl": [str(jsonl)]})
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, tmp, records=train_recs)
        folder = export_model(tmp, out, model_id=Path(out).name)
    fz = RuntimeFeaturizer(folder)
    phi = records_phi(fz, test)  # (N, K)
    res: dict[str, Any] = {"folder": str(folder), "train_comparisons": len(train_recs),
                           "test_comparisons": len(test), "heldout_accuracy": pair_accuracy(phi @ fz.w0)}
    users = sorted({r["user_id"] for r in test if r.get("user_id")})
    if users:
        trained = {r.get("user_id") for r in train_recs}
        res["heldout_accuracy_by_user_population_weights"] = {
            u: pair_accuracy(phi[np.array([r.get("user_id") == u for r in test])] @ fz.w0)
            for u in users if u in trained}
    log.info("held-out accuracy %.3f on %d comparisons", res["heldout_accuracy"], len(test))
    return res
