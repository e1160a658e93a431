"""Scale-out measurements: Ray Data batch scoring with 1 and 2 workers, torchrun training with 1 and 2
processes, on this machine.

    python -m bench.scale            # about 5 minutes on 2 cores
    python -m bench.scale --quick

Needs the ray and export extras, and ../shared/data for the texts and the training data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import cpu_description
from moerm_build.data import ranking_workload

ROOT = Path(__file__).resolve().parents[1]


def ray_rows_per_second(rows: list[dict], workers: int) -> float:
    import ray

    from moerm_lite.batch import BatchScorer

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ds = ray.data.from_items(rows).materialize()
        t = time.perf_counter()
        ds.map_batches(BatchScorer, fn_constructor_kwargs={"threads": 2 // workers}, batch_size=256,
                       compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=2 // workers,
                       batch_format="numpy").materialize()
        return len(rows) / (time.perf_counter() - t)
    finally:
        ray.shutdown()


def train_seconds(processes: int, out: Path, cfg: list[str]) -> float:
    launch = (["-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else [])
    t = time.perf_counter()
    subprocess.run([sys.executable, *launch, "-m", "moerm_build", "train", "--out", str(out), *cfg], check=True,
                   capture_output=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    pairs = ranking_workload(25 if args.quick else 250, 8)
    rows = [{"id": i, "prompt": p, "response": r} for i, (p, r) in enumerate(pairs)]
    print(f"scale-out, {cpu_description()}")
    one, two = ray_rows_per_second(rows, 1), ray_rows_per_second(rows, 2)
    print(f"Ray Data batch scoring, {len(rows)} rows: 1 worker x 2 threads {one:.0f} rows/s, "
          f"2 workers x 1 thread {two:.0f} rows/s ({two / one:.2f}x)")
    cfg = ["--set", 'sources=["hh_helpful", "hh_harmless", "contrast"]',
           f"epochs={1 if args.quick else 4}", "n_experts=16", "n_shared=4"]
    with tempfile.TemporaryDirectory() as tmp:
        t1 = train_seconds(1, Path(tmp) / "one", cfg)
        t2 = train_seconds(2, Path(tmp) / "two", cfg)
        from moerm_build.train.train import load_checkpoint

        (_, h1), (_, h2) = load_checkpoint(Path(tmp) / "one"), load_checkpoint(Path(tmp) / "two")
        s1, s2 = h1.state_dict(), h2.state_dict()
        rel = max(float((s1[k] - s2[k]).norm() / s1[k].norm().clamp(min=1e-12)) for k in s1 if s1[k].numel())
        log = json.loads((Path(tmp) / "two" / "train_log.json").read_text())
        acc = {n: heldout_accuracy(Path(tmp) / n) for n in ("one", "two")}
    print(f"torchrun training (HH helpful + harmless + contrast pairs, 16 experts, cached embeddings): "
          f"1 process {t1:.1f} s, 2 processes {t2:.1f} s ({t1 / t2:.2f}x, wall time including start-up); "
          f"largest relative weight difference 1 vs {log['processes']} processes: {rel:.3f} (different "
          f"embedding-noise draws and per-share batch statistics, not only float order); held-out HH "
          f"helpful accuracy of the population score: {acc['one']:.3f} vs {acc['two']:.3f}")


def heldout_accuracy(run: Path) -> float:
    """Population-score accuracy of a run (torch) on the HH helpful test split."""
    from moerm_build import data
    from moerm_build.evaluate.metrics import TorchFeaturizer

    recs = data.load_hh_helpful(split="test")
    fz = TorchFeaturizer(run)
    pairs = [(r["prompt"], r["chosen"]) for r in recs] + [(r["prompt"], r["rejected"]) for r in recs]
    g, r = fz.outputs(pairs)
    s = (g * r) @ fz.w0
    return float((s[:len(recs)] > s[len(recs):]).mean())


if __name__ == "__main__":
    main()
