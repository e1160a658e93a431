"""Which worse replies beat an everyday request's answer, and which experts carry them? One training run.

    python experiments/everyday_losses.py --run runs/ship [--names runs/ship/eval_torch.json] [--top 4]
    python experiments/everyday_losses.py --run runs/ship --readout-l2 0.03 0.1 0.3 1 3  # stronger read-out?

Feeds docs/decisions/bad-replies.md. Scores the everyday requests
(``moerm_build/data/evalsets/everyday.jsonl``, evaluation only) against their terse, generic, dismissive and
refusal replies with the run's trained model (torch, fp32, the population weights ``w0``), as ``python -m
moerm_build robustness`` does through a folder: pairs won by kind and the share of requests whose answer beats
every worse reply. Then, for each worse reply that beats at least one answer, how many it beats and the
experts whose mean contribution to the margin (answer minus reply, ``pi_k w0_k r_k``, over the requests it
beats) favours the reply most, named as the run's evaluation names them (``--names``: the JSON of ``python -m
moerm_build evaluate -i RUN -o``; else by index). With ``--readout-l2``, could a stronger read-out outweigh
those experts? The run's read-out refitted at each L2 on its own read-out records (``readout_refit``, as
``train`` fits it), the rest of the head kept: the everyday summary and HH-RLHF helpful's test split. A minute
on 2 CPU cores with the run's embeddings cached (two with the scan). Needs the export extra.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from moerm_build import data
from moerm_build.evaluate.metrics import TorchFeaturizer, pair_accuracy
from moerm_build.evaluate.robustness import (EVERYDAY_KINDS, answer_first, everyday, everyday_records,
                                             pair_outputs)
from moerm_build.train.readout import fit_for_head, readout_margin
from moerm_build.train.train import readout_refit


def readout_scan(run: Path, l2s: list[float]) -> None:
    """Print, for the run's read-out refitted at each L2 in ``l2s`` (the experts kept), the everyday requests'
    pairs won and answers first, and HH-RLHF helpful's test split."""
    rf = readout_refit(run)
    recs = everyday_records()
    prompts = np.array([r["prompt"] for r in recs])  # (E,)
    hh = data.REAL_LOADERS["hh_helpful"](Path(rf.cfg.data_dir), split="test")
    scored = {"everyday": rf.inputs(recs), "hh_helpful": rf.inputs(hh)}
    bound = float(rf.base.args.reward_bound)
    print(f"the read-out refitted on the run's {len(rf.records)} read-out records "
          f"(its L2 {rf.cfg.readout_l2:g})")
    for l2 in l2s:
        u = fit_for_head(rf.base, rf.chosen, rf.rejected, rf.offset, l2)  # (F,)
        margin = {name: readout_margin(*inputs, u, bound) for name, inputs in scored.items()}  # name -> (M,)
        won, first = pair_accuracy(margin["everyday"]), answer_first(margin["everyday"] > 0, prompts)
        print(f"  L2 {l2:g}: everyday pairs won {100 * won:.1f}%, the answer first for {100 * first:.1f}% "
              f"of the requests; HH helpful {100 * pair_accuracy(margin['hh_helpful']):.1f}%")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/ship", help="a training run (ckpt.pt)")
    p.add_argument("--names", default=None, help="the run's evaluation report (expert_names)")
    p.add_argument("--top", type=int, default=4, help="experts listed per winning reply")
    p.add_argument("--readout-l2", type=float, nargs="*", default=[], metavar="L2",
                   help="also refit the run's read-out at each L2 and score it")
    args = p.parse_args(argv)
    fz = TorchFeaturizer(Path(args.run))
    names = (json.loads(Path(args.names).read_text())["expert_names"] if args.names
             else [f"expert {k}" for k in range(len(fz.w0))])
    ev = everyday(fz, fz.w0)  # the robustness report's own summary (0.2 s: the embeddings are cached)
    print(f"{args.run}: {ev['n_requests']} everyday requests, {ev['n_pairs']} pairs; "
          f"pairs won {100 * ev['wins']:.1f}% (" + ", ".join(f"{k} {100 * ev[k]:.1f}" for k in EVERYDAY_KINDS)
          + f"); the answer first for {100 * ev['answer_first']:.1f}% of the requests")
    recs = everyday_records()
    phi, _ = pair_outputs(fz, recs)  # (N, K) answer minus reply, per expert
    contrib = phi * fz.w0  # (N, K)
    win = contrib.sum(1) > 0  # (N,)
    replies = np.array([r["rejected"] for r in recs])
    for reply, n in Counter(replies[~win].tolist()).most_common():
        lost = ~win & (replies == reply)
        mean = contrib[lost].mean(0)  # (K,)
        worst = ", ".join(f"{names[k]} {mean[k]:+.2f}" for k in np.argsort(mean)[:args.top])
        margin = contrib[lost].sum(1).mean()
        print(f"  {reply[:48]!r} beats {n} answers; margin {margin:+.2f}; for it: {worst}")
    if args.readout_l2:
        readout_scan(Path(args.run), args.readout_l2)


if __name__ == "__main__":
    main()
