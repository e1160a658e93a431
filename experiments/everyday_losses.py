"""Which worse replies beat an everyday request's answer, and which experts carry them? One training run.

    python experiments/everyday_losses.py --run runs/ship [--names runs/ship/eval_torch.json] [--top 4]

Feeds docs/decisions/bad-replies.md. Scores the everyday requests
(``moerm_build/data/evalsets/everyday.jsonl``, evaluation only) against their terse, generic, dismissive and
refusal replies with the run's trained model (torch, fp32, the population weights ``w0``), as ``python -m
moerm_build robustness`` does through a folder: pairs won by kind and the share of requests whose answer beats
every worse reply. Then, for each worse reply that beats at least one answer, how many it beats and the
experts whose mean contribution to the margin (answer minus reply, ``pi_k w0_k r_k``, over the requests it
beats) favours the reply most, named as the run's evaluation names them (``--names``: the JSON of ``python -m
moerm_build evaluate -i RUN -o``; else by index). A minute on 2 CPU cores with the run's embeddings cached.
Needs the export extra.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from moerm_build.evaluate.metrics import TorchFeaturizer
from moerm_build.evaluate.robustness import EVERYDAY_KINDS, everyday, everyday_records, pair_outputs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/ship", help="a training run (ckpt.pt)")
    p.add_argument("--names", default=None, help="the run's evaluation report (expert_names)")
    p.add_argument("--top", type=int, default=4, help="experts listed per winning reply")
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


if __name__ == "__main__":
    main()
