"""Would a helpfulness read-out that is not linear catch bad replies nobody listed, in the model itself?

    python experiments/mlp_readout.py                    # runs/ship, ~10 minutes on 2 CPU cores (cached)
    python experiments/mlp_readout.py --run runs/x --hidden 62 --epochs 3 --weight-decay 1e-2

Feeds docs/decisions/bad-replies.md (issue 26: a reward not linear
in the features). ``moerm_build.evaluate.robustness.readout_family_out`` with a second read-out beside the shipped linear
one: the trained experts of a run kept, the read-out refitted on the run's own read-out records without
each degradation family, and scored on the held-out answers (torch fp32). The second read-out is the
linear one (fitted first, as shipped) plus a one-hidden-layer ReLU network on the standardised features,
trained on top of it with the Bradley-Terry loss (AdamW, batches of 256, a fixed number of epochs), all
under the head's reward bound: r(h) = c tanh((h . u + w2 . relu(h W + b)) / c). With ``hidden`` <= the
head's ``expert_hidden`` - 2 it is one expert of the head as it stands (the linear part takes two hidden
units, ``moerm_build.train.readout.readout_expert``), so no graph or runtime change would ship it. Nothing here is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from moerm_build.data.degrade import FAMILIES
from moerm_build.evaluate.metrics import pair_accuracy
from moerm_build.evaluate.robustness import families, family_of, family_out_records, trained_families
from moerm_build.train.readout import fit_for_head, readout_margin
from moerm_build.train.train import readout_refit
from nonlinear_readout_probe import train_bradley_terry  # the sibling experiment's Bradley-Terry loop

ROOT = Path(__file__).resolve().parents[1]


def fit_mlp_readout(Hc: np.ndarray, Hr: np.ndarray, off: np.ndarray, u: np.ndarray, bound: float, hidden: int,
                    epochs: int, weight_decay: float, seed: int = 0) -> torch.nn.Module:
    """The network on top of the linear read-out ``u`` (F,): Hc, Hr (N, F) standardised, off (N,) the
    trained experts' margin. Returns a module h (B, F) -> reward (B,) (linear part included, bounded)."""
    torch.manual_seed(seed)

    class Readout(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.u = torch.nn.Parameter(torch.as_tensor(u, dtype=torch.float32))  # (F,) starts as shipped
            out = torch.nn.Linear(hidden, 1)
            torch.nn.init.zeros_(out.weight)  # starts as the linear read-out exactly
            self.mlp = torch.nn.Sequential(torch.nn.Linear(len(u), hidden), torch.nn.ReLU(), out)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            a = h @ self.u + self.mlp(h).squeeze(-1)  # (B,)
            return bound * torch.tanh(a / bound) if bound > 0 else a

    net = Readout()
    tc, tr, to = (torch.as_tensor(a, dtype=torch.float32) for a in (Hc, Hr, off))
    return train_bradley_terry(net, net.mlp.parameters(), tc, tr, epochs, weight_decay, offset=to)  # u as fitted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "ship"), help="a training run")
    ap.add_argument("--hidden", type=int, default=62)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rf = readout_refit(args.run)
    cfg, base, recs, Hc, Hr, off = rf.cfg, rf.base, rf.records, rf.chosen, rf.rejected, rf.offset
    fam = np.array([family_of(r["source"]) for r in recs])  # (N,) "" for real comparisons
    test = family_out_records()[2]
    fam_te = families(test)
    Tc, Tr, toff = rf.inputs(test)
    bound = float(base.args.reward_bound)
    trained = set(trained_families({"sources": cfg.sources,
                                    "degrade_families": cfg.degrade_families if "degrade" in cfg.sources else []}))
    print(f"{args.run}: read-out refitted without each family; held-out answers, torch fp32; MLP {args.hidden} "
          f"hidden, {args.epochs} epochs, weight decay {args.weight_decay:g}")
    print(f"{'family':18}{'pairs':>7}{'linear':>8}{'+ MLP':>8}  (in the read-out's records / experts trained)")
    for f in FAMILIES:
        te = fam_te == f
        if not te.any():
            continue
        keep = fam != f  # (N,)
        u = fit_for_head(base, Hc[keep], Hr[keep], off[keep], cfg.readout_l2)  # (F,)
        lin = readout_margin(Tc[te], Tr[te], toff[te], u, bound)  # (M,)
        net = fit_mlp_readout(Hc[keep], Hr[keep], off[keep], u, bound, args.hidden, args.epochs,
                              args.weight_decay)
        with torch.no_grad():
            rc, rr = (net(torch.as_tensor(T[te], dtype=torch.float32)).double().numpy() for T in (Tc, Tr))
        mlp = toff[te] + rc - rr  # (M,)
        note = ("in records" if (fam == f).any() else "never trained") + (", experts trained" if f in trained else "")
        print(f"{f:18}{int(te.sum()):7d}{100 * pair_accuracy(lin):8.1f}{100 * pair_accuracy(mlp):8.1f}  ({note})",
              flush=True)


if __name__ == "__main__":
    main()
