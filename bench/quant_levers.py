"""Speed levers for the backbone, measured: what each buys and what it costs in decisions.

    python -m bench.quant_levers           # about 5 minutes on 2 cores
    python -m bench.quant_levers --quick

Builds backbone variants next to the shipped model (in a temporary folder; the head is unchanged),
scores the ranking workload of ``bench/run.py`` with each, and prints texts/s, the speed-up over the
shipped int8 graph, the share of pairwise decisions that agree with an fp32 ONNX export of the same
backbone (the shipped graph's weights read back in fp32: ``bench.run.torch_backbone``), and the largest
score change from batch 1 to default batching. Then the time per operator type of the shipped graph
(onnxruntime profiling), which says where the time goes.

Needs the export extra (torch, transformers, the MiniLM package) and ../shared/data. Calibration texts
come from the training splits; the workload is the test splits.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import cpu_description, model_variant, timeit, torch_model, torch_scores
from moerm_build.data import ranking_workload
from moerm_lite import RewardModel
from moerm_lite.text import TextTokenizer


def calibration(model: RewardModel, n: int) -> list[dict[str, np.ndarray]]:
    """Padded backbone feeds of ``n`` training-split texts, tokenized as the runtime does."""
    from moerm_build import data

    rows = data.load_hh_harmless(split="train")[: n // 2] + data.load_finegrained_qa(split="train")[: n // 2]
    tok = TextTokenizer(model.folder / "tokenizer.json", model.config.max_length)
    ids = tok.encode([r["prompt"] for r in rows if r["prompt"].strip()], "prompt")[0]
    ids += tok.encode([r["chosen"] for r in rows], "response")[0]
    order = np.argsort([len(x) for x in ids], kind="stable")
    return [tok.pad([ids[i] for i in idx]) for idx in np.array_split(order, max(1, len(order) // 16))]


def fp32_backbone(backbone: Any, path: Path, attention: str) -> Path:
    """The model's backbone in PyTorch (``bench.run.torch_backbone``: its graph's weights in fp32) exported
    to ONNX fp32 as the build side exports it, with ``attention`` = "sdpa" or "eager"."""
    from moerm_build.graphs.onnx_backbone import export_backbone

    return export_backbone(backbone, path, attention=attention)


def fused(src: Path, dst: Path, embed_layer_norm: bool = True, num_heads: int = 12, hidden_size: int = 384) -> Path:
    """onnxruntime's offline BERT fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    opts.enable_embed_layer_norm = embed_layer_norm
    optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, optimization_options=opts,
                   opt_level=1).save_model_to_file(str(dst))
    return dst


def fp16_fused(src: Path, dst: Path) -> Path:
    """Fused eager graph (embedding lookup left unfused) with int8 embedding rows and fp16 weights."""
    import onnx

    from moerm_build.graphs.quantize import fp16_matmul_weights, quantize_embedding_rows

    f = fused(src, dst, embed_layer_norm=False)
    onnx.save(fp16_matmul_weights(quantize_embedding_rows(onnx.load(str(f)))), str(dst))
    return dst


def static_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], skip: tuple[str, ...] = ()) -> Path:
    """Static int8 (QDQ): MinMax-calibrated per-tensor activation scales (batch-invariant), per-channel
    weights; MatMuls whose name contains any of ``skip`` stay fp32."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    m = onnx.load(str(src))
    inits = {i.name for i in m.graph.initializer}
    exclude = [n.name for n in m.graph.node if n.op_type == "MatMul"
               and (n.input[1] not in inits or any(s in n.name for s in skip))]  # activation x activation too
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return dst


def smoothed(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], alpha: float = 0.5) -> Path:
    """SmoothQuant-style scale migration (Xiao et al. 2023, arXiv 2211.10438) on an fp32 graph: each weight
    MatMul's input channel j is divided by s_j and the weight's row j multiplied by it, with
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (MatMuls that share an input share s). Same function,
    flatter activations for a static int8 quantizer to round. The division is an explicit Mul before
    the MatMuls (BERT's LayerNorm output also feeds the residual, so it cannot absorb s)."""
    import onnx
    from onnx import helper, numpy_helper

    from moerm_build.graphs.gptq import FEEDS, matmul_weights
    from moerm_lite.sessions import cpu_session

    model = onnx.load(str(src))
    pairs = matmul_weights(model)
    names = sorted({x for x, _ in pairs})
    probe = onnx.load(str(src))
    probe.graph.output.extend([helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in names])
    sess = cpu_session(probe.SerializeToString(), 2, optimize=False)  # no fusions: keep the MatMul inputs
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, x in zip(names, sess.run(names, {k: feed[k] for k in FEEDS})):
            m = np.abs(x.reshape(-1, x.shape[-1])).max(0)  # (K,) per input channel
            amax[name] = np.maximum(amax.get(name, 0.0), m)
    inits = {i.name: i for i in model.graph.initializer}
    smooth: dict[str, list[str]] = {}  # activation -> the weights of the MatMuls it feeds
    for x in names:
        weights = [w for a, w in pairs if a == x]
        wmax = np.max([np.abs(numpy_helper.to_array(inits[w])).max(1) for w in weights], axis=0)  # (K,)
        scale = np.clip(amax[x] ** alpha / np.maximum(wmax, 1e-8) ** (1 - alpha), 1e-4, 1e4).astype(np.float32)
        for w in weights:
            W = numpy_helper.to_array(inits[w])  # (K, N)
            inits[w].CopyFrom(numpy_helper.from_array((W * scale[:, None]).astype(np.float32), w))
        model.graph.initializer.append(numpy_helper.from_array(1.0 / scale, x + "_smooth_inv"))
        smooth[x] = weights
    nodes, emitted = [], set()
    for node in model.graph.node:  # the Mul goes right before the first MatMul that reads it
        x = node.input[0] if node.op_type == "MatMul" else ""
        if x in smooth and node.input[1] in smooth[x]:
            if x not in emitted:
                nodes.append(helper.make_node("Mul", [x, x + "_smooth_inv"], [x + "_smoothed"]))
                emitted.add(x)
            node.input[0] = x + "_smoothed"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def with_backbone(model: RewardModel, graph: Path, tmp: Path, name: str, *, dequantize_at_load: bool = False,
                  per_sequence: bool = False, max_length: int | None = None) -> RewardModel:
    """The model with ``graph`` as its backbone graph and these graph flags: ``dequantize_at_load`` folds
    the graph's 8-bit weights to fp32 at load (the shipped form; off, onnxruntime fuses them with
    quantized activations); ``per_sequence`` runs one text per call; ``max_length`` a shorter token budget
    (bench/truncation.py measures what it costs in quality)."""
    cfg = model.config
    flags = replace(cfg.graphs[model.precision], dequantize_at_load=dequantize_at_load, per_sequence=per_sequence)
    cfg = replace(cfg, graphs={**cfg.graphs, model.precision: flags}, max_length=max_length or cfg.max_length)
    return model_variant(model, tmp, name, cfg, graph)


def op_profile(model: RewardModel, pairs, tmp: Path) -> list[tuple[str, float]]:
    """Share of backbone time per operator type, from an onnxruntime profile of the shipped graph."""
    from moerm_lite.sessions import cpu_session

    graphs = model.config.graphs[model.precision]
    sess = cpu_session(model.folder / graphs.backbone, model.threads, dequantize_at_load=graphs.dequantize_at_load,
                       profile_prefix=str(tmp / "profile"))
    tok = TextTokenizer(model.folder / "tokenizer.json", model.config.max_length)
    ids = tok.encode([r for _, r in pairs], "response")[0]
    order = np.argsort([len(x) for x in ids], kind="stable")
    for idx in np.array_split(order, max(1, len(order) // 32)):
        sess.run(None, tok.pad([ids[i] for i in idx]))
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return sorted(((op, t / total) for op, t in per_op.items()), key=lambda x: -x[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = RewardModel.load(threads=args.threads)
    logging.getLogger("moerm_lite").setLevel(logging.ERROR)  # the workload's long texts: not once per call
    pairs = ranking_workload(8 if args.quick else 64, 8)
    repeat = 1 if args.quick else 3
    feeds = calibration(model, 64 if args.quick else 400)
    from moerm_build.graphs.quantize import quantize_backbone

    i, j = np.triu_indices(len(pairs), 1)
    shipped_graph = model.folder / model.config.graphs[model.precision].backbone
    rows = []
    import torch

    torch.set_num_threads(model.threads)
    tb, th = torch_model(model)  # the goal's reference (PyTorch fp32, batch 32, full budget); exported below
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        sdpa = fp32_backbone(tb, tmp / "sdpa.onnx", "sdpa")
        eager = fp32_backbone(tb, tmp / "eager.onnx", "eager")
        ref = with_backbone(model, eager, tmp, "ref").score_pairs(pairs)
        fold, one = {"dequantize_at_load": True}, {"per_sequence": True}
        variants: dict[str, tuple[Path, dict[str, Any]]] = {  # name: (graph, with_backbone's flags)
            "shipped: 8-bit weights (GPTQ), fp32 compute": (shipped_graph, fold),
            "shipped levels, int8 compute (QDQ fusion)": (shipped_graph, {}),
            "shipped + offline BERT fusions": (fused(shipped_graph, tmp / "shipped_fused.onnx"), fold),
            "fp32, sdpa attention export": (sdpa, {}),
            "fp32, eager attention export + fusions": (fused(eager, tmp / "eager_fused.onnx"), {}),
            "fp16 weights, int8 embeddings, eager + fusions": (fp16_fused(eager, tmp / "f16.onnx"), {}),
            "static int8, all weight MatMuls": (static_int8(eager, tmp / "s_all.onnx", feeds), {}),
            "SmoothQuant (alpha 0.5) + static int8, all weight MatMuls":
                (static_int8(smoothed(eager, tmp / "sq5.onnx", feeds, 0.5), tmp / "sq5_int8.onnx", feeds), {}),
            "SmoothQuant (alpha 0.8) + static int8, all weight MatMuls":
                (static_int8(smoothed(eager, tmp / "sq8.onnx", feeds, 0.8), tmp / "sq8_int8.onnx", feeds), {}),
            "dynamic int8 (per-call activation scales), one text per call":
                (quantize_backbone(eager, tmp / "dyn.onnx", "dynamic"), one),
            "static int8, FFN output MatMul fp32": (static_int8(eager, tmp / "s_noffo.onnx", feeds,
                                                                ("/output/dense/",)), {}),
            "static int8, FFN fp32": (static_int8(eager, tmp / "s_noffn.onnx", feeds,
                                                  ("/output/dense/", "/intermediate/")), {}),
        }
        # combined: int8 variants with a shorter token budget (a prompt keeps its end, a reply its start)
        variants.update({
            "dynamic int8, one text per call, 128-token budget": (tmp / "dyn.onnx", {**one, "max_length": 128}),
            "static int8, FFN fp32, 128-token budget": (tmp / "s_noffn.onnx", {"max_length": 128}),
            "static int8, all weight MatMuls, 64-token budget": (tmp / "s_all.onnx", {"max_length": 64}),
        })
        t_torch = timeit(lambda: torch_scores(tb, th, model, pairs, 32), repeat)
        t_shipped = None
        for k, (name, (graph, flags)) in enumerate(variants.items()):
            m = with_backbone(model, graph, tmp, f"v{k}", **flags)
            s = m.score_pairs(pairs)
            t_run = timeit(lambda m=m: m.score_pairs(pairs), repeat)
            t_shipped = t_shipped or t_run
            agree = np.mean(np.sign(s[i] - s[j]) == np.sign(ref[i] - ref[j]))
            batch = np.abs(s - m.score_pairs(pairs, batch_size=1)).max()
            rows.append((name, len(pairs) / t_run, t_shipped / t_run, t_torch / t_run, 100 * agree, batch,
                         graph.stat().st_size / 1e6))
        profile = op_profile(model, pairs, tmp)
    print(f"backbone levers, {len(pairs)} texts of the ranking workload, {args.threads} threads, {cpu_description()}")
    print(f"{'variant':<62} {'texts/s':>8} {'x shipped':>9} {'x torch':>8} {'decisions = fp32':>16} "
          f"{'batch 1 vs default':>18} {'MB':>6}")
    for name, tps, x, xt, agree, batch, mb in rows:
        print(f"{name:<62} {tps:8.1f} {x:8.2f}x {xt:7.2f}x {agree:15.2f}% {batch:18.1e} {mb:6.1f}")
    print("\nshipped backbone, time per operator type: " + ", ".join(f"{op} {100 * s:.0f}%" for op, s in profile[:8]))
    faithful = max((r for r in rows if r[4] >= 99.0), key=lambda r: r[1])
    fastest = max(rows, key=lambda r: r[1])
    bound = ("" if fastest is faithful else
             ": the speed at >= 99% is bounded by what int8 activations and a shorter budget change")
    print(f"goal: 3x PyTorch fp32 at >= 99% of its decisions. Fastest at >= 99%: {faithful[0]} "
          f"({faithful[3]:.2f}x torch);\nfastest of all: {fastest[0]} ({fastest[3]:.2f}x torch) at "
          f"{fastest[4]:.1f}% of decisions{bound}")


if __name__ == "__main__":
    main()
