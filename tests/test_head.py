"""The sparse head graph against a dense numpy reference, and the scoring formula."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from moerm_build.graphs.onnx_head import build_head_graph, reference_head
from moerm_lite.head import combine, expert_features, scatter_topk
from tests.tiny import F, random_head


def run_graph(model: onnx.ModelProto, h: np.ndarray):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["expert_index", "gates", "rewards"], {"features": h.astype(np.float32)})


@pytest.mark.parametrize("K,top_k,n_shared", [(6, 2, 0), (32, 2, 10), (8, 3, 1), (5, 5, 0), (7, 4, 3)])
def test_sparse_head_equals_dense_reference(K, top_k, n_shared):
    rng = np.random.default_rng(K * 10 + top_k)
    wts = random_head(K, rng, n_shared)
    h = rng.normal(size=(17, F)).astype(np.float32)
    idx, gates, rewards = run_graph(build_head_graph(wts, top_k), h)
    ref_idx, ref_gates, ref_rewards = reference_head(h, wts, top_k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(gates, ref_gates, atol=1e-6)
    np.testing.assert_allclose(rewards, ref_rewards, atol=1e-5)
    # routed gates sum to 1 over exactly k experts; the shared experts follow with gate 1
    np.testing.assert_allclose(gates[:, :top_k].sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(gates[:, top_k:], 1.0)
    np.testing.assert_array_equal(idx[:, top_k:], np.broadcast_to(np.arange(K - n_shared, K), (17, n_shared)))
    assert (idx[:, :top_k] < K - n_shared).all()
    assert idx.shape == (17, top_k + n_shared) and all(len(set(row)) == top_k + n_shared for row in idx.tolist())


def test_bounded_rewards_in_the_graph():
    rng = np.random.default_rng(3)
    wts = random_head(6, rng)
    wts.reward_bound = 0.5
    h = rng.normal(size=(11, F)).astype(np.float32)
    for dtype in ("fp32", "int8"):
        idx, gates, rewards = run_graph(build_head_graph(wts, 2, expert_dtype=dtype), h)
        ref_idx, _, ref_rewards = reference_head(h, wts, 2)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(rewards, ref_rewards, atol=1e-5 if dtype == "fp32" else 0.02)
        assert np.abs(rewards).max() <= 0.5 + 1e-6


def test_int8_experts_close_and_same_routing():
    rng = np.random.default_rng(1)
    wts = random_head(16, rng)
    h = rng.normal(size=(64, F)).astype(np.float32)
    i32, g32, r32 = run_graph(build_head_graph(wts, 2), h)
    i8, g8, r8 = run_graph(build_head_graph(wts, 2, expert_dtype="int8"), h)
    np.testing.assert_array_equal(i8, i32)  # the router is never quantized
    np.testing.assert_array_equal(g8, g32)
    np.testing.assert_allclose(r8, r32, atol=0.02 * np.abs(r32).max())
    i16, g16, r16 = run_graph(build_head_graph(wts, 2, expert_dtype="fp16"), h)  # the shipped folder's head
    np.testing.assert_array_equal(i16, i32)
    np.testing.assert_allclose(r16, r32, atol=2e-3 * np.abs(r32).max())


def test_full_softmax_gating_for_top1():
    rng = np.random.default_rng(2)
    wts = random_head(8, rng)
    h = rng.normal(size=(9, F)).astype(np.float32)
    _, gates, _ = run_graph(build_head_graph(wts, 1, gating="full_softmax"), h)
    _, ref_gates, _ = reference_head(h, wts, 1, gating="full_softmax")
    np.testing.assert_allclose(gates, ref_gates, atol=1e-6)
    assert (gates < 1).all()  # the router keeps a gradient with k = 1


def test_head_graph_is_sparse():
    """TopK routes, Gather picks the routed experts' weights; no op at run time touches all routed MLPs."""
    for K, S, dtype in ((8, 0, "fp32"), (256, 0, "fp32"), (256, 10, "fp16"), (256, 10, "int8")):
        model = build_head_graph(random_head(K, np.random.default_rng(0), S), 2, expert_dtype=dtype)
        g = model.graph
        ops = [n.op_type for n in g.node]
        assert "TopK" in ops and "Einsum" not in ops
        for n in g.node:  # the routed experts' weights, in their stored precision, only ever go into Gather
            if {"w1", "w1_h", "w1_q", "w1_s", "b1", "w2", "b2"} & set(n.input):
                assert n.op_type == "Gather", n
        # the expert MatMul reads the gathered (B, k, F, D) tensor (cast to fp32 after the Gather), whose size
        # is independent of K
        assert len([n for n in g.node if n.op_type == "MatMul" and "w1_sel" in n.input]) == 1
        producer = {o: n for n in g.node for o in n.output}
        chain, name = [], "w1_sel"
        while producer[name].op_type != "Gather":
            chain.append(producer[name].op_type)
            name = producer[name].input[0]
        assert chain == {"fp32": [], "fp16": ["Cast"], "int8": ["Mul", "Cast"]}[dtype]
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = ""
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        assert sess.get_outputs()[0].shape[1] == 2 + S


def test_scatter_and_combine():
    idx = np.array([[2, 0], [1, 3]])
    gates = np.array([[0.7, 0.3], [0.6, 0.4]], dtype=np.float32)
    rewards = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
    g, r = scatter_topk(idx, gates, rewards, 4)
    np.testing.assert_allclose(g, [[0.3, 0, 0.7, 0], [0, 0.6, 0, 0.4]])
    np.testing.assert_allclose(r, [[-2, 0, 1, 0], [0, 0.5, 0, 3]])
    w = np.array([1.0, -1.0, 2.0, 0.5])
    # s = sum_k pi_k w_k r_k, by hand
    np.testing.assert_allclose(combine(g, r, w), [0.3 * 1 * -2 + 0.7 * 2 * 1, 0.6 * -1 * 0.5 + 0.4 * 0.5 * 3],
                               rtol=1e-6)
    np.testing.assert_allclose(expert_features(g, r) @ w, combine(g, r, w))
