"""The backbone as ONNX: a Hugging Face encoder with mean pooling inside the graph, fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
