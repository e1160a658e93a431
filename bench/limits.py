"""Cost bounds and robustness of the runtime on the shipped model, each in a fresh process.

    python -m bench.limits            # all checks (about a minute on 2 cores)
    python -m bench.limits --trials 50

Prints seconds and peak resident memory (extra over the loaded model) for: a 100k + 100k-character
pair, ``next_comparison`` on 1,000 candidates (a new user, and one with 5 answers); and how many of N
trials of two concurrent ``moerm-lite fit --update`` on one profile kept both updates.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CASE = r"""
import json, resource, sys, time
from moerm_lite import RewardModel
m = RewardModel.load(threads=2)
m.score("warm", "up")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
{body}
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": dt, "extra_mb": (peak - base) / 1024}}))
"""

CASES = {
    "score one 100k + 100k-character pair": 'm.score("word " * 20000, "word " * 20000)',
    "next_comparison, 1,000 candidates": ('c = [f"Option {i}: take route {i % 7} and stop at {i % 13}." '
                                          'for i in range(1000)]\nm.next_comparison("Which route?", c)'),
    "the same for a user with 5 answers (expected accuracy)": (
        'u = m.fit_user([{"prompt": "Which route?", "chosen": f"Route {i}.", "rejected": f"Stop {i}."} '
        'for i in range(5)])\nc = [f"Option {i}: take route {i % 7} and stop at {i % 13}." for i in range(1000)]'
        '\nm.next_comparison("Which route?", c, user=u)'),
}


def run_case(body: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CASE.format(body=body)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def concurrent_updates(trials: int) -> tuple[int, int]:
    """Trials in which two concurrent ``fit --update`` both landed, of ``trials``."""
    ok = 0
    with tempfile.TemporaryDirectory() as tmp:
        comps = Path(tmp) / "c.jsonl"
        comps.write_text(json.dumps({"prompt": "q", "chosen": "A full answer.", "rejected": "No."}) + "\n")
        prof = Path(tmp) / "u.json"
        cli = [sys.executable, "-m", "moerm_lite", "fit", str(comps), "--threads", "1"]
        subprocess.run(cli + ["-o", str(prof)], check=True, capture_output=True)
        for _ in range(trials):
            before = json.loads(prof.read_text())["n_comparisons"]
            procs = [subprocess.Popen(cli + ["--update", str(prof)], stderr=subprocess.DEVNULL) for _ in range(2)]
            codes = [p.wait() for p in procs]
            ok += codes == [0, 0] and json.loads(prof.read_text())["n_comparisons"] == before + 2
    return ok, trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=10, help="concurrent fit --update trials")
    args = ap.parse_args()
    for name, body in CASES.items():
        r = run_case(body)
        print(f"{name:<45} {r['seconds']:6.2f} s  {r['extra_mb']:6.0f} MB extra peak RSS")
    ok, n = concurrent_updates(args.trials)
    print(f"{'two concurrent fit --update, both kept':<45} {ok} of {n} trials")


if __name__ == "__main__":
    main()
