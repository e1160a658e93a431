"""The release pipeline: train, evaluate, export int8, evaluate through the folder, write the report and
the card (``python -m moerm_build release ...``, run from the repository root).

    python -m moerm_build release build               # -> models/moerm-minilm and runs/ship*/ (~1 h, 2 cores)
    python -m moerm_build release build --quick       # small smoke run into runs/quick (not for shipping)
    python -m moerm_build release build --config moerm_build/configs/moerm-minilm-quality.json \
        --out runs/quality/moerm-minilm --runs runs/quality   # the fine-tuned-encoder candidate
    python -m moerm_build release build --resume      # reuse runs/ship/ckpt.pt (missing read-outs, gate), then the rest
    python -m moerm_build release refresh             # keep the graphs; redo reference corpus, expert cards,
                                                      # active-question curve, robustness and the card
    python -m moerm_build release reexport backbone   # re-export one graph of the shipped run with today's
    python -m moerm_build release reexport head       # export code; refused if a parity score moves; card
    python -m moerm_build release reevaluate          # re-run the evaluation through the folder with today's
                                                      # code (expert names too); keep parity, references
    python -m moerm_build release check               # both graphs exported again into a copy: byte-identical
                                                      # to the folder's? the largest score change (~8 min)

One report (``EvalReport``, ``runs/ship/report.json``) flows through every step; the card is written from it
at the end of each command (``moerm_build.release.card``). Needs the export extra (torch pinned: pip
install torch==2.13.0) and ../shared/data.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from moerm_build.evaluate.active_eval import model_active_curve
from moerm_build.evaluate.metrics import RuntimeFeaturizer, TorchFeaturizer
from moerm_build.evaluate.parity import embedding_error, parity_report, selection_agreement
from moerm_build.evaluate.reference import reference_corpus, to_jsonl
from moerm_build.evaluate.report import EvalReport, evaluate
from moerm_build.evaluate.robustness import readout_family_out
from moerm_build.evaluate.robustness import report as robustness_report
from moerm_build.evaluate.robustness import trained_families
from moerm_build.release.card import model_card
from moerm_build.release.onnx_export import export_model
from moerm_build.release.package import add_reference, rename_experts, update_card
from moerm_build.train.train import TrainConfig, load_checkpoint, readout_run, train
from moerm_lite import RewardModel
from moerm_lite.folder import GraphFiles, ModelConfig



def ensure_backbone(cfg: TrainConfig) -> None:
    """Fine-tune (or resume) the config's ``backbone`` with its ``encoder_recipe`` where the folder is missing:
    ``python -m moerm_build finetune --config <encoder_recipe> --out <backbone's parent>``. Paths are relative to
    the working directory (the repository root)."""
    from moerm_build.train.finetune import FinetuneConfig, finetune

    if not cfg.encoder_recipe or (Path(cfg.backbone) / "config.json").is_file():
        return
    recipe = FinetuneConfig.from_json(cfg.encoder_recipe)
    if Path(cfg.backbone).name != recipe.name:
        raise ValueError(f"backbone {cfg.backbone!r} is not what encoder_recipe {cfg.encoder_recipe!r} writes: "
                         f"a folder named {recipe.name!r}")
    finetune(recipe, Path(cfg.backbone).parent)


CONFIG = Path(__file__).resolve().parents[1] / "configs" / "moerm-minilm.json"  # the shipped model's recipe
QUICK_USERS, USERS = 50, 200  # simulated users per benchmark: a smoke run, a release


def build(cfg: TrainConfig, runs: Path, out: Path, *, quick: bool = False, resume: bool = False,
          dense: bool = False, variants: bool = False) -> None:
    """Train (or, ``resume``, reuse ``runs/ship``), evaluate in torch, export the int8 folder ``out``,
    evaluate through it, and write the report and the card. ``quick``: a tiny smoke run under
    ``runs/quick``; ``dense``: also the dense-router variant (a card row); ``variants``: also compare int8
    backbone variants (a card table)."""
    users = USERS
    if quick:
        cfg = replace(cfg, persona_users=200, attribute_users=100, epochs=1)
        runs, out, users = runs / "quick", runs / "quick" / "model", QUICK_USERS
    t0 = time.time()
    times = {}
    if not resume:
        ensure_backbone(cfg)
        train(cfg, runs / "ship")
        if dense:
            train(replace(cfg, top_k=cfg.n_experts - cfg.n_shared), runs / "ship-dense")
        times["train_s"] = time.time() - t0
    else:
        built = runs / "ship" / "times.json"  # a run trained by `python -m moerm_build train` has none
        times["train_s"] = (json.loads(built.read_text())["train_s"] if built.is_file()
                            else load_checkpoint(runs / "ship")[0]["train_seconds"])
        readout_run(runs / "ship", cfg)  # a run from before the read-outs or the request gate gets them
    t1 = time.time()
    tz = TorchFeaturizer(runs / "ship")
    rep_torch = evaluate(tz, tz.w0, n_users=users, with_probes=True)
    (runs / "ship" / "eval_torch.json").write_text(json.dumps(rep_torch, indent=1))
    rep_dense = None
    if dense:
        dz = TorchFeaturizer(runs / "ship-dense")
        rep_dense = evaluate(dz, dz.w0, n_users=users, real_text=False)
    times["evaluate_torch_s"] = time.time() - t1
    (runs / "ship" / "times.json").write_text(json.dumps(times))
    prior_strength = rep_torch["prior_strength"]

    t1 = time.time()
    export_model(runs / "ship", out, precision="int8", report=rep_torch, model_id=out.name,
                 reference=reference_corpus())
    times["export_s"] = time.time() - t1
    t1 = time.time()
    rz = RuntimeFeaturizer(out, precision="int8")
    rep = evaluate(rz, rz.w0, prior_strength=prior_strength, n_users=users,
                   residual_strength=rz.model.config.recommended_residual_strength,
                   residual_prior=rz.model.config.recommended_residual_prior)
    rep["parity"] = parity_report(runs / "ship", out)
    rep["parity"]["all_heldout_inputs"] = selection_agreement(runs / "ship", out)
    if variants:
        rep["quant_variants"] = quant_variants(runs / "ship", out, rep["parity"])
    rep["parity"]["persona_few_shot_int8_minus_torch"] = {
        n: round(rep["persona"][n] - rep_torch["persona"][n], 4) for n in ("5", "10", "20", "50")}
    rep["torch"] = {k: rep_torch[k] for k in ("persona", "relabeled_hh", "sanity", "population", "dsp",
                                              "attribute_users")}
    if rep_dense is not None:
        rep["dense"] = {"persona": rep_dense["persona"], "prior_strength": rep_dense["prior_strength"],
                        "interpretability": {k: v for k, v in rep_dense["interpretability"].items() if k != "axes"}}
    for key in ("probe_ceiling", "relabeled_hh_probe", "prior_strength_grid"):
        rep[key] = rep_torch[key]
    for key in ("single_frozen_probe", "multi_frozen_probe"):  # the references, on the fp32 frozen features
        rep["attribute_users"][key] = rep_torch["attribute_users"][key]
    rep["expert_names_trained"] = rep_torch["expert_names"]
    times["evaluate_runtime_s"] = time.time() - t1
    rep["timings"] = times
    finish(runs, out, rep, users)


def refresh(runs: Path, out: Path) -> None:
    """Keep the folder's graphs and ``runs/ship/report.json``; redo the reference corpus and everything
    measured after export (active questions, robustness, expert cards), then the card."""
    folders_run(runs, out)
    rep = json.loads((runs / "ship" / "report.json").read_text())
    add_reference(out, to_jsonl(reference_corpus()))
    finish(runs, out, rep, USERS)


REEXPORT_NOTES = {
    "backbone": "eager attention, the same 8-bit levels dequantized at load",
    "head": "the same weights; the routed experts' fp16 weights are gathered, then cast",
}


def reexported_graph(part: str, out: Path, graphs: GraphFiles, ckpt: dict, head: Any,
                     tmp: Path) -> tuple[str, Path]:
    """The int8 folder ``out``'s ``part`` graph ("backbone" or "head"; ``graphs``: the folder's int8 graph
    files) exported again with today's code from the same weights, written under ``tmp``: (its path inside
    the folder, the new file). The backbone's GPTQ
    levels depend on the weights and calibration texts only; the head is rebuilt from the folder's own
    head graph."""
    import onnx

    from moerm_build.graphs.onnx_backbone import export_backbone
    from moerm_build.graphs.onnx_head import build_head_graph, read_head_weights, stored_expert_dtype
    from moerm_build.graphs.quantize import calibration_feeds, quantize_backbone
    from moerm_build.model import Backbone

    if part == "backbone":
        fp32 = export_backbone(Backbone(ckpt["backbone_path"]), tmp / "fp32.onnx")
        feeds = calibration_feeds(ckpt, out / "tokenizer.json")
        return graphs.backbone, quantize_backbone(fp32, tmp / "int8.onnx", "gptq8", feeds)
    stored = onnx.load(out / graphs.head)
    onnx.save(build_head_graph(read_head_weights(stored), head.args.top_k, gating=head.args.gating,
                               expert_dtype=stored_expert_dtype(stored)), tmp / "head.onnx")
    return graphs.head, tmp / "head.onnx"


def parity_pairs() -> list[tuple[str, str]]:
    """The parity set: both replies of every held-out comparison of ``moerm_build.evaluate.parity``."""
    from moerm_build.evaluate.parity import heldout_comparisons

    return [(r["prompt"], t) for r in heldout_comparisons() for t in (r["chosen"], r["rejected"])]


def run_made_folder(head: Any, out: Path, tol: float = 0.01) -> bool:
    """Is the folder ``out`` exported from this run's trained ``head``? Each weight array of its head graph
    (the int8 one where it has one) is the run's (the folder's kept experts) within ``tol`` of the array's
    largest magnitude, which the stored precision (fp16, int8 per channel) keeps and another training does
    not, and its population weights are the run's. By weights, not bytes: a graph re-exported by other
    export code is still the run's. ``check``'s re-exports rebuild the head from the folder's own graph:
    they test today's export code, not the run."""
    import onnx

    from moerm_build.graphs.onnx_head import read_head_weights
    from moerm_build.release.onnx_export import head_weights

    config = ModelConfig.from_dict(json.loads((out / "config.json").read_text()))
    keep = config.extra.get("training", {}).get("kept_experts") or list(range(head.args.n_experts))
    graphs = config.graphs.get("int8") or config.graphs["fp32"]
    run, stored = head_weights(head).select(keep), read_head_weights(onnx.load(out / graphs.head))
    for name in ("router_w", "router_b", "w1", "b1", "w2", "b2", "feat_mean", "feat_std"):
        a, b = getattr(run, name), getattr(stored, name)
        if (a is None) != (b is None) or (a is not None and (a.shape != b.shape or
                                                             np.abs(a - b).max() > tol * np.abs(b).max())):
            return False
    w0 = head.w0.detach().double().numpy()[keep]  # (K,)
    return bool(np.allclose(w0, config.w0, rtol=1e-6, atol=1e-9))


def folders_run(runs: Path, out: Path) -> tuple[dict[str, Any], Any]:
    """``runs/ship``'s checkpoint and head, refused unless the folder ``out`` was exported from that run:
    a report or parity measured on another run (a retrain, say) must not reach ``out``'s card."""
    ckpt, head = load_checkpoint(runs / "ship")
    if not run_made_folder(head, out):
        raise SystemExit(f"{out} was not exported from {runs / 'ship'} (the run's trained weights are not the "
                         "folder's): give --runs the run it came from, or rebuild it (release build)")
    return ckpt, head


def check(runs: Path, out: Path) -> dict[str, Any]:
    """Does today's build side still make the folder ``out`` from ``runs/ship``? Whether the run's trained
    weights are the folder's (``run_made_folder``), then both graphs exported again into a copy of the
    folder (nothing in ``out`` is written): whether each is byte-identical to the folder's, and the
    largest change of any score of the parity set."""
    import shutil
    import tempfile

    from moerm_lite.folder import write_manifest

    ckpt, head = load_checkpoint(runs / "ship")
    pairs = parity_pairs()
    old = RewardModel.load(out)
    before = old.score_pairs(pairs)  # (P,)
    res: dict[str, Any] = {"run_made_folder": run_made_folder(head, out),
                           "parity_pairs": len(pairs)}
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "folder"
        shutil.copytree(out, trial)
        for part in ("head", "backbone"):
            rel, new = reexported_graph(part, out, old.config.graphs["int8"], ckpt, head, Path(tmp))
            res[f"{part}_bytes_identical"] = new.read_bytes() == (out / rel).read_bytes()
            shutil.copy(new, trial / rel)
        write_manifest(trial)
        res["max_score_change"] = float(abs(RewardModel.load(trial).score_pairs(pairs) - before).max())
    return res


def reexport(runs: Path, out: Path, part: str, max_score_change: float = 1e-4) -> None:
    """Swap in the int8 folder's ``part`` graph ("backbone" or "head") re-exported with today's export code
    from the same weights (``reexported_graph``). The other measurements in the card stay valid only
    if the scores do not move, so this refuses a graph that moves any score of the parity set by more
    than ``max_score_change``; parity against torch is measured again."""
    import shutil
    import tempfile

    from moerm_lite.folder import write_manifest

    ckpt, head = folders_run(runs, out)
    rep = json.loads((runs / "ship" / "report.json").read_text())
    old = RewardModel.load(out)
    pairs = parity_pairs()
    before = old.score_pairs(pairs)
    config = old.config.to_dict()  # written with today's schema_version
    with tempfile.TemporaryDirectory() as tmp:
        if part == "backbone":
            graphs = {p: replace(g, dequantize_at_load=(p == "int8")) for p, g in old.config.graphs.items()}
            config = replace(old.config, graphs=graphs).to_dict()
            config["quantization"]["int8_backbone"] = "gptq8 (8-bit levels, dequantized to fp32 at load)"
        rel, new = reexported_graph(part, out, old.config.graphs["int8"], ckpt, head, Path(tmp))
        trial = Path(tmp) / "folder"
        shutil.copytree(out, trial)
        shutil.copy(new, trial / rel)
        (trial / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        write_manifest(trial)
        moved = float(abs(RewardModel.load(trial).score_pairs(pairs) - before).max())
        if moved > max_score_change:
            raise SystemExit(f"the re-exported {part} moves scores by {moved:.2e} > {max_score_change}: "
                             "rebuild the model instead (python -m moerm_build release build --resume)")
        shutil.copy(new, out / rel)
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    write_manifest(out)
    # against the graphs the card was measured on: the changes of every re-export add up
    reexports = dict(rep["parity"].get("reexports", {}))
    if "backbone_reexport_max_score_change" in rep["parity"]:  # reports written before the head re-export
        reexports["backbone"] = rep["parity"]["backbone_reexport_max_score_change"]
    reexports[part] = moved + reexports.get(part, 0.0)
    rep["parity"] = {**parity_report(runs / "ship", out),
                     "all_heldout_inputs": selection_agreement(runs / "ship", out),
                     "persona_few_shot_int8_minus_torch": rep["parity"].get("persona_few_shot_int8_minus_torch"),
                     "reexports": {k: {"max_score_change": (v["max_score_change"] if isinstance(v, dict) else v),
                                       "what": REEXPORT_NOTES[k]} for k, v in reexports.items()}}
    save_report(runs, out, rep, ckpt)
    print(json.dumps(rep["parity"], indent=1))


# measured on the training run or torch features, not through the folder: a re-evaluation keeps them
KEPT_ON_REEVALUATION = ("parity", "quant_variants", "torch", "dense", "probe_ceiling", "relabeled_hh_probe",
                        "prior_strength_grid", "expert_names_trained", "timings", "active", "expert_cards",
                        "robustness", "tastes")


def reevaluate(runs: Path, out: Path, users: int = USERS) -> None:
    """Re-run the evaluation of the int8 folder with today's evaluation code (same data, seeds and prior
    strength), keep what was measured elsewhere (``KEPT_ON_REEVALUATION``, and the frozen-probe rows of the
    attribute users, on fp32 features), and rewrite the report and the card."""
    folders_run(runs, out)
    rep = json.loads((runs / "ship" / "report.json").read_text())
    t0 = time.time()
    rz = RuntimeFeaturizer(out, precision="int8")
    new = evaluate(rz, rz.w0, prior_strength=rz.model.config.default_prior_strength, n_users=users,
                   residual_strength=rz.model.config.recommended_residual_strength,
                   residual_prior=rz.model.config.recommended_residual_prior)
    probes = {k: v for k, v in rep.get("attribute_users", {}).items() if k.endswith("_frozen_probe")}
    rep.update({k: v for k, v in new.items() if k not in KEPT_ON_REEVALUATION})
    rep["attribute_users"].update(probes)
    if rename_experts(out, new["expert_names"]):  # names are read off the evaluation: today's naming code
        for c in rep.get("expert_cards", []):
            c["name"] = new["expert_names"][c["expert"]]
    rep.setdefault("timings", {})["reevaluate_runtime_s"] = time.time() - t0
    save_report(runs, out, rep)
    print(json.dumps({k: rep[k] for k in ("persona", "persona_residual", "sanity", "dsp")}, indent=1)[:4000])


def quant_variants(run: Path, out: Path, parity: dict) -> dict:
    """The shipped int8 backbone (gptq8) next to plain rounding (weight_only8), same head, same inputs."""
    rtn = export_model(run, run / "variant-weight_only8", quant="weight_only8")
    rtn_parity = parity_report(run, rtn)
    rows = {}
    for name, folder, par, sel in (("gptq8", out, parity, parity["all_heldout_inputs"]),
                                   ("weight_only8", rtn, rtn_parity, selection_agreement(run, rtn))):
        rows[name] = {"embedding_rel_error": embedding_error(run, folder),
                      "same_topk_selection_all": sel["same_topk_selection"],
                      "same_topk_selection": par["same_topk_selection"],
                      "decision_agreement": par["decision_agreement"],
                      "backbone_mb": (folder / "onnx" / "backbone_int8.onnx").stat().st_size / 1e6}
    return rows


def card_report(runs: Path, out: Path) -> Path:
    """The report a measurement for the folder ``out``'s card joins, ``runs/ship/report.json``; refused
    (SystemExit) where it is missing or ``runs/ship`` is not the run ``out`` was exported from."""
    report = runs / "ship" / "report.json"
    if not report.is_file():
        raise SystemExit(f"{report} not found: --card needs the report of the run {out} came from (--runs)")
    folders_run(runs, out)
    return report


def record(runs: Path, out: Path, key: str, value: Any) -> None:
    """Put one measurement into the report of the run the folder ``out`` came from (``runs/ship/report.json``)
    and write the folder's card from that report: a card is only ever written whole, from a report."""
    rep = json.loads(card_report(runs, out).read_text())
    rep[key] = value
    save_report(runs, out, rep)


def save_report(runs: Path, out: Path, rep: EvalReport | dict[str, Any], ckpt: dict[str, Any] | None = None) -> None:
    """Write ``runs/ship/report.json`` and the folder ``out``'s card from it (its config as it is now; ``ckpt``
    the run's checkpoint where the caller has it): the one place a card is written after export."""
    (runs / "ship" / "report.json").write_text(json.dumps(rep, indent=1))
    if ckpt is None:
        ckpt, _ = load_checkpoint(runs / "ship")
    update_card(out, model_card(json.loads((out / "config.json").read_text()), ckpt, cast(EvalReport, rep)))


def machine() -> dict[str, Any]:
    """Where a report is measured: the CPU's model name (``lscpu``'s, where it says), cores, a GPU or not."""
    import os
    import platform

    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": bool(torch.cuda.is_available())}


def finish(runs: Path, out: Path, rep: EvalReport, users: int) -> None:
    """Runtime-only measurements (active questions, expert cards), then report and card."""
    t1 = time.time()
    rep["machine"] = machine()
    rep["active"] = model_active_curve(out, n_users=users)
    trained = trained_families(json.loads((out / "config.json").read_text()).get("training", {}))
    rep["robustness"] = robustness_report(out, trained)
    ckpt, _ = load_checkpoint(runs / "ship")
    rep["robustness"]["readout_family_out"] = readout_family_out(runs / "ship")  # the read-out refitted family-out
    rep["expert_cards"] = RewardModel.load(out).describe_experts()  # stored in the folder at export
    rep.setdefault("timings", {})["active_and_cards_s"] = time.time() - t1
    save_report(runs, out, rep, ckpt)
    print(json.dumps({k: rep[k] for k in ("persona", "sanity", "parity", "timings")}, indent=1))
    print(json.dumps({k: rep["active"][k] for k in ("N", "active", "random", "gain_at_10")}))
