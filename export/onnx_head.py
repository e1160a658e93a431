"""The expert-head graph with sparse dispatch, built from numpy weights with ``onnx.helper``.

Standard ONNX ops only::

    logits  = embedding @ W_router + b_router                  (B, K)   router, kept fp32
    values, expert_index = TopK(logits, k)                     (B, k)
    gates   = Softmax(values)                                  (B, k)   top-k softmax
    W1_sel  = Gather(W1, expert_index)                         (B, k, H, D)  only routed experts
    hidden  = relu(embedding @ W1_sel + b1_sel)                (B, k, D)
    rewards = sum(hidden * w2_sel, -1) + b2_sel                (B, k)
    rewards = c * tanh(rewards / c)    (if reward_bound c > 0)  (B, k)

For ``top_k == 1`` the softmax over one logit is always 1 and the router gets
no gradient in training, so that case uses the full-softmax probability of the
selected expert instead (``gating="full_softmax"``).

Expert weights ``W1`` may be stored fp16 (cast back after the Gather) or int8 with a
per-expert, per-output-channel scale that is gathered along with them; the router never is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HEAD_OPSET = 17


@dataclass
class HeadWeights:
    """Stacked weights of the router and the K expert MLPs (H: embedding size, D: expert hidden)."""

    router_w: np.ndarray  # (H, K)
    router_b: np.ndarray  # (K,)
    w1: np.ndarray  # (K, H, D)
    b1: np.ndarray  # (K, D)
    w2: np.ndarray  # (K, D)
    b2: np.ndarray  # (K,)
    reward_bound: float = 0.0  # c > 0: rewards are c * tanh(r / c)

    @property
    def n_experts(self) -> int:
        return self.router_w.shape[1]


def reference_head(h: np.ndarray, wts: HeadWeights, top_k: int, gating: str = "topk_softmax"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense numpy reference: every expert evaluated, then the top-k picked. (B, k) each."""
    logits = h @ wts.router_w + wts.router_b  # (B, K)
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]  # (B, k)
    sel = np.take_along_axis(logits, idx, 1)  # (B, k)
    if gating == "full_softmax":
        p = np.exp(logits - logits.max(1, keepdims=True))
        gates = np.take_along_axis(p / p.sum(1, keepdims=True), idx, 1)  # (B, k)
    else:
        e = np.exp(sel - sel.max(1, keepdims=True))
        gates = e / e.sum(1, keepdims=True)  # (B, k)
    hidden = np.maximum(np.einsum("bh,khd->bkd", h, wts.w1) + wts.b1, 0)  # (B, K, D)
    r_all = (hidden * wts.w2).sum(-1) + wts.b2  # (B, K)
    if wts.reward_bound > 0:
        r_all = wts.reward_bound * np.tanh(r_all / wts.reward_bound)
    return idx, gates.astype(np.float32), np.take_along_axis(r_all, idx, 1).astype(np.float32)


def build_head_graph(wts: HeadWeights, top_k: int, *, gating: str = "topk_softmax",
                     expert_dtype: str = "fp32") -> onnx.ModelProto:
    """ONNX graph ``embedding (B, H) -> expert_index (B, k) int64, gates (B, k), rewards (B, k)``."""
    H, K = wts.router_w.shape
    if not 1 <= top_k <= K:
        raise ValueError(f"need 1 <= top_k <= n_experts, got {top_k}, {K}")
    if gating not in ("topk_softmax", "full_softmax"):
        raise ValueError(f"unknown gating {gating!r}")
    f32 = np.float32
    inits = [
        numpy_helper.from_array(wts.router_w.astype(f32), "router_w"),
        numpy_helper.from_array(wts.router_b.astype(f32), "router_b"),
        numpy_helper.from_array(wts.b1.astype(f32), "b1"),
        numpy_helper.from_array(wts.w2.astype(f32), "w2"),
        numpy_helper.from_array(wts.b2.astype(f32), "b2"),
        numpy_helper.from_array(np.array([top_k], dtype=np.int64), "k"),
        numpy_helper.from_array(np.array([-1, 1, 1, H], dtype=np.int64), "emb_shape"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
    ]
    nodes = [
        helper.make_node("MatMul", ["embedding", "router_w"], ["logits_mm"]),
        helper.make_node("Add", ["logits_mm", "router_b"], ["router_logits"]),  # (B, K)
        helper.make_node("TopK", ["router_logits", "k"], ["top_logits", "expert_index"], axis=-1),
    ]
    if gating == "topk_softmax":
        nodes.append(helper.make_node("Softmax", ["top_logits"], ["gates"], axis=-1))  # (B, k)
    else:
        nodes += [helper.make_node("Softmax", ["router_logits"], ["probs"], axis=-1),  # (B, K)
                  helper.make_node("GatherElements", ["probs", "expert_index"], ["gates"], axis=1)]
    if expert_dtype == "int8":
        scale = np.abs(wts.w1).max(axis=1) / 127.0  # (K, D) per expert, per output channel
        scale = np.where(scale == 0, 1.0, scale).astype(f32)
        q = np.clip(np.round(wts.w1 / scale[:, None, :]), -127, 127).astype(np.int8)  # (K, H, D)
        inits += [numpy_helper.from_array(q, "w1_q"), numpy_helper.from_array(scale, "w1_scale")]
        nodes += [
            helper.make_node("Gather", ["w1_q", "expert_index"], ["w1_sel_q"], axis=0),  # (B, k, H, D)
            helper.make_node("Cast", ["w1_sel_q"], ["w1_sel_f"], to=TensorProto.FLOAT),
            helper.make_node("Gather", ["w1_scale", "expert_index"], ["scale_sel"], axis=0),  # (B, k, D)
            helper.make_node("Unsqueeze", ["scale_sel", "axis2"], ["scale_sel4"]),  # (B, k, 1, D)
            helper.make_node("Mul", ["w1_sel_f", "scale_sel4"], ["w1_sel"]),  # (B, k, H, D)
        ]
    elif expert_dtype == "fp16":
        inits.append(numpy_helper.from_array(wts.w1.astype(np.float16), "w1_h"))
        nodes += [
            helper.make_node("Gather", ["w1_h", "expert_index"], ["w1_sel_h"], axis=0),  # (B, k, H, D)
            helper.make_node("Cast", ["w1_sel_h"], ["w1_sel"], to=TensorProto.FLOAT),
        ]
    elif expert_dtype == "fp32":
        inits.append(numpy_helper.from_array(wts.w1.astype(f32), "w1"))
        nodes.append(helper.make_node("Gather", ["w1", "expert_index"], ["w1_sel"], axis=0))  # (B, k, H, D)
    else:
        raise ValueError(f"unknown expert_dtype {expert_dtype!r}")
    nodes += [
        helper.make_node("Reshape", ["embedding", "emb_shape"], ["emb4"]),  # (B, 1, 1, H)
        helper.make_node("MatMul", ["emb4", "w1_sel"], ["pre4"]),  # (B, k, 1, D)
        helper.make_node("Squeeze", ["pre4", "axis2"], ["pre"]),  # (B, k, D)
        helper.make_node("Gather", ["b1", "expert_index"], ["b1_sel"], axis=0),  # (B, k, D)
        helper.make_node("Add", ["pre", "b1_sel"], ["pre_b"]),
        helper.make_node("Relu", ["pre_b"], ["hidden"]),  # (B, k, D)
        helper.make_node("Gather", ["w2", "expert_index"], ["w2_sel"], axis=0),  # (B, k, D)
        helper.make_node("Mul", ["hidden", "w2_sel"], ["prod"]),
        helper.make_node("ReduceSum", ["prod", "axis_last"], ["r_sum"], keepdims=0),  # (B, k)
        helper.make_node("Gather", ["b2", "expert_index"], ["b2_sel"], axis=0),  # (B, k)
        helper.make_node("Add", ["r_sum", "b2_sel"],
                         ["rewards" if wts.reward_bound <= 0 else "r_raw"]),  # (B, k)
    ]
    if wts.reward_bound > 0:
        inits.append(numpy_helper.from_array(np.array(wts.reward_bound, dtype=f32), "reward_bound"))
        nodes += [helper.make_node("Div", ["r_raw", "reward_bound"], ["r_div"]),
                  helper.make_node("Tanh", ["r_div"], ["r_tanh"]),
                  helper.make_node("Mul", ["r_tanh", "reward_bound"], ["rewards"])]  # (B, k) in (-c, c)
    graph = helper.make_graph(
        nodes, "moe_head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", H])],
        [helper.make_tensor_value_info("expert_index", TensorProto.INT64, ["batch", top_k]),
         helper.make_tensor_value_info("gates", TensorProto.FLOAT, ["batch", top_k]),
         helper.make_tensor_value_info("rewards", TensorProto.FLOAT, ["batch", top_k])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HEAD_OPSET)],
                              producer_name="moerm-lite")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
