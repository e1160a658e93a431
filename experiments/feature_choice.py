"""Which features the head should see: the pair encoding against separate embeddings and text statistics.

    python experiments/feature_choice.py      # ~5 minutes on 2 CPU cores the first time, then seconds
                                              # (frozen MiniLM embeddings are cached)

Feeds docs/decisions/features.md (a design decision: the model
card no longer carries it).

Each feature set is scored the same way, on held-out data, with a linear probe (logistic regression on
chosen minus rejected, L2 10, as the card's reference) so that the features and not a head are compared:

- (a) the pair encoding the first models used: one mean-pooled embedding of ``prompt [SEP] response``
  (a long pair keeps its end: the reply and the latest turns);
- (a) plus the 12 text statistics of ``moerm_lite.features``;
- (b) prompt and response embedded separately, with their interactions: ``r, p * r, cos(p, r)``;
- (c) (b) plus the text statistics: ``moerm_lite.features.pair_features``, what the shipped head sees.

Columns: each human-labelled set's probe, trained on its train split, on its test split; the sanity suite
(real answer vs a worse reply to a new DSP instruction) scored by one probe trained on the licensed
training mixture's population records (HH-RLHF helpful, FineGrained QA, Topical-Chat, contrast pairs),
share of pairs the real answer wins; and what the backbone reads to rank 8 candidates of the benchmarks'
workload (tokens per ranking call: the pair encoding reads the prompt once per candidate). Fine-tuning
the encoder, the fourth option, is measured by ``experiments/finetune_probe.py``.

Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from moerm_build.data import ranking_workload
from moerm_build.data.contrast import KINDS
from moerm_build.evaluate.metrics import logistic_fit, pair_accuracy
from moerm_build.evaluate.real_eval import HUMAN_LABELLED, sanity_records
from moerm_build.train.embed import EmbeddingCache, default_backbone_path
from moerm_build.train.readout import readout_records
from moerm_build.train.train import TrainConfig, load_records
from moerm_lite.features import pair_features
from moerm_lite.text import TextTokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "moerm_build" / "configs" / "moerm-minilm.json"
L2 = 10.0  # the card's frozen probe's
RANKING = 8  # candidates per ranking call


def pair_text(prompt: str, response: str) -> str:
    """The pair encoding's input: the tokenizer reads ``[SEP]`` as its separator token."""
    return f"{prompt} [SEP] {response}" if prompt.strip() else response


def feature_sets(cache: EmbeddingCache, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Each feature set (N, F_set) of ``pairs``."""
    X = pair_features(cache.get([p if p.strip() else " " for p, _ in pairs], "prompt"),
                      cache.get([r for _, r in pairs], "response"),
                      [p for p, _ in pairs], [r for _, r in pairs], "prompt_response_v1").astype(np.float64)  # (N, 2H + 13)
    H = (X.shape[1] - 13) // 2
    joint = cache.get([pair_text(p, r) for p, r in pairs], "prompt").astype(np.float64)  # (N, H) keeps the end
    joint /= np.maximum(np.linalg.norm(joint, axis=1, keepdims=True), 1e-12)
    stats = X[:, 2 * H + 1:]  # (N, 12): has_prompt, lengths, layout and style rates
    return {"(a) pair encoding": joint,
            "(a) + text statistics": np.hstack([joint, stats]),
            "(b) separate: r, p*r, cos": X[:, :2 * H + 1],
            "(c) (b) + text statistics (shipped)": X}


def differences(cache: EmbeddingCache, recs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Chosen minus rejected (N, F_set) per feature set."""
    n = len(recs)
    sets = feature_sets(cache, [(r["prompt"], r["chosen"]) for r in recs]
                        + [(r["prompt"], r["rejected"]) for r in recs])
    return {name: f[:n] - f[n:] for name, f in sets.items()}


def tokens_per_ranking(tok: TextTokenizer) -> dict[str, float]:
    """Mean tokens the backbone reads to rank ``RANKING`` candidates, per encoding (``moerm_build.data.ranking_workload``, the benchmarks' workload)."""
    pairs = ranking_workload(64, RANKING)
    by_prompt: dict[str, list[str]] = {}
    for p, r in pairs:
        by_prompt.setdefault(p, []).append(r)
    joint, separate = [], []
    for p, rs in by_prompt.items():
        joint.append(sum(len(x) for x in tok.encode([pair_text(p, r) for r in rs], "prompt")[0]))
        prompt_tokens = len(tok.encode([p], "prompt")[0][0])
        separate.append(prompt_tokens + sum(len(x) for x in tok.encode(rs, "response")[0]))
    return {"pair encoding": float(np.mean(joint)), "separate": float(np.mean(separate))}


def measure() -> dict[str, Any]:
    cfg = TrainConfig.from_json(CONFIG)
    backbone = cfg.backbone or str(default_backbone_path())
    cache = EmbeddingCache(backbone, cfg.max_length)
    rows: dict[str, dict[str, float]] = {}
    for name, load in HUMAN_LABELLED.items():
        train, test = differences(cache, load(split="train")), differences(cache, load(split="test"))
        for fs in train:
            w = logistic_fit(train[fs], np.ones(len(train[fs])), L2)
            rows.setdefault(fs, {})[name] = pair_accuracy(test[fs] @ w)
    mixture = readout_records(load_records(cfg), TrainConfig().readout_sources)  # licensed train splits only
    suite = sanity_records()  # evaluation only: DSP's instructions
    kinds = np.array([r["kind"] for r in suite])
    train, test = differences(cache, mixture), differences(cache, suite)
    for fs in train:
        z = test[fs] @ logistic_fit(train[fs], np.ones(len(train[fs])), L2)  # (S,)
        rows[fs].update({f"sanity {k}": float((z[kinds == k] > 0).mean()) for k in KINDS})
    tok = TextTokenizer(Path(backbone) / "tokenizer.json", cfg.max_length)
    return {"rows": rows, "tokens_per_ranking": tokens_per_ranking(tok), "mixture_records": len(mixture),
            "l2": L2, "ranking_candidates": RANKING}


def print_table(res: dict[str, Any]) -> None:
    cols = [*HUMAN_LABELLED, *[f"sanity {k}" for k in KINDS]]
    print(f"{'features':<38}" + "".join(f"{c:>18}" for c in cols))
    for fs, row in res["rows"].items():
        print(f"{fs:<38}" + "".join(f"{100 * row[c]:17.1f}%" for c in cols))
    t = res["tokens_per_ranking"]
    print(f"tokens read to rank {res['ranking_candidates']} candidates: pair encoding {t['pair encoding']:.0f}, "
          f"separate {t['separate']:.0f} ({t['pair encoding'] / t['separate']:.2f}x)")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    print_table(measure())


if __name__ == "__main__":
    main()
