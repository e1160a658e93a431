"""Does fine-tuning the top backbone layer move what the frozen encoder bounds? A CPU-sized measurement.

    python experiments/finetune_probe.py                   # HH-RLHF helpful, ~15 minutes on 2 cores
    python experiments/finetune_probe.py --set hh_harmless
    python experiments/finetune_probe.py --set attributes  # style attributes of replies, ~15 minutes
    python experiments/finetune_probe.py --set attributes --preserve 1 --save runs/minilm-style  # write it

Feeds docs/decisions/population-bound.md and docs/decisions/attribute-bound.md ("Fine-tuning the top layer
for style").

The card's reference probe (logistic regression on the pair features of ``moerm_lite.features``, fitted on
one set's train split) is scored on the held-out test split twice: on the frozen encoder, and after the
encoder's top transformer layer was trained on the same train split together with a linear Bradley-Terry
reward (the layers below are run once and cached, which is what makes this fit on a CPU). The gap says whether fine-tuning the
encoder (``python -m moerm_build finetune``, the build's one fine-tuning path) can move human-labelled accuracy,
before anyone pays for a full run of it.

``--set attributes`` asks the same of the attribute users (``moerm_build.data.attributes``), whose hedging, enthusiasm
and code the frozen encoder barely sees: the top layer is trained to predict the training pool's
standardised attributes from the normalised reply embedding (a linear map), with a penalty
``preserve * (1 - cos(tuned, frozen))`` that keeps the embedding close to the frozen one (which every
other expert and benchmark relies on). Each attribute is then read from the reply's embedding and text
statistics by a ridge regression fitted on the training pool and scored on the held-out pool (R^2, and
the share of the benchmark's same-prompt comparisons put in order); and the shipped model's attribute
read-outs are replaced by those regressions, frozen or tuned, to see what attribute users would gain
(few-shot accuracy through the model's own prior; the trained experts keep their frozen features). A last
row fits the shipped read-outs alone, as if the prior knew the user cares about attributes only.

Needs the export extra and ../shared/data.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from moerm_build.evaluate.metrics import logistic_fit, pair_accuracy
from moerm_build.evaluate.real_eval import HUMAN_LABELLED
from moerm_build.model import Backbone
from moerm_build.train.embed import default_backbone_path, text_tokenizer, torch_pair_features

ROOT = Path(__file__).resolve().parents[1]


PROBE_L2 = 10.0  # the card's frozen probe (moerm_build.evaluate.real_eval.population)
SETS = HUMAN_LABELLED
ATTRIBUTE_SET = "attributes"
PRESERVE = (1.0, 0.1)  # --set attributes: weights of the penalty that keeps embeddings near the frozen ones


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


def pooled(layer: torch.nn.Module, cache: Cached, batch: int = 128) -> torch.Tensor:
    """Mean-pooled top-layer output of every cached text, (N, H)."""
    with torch.no_grad():
        return torch.cat([embed_top(layer, cache.hidden[s:s + batch]) for s in range(0, len(cache.hidden), batch)])


def finetune_attributes(cache: Cached, z: np.ndarray, layer: torch.nn.Module, preserve: float, epochs: int,
                        seed: int = 0, batch: int = 32, frozen: torch.Tensor | None = None) -> torch.nn.Module:
    """The top layer trained to predict standardised attributes z (N, A) from the normalised pooled
    embedding through a linear map, plus ``preserve * (1 - cos(tuned, frozen))``; returns the trained layer.
    ``frozen``: ``pooled(layer, cache)`` if the caller has it already."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    frozen = F.normalize(pooled(layer, cache) if frozen is None else frozen, dim=1)  # (N, H)
    layer = copy.deepcopy(layer)
    target = torch.from_numpy(z).float()  # (N, A)
    lin = torch.nn.Linear(frozen.shape[1], z.shape[1])
    opt = torch.optim.AdamW([{"params": lin.parameters(), "lr": 1e-2}, {"params": layer.parameters(), "lr": 2e-4}],
                            weight_decay=0.0)
    by_length = np.argsort([h.shape[0] for h in cache.hidden], kind="stable")  # batches of similar length
    batches = [by_length[s:s + batch] for s in range(0, len(by_length), batch)]
    layer.train()
    for _ in range(epochs):
        for rows in rng.permutation(len(batches)):
            idx = batches[rows]
            e = F.normalize(embed_top(layer, [cache.hidden[i] for i in idx]), dim=1)  # (B, H)
            drift = (1.0 - (e * frozen[idx]).sum(1)).mean()
            loss = F.mse_loss(lin(10.0 * e), target[idx]) + preserve * drift
            opt.zero_grad()
            loss.backward()
            opt.step()
    return layer.eval()


def reply_view(emb: torch.Tensor, stats: np.ndarray) -> np.ndarray:
    """Replies' normalised embeddings (N, H) and their text statistics (N, S), (N, H + S) float64."""
    return np.hstack([F.normalize(emb, dim=1).double().numpy(), stats])


def reply_caches(pools: list[Any], max_length: int) -> tuple[Backbone, list[Cached]]:
    """all-MiniLM-L6-v2 and the cached top-layer inputs of each ``ResponsePool``'s replies."""
    path = default_backbone_path()
    backbone = Backbone(path).eval()
    with tempfile.TemporaryDirectory() as t:
        tok = text_tokenizer(path, max_length, Path(t))
        return backbone, [Cached(backbone, tok, pool.responses, "response") for pool in pools]


def shots_cell(acc: dict[str, float]) -> str:
    """Few-shot accuracy at N = 5 / 10 / 20 / 50 in percent."""
    return " / ".join(f"{100 * acc[n]:.1f}" for n in ("5", "10", "20", "50"))


def save_encoder(backbone: Backbone, top: torch.nn.Module, out: Path) -> None:
    """Write the backbone with ``top`` as its top layer as a local Hugging Face encoder folder (config,
    weights, tokenizer files), which ``export train --set backbone=...`` reads like any other."""
    import shutil

    tuned = copy.deepcopy(backbone.encoder)
    tuned.encoder.layer[-1].load_state_dict(top.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    tuned.save_pretrained(out)
    for f in Path(backbone.path).iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("vocab.txt", "special_tokens_map.json")):
            shutil.copy(f, out / f.name)


def save_main(args: argparse.Namespace) -> None:
    """Only tune the top layer on the training pool's attributes (the first --preserve) and write the encoder."""
    from moerm_build import data
    from moerm_build.train.train import attribute_training_pool

    train, _ = attribute_training_pool(data.DATA_DIR)
    backbone, (cache,) = reply_caches([train], args.max_length)
    top = finetune_attributes(cache, train.z, backbone.encoder.encoder.layer[-1], args.preserve[0], args.epochs)
    save_encoder(backbone, top, Path(args.save))
    print(f"wrote all-MiniLM-L6-v2 with its top layer tuned on {len(train.responses)} training replies' "
          f"attributes (preserve {args.preserve[0]:g}, {args.epochs} epochs) to {args.save}")


def attribute_main(args: argparse.Namespace) -> None:
    from moerm_build import data
    from moerm_build.data.attributes import ATTRIBUTE_WORDS, ATTRIBUTES, attribute_benchmark, pair_order
    from moerm_build.evaluate.metrics import RuntimeFeaturizer, few_shot
    from moerm_build.evaluate.real_eval import attribute_pool
    from moerm_build.train.readout import fit_ridge
    from moerm_build.train.train import attribute_training_pool
    from moerm_lite.features import SURFACE, pair_features
    from moerm_lite.model import DEFAULT_MODEL

    t0 = time.time()
    train, _ = attribute_training_pool(data.DATA_DIR)
    fz = RuntimeFeaturizer(ROOT / "models" / DEFAULT_MODEL)
    held = attribute_pool(fz, with_probe=False)  # the benchmark's held-out pool, through the shipped model
    test, phi = held["pool"], held["phi"]  # (R, K) expert outputs
    if fz.readout_names[-len(ATTRIBUTES):] != [ATTRIBUTE_WORDS[a][0] for a in ATTRIBUTES]:
        raise SystemExit(f"{DEFAULT_MODEL} has no attribute read-outs to replace")
    cols = np.arange(fz.n_experts - len(ATTRIBUTES), fz.n_experts)  # read-outs are appended last, in order
    backbone, caches = reply_caches([train, test], args.max_length)

    def statistics(texts: list[str]) -> np.ndarray:
        zeros = np.zeros((len(texts), backbone.n_embd), dtype=np.float32)
        return pair_features(zeros, zeros, [""] * len(texts), texts)[:, -len(SURFACE):].astype(np.float64)

    stats = [statistics(pool.responses) for pool in (train, test)]
    top = backbone.encoder.encoder.layer[-1]
    single = attribute_benchmark(test, n_users=100, n_attributes=1)  # the card's users
    multi = attribute_benchmark(test, n_users=100, n_attributes=None)
    by_attr = [attribute_benchmark(test, n_users=20, attribute=a, seed=100 + a) for a in range(len(ATTRIBUTES))]
    lam, P = fz.model.config.default_prior_strength, fz.prior_precision
    print(f"{len(train.responses)} training replies, {len(test.responses)} held-out replies "
          f"(cache {time.time() - t0:.0f} s); {args.epochs} epochs, 2 CPU threads")
    print("R^2 / same-prompt comparisons in order, ridge on [reply embedding, text statistics], held out:")
    print(f"{'encoder':<32}" + "".join(f"{a:>17}" for a in ATTRIBUTES) + f"{'cos to frozen':>15}")
    frozen = [pooled(top, c) for c in caches]  # (R, H) of the training and the held-out pool
    rows = []
    for preserve in (None, *args.preserve):
        emb = frozen
        if preserve is not None:
            layer = finetune_attributes(caches[0], train.z, top, preserve, args.epochs, frozen=frozen[0])
            emb = [pooled(layer, c) for c in caches]
        Vtr, Vte = (reply_view(e, s) for e, s in zip(emb, stats))
        mu, sd = Vtr.mean(0), Vtr.std(0) + 1e-8
        pred = np.empty((len(test.responses), len(ATTRIBUTES)))  # (R, A)
        cells = []
        for a in range(len(ATTRIBUTES)):
            u, b, _ = fit_ridge((Vtr - mu) / sd, train.z[:, a])
            pred[:, a] = (Vte - mu) / sd @ u + b
            r2 = 1 - np.mean((pred[:, a] - test.z[:, a]) ** 2) / test.z[:, a].var()
            cells.append(f"{r2:.2f} / {100 * pair_order(test, pred[:, a], a):.1f}%")
        cos = float(F.cosine_similarity(emb[1], frozen[1]).mean())
        name = "frozen" if preserve is None else f"top layer tuned, preserve {preserve:g}"
        print(f"{name:<32}" + "".join(f"{c:>17}" for c in cells) + f"{cos:>15.3f}", flush=True)
        rows.append((name, pred))
    print(f"\nattribute users through {DEFAULT_MODEL} (prior strength {lam:g}), its {len(ATTRIBUTES)} attribute "
          "read-outs replaced by those regressions; N = 5 / 10 / 20 / 50:")
    print(f"{'read-outs':<40}{'1 attribute':>26}{'2-3 attributes':>26}   by attribute, 1-attribute users at N = 10")
    for name, pred in [("shipped (pair features)", phi[:, cols]), *rows]:
        ph = phi.copy()
        ph[:, cols] = pred
        acc = [few_shot(ph, users, fz.w0, lam, P=P) for users in (single, multi)]
        per = [100 * few_shot(ph, u, fz.w0, lam, shots=(10,), P=P)["10"] for u in by_attr]
        print(f"{name:<40}" + "".join(f"{shots_cell(a):>26}" for a in acc) + "   "
              + " ".join(f"{v:.0f}" for v in per), flush=True)
    alone = phi[:, cols]  # the shipped read-outs without the other experts: what a perfect prior could reach
    acc = [few_shot(alone, users, np.zeros(len(cols)), 1.0) for users in (single, multi)]
    print(f"{'shipped read-outs alone (prior I, 1)':<40}" + "".join(f"{shots_cell(a):>26}" for a in acc))
    print(f"({time.time() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="hh_helpful", choices=sorted([*SETS, ATTRIBUTE_SET]))
    ap.add_argument("--epochs", type=int, default=None, help="3 (a human-labelled set) or 4 (attributes)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="first N comparisons of each split (a smoke run)")
    ap.add_argument("--preserve", type=float, nargs="+", default=list(PRESERVE),
                    help="--set attributes: weights of the penalty keeping embeddings near the frozen ones")
    ap.add_argument("--save", default=None, help="--set attributes: instead of measuring, write the encoder tuned "
                    "with the first --preserve value to this folder (a local Hugging Face encoder for export train)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.set == ATTRIBUTE_SET:
        args.epochs = args.epochs or 4
        (save_main if args.save else attribute_main)(args)
        return
    args.epochs = args.epochs or 3
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
