"""Is the population score hackable through its style experts? The default score without them.

    python experiments/style_free_population.py                  # the shipped model, ~20 minutes on 2 CPU cores
    python experiments/style_free_population.py --model models/mine --no-hacking

Feeds docs/decisions/bad-replies.md ("What the hacking search keeps"). Appending a phrase or the request to a
real answer raises the shipped score mostly through the shared experts named for a style (simpler wording,
longer replies, ...), which carry non-zero population weights. This scores the shipped population weights
and the same weights with every shared expert but the helpfulness read-out set to 0 (the routed experts and
the read-out left as they are), through the int8 runtime: the degradation families on held-out answers, the
everyday requests, the sanity suite, the human-labelled test splits, and the greedy hacking search (the
card's: 200 held-out answers, 30 rounds). Nothing here ships. Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from moerm_build.evaluate.metrics import RuntimeFeaturizer, pair_accuracy
from moerm_build.evaluate.real_eval import HUMAN_LABELLED, features_phi, sanity
from moerm_build.evaluate.robustness import everyday, families, family_out_records, hacking, pair_outputs
from moerm_lite import RewardModel
from moerm_lite.model import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
READOUT = "helpful, on-topic answers"  # the shared expert that is kept


def style_free(model: RewardModel) -> tuple[np.ndarray, list[str]]:
    """The population weights (K,) with every shared expert of non-zero weight but ``READOUT`` set to 0, and
    the names of those set to 0."""
    K, S = model.n_experts, model.config.n_shared
    w = np.array(model.w0, dtype=np.float64)  # (K,)
    style = [k for k in range(K - S, K) if w[k] != 0 and model.expert_names[k] != READOUT]
    w[style] = 0.0
    return w, [model.expert_names[k] for k in style]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    ap.add_argument("--no-hacking", action="store_true", help="skip the hacking search (15 of the 20 minutes)")
    args = ap.parse_args(argv)
    logging.getLogger("moerm_lite").setLevel(logging.ERROR)
    fz = RuntimeFeaturizer(args.model)
    w_free, zeroed = style_free(fz.model)
    print(f"set to 0: {zeroed}")
    weights = {"population": fz.w0, "style experts at 0": w_free}
    _, _, test_deg = family_out_records(0)
    phi, _ = pair_outputs(fz, test_deg)  # (N, K)
    fam = families(test_deg)  # (N,)
    print(f"{'%':28}" + "".join(f"{name:>22}" for name in weights))

    def row(label: str, values: list[float]) -> None:
        print(f"{label:28}" + "".join(f"{v:22.1f}" for v in values), flush=True)

    for f in sorted(set(fam)):
        row(f"family: {f}", [100 * pair_accuracy(phi[fam == f] @ w) for w in weights.values()])
    days = [everyday(fz, w) for w in weights.values()]
    row("everyday: pairs won", [100 * d["wins"] for d in days])
    row("everyday: answer first", [100 * d["answer_first"] for d in days])
    row("sanity suite, worst kind", [100 * sanity(fz, w)["min"] for w in weights.values()])
    for source, load in HUMAN_LABELLED.items():
        ph, _ = features_phi(fz, load(split="test"))
        row(f"{source} (test)", [100 * pair_accuracy(ph @ w) for w in weights.values()])
    if not args.no_hacking:  # the population's own search is the card's
        h = hacking(fz.model, user=w_free)
        print(f"hacking search, style experts at 0: hacked {100 * h['hacked']:.1f}%, mean gain "
              f"{h['mean_gain']:+.2f}, edits kept in hacked searches {h['edits_in_hacked']}")


if __name__ == "__main__":
    main()
