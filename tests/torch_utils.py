"""Test helpers that need torch: reference scores of a trained run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from moerm_build.model import Backbone


def torch_run_scores(parts: Any, pairs: list[tuple[str, str]], w: Optional[np.ndarray] = None) -> np.ndarray:
    """Reference fp32 scores from the torch model (backbone + head) for parity checks."""
    from moerm_build.train.embed import embed_texts, features_of, text_tokenizer

    ckpt, head = parts
    backbone = Backbone(ckpt["backbone_path"])
    with tempfile.TemporaryDirectory() as tmp:
        tok = text_tokenizer(ckpt["backbone_path"], ckpt["config"]["max_length"], Path(tmp))
        x = torch.from_numpy(features_of(lambda t, role: embed_texts(backbone, tok, t, role), pairs))  # (N, F)
    weights = head.w0 if w is None else torch.as_tensor(w, dtype=torch.float32)
    with torch.no_grad():
        return head.score(x, weights).double().numpy()
