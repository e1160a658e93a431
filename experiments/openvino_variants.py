"""Which way of running the backbone on OpenVINO is fast and keeps onnxruntime's decisions?

    python -m experiments.openvino_variants          # ~10 minutes on 2 CPU cores; from the repository root

Feeds docs/decisions/speed.md ("An optional OpenVINO engine"). Each variant runs the shipped model's backbone
graph on OpenVINO (the head on onnxruntime, as ``engine="openvino"`` does) and is scored on

- pairwise decisions against the default engine (onnxruntime) on the held-out comparisons of every source
  (``moerm_build.evaluate.parity.heldout_comparisons``, 200 per source);
- ``rank()`` of the 5 real replies of each held-out DSP instruction, p50 against PyTorch fp32 doing the same
  work (``bench.run``'s reference), calls interleaved in one run.

Variants: the graph as read (its 8-bit weights dequantized at every call); weights folded to fp32 at load,
computed in OpenVINO's default precision (bf16 where the CPU has it) on one stream of two threads or on two
single-threaded streams that run a call's texts side by side (what ``engine="openvino"`` ships), and in
fp32; the folded weights requantized to 8 bits per output channel with activations quantized per call in
groups of 32 or 16 values (OpenVINO's ``DYNAMIC_QUANTIZATION_GROUP_SIZE``: int8 compute), all of them or
all but the FFN's output MatMul (its inputs, after GELU, have the outlier channels). Needs
OpenVINO, the export extra (the PyTorch reference) and ../shared/data.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np

from bench.run import cpu_description, percentiles, rank_calls, torch_model, torch_scores
from moerm_build.evaluate.parity import heldout_comparisons
from moerm_lite import RewardModel
from moerm_lite.ov_backbone import OpenVinoBackbone, fold_constant_weights
from moerm_lite.sessions import open_graph
from moerm_lite.text import TextTokenizer

BASE = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
FFN_OUT = r"/layer\.\d+/output/dense/"  # the FFN's output MatMul (not layer.N/attention/output/dense)
# name: (weights, compile options); weights "int8 but FFN out": every MatMul but FFN_OUT requantized
VARIANTS: dict[str, tuple[str, dict]] = {
    "as read: 8-bit weights dequantized at every call, default precision": ("as read", {}),
    "weights folded to fp32 at load, default precision, one stream of 2 threads": ("fp32", {}),
    "the same, one stream per thread, texts side by side (engine='openvino')": (
        "fp32", {"NUM_STREAMS": 2, "PERFORMANCE_HINT": "THROUGHPUT"}),
    "weights folded to fp32 at load, fp32 compute": ("fp32", {"INFERENCE_PRECISION_HINT": "f32"}),
    "int8 weights per channel, activations per call in groups of 32": (
        "int8", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}),
    "the same, bf16 elsewhere": ("int8", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}),
    "int8 in groups of 32 (bf16 elsewhere), one stream per thread, texts side by side": (
        "int8", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32, "NUM_STREAMS": 2, "PERFORMANCE_HINT": "THROUGHPUT"}),
    "int8 weights per channel, activations in groups of 16": (
        "int8", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 16}),
    "int8 in groups of 32, the FFN's output MatMul kept (bf16)": (
        "int8 but FFN out", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}),
    "int8 in groups of 32, the FFN's output MatMul kept (fp32 everywhere)": (
        "int8 but FFN out", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32}),
}


def requantize_per_channel(model, keep: str | None = None) -> None:
    """Each folded MatMul weight (K, N) as 8-bit levels per output channel (asymmetric: min to max), behind
    the Convert-Subtract-Multiply pattern OpenVINO keeps compressed and runs with int8 compute; MatMuls whose
    name matches the regular expression ``keep`` stay as they are."""
    import openvino.opset13 as ops

    for op in model.get_ordered_ops():
        w = op.input_value(1).get_node() if op.get_type_name() == "MatMul" else None
        if w is None or w.get_type_name() != "Constant" or (keep and re.search(keep, op.get_friendly_name())):
            continue
        W = w.get_data().astype(np.float32)  # (K, N)
        lo, hi = W.min(0), W.max(0)  # (N,) each
        scale = np.maximum((hi - lo) / 255, 1e-8).astype(np.float16)  # (N,)
        zero = np.clip(np.round(-lo / scale.astype(np.float32)), 0, 255)  # (N,)
        levels = np.clip(np.round(W / scale.astype(np.float32)) + zero, 0, 255).astype(np.uint8)  # (K, N)
        x = ops.subtract(ops.convert(ops.constant(levels), "f16"),
                         ops.convert(ops.constant(zero.astype(np.uint8)[None, :]), "f16"))
        x = ops.convert(ops.multiply(x, ops.constant(scale[None, :])), "f32")  # (K, N)
        op.input(1).replace_source_output(x.output(0))
    model.validate_nodes_and_infer_types()


def variant(ref: RewardModel, weights: str, options: dict) -> RewardModel:
    """The shipped model with its backbone compiled by OpenVINO as ``weights`` and ``options`` say."""
    import openvino as ov

    cfg, core = ref.config, ov.Core()
    graphs = cfg.graphs[ref.precision]
    model = core.read_model(str(ref.folder / graphs.backbone))
    if weights != "as read":
        fold_constant_weights(core, model)
    if weights.startswith("int8"):
        requantize_per_channel(model, FFN_OUT if weights == "int8 but FFN out" else None)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": ref.threads, **BASE, **options})
    head = open_graph(ref.folder / graphs.head, ref.threads, [cfg.head_input], cfg.head_outputs)
    return RewardModel(ref.folder, cfg, OpenVinoBackbone(compiled, cfg.backbone_inputs, cfg.backbone_output),
                       head, TextTokenizer(ref.folder / "tokenizer.json", cfg.max_length), ref.precision,
                       ref.threads, ref.model_hash, engine="openvino")


def main() -> None:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="run only the variants whose name contains this")
    args = ap.parse_args()
    logging.getLogger("moerm_lite").setLevel(logging.ERROR)
    ref = RewardModel.load(threads=2)
    torch.set_num_threads(ref.threads)
    models = {"onnxruntime (default engine)": ref} | {name: variant(ref, *v) for name, v in VARIANTS.items()
                                                      if args.only in name or "engine=" in name}
    recs = heldout_comparisons(per_source=200)
    held = [(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")]
    margins = {name: m.score_pairs(held).reshape(-1, 2) @ np.array([1.0, -1.0]) for name, m in models.items()}
    tb, th = torch_model(ref)
    calls = rank_calls(5)
    times: dict[str, list[float]] = {name: [] for name in [*models, "torch"]}
    for m in models.values():  # warm-up
        m.rank(*calls[0])
    for _ in range(2):
        for prompt, replies in calls:
            for name, m in models.items():
                t = time.perf_counter()
                m.rank(prompt, replies)
                times[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            torch_scores(tb, th, ref, [(prompt, r) for r in replies], 32)
            times["torch"].append(time.perf_counter() - t)
    t50 = percentiles(times["torch"])[0]
    print(f"{cpu_description()}; {len(recs)} held-out comparisons; "
          f"rank() of 5 replies, {len(calls)} instructions x 2")
    print(f"{'variant':<72} {'rank(5) p50':>12} {'x torch':>8} {'decisions = onnxruntime':>24}")
    print(f"{'PyTorch fp32':<72} {t50:>9.1f} ms {1.0:>7.2f}x")
    for name in models:
        p50 = percentiles(times[name])[0]
        agree = 100 * np.mean(np.sign(margins[name]) == np.sign(margins["onnxruntime (default engine)"]))
        print(f"{name:<72} {p50:>9.1f} ms {t50 / p50:>7.2f}x {agree:>23.2f}%")


if __name__ == "__main__":
    main()
