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
from pathlib import Path

import numpy as np

from moerm_build.evaluate.robustness import family_out_columns
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


def main() -> None:
    backbone = Path(sys.argv[1]) if len(sys.argv) > 1 else default_backbone_path()
    cache = EmbeddingCache(backbone, 256, layout="prompt_response_v1")  # the statistics appended here
    print(family_out_columns(lambda recs: differences(cache, recs), CANDIDATES))


if __name__ == "__main__":
    main()
