"""Can a prompt-aware expert bring HH-RLHF harmless to its probe and keep helpfulness and the sanity suite?

    python experiments/harmless_gate.py                  # runs/ship, ~2 minutes on 2 CPU cores (cached embeddings)
    python experiments/harmless_gate.py --run runs/x

Feeds docs/decisions/population-bound.md (the prompt-aware harmless
expert).

The frozen probe trained on harmless-base prefers evasive replies everywhere (docs/decisions/population-bound.md), so it cannot
be the population score; refusing is right only when the prompt asks for harm. This measures the best case
for an expert that knows that: a harmless read-out (a linear reward on the pair features, fitted on the
harmless-base train split like the probe, scaled by ``weight``) switched on only where a classifier of the
*prompt's* embedding says the prompt is a red-team prompt (logistic regression: harmless-base prompts
against every other training prompt, train splits only; on where its logit exceeds ``threshold``). The
shipped head cannot compute it (its features carry the prompt only through ``p * r`` and the cosine), so
this is measured in numpy on top of the trained population score, in torch fp32, on the held-out splits.
The (threshold, weight) grid is read on test data: the table shows a frontier, not a choice.

Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from moerm_build.data.contrast import KINDS
from moerm_build.evaluate.metrics import logistic_fit, pair_accuracy
from moerm_build.evaluate.real_eval import HUMAN_LABELLED, sanity_records
from moerm_build.train.embed import EmbeddingCache
from moerm_build.train.readout import fit_for_head, readout_records
from moerm_build.train.request_gate import prompt_embeddings
from moerm_build.train.train import TrainConfig, load_checkpoint, load_records
from moerm_lite.request_gate import gate_inputs

ROOT = Path(__file__).resolve().parents[1]


THRESHOLDS = (0.0, -1.0, -2.0)  # the prompt classifier's logit above which the expert is on
WEIGHTS = (1.0, 3.0, 10.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "ship"), help="a training run")
    args = ap.parse_args()
    ckpt, head = load_checkpoint(args.run)
    cfg = TrainConfig.of_run(ckpt)
    cache = EmbeddingCache(ckpt["backbone_path"], cfg.max_length)
    records = load_records(cfg)

    def prompt_inputs(recs: list[dict]) -> np.ndarray:
        """The prompt classifier's inputs (N, H + 1): the request gate's (the unit embedding and a bias)."""
        return gate_inputs(prompt_embeddings(cache.get, [r["prompt"] for r in recs]))

    pop = [r for r in records if r.get("user_id") is None and str(r.get("prompt", "")).strip()]
    red = np.where([r["source"].startswith("hh_harmless") for r in pop], 1.0, -1.0)  # (N,) +1: red-team prompt
    v = logistic_fit(prompt_inputs(pop) * red[:, None], np.ones(len(pop)), 1.0)  # (H + 1,)

    harmless = readout_records(records, ["hh_harmless"])  # the train split
    Xc = torch.as_tensor(cache.features([(r["prompt"], r["chosen"]) for r in harmless]))
    Xr = torch.as_tensor(cache.features([(r["prompt"], r["rejected"]) for r in harmless]))
    with torch.no_grad():
        u = fit_for_head(head, head.standardize(Xc).double().numpy(), head.standardize(Xr).double().numpy(),
                         np.zeros(len(harmless)), 0.1)  # (F,) fitted alone, as the probe is

    tests = {name: load(split="test") for name, load in HUMAN_LABELLED.items()}
    tests["sanity"] = sanity_records()  # evaluation only: DSP's instructions
    kinds = np.array([r["kind"] for r in tests["sanity"]])
    c = float(head.args.reward_bound)
    base, extra, logit = {}, {}, {}
    for name, recs in tests.items():
        xc = torch.as_tensor(cache.features([(r["prompt"], r["chosen"]) for r in recs]))
        xr = torch.as_tensor(cache.features([(r["prompt"], r["rejected"]) for r in recs]))
        with torch.no_grad():
            base[name] = (head.score(xc, head.w0) - head.score(xr, head.w0)).double().numpy()  # (N,)
            hc, hr = head.standardize(xc).double().numpy(), head.standardize(xr).double().numpy()
        extra[name] = c * np.tanh(hc @ u / c) - c * np.tanh(hr @ u / c)  # (N,) the read-out's margin
        logit[name] = prompt_inputs(recs) @ v  # (N,)

    def row(label: str, m: dict[str, np.ndarray], on: dict[str, float]) -> None:
        print(f"{label:<26}" + "".join(f"{100 * pair_accuracy(m[n]):15.1f}%" for n in HUMAN_LABELLED)
              + "".join(f"{100 * (m['sanity'][kinds == k] > 0).mean():11.1f}%" for k in KINDS)
              + "".join(f"{100 * on[n]:8.0f}%" for n in ("hh_helpful", "hh_harmless", "sanity")))

    print(f"torch fp32, held-out splits; {len(harmless)} harmless-base train pairs for the read-out")
    print(f"{'population score':<26}" + "".join(f"{n:>16}" for n in HUMAN_LABELLED)
          + "".join(f"{k:>12}" for k in KINDS) + f"{'on: helpful':>12}{'harmless':>9}{'sanity':>8}")
    row("trained head (shipped)", base, {n: 0.0 for n in tests})
    row("+ read-out everywhere", {n: base[n] + extra[n] for n in tests}, {n: 1.0 for n in tests})
    for t in THRESHOLDS:
        on = {n: (logit[n] > t).astype(float) for n in tests}  # (N,) per set
        for w in WEIGHTS:
            row(f"+ gated, logit > {t:g}, x{w:g}", {n: base[n] + w * on[n] * extra[n] for n in tests},
                {n: float(on[n].mean()) for n in tests})


if __name__ == "__main__":
    main()
