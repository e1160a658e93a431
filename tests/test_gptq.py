"""GPTQ rounding for the int8 backbone: onnxruntime's exact 8-bit grid, less output error than rounding."""

import numpy as np
import pytest

pytest.importorskip("torch")  # the export extra (onnx, onnxruntime's quantizer) comes with it

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from moerm_build.graphs.gptq import BLOCK, gptq_round, nbits_scale, round_to_nearest8, write_levels  # noqa: E402
from moerm_lite.sessions import cpu_session  # noqa: E402

pytestmark = pytest.mark.slow


def one_matmul(W: np.ndarray) -> onnx.ModelProto:
    K, N = W.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
                          [numpy_helper.from_array(W, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def dequantize(levels: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return levels * np.repeat(scales, BLOCK, axis=0)  # (K, N)


def correlated_inputs(n: int, K: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(n, 4)) @ rng.normal(size=(4, K)) + 0.1 * rng.normal(size=(n, K))  # (n, K)


def test_levels_are_onnxruntimes_matmulnbits_grid():
    """Levels written into the stock quantizer's graph dequantize to exactly levels * scale."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(64, 8)).astype(np.float32)
    X = correlated_inputs(500, 64, rng)
    model = round_to_nearest8(one_matmul(W))
    levels, scales = gptq_round(W, X.T @ X)
    assert levels.min() >= -128 and levels.max() <= 127
    write_levels(model, "W", levels, scales)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    W_ort = sess.run(None, {"x": np.eye(64, dtype=np.float32)})[0]  # (K, N): the graph's weights
    np.testing.assert_allclose(W_ort, dequantize(levels, scales), rtol=0, atol=1e-6)


def test_identity_gram_is_round_to_nearest():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(32, 5))
    levels, scales = gptq_round(W, np.eye(32), damp=0.0)
    s = np.stack([nbits_scale(W[i:i + BLOCK]) for i in range(0, 32, BLOCK)])  # (2, 5)
    np.testing.assert_allclose(scales, s)
    np.testing.assert_array_equal(levels, np.clip(np.round(W / np.repeat(s, BLOCK, axis=0)), -128, 127))
    assert (np.abs(levels) == 128).any()  # the largest weight of a block sits on the grid's end


def test_gptq_has_less_output_error_than_rounding():
    rng = np.random.default_rng(2)
    K, N = 96, 24
    W = rng.normal(size=(K, N))
    X = correlated_inputs(2000, K, rng)
    err = {}
    for name, gram in (("rtn", np.eye(K)), ("gptq", X.T @ X)):
        levels, scales = gptq_round(W, gram, damp=0.0 if name == "rtn" else 0.01)
        err[name] = np.linalg.norm(X @ (W - dequantize(levels, scales)))
    assert err["gptq"] < 0.5 * err["rtn"]


def test_dequantize_at_load_keeps_the_levels():
    """The shipped form: the same int8 levels and block scales, folded to an fp32 MatMul at load."""
    from moerm_build.graphs.quantize import dequantize_at_load

    rng = np.random.default_rng(4)
    W = rng.normal(size=(64, 8)).astype(np.float32)
    levels, scales = gptq_round(W, np.eye(64))
    model = round_to_nearest8(one_matmul(W))
    write_levels(model, "W", levels, scales)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    y_nbits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    fp32 = dequantize_at_load(model)
    assert [n.op_type for n in fp32.graph.node] == ["DequantizeLinear", "MatMul"]
    assert max(op.version for op in fp32.opset_import if op.domain in ("", "ai.onnx")) >= 21  # block_size
    stored = [i for i in fp32.graph.initializer if i.data_type == TensorProto.INT8]
    assert [list(i.dims) for i in stored] == [[64, 8]]  # still 8 bits on disk
    y = cpu_session(fp32.SerializeToString(), 1, dequantize_at_load=True).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, y_nbits, rtol=0, atol=1e-5)
    # the session folds the weights and computes in fp32; with onnxruntime's QDQ fusions on, it would
    # quantize x as well (0.08 off here): why the model folder marks such graphs dequantize_at_load
    np.testing.assert_allclose(y, x @ dequantize(levels, scales), rtol=0, atol=1e-4)
