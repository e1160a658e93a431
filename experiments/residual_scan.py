"""How strong a residual to fit (``fit_user(..., residual_strength=s)``): few-shot accuracy for a range of
fixed strengths and for ``"auto"`` (chosen per user from its own comparisons), next to the weights alone.

Feeds docs/decisions/residual.md.

    python experiments/residual_scan.py                      # the shipped model, ~6 minutes on 2 CPU cores
    python experiments/residual_scan.py --model models/mine

Validation users (seeds apart from the card's test users, as the prior strength is chosen): persona-16
users and attribute users (1 and 2-3 attributes) on held-out prompts; the mean over N = 5 / 10 / 20 / 50
of both is what a choice would go by. DSP domain users (evaluation only) are shown for information, not
for choosing. Every fit is the runtime's own (``UserProfile.fit``) at the model's prior strength.

Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from moerm_build import data
from moerm_build.data.attributes import attribute_benchmark
from moerm_build.evaluate.metrics import RuntimeFeaturizer, few_shot
from moerm_build.evaluate.real_eval import SHOTS, attribute_pool, dsp_pool, dsp_users, few_shot_residual
from moerm_lite.head import expert_features
from moerm_lite.model import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]


STRENGTHS = (3.0, 10.0, 30.0, 100.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / DEFAULT_MODEL), help="a model folder")
    args = ap.parse_args()
    fz = RuntimeFeaturizer(args.model)
    lam, P, w0 = fz.model.config.default_prior_strength, fz.prior_precision, fz.w0
    st = data.load_persona()
    g, r, X_stmt = fz.outputs_and_features([("", s) for s in st.text])  # (S, K), (S, K), (S, F)
    pool = attribute_pool(fz, with_probe=False)
    single = attribute_benchmark(pool["pool"], n_users=100, n_attributes=1, seed=778)
    multi = attribute_benchmark(pool["pool"], n_users=100, seed=779)
    groups = {"persona": (expert_features(g, r), X_stmt.astype(np.float64),
                          data.persona_benchmark(st, n_users=100, seed=777)),
              "1 attribute": (pool["phi"], pool["X"], single),
              "2-3 attributes": (pool["phi"], pool["X"], multi)}
    cols = "".join(f"{'N=' + str(n):>8}" for n in SHOTS)
    print(f"validation users, {Path(args.model).name} (int8 runtime), prior strength {lam:g}; "
          f"accuracy at {cols}")
    means: dict[str, list[float]] = {}
    for name, (phi, X, users) in groups.items():
        print(f"{name}:")
        rows = {"weights only": few_shot(phi, users, w0, lam, P=P)}
        rows.update({f"residual {s:g}": few_shot_residual(phi, X, users, w0, lam, P, s) for s in STRENGTHS})
        rows["residual auto"] = few_shot_residual(phi, X, users, w0, lam, P, "auto")
        for label, res in rows.items():
            print(f"  {label:<16}" + "".join(f"{100 * res[str(n)]:8.1f}" for n in SHOTS))
            means.setdefault(label, []).extend(res[str(n)] for n in SHOTS)
    print("mean over the three groups and N:")
    for label, v in means.items():
        print(f"  {label:<16}{100 * np.mean(v):8.2f}")
    print("DSP domain users (evaluation only; test half), model + residual at N = 5 / 10 / 20 / 50 / all:")
    dsp = dsp_pool(fz)  # embedded once for every strength
    dsp_res: dict = {}
    for s in STRENGTHS:
        dsp_res = dsp_users(fz, w0, lam, P, residual_strength=s, pool=dsp)
        print(f"  residual {s:<7g}" + "".join(f"{100 * v:8.1f}" for v in dsp_res["model_plus_residual"].values()))
    print("  residual auto   " + "".join(f"{100 * v:8.1f}" for v in dsp_res["model_auto"].values()))


if __name__ == "__main__":
    main()
