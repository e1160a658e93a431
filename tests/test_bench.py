"""Smoke test: the benchmark's quick mode runs end to end and prints its table."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (DATA / "hh_rlhf").is_dir(), reason="../shared/data not present")
def test_bench_quick_runs(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "bench/run.py", "--quick", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    table = res.stdout
    for key in ("throughput batch 32: moerm-lite int8", "head K=64", "fit_user N=20", "cold start", "peak RSS",
                "resident after first score", "model folder"):
        assert key in table
    assert out.read_text().startswith("[")


@pytest.mark.skipif(not (DATA / "hh_rlhf").is_dir(), reason="../shared/data not present")
def test_token_budget_bench_quick_runs():
    pytest.importorskip("torch")
    res = subprocess.run([sys.executable, "bench/truncation.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, check=False, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line.split() for line in res.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [256, 192, 128, 96, 64]  # one row per budget, full budget first
    assert rows[0][2] == "1.00x" and rows[0][-1] == "100.0%"  # the full budget agrees with itself
