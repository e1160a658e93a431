"""Does fine-tuning the top backbone layer move what the frozen encoder bounds? A CPU-sized measurement.

    python scripts/finetune_probe.py                   # HH-RLHF helpful, ~15 minutes on 2 cores
    python scripts/finetune_probe.py --set hh_harmless

The card's reference probe (logistic regression on the pair features of ``moerm_lite.features``, fitted on
one set's train split) is scored on the held-out test split twice: on the frozen encoder, and after the
encoder's top transformer layer was trained on the same train split together with a linear Bradley-Terry
reward (the layers below are run once and cached, which is what makes this fit on a CPU). The gap says whether the lever the
model card names (fine-tuning the top layers, ``--train-backbone-layers``) moves human-labelled accuracy,
before anyone pays for a full GPU build.

Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.embed import default_backbone_path, text_tokenizer, torch_pair_features  # noqa: E402
from export.evaluate import logistic_fit, pair_accuracy  # noqa: E402
from export.model import Backbone  # noqa: E402
from export.real_eval import HUMAN_LABELLED  # noqa: E402

PROBE_L2 = 10.0  # the card's frozen probe (export.real_eval.population)
SETS = HUMAN_LABELLED


class Cached:
    """Inputs of the top layer (the output of the layers below), per text, computed once."""

    def __init__(self, backbone: Backbone, tok, texts: list[str], role: str, batch: int = 32) -> None:
        ids, _ = tok.encode(texts, role)
        self.hidden: list[torch.Tensor] = [torch.empty(0)] * len(texts)  # (L_i, H) each
        order = np.argsort([len(x) for x in ids], kind="stable")
        top = len(backbone.encoder.encoder.layer) - 1
        with torch.no_grad():
            for s in range(0, len(texts), batch):
                idx = order[s:s + batch]
                feed = {k: torch.from_numpy(v) for k, v in tok.pad([ids[i] for i in idx]).items()}
                out = backbone.encoder(**feed, output_hidden_states=True).hidden_states[top]  # (B, L, H)
                for j, i in enumerate(idx):
                    self.hidden[i] = out[j, : len(ids[i])].clone()


def embed_top(layer: torch.nn.Module, hidden: list[torch.Tensor]) -> torch.Tensor:
    """Mean-pooled output of the top layer for a list of cached inputs, (N, H)."""
    L = max(h.shape[0] for h in hidden)
    x = torch.zeros(len(hidden), L, hidden[0].shape[1])  # (N, L, H)
    mask = torch.zeros(len(hidden), L)  # (N, L)
    for i, h in enumerate(hidden):
        x[i, : len(h)] = h
        mask[i, : len(h)] = 1
    ext = (1.0 - mask[:, None, None, :]) * torch.finfo(x.dtype).min  # (N, 1, 1, L) additive mask
    out = layer(x, attention_mask=ext)
    out = out[0] if isinstance(out, tuple) else out  # (N, L, H)
    return (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (N, H)


class PairSet:
    """A set's comparisons as cached inputs of the top layer for their prompts and responses."""

    def __init__(self, backbone: Backbone, tok, recs: list[dict]) -> None:
        prompts = sorted({r["prompt"] if r["prompt"].strip() else " " for r in recs})
        responses = sorted({x for r in recs for x in (r["chosen"], r["rejected"])})
        self.P, self.R = Cached(backbone, tok, prompts, "prompt"), Cached(backbone, tok, responses, "response")
        pi, ri = {p: i for i, p in enumerate(prompts)}, {t: i for i, t in enumerate(responses)}
        self.recs = recs
        self.p = [pi[r["prompt"] if r["prompt"].strip() else " "] for r in recs]
        self.c, self.r = [ri[r["chosen"]] for r in recs], [ri[r["rejected"]] for r in recs]

    def features(self, layer: torch.nn.Module, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair features (B, F) of chosen and of rejected for comparison rows."""
        prompts = [self.recs[i]["prompt"] for i in rows]
        P = embed_top(layer, [self.P.hidden[self.p[i]] for i in rows])  # (B, H)
        out = []
        for side, idx in (("chosen", self.c), ("rejected", self.r)):
            R = embed_top(layer, [self.R.hidden[idx[i]] for i in rows])  # (B, H)
            out.append(torch_pair_features(P, R, prompts, [self.recs[i][side] for i in rows]))  # (B, F)
        return out[0], out[1]


def diffs(pairs: PairSet, layer: torch.nn.Module) -> np.ndarray:
    """Pair features of chosen minus rejected, (N, F) float64."""
    n = len(pairs.c)
    with torch.no_grad():
        parts = [pairs.features(layer, np.arange(s, min(s + 256, n))) for s in range(0, n, 256)]
    return torch.cat([c - r for c, r in parts]).double().numpy()


def probe(train: PairSet, test: PairSet, layer: torch.nn.Module) -> float:
    """The card's reference: logistic regression (L2 10) on the train split's feature differences."""
    w = logistic_fit(diffs(train, layer), np.ones(len(train.c)), PROBE_L2)
    return pair_accuracy(diffs(test, layer) @ w)


def finetune(train: PairSet, layer: torch.nn.Module, epochs: int, seed: int = 0, batch: int = 32) -> torch.nn.Module:
    """The top layer trained jointly with a linear Bradley-Terry reward on standardised pair features (the
    reward's L2 matches the probe's); returns the trained layer."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    layer = copy.deepcopy(layer)
    n = len(train.c)
    X = torch.from_numpy(diffs(train, layer)).float()
    sd = X.std(0) + 1e-6  # (F,) scale of the differences, from the frozen encoder
    w = torch.zeros(X.shape[1], requires_grad=True)
    opt = torch.optim.AdamW([{"params": [w], "lr": 1e-2}, {"params": list(layer.parameters()), "lr": 2e-5}],
                            weight_decay=0.0)
    layer.train()
    for _ in range(epochs * -(-n // batch)):
        rows = np.sort(rng.choice(n, size=min(batch, n), replace=False))  # (B,)
        c, r = train.features(layer, rows)  # (B, F) each
        loss = -F.logsigmoid(((c - r) / sd) @ w).mean() + PROBE_L2 / n * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="hh_helpful", choices=sorted(SETS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="first N comparisons of each split (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    path = default_backbone_path()
    backbone = Backbone(path).eval()
    with tempfile.TemporaryDirectory() as t:
        tok = text_tokenizer(path, args.max_length, Path(t))
        train = PairSet(backbone, tok, SETS[args.set](split="train")[: args.limit])
        test = PairSet(backbone, tok, SETS[args.set](split="test")[: args.limit])
    top = backbone.encoder.encoder.layer[-1]
    t1 = time.time()
    frozen = probe(train, test, top)
    t2 = time.time()
    tuned = probe(train, test, finetune(train, top, args.epochs))
    t3 = time.time()
    print(f"{args.set}: {len(train.c)} train / {len(test.c)} test pairs, {args.epochs} epochs, 2 CPU threads "
          f"(cache {t1 - t0:.0f} s, frozen probe {t2 - t1:.0f} s, fine-tuning and probe {t3 - t2:.0f} s)")
    print(f"held-out accuracy of the probe on the pair features: frozen encoder {100 * frozen:.1f}%, "
          f"top layer fine-tuned on the train split {100 * tuned:.1f}%")


if __name__ == "__main__":
    main()
