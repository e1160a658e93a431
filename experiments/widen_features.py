"""Do the word-trigram statistics help on their own, with the experts left exactly as trained?

    python experiments/widen_features.py runs/ship runs/v2pad     # seconds; then
    python -m moerm_build release build --resume --runs runs/v2pad --out runs/v2pad/moerm-minilm

Feeds docs/decisions/features.md ("Word-trigram statistics").

Writes ``OUT/ship/ckpt.pt``: the checkpoint of ``RUN`` (trained on pair features ``prompt_response_v1``)
with its read-outs removed and its head widened to ``prompt_response_v2``: the two new columns
(``moerm_lite.features.WORD_STATISTICS``) get zero weight in the router and in every expert, and their
standardisation from the run's own training pairs, so the trained experts compute what they computed
before. ``release build --resume`` then fits the read-outs (helpfulness and attribute) on the wider
features, where the new columns can matter, and evaluates as usual. A full rebuild with v2 features
retrains the experts as well: the difference between the two separates what the statistics do from
what another training run does. Feeds docs/decisions/features.md (with
``experiments/compare_reports.py``); answer there: not shipped.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from moerm_build.model import MoEHead
from moerm_build.train.embed import EmbeddingCache
from moerm_build.train.readout import without_readout
from moerm_build.train.train import Comparisons, TrainConfig, load_checkpoint, load_records
from moerm_lite.features import SURFACE, WORD_STATISTICS, word_statistics

V2 = "prompt_response_v2"


def widen(head: MoEHead, at: int, mean: np.ndarray, std: np.ndarray) -> MoEHead:
    """``head`` taking ``len(mean)`` more feature columns at position ``at``, each with zero weight."""
    E = len(mean)
    new = MoEHead(replace(head.args, n_features=head.args.n_features + E))
    sd = {k: v.detach().clone() for k, v in head.state_dict().items()}

    def insert(t: torch.Tensor, dim: int, fill: torch.Tensor) -> torch.Tensor:
        a, b = t.narrow(dim, 0, at), t.narrow(dim, at, t.shape[dim] - at)
        return torch.cat([a, fill.to(t.dtype), b], dim)

    sd["feat_mean"] = insert(sd["feat_mean"], 0, torch.as_tensor(mean))
    sd["feat_std"] = insert(sd["feat_std"], 0, torch.as_tensor(std))
    sd["router.weight"] = insert(sd["router.weight"], 1, torch.zeros(sd["router.weight"].shape[0], E))  # (Kr, F)
    K, _, D = sd["w1"].shape
    sd["w1"] = insert(sd["w1"], 1, torch.zeros(K, E, D))  # (K, F, D)
    sd["w1_mask"] = new.w1_mask
    new.load_state_dict(sd)
    new.eval()
    return new


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    ckpt, head = load_checkpoint(run)
    if ckpt["config"]["feature_layout"] != "prompt_response_v1":
        raise SystemExit(f"{run}: needs a run on prompt_response_v1 features")
    cfg = TrainConfig.of_run(ckpt)
    pairs = Comparisons.build(load_records(cfg)).pairs
    S = np.array([word_statistics(p, r) for p, r in pairs])  # (T, 2) the training pairs' new columns
    base = without_readout(head)
    wide = widen(base, base.args.n_features - len(SURFACE), S.mean(0), S.std(0) + 1e-6)  # at 2H
    cache = EmbeddingCache(ckpt["backbone_path"], cfg.max_length, layout="prompt_response_v1")
    some = [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))[:512]]
    x1 = torch.from_numpy(cache.features(some))  # (512, F)
    cache.layout = V2
    x2 = torch.from_numpy(cache.features(some))  # (512, F + 2)
    with torch.no_grad():
        a, b = base(x1), wide(x2)
    for key in ("gating_output", "rewards"):  # the same function of the old columns
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5)
    ckpt.update(model_args=asdict(wide.args), head={k: v.detach().cpu() for k, v in wide.state_dict().items()},
                readout=None, expert_names=ckpt["expert_names"][:base.args.n_experts])
    ckpt["config"]["feature_layout"] = V2
    (out / "ship").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out / "ship" / "ckpt.pt")
    shutil.copy(run / "times.json", out / "ship" / "times.json")
    print(json.dumps({"from": str(run), "to": str(out / "ship" / "ckpt.pt"), "columns": list(WORD_STATISTICS),
                      "mean": S.mean(0).tolist(), "std": S.std(0).tolist(), "experts": base.args.n_experts}))


if __name__ == "__main__":
    main()
