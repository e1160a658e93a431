"""The backbone as ONNX: a Hugging Face encoder with mean pooling inside the graph, fp32; and read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from moerm_build.model import Backbone

BACKBONE_OPSET = 17


class _Pooled(torch.nn.Module):
    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_ids, attention_mask, token_type_ids)


def export_backbone(backbone: Backbone, path: Path, *, dynamo: bool = False, attention: str = "eager") -> Path:
    """``input_ids, attention_mask, token_type_ids (B, L)`` -> ``embedding (B, H)`` as ONNX fp32.

    ``attention="eager"`` exports attention as plain MatMul/Softmax: the "sdpa" export of recent
    transformers adds mask handling (``Where``/``IsNaN``) that took 19% of the shipped graph's time
    and blocks onnxruntime's attention fusion (``bench/quant_levers.py``).
    """
    backbone.eval()
    encoder = backbone.encoder
    before = getattr(encoder.config, "_attn_implementation", None)
    if attention and hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation(attention)
    try:
        return _export(backbone, path, dynamo)
    finally:
        if before and hasattr(encoder, "set_attn_implementation"):
            encoder.set_attn_implementation(before)


def _export(backbone: Backbone, path: Path, dynamo: bool) -> Path:
    # realistic example inputs: a padded row and two segments, so no exporter specialises on all-ones masks
    ids = torch.randint(0, int(backbone.encoder.config.vocab_size), (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    kwargs: dict[str, Any] = {"input_names": ["input_ids", "attention_mask", "token_type_ids"],
                              "output_names": ["embedding"], "opset_version": BACKBONE_OPSET}
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        kwargs["dynamic_shapes"] = {n: {0: batch, 1: seq} for n in kwargs["input_names"]}
        kwargs["opset_version"] = 18
    else:
        kwargs["dynamic_axes"] = {**{n: {0: "batch", 1: "seq"} for n in kwargs["input_names"]},
                                  "embedding": {0: "batch"}}
    if dynamo:  # the dynamo exporter may already use the name "embedding" for an internal value
        kwargs["output_names"] = ["pooled_output"]
    with torch.no_grad():
        torch.onnx.export(_Pooled(backbone).eval(), (ids, mask, types), str(path), dynamo=dynamo,
                          **kwargs)
    if dynamo:
        m = onnx.load(str(path))
        _rename_value(m, "embedding", "embedding_internal")
        _rename_value(m, "pooled_output", "embedding")
        onnx.save(m, str(path))
    return path


def _rename_value(m: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a value everywhere in a graph (node inputs/outputs, graph outputs, value infos)."""
    g = m.graph
    for node in g.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for vi in list(g.output) + list(g.value_info) + list(g.input):
        if vi.name == old:
            vi.name = new
    for init in g.initializer:
        if init.name == old:
            init.name = new


def read_backbone_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The fp32 weights a backbone graph computes with, by ``Backbone`` state-dict name: the inverse of
    ``export_backbone`` for its fp32 graphs and for those ``quantize_backbone`` wrote, whose 8-bit
    levels (one blockwise ``DequantizeLinear`` per MatMul weight) and int8 embedding rows (a scale per
    row) come back dequantized as onnxruntime folds them at load.

    A weight is named by the node that reads it (the exporter shares one initializer among equal
    tensors, so an initializer's own name may be another weight's): a MatMul's constant (K, N) is
    ``<node path>.weight`` as a ``Linear``'s (N, K), an Add's constant ``<path>.bias``, a
    LayerNormalization's ``<path>.weight`` and ``.bias``, an embedding Gather's table ``<path>.weight``."""
    from onnx import helper, numpy_helper

    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:  # 8-bit levels -> the fp32 weight the runtime folds them to; shared ones passed on
        if node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
        elif node.op_type == "DequantizeLinear" and all(x in consts for x in node.input):
            at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            levels, scales = consts[node.input[0]], consts[node.input[1]]  # (K, N) int8, (K / blk, N)
            if len(node.input) > 2 or at.get("axis") != 0 or levels.ndim != 2:
                raise ValueError(f"{node.output[0]}: only a symmetric blockwise DequantizeLinear on axis 0 "
                                 "is read")
            per_row = np.repeat(scales, int(at["block_size"]), axis=0)  # (K, N)
            consts[node.output[0]] = levels.astype(np.float32) * per_row

    def at_path(node: onnx.NodeProto, leaf: str) -> str:
        parts = node.name.strip("/").split("/")[:-1]  # backbone, encoder, encoder, layer.0, ..., query
        if parts[:1] != ["backbone"]:
            raise ValueError(f"node {node.name!r} ({node.op_type}): not a node of an exported backbone")
        return ".".join(parts[1:] + [leaf])

    out: dict[str, np.ndarray] = {}
    for node in g.node:
        ins = [consts.get(x) for x in node.input]
        if node.op_type == "MatMul" and ins[1] is not None:
            out[at_path(node, "weight")] = np.ascontiguousarray(ins[1].T, dtype=np.float32)  # (N, K)
        elif node.op_type == "Add" and ins[0] is not None and ins[0].ndim == 1:
            out[at_path(node, "bias")] = ins[0].astype(np.float32)
        elif node.op_type == "LayerNormalization":
            scale, shift = ins[1], ins[2]
            if scale is None or shift is None:
                raise ValueError(f"{node.name}: a LayerNormalization whose scale or bias is not a constant")
            out[at_path(node, "weight")] = scale.astype(np.float32)
            out[at_path(node, "bias")] = shift.astype(np.float32)
        elif node.op_type == "Gather" and ins[0] is not None and ins[0].ndim == 2 and node.name:
            out[at_path(node, "weight")] = ins[0].astype(np.float32)
    for name, value in consts.items():  # int8 rows (quantize_embedding_rows): the table's name, rows x scale
        if name.startswith("backbone.") and name.endswith(".weight_q") and name[:-2] + "_scale" in consts:
            out[name[len("backbone."):-2]] = value.astype(np.float32) * consts[name[:-2] + "_scale"]  # (V, H)
    return out


def backbone_from_graph(path: "str | Path", template: "str | Path") -> Backbone:
    """The encoder a backbone graph computes, in PyTorch fp32: the architecture of ``template`` (a local
    Hugging Face folder of the same family, e.g. all-MiniLM-L6-v2 for a model fine-tuned from it), its
    layers cut to the graph's, every weight read from the graph (``read_backbone_weights``; the pooler,
    which mean pooling never reads, keeps the template's). A weight the graph lacks or the template does
    not have is an error naming it."""
    weights = read_backbone_weights(onnx.load(str(path)))
    backbone = Backbone(template)
    layers = {int(k.split(".")[3]) for k in weights if k.startswith("encoder.encoder.layer.")}
    if layers and len(layers) < len(backbone.encoder.encoder.layer):
        backbone.keep_layers(sorted(layers))
    state = backbone.state_dict()
    unused = ("encoder.pooler.", "encoder.embeddings.position_ids")  # mean pooling reads no pooler
    missing = sorted(k for k in state if k not in weights and not k.startswith(unused))
    extra = sorted(k for k in weights if k not in state)
    if missing or extra:
        raise ValueError(f"{path}: the graph's weights do not fit the template {template}: missing "
                         f"{missing[:3]}, not in the template {extra[:3]}")
    with torch.no_grad():
        for k, v in weights.items():
            if tuple(state[k].shape) != v.shape:
                raise ValueError(f"{path}: {k} is {v.shape} in the graph, {tuple(state[k].shape)} in "
                                 f"{template}")
            state[k].copy_(torch.from_numpy(v))
    return backbone.eval()
