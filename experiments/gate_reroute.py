"""Where the request gate is off, route to other experts instead of silencing the gated ones? A gated run.

    python experiments/gate_reroute.py --run runs/gate/ship

Feeds docs/decisions/bad-replies.md ("Shipped: the noise + empty replies encoder with the request gate"). The
shipped gate zeroes its experts' gates for a benign request: "No." loses their bonus, but "Nothing." loses
their penalty too, and nothing else scores it low, so "Nothing." still wins some everyday requests. This
measures the other way to keep those experts off: mask their router logits before the top-k, so a benign
request goes to the best two of the *other* routed experts, which do judge it. Torch fp32 on the run's
cached embeddings: the everyday requests and the degradation families on held-out answers
(``python -m moerm_build robustness``'s), and the families made from the everyday set's short answers, for the
run as trained, gated (the shipped rule) and rerouted. Persona statements have no request, so their users
are the same in all three. A few minutes on 2 CPU cores. Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moerm_build.evaluate.metrics import TorchFeaturizer
from moerm_build.evaluate.robustness import everyday, everyday_families, family_table
from moerm_build.model import MoEHead
from moerm_build.train.request_gate import prompt_embeddings


def rerouted_gates(head: MoEHead, h: torch.Tensor, off: np.ndarray, experts: Sequence[int]) -> torch.Tensor:
    """Dense gates (B, K) of standardised features ``h`` (B, F), the router's logits of ``experts`` set to
    -inf in the rows where ``off`` (B,) is True, so those rows pick their top-k among the other routed experts."""
    logits = head.router(h)  # (B, K - S)
    mask = torch.zeros_like(logits, dtype=torch.bool)  # (B, K - S)
    mask[np.flatnonzero(off)[:, None], list(experts)] = True
    logits = logits.masked_fill(mask, float("-inf"))
    top, idx = logits.topk(head.args.top_k, dim=-1)  # (B, k)
    sel = logits.softmax(-1).gather(1, idx) if head.args.top_k == 1 else top.softmax(-1)  # (B, k)
    pi = torch.zeros_like(logits).scatter(1, idx, sel)  # (B, K - S)
    return torch.cat([pi, torch.ones(len(h), head.args.n_shared, dtype=pi.dtype)], 1)  # (B, K)


class Rerouted:
    """A run's torch featurizer (with its request gate) that reroutes where the gate is off instead of
    silencing (``rerouted_gates``); everything else is the featurizer's."""

    def __init__(self, fz: TorchFeaturizer) -> None:
        if fz.request_gate is None:
            raise ValueError("the run has no request gate (release build --resume adds one)")
        self.fz, self.gate = fz, fz.request_gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fz, name)

    def outputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        g, r, _ = self.outputs_and_features(pairs)
        return g, r

    def outputs_and_features(self, pairs: Sequence[tuple[str, str]]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = self.fz.features(pairs)  # (N, F)
        prompts = [p for p, _ in pairs]
        off = ~self.gate.on(prompt_embeddings(self.fz.embed, prompts), prompts)  # (N,)
        head = self.fz.head
        with torch.no_grad():
            h = head.standardize(torch.from_numpy(x))  # (N, F)
            g = rerouted_gates(head, h, off, self.gate.experts)  # (N, K)
            r = head.rewards(h)  # (N, K)
        return g.numpy(), r.numpy(), x


def summary(label: str, fz: Any) -> None:
    fams, ev, short = family_table(fz, fz.w0)["families"], everyday(fz, fz.w0), everyday_families(fz, fz.w0)
    print(f"  {label}: everyday pairs {100 * ev['wins']:.1f}, answer first "
          f"{round(ev['answer_first'] * ev['n_requests'])} of {ev['n_requests']}")
    print("    families: " + ", ".join(f"{f} {100 * r['model']:.1f}" for f, r in fams.items()))
    print("    short answers: " + ", ".join(f"{f} {100 * v:.1f}" for f, v in short.items()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a training run with a request gate (ckpt.pt)")
    args = ap.parse_args(argv)
    gated = TorchFeaturizer(Path(args.run))
    rerouted = Rerouted(gated)
    plain = copy.copy(gated)  # the same head and embedding cache, without the gate
    plain.request_gate = None
    print(f"{args.run}: gated experts {list(rerouted.gate.experts)}")
    for label, fz in (("as trained", plain), ("gated (shipped: silenced)", gated), ("rerouted", rerouted)):
        summary(label, fz)


if __name__ == "__main__":
    main()
