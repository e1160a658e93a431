"""Would text statistics that see repetition and copying help a read-out catch bad replies it never saw?

    python experiments/extra_features_probe.py          # ~10 minutes on 2 CPU cores (frozen embeddings cached)
    python experiments/extra_features_probe.py runs/enc/all-MiniLM-L6-v2-quality   # any local encoder folder

Feeds docs/decisions/bad-replies.md and docs/decisions/features.md ("Word-trigram statistics").

The family-out probe of ``moerm_build.evaluate.robustness.family_table`` (a logistic probe on the frozen pair features,
fitted on the licensed training mixture plus every degradation family but the one scored), on the pair
features alone and with candidate statistics appended, each computed from the texts:

- ``repeated``: the share of the reply's word trigrams that occur in it more than once (repetition, padding);
- ``copied``: the share of its word trigrams that also occur in the prompt (echo);
- ``new_words``: log(1 + distinct reply words not in the prompt);
- the first two as counts, which padding cannot dilute: log(1 + trigrams that repeat an earlier one) and
  log(1 + trigrams also in the prompt) (``prompt_response_v2`` ships the shares and loses padding: see
  docs/decisions/features.md).

Scored on the held-out answers and phrasings the card's family table uses (fp32 features of the frozen
MiniLM, or of the local encoder folder given as the argument, e.g. a fine-tuned one: does it read families
it never trained on better? docs/decisions/bad-replies.md; not a model folder), plus the
everyday set with a probe fitted on every family. Not in any shipped model: ``moerm_lite.features`` would need a new layout and every model a rebuild. Needs ../shared/data.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moerm_build.data.degrade import FAMILIES
from moerm_build.evaluate.metrics import logistic_fit, pair_accuracy
from moerm_build.evaluate.robustness import PROBE_L2, everyday_records, families, family_out_records
from moerm_build.train.embed import EmbeddingCache, default_backbone_path

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
CANDIDATES = {"repeated": [0], "copied": [1], "new_words": [2], "all three": [0, 1, 2], "repeated n": [3],
              "copied n": [4], "both counts": [3, 4]}


def trigrams(words: list[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + 3]) for i in range(len(words) - 2)]


def statistics(prompt: str, reply: str) -> list[float]:
    """``repeated``, ``copied``, ``new_words``, ``repeated n``, ``copied n`` of one (prompt, reply)."""
    words, prompt_words = WORD.findall(reply.lower()), WORD.findall(prompt.lower())
    tri, prompt_tri = trigrams(words), set(trigrams(prompt_words))
    n_repeated, n_copied = len(tri) - len(set(tri)), sum(t in prompt_tri for t in tri)
    repeated = n_repeated / len(tri) if tri else 0.0
    copied = n_copied / len(tri) if tri else 0.0
    return [repeated, copied, float(np.log1p(len(set(words) - set(prompt_words)))),
            float(np.log1p(n_repeated)), float(np.log1p(n_copied))]


def differences(cache: EmbeddingCache, recs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Chosen-minus-rejected pair features (N, F) and statistics (N, 5)."""
    pairs = sorted({(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")})
    pos = {p: i for i, p in enumerate(pairs)}
    X = cache.features(pairs).astype(np.float64)  # (P, F)
    S = np.array([statistics(p, r) for p, r in pairs])  # (P, 5)
    c = np.array([pos[(r["prompt"], r["chosen"])] for r in recs])
    j = np.array([pos[(r["prompt"], r["rejected"])] for r in recs])
    return X[c] - X[j], S[c] - S[j]


Parts = dict[str, tuple[np.ndarray, np.ndarray]]  # real / train / test / everyday: (pair, extra) differences


def probe_table(differences: Callable[[list[dict]], tuple[np.ndarray, np.ndarray]],
                candidates: dict[str, list[int]], width: int = 15) -> None:
    """Print the family-out probe's accuracy per family (and on the everyday set, probe on every family)
    with the pair features alone and with each candidate's columns of the extra statistics appended;
    ``differences(records)`` gives the chosen-minus-rejected pair features and extra statistics."""
    real, train_deg, test_deg = family_out_records()
    named = (("real", real), ("train", train_deg), ("test", test_deg), ("everyday", everyday_records()))
    parts: Parts = {name: differences(recs) for name, recs in named}
    fam_tr, fam_te = families(train_deg), families(test_deg)
    print("family-out probe accuracy (%) on held-out answers; "
          "the last row: everyday pairs, probe on every family")
    cols: dict[str, list[int]] = {"pair features": [], **candidates}
    print(f"{'family':18}" + "".join(f"{c:>{width}}" for c in cols))
    table: dict[str, list[float]] = {}
    for sel in cols.values():
        def with_stats(name: str) -> np.ndarray:
            X, S = parts[name]
            return np.hstack([X, S[:, sel]])

        R, T, E, V = with_stats("real"), with_stats("train"), with_stats("test"), with_stats("everyday")
        scale = np.sqrt((np.vstack([R, T]) ** 2).mean(0)) + 1e-6  # (F',)

        def probe(keep: np.ndarray) -> np.ndarray:
            Z = np.vstack([R, T[keep]]) / scale
            return logistic_fit(Z, np.ones(len(Z)), PROBE_L2) / scale

        for f in FAMILIES:
            te = fam_te == f
            if te.any():
                table.setdefault(f, []).append(100 * pair_accuracy(E[te] @ probe(fam_tr != f)))
        table.setdefault("everyday", []).append(100 * pair_accuracy(V @ probe(np.ones(len(fam_tr), bool))))
    for f, row in table.items():
        print(f"{f:18}" + "".join(f"{v:{width}.1f}" for v in row))


def main() -> None:
    backbone = Path(sys.argv[1]) if len(sys.argv) > 1 else default_backbone_path()
    cache = EmbeddingCache(backbone, 256, layout="prompt_response_v1")  # the statistics appended here
    probe_table(lambda recs: differences(cache, recs), CANDIDATES)


if __name__ == "__main__":
    main()
