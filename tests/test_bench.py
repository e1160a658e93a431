"""Smoke test: the benchmark's quick mode runs end to end and prints its table."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moerm_lite.sessions import onnxruntime_fuses_int8
from tests.conftest import DATA

ROOT = Path(__file__).resolve().parents[1]


def run_bench(module: str, *args: str, env: dict[str, str] | None = None) -> str:
    """``python -m <module> <args>`` from the repository root (10 minutes at most; ``env``: its environment):
    its stdout, after checking that it exited 0."""
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                         check=False, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(not (DATA / "hh_rlhf").is_dir(), reason="../shared/data not present")
def test_bench_quick_runs(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    env = {**os.environ, "MOERM_LITE_CACHE": str(tmp_path / "cache")}  # the openvino engine's compiled model
    table = run_bench("bench.run", "--quick", "--json", str(out), env=env)
    openvino = ("cold start / peak RSS / after rank(5), engine='openvino'",
                "the same, compiling (compile_cache=False)")
    int8 = ("moerm-lite int8_compute p50", "decisions int8_compute = default",
            "cold start / peak RSS / after rank(5), int8_compute=True")
    keys = ("throughput batch 32: moerm-lite int8", "head K=64", "fit_user N=20", "cold start", "peak RSS",
            "resident after first score", "peak RSS after rank() of 5 real replies", "model folder")
    optional = (openvino if importlib.util.find_spec("openvino") else ()) + (int8 if onnxruntime_fuses_int8() else ())
    for key in keys + optional:
        assert key in table, key
    rows = {r[0]: r[1] for r in json.loads(out.read_text())}
    # the PyTorch reference is the shipped model itself (its graph's weights, its request gate): the runtime
    # agrees with it on (nearly) every decision; a reference on other weights read 91% here
    assert float(rows["decision agreement int8 vs torch (all pairs)"].rstrip("%")) >= 99.0


@pytest.mark.skipif(not (DATA / "hh_rlhf").is_dir(), reason="../shared/data not present")
def test_bench_against_another_folder_runs(tmp_path):
    """``--against FOLDER`` times the default model and another folder (here the same one) in one run: only
    the rows that compare the two, each naming the other folder."""
    pytest.importorskip("torch")
    from moerm_lite.model import default_model_path

    other = default_model_path()
    table = run_bench("bench.run", "--quick", "--against", str(other))
    for key in (f"throughput, default batching: this model / {other}", f"moerm-lite against {other} p50",
                f"cold start / peak RSS / after rank(5), {other}", "rank() of 20 replies"):
        assert key in table, key
    assert "head K=64" not in table  # the other sections are not run


@pytest.mark.skipif(not (DATA / "hh_rlhf").is_dir(), reason="../shared/data not present")
def test_parallel_calls_bench_quick_runs():
    """bench/parallel_calls.py: every way gives the same embeddings as one at a time (0 difference), on every
    workload."""
    pytest.importorskip("torch")
    out = run_bench("bench.parallel_calls", "--quick")
    rows = [line for line in out.splitlines() if "differ by at most" in line]
    assert len(rows) == 3 and all(line.endswith("differ by at most 0.0e+00") for line in rows), out
    assert "resident memory of the second session" in out


@pytest.mark.skipif(not (DATA / "hh_rlhf").is_dir(), reason="../shared/data not present")
def test_token_budget_bench_quick_runs():
    pytest.importorskip("torch")
    out = run_bench("bench.truncation", "--quick")
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [256, 192, 128, 96, 64]  # one row per budget, full budget first
    assert rows[0][2] == "1.00x" and rows[0][-1] == "100.0%"  # the full budget agrees with itself


def test_smoothquant_migration_keeps_the_function(tmp_path):
    """bench/quant_levers.py's scale migration: the same outputs, flatter MatMul inputs."""
    pytest.importorskip("torch")
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bench.quant_levers import smoothed
    from moerm_lite.sessions import cpu_session

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb[:, 3] *= 40.0  # an outlier channel, as in MiniLM's activations
    w = {n: rng.normal(size=(8, 8)).astype(np.float32) for n in ("wq", "wk", "wo")}
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
             helper.make_node("MatMul", ["h", "wq"], ["q"]),  # two MatMuls share one input
             helper.make_node("MatMul", ["h", "wk"], ["k"]),
             helper.make_node("Add", ["q", "k"], ["a"]),
             helper.make_node("Tanh", ["a"], ["t"]),
             helper.make_node("MatMul", ["t", "wo"], ["embedding"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "l"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(emb, "emb")] + [numpy_helper.from_array(v, k) for k, v in w.items()])
    src = tmp_path / "src.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    ids = rng.integers(0, 50, size=(4, 6))
    feeds = [{"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}]
    dst = smoothed(src, tmp_path / "smooth.onnx", feeds, alpha=0.5)
    run = {p: cpu_session(str(p), 1).run(["embedding"], feeds[0])[0] for p in (src, dst)}
    np.testing.assert_allclose(run[dst], run[src], rtol=1e-4, atol=1e-4)
    m = onnx.load(str(dst))
    assert [n.op_type for n in m.graph.node].count("Mul") == 2  # one per distinct MatMul input (h and t)
    inv = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "h_smooth_inv"))
    assert inv[3] == inv.min()  # the outlier channel is divided the most
