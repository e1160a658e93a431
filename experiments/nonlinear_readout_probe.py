"""Would a reward that is not linear in the frozen pair features catch bad replies it never saw?

    python experiments/nonlinear_readout_probe.py          # ~10 minutes on 2 CPU cores (embeddings cached)
    python experiments/nonlinear_readout_probe.py --hidden 64 --epochs 8 --weight-decay 1e-3

Feeds docs/decisions/bad-replies.md (issue 26: a reward not linear
in the features). The family-out probe of ``moerm_build.evaluate.robustness.family_table`` (fitted on the licensed
training mixture plus every degradation family but the one scored, held-out answers and phrasings) with
two rewards on the same standardised frozen pair features (``moerm_lite.features``, fp32 MiniLM):

- linear: a logistic regression on chosen minus rejected (the card's probe, L2 10);
- MLP: r(x) = a linear term + a one-hidden-layer GELU network, trained with the Bradley-Terry loss
  -log sigmoid(r(chosen) - r(rejected)) (AdamW, batches of 256, a fixed number of epochs; no early
  stopping, which would need a held-out family to stop on).

The last row scores the everyday requests with both rewards fitted on every family. Not a model: the
shipped head's helpfulness read-out is linear (``moerm_build/train/readout.py``). Needs ../shared/data.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import torch

from moerm_build.data.degrade import FAMILIES
from moerm_build.evaluate.metrics import logistic_fit, pair_accuracy
from moerm_build.evaluate.robustness import PROBE_L2, everyday_records, families, family_out_records
from moerm_build.train.embed import EmbeddingCache, default_backbone_path


M = TypeVar("M", bound=torch.nn.Module)


def sides(cache: EmbeddingCache, recs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Pair features of each record's chosen and rejected reply: (N, F) twice."""
    pairs = sorted({(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")})
    pos = {p: i for i, p in enumerate(pairs)}
    X = cache.features(pairs).astype(np.float32)  # (P, F)
    return (X[[pos[(r["prompt"], r["chosen"])] for r in recs]],
            X[[pos[(r["prompt"], r["rejected"])] for r in recs]])


class Reward(torch.nn.Module):
    """r(x) = w . x + MLP(x): (B, F) -> (B,)."""

    def __init__(self, F: int, hidden: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(F, 1)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(F, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.linear(x) + self.mlp(x)).squeeze(-1)  # (B,)


def fit_reward(Xc: torch.Tensor, Xj: torch.Tensor, hidden: int, epochs: int, weight_decay: float,
               seed: int = 0) -> Reward:
    """The Bradley-Terry fit of ``Reward`` on chosen Xc (N, F) over rejected Xj (N, F)."""
    torch.manual_seed(seed)
    net = Reward(Xc.shape[1], hidden)
    return train_bradley_terry(net, net.parameters(), Xc, Xj, epochs, weight_decay)


def train_bradley_terry(net: M, params: Iterable[torch.nn.Parameter], Xc: torch.Tensor, Xj: torch.Tensor,
                        epochs: int, weight_decay: float, offset: torch.Tensor | None = None) -> M:
    """Train ``params`` of the reward ``net`` ((B, F) -> (B,)) with the Bradley-Terry loss
    -log sigmoid(offset + net(chosen) - net(rejected)) on Xc, Xj (N, F) (``offset`` (N,), e.g. the margin of
    experts held fixed; none: 0): AdamW at lr 1e-3, batches of 256, ``epochs`` passes. Returns it in eval
    mode. ``experiments/mlp_readout.py`` trains its read-out with it too."""
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=weight_decay)
    for _ in range(epochs):
        for idx in torch.randperm(len(Xc)).split(256):
            margin = net(Xc[idx]) - net(Xj[idx])  # (b,)
            loss = -torch.nn.functional.logsigmoid(margin if offset is None else offset[idx] + margin).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cache = EmbeddingCache(default_backbone_path(), 256, layout="prompt_response_v1")
    real, train_deg, test_deg = family_out_records()
    parts = {name: sides(cache, recs) for name, recs in
             (("real", real), ("train", train_deg), ("test", test_deg), ("everyday", everyday_records()))}
    fam_tr, fam_te = families(train_deg), families(test_deg)
    every = np.vstack([*parts["real"], *parts["train"]])  # (M, F) every training side
    mu, sd = every.mean(0), every.std(0) + 1e-6  # (F,)
    T = {k: tuple(torch.from_numpy((x - mu) / sd) for x in v) for k, v in parts.items()}
    print(f"family-out accuracy (%) on held-out answers; MLP: {args.hidden} hidden, {args.epochs} epochs, "
          f"weight decay {args.weight_decay:g}")
    print(f"{'family':18}{'linear':>8}{'MLP':>8}")
    for fam in [*FAMILIES, "everyday"]:
        keep = torch.from_numpy(fam_tr != fam)  # "everyday": every family
        Xc = torch.cat([T["real"][0], T["train"][0][keep]])  # (N, F)
        Xj = torch.cat([T["real"][1], T["train"][1][keep]])
        if fam == "everyday":
            tc, tj = T["everyday"]
        else:
            te = torch.from_numpy(fam_te == fam)
            if not te.any():
                continue
            tc, tj = T["test"][0][te], T["test"][1][te]
        d = (Xc - Xj).double().numpy()  # (N, F)
        v = logistic_fit(d, np.ones(len(d)), PROBE_L2)  # (F,)
        net = fit_reward(Xc, Xj, args.hidden, args.epochs, args.weight_decay)
        with torch.no_grad():
            mlp = (net(tc) - net(tj)).numpy()  # (E,)
        lin = (tc - tj).double().numpy() @ v  # (E,)
        print(f"{fam:18}{100 * pair_accuracy(lin):8.1f}{100 * pair_accuracy(mlp):8.1f}", flush=True)


if __name__ == "__main__":
    main()
