"""The token budget: what a shorter ``max_length`` buys in speed and costs in quality.

    python -m bench.truncation            # about 5 minutes on 2 cores
    python -m bench.truncation --quick

The shipped model is copied with ``max_length`` set lower in its config (the graphs take any length up
to the position table; a prompt over the budget keeps its end, a response its start). For each budget:
texts/s on the ranking workload of ``bench/run.py``, the share of texts cut, held-out accuracy of the
population score on HH-RLHF helpful / harmless and FineGrained QA, the sanity suite's weakest kind, and
the share of pairwise decisions on those sets that agree with the full budget.

Needs ../shared/data and the export extra (it reads the data through ``moerm_build``).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.run import cpu_description, model_variant, timeit
from moerm_build.data import ranking_workload
from moerm_lite import RewardModel
from moerm_lite.text import TextTokenizer

BUDGETS = (256, 192, 128, 96, 64)


def with_budget(model: RewardModel, max_length: int, tmp: Path) -> RewardModel:
    """The model cutting texts at ``max_length`` tokens."""
    return model_variant(model, tmp, f"L{max_length}", replace(model.config, max_length=max_length))


def held_out_sets(limit: int | None) -> tuple[dict[str, list[tuple[str, str, str]]], np.ndarray]:
    """(prompt, chosen, rejected) rows of the held-out human-labelled sets and of the sanity suite, and
    the sanity rows' kinds."""
    from moerm_build import data
    from moerm_build.evaluate.real_eval import HUMAN_LABELLED, sanity_records

    sets = {name: load(split="test") for name, load in HUMAN_LABELLED.items()}
    out = {k: [(r["prompt"], r["chosen"], r["rejected"]) for r in v[:limit]] for k, v in sets.items()}
    suite = sanity_records(data.load_dsp()[:limit])
    out["sanity"] = [(r["prompt"], r["chosen"], r["rejected"]) for r in suite]
    return out, np.array([r["kind"] for r in suite])


def margins(model: RewardModel, rows: list[tuple[str, str, str]]) -> np.ndarray:
    """score(chosen) - score(rejected), (N,)."""
    s = model.score_pairs([(p, c) for p, c, _ in rows] + [(p, r) for p, _, r in rows])  # (2N,)
    return s[: len(rows)] - s[len(rows):]


def cut_shares(tok: TextTokenizer, rows: list[tuple[str, str, str]]) -> tuple[float, float]:
    """Shares of the distinct prompts and responses longer than the tokenizer's budget (tokenizing only)."""
    prompts = sorted({p for p, _, _ in rows if p.strip()})
    responses = sorted({x for _, c, r in rows for x in (c, r)})
    return float(np.mean(tok.encode(prompts, "prompt")[1])), float(np.mean(tok.encode(responses, "response")[1]))


def main() -> None:
    from moerm_build.data.contrast import KINDS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = RewardModel.load(threads=args.threads)
    pairs = ranking_workload(8 if args.quick else 64, 8)
    sets, kinds = held_out_sets(40 if args.quick else None)
    human = [r for k in ("hh_helpful", "hh_harmless", "finegrained_qa") for r in sets[k]]
    rows: list[tuple] = []
    ref: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as t:
        for L in BUDGETS:
            m = model if L == model.config.max_length else with_budget(model, L, Path(t))
            t_run = timeit(lambda m=m: m.score_pairs(pairs), 1 if args.quick else 3)
            d = {k: margins(m, v) for k, v in sets.items()}
            ref = ref or d
            acc = {k: 100 * float(np.mean(d[k] > 0)) for k in ("hh_helpful", "hh_harmless", "finegrained_qa")}
            sanity_min = min(100 * float(np.mean(d["sanity"][kinds == k] > 0)) for k in KINDS)
            agree = 100 * float(np.mean(np.concatenate([np.sign(d[k]) == np.sign(ref[k]) for k in d])))
            rows.append((L, len(pairs) / t_run, *cut_shares(TextTokenizer(m.folder / "tokenizer.json", L), human), acc, sanity_min, agree))
    print(f"token budget: {len(pairs)} texts of the ranking workload, {args.threads} threads, {cpu_description()}; "
          f"quality on {len(human)} held-out human-labelled pairs and {len(sets['sanity'])} sanity pairs")
    print(f"{'max_length':>10} {'texts/s':>8} {'x full':>7} {'prompts cut':>11} {'replies cut':>11} "
          f"{'HH helpful':>10} {'HH harmless':>11} {'QA':>6} {'sanity min':>10} {'decisions = full':>16}")
    base = rows[0][1]
    for L, tps, p_cut, r_cut, acc, smin, agree in rows:
        print(f"{L:>10} {tps:8.1f} {tps / base:6.2f}x {100 * p_cut:10.1f}% {100 * r_cut:10.1f}% "
              f"{acc['hh_helpful']:9.1f}% {acc['hh_harmless']:10.1f}% {acc['finegrained_qa']:5.1f}% "
              f"{smin:9.1f}% {agree:15.1f}%")


if __name__ == "__main__":
    main()
