"""Would statistics of a reply's sentences, each embedded alone, help a read-out catch replies it never saw?

    python -m experiments.sentence_features_probe    # ~20 minutes on 2 CPU cores the first time (then cached)

The family-out probe of ``moerm_build.evaluate.robustness.family_table`` (a logistic probe on the frozen pair
features, fitted on the licensed training mixture plus every degradation family but the one scored), on the
pair features alone and with sentence statistics appended. Each sentence of a reply (``degrade.sentences``) is
embedded by the same frozen backbone; with unit sentence embeddings s_i, the prompt's p and their mean m:

- ``duplicate``: the largest cosine between two of the reply's sentences (a looped sentence: 1);
- ``distinct``: log(1 + sentences with no earlier one at cosine >= 0.9), a count repetition cannot raise;
- ``relevance min / max / mean``: the least, most and word-weighted mean cosine of a sentence to the prompt
  (filler, another language, an appended request);
- ``outlier``: the least cosine of a sentence to the reply's mean direction (a sentence that does not belong);
- ``adjacent``: the mean cosine of consecutive sentences (order).

A mean-pooled embedding of the whole reply sees none of these directly: padding, repetition and an echo each
move it little. Scored on the held-out answers and phrasings the card's family table uses, plus the everyday
set with a probe fitted on every family. A measurement for docs/decisions/bad-replies.md: no shipped model
computes these. Needs ../shared/data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from moerm_build.data.degrade import sentences
from moerm_build.evaluate.robustness import family_out_columns
from moerm_build.train.embed import EmbeddingCache, default_backbone_path

NAMES = ("duplicate", "distinct", "relevance min", "relevance max", "relevance mean", "outlier", "adjacent")
CANDIDATES = {"duplicate+distinct": [0, 1], "relevance": [2, 3, 4], "outlier+adjacent": [5, 6],
              "all seven": list(range(7))}
DUPLICATE = 0.9  # cosine at which a sentence counts as a repeat of an earlier one


def unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)  # (..., 1)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def sentence_statistics(p: np.ndarray, S: np.ndarray, words: np.ndarray) -> list[float]:
    """The seven statistics of one reply from its prompt's unit embedding p (H,) (zeros: no prompt), its
    sentences' unit embeddings S (m, H) and their word counts (m,)."""
    m = len(S)
    if m == 0:
        return [0.0] * 7
    G = S @ S.T  # (m, m)
    off = G[~np.eye(m, dtype=bool)]
    earlier = [i for i in range(m) if i == 0 or G[i, :i].max() < DUPLICATE]
    rel = S @ p  # (m,)
    w = words / max(words.sum(), 1)  # (m,)
    centre = unit(S.mean(0))  # (H,)
    adjacent = float(np.mean([G[i, i + 1] for i in range(m - 1)])) if m > 1 else 1.0
    return [float(off.max()) if m > 1 else 0.0, float(np.log1p(len(earlier))), float(rel.min()),
            float(rel.max()), float(rel @ w), float((S @ centre).min()), adjacent]


def differences(cache: EmbeddingCache, recs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Chosen-minus-rejected pair features (N, F) and sentence statistics (N, 7)."""
    pairs = sorted({(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")})
    pos = {p: i for i, p in enumerate(pairs)}
    X = cache.features(pairs).astype(np.float64)  # (P, F)
    split = [sentences(r) or [r] for _, r in pairs]
    flat = [s for ss in split for s in ss]
    E = unit(cache.get(flat, "response").astype(np.float64))  # (total sentences, H)
    P = unit(cache.get([p if p.strip() else " " for p, _ in pairs], "prompt").astype(np.float64))  # (P, H)
    P *= np.array([bool(p.strip()) for p, _ in pairs], dtype=np.float64)[:, None]
    stats, start = [], 0
    for (p, _), ss, prow in zip(pairs, split, P):
        words = np.array([len(s.split()) for s in ss], dtype=np.float64)
        stats.append(sentence_statistics(prow, E[start:start + len(ss)], words))
        start += len(ss)
    S = np.array(stats)  # (P, 7)
    c = np.array([pos[(r["prompt"], r["chosen"])] for r in recs])
    j = np.array([pos[(r["prompt"], r["rejected"])] for r in recs])
    return X[c] - X[j], S[c] - S[j]


def main() -> None:
    backbone = Path(sys.argv[1]) if len(sys.argv) > 1 else default_backbone_path()
    cache = EmbeddingCache(backbone, 256, layout="prompt_response_v1")
    print(family_out_columns(lambda recs: differences(cache, recs), CANDIDATES, width=20))


if __name__ == "__main__":
    main()
