"""Quantizing the backbone graph: 8-bit weights (GPTQ or nearest), int8 embedding rows, fp16 weights,
onnxruntime's dynamic int8; and the calibration feeds GPTQ rounds on."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx

QUANT_VARIANTS = ("gptq8", "gptq8_nbits", "weight_only8", "weight_only8_int8_compute", "dynamic", "fp16_weights")


def quantize_embedding_rows(model: onnx.ModelProto, min_rows: int = 1000) -> onnx.ModelProto:
    """Store large embedding tables int8 with one scale per row (token), standard ops only.

    ``Gather(table, ids)`` becomes ``Cast(Gather(table_q, ids)) * Gather(row_scale, ids)``.
    Per-row scales keep every token's vector within 0.4% of its largest entry.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    for node in g.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.dims[0] < min_rows:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(table).astype(np.float32)  # (V, H)
        scale = np.maximum(np.abs(w).max(1, keepdims=True), 1e-12) / 127.0  # (V, 1)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)  # (V, H)
        name = table.name
        g.initializer.remove(table)
        g.initializer.extend([numpy_helper.from_array(q, name + "_q"),
                              numpy_helper.from_array(scale.astype(np.float32), name + "_scale")])
        out = node.output[0]
        new_nodes += [
            helper.make_node("Gather", [name + "_q", node.input[1]], [out + "_q"], axis=0),
            helper.make_node("Cast", [out + "_q"], [out + "_f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Gather", [name + "_scale", node.input[1]], [out + "_s"], axis=0),
            helper.make_node("Mul", [out + "_f", out + "_s"], [out]),
        ]
    del g.node[:]
    g.node.extend(new_nodes)
    return model


def fp16_matmul_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store MatMul (and fused Attention) weight initializers as fp16 with a Cast to fp32, which
    onnxruntime folds at load: half the file, fp32 compute."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type in ("MatMul", "Attention") and len(node.input) > 1 else None
        if w is not None and len(w.dims) == 2:
            g.initializer.remove(w)
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float16),
                                                         w.name + "_fp16"))
            new_nodes.append(helper.make_node("Cast", [w.name + "_fp16"], [w.name], to=onnx.TensorProto.FLOAT))
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    return model


DEQUANTIZE_OPSET = 21  # DequantizeLinear with block_size (blockwise scales) needs opset 21


def dequantize_at_load(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each 8-bit ``MatMulNBits`` by a plain ``MatMul`` whose weight is one blockwise
    ``DequantizeLinear`` (opset 21) of the same stored int8 levels and block scales.

    The runtime folds these to fp32 weights when it builds the session (the model folder marks the
    graph ``dequantize_at_load``; ``moerm_lite.sessions.cpu_session`` turns onnxruntime's QDQ fusions off,
    which would otherwise quantize the activations too and move the scores): the file keeps its 8-bit
    size, the weights sit in memory as fp32 and run on the fp32 GEMM, which on x86 is faster than
    ``MatMulNBits`` (rank() of 8 candidates: 1.4x). One node per weight folds faster and with a lower
    memory peak than the equivalent Cast, Mul and Reshape (session build 0.10 s vs 0.17 s, peak RSS
    130 MB vs 216 MB for MiniLM-L6). See docs/decisions/speed.md."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    for node in g.node:
        if node.op_type != "MatMulNBits":
            new_nodes.append(node)
            continue
        at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if at.get("bits") != 8 or len(node.input) != 3:
            raise ValueError(f"{node.name}: only symmetric 8-bit MatMulNBits without zero points or bias")
        K, N, blk = int(at["K"]), int(at["N"]), int(at["block_size"])
        packed = numpy_helper.to_array(inits[node.input[1]])  # (N, K / blk, blk) uint8, zero point 128
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(N, K // blk)  # (N, K / blk)
        levels = (packed.astype(np.int16) - 128).astype(np.int8).reshape(N, K).T  # (K, N)
        block_scales = scales.T.astype(np.float32)  # (K / blk, N): one scale per block of blk input rows
        name = node.input[1]
        for x in node.input[1:]:
            g.initializer.remove(inits[x])
        g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(levels), name + "_levels"),
                              numpy_helper.from_array(np.ascontiguousarray(block_scales), name + "_block_scales")])
        new_nodes += [
            helper.make_node("DequantizeLinear", [name + "_levels", name + "_block_scales"], [name + "_w"],
                             axis=0, block_size=blk),  # (K, N) fp32
            helper.make_node("MatMul", [node.input[0], name + "_w"], list(node.output), name=node.name + "_fp32"),
        ]
    del g.node[:]
    g.node.extend(new_nodes)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, DEQUANTIZE_OPSET)
    model.ir_version = max(model.ir_version, 10)  # opset 21 needs IR version 10
    return model


def quantize_backbone(fp32: Path, out: Path, variant: str = "gptq8",
                      calibration: Optional[Iterable[dict[str, np.ndarray]]] = None) -> Path:
    """int8 backbone; every variant stores the embedding tables int8 per row (half of MiniLM's size).

    - ``gptq8``: 8-bit weights in blocks of 16 whose levels GPTQ chooses on ``calibration`` (padded
      backbone feeds): the most accurate (MiniLM: embedding error 1.1% vs 1.6%); stored as int8 and
      dequantized to fp32 at load (``dequantize_at_load``): the size of 8 bits, the speed of fp32;
    - ``gptq8_nbits``: the same levels kept in ``MatMulNBits``: ~60 MB less memory, slower;
    - ``weight_only8``: 8-bit weights in blocks of 16 (MatMulNBits) rounded to nearest, fp32
      activations, batch-invariant;
    - ``weight_only8_int8_compute``: the same weights, activations quantized per row and block
      (``accuracy_level=4``): faster, still batch-invariant;
    - ``dynamic``: onnxruntime dynamic quantization with per-channel weights: fastest, least accurate;
      it quantizes activations per call, so the runtime runs it one sequence at a time;
    - ``fp16_weights``: fp16 MatMul weights, fp32 compute (MiniLM: 34 MB, 99.7% identical routing,
      as fast as fp32) -- the candidate when the int8 variants miss the parity targets.
    """
    if variant not in QUANT_VARIANTS:
        raise ValueError(f"unknown quantization variant {variant!r}; choose from {QUANT_VARIANTS}")
    if variant == "fp16_weights":  # not int8 at all: fp16 weights, int8 embedding rows, fp32 compute
        onnx.save(fp16_matmul_weights(quantize_embedding_rows(onnx.load(str(fp32)))), str(out))
        return out
    if variant in ("gptq8", "gptq8_nbits"):
        from moerm_build.graphs.gptq import quantize_gptq8

        if calibration is None:
            raise ValueError(f"the {variant} variant needs calibration batches")
        q = quantize_embedding_rows(quantize_gptq8(fp32, calibration))
        onnx.save(dequantize_at_load(q) if variant == "gptq8" else q, str(out))
        return out
    if variant == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"])
        return out
    from moerm_build.graphs.gptq import round_to_nearest8

    level = 4 if variant == "weight_only8_int8_compute" else None
    onnx.save(quantize_embedding_rows(round_to_nearest8(onnx.load(str(fp32)), level)), str(out))
    return out


def calibration_feeds(ckpt: dict[str, Any], tokenizer_file: Path,
                      batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """The checkpoint's calibration pairs as padded backbone batches of their prompts and responses,
    tokenized as the runtime does."""
    from moerm_lite.text import TextTokenizer

    pairs = [tuple(p) for p in ckpt["calibration"]]
    tok = TextTokenizer(tokenizer_file, ckpt["config"]["max_length"])
    ids: list[np.ndarray] = []
    for role, texts in (("prompt", sorted({p for p, _ in pairs if p.strip()})),
                        ("response", sorted({r for _, r in pairs}))):
        ids += tok.encode(texts, role)[0]
    order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths per batch: less padding
    return [tok.pad([ids[i] for i in idx]) for idx in np.array_split(order, max(1, -(-len(order) // batch_size)))]
