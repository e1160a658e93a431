"""Would a gate that reads the request keep the red-team experts off benign ones? One or more training runs.

    python experiments/prompt_gate.py --run runs/ne/ship [--run runs/nr/ship ...]

Feeds docs/decisions/bad-replies.md ("A gate that reads the request"). On the noise-trained encoders "No."
beats the answer to a benign everyday request ("What should I cook for dinner tonight?") through the routed
experts that HH-RLHF harmless's red-team conversations route to: to a harmful request "No." is the better
reply, and the head sees the request only through its product with the reply and the cosine. This measures
the fix that would read the request itself, without retraining anything:

- the *red-team experts*: the routed experts whose inputs, over the training split's population comparisons,
  come from HH-RLHF harmless more than from any other source (both replies of each pair, the share of a
  source's inputs that route to the expert; persona statements aside, since they have no request);
- the *gate*: a logistic regression of the request's unit embedding (a bias column besides): HH-RLHF
  harmless's training prompts against every other training prompt of the population mixture, L2 1
  (``experiments/harmless_gate.py``'s classifier); on where its logit is above 0 or there is no request;
- the gated model: each red-team expert's term ``pi_k r_k`` times the gate, everything else as trained (the
  gate is a fixed part of the head, so a fitted user's features are gated too).

The whole evaluation of ``python -m moerm_build evaluate`` (persona and attribute users, DSP, HH-RLHF, the
sanity suite; torch fp32) runs on the gated model, and the families on held-out answers and the everyday
requests of ``python -m moerm_build robustness``, plus the families made from the everyday set's short answers
(``tests/test_shipped.py``'s), without and with the gate (the users' tables of the run as trained are
``python -m moerm_build evaluate -i RUN``'s). About 20 minutes a run on 2 CPU cores beside a training run,
with the run's embeddings cached. Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moerm_build.data.degrade import degradation_records
from moerm_build.evaluate.metrics import TorchFeaturizer, logistic_fit, pair_accuracy
from moerm_build.evaluate.report import evaluate
from moerm_build.evaluate.robustness import everyday, families, family_table, load_everyday, pair_outputs
from moerm_build.train.train import TrainConfig, load_records

SOURCES = ("hh_harmless", "hh_helpful", "finegrained_qa", "topical_chat")  # the sources with a request
RED_TEAM = "hh_harmless"


class GatedFeaturizer:
    """A run's torch featurizer whose ``experts`` are switched off where ``gate`` says a request is benign."""

    def __init__(self, fz: TorchFeaturizer, experts: np.ndarray, gate: np.ndarray) -> None:
        self.fz, self.experts, self.gate = fz, experts, gate  # (K,) bool, (H + 1,)
        self.n_experts, self.n_shared, self.n_readout = fz.n_experts, fz.n_shared, fz.n_readout
        self.readout_names, self.prior_precision = fz.readout_names, fz.prior_precision
        self.feature_blocks, self.features = fz.feature_blocks, fz.features

    def on(self, prompts: Sequence[str]) -> np.ndarray:
        """(N,) bool: the gate's logit above 0, or no request."""
        has = np.array([bool(p.strip()) for p in prompts])
        logit = prompt_inputs(self.fz, prompts) @ self.gate  # (N,)
        return ~has | (logit > 0)

    def outputs_and_features(self, pairs: Sequence[tuple[str, str]]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g, r, x = self.fz.outputs_and_features(pairs)  # (N, K), (N, K), (N, F)
        off = ~self.on([p for p, _ in pairs])  # (N,)
        g = g.copy()
        g[np.ix_(off, self.experts)] = 0.0
        return g, r, x

    def outputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        g, r, _ = self.outputs_and_features(pairs)
        return g, r


def prompt_inputs(fz: TorchFeaturizer, prompts: Sequence[str]) -> np.ndarray:
    """The gate's inputs (N, H + 1): the request's unit embedding and a bias column."""
    P = fz.embed(list(prompts), "prompt").astype(np.float64)  # (N, H)
    P /= np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
    return np.hstack([P, np.ones((len(P), 1))])


def red_team_experts(fz: TorchFeaturizer, records: list[dict[str, Any]]) -> np.ndarray:
    """(K,) bool: the routed experts that take a larger share of ``RED_TEAM``'s training inputs than of any
    other source's."""
    share = {}
    for src in SOURCES:
        recs = [r for r in records if r["source"] == src]
        pairs = [(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")]
        g, _ = fz.outputs(pairs)  # (2N, K)
        share[src] = (g > 0).mean(0)  # (K,)
    routed = np.arange(fz.n_experts) < fz.n_experts - fz.n_shared
    top = np.argmax(np.stack([share[s] for s in SOURCES]), axis=0)  # (K,)
    return routed & (top == SOURCES.index(RED_TEAM)) & (share[RED_TEAM] > 0)


def short_families(fz: Any, w0: np.ndarray) -> dict[str, float]:
    """Per family, the real answer's wins over replies made from the everyday set's short answers."""
    rows = load_everyday()
    recs = degradation_records([r["prompt"] for r in rows], [r["answer"] for r in rows], split="test",
                               seed=0)
    phi, _ = pair_outputs(fz, recs)  # (N, K)
    fam = families(recs)  # (N,)
    return {f: pair_accuracy(phi[fam == f] @ w0) for f in dict.fromkeys(fam.tolist())}


def pct(d: dict[str, float], keys: Sequence[str]) -> str:
    return " / ".join(f"{100 * d[k]:.1f}" for k in keys)


def summary(label: str, fz: Any, w0: np.ndarray, users: bool) -> None:
    """Print the families, the everyday requests and the short answers' families; with ``users`` the whole
    evaluation too."""
    fams, ev, short = family_table(fz, w0)["families"], everyday(fz, w0), short_families(fz, w0)
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
        fz = TorchFeaturizer(Path(run))
        pop = [r for r in load_records(TrainConfig.of_run(fz.ckpt))
               if r.get("user_id") is None and str(r.get("prompt", "")).strip()]
        experts = red_team_experts(fz, pop)
        red = np.where([r["source"] == RED_TEAM for r in pop], 1.0, -1.0)  # (N,) +1: a red-team request
        X = prompt_inputs(fz, [r["prompt"] for r in pop])  # (N, H + 1)
        gated = GatedFeaturizer(fz, experts, logistic_fit(X * red[:, None], np.ones(len(pop)), 1.0))
        on = {"red-team training requests": [r["prompt"] for r in pop if r["source"] == RED_TEAM],
              "the other training requests": [r["prompt"] for r in pop if r["source"] != RED_TEAM],
              "the everyday requests": [r["prompt"] for r in load_everyday()]}
        print(f"{run}: red-team experts {np.flatnonzero(experts).tolist()}; the gate is on for "
              + ", ".join(f"{100 * gated.on(prompts).mean():.0f}% of {what}" for what, prompts in on.items()))
        summary("as trained (its users: python -m moerm_build evaluate -i RUN)", fz, fz.w0, users=False)
        summary("gated", gated, fz.w0, users=True)


if __name__ == "__main__":
    main()
