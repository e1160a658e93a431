"""Build side CLI (the export extra installs it): ``python -m moerm_build {train,finetune,evaluate,robustness,
tastes,export,own,active,release} ...``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any


def card_args(sp: argparse.ArgumentParser) -> None:
    """``--card`` and ``--runs``: a measurement that joins the folder's report and card."""
    sp.add_argument("--card", action="store_true",
                    help="also record it in RUNS/ship/report.json and write the folder's card from that report")
    sp.add_argument("--runs", default="runs", help="with --card: where the folder's run and report are")


def set_fields(p: argparse.ArgumentParser, cfg: Any, pairs: list[str]) -> None:
    """Apply ``FIELD=JSON`` overrides to a config dataclass; an unknown field is a usage error."""
    names = {f.name for f in fields(cfg)}
    for kv in pairs:
        k, _, v = kv.partition("=")
        if k not in names:
            p.error(f"unknown config field {k!r}")
        setattr(cfg, k, json.loads(v))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moerm_build", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("train", help="train the MoE reward model -> OUT/ckpt.pt")
    sp.add_argument("--config", default=None, help="JSON file with TrainConfig fields")
    sp.add_argument("--out", required=True, help="run folder, e.g. runs/x")
    sp.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON", help="override config fields")

    sp = sub.add_parser("finetune", help="fine-tune the backbone on answer quality -> OUT/encoder (resumable)")
    sp.add_argument("--config", default=None, help="JSON file with FinetuneConfig fields")
    sp.add_argument("--out", required=True, help="run folder, e.g. runs/enc; rerun to resume")
    sp.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON", help="override config fields")

    sp = sub.add_parser("encoder", help="a model folder's backbone -> a local Hugging Face encoder folder (a "
                        "teacher for finetune)")
    sp.add_argument("-i", "--input", required=True, help="model folder (its backbone graph is read)")
    sp.add_argument("-o", "--output", required=True, help="encoder folder to write, e.g. runs/teacher/enc")
    sp.add_argument("--precision", default="int8", help="whose backbone graph: int8 (what ships) or fp32")
    sp.add_argument("--template", default="", help="local Hugging Face folder of the same architecture and "
                    "tokenizer (default: the packaged all-MiniLM-L6-v2)")

    sp = sub.add_parser("evaluate", help="persona-16 and real-text few-shot, sanity suite, held-out accuracy")
    sp.add_argument("-i", "--input", required=True, help="run folder (torch) or model folder (ONNX)")
    sp.add_argument("--precision", default="int8", help="for a model folder: int8 or fp32")
    sp.add_argument("--prior-strength", "--lambda", dest="prior_strength", type=float, default=None,
                    help="lambda of the user prior (default: tuned); --lambda is the old spelling")
    sp.add_argument("--users", type=int, default=200)
    sp.add_argument("--probes", action="store_true", help="also the supervised probe ceiling")
    sp.add_argument("-o", "--out", default=None, help="write the report JSON here")

    sp = sub.add_parser("robustness", help="degradation families, everyday requests, reward hacking")
    sp.add_argument("-i", "--input", required=True, help="model folder (ONNX)")
    sp.add_argument("--prompts", type=int, default=200, help="held-out prompts of the hacking search")
    sp.add_argument("--steps", type=int, default=30, help="edit rounds of the hacking search")
    card_args(sp)
    sp.add_argument("--keep", default=None, metavar="JSON",
                    help="an earlier report of this folder whose parts to keep (measure only what it lacks)")
    sp.add_argument("--run", default=None, help="the folder's training run (ckpt.pt, frozen backbone): also "
                    "refit its read-out without each family (family-out for the model itself)")
    sp.add_argument("-o", "--out", default=None, help="write the report JSON here")

    sp = sub.add_parser("tastes", help="users of taste families no build trained on, next to the frozen probe")
    sp.add_argument("-i", "--input", required=True, help="model folder (ONNX)")
    sp.add_argument("--users", type=int, default=100, help="users per family")
    card_args(sp)
    sp.add_argument("-o", "--out", default=None, help="write the report JSON here")

    sp = sub.add_parser("export", help="checkpoint -> quantized ONNX model folder")
    sp.add_argument("-i", "--input", required=True, help="run folder with ckpt.pt")
    sp.add_argument("-o", "--output", required=True, help="model folder to write, e.g. models/NAME")
    sp.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    sp.add_argument("--also-fp32", action="store_true", help="also write the fp32 graphs")
    sp.add_argument("--quant", default="gptq8", help="int8 backbone variant: gptq8, gptq8_nbits, weight_only8, "
                    "weight_only8_int8_compute, dynamic or fp16_weights")
    sp.add_argument("--report", default=None, help="evaluation JSON to put in the model card")
    sp.add_argument("--no-reference", action="store_true",
                    help="ship no reference corpus (no expert cards); by default it is built from the data")

    sp = sub.add_parser("own", help="your own TRL-style JSONL -> a model folder, with held-out accuracy")
    sp.add_argument("jsonl", help='comparisons {"prompt", "chosen", "rejected"[, "user_id"]}, one per line')
    sp.add_argument("-o", "--output", default=None,
                    help="model folder to write (default: moerm-models/<the file's name>, outside the package)")
    sp.add_argument("--base", default=None, help="model folder to build on (default: the shipped model)")
    sp.add_argument("--scratch", action="store_true", help="train a new head on the file alone instead "
                    "(it knows only your file)")
    sp.add_argument("--backbone", default="", help="--scratch: local Hugging Face encoder folder "
                    "(default: all-MiniLM-L6-v2)")
    sp.add_argument("--test-fraction", type=float, default=0.1, help="held out by prompt, for the accuracy")
    sp.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                    help="--scratch: override TrainConfig fields")
    sp.add_argument("--verbose", action="store_true", help="log every step (the quantizer's too)")

    sp = sub.add_parser("active", help="persona-16: accuracy after N active vs N random questions")
    sp.add_argument("-i", "--input", required=True, help="model folder (ONNX)")
    sp.add_argument("--precision", default="int8")
    sp.add_argument("--users", type=int, default=200)
    card_args(sp)
    sp.add_argument("-o", "--out", default=None, help="write the curve JSON here")

    sp = sub.add_parser("release", help="the shipped model's pipeline: build, refresh, reexport, reevaluate")
    rel = sp.add_subparsers(dest="step", required=True)
    steps = {
        "build": "train, evaluate, export int8, evaluate the folder, report and card (~1 hour on 2 cores)",
        "refresh": "keep the graphs; redo reference corpus, expert cards, active curve, robustness, card",
        "reexport": "re-export one graph with today's code from the same weights; refused if a score moves",
        "reevaluate": "re-run the evaluation through the folder with today's code; keep parity and references",
        "check": "is the folder this run's, and do both graphs export byte-identical again? (writes nothing)",
    }
    for step, help_ in steps.items():
        rp = rel.add_parser(step, help=help_)
        rp.add_argument("--runs", default="runs", help="training runs and the report (RUNS/ship)")
        rp.add_argument("--out", default=None, help="the model folder (default: models/<shipped model>)")
        if step == "build":
            rp.add_argument("--config", default=None, help="TrainConfig JSON (default: the shipped model's)")
            rp.add_argument("--quick", action="store_true", help="tiny smoke run into RUNS/quick")
            rp.add_argument("--resume", action="store_true", help="reuse RUNS/ship/ckpt.pt (skip training)")
            rp.add_argument("--dense", action="store_true", help="also train the dense-router variant")
            rp.add_argument("--variants", action="store_true", help="also compare int8 backbone variants")
        if step == "reexport":
            rp.add_argument("part", choices=["backbone", "head"])

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if getattr(args, "card", False):  # refused before the measurement, not after it
        from moerm_build.release.pipeline import card_report

        card_report(Path(args.runs), Path(args.input))

    if args.command == "train":
        import torch

        from moerm_build.train.train import TrainConfig, train

        cfg = TrainConfig.from_json(args.config) if args.config else TrainConfig()
        set_fields(p, cfg, args.set)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        train(cfg, args.out)
    elif args.command == "finetune":
        from moerm_build.train.finetune import FinetuneConfig, finetune

        fcfg = FinetuneConfig.from_json(args.config) if args.config else FinetuneConfig()
        set_fields(p, fcfg, args.set)
        print(finetune(fcfg, args.out))
    elif args.command == "encoder":
        from moerm_build.graphs.onnx_backbone import backbone_from_graph
        from moerm_build.train.embed import default_backbone_path
        from moerm_build.train.finetune import save_encoder
        from moerm_lite import RewardModel

        template = args.template or str(default_backbone_path())
        model = RewardModel.load(args.input, precision=args.precision, threads=1)  # the folder's checks
        graph = model.folder / model.config.graphs[model.precision].backbone
        save_encoder(backbone_from_graph(graph, template), template, Path(args.output))
        print(args.output)
    elif args.command == "evaluate":
        from moerm_build.evaluate.metrics import RuntimeFeaturizer, TorchFeaturizer
        from moerm_build.evaluate.real_eval import BUILD_RESIDUAL, BUILD_RESIDUAL_PRIOR
        from moerm_build.evaluate.report import evaluate

        path = Path(args.input)
        residual = BUILD_RESIDUAL  # the users' default rows: a run, what a build recommends; a folder, its own
        residual_prior = BUILD_RESIDUAL_PRIOR
        if (path / "ckpt.pt").is_file():
            fz: Any = TorchFeaturizer(path)
        else:
            fz = RuntimeFeaturizer(path, precision=args.precision)
            residual = fz.model.config.recommended_residual_strength
            residual_prior = fz.model.config.recommended_residual_prior
        res = evaluate(fz, fz.w0, prior_strength=args.prior_strength, n_users=args.users, with_probes=args.probes,
                       residual_strength=residual, residual_prior=residual_prior)
        text = json.dumps(res, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
    elif args.command == "robustness":
        from moerm_build.evaluate.robustness import report, trained_families

        folder = Path(args.input)
        trained = trained_families(json.loads((folder / "config.json").read_text()).get("training", {}))
        done = json.loads(Path(args.keep).read_text()) if args.keep else None
        rob = report(folder, trained, n_prompts=args.prompts, steps=args.steps, done=done)
        if args.run:
            from moerm_build.evaluate.robustness import readout_family_out

            rob["readout_family_out"] = (done or {}).get("readout_family_out") or readout_family_out(args.run)
        if args.card:
            from moerm_build.release.pipeline import record

            record(Path(args.runs), folder, "robustness", rob)
        text = json.dumps(rob, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
    elif args.command == "tastes":
        from moerm_build.evaluate.metrics import RuntimeFeaturizer
        from moerm_build.evaluate.real_eval import attribute_pool
        from moerm_build.evaluate.real_eval import taste_users

        logging.getLogger("moerm_lite").setLevel(logging.ERROR)  # the truncation warning of each new model
        rz = RuntimeFeaturizer(args.input)
        tastes = taste_users(attribute_pool(rz, with_probe=False), rz.w0, rz.model.config.default_prior_strength,
                             rz.prior_precision, n_users=args.users,
                             residual_strength=rz.model.config.recommended_residual_strength,
                             residual_prior=rz.model.config.recommended_residual_prior)
        if args.card:
            from moerm_build.release.pipeline import record

            record(Path(args.runs), Path(args.input), "tastes", tastes)
        text = json.dumps(tastes, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
    elif args.command == "export":
        from moerm_build.evaluate.reference import reference_corpus
        from moerm_build.release.onnx_export import export_model

        export_model(args.input, args.output, precision=args.precision, also_fp32=args.also_fp32,
                     quant=args.quant, report=args.report,
                     reference=None if args.no_reference else reference_corpus())
    elif args.command == "own":
        from moerm_build.release.own import own_on_base, train_own

        if not args.verbose:  # warnings and the report only
            logging.getLogger().setLevel(logging.WARNING)
        if args.output is None:
            args.output = str(Path("moerm-models") / Path(args.jsonl).stem)
        if args.scratch:
            overrides = {}
            for kv in args.set:
                k, v = kv.split("=", 1)
                overrides[k] = json.loads(v)
            own = train_own(Path(args.jsonl), Path(args.output), backbone=args.backbone,
                            test_fraction=args.test_fraction, **overrides)
        else:
            if args.set or args.backbone:
                p.error("--set and --backbone train a new head: add --scratch (or drop them)")
            own = own_on_base(Path(args.jsonl), Path(args.output), base=args.base, test_fraction=args.test_fraction)
        print(json.dumps(own, indent=1))
    elif args.command == "active":
        from moerm_build.evaluate.active_eval import model_active_curve

        curve = model_active_curve(args.input, precision=args.precision, n_users=args.users)
        if args.card:
            from moerm_build.release.pipeline import record

            record(Path(args.runs), Path(args.input), "active", curve)
        text = json.dumps(curve, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
    elif args.command == "release":
        import torch

        from moerm_build.release import pipeline
        from moerm_build.train.train import TrainConfig
        from moerm_lite.model import DEFAULT_MODEL

        torch.set_num_threads(max(1, torch.get_num_threads()))
        runs, out = Path(args.runs), Path(args.out or Path("models") / DEFAULT_MODEL)
        if args.step == "build":
            cfg = TrainConfig.from_json(args.config or pipeline.CONFIG)
            pipeline.build(cfg, runs, out, quick=args.quick, resume=args.resume, dense=args.dense,
                           variants=args.variants)
        elif args.step == "refresh":
            pipeline.refresh(runs, out)
        elif args.step == "reexport":
            pipeline.reexport(runs, out, args.part)
        elif args.step == "check":
            same = pipeline.check(runs, out)
            print(json.dumps(same, indent=1))
            return 0 if same["run_made_folder"] and same["max_score_change"] <= 1e-6 else 1
        else:
            pipeline.reevaluate(runs, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
