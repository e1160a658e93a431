"""How free to make the attribute read-outs (``TrainConfig.attribute_readout_variance``): few-shot accuracy
of attribute users for a range of prior variances of those experts, and without them.

Feeds docs/decisions/attribute-readouts.md.

    python experiments/attribute_readout_scan.py                      # the shipped model, ~4 minutes on 2 cores
    python experiments/attribute_readout_scan.py --model models/mine

The read-outs are the last experts of a folder built with them (``moerm_build.train.readout.add_attribute_readouts``);
their prior is independent of the other experts', so a variance is tried by replacing their diagonal of
the folder's prior precision, and "without" drops their columns. Validation users (seeds apart from the
card's test users, as the prior strength is chosen): 1- and 2-3-attribute users on held-out prompts; the
mean over N = 5 / 10 / 20 / 50 of both is what a choice goes by. Persona users do not depend on it: the
read-outs are silent on a text without a prompt (checked below). DSP domain users (evaluation only) are
shown for information, not for choosing. Every fit is the runtime's own at the model's prior strength.

Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from moerm_build import data
from moerm_build.data.attributes import attribute_benchmark
from moerm_build.evaluate.metrics import RuntimeFeaturizer, few_shot
from moerm_build.evaluate.real_eval import SHOTS, attribute_pool, dsp_pool, dsp_users
from moerm_lite.head import expert_features
from moerm_lite.model import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]


VARIANCES = (0.1, 0.3, 1.0, 3.0, 10.0)
RIDGE = 1e-3  # MoEHead.prior_precision's


def with_variance(P: np.ndarray, idx: np.ndarray, variance: float) -> np.ndarray:
    """The prior precision (K, K) with the experts ``idx`` given prior ``variance`` (independent, as built)."""
    Q = P.copy()
    Q[idx, :], Q[:, idx] = 0.0, 0.0
    Q[idx, idx] = 1.0 / (variance + RIDGE)
    return Q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    args = ap.parse_args()
    fz = RuntimeFeaturizer(args.model)
    lam, P, w0, K = fz.model.config.default_prior_strength, fz.prior_precision, fz.w0, fz.n_experts
    readout = fz.model.config.extra.get("training", {}).get("readout") or {}
    A = len((readout.get("attribute_readouts") or {}).get("attributes", []))
    if not A or P is None:
        sys.exit(f"{args.model} has no attribute read-outs (or no training-user prior): nothing to scan")
    idx, keep = np.arange(K - A, K), np.arange(K - A)
    st = data.load_persona()
    g, r = fz.outputs([("", s) for s in st.text])
    silent = float(np.abs(expert_features(g, r)[:, idx]).max())
    pool = attribute_pool(fz, with_probe=False)
    users = {"1 attribute": attribute_benchmark(pool["pool"], n_users=100, n_attributes=1, seed=778),
             "2-3 attributes": attribute_benchmark(pool["pool"], n_users=100, seed=779)}
    dsp = dsp_pool(fz)
    variants: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {  # phi, dsp phi, w0, P
        "without": (pool["phi"][:, keep], dsp[0][..., keep], w0[keep],
                    np.linalg.inv(np.linalg.inv(P)[np.ix_(keep, keep)])),
        **{f"variance {v:g}": (pool["phi"], dsp[0], w0, with_variance(P, idx, v)) for v in VARIANCES}}
    built = float(np.median(1.0 / np.diag(P)[idx]) - RIDGE)
    cols = "".join(f"{'N=' + str(n):>8}" for n in SHOTS)
    print(f"{Path(args.model).name} (int8 runtime): {A} attribute read-outs, built with prior variance "
          f"{built:.3g}; prior strength {lam:g}; largest read-out output on persona statements {silent:g}")
    print(f"validation users, accuracy at {cols}  mean of both groups")
    for name, (phi, _, w, Q) in variants.items():
        res = {u: few_shot(phi, users[u], w, lam, P=Q) for u in users}
        mean = np.mean([v[str(n)] for v in res.values() for n in SHOTS])
        for u, v in res.items():
            print(f"  {name:<14}{u:<16}" + "".join(f"{100 * v[str(n)]:8.1f}" for n in SHOTS)
                  + (f"{100 * mean:8.2f}" if u == "1 attribute" else ""))
    print("DSP domain users (evaluation only; test half), N = 5 / 10 / 20 / 50 / all:")
    for name, (_, phi_d, w, Q) in variants.items():
        res = dsp_users(fz, w, lam, Q, pool=(phi_d, dsp[1], dsp[2]))["model"]
        print(f"  {name:<14}" + "".join(f"{100 * v:8.1f}" for v in res.values()))


if __name__ == "__main__":
    main()
