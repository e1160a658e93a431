"""How strong a population read-out (moerm_build.train.readout) to fit: held-out accuracy for a range of L2 values.

    python experiments/readout_scan.py                  # runs/ship, ~1 minute on 2 CPU cores (cached embeddings)
    python experiments/readout_scan.py --run runs/x

Feeds docs/decisions/helpfulness-readout.md.

For each L2 the read-out is fitted on the run's training records (as ``train`` does) on top of the head
as trained, then the population score is measured in torch on data it never saw: the HH-RLHF helpful /
harmless and FineGrained QA test splits (next to a logistic probe on the frozen features trained on the
train split, the card's reference) and the sanity suite (real answer vs four worse kinds, DSP's held-out
instructions, evaluation only). L2 "none" is the head without a read-out. The head's own margin on its
training records is in-sample, so no training-side validation can choose the L2; this table is what chose
``TrainConfig.readout_l2``.

Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from moerm_build.data.contrast import KINDS
from moerm_build.evaluate.metrics import logistic_fit, pair_accuracy
from moerm_build.train.embed import EmbeddingCache
from moerm_build.train.readout import (
    append_readout,
    fit_for_head,
    readout_inputs,
    readout_records,
    without_readout,
)
from moerm_build.evaluate.real_eval import HUMAN_LABELLED as SETS
from moerm_build.evaluate.real_eval import sanity_records
from moerm_build.train.train import TrainConfig, load_checkpoint, load_records

ROOT = Path(__file__).resolve().parents[1]


L2 = (0.03, 0.1, 0.3, 1.0, 3.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "ship"), help="a training run")
    args = ap.parse_args()
    ckpt, head = load_checkpoint(args.run)
    head = without_readout(head)
    cfg = TrainConfig(**{**ckpt["config"], "readout_sources": TrainConfig().readout_sources})
    cache = EmbeddingCache(ckpt["backbone_path"], cfg.max_length)
    recs = readout_records(load_records(cfg), cfg.readout_sources)
    Hc, Hr, offset = readout_inputs(head, recs, cache.features)
    tests = {name: load(split="test") for name, load in SETS.items()}
    tests["sanity"] = sanity_records()  # evaluation only: DSP's held-out instructions
    kinds = np.array([r["kind"] for r in tests["sanity"]])
    X = {name: (cache.features([(r["prompt"], r["chosen"]) for r in t]),
                cache.features([(r["prompt"], r["rejected"]) for r in t])) for name, t in tests.items()}
    probes = {}
    for name, load in SETS.items():
        tr = load(split="train")
        dX = (cache.features([(r["prompt"], r["chosen"]) for r in tr])
              - cache.features([(r["prompt"], r["rejected"]) for r in tr])).astype(np.float64)
        dX_test = (X[name][0] - X[name][1]).astype(np.float64)
        probes[name] = pair_accuracy(dX_test @ logistic_fit(dX, np.ones(len(dX)), 10.0))
    print(f"read-out records: {len(recs)} ({', '.join(cfg.readout_sources)}); torch fp32, held-out splits")
    print(f"{'L2':>8}" + "".join(f"{n:>16}" for n in SETS) + "".join(f"{k:>12}" for k in KINDS))
    print(f"{'probe':>8}" + "".join(f"{100 * probes[n]:15.1f}%" for n in SETS))
    for l2 in (None, *L2):
        u = None if l2 is None else fit_for_head(head, Hc, Hr, offset, l2)
        h = head if u is None else append_readout(head, u)
        with torch.no_grad():
            margin = {n: (h.score(torch.from_numpy(c), h.w0) - h.score(torch.from_numpy(r), h.w0)).numpy()
                      for n, (c, r) in X.items()}
        print(f"{'none' if l2 is None else format(l2, 'g'):>8}"
              + "".join(f"{100 * pair_accuracy(margin[n]):15.1f}%" for n in SETS)
              + "".join(f"{100 * (margin['sanity'][kinds == k] > 0).mean():11.1f}%" for k in KINDS))


if __name__ == "__main__":
    main()
