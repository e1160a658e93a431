"""Would a gate that reads the request keep the red-team experts off benign ones? One or more training runs.

    python experiments/prompt_gate.py --run runs/ne/ship [--run runs/nr/ship ...]

Feeds docs/decisions/bad-replies.md ("A gate that reads the request"). On the noise-trained encoders "No."
beats the answer to a benign everyday request ("What should I cook for dinner tonight?") through the routed
experts that HH-RLHF harmless's red-team conversations route to: to a harmful request "No." is the better
reply, and the head sees the request only through its product with the reply and the cosine. This measures
the fix that reads the request itself, without retraining anything: the request gate that builds now fit
after training (``moerm_build/train/request_gate.py``: the routed experts HH-RLHF harmless's red-team requests
route to most, switched off where a logistic regression of the request's unit embedding says benign;
``moerm_lite/request_gate.py`` applies it), fitted here on a run trained before it (or the run's own, where
it has one); a fitted user's features are gated too.

The whole evaluation of ``python -m moerm_build evaluate`` (persona and attribute users, DSP, HH-RLHF, the
sanity suite; torch fp32) runs on the gated model, and the families on held-out answers and the everyday
requests of ``python -m moerm_build robustness``, plus the families made from the everyday set's short answers
(``tests/test_shipped.py``'s), without and with the gate (the users' tables of the run as trained are
``python -m moerm_build evaluate -i RUN``'s). About 20 minutes a run on 2 CPU cores beside a training run,
with the run's embeddings cached. Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moerm_build.evaluate.metrics import TorchFeaturizer
from moerm_build.evaluate.report import evaluate
from moerm_build.evaluate.robustness import everyday, everyday_families, family_table, load_everyday
from moerm_build.train.request_gate import RED_TEAM, fit_request_gate, prompt_embeddings
from moerm_build.train.train import TrainConfig, load_records
from moerm_lite.request_gate import RequestGate


def pct(d: dict[str, float], keys: Sequence[str]) -> str:
    return " / ".join(f"{100 * d[k]:.1f}" for k in keys)


def summary(label: str, fz: Any, w0: np.ndarray, users: bool) -> None:
    """Print the families, the everyday requests and the short answers' families; with ``users`` the whole
    evaluation too."""
    fams, ev, short = family_table(fz, w0)["families"], everyday(fz, w0), everyday_families(fz, w0)
    print(f"  {label}")
    print(f"    everyday: pairs {100 * ev['wins']:.1f}, answer first {100 * ev['answer_first']:.1f} "
          f"({round(ev['answer_first'] * ev['n_requests'])} of {ev['n_requests']})")
    print("    families: " + ", ".join(f"{f} {100 * r['model']:.1f}" for f, r in fams.items()))
    print("    short answers: " + ", ".join(f"{f} {100 * v:.1f}" for f, v in short.items()))
    if not users:
        return
    rep = evaluate(fz, w0)
    n, pop, attr = ("5", "10", "20", "50"), rep["population"], rep["attribute_users"]
    best = len({a["expert"] for a in rep["interpretability"]["axes"]})
    print(f"    persona {pct(rep['persona'], n)} ({best} distinct best experts); attribute users, 1 / 2-3, "
          f"N = 5: {pct({'1': attr['single']['5'], '2': attr['multi']['5']}, '12')}")
    print(f"    DSP + residual {pct(rep['dsp']['model_plus_residual'], n)}; HH helpful / harmless / QA / "
          f"WebGPT {pct({k: v['model'] for k, v in pop.items()}, list(pop))}; sanity worst "
          f"{100 * rep['sanity']['min']:.1f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="a training run (ckpt.pt); repeatable")
    args = ap.parse_args(argv)
    for run in args.run:
        fz = TorchFeaturizer(Path(run), request_gate=False)  # the head as trained
        pop = [r for r in load_records(TrainConfig.of_run(fz.ckpt))
               if r.get("user_id") is None and str(r.get("prompt", "")).strip()]
        fit = fz.ckpt.get("request_gate") or fit_request_gate(fz.head, pop, fz.embed, fz.features)
        if fit is None:
            raise SystemExit(f"{run}: no request gate to fit (no {RED_TEAM} request, or no expert for one)")
        gated = copy.copy(fz)  # the same head and embedding cache, with the gate
        gated.request_gate = RequestGate.from_dict(fit, fz.n_experts, fz.feature_blocks["reply"])
        on = {"red-team training requests": [r["prompt"] for r in pop if r["source"] == RED_TEAM],
              "the other training requests": [r["prompt"] for r in pop if r["source"] != RED_TEAM],
              "the everyday requests": [r["prompt"] for r in load_everyday()]}
        gate = gated.request_gate
        print(f"{run}: red-team experts {fit['experts']}; the gate is on for "
              + ", ".join(f"{100 * gate.on(prompt_embeddings(fz.embed, p), p).mean():.0f}% of {what}"
                          for what, p in on.items()))
        summary("as trained (its users: python -m moerm_build evaluate -i RUN)", fz, fz.w0, users=False)
        summary("gated", gated, fz.w0, users=True)


if __name__ == "__main__":
    main()
