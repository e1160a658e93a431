"""The expert-head graph with sparse dispatch, built from numpy weights with ``onnx.helper``.

Standard ONNX ops only (K experts, the last S of them shared; F pair features)::

    x       = (features - mean) / std                           (B, F)   standardised pair features
    logits  = x @ W_router + b_router                           (B, K - S)   router, kept fp32
    values, expert_index = TopK(logits, k)                      (B, k)
    gates   = Softmax(values)                                   (B, k)   top-k softmax
    W1_sel  = Gather(W1, expert_index)                          (B, k, F, D)  only routed experts
    hidden  = relu(x @ W1_sel + b1_sel)                         (B, k, D)
    rewards = sum(hidden * w2_sel, -1) + b2_sel                 (B, k)
    shared experts: every input, gate 1, appended               (B, k + S) each output
    rewards = c * tanh(rewards / c)    (if reward_bound c > 0)  (B, k + S)

For ``top_k == 1`` the softmax over one logit is always 1 and the router gets
no gradient in training, so that case uses the full-softmax probability of the
selected expert instead (``gating="full_softmax"``).

Expert weights ``W1`` may be stored fp16 (cast back after the Gather) or int8 with a
per-expert, per-output-channel scale that is gathered along with them; the router never is. With int8,
the shared experts stay fp16: a read-out's gate weight (``moerm_build.train.readout.GATE_MARGIN``) shares a hidden
unit with its small weights, and a per-channel int8 scale set by the gate would round them all to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HEAD_OPSET = 17


@dataclass
class HeadWeights:
    """Stacked weights of the router and the K expert MLPs (F: pair features, D: expert hidden).

    The last ``n_shared`` experts are shared: always active, not routed.
    """

    router_w: np.ndarray  # (F, K - S)
    router_b: np.ndarray  # (K - S,)
    w1: np.ndarray  # (K, F, D)
    b1: np.ndarray  # (K, D)
    w2: np.ndarray  # (K, D)
    b2: np.ndarray  # (K,)
    reward_bound: float = 0.0  # c > 0: rewards are c * tanh(r / c)
    feat_mean: np.ndarray | None = None  # (F,) standardisation; None: 0
    feat_std: np.ndarray | None = None  # (F,); None: 1

    @property
    def n_experts(self) -> int:
        return self.w1.shape[0]

    @property
    def n_shared(self) -> int:
        return self.w1.shape[0] - self.router_w.shape[1]

    def select(self, keep: list[int]) -> HeadWeights:
        """The head with only the experts ``keep`` (every shared expert must be kept), in that order.

        Dropping a routed expert that no input routes to leaves every routed input's top-k and gates as
        they were (the gates are a softmax over the selected logits only).
        """
        Kr = self.router_w.shape[1]
        if sorted(keep) != list(keep) or not set(range(Kr, self.n_experts)) <= set(keep):
            raise ValueError("keep must be sorted and include every shared expert")
        routed = [k for k in keep if k < Kr]
        return HeadWeights(router_w=self.router_w[:, routed], router_b=self.router_b[routed], w1=self.w1[keep],
                           b1=self.b1[keep], w2=self.w2[keep], b2=self.b2[keep], reward_bound=self.reward_bound,
                           feat_mean=self.feat_mean, feat_std=self.feat_std)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        F = x.shape[1]
        mean = np.zeros(F) if self.feat_mean is None else self.feat_mean
        std = np.ones(F) if self.feat_std is None else self.feat_std
        return (x - mean) / std  # (B, F)


def reference_head(x: np.ndarray, wts: HeadWeights, top_k: int, gating: str = "topk_softmax"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense numpy reference: every expert evaluated, then the top-k picked, shared appended. (B, k + S) each."""
    h = wts.standardize(x)  # (B, F)
    logits = h @ wts.router_w + wts.router_b  # (B, K - S)
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
    K, S, B = wts.n_experts, wts.n_shared, len(x)
    shared = np.broadcast_to(np.arange(K - S, K), (B, S))  # (B, S)
    idx = np.concatenate([idx, shared], 1)  # (B, k + S)
    gates = np.concatenate([gates, np.ones((B, S))], 1)  # (B, k + S)
    return idx, gates.astype(np.float32), np.take_along_axis(r_all, idx, 1).astype(np.float32)


def build_head_graph(wts: HeadWeights, top_k: int, *, gating: str = "topk_softmax",
                     expert_dtype: str = "fp32") -> onnx.ModelProto:
    """ONNX graph ``features (B, F) -> expert_index (B, k + S) int64, gates (B, k + S), rewards (B, k + S)``."""
    F, Kr = wts.router_w.shape
    K, S = wts.n_experts, wts.n_shared
    if not 1 <= top_k <= Kr:
        raise ValueError(f"need 1 <= top_k <= routed experts, got {top_k}, {Kr}")
    if gating not in ("topk_softmax", "full_softmax"):
        raise ValueError(f"unknown gating {gating!r}")
    if expert_dtype not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown expert_dtype {expert_dtype!r}")
    f32 = np.float32
    mean = np.zeros(F) if wts.feat_mean is None else wts.feat_mean
    std = np.ones(F) if wts.feat_std is None else wts.feat_std
    inits = [
        numpy_helper.from_array(mean.astype(f32), "feat_mean"),
        numpy_helper.from_array(std.astype(f32), "feat_std"),
        numpy_helper.from_array(wts.router_w.astype(f32), "router_w"),
        numpy_helper.from_array(wts.router_b.astype(f32), "router_b"),
        numpy_helper.from_array(wts.b1[:Kr].astype(f32), "b1"),
        numpy_helper.from_array(wts.w2[:Kr].astype(f32), "w2"),
        numpy_helper.from_array(wts.b2[:Kr].astype(f32), "b2"),
        numpy_helper.from_array(np.array([top_k], dtype=np.int64), "k"),
        numpy_helper.from_array(np.array([-1, 1, 1, F], dtype=np.int64), "x_shape"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "feat_mean"], ["x_c"]),
        helper.make_node("Div", ["x_c", "feat_std"], ["x"]),  # (B, F)
        helper.make_node("MatMul", ["x", "router_w"], ["logits_mm"]),
        helper.make_node("Add", ["logits_mm", "router_b"], ["router_logits"]),  # (B, K - S)
        helper.make_node("TopK", ["router_logits", "k"], ["top_logits", "routed_index"], axis=-1),
    ]
    if gating == "topk_softmax":
        nodes.append(helper.make_node("Softmax", ["top_logits"], ["routed_gates"], axis=-1))  # (B, k)
    else:
        nodes += [helper.make_node("Softmax", ["router_logits"], ["probs"], axis=-1),  # (B, K - S)
                  helper.make_node("GatherElements", ["probs", "routed_index"], ["routed_gates"], axis=1)]

    def stored(w: np.ndarray, name: str, dtype: str) -> tuple[str, str | None]:
        """Store expert weights (E, F, D) in ``dtype``: the name of the stored tensor, and of its
        per-expert, per-output-channel scale (E, 1, D) for int8 (else None)."""
        if dtype == "fp32":
            inits.append(numpy_helper.from_array(w.astype(f32), name))
            return name, None
        if dtype == "fp16":
            inits.append(numpy_helper.from_array(w.astype(np.float16), name + "_h"))
            return name + "_h", None
        scale = np.abs(w).max(axis=1) / 127.0  # (E, D) per expert, per output channel
        scale = np.where(scale == 0, 1.0, scale).astype(f32)
        q = np.clip(np.round(w / scale[:, None, :]), -127, 127).astype(np.int8)  # (E, F, D)
        inits.extend([numpy_helper.from_array(q, name + "_q"),
                      numpy_helper.from_array(scale[:, None, :], name + "_s")])
        return name + "_q", name + "_s"

    def as_fp32(value: str, scale: str | None, out: str, dtype: str) -> str:
        """The name of the fp32 weights of a stored (or gathered) tensor ``value``: ``out`` unless fp32."""
        if dtype == "fp32":
            return value
        cast = out if scale is None else out + "_f"
        nodes.append(helper.make_node("Cast", [value], [cast], to=TensorProto.FLOAT))
        if scale is not None:
            nodes.append(helper.make_node("Mul", [cast, scale], [out]))
        return out

    # The routed experts' weights are gathered in their stored precision and only the selected ones cast
    # to fp32: memory holds W1 at its stored size (B x k experts per call are cast, a few ms per 64 inputs).
    w1_stored, w1_scale = stored(wts.w1[:Kr], "w1", expert_dtype)  # (K - S, F, D)
    gathered = "w1_sel" if expert_dtype == "fp32" else "w1_sel_s"
    nodes.append(helper.make_node("Gather", [w1_stored, "routed_index"], [gathered], axis=0))  # (B, k, F, D)
    if w1_scale is not None:
        nodes.append(helper.make_node("Gather", [w1_scale, "routed_index"], ["w1_sel_scale"], axis=0))  # (B, k, 1, D)
    w1_sel = as_fp32(gathered, None if w1_scale is None else "w1_sel_scale", "w1_sel",
                     expert_dtype)  # (B, k, F, D)
    nodes += [
        helper.make_node("Reshape", ["x", "x_shape"], ["x4"]),  # (B, 1, 1, F)
        helper.make_node("MatMul", ["x4", w1_sel], ["pre4"]),  # (B, k, 1, D)
        helper.make_node("Squeeze", ["pre4", "axis2"], ["pre"]),  # (B, k, D)
        helper.make_node("Gather", ["b1", "routed_index"], ["b1_sel"], axis=0),  # (B, k, D)
        helper.make_node("Add", ["pre", "b1_sel"], ["pre_b"]),
        helper.make_node("Relu", ["pre_b"], ["hidden"]),  # (B, k, D)
        helper.make_node("Gather", ["w2", "routed_index"], ["w2_sel"], axis=0),  # (B, k, D)
        helper.make_node("Mul", ["hidden", "w2_sel"], ["prod"]),
        helper.make_node("ReduceSum", ["prod", "axis_last"], ["r_sum"], keepdims=0),  # (B, k)
        helper.make_node("Gather", ["b2", "routed_index"], ["b2_sel"], axis=0),  # (B, k)
        helper.make_node("Add", ["r_sum", "b2_sel"], ["routed_rewards"]),  # (B, k)
    ]
    if S > 0:
        shared_dtype = "fp16" if expert_dtype == "int8" else expert_dtype  # see the module docstring
        w1s_stored, w1s_scale = stored(wts.w1[Kr:], "w1_shared", shared_dtype)  # (S, F, D): every input uses
        w1s = as_fp32(w1s_stored, w1s_scale, "w1s", shared_dtype)  # all of them: cast once (folded at load)
        inits += [
            numpy_helper.from_array(wts.b1[Kr:].astype(f32), "b1_shared"),  # (S, D)
            numpy_helper.from_array(wts.w2[Kr:].astype(f32), "w2_shared"),  # (S, D)
            numpy_helper.from_array(wts.b2[Kr:].astype(f32), "b2_shared"),  # (S,)
            numpy_helper.from_array(np.arange(Kr, K, dtype=np.int64)[None], "shared_index_row"),  # (1, S)
            numpy_helper.from_array(np.ones((1, S), dtype=f32), "shared_gate_row"),  # (1, S)
            numpy_helper.from_array(np.array([S], dtype=np.int64), "S"),
            numpy_helper.from_array(np.array([-1, 1, F], dtype=np.int64), "x3_shape"),
        ]
        nodes += [
            helper.make_node("Reshape", ["x", "x3_shape"], ["x3"]),  # (B, 1, F)
            helper.make_node("Unsqueeze", ["x3", "axis2"], ["x3u"]),  # (B, 1, 1, F)
            helper.make_node("MatMul", ["x3u", w1s], ["pre_s4"]),  # (B, S, 1, D)
            helper.make_node("Squeeze", ["pre_s4", "axis2"], ["pre_s"]),  # (B, S, D)
            helper.make_node("Add", ["pre_s", "b1_shared"], ["pre_sb"]),
            helper.make_node("Relu", ["pre_sb"], ["hidden_s"]),  # (B, S, D)
            helper.make_node("Mul", ["hidden_s", "w2_shared"], ["prod_s"]),
            helper.make_node("ReduceSum", ["prod_s", "axis_last"], ["r_sum_s"], keepdims=0),  # (B, S)
            helper.make_node("Add", ["r_sum_s", "b2_shared"], ["shared_rewards"]),  # (B, S)
            helper.make_node("Shape", ["x"], ["batch"], start=0, end=1),  # (1,)
            helper.make_node("Concat", ["batch", "S"], ["bs_shape"], axis=0),  # [B, S]
            helper.make_node("Expand", ["shared_index_row", "bs_shape"], ["shared_index"]),  # (B, S)
            helper.make_node("Expand", ["shared_gate_row", "bs_shape"], ["shared_gates"]),  # (B, S)
            helper.make_node("Concat", ["routed_index", "shared_index"], ["expert_index"], axis=1),
            helper.make_node("Concat", ["routed_gates", "shared_gates"], ["gates"], axis=1),
            helper.make_node("Concat", ["routed_rewards", "shared_rewards"],
                             ["rewards" if wts.reward_bound <= 0 else "r_raw"], axis=1),  # (B, k + S)
        ]
    else:
        nodes += [helper.make_node("Identity", ["routed_index"], ["expert_index"]),
                  helper.make_node("Identity", ["routed_gates"], ["gates"]),
                  helper.make_node("Identity", ["routed_rewards"],
                                   ["rewards" if wts.reward_bound <= 0 else "r_raw"])]
    if wts.reward_bound > 0:
        inits.append(numpy_helper.from_array(np.array(wts.reward_bound, dtype=f32), "reward_bound"))
        nodes += [helper.make_node("Div", ["r_raw", "reward_bound"], ["r_div"]),
                  helper.make_node("Tanh", ["r_div"], ["r_tanh"]),
                  helper.make_node("Mul", ["r_tanh", "reward_bound"], ["rewards"])]  # (B, k + S) in (-c, c)
    n_out = top_k + S
    graph = helper.make_graph(
        nodes, "moe_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", F])],
        [helper.make_tensor_value_info("expert_index", TensorProto.INT64, ["batch", n_out]),
         helper.make_tensor_value_info("gates", TensorProto.FLOAT, ["batch", n_out]),
         helper.make_tensor_value_info("rewards", TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HEAD_OPSET)],
                              producer_name="moerm-lite")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def stored_expert_dtype(model: onnx.ModelProto) -> str:
    """The ``expert_dtype`` a graph ``build_head_graph`` wrote stores its routed experts' W1 in."""
    names = {i.name for i in model.graph.initializer}
    return "fp16" if "w1_h" in names else "int8" if "w1_q" in names else "fp32"


def read_head_weights(model: onnx.ModelProto) -> HeadWeights:
    """The ``HeadWeights`` of a graph ``build_head_graph`` wrote (fp16 and int8 expert weights dequantized)."""
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def w1(name: str) -> np.ndarray:
        if name + "_q" in init:
            return init[name + "_q"].astype(np.float64) * init[name + "_s"]
        return init[name + "_h" if name + "_h" in init else name].astype(np.float64)

    parts = [w1("w1")] + ([w1("w1_shared")] if "b1_shared" in init else [])
    shared = {k: init.get(f"{k}_shared") for k in ("b1", "w2", "b2")}

    def cat(k: str) -> np.ndarray:
        return init[k] if shared[k] is None else np.concatenate([init[k], shared[k]])

    return HeadWeights(router_w=init["router_w"], router_b=init["router_b"], w1=np.concatenate(parts),
                       b1=cat("b1"), w2=cat("w2"), b2=cat("b2"),
                       reward_bound=float(init["reward_bound"]) if "reward_bound" in init else 0.0,
                       feat_mean=init["feat_mean"], feat_std=init["feat_std"])
