"""Checkpoint -> model folder: the orchestration. Backbone graph: ``moerm_build.graphs.onnx_backbone``; its
int8 variants: ``moerm_build.graphs.quantize`` (default: 8-bit weights in blocks of 16 rounded by GPTQ on the
checkpoint's calibration texts, fp32 activations, int8 embedding rows); head: ``moerm_build.graphs.onnx_head``
(sparse dispatch; router kept fp32; expert weights fp16 in the int8 folder's head by default);
folder, config and manifest: ``moerm_build.release.package``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np
import onnx

from moerm_lite.experts import trim_card
from moerm_lite.folder import RECOMMENDED_RESIDUAL_STRENGTH, residual_setting
from moerm_lite.request_gate import RequestGate

from moerm_build.evaluate.report import EvalReport
from moerm_build.graphs.onnx_backbone import export_backbone
from moerm_build.graphs.onnx_head import HeadWeights, build_head_graph
from moerm_build.graphs.quantize import calibration_feeds, quantize_backbone
from moerm_build.model import Backbone, MoEHead
from moerm_build.release.card import model_card
from moerm_build.release.package import REFERENCE, add_expert_cards, make_config, update_card, write_model_folder
from moerm_build.train.embed import backbone_name
from moerm_build.train.train import load_checkpoint

log = logging.getLogger("moerm_build")


def head_weights(head: MoEHead) -> HeadWeights:
    """The torch head's parameters as numpy arrays in the graph's layout."""
    d = {k: v.detach().double().numpy() for k, v in head.state_dict().items()}
    w1 = head.expert_w1().detach().double().numpy()  # (K, F, D), the shared experts' masked rows 0
    return HeadWeights(router_w=d["router.weight"].T, router_b=d["router.bias"], w1=w1, b1=d["b1"],
                       w2=d["w2"], b2=d["b2"], reward_bound=float(head.args.reward_bound),
                       feat_mean=d["feat_mean"], feat_std=d["feat_std"])


def export_model(run: "str | Path", out: "str | Path", *, precision: str = "int8", also_fp32: bool = False,
                 quant: str = "gptq8", head_experts: str = "fp16",
                 report: "str | Path | EvalReport | dict[str, Any] | None" = None,
                 model_id: Optional[str] = None, extra_files: Optional[dict[str, str]] = None,
                 reference: Optional[list[dict[str, Any]]] = None, prune: bool = True) -> Path:
    """Write the model folder for a training run; returns its path.

    ``report`` (an ``evaluate`` result, or its JSON file) supplies the measured default prior
    strength (``prior_strength``, lambda), the data-derived ``expert_names`` and the card's metrics.
    ``reference`` rows (``moerm_build/evaluate/reference.py``) are shipped as ``reference.jsonl``, and the
    expert cards the runtime reads off them go into the model card. ``quant`` is the int8
    backbone variant (``quantize_backbone``); ``head_experts`` the int8 head's routed experts' weight type
    (``fp16``, or ``int8`` per channel: half their size, a little further from torch; shared experts stay
    fp16, ``moerm_build.graphs.onnx_head``).
    """
    ckpt, head = load_checkpoint(run)
    backbone = Backbone(ckpt["backbone_path"])  # frozen in training: a fine-tuned one is its own folder
    args, cfg = head.args, ckpt["config"]
    rep = cast(EvalReport, report if isinstance(report, dict) else
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
                if quant in ("gptq8", "gptq8_nbits"):
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
    gate = ckpt.get("request_gate")  # its experts in the run's numbering: the kept ones in the folder's
    gate_experts = [keep.index(k) for k in (gate or {}).get("experts", []) if k in keep]
    config = make_config(
        model_id=model_id, n_experts=len(keep), top_k=args.top_k, expert_names=names,
        w0=head.w0.detach().double().numpy()[keep].tolist(), max_length=cfg["max_length"],
        hidden_size=int(backbone.n_embd), n_shared=args.n_shared, feature_layout=cfg["feature_layout"],
        precisions=precisions, gating=args.gating,
        default_prior_strength=float(rep.get("prior_strength", cast("dict[str, Any]", rep).get("lambda", 1.0))),
        recommended_residual_strength=residual_setting(rep.get("residual_strength", RECOMMENDED_RESIDUAL_STRENGTH)),
        recommended_residual_prior=rep.get("residual_prior"),  # a report from before it: none
        prior_precision=None if P is None else (P + P.T) / 2,
        request_gate=RequestGate(tuple(gate_experts), tuple(gate["weights"])) if gate and gate_experts
        else None,
        per_sequence=("int8",) if quant == "dynamic" else (),
        dequantize_at_load=("int8",) if quant == "gptq8" else (),
        backbone_name=backbone_name(ckpt["backbone_path"]),
        extra={"quantization": {"int8_backbone": quant,
                                "head": f"router fp32, expert W1 {head_experts}"},
               "training": {"mode": ckpt["mode"], "backbone_hash": ckpt["backbone_hash"],
                            "kept_experts": keep, "trained_experts": args.n_experts,
                            "train_backbone_layers": 0,  # the head never trains the backbone (a fine-tuned one
                            #                              is its own folder, backbone_hash); kept: hashed config
                            "sources": cfg["sources"],
                            "degrade_families": (cfg.get("degrade_families", []) if "degrade" in cfg["sources"]
                                                 or "degrade" in cfg.get("readout_sources", []) else []),
                            "readout": ({"experts": args.n_readout, **(ckpt.get("readout") or {})}
                                        if args.n_readout else None),
                            "request_gate": gate_record(gate) if gate and gate_experts else None}},
    )
    extra_files = dict(extra_files or {})
    if reference:
        from moerm_build.evaluate.reference import to_jsonl

        extra_files[REFERENCE] = to_jsonl(reference)
        config["reference"] = REFERENCE
    card = model_card(config, ckpt, rep)
    folder = write_model_folder(Path(out), config, graphs, tok.to_str(), card, extra_files)
    if reference:
        cards = add_expert_cards(folder)
        update_card(folder, model_card(json.loads((folder / "config.json").read_text()), ckpt,
                                       cast(EvalReport, {**rep, "expert_cards": [trim_card(c, 3, 3) for c in cards]})))
    log.info("wrote %s (%s)", folder, ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB"
                                                for p in sorted((folder / "onnx").iterdir())))
    return folder


def gate_record(gate: dict[str, Any]) -> dict[str, Any]:
    """What the run's request gate was fitted on, for config.json's ``training``: its experts in the run's
    numbering (``run_experts``; the folder's ``request_gate`` has them in its own), not its weights."""
    fitted = {k: v for k, v in gate.items() if k not in ("experts", "weights")}
    return {**fitted, "run_experts": gate["experts"]}


def used_experts(report: EvalReport, n_experts: int, n_shared: int) -> list[int]:
    """The experts to ship: every shared expert, and each routed one that some held-out input of some
    source routes to (``report["routing_share_by_source"]``; all of them without a report)."""
    shares = report.get("routing_share_by_source")
    if not shares:
        return list(range(n_experts))
    Kr = n_experts - n_shared
    return [k for k in range(n_experts) if k >= Kr or max(v[k] for v in shares.values()) > 0]
