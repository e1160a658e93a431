"""Does a fine-tuned encoder still hold what the persona users need? Persona statements under each encoder.

    python experiments/encoder_persona_probe.py runs/enc-nr/all-MiniLM-L6-v2-quality [more encoder folders]

Feeds docs/decisions/bad-replies.md. A build on a fine-tuned encoder can lose persona accuracy (the model
card's persona table); is that the encoder losing the statements' meaning, or the head trained on it? For the
frozen all-MiniLM-L6-v2 and each local encoder folder given, over the 16 benchmark axes' persona statements
(``moerm_build.data.load_persona``):

- drift: the mean 1 - cos between a statement's embedding and the frozen encoder's, and the same for the
  HH-RLHF helpful test split's chosen answers (answers like those the fine-tune's drift penalty saw);
- a logistic probe per axis of the statement's sign (a person of that persona would say it, or would not),
  fitted on the ``train`` statements and scored on the ``test`` ones (the persona benchmark's split): mean and
  worst axis;
- the 32 classes (axis, sign) on the same split: one such probe per class, the class of the highest logit.

The probes are the build's own L2 logistic fit (``moerm_build.evaluate.metrics.logistic_fit``, L2
``PROBE_L2``) on the unit embedding and a bias column.

Embeddings at the builds' token budget, shared with their cache in ``.cache/embeddings`` (``EmbeddingCache``):
seconds after a build on the encoder, about 2 minutes per encoder on 2 CPU cores without one. Needs
../shared/data and the export extra.
"""

from __future__ import annotations

import sys

import numpy as np

from moerm_build import data
from moerm_build.evaluate.metrics import logistic_fit
from moerm_build.train.embed import EmbeddingCache, default_backbone_path
from moerm_build.train.train import TrainConfig

PROBE_L2 = 0.5


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def with_bias(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])  # (N, H + 1)


def sign_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Held-out accuracy of a probe of the sign ``y`` (+1 / -1), fitted on the rows ``train``, scored on
    ``test``."""
    X = with_bias(x)
    w = logistic_fit(X[train], y[train].astype(np.float64), PROBE_L2)  # (H + 1,)
    return float(np.mean(np.where(X[test] @ w > 0, 1, -1) == y[test]))


def class_accuracy(x: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Held-out accuracy of one probe per class (that class against the rest, fitted on the rows ``train``),
    the class of the highest logit, scored on ``test``."""
    X, classes = with_bias(x), np.unique(labels[train])  # (N, H + 1), (C,)
    W = np.stack([logistic_fit(X[train], np.where(labels[train] == c, 1.0, -1.0), PROBE_L2)
                  for c in classes], axis=1)  # (H + 1, C)
    return float(np.mean(classes[(X[test] @ W).argmax(1)] == labels[test]))


def main(argv: list[str]) -> None:
    st = data.load_persona()
    train, test = data.statement_split(st, "train"), data.statement_split(st, "test")
    answers = [r["chosen"] for r in data.load_hh_helpful(split="test")]
    folders = {"frozen": str(default_backbone_path()), **{path: path for path in argv}}
    caches = {name: EmbeddingCache(path, TrainConfig().max_length) for name, path in folders.items()}
    emb = {name: (unit(c.get(st.text)), unit(c.get(answers))) for name, c in caches.items()}  # (S, H), (A, H)
    ref_st, ref_ans = emb["frozen"]
    print(f"{len(st.text)} persona statements ({len(train)} train, {len(test)} test), "
          f"{len(answers)} HH answers")
    print(f"{'encoder':48s} {'drift: statements':>18s} {'answers':>8s} {'sign, mean':>11s} {'worst':>6s} "
          f"{'32-way':>7s}")
    for name, (x, a) in emb.items():
        signs = [sign_accuracy(x, st.y, train[st.axis[train] == k], test[st.axis[test] == k])
                 for k in range(len(st.axes))]
        joint = class_accuracy(x, st.axis * 2 + (st.y > 0), train, test)
        drift_st = float(np.mean(1 - np.sum(x * ref_st, axis=1)))
        drift_ans = float(np.mean(1 - np.sum(a * ref_ans, axis=1)))
        print(f"{name[-48:]:48s} {drift_st:18.4f} {drift_ans:8.4f} {100 * np.mean(signs):11.1f} "
              f"{100 * np.min(signs):6.1f} {100 * joint:7.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
