"""Benchmarks: moerm-lite against PyTorch + transformers on the same texts, threads and model.

    python -m bench.run            # full run (a few minutes on 2 cores), from the repository root
    python -m bench.run --quick    # smoke run, under 2 minutes

Prints one table with ratios. Needs the export extra (torch, transformers) for the baselines and
../shared/data for the texts. Measures: (1) scoring throughput, (2) head cost vs number of experts,
(3) fit_user time split into feature extraction and the solve, (4) one ``rank()`` call of 5 and of 20
real replies, p50 / p99 against PyTorch fp32 doing the same work, and where its time goes, (5) cold start
and peak memory in a fresh process, (6) model folder and runtime-venv size. The same rows for the faster
ways to run the backbone: onnxruntime's ``int8_compute=True`` and, where OpenVINO is installed (``pip
install "moerm-lite[openvino]"``), ``engine="openvino"``: rank(), throughput, cold start, and their
decisions against the default path's on held-out comparisons.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from moerm_lite import RewardModel, UserProfile, fit_map
from moerm_lite.folder import ModelConfig
from moerm_lite.model import BATCH_SIZE
from moerm_lite.sessions import cpu_session

ROOT = Path(__file__).resolve().parents[1]


def timeit(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def torch_backbone(model: RewardModel, template: "str | Path | None" = None):
    """The model's own backbone in PyTorch fp32: its graph's weights (8-bit levels dequantized as the
    runtime folds them) in the architecture of ``template`` (default: the packaged all-MiniLM-L6-v2,
    which the shipped backbone was fine-tuned from). The same weights and arithmetic as the runtime's, so
    a decision that differs is a difference of runtimes, not of models."""
    from moerm_build.graphs.onnx_backbone import backbone_from_graph
    from moerm_build.train.embed import default_backbone_path

    return backbone_from_graph(model.folder / model.config.graphs[model.precision].backbone,
                               template or default_backbone_path())


def torch_model(model: RewardModel, template: "str | Path | None" = None):
    """The same model in PyTorch fp32: its backbone via transformers (``torch_backbone``) and its head."""
    return torch_backbone(model, template), torch_head(model)


def torch_head(model: RewardModel):
    """The model's head in PyTorch fp32, rebuilt from the head graph."""
    import onnx
    import torch

    from moerm_build.graphs.onnx_head import read_head_weights
    from moerm_build.model import ModelArgs, MoEHead

    w = read_head_weights(onnx.load(str(model.folder / model.config.graphs[model.precision].head)))
    K, F, D = w.w1.shape
    head = MoEHead(ModelArgs(n_features=F, n_experts=K, n_shared=w.n_shared, top_k=model.experts_per_input, expert_hidden=D,
                             reward_bound=w.reward_bound))
    with torch.no_grad():
        head.router.weight.copy_(torch.from_numpy(w.router_w.T.copy()))
        head.router.bias.copy_(torch.from_numpy(w.router_b))
        for name, value in (("w1", w.w1), ("b1", w.b1), ("w2", w.w2), ("b2", w.b2), ("feat_mean", w.feat_mean),
                            ("feat_std", w.feat_std)):
            getattr(head, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
        head.w0.copy_(torch.from_numpy(model.w0.astype(np.float32)))
    return head.eval()


def torch_scores(backbone, head, model: RewardModel, pairs, batch_size: int) -> np.ndarray:
    """PyTorch fp32 scores: prompts and responses through the backbone (length-sorted padded batches,
    each distinct text once), numpy pair features, then the head, and the folder's request gate
    (``moerm_lite.request_gate``) on its gates as the runtime applies it; ``model`` gives the tokenizer, the
    token budget, the feature layout and the gate."""
    import torch

    from moerm_build.train.embed import embed_texts, features_of
    from moerm_lite.text import TextTokenizer

    tok = TextTokenizer(model.folder / "tokenizer.json", model.config.max_length)
    cache: dict[tuple[str, str], np.ndarray] = {}

    def embed(texts, role):
        todo = sorted({t for t in texts if (role, t) not in cache})
        if todo:
            for t, e in zip(todo, embed_texts(backbone, tok, todo, role, batch_size=batch_size)):
                cache[(role, t)] = e
        return np.stack([cache[(role, t)] for t in texts])

    x = torch.from_numpy(features_of(embed, pairs, model.config.feature_layout))  # (N, F)
    with torch.inference_mode():
        out = head(x)
    gates, rewards = out["gating_output"].numpy(), out["rewards"].numpy()  # (N, K) each
    gate = model.config.request_gate
    if gate is not None:
        prompts = [p for p, _ in pairs]
        on = gate.on(embed(prompts, "prompt"), prompts)  # (N,)
        gates = gate.apply_dense(gates, on)  # (N, K)
    return (gates * rewards).astype(np.float64) @ head.w0.detach().double().numpy()  # (N,)


def fp32_folder(model: RewardModel, backbone, tmp: Path) -> RewardModel:
    """A copy of the model folder whose backbone graph is ONNX fp32 (exported here)."""
    import shutil

    from moerm_build.graphs.onnx_backbone import export_backbone
    from moerm_lite.folder import CONFIG, write_manifest

    dst = tmp / "fp32"
    shutil.copytree(model.folder, dst)
    export_backbone(backbone, dst / "onnx" / "backbone_fp32.onnx")
    cfg = json.loads((dst / CONFIG).read_text())
    cfg["graphs"]["fp32"] = {**cfg["graphs"][model.precision], "backbone": "onnx/backbone_fp32.onnx",
                             "per_sequence": False}
    (dst / CONFIG).write_text(json.dumps(cfg))
    write_manifest(dst)
    return RewardModel.load(dst, precision="fp32", threads=model.threads)


def bench_throughput(model: RewardModel, torch_ref, pairs, repeat: int, tmp: Path) -> list[tuple[str, str, str]]:
    """Texts/s one at a time and batched: PyTorch fp32 (``torch_ref``, from ``torch_model``), an fp32 ONNX
    export of the same backbone and the shipped int8 model, and their decision agreement."""
    backbone, head = torch_ref
    rows = []
    t_torch = {}
    for bs in (1, 32):
        t_torch[bs] = timeit(lambda bs=bs: torch_scores(backbone, head, model, pairs, bs), repeat)
    ref = torch_scores(backbone, head, model, pairs, 32)
    fp32 = fp32_folder(model, backbone, tmp)
    n = len(pairs)
    for bs in (1, 32):  # moerm-lite "batch 32" runs its default batching (BATCH_SIZE texts, tokens_per_batch)
        ours = 1 if bs == 1 else BATCH_SIZE
        t_int8 = timeit(lambda ours=ours: model.score_pairs(pairs, batch_size=ours), repeat)
        t_fp32 = timeit(lambda ours=ours: fp32.score_pairs(pairs, batch_size=ours), repeat)
        rows += [(f"throughput batch {bs}: torch fp32", f"{n / t_torch[bs]:.1f} texts/s", "1.00x"),
                 (f"throughput batch {bs}: ONNX fp32", f"{n / t_fp32:.1f} texts/s", f"{t_torch[bs] / t_fp32:.2f}x"),
                 (f"throughput batch {bs}: moerm-lite int8", f"{n / t_int8:.1f} texts/s",
                  f"{t_torch[bs] / t_int8:.2f}x")]
    s = model.score_pairs(pairs)
    i, j = np.triu_indices(n, 1)
    agree = np.mean(np.sign(s[i] - s[j]) == np.sign(ref[i] - ref[j]))
    rows.append(("decision agreement int8 vs torch (all pairs)", f"{100 * agree:.2f}%", ""))
    return rows


def bench_levers(model: RewardModel, pairs, repeat: int) -> list[tuple[str, str, str]]:
    """What each runtime choice buys, on the shipped int8 model with default batching: each row turns one off."""
    from moerm_lite.text import TextTokenizer

    n = len(pairs)
    t_default = timeit(lambda: model.score_pairs(pairs), repeat)
    rows = [("lever baseline: moerm-lite int8, default batching", f"{n / t_default:.1f} texts/s", "1.00x")]

    def row(name: str, t: float) -> None:
        rows.append((f"lever off: {name}", f"{n / t:.1f} texts/s", f"default is {t / t_default:.2f}x faster"))

    # 1. length-sorted buckets and one embedding per distinct prompt: off = one call per pair
    row("length sorting and shared prompt embeddings (one call per pair)",
        timeit(lambda: [model.score_pairs([p]) for p in pairs], repeat))
    # 2. token-budget batches: off = fixed batches of 32 texts, however long
    fixed = RewardModel.load(model.folder, threads=model.threads, precision=model.precision, tokens_per_batch=10**9)
    row("token-budget batches (fixed batches of 32 texts)", timeit(lambda: fixed.score_pairs(pairs, batch_size=32),
                                                                   repeat))
    # 3. threads: 1 instead of the configured count
    one = RewardModel.load(model.folder, threads=1, precision=model.precision)
    row(f"{model.threads} threads (1 thread)", timeit(lambda: one.score_pairs(pairs), repeat))
    # 4. the tokenizer's batch encode, and the tokenizer's share of the time
    tok = TextTokenizer(model.folder / "tokenizer.json", model.config.max_length)
    texts = [r for _, r in pairs]
    t_batch = timeit(lambda: tok.encode(texts), repeat)
    t_single = timeit(lambda: [tok.encode([t]) for t in texts], repeat)
    rows.append(("tokenizer: batch encode / one by one", f"{1e3 * t_batch:.1f} / {1e3 * t_single:.1f} ms",
                 f"{t_single / t_batch:.2f}x; tokenizing is {100 * t_batch / t_default:.0f}% of scoring time"))
    return rows


def bench_experts(Ks: list[int], repeat: int) -> list[tuple[str, str, str]]:
    from onnx import TensorProto, helper, numpy_helper

    from moerm_build.graphs.onnx_head import HeadWeights, build_head_graph

    H, D, B = 781, 64, 32  # H: the pair features of MiniLM (2 * 384 + 13)
    rng = np.random.default_rng(0)
    h = rng.normal(size=(B, H)).astype(np.float32)
    rows: list[tuple[str, str, str]] = []
    base: dict[str, float] = {}
    for K in Ks:
        w = HeadWeights(rng.normal(size=(H, K)), np.zeros(K), rng.normal(size=(K, H, D)) / 20, np.zeros((K, D)),
                        rng.normal(size=(K, D)), np.zeros(K))
        sparse = cpu_session(build_head_graph(w, 2).SerializeToString(), 2)
        # dense contrast: every expert evaluated, one (H, K*D) GEMM
        W = np.ascontiguousarray(w.w1.transpose(1, 0, 2).reshape(H, K * D)).astype(np.float32)
        nodes = [helper.make_node("MatMul", ["embedding", "W"], ["pre"]),
                 helper.make_node("Relu", ["pre"], ["hid"]),
                 helper.make_node("Reshape", ["hid", "shape"], ["hid3"]),
                 helper.make_node("Mul", ["hid3", "w2"], ["prod"]),
                 helper.make_node("ReduceSum", ["prod", "ax"], ["rewards"], keepdims=0)]
        g = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [B, H])],
                              [helper.make_tensor_value_info("rewards", TensorProto.FLOAT, [B, K])],
                              [numpy_helper.from_array(W, "W"),
                               numpy_helper.from_array(np.array([B, K, D], dtype=np.int64), "shape"),
                               numpy_helper.from_array(w.w2.astype(np.float32), "w2"),
                               numpy_helper.from_array(np.array([-1], dtype=np.int64), "ax")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        dense = cpu_session(m.SerializeToString(), 2)
        ts = timeit(lambda: sparse.run(None, {"features": h}), repeat)
        td = timeit(lambda: dense.run(None, {"embedding": h}), repeat)
        base.setdefault("s", ts)
        rows.append((f"head K={K} top-2, batch {B}: sparse / dense", f"{1e3 * ts:.3f} / {1e3 * td:.3f} ms",
                     f"sparse {ts / base['s']:.2f}x of K={Ks[0]}"))
    return rows


def bench_fit(model: RewardModel, Ns: list[int], repeat: int) -> list[tuple[str, str, str]]:
    from moerm_build import data

    st = data.load_persona()
    rng = np.random.default_rng(1)
    rows = []
    for N in Ns:
        idx = rng.choice(len(st.text), size=(N, 2), replace=False if 2 * N <= len(st.text) else True)
        comps = [{"prompt": "", "chosen": st.text[a], "rejected": st.text[b]} for a, b in idx]
        t_feat = timeit(lambda comps=comps: model.comparison_features(comps), max(1, repeat // 2))
        phi, X = model.comparison_terms(comps, with_pair_features=True)  # (N, K), (N, F)
        t_solve = timeit(lambda phi=phi: fit_map(phi, model.w0, model.config.default_prior_strength), repeat * 5)
        rows.append((f"fit_user N={N}: features / solve", f"{1e3 * t_feat:.1f} / {1e3 * t_solve:.2f} ms",
                     "solve goal <= 10 ms at N=50" if N == 50 else ""))
        profile = UserProfile(prior_strength=model.config.default_prior_strength,
                              prior_precision=model.prior_precision,
                              residual_strength=model.config.recommended_residual_strength)
        t_res = timeit(lambda phi=phi, X=X, profile=profile: profile.fit(phi, model.w0, X), repeat)
        rows.append((f"fit_user N={N} with a residual: solve", f"{1e3 * t_res:.2f} ms",
                     f"{t_res / t_solve:.1f}x the solve without"))
        for choice in ("auto", "evidence"):  # a residual strength chosen per user
            chosen = UserProfile(prior_strength=model.config.default_prior_strength,
                                 prior_precision=model.prior_precision, residual_strength=choice)
            t_choice = timeit(lambda phi=phi, X=X, chosen=chosen: chosen.fit(phi, model.w0, X), repeat)
            rows.append((f"fit_user N={N} residual {choice}: solve", f"{1e3 * t_choice:.2f} ms",
                         f"{t_choice / t_solve:.1f}x the solve without"
                         + ("; goal <= 20 ms at N=50" if N == 50 else "")))
    return rows


COLD_RUNTIME = """  # the caller defines FOLDER, ENGINE, CACHE, INT8, THREADS and RANK (a prompt, replies)
import sys, time
t = time.perf_counter()
sys.modules['torch'] = None  # a runtime-only process: torch cannot be imported
from moerm_lite import RewardModel
t_import = time.perf_counter() - t
m = RewardModel.load(FOLDER, threads=THREADS, engine=ENGINE, compile_cache=CACHE, int8_compute=INT8)
t_load = time.perf_counter() - t - t_import
m.score("", "I like football.")
print(t_import, t_load, time.perf_counter() - t, MB('VmHWM'), MB('VmRSS'))
m.rank(*RANK)
print(MB('VmHWM'))
"""
COLD_TORCH = """
import sys, time
t = time.perf_counter()
import torch
torch.set_num_threads(2)
from moerm_lite import RewardModel
from bench.run import torch_head, torch_scores
from moerm_build.model import Backbone
from moerm_build.train.embed import default_backbone_path
m = RewardModel.load(threads=2)
# what a PyTorch user loads: an encoder folder (the packaged MiniLM, the shipped backbone's architecture)
bb, head = Backbone(default_backbone_path()).eval(), torch_head(m)
torch_scores(bb, head, m, [("", "I like football.")], 1)
print(time.perf_counter() - t, MB('VmHWM'), MB('VmRSS'))
"""
# VmHWM is this process's own peak RSS (ru_maxrss would carry over the parent's peak across exec), VmRSS
# what it holds now
MB = ("def MB(field):\n    for line in open('/proc/self/status'):\n        if line.startswith(field):\n"
      "            return int(line.split()[1]) / 1024\n")


def bench_cold(repeat: int, openvino: bool = False, int8: bool = False,
               against: Path | None = None) -> list[tuple[str, str, str]]:
    """Fresh processes, median of ``repeat`` rounds after one untimed round (a round starts one process of
    each kind in turn): the default load, PyTorch, with ``int8`` / ``openvino`` the load with
    ``int8_compute=True`` / ``engine="openvino"`` (from its cache and compiling), and with ``against`` the
    default load of that model folder, and the default load with one thread. Each moerm-lite process then
    ranks the five real replies of the first held-out instruction (``rank_calls``): the peak memory of a
    process that loads and ranks (with two threads, two backbone passes at a time). They run with
    compiled bytecode, as an installed package does (pip compiles it at install): with
    PYTHONDONTWRITEBYTECODE set, as on some CI machines, an editable checkout would recompile moerm-lite's
    sources in every process (~20 ms)."""
    rows = []
    with tempfile.TemporaryDirectory() as pycache, tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = pycache
        env["MOERM_LITE_CACHE"] = cache  # the openvino engine's compiled model: the untimed run writes it
        call = rank_calls(5)[0]

        def runtime_code(folder: str | None = None, engine: str = "onnxruntime", cached: bool = True,
                         int8_compute: bool = False, threads: int = 2) -> str:
            return (f"RANK = {call!r}\nFOLDER, ENGINE, CACHE, INT8, THREADS = "
                    f"{folder!r}, {engine!r}, {cached}, {int8_compute}, {threads}\n" + COLD_RUNTIME)

        codes = [("moerm-lite (runtime only)", runtime_code()), ("torch + transformers", COLD_TORCH),
                 ("one thread", runtime_code(threads=1))]
        if int8:
            codes += [("int8 compute", runtime_code(int8_compute=True))]
        if openvino:
            codes += [(name, runtime_code(engine="openvino", cached=cached))
                      for name, cached in (("openvino", True), ("openvino, compiling", False))]
        if against is not None:
            codes += [("against", runtime_code(str(against)))]
        runs: dict[str, list[list[float]]] = {name: [] for name, _ in codes}
        for _ in range(repeat + 1):  # rounds of one process each, so that all see the same machine state
            for name, code in codes:
                out = subprocess.run([sys.executable, "-c", MB + code],
                                     capture_output=True, text=True, check=True, cwd=ROOT, env=env)
                runs[name].append([float(x) for x in out.stdout.split()])
        res = {name: np.median(np.array(r[1:]), axis=0) for name, r in runs.items()}
    runtime, tt = res["moerm-lite (runtime only)"], res["torch + transformers"]
    t_import, t_load, rt = runtime[0], runtime[1], runtime[2:]  # rt, tt: seconds, peak MB, resident MB (rt:
    #                                                                 then the peak MB after rank() of 5)
    rows.append(("cold start to first score: moerm-lite / torch", f"{rt[0]:.2f} / {tt[0]:.2f} s",
                 f"{tt[0] / rt[0]:.1f}x faster (goal <= 0.3 s)"))
    rows.append(("  of which import moerm_lite / load / first score",
                 f"{1e3 * t_import:.0f} / {1e3 * t_load:.0f} / {1e3 * (rt[0] - t_import - t_load):.0f} ms", ""))
    rows.append(("peak RSS to first score: moerm-lite / torch", f"{rt[1]:.0f} / {tt[1]:.0f} MB",
                 f"{tt[1] / rt[1]:.1f}x less (goal <= 150 MB)"))
    rows.append(("resident after first score: moerm-lite / torch", f"{rt[2]:.0f} / {tt[2]:.0f} MB",
                 f"{tt[2] / rt[2]:.1f}x less"))
    one = res["one thread"][2:]
    rows.append(("peak RSS after rank() of 5 real replies, moerm-lite 2 threads / 1 thread",
                 f"{rt[3]:.0f} / {one[3]:.0f} MB", "goal <= 150 MB (1 thread: one backbone pass at a time)"))
    if int8:
        q = res["int8 compute"][2:]
        rows.append(("cold start / peak RSS / after rank(5), int8_compute=True",
                     f"{q[0]:.2f} s / {q[1]:.0f} / {q[3]:.0f} MB",
                     f"{q[0] / rt[0]:.1f}x / {q[1] / rt[1]:.2f}x / {q[3] / rt[3]:.2f}x the default's"))
    if against is not None:
        a = res["against"][2:]
        rows.append((f"cold start / peak RSS / after rank(5), {against}",
                     f"{a[0]:.2f} s / {a[1]:.0f} / {a[3]:.0f} MB",
                     f"{rt[0] / a[0]:.2f}x / {rt[1] / a[1]:.2f}x / {rt[3] / a[3]:.2f}x: the default model's over "
                     "this one's"))
    if openvino:
        ov, first = res["openvino"][2:], res["openvino, compiling"][2:]
        rows.append(("cold start / peak RSS / after rank(5), engine='openvino'",
                     f"{ov[0]:.2f} s / {ov[1]:.0f} / {ov[3]:.0f} MB",
                     f"{ov[0] / rt[0]:.1f}x / {ov[1] / rt[1]:.1f}x / {ov[3] / rt[3]:.1f}x onnxruntime's (compiled "
                     "model cached)"))
        rows.append(("  the same, compiling (compile_cache=False)", f"{first[0]:.2f} s / {first[1]:.0f} MB",
                     f"{first[0] / ov[0]:.1f}x / {first[1] / ov[1]:.1f}x the cached load"))
    return rows


def rank_calls(n_replies: int) -> list[tuple[str, list[str]]]:
    """``rank()`` workloads of real length: each held-out DSP instruction (the test split; timing reads no
    label) with its five real replies (four domain styles and the original), and for 20 replies those of
    the next three instructions too."""
    from moerm_build import data

    rows = [r for r in data.load_dsp() if data.in_split(r["query"], "test")]
    replies = [[r["responses"][d] for d in (*data.DSP_DOMAINS, "normal")] for r in rows]  # 5 per instruction
    return [(r["query"], [t for j in range(n_replies // 5) for t in replies[(i + j) % len(rows)]])
            for i, r in enumerate(rows)]


def percentiles(times: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return float(p50), float(p99)


def stage_times(model: RewardModel, calls, tb=None, th=None) -> dict[str, float]:
    """Median milliseconds of each stage of a ranking call, run one stage at a time on the same calls:
    tokenize, the backbone passes of the prompt and the replies (PyTorch: the prompt, then the replies in one
    padded batch; moerm-lite: its own batching, the prompt beside the replies), pair
    features, head.
    With ``tb``, ``th`` (``torch_model``) the PyTorch fp32 stages; else moerm-lite's, through public API."""
    import torch

    from moerm_build.train.embed import embed_texts
    from moerm_lite.features import pair_features
    from moerm_lite.sessions import cpu_session
    from moerm_lite.text import TextTokenizer

    tok = TextTokenizer(model.folder / "tokenizer.json", model.config.max_length)
    head = cpu_session(str(model.folder / model.config.graphs[model.precision].head), model.threads)
    parts: dict[str, list[float]] = {k: [] for k in ("tokenize", "backbone passes", "features", "head")}
    for prompt, replies in calls:
        prompts = [prompt] * len(replies)
        t0 = time.perf_counter()
        tok.encode([prompt], "prompt")
        tok.encode(replies, "response")
        t1 = time.perf_counter()
        if tb is None:  # tokenize, the passes and the features, as rank() runs them
            model.pair_features(list(zip(prompts, replies)))
            t2 = time.perf_counter()
            P, R = model.embed([prompt], role="prompt")[0], model.embed(replies)[0]  # (1, H), (n, H): untimed
        else:  # tokenize again, then the passes
            with torch.inference_mode():
                P = embed_texts(tb, tok, [prompt], "prompt", batch_size=32)  # (1, H)
                R = embed_texts(tb, tok, replies, "response", batch_size=32)  # (n, H)
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        x = pair_features(np.repeat(P, len(replies), 0), R, prompts, replies, model.config.feature_layout)
        t4 = time.perf_counter()
        if th is None:
            head.run(model.config.head_outputs, {model.config.head_input: x})
        else:
            with torch.inference_mode():
                th.score(torch.from_numpy(x), th.w0)
        t5 = time.perf_counter()
        tokenize, features = t1 - t0, t4 - t3
        # the timed block (t1..t2) less what it repeats of the other stages: tokenizing, and for moerm-lite's
        # pair_features() the features
        passes = t2 - t1 - tokenize - (features if tb is None else 0.0)
        for k, v in zip(parts, (tokenize, passes, features, t5 - t4)):
            parts[k].append(v)
    return {k: 1e3 * float(np.median(v)) for k, v in parts.items()}


def bench_rank(model: RewardModel, torch_ref, n_replies: int, repeat: int, limit: int | None = None,
               others: dict[str, RewardModel | None] | None = None) -> list[tuple[str, str, str]]:
    """p50 / p99 of one ``rank()`` call of ``n_replies`` real replies against PyTorch fp32 (``torch_ref``)
    doing the same work in the same run (the prompt once, the replies in one padded batch, numpy features,
    the head), calls interleaved so that all see the same machine state; then where each call's time goes.
    ``others``: the same model run another way (``other_paths``), by label, timed in the same loop."""
    tb, th = torch_ref
    calls = rank_calls(n_replies)[:limit]
    engines = [("moerm-lite", model)] + [(f"moerm-lite {label}", m) for label, m in (others or {}).items()
                                         if m is not None]
    ours: dict[str, list[float]] = {label: [] for label, _ in engines}
    theirs = []
    for _, m in engines:  # warm-up
        m.rank(*calls[0])
    torch_scores(tb, th, model, [(calls[0][0], r) for r in calls[0][1]], 32)
    for _ in range(repeat):
        for prompt, replies in calls:
            for label, m in engines:
                t = time.perf_counter()
                m.rank(prompt, replies)
                ours[label].append(time.perf_counter() - t)
            t = time.perf_counter()
            torch_scores(tb, th, model, [(prompt, r) for r in replies], 32)
            theirs.append(time.perf_counter() - t)
    t50, t99 = percentiles(theirs)
    name = f"rank() of {n_replies} replies ({len(calls)} held-out instructions x {repeat})"
    rows = [(f"{name}: torch fp32 p50 / p99", f"{t50:.1f} / {t99:.1f} ms", "1.00x")]
    for label, _ in engines:
        o50, o99 = percentiles(ours[label])
        rows.append((f"{name}: {label} p50 / p99", f"{o50:.1f} / {o99:.1f} ms",
                     f"{t50 / o50:.2f}x (goal >= 3x at 5 replies)"))
    stages = [(label, stage_times(m, calls), float(np.median(ours[label]) * 1e3)) for label, m in engines]
    stages.append(("torch fp32", stage_times(model, calls, tb, th), t50))
    for label, st, total in stages:
        st["python and the rest"] = max(total - sum(st.values()), 0.0)
        rows.append((f"  {label} rank({n_replies}) stages, median ms",
                     " / ".join(f"{v:.1f}" for v in st.values()), " / ".join(st)))
    return rows


def other_paths(model: RewardModel) -> dict[str, RewardModel | None]:
    """The model run the faster ways, by label: onnxruntime multiplying in int8 (``int8_compute=True``;
    None where the graph has no 8-bit weights or onnxruntime is older than 1.25) and its backbone on
    OpenVINO (``engine="openvino"``; None where OpenVINO is not installed)."""
    def load(**how: Any) -> RewardModel:
        return RewardModel.load(model.folder, threads=model.threads, precision=model.precision, **how)

    out: dict[str, RewardModel | None] = {}
    try:
        out["int8_compute"] = load(int8_compute=True)
    except ValueError:
        out["int8_compute"] = None
    try:
        out["openvino"] = load(engine="openvino")
    except ImportError:
        out["openvino"] = None
    return out


def bench_paths(model: RewardModel, others: dict[str, RewardModel | None], torch_ref, pairs, repeat: int,
                per_source: int) -> list[tuple[str, str, str]]:
    """Each other way of running the model (``other_paths``) next to the default on the same model:
    throughput against PyTorch fp32 at batch 32, and its pairwise decisions against the default's on
    held-out comparisons of every source (``moerm_build.evaluate.parity.heldout_comparisons``) and on all
    pairs of the workload."""
    from moerm_build.evaluate.parity import heldout_comparisons

    backbone, head = torch_ref
    n = len(pairs)
    recs = heldout_comparisons(per_source=per_source)
    held = [(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")]
    s = model.score_pairs(pairs)
    d = model.score_pairs(held).reshape(-1, 2) @ np.array([1.0, -1.0])  # (C,)
    i, j = np.triu_indices(n, 1)
    t_torch = timeit(lambda: torch_scores(backbone, head, model, pairs, 32), repeat)
    t_default = timeit(lambda: model.score_pairs(pairs), repeat)
    rows = []
    for label, other in others.items():
        if other is None:
            why = ('pip install "moerm-lite[openvino]"' if label == "openvino"
                   else "needs 8-bit graphs and onnxruntime>=1.25")
            rows.append((label, "not available", why))
            continue
        t_other = timeit(lambda other=other: other.score_pairs(pairs), repeat)
        s_o = other.score_pairs(pairs)
        agree = np.mean(np.sign(s_o[i] - s_o[j]) == np.sign(s[i] - s[j]))
        d_o = other.score_pairs(held).reshape(-1, 2) @ np.array([1.0, -1.0])  # (C,)
        rows += [(f"throughput, default batching: moerm-lite default / {label}",
                  f"{n / t_default:.1f} / {n / t_other:.1f} texts/s",
                  f"{t_torch / t_default:.2f}x / {t_torch / t_other:.2f}x torch fp32 batch 32"),
                 (f"decisions {label} = default: {len(recs)} held-out comparisons / all workload pairs",
                  f"{100 * np.mean(np.sign(d_o) == np.sign(d)):.2f}% / {100 * agree:.2f}%", "goal >= 99%"),
                 (f"largest score change {label} vs default (workload)", f"{np.abs(s_o - s).max():.4f}",
                  f"score spread (std) {s.std():.2f}")]
    return rows


def bench_budgets(model: RewardModel, pairs, repeat: int, budgets=(128, 256, 512, 1024, 2048),
                  limit: int | None = None) -> list[tuple[str, str, str]]:
    """Throughput and ``rank()`` of 5 real replies for each most-padded-tokens-per-backbone-call budget
    (``RewardModel.load(tokens_per_batch=...)``; scores do not depend on it), interleaved call by call, each
    against the model's own budget (added to ``budgets`` if missing)."""
    base = model.tokens_per_batch
    budgets = sorted({*budgets, base})
    calls = rank_calls(5)[:limit]
    models = {t: RewardModel.load(model.folder, threads=model.threads, precision=model.precision,
                                  tokens_per_batch=t) for t in budgets}
    thr: dict[int, list[float]] = {t: [] for t in budgets}
    rank: dict[int, list[float]] = {t: [] for t in budgets}
    for m in models.values():
        m.rank(*calls[0])
    for _ in range(repeat):
        for t, m in models.items():
            s = time.perf_counter()
            m.score_pairs(pairs)
            thr[t].append(time.perf_counter() - s)
        for prompt, replies in calls:
            for t, m in models.items():
                s = time.perf_counter()
                m.rank(prompt, replies)
                rank[t].append(time.perf_counter() - s)
    ref_t, ref_r = float(np.median(thr[base])), percentiles(rank[base])[0]
    rows = []
    for t in budgets:
        tt, rr = float(np.median(thr[t])), percentiles(rank[t])[0]
        rows.append((f"token budget {t} per backbone call{' (default)' if t == base else ''}: "
                     "throughput / rank(5) p50", f"{len(pairs) / tt:.1f} texts/s / {rr:.1f} ms",
                     f"{ref_t / tt:.2f}x / {ref_r / rr:.2f}x the default"))
    return rows


def bench_catalog(model: RewardModel, pairs, size: int, repeat: int) -> list[tuple[str, str, str]]:
    """Rank an encoded catalog of ``size`` candidates for a user: the real texts' encodings, tiled."""
    from moerm_lite import Catalog

    base = model.encode_catalog(pairs, with_features=True)
    reps = -(-size // len(base))
    assert base.pair_features is not None

    def tiled(a: np.ndarray) -> np.ndarray:
        return np.tile(a, (reps, 1))[:size]

    big = Catalog([f"{i}" for i in range(len(base) * reps)][:size], tiled(base.expert_index),
                  tiled(base.gates), tiled(base.rewards), n_experts=base.n_experts, w0=base.w0,
                  model_id=base.model_id, model_hash=base.model_hash, pair_features=tiled(base.pair_features))
    w = np.random.default_rng(0).normal(size=model.n_experts)
    t_rank = timeit(lambda: big.rank(w, top_k=10), max(repeat, 20))
    t_score = timeit(lambda: model.score_pairs(pairs), repeat)
    per_text = t_score / len(pairs)
    # a user with a residual over pair features (fitted on 20 comparisons between the bench's replies)
    comps = [{"prompt": p, "chosen": r, "rejected": pairs[(i + 1) % len(pairs)][1]}
             for i, (p, r) in enumerate(pairs[:20])]
    user = model.fit_user(comps, residual_strength=model.config.recommended_residual_strength)
    t_res = timeit(lambda: big.rank(user, top_k=10), max(repeat, 5))
    big_mb = base.pair_features.nbytes * reps / 1e6
    return [(f"catalog: rank {size:,} encoded candidates for a user, top 10", f"{1e3 * t_rank:.1f} ms",
             f"{per_text * size / t_rank:,.0f}x faster than scoring them (goal <= 10 ms)"),
            ("catalog: the same for a profile with a residual (pair features stored)",
             f"{1e3 * t_res:.1f} ms",
             f"{t_res / t_rank:.0f}x the weights-only; {big_mb:.0f} MB of features")]


def bench_against(model: RewardModel, against: RewardModel, pairs, repeat: int) -> list[tuple[str, str, str]]:
    """Batch throughput of the model and of another model folder ``against`` (the one it replaces, say) on
    the same pairs, rounds alternating so that both see the same machine state."""
    times: dict[str, list[float]] = {"model": [], "against": []}
    for m in (model, against):  # warm-up
        m.score_pairs(pairs)
    for _ in range(max(repeat, 3)):
        for label, m in (("model", model), ("against", against)):
            t = time.perf_counter()
            m.score_pairs(pairs)
            times[label].append(time.perf_counter() - t)
    a, b = (len(pairs) / float(np.median(times[k])) for k in ("model", "against"))
    return [(f"throughput, default batching: this model / {against.folder}", f"{a:.1f} / {b:.1f} texts/s",
             f"{a / b:.2f}x")]


def cpu_description() -> str:
    """The CPU model and its int8 and bf16 dot-product features, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    int8 = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]  # OpenVINO computes in bf16 where one is
    return (f"{name}, {os.cpu_count()} cores, int8 features: {' '.join(int8) or 'none found'}, "
            f"bf16: {' '.join(bf16) or 'none (the openvino engine computes in fp32)'}")


def model_variant(model: RewardModel, tmp: Path, name: str, config: ModelConfig,
                  backbone_graph: Path | None = None) -> RewardModel:
    """A copy of the model's folder at ``tmp / name`` with ``config`` written (and ``backbone_graph`` in
    place of its backbone graph), the manifest rebuilt, loaded with the model's threads and precision."""
    import shutil

    from moerm_lite.folder import write_manifest

    dst = tmp / name
    shutil.copytree(model.folder, dst)
    if backbone_graph is not None:
        shutil.copy(backbone_graph, dst / model.config.graphs[model.precision].backbone)
    (dst / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    write_manifest(dst)
    return RewardModel.load(dst, threads=model.threads, precision=model.precision)


def backbone_variant(model: RewardModel, encoder: Path, tmp: Path) -> RewardModel:
    """The model with the local encoder folder ``encoder`` as its backbone, exported fp32 as the build side
    exports it (the shipped int8 graph computes in fp32 too: the same arithmetic): to time a candidate
    backbone, a distilled one say. Its scores mean nothing; the head was trained on another backbone."""
    from dataclasses import replace

    from moerm_build.graphs.onnx_backbone import export_backbone
    from moerm_build.model import Backbone

    graph = export_backbone(Backbone(encoder), tmp / "backbone_fp32.onnx")
    flags = replace(model.config.graphs[model.precision], dequantize_at_load=False)
    return model_variant(model, tmp, "backbone", replace(model.config, graphs={**model.config.graphs,
                                                                              model.precision: flags}), graph)


def dir_size(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def bench_footprint(model: RewardModel, venv: bool) -> list[tuple[str, str, str]]:
    rows = [("model folder", f"{dir_size(model.folder):.1f} MB", "")]
    if venv:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "venv", f"{tmp}/v"], check=True)
            subprocess.run([f"{tmp}/v/bin/pip", "install", "-q", str(ROOT)], check=True, capture_output=True)
            rows.append(("fresh runtime-only venv (pip install .)", f"{dir_size(Path(tmp) / 'v'):.0f} MB", ""))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small inputs, few repeats (smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    ap.add_argument("--backbone", default=None, help="time this local encoder folder in place of the shipped "
                    "backbone (speeds only; the cold-start and size rows stay the shipped model's)")
    ap.add_argument("--against", default=None, help="another model folder (the one the default replaces, say): "
                    "time only what compares the two, in one run (throughput, rank() of 5 and 20, cold start)")
    args = ap.parse_args()
    q = args.quick
    swap = tempfile.TemporaryDirectory()
    model = RewardModel.load(threads=args.threads)
    if args.backbone:
        model = backbone_variant(model, Path(args.backbone), Path(swap.name))
    from moerm_build.data import ranking_workload  # here: a cold-start process imports this module

    pairs = ranking_workload(4 if q else 64, 4 if q else 8)
    logging.getLogger("moerm_lite").setLevel(logging.ERROR)  # said once here, not once per scoring call
    cut = int(model.expert_outputs(pairs)["truncated"].sum())
    repeat = 1 if q else 3
    rows: list[tuple[str, str, str]] = []
    import torch

    torch.set_num_threads(model.threads)
    torch_ref = torch_model(model, args.backbone)  # the PyTorch fp32 reference, loaded once

    def ranks(others: dict[str, RewardModel | None]) -> list[tuple[str, str, str]]:
        """rank() of 5 and of 20 replies, the model and ``others`` against PyTorch."""
        return (bench_rank(model, torch_ref, 5, repeat, 8 if q else None, others)
                + bench_rank(model, torch_ref, 20, 1, 4 if q else None, others))

    if args.against:  # before and after, in one run
        against = RewardModel.load(args.against, threads=args.threads)
        rows += bench_against(model, against, pairs, repeat)
        rows += ranks({f"against {args.against}": against})
        rows += bench_cold(1 if q else 3, against=Path(args.against))
        report(rows, args, model, pairs, cut)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows += bench_throughput(model, torch_ref, pairs, repeat, Path(tmp))
    rows += bench_levers(model, pairs, repeat)
    rows += bench_experts([8, 64] if q else [8, 32, 128, 256], 3 if q else 50)
    rows += bench_fit(model, [5, 20] if q else [5, 20, 50, 200], repeat)
    rows += bench_budgets(model, pairs, repeat, (256, 2048) if q else (128, 256, 512, 1024, 2048), 4 if q else None)
    others = other_paths(model)
    rows += ranks(others)
    rows += bench_paths(model, others, torch_ref, pairs, repeat, 20 if q else 200)
    rows += bench_catalog(model, pairs, 100_000, repeat)
    rows += bench_cold(1 if q else 3, others["openvino"] is not None, others["int8_compute"] is not None)
    rows += bench_footprint(model, venv=not q)
    swap.cleanup()
    report(rows, args, model, pairs, cut)


def report(rows: list[tuple[str, str, str]], args: argparse.Namespace, model: RewardModel, pairs, cut: int) -> None:
    """Print the table (and write it as JSON where ``--json`` asks)."""
    print(f"moerm-lite benchmark ({'quick' if args.quick else 'full'}), {len(pairs)} texts ({cut} pairs longer "
          f"than max_length={model.config.max_length} tokens, cut as the runtime cuts them), {args.threads} "
          f"threads, {cpu_description()}"
          + (f"; backbone {args.backbone} (fp32, timing only)" if args.backbone else "")
          + (f"; against {args.against}" if args.against else ""))
    w = max(len(r[0]) for r in rows)
    for name, value, ratio in rows:
        print(f"{name:<{w}}  {value:>22}  {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
