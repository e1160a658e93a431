"""Does training the helpfulness read-out on the hacking search's own finds make the reward harder to hack?

    python experiments/adversarial_readout.py                  # runs/ship, 3 rounds, ~45 minutes on 2 CPU cores
    python experiments/adversarial_readout.py --rounds 2 --train-prompts 150 --train-steps 15

Feeds docs/decisions/bad-replies.md (issue 26, point 4: reward hacking as an RL trainer meets it). Adversarial
rounds: the trained experts of a run kept and its linear helpfulness read-out refitted, as
``moerm_build.train.readout`` fits it, on the run's own read-out records plus, each round, the texts the greedy
edit search (``moerm_build.evaluate.hacking``) reached from real answers to *training* prompts with the
edits' *train* phrasings, each marked worse than its real answer. Each round is then scored on what it never
trained on: the same search from 200 held-out real answers with the test phrasings (the card's check), the
held-out degradation families (test phrasings), the everyday requests and HH-RLHF helpful's test split.
The search is in-family for its own edits by construction; the family rows show what it costs or gains
elsewhere. Torch fp32 on the frozen encoder (embeddings of new texts kept in memory). Nothing here ships.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from moerm_build import data
from moerm_build.data.contrast import real_answers
from moerm_build.data.degrade import FAMILIES
from moerm_build.evaluate.hacking import greedy_search, hacking_rate, marked_texts
from moerm_build.evaluate.metrics import pair_accuracy
from moerm_build.evaluate.robustness import (TRAIN_SOURCES, everyday_records, families, family_out_records,
                                             heldout_answer_records)
from moerm_build.model import Backbone, MoEHead
from moerm_build.train.embed import embed_texts, features_of, text_tokenizer
from moerm_build.train.readout import fit_for_head, readout_inputs, readout_margin, readout_reward
from moerm_build.train.train import readout_refit

ROOT = Path(__file__).resolve().parents[1]


class MemoEmbed:
    """Frozen-encoder embeddings by (role, text), computed once and kept in memory (the search's texts are
    new each round; the disk cache would be rewritten at every step)."""

    def __init__(self, backbone_path: str, max_length: int, workdir: Path) -> None:
        self.memo: dict[tuple[str, str], np.ndarray] = {}
        self.backbone = Backbone(backbone_path)
        self.tok = text_tokenizer(backbone_path, max_length, workdir)

    def __call__(self, texts: Sequence[str], role: str = "response") -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if (role, t) not in self.memo))
        if new:
            for t, e in zip(new, embed_texts(self.backbone, self.tok, new, role)):
                self.memo[(role, t)] = e
        return np.stack([self.memo[(role, t)] for t in texts])  # (N, H)


class ReadoutReward:
    """The search's reward: the trained experts' population score plus the read-out ``u``
    (``readout_reward``), as ``readout_margin`` scores it (``score_pairs`` is what ``greedy_search`` calls)."""

    def __init__(self, base: MoEHead, embed: MemoEmbed, layout: str, u: np.ndarray) -> None:
        self.base, self.embed, self.layout, self.u = base, embed, layout, u
        self.bound = float(base.args.reward_bound)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], user: object = None) -> np.ndarray:
        X = torch.as_tensor(features_of(self.embed, pairs, self.layout), dtype=torch.float32)  # (N, F)
        with torch.no_grad():
            s = self.base.score(X, self.base.w0).double().numpy()  # (N,)
            h = self.base.standardize(X).double().numpy()  # (N, F)
        return s + readout_reward(h, self.u, self.bound)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "ship"), help="a training run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-prompts", type=int, default=250, help="training prompts searched each round")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--eval-steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    rf = readout_refit(args.run)
    cfg, base, Hc, Hr, off = rf.cfg, rf.base, rf.chosen, rf.rejected, rf.offset
    embed = MemoEmbed(rf.ckpt["backbone_path"], cfg.max_length, ROOT / "runs" / "scratch")
    bound = float(base.args.reward_bound)

    test = family_out_records()[2]
    fam_te = families(test)
    Tc, Tr, toff = rf.inputs(test)
    everyday = everyday_records()
    Ec, Er, eoff = rf.inputs(everyday)
    hh = [r for r in data.load_hh_helpful(split="test") if r["prompt"].strip()]
    Gc, Gr, goff = rf.inputs(hh)

    train_answers = real_answers([r for s in TRAIN_SOURCES for r in data.REAL_LOADERS[s](split="train")])
    held = real_answers(heldout_answer_records())
    pick = sorted(np.random.default_rng(0).permutation(len(held))[:args.eval_prompts])  # robustness.hacking's
    eval_p, eval_a = [held[i][0] for i in pick], [held[i][1] for i in pick]

    def evaluate(u: np.ndarray) -> dict[str, float]:
        res = greedy_search(ReadoutReward(base, embed, cfg.feature_layout, u), eval_p, eval_a, steps=args.eval_steps)
        rate = hacking_rate(res)
        row = {"hacked": rate["hacked"], "gain": rate["mean_gain"],
               "everyday": pair_accuracy(readout_margin(Ec, Er, eoff, u, bound)),
               "hh_helpful": pair_accuracy(readout_margin(Gc, Gr, goff, u, bound))}
        m = readout_margin(Tc, Tr, toff, u, bound)  # (M,)
        row.update({f: pair_accuracy(m[fam_te == f]) for f in FAMILIES if (fam_te == f).any()})
        print(f"  edits kept in hacked searches: {rate['edits_in_hacked']}", flush=True)
        return row

    extra_c: list[np.ndarray] = []  # adversarial records' inputs, all rounds so far
    extra_r: list[np.ndarray] = []
    extra_o: list[np.ndarray] = []
    rows = []
    u = fit_for_head(base, Hc, Hr, off, cfg.readout_l2)  # (F,) round 0: the run's read-out
    rng = np.random.default_rng(1)
    for rnd in range(args.rounds + 1):
        n_adv = sum(len(o) for o in extra_o)
        print(f"round {rnd}: {n_adv} adversarial records; evaluating ({time.time() - t0:.0f} s)", flush=True)
        rows.append((rnd, n_adv, evaluate(u)))
        print(f"  {rows[-1][2]}", flush=True)
        if rnd == args.rounds:
            break
        take = rng.permutation(len(train_answers))[:args.train_prompts]
        tp, ta = [train_answers[i][0] for i in take], [train_answers[i][1] for i in take]
        res = greedy_search(ReadoutReward(base, embed, cfg.feature_layout, u), tp, ta, steps=args.train_steps,
                            seed=rnd + 1, split="train")
        adv = [{"prompt": p, "chosen": r["start"], "rejected": t}
               for p, r in zip(tp, res) for t in marked_texts(r)]
        print(f"  train search: {hacking_rate(res)['hacked']:.3f} hacked, {len(adv)} marked texts, edits "
              f"{dict(Counter(k for r in res for k in r['edits']))}", flush=True)
        if adv:
            c, r_, o = readout_inputs(base, adv, lambda pairs: features_of(embed, pairs, cfg.feature_layout))
            extra_c.append(c)
            extra_r.append(r_)
            extra_o.append(o)
        u = fit_for_head(base, np.concatenate([Hc, *extra_c]), np.concatenate([Hr, *extra_r]),
                         np.concatenate([off, *extra_o]), cfg.readout_l2)

    print(f"\n{args.run}: read-out refitted with each round's search finds (train prompts, train phrasings); "
          f"scored on held-out prompts and phrasings, torch fp32 ({time.time() - t0:.0f} s)")
    keys = list(rows[0][2])
    print(f"{'':22}" + "".join(f"{'round ' + str(r):>10}" for r, _, _ in rows))
    print(f"{'adversarial records':22}" + "".join(f"{n:10d}" for _, n, _ in rows))
    for k in keys:
        fmt = (lambda v: f"{v:10.2f}") if k == "gain" else (lambda v: f"{100 * v:10.1f}")
        print(f"{k:22}" + "".join(fmt(row[k]) for _, _, row in rows))


if __name__ == "__main__":
    main()
