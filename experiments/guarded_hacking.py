"""Does the repeated n-gram penalty docs/api.md advises for RL, or a length-neutral score, stop the greedy
hacking search?

    python experiments/guarded_hacking.py                      # shipped model, penalties 0 and 3, ~30 minutes
    python experiments/guarded_hacking.py --penalty 0 1 3 10 --prompts 100
    python experiments/guarded_hacking.py --penalty 0 3 --length   # the length-neutral score, ~30 minutes

Feeds docs/decisions/bad-replies.md (issue 26, point 4). The card's search (``moerm_build.evaluate.hacking``:
200 held-out real answers, 30 rounds, test phrasings) run on the shipped model's score minus ``penalty``
times the share of the reply's word n-grams already seen, earlier in the reply or in the prompt: a
repeated sentence and an echoed request are penalised, as an RL trainer's repetition penalty would. Prints,
per penalty, the share of prompts hacked, the edits kept in hacked searches and the mean penalty the real
answers themselves pay. ``--length`` runs the search on a length-neutral score instead: the score minus
its slope on the log word count of real answers of HH-RLHF helpful's *training* split (fitted there, so no
held-out text sets it) times the reply's log word count, as a reward debiased for length would be. Nothing
here ships.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from moerm_build import data
from moerm_build.data.contrast import real_answers
from moerm_build.evaluate.robustness import hacking, heldout_answer_records
from moerm_lite import RewardModel


def repeated_share(prompt: str, reply: str, n: int = 3) -> float:
    """Share of the reply's word n-grams that occurred before: in the prompt or earlier in the reply."""
    words = re.findall(r"\w+", reply.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    pw = re.findall(r"\w+", prompt.lower())
    seen = {tuple(pw[i:i + n]) for i in range(len(pw) - n + 1)}
    repeated = 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated / len(grams)


def log_words(replies: Sequence[str]) -> np.ndarray:
    """log(1 + words) of each reply, (N,)."""
    return np.log1p([len(r.split()) for r in replies])


class Guarded:
    """A model's score minus ``penalty`` times ``repeated_share`` and ``length`` times ``log_words`` (the
    search's ``score_pairs`` interface)."""

    def __init__(self, model: RewardModel, penalty: float, length: float = 0.0):
        self.model, self.penalty, self.length = model, penalty, length

    def score_pairs(self, pairs: Sequence[tuple[str, str]], user: Any = None) -> np.ndarray:
        s = self.model.score_pairs(pairs, user=user)  # (N,)
        s = s - self.length * log_words([r for _, r in pairs])  # (N,)
        return s - self.penalty * np.array([repeated_share(p, r) for p, r in pairs])  # (N,)


def length_slope(model: RewardModel, n: int = 500, seed: int = 0) -> float:
    """The least-squares slope of the score on ``log_words`` over ``n`` real answers of HH-RLHF helpful's
    training split."""
    answers = real_answers(data.load_hh_helpful(split="train"))
    pick = np.random.default_rng(seed).permutation(len(answers))[:n]
    prompts, replies = [answers[i][0] for i in pick], [answers[i][1] for i in pick]
    return float(np.polyfit(log_words(replies), model.score_pairs(list(zip(prompts, replies))), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--penalty", type=float, nargs="+", default=[0.0, 3.0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--length", action="store_true", help="the score made length-neutral (module docstring)")
    args = ap.parse_args()
    m = RewardModel.load()
    length = 0.0
    if args.length:
        length = length_slope(m)
        print(f"length-neutral: the score's slope on log(1 + words), training answers: {length:.3f}")
    answers = real_answers(heldout_answer_records())
    paid = float(np.mean([repeated_share(p, a) for p, a, _ in answers]))
    print(f"real answers' mean repeated share: {paid:.3f} (scores' std on them is about 1.4)")
    for penalty in args.penalty:
        h = hacking(Guarded(m, penalty, length), n_prompts=args.prompts, steps=args.steps)
        print(json.dumps({"penalty": penalty, "length": round(length, 3), "hacked": h["hacked"],
                          "mean_gain": round(h["mean_gain"], 3),
                          "edits_in_hacked": h["edits_in_hacked"]}), flush=True)


if __name__ == "__main__":
    main()
