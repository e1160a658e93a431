"""What bounds the population score on human-labelled pairs: the experts or their weights.

    python experiments/population_bound.py                      # the shipped model, ~5 minutes on 2 cores
    python experiments/population_bound.py --model models/mine

Feeds docs/decisions/population-bound.md.

For HH-RLHF helpful / harmless and FineGrained QA (held-out test splits): accuracy of the population
weights w0, of a logistic probe on the frozen pair features trained on the train split (the card's
reference), and of the best weights on the model's own expert outputs, also trained on that split
(logistic regression on pi * r, over a range of L2 strengths). If the last is below the probe, no choice
of population weights reaches the probe: the experts do not compute what the set rewards. Then each
probe, used as a population score, on the sanity suite: what a probe's accuracy is made of.

Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from moerm_build.data.contrast import KINDS
from moerm_build.evaluate.metrics import RuntimeFeaturizer, logistic_fit, pair_accuracy
from moerm_build.evaluate.real_eval import HUMAN_LABELLED, features_phi, sanity_records
from moerm_lite.model import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]


L2 = (0.1, 1.0, 10.0, 100.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    args = ap.parse_args()
    fz = RuntimeFeaturizer(args.model)
    suite = sanity_records()  # evaluation only: DSP's held-out instructions
    kinds = np.array([r["kind"] for r in suite])
    phi_suite, X_suite = features_phi(fz, suite)  # (S, K), (S, F)
    print(f"held-out accuracy, {Path(args.model).name} (int8 runtime); probes trained on each set's train split")
    print(f"{'set':<16}{'train':>7}{'test':>6}{'w0':>8}{'frozen probe':>14}"
          + "".join(f"{'experts, L2 ' + format(a, 'g'):>18}" for a in L2))
    probes = {}
    for name, load in HUMAN_LABELLED.items():
        train, test = load(split="train"), load(split="test")
        phi_tr, X_tr = features_phi(fz, train)  # (N, K), (N, F): chosen minus rejected
        phi_te, X_te = features_phi(fz, test)
        ones = np.ones(len(train))
        probes[name] = logistic_fit(X_tr, ones, 10.0)  # (F,)
        cells = [pair_accuracy(phi_te @ fz.w0), pair_accuracy(X_te @ probes[name])]
        cells += [pair_accuracy(phi_te @ logistic_fit(phi_tr, ones, a)) for a in L2]
        print(f"{name:<16}{len(train):>7}{len(test):>6}" + f"{100 * cells[0]:7.1f}%{100 * cells[1]:13.1f}%"
              + "".join(f"{100 * c:17.1f}%" for c in cells[2:]))
    # What the probes reward: each one used as a population score on the sanity suite (real answer vs worse)
    print("\nthe frozen probes as population scores on the sanity suite (share of pairs the real answer wins)")
    print(f"{'score':<28}" + "".join(f"{k:>12}" for k in KINDS))
    for name, v in [("w0 (this model)", None), *probes.items()]:
        z = phi_suite @ fz.w0 if v is None else X_suite @ v  # (S,)
        print(f"{name:<28}" + "".join(f"{100 * (z[kinds == k] > 0).mean():11.1f}%" for k in KINDS))


if __name__ == "__main__":
    main()
