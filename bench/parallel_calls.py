"""One ranking call's backbone feeds run side by side: two workers on a one-thread session, or on the two-thread
session itself, and the runtime's way since (``moerm_lite.sessions.FeedHelper``: the calling thread and one
helper thread on the two-thread session), against one feed at a time on a two-thread session (before).

    python -m bench.parallel_calls           # about 5 minutes on 2 cores
    python -m bench.parallel_calls --quick

A ``rank()`` call of n replies runs the prompt and each reply as its own backbone feed (a long text alone is
faster than in a padded batch: docs/decisions/speed.md). Each feed's GEMMs are small, so two threads on one
feed wait on each other; two feeds on one thread each may keep both cores busier (two runs at once on the
two-thread session share its thread pool: a lone feed keeps both threads). Same graph, same feeds,
calls interleaved: p50 ms of the backbone feeds of ``rank()`` of 5 and 20 real replies (``bench/run.py``'s
workload) and of one (prompt, reply) pair (``score()`` of a single reply), the largest difference between the
two ways' embeddings, and the resident memory a second session of the graph adds (a runtime that kept both, a
two-thread one for a lone feed and a one-thread one for the workers, would hold it). Needs ../shared/data and
the export extra (it reads the data through ``moerm_build``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench.run import cpu_description, rank_calls
from moerm_lite import RewardModel
from moerm_lite.sessions import FeedHelper, cpu_session, release_freed_memory, run_feeds
from moerm_lite.text import TextTokenizer

Feed = dict[str, np.ndarray]


def resident_mb() -> float:
    """This process's resident memory now (VmRSS), MB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def call_feeds(model: RewardModel, tok: TextTokenizer, prompt: str, replies: list[str]) -> list[Feed]:
    """The backbone feeds of one ranking call: the prompt, then each reply alone."""
    p_ids, _ = tok.encode([prompt], "prompt")
    r_ids, _ = tok.encode(replies, "response")
    names = model.config.backbone_inputs
    return [{k: v for k, v in tok.pad([ids]).items() if k in names} for ids in p_ids + r_ids]


def longest_first(feeds: list[Feed]) -> list[int]:
    """The feeds' indices, longest first, so that two workers end together."""
    return sorted(range(len(feeds)), key=lambda i: -next(iter(feeds[i].values())).shape[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few calls, one round")
    args = ap.parse_args()
    model = RewardModel.load(threads=2)
    graph = model.config.graphs[model.precision]
    path, out = model.folder / graph.backbone, model.config.backbone_output
    two = cpu_session(path, 2, dequantize_at_load=graph.dequantize_at_load)
    release_freed_memory()
    before = resident_mb()
    one = cpu_session(path, 1, dequantize_at_load=graph.dequantize_at_load)
    release_freed_memory()
    second_session = resident_mb() - before
    tok = TextTokenizer(model.folder / "tokenizer.json", model.config.max_length)
    pool = ThreadPoolExecutor(2)

    def one_at_a_time(feeds: list[Feed]) -> list[np.ndarray]:
        return [two.run([out], f)[0] for f in feeds]

    def side_by_side(session: Any) -> Callable[[list[Feed]], list[np.ndarray]]:
        def run(feeds: list[Feed]) -> list[np.ndarray]:
            order = longest_first(feeds)
            got = dict(zip(order, pool.map(lambda i: session.run([out], feeds[i])[0], order)))
            return [got[i] for i in range(len(feeds))]
        return run

    helper = FeedHelper()

    def runtime_way(feeds: list[Feed]) -> list[np.ndarray]:  # run_feeds as the model calls it, longest first
        order = longest_first(feeds)
        got: dict[int, np.ndarray] = {}
        run_feeds(two, out, (feeds[i] for i in order), lambda j, emb: got.update({order[j]: emb}), helper)
        return [got[i] for i in range(len(feeds))]

    ways: dict[str, Callable[[list[Feed]], list[np.ndarray]]] = {
        "one feed at a time, 2 threads (before)": one_at_a_time, "2 workers, 1-thread session": side_by_side(one),
        "2 workers, the 2-thread session": side_by_side(two), "the runtime's FeedHelper (now)": runtime_way}
    n_calls, rounds = (8, 1) if args.quick else (None, 3)
    workloads = {f"rank() of {n} replies": [call_feeds(model, tok, p, r) for p, r in rank_calls(n)[:n_calls]]
                 for n in (5, 20)}
    workloads["one (prompt, reply) pair"] = [call_feeds(model, tok, p, r[:1]) for p, r in rank_calls(5)[:n_calls]]
    print(f"backbone feeds of one call, p50 ms ({cpu_description()}; {rounds} rounds, ways interleaved)")
    for name, calls in workloads.items():
        times: dict[str, list[float]] = {w: [] for w in ways}
        for fn in ways.values():  # warm-up
            fn(calls[0])
        for r in range(rounds):
            for feeds in calls:
                for w in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                    t = time.perf_counter()
                    ways[w](feeds)
                    times[w].append(time.perf_counter() - t)
        p50 = {w: 1e3 * float(np.median(v)) for w, v in times.items()}
        now = p50[next(iter(ways))]
        diff = max(float(np.abs(a - b).max()) for feeds in calls[:8] for fn in list(ways.values())[1:]
                   for a, b in zip(one_at_a_time(feeds), fn(feeds)))
        print(f"  {name:28} " + " / ".join(f"{w}: {v:.1f} ({now / v:.2f}x)" for w, v in p50.items())
              + f"; embeddings differ by at most {diff:.1e}", flush=True)
    print(f"resident memory of the second session: {second_session:.0f} MB")


if __name__ == "__main__":
    main()
