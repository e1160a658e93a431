"""A tiny model folder built without torch: random weights, a 60-word WordPiece vocabulary.

The backbone is an embedding bag (token + segment embeddings, tanh, masked
mean): enough to exercise tokenization, padding, batching and the head graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from moerm_build.graphs.onnx_head import HeadWeights, build_head_graph
from moerm_build.release.package import REFERENCE, make_config, write_model_folder
from moerm_lite.features import DEFAULT_LAYOUT, feature_dim
from moerm_lite.request_gate import RequestGate

WORDS = ["the", "a", "is", "and", "of", "to", "in", "it", "good", "bad", "great", "awful", "kind", "rude", "help", "harm", "yes", "no", "cat", "dog", "math", "art", "music", "sport", "science", "risk", "god", "money", "power", "love", "hate", "fast", "slow", "long", "short", "true", "false", "please", "sorry", "thanks", "hello", "answer", "question", "why", "how", "what", "ok", "fine", "safe", "danger", "nice", "mean"]
H, D = 16, 8


def tiny_tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok.decoder = decoders.WordPiece()
    tok.enable_truncation(128)  # like MiniLM's file: the runtime must override this
    return tok


def tiny_backbone(vocab_size: int, rng: np.random.Generator) -> onnx.ModelProto:
    """ids, mask, types (B, L) -> embedding (B, H) = masked mean of tanh(E[ids] + T[types])."""
    E = rng.normal(size=(vocab_size, H)).astype(np.float32)
    T = rng.normal(scale=0.3, size=(2, H)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["tok"], axis=0),  # (B, L, H)
        helper.make_node("Gather", ["T", "token_type_ids"], ["seg"], axis=0),  # (B, L, H)
        helper.make_node("Add", ["tok", "seg"], ["x"]),
        helper.make_node("Tanh", ["x"], ["hid"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),  # (B, L)
        helper.make_node("Unsqueeze", ["m", "ax"], ["m3"]),  # (B, L, 1)
        helper.make_node("Mul", ["hid", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "ax1"], ["s"], keepdims=0),  # (B, H)
        helper.make_node("ReduceSum", ["m3", "ax1"], ["n"], keepdims=0),  # (B, 1)
        helper.make_node("Div", ["s", "n"], ["embedding"]),
    ]
    inits = [numpy_helper.from_array(E, "E"), numpy_helper.from_array(T, "T"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "ax"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1")]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "tiny_backbone", ins,
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


F = feature_dim(H)  # pair features of the tiny backbone's embeddings


def random_head(K: int, rng: np.random.Generator, n_shared: int = 0, F: int = F) -> HeadWeights:
    Kr = K - n_shared
    return HeadWeights(router_w=rng.normal(size=(F, Kr)), router_b=rng.normal(scale=0.1, size=Kr),
                       w1=rng.normal(size=(K, F, D)) / np.sqrt(F), b1=rng.normal(scale=0.1, size=(K, D)),
                       w2=rng.normal(size=(K, D)) / np.sqrt(D), b2=rng.normal(scale=0.1, size=K),
                       feat_mean=rng.normal(scale=0.1, size=F), feat_std=rng.uniform(0.5, 2.0, size=F))


def tiny_reference(n: int = 40, seed: int = 3) -> list[dict]:
    """Reference rows: "good ..." / "bad ..." texts labelled ``tone`` +1 / -1, from two sources."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        y = 1 if i % 2 == 0 else -1
        words = " ".join(rng.choice(WORDS[:30], rng.integers(2, 8)))
        rows.append({"prompt": "why" if i % 3 else "", "response": f"{'good kind' if y > 0 else 'bad rude'} {words}",
                     "source": "left" if i < n // 2 else "right", "labels": {"tone": y}})
    return rows


def build_tiny_folder(out: Path, *, K: int = 6, top_k: int = 2, n_shared: int = 2, seed: int = 0,
                      max_length: int = 24, model_id: str = "tiny-test", reference: bool = True,
                      feature_layout: str = DEFAULT_LAYOUT, request_gate: RequestGate | None = None
                      ) -> tuple[Path, HeadWeights]:
    """Write a tiny model folder with int8 (int8 experts) and fp32 graphs, its head taking pair features of
    ``feature_layout`` (and ``request_gate`` in its config); returns it and its head."""
    rng = np.random.default_rng(seed)
    tok = tiny_tokenizer()
    head = random_head(K, rng, n_shared, feature_dim(H, feature_layout))
    backbone = tiny_backbone(tok.get_vocab_size(), rng)
    cfg = make_config(model_id=model_id, n_experts=K, top_k=top_k, n_shared=n_shared,
                      expert_names=[f"expert_{i}" for i in range(K)], w0=rng.normal(size=K).tolist(),
                      max_length=max_length, hidden_size=H, precisions=["int8", "fp32"],
                      feature_layout=feature_layout, request_gate=request_gate)
    graphs = {"onnx/backbone_fp32.onnx": backbone, "onnx/backbone_int8.onnx": backbone,
              "onnx/head_fp32.onnx": build_head_graph(head, top_k),
              "onnx/head_int8.onnx": build_head_graph(head, top_k, expert_dtype="int8")}
    extra = {}
    if reference:
        cfg["reference"] = REFERENCE
        extra[REFERENCE] = "".join(json.dumps(r) + "\n" for r in tiny_reference())
    write_model_folder(out, cfg, graphs, tok.to_str(), "# tiny-test\nRandom weights, for tests only.\n", extra)
    return out, head
