"""onnxruntime sessions for a model folder's graphs, and the load-time checks that a folder's config,
tokenizer and graphs agree (each failure a ``ModelFolderError`` naming the file): what ``RewardModel.load``
builds before it holds anything."""

from __future__ import annotations

import ctypes
import re
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from .features import feature_dim
from .folder import (GraphFiles, ModelConfig, ModelFolderError, check_graph_io, resolve_inside, verify_files,
                     verify_graph_dirs)
from .text import TextTokenizer

ENGINES = ("onnxruntime", "openvino")  # what runs the backbone graph; the head always runs on onnxruntime
INT8_COMPUTE_ORT = (1, 25)  # the first onnxruntime that fuses 8-bit DequantizeLinear -> MatMul to MatMulNBits


class BackboneRunner(Protocol):
    """What the model calls a backbone graph through: an onnxruntime session, or ``OpenVinoBackbone``."""

    def run(self, output_names: list[str], feed: dict[str, np.ndarray],
            run_options: Any = None) -> list[Any]: ...


def runs_side_by_side(backbone: BackboneRunner) -> bool:
    """Whether ``backbone`` runs a call's feeds in parallel (``run_many``: OpenVINO's streams), so that a
    short text is best sent with the others rather than padded into a batch or run alone before them."""
    return getattr(backbone, "run_many", None) is not None


Feed = dict[str, np.ndarray]
Store = Callable[[int, np.ndarray], None]  # takes feed i's output


def run_feeds(backbone: BackboneRunner, output: str, feeds: Iterable[Feed], store: Store,
              helper: FeedHelper | None = None) -> None:
    """Each feed's ``output`` handed to ``store`` with the feed's index, as it is computed. A runner with
    ``run_many`` (OpenVINO's, several streams) gets the feeds all at once and runs them in parallel; an
    onnxruntime session one call each, as they come, on this thread and, with ``helper``, on the helper's
    as well (then ``store`` is called from both threads, never twice for one index)."""
    if runs_side_by_side(backbone):
        for i, out in enumerate(backbone.run_many(output, list(feeds))):  # type: ignore[attr-defined]
            store(i, out)
    elif helper is None:
        for i, feed in enumerate(feeds):
            store(i, backbone.run([output], feed)[0])
    else:
        helper.run(backbone, output, feeds, store)


class FeedHelper:
    """A second worker for an onnxruntime session's backbone feeds, kept by the model and made once: while
    a call is the model's only one, its feeds run two at a time, one on the calling thread and one on the
    helper's, on the session's shared threads (a short call's GEMMs are too small to keep both cores busy
    alone: docs/decisions/speed.md). Each feed is computed exactly as alone. Calls that overlap run their
    feeds one at a time on their own threads, as they would without it: they already share the cores."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="moerm-lite-feeds")  # its thread starts on use
        self._lock = threading.Lock()
        self._calls = 0  # calls in flight

    def run(self, backbone: BackboneRunner, output: str, feeds: Iterable[Feed], store: Store) -> None:
        """``run_feeds`` of an onnxruntime session with this helper."""
        with self._lock:
            self._calls += 1
            alone = self._calls == 1
        try:
            if alone:
                self._two_at_a_time(backbone, output, feeds, store)
            else:  # one at a time on this thread
                run_feeds(backbone, output, feeds, store)
        finally:
            with self._lock:
                self._calls -= 1

    def _two_at_a_time(self, backbone: BackboneRunner, output: str, feeds: Iterable[Feed],
                       store: Store) -> None:
        todo, lock = enumerate(feeds), threading.Lock()
        failed = threading.Event()  # a worker failed: the other takes no new feed

        def drain() -> None:
            while not failed.is_set():
                with lock:  # the feeds are padded as they are taken, one at a time
                    i, feed = next(todo, (-1, {}))
                if i < 0:
                    return
                try:
                    store(i, backbone.run([output], feed)[0])
                except BaseException:
                    failed.set()
                    raise

        job = self._pool.submit(drain)
        try:
            drain()
        finally:  # the helper's part: withdrawn if it has not started, else waited for
            helped = not job.cancel()
            if helped:
                wait([job])
        if helped:
            job.result()  # the helper's error, if it had one


def cpu_session(model: str | Path | bytes, threads: int, *, optimize: bool = True,
                dequantize_at_load: bool = False, int8_compute: bool = False,
                profile_prefix: str | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session as the runtime makes them: ``threads`` intra-op threads, one
    inter-op thread, no spinning, no memory pattern, all graph optimizations (``optimize=False``: none,
    which keeps every intermediate value), profiling when ``profile_prefix`` is given. ``model``: a path
    or bytes.

    ``dequantize_at_load``: the graph's ``DequantizeLinear`` nodes on constant weights are folded to
    fp32 weights while the session is built (onnxruntime's QDQ fusions off), so the graph computes
    in fp32 exactly what its stored 8-bit weights say (GraphFiles.dequantize_at_load).

    ``int8_compute`` (instead, on such a graph): onnxruntime's QDQ fusions turn each 8-bit weight and its
    MatMul into one ``MatMulNBits`` that quantizes its input per row in blocks (``accuracy_level`` 4) and
    multiplies in int8: less memory, faster on some CPUs with int8 dot products and slower on others
    (docs/decisions/speed.md), scores moved by the activations' rounding, still independent of the batch
    (``check_int8_compute`` says where it is available)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = False  # batch shapes vary call to call: a planned block per shape only adds
    #                                  memory (scoring the bench workload: peak RSS 321 -> 273 MB, same speed)
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if int8_compute:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "4")
    elif dequantize_at_load:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere a no-op).

    onnxruntime parses a whole graph file and builds its weights from it, then frees the parse: glibc keeps
    those pages (about 16-24 MB for the shipped backbone), so without this the next session is built on top
    of them and the load's peak RSS carries them."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass


def open_graph(path: Path, threads: int, inputs: list[str], outputs: list[str],
               dequantize_at_load: bool = False, int8_compute: bool = False) -> ort.InferenceSession:
    """The runtime's session of a model-folder graph; its inputs/outputs checked against config.json."""
    try:
        sess = cpu_session(path, threads, dequantize_at_load=dequantize_at_load, int8_compute=int8_compute)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelFolderError(f"onnxruntime cannot load {path}: {str(e)[:300]}") from e
    release_freed_memory()
    check_graph_io(path, {i.name for i in sess.get_inputs()}, {o.name for o in sess.get_outputs()}, inputs,
                   outputs)
    return sess


PROBE_RUN = ort.RunOptions()  # a load-time probe's buffers go back to the system after it, not kept in the arena
PROBE_RUN.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


def check_backbone(folder: Path, cfg: ModelConfig, backbone: BackboneRunner,
                   tokenizer: TextTokenizer) -> None:
    """Embed one probe text of ``max_length`` tokens (the last vocabulary id) so that a config or tokenizer
    that disagrees with the graph (hidden size, ``max_length``, vocabulary) fails at load, named."""
    L = cfg.max_length
    feed = tokenizer.pad([np.full(L, tokenizer.vocab_size - 1, dtype=np.int64)])  # (1, L): longest, last id
    try:
        (emb,) = backbone.run([cfg.backbone_output], {n: feed[n] for n in cfg.backbone_inputs}, PROBE_RUN)
    except Exception as e:
        raise ModelFolderError(
            f"{folder}: the backbone graph cannot embed {L} tokens (config max_length) with ids up to "
            f"{tokenizer.vocab_size - 1} (tokenizer.json): {str(e)[:200]}") from e
    if emb.shape != (1, cfg.hidden_size):
        raise ModelFolderError(f"{folder}: the backbone graph returns embeddings of shape {emb.shape[1:]}, "
                               f"config.json says hidden_size {cfg.hidden_size}")


def check_head(folder: Path, cfg: ModelConfig, head: ort.InferenceSession) -> None:
    """Route four probe feature rows so that a config that disagrees with the head graph (feature size,
    ``n_experts``, ``top_k``, ``n_shared``) fails at load, named."""
    F, K, k, S = feature_dim(cfg.hidden_size, cfg.feature_layout), cfg.n_experts, cfg.top_k, cfg.n_shared
    x = np.random.default_rng(0).normal(size=(4, F)).astype(np.float32)  # (4, F)
    try:
        idx, gates, rewards = head.run(cfg.head_outputs, {cfg.head_input: x}, PROBE_RUN)  # (4, k + S) each
    except Exception as e:
        raise ModelFolderError(f"{folder}: the head graph does not take {F} features (2 x hidden_size "
                               f"{cfg.hidden_size} + text statistics): {str(e)[:200]}") from e
    routed = idx[:, :idx.shape[1] - S]  # (4, k') the router's picks
    if not (idx.shape == gates.shape == rewards.shape == (4, k + S)) or not (
            (routed >= 0).all() and (routed < K - S).all()
            and (idx[:, k:] == np.arange(K - S, K)).all()):
        raise ModelFolderError(
            f"{folder}: the head graph routes to experts {sorted(set(idx.ravel().tolist()))[:8]}... with "
            f"{idx.shape[1]} outputs per input; config.json says n_experts {K}, top_k {k}, n_shared {S} "
            f"(the last n_shared experts always active)")


def onnxruntime_fuses_int8() -> bool:
    """Whether this onnxruntime fuses 8-bit ``DequantizeLinear`` -> MatMul into ``MatMulNBits`` (1.25+)."""
    found = re.match(r"(\d+)\.(\d+)", ort.__version__)
    return found is not None and tuple(map(int, found.groups())) >= INT8_COMPUTE_ORT


def check_int8_compute(graphs: GraphFiles, engine: str) -> None:
    """``ValueError`` naming why a backbone cannot compute in int8 (``cpu_session``'s ``int8_compute``): it
    needs 8-bit weights behind ``DequantizeLinear`` (a ``dequantize_at_load`` graph), the onnxruntime
    engine, and an onnxruntime that fuses them to ``MatMulNBits`` (older ones would dequantize the weights
    at every call instead)."""
    if engine != "onnxruntime":
        raise ValueError(f"int8_compute runs on the onnxruntime engine, not {engine!r}")
    if not graphs.dequantize_at_load:
        raise ValueError(f"int8_compute needs a graph with 8-bit weights (dequantize_at_load); "
                         f"{graphs.backbone} has none")
    if not onnxruntime_fuses_int8():
        need = ".".join(map(str, INT8_COMPUTE_ORT))
        raise ValueError(f"int8_compute needs onnxruntime>={need}, this is {ort.__version__}")


def open_backbone(path: Path, cfg: ModelConfig, threads: int, dequantize_at_load: bool, engine: str,
                  graph_sha256: str = "", compile_cache: bool | str | Path = False,
                  int8_compute: bool = False) -> BackboneRunner:
    """The backbone graph as ``engine`` runs it: an onnxruntime session (``int8_compute``: see
    ``cpu_session``), or an ``OpenVinoBackbone`` with the same ``run`` signature (``moerm_lite.ov_backbone``,
    imported only here), compiled once into ``compile_cache`` (True: the default folder; False: none) and
    mapped from there at later loads."""
    if engine == "openvino":
        from .ov_backbone import default_cache_dir, open_openvino_backbone

        cache = (None if compile_cache is False or not graph_sha256
                 else default_cache_dir() if compile_cache is True else Path(compile_cache))
        return open_openvino_backbone(path, threads, cfg.backbone_inputs, cfg.backbone_output, graph_sha256,
                                      cache)
    return open_graph(path, threads, cfg.backbone_inputs, [cfg.backbone_output], dequantize_at_load,
                      int8_compute)


def load_graphs(folder: Path, cfg: ModelConfig, manifest: dict, precision: str, threads: int,
                engine: str = "onnxruntime", compile_cache: bool | str | Path = False,
                int8_compute: bool = False) -> tuple[BackboneRunner, ort.InferenceSession, TextTokenizer]:
    """The backbone (run by ``engine``, one of ``ENGINES``; ``compile_cache`` and ``int8_compute`` as
    ``open_backbone`` takes them) and head sessions of ``precision`` and the tokenizer, each checked against
    ``cfg``; the files they read (and the other precisions' graph folders) checked against the manifest."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    graphs: GraphFiles = cfg.graphs[precision]
    if int8_compute:
        check_int8_compute(graphs, engine)
    backbone_path, head_path = (resolve_inside(folder, g) for g in (graphs.backbone, graphs.head))
    # onnxruntime builds the backbone session (most of the load) without holding the GIL, so it is built
    # in a thread while this one checks the files' sha256 (which holds no memory: anything loaded
    # meanwhile would add to the build's peak). Nothing is returned until both are done, and a file that
    # fails its check is reported before any onnxruntime error.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="moerm-lite-load") as pool:
        sha = str(manifest.get(graphs.backbone, {}).get("sha256", ""))  # names a compiled model's cache file
        build = pool.submit(open_backbone, backbone_path, cfg, threads, graphs.dequantize_at_load, engine,
                            sha, compile_cache, int8_compute)
        # a check that fails leaves the block once the build is done, and its error wins over the build's
        verify_files(folder, manifest, ["tokenizer.json"])
        others = [f for prec, g in cfg.graphs.items() if prec != precision for f in (g.backbone, g.head)]
        verify_graph_dirs(folder, manifest, graphs, others)
    backbone = build.result()
    # Then, one at a time, each probed right after it is built, the load's peak memory is least: a
    # session's build and a probe's buffers are transient, and the C heap hands them back between steps.
    try:
        tokenizer = TextTokenizer(folder / "tokenizer.json", cfg.max_length)
    except Exception as e:  # tokenizers raises its own exception types
        raise ModelFolderError(f"{folder / 'tokenizer.json'} cannot be read: {str(e)[:200]}") from e
    check_backbone(folder, cfg, backbone, tokenizer)
    release_freed_memory()
    head = open_graph(head_path, threads, [cfg.head_input], cfg.head_outputs)
    check_head(folder, cfg, head)
    return backbone, head, tokenizer
