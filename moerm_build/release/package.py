"""Write a model folder (the format ``moerm_lite.folder`` reads), atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from moerm_lite.features import DEFAULT_LAYOUT
from moerm_lite.folder import (CONFIG, RECOMMENDED_RESIDUAL_STRENGTH, GraphFiles, ModelConfig, atomic_write_text,
                               write_manifest)
from moerm_lite.request_gate import RequestGate

REFERENCE = "reference.jsonl"  # the expert-card reference corpus inside a model folder
EXPERT_CARDS = "expert_cards.json"  # the cards read off it at export


def make_config(*, model_id: str, n_experts: int, top_k: int, expert_names: list[str], w0: list[float],
                max_length: int, hidden_size: int, precisions: list[str], n_shared: int = 0,
                gating: str = "topk_softmax",
                default_prior_strength: float = 1.0,
                recommended_residual_strength: float | str = RECOMMENDED_RESIDUAL_STRENGTH,
                recommended_residual_prior: dict[str, float] | None = None,
                prior_precision: Any = None, request_gate: RequestGate | None = None, backbone_name: str = "",
                per_sequence: tuple[str, ...] = ("int8",), dequantize_at_load: tuple[str, ...] = (),
                feature_layout: str = DEFAULT_LAYOUT, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` dict (``ModelConfig.to_dict``, the one definition of the format) for a model
    whose graphs are ``onnx/{backbone,head}_{precision}.onnx``."""
    score = {"kind": "raw_logit", "higher_is_better": True, "formula": "sum_k gate_k * weight_k * reward_k",
             "pairwise": "sigmoid(score_a - score_b) = P(a preferred over b)"}
    cfg = ModelConfig(
        model_id=model_id, n_experts=n_experts, top_k=top_k, n_shared=n_shared, expert_names=list(expert_names),
        w0=[float(x) for x in w0], max_length=max_length, hidden_size=hidden_size, backbone_name=backbone_name,
        feature_layout=feature_layout,
        default_prior_strength=default_prior_strength, recommended_residual_strength=recommended_residual_strength,
        recommended_residual_prior=recommended_residual_prior,
        prior_precision=None if prior_precision is None else [[float(x) for x in row] for row in prior_precision],
        request_gate=request_gate,
        graphs={p: GraphFiles(backbone=f"onnx/backbone_{p}.onnx", head=f"onnx/head_{p}.onnx",
                              per_sequence=p in per_sequence, dequantize_at_load=p in dequantize_at_load)
                for p in precisions},
        extra={"gating": gating, "score": score, **(extra or {})})
    return cfg.to_dict()


def write_model_folder(out: Path, config: dict[str, Any], graphs: dict[str, onnx.ModelProto],
                       tokenizer_json: str, card: str, extra_files: dict[str, str] | None = None) -> Path:
    """Write config, graphs (``{relative path: model}``), tokenizer, card and manifest to ``out``.

    The folder is assembled beside ``out`` and renamed into place, so a crash
    never leaves a half-written model where a loader would find it.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "onnx").mkdir()
        for rel, model in graphs.items():
            onnx.save(model, str(tmp / rel))
        (tmp / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        (tmp / "README.md").write_text(card)
        for rel, text in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        write_manifest(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def add_file(folder: Path, rel: str, text: str, config_key: str) -> None:
    """Put (or replace) a file in an existing model folder, named by ``config.json[config_key]``;
    graphs untouched, manifest refreshed."""
    folder = Path(folder)
    atomic_write_text(folder / rel, text)
    config = json.loads((folder / CONFIG).read_text())
    config[config_key] = rel
    atomic_write_text(folder / CONFIG, json.dumps(config, indent=1) + "\n")
    write_manifest(folder)


def add_reference(folder: Path, reference_jsonl: str) -> None:
    """Put (or replace) the reference corpus in an existing model folder; graphs untouched."""
    add_file(folder, REFERENCE, reference_jsonl, "reference")


def add_expert_cards(folder: Path, n_texts: int = 3) -> list[dict[str, Any]]:
    """Compute the expert cards once (every attribute's correlation) and store them in the folder."""
    from moerm_lite import RewardModel

    cards = RewardModel.load(folder).compute_expert_cards(n_texts=n_texts, n_attributes=None)
    add_file(folder, EXPERT_CARDS, json.dumps(cards, indent=1, ensure_ascii=False) + "\n", "expert_cards")
    return cards


def rename_experts(folder: Path, names: list[str]) -> bool:
    """Give a model folder's experts ``names`` (K,) in config.json and its stored expert cards; graphs
    untouched, manifest refreshed. Returns whether any name changed."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG).read_text())
    if len(names) != config["n_experts"]:
        raise ValueError(f"{len(names)} names for {config['n_experts']} experts")
    if list(names) == config["expert_names"]:
        return False
    config["expert_names"] = list(names)
    atomic_write_text(folder / CONFIG, json.dumps(config, indent=1) + "\n")
    if config.get("expert_cards"):
        cards = json.loads((folder / config["expert_cards"]).read_text())
        for c in cards:
            c["name"] = names[c["expert"]]
        atomic_write_text(folder / config["expert_cards"], json.dumps(cards, indent=1, ensure_ascii=False) + "\n")
    write_manifest(folder)
    return True


def update_card(folder: Path, card: str) -> None:
    """Replace a model folder's card and refresh its manifest (graphs untouched)."""
    folder = Path(folder)
    atomic_write_text(folder / "README.md", card)
    write_manifest(folder)
