"""The backbone graph run by OpenVINO instead of onnxruntime: ``RewardModel.load(engine="openvino")``.

An optional engine (``pip install "moerm-lite[openvino]"``): the same ONNX file of the model folder, read
by OpenVINO, its weights folded to fp32 once at load, then compiled for the CPU with OpenVINO's default
inference precision, which is bf16 on CPUs with native bf16 (AVX512-BF16 or AMX) and fp32 elsewhere.
On a CPU with bf16 the replies' pass of a ``rank()`` call runs about 1.7x faster than onnxruntime's
fp32, and scores move by bf16 rounding (docs/decisions/speed.md has the measured decision agreement);
on others it computes in fp32, a little faster than onnxruntime (1.15x measured with bf16 turned off).
Only the backbone runs here: the head stays on onnxruntime. Imported only when that engine is asked for.

Reading, folding and compiling the graph take about half of this engine's load (cold start 1.14 s against
0.62 s from the cache, 304 MB peak against 258, bench/run.py on 2 cores), so the compiled model is kept in
a cache folder (``compile_cache``: ``~/.cache/moerm-lite/openvino`` unless ``MOERM_LITE_CACHE`` or
``XDG_CACHE_HOME`` say otherwise) and later loads map it from there. A cached file is named by everything
it depends on (the graph file's sha256, OpenVINO's version, the CPU and its instruction sets, the threads)
and trusted only when the model it holds embeds a probe input to the same numbers as when it was compiled;
anything else is compiled again and the file rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_text
from .folder import ModelFolderError, check_graph_io

INSTALL_HINT = 'engine="openvino" needs OpenVINO: pip install "moerm-lite[openvino]"'


class OpenVinoBackbone:
    """A compiled OpenVINO backbone with onnxruntime's ``run(output_names, feed)`` signature, so the model
    calls either engine the same way, and ``run_many`` for several texts at once, one per stream in
    parallel. Thread-safe: each thread gets its own infer request and queue."""

    def __init__(self, compiled: Any, inputs: list[str], output: str, mapped: Any = None) -> None:
        self._compiled, self._inputs, self._output = compiled, list(inputs), output
        self._mapped = mapped  # the cache file a compiled model was imported from: it reads its weights there
        self._streams = int(compiled.get_property("NUM_STREAMS"))
        self._local = threading.local()

    def run_many(self, output: str, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """``output`` of each feed, in order, the feeds run in parallel on the compiled model's streams
        (longest first, so the streams finish together). Each is the same computation as ``run``'s."""
        import openvino as ov

        if output != self._output:
            raise ValueError(f"the backbone graph has one output, {self._output!r}; asked for {output!r}")
        if len(feeds) < 2 or self._streams < 2:
            return [self.run([output], feed)[0] for feed in feeds]
        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._local.queue = ov.AsyncInferQueue(self._compiled, self._streams)
        results: list[np.ndarray] = [np.zeros(0, np.float32)] * len(feeds)

        def done(request: Any, i: int) -> None:
            results[i] = np.array(request.get_output_tensor(0).data, dtype=np.float32)  # a copy

        queue.set_callback(done)
        try:
            for i in sorted(range(len(feeds)), key=lambda i: -feeds[i][self._inputs[0]].size):
                queue.start_async({name: feeds[i][name] for name in self._inputs}, i)
        finally:  # a feed that fails to start leaves no job running into the next call
            queue.wait_all()
        return results

    def probe(self) -> np.ndarray:
        """(H,) the embedding of a fixed 16-token input (every input 1: a valid id, mask and segment for a
        BERT-like graph): what a cached compiled model must reproduce exactly."""
        feed = {name: np.ones((1, 16), dtype=np.int64) for name in self._inputs}  # (1, 16) each
        return self.run([self._output], feed)[0].ravel()

    def run(self, output_names: list[str], feed: dict[str, np.ndarray], run_options: Any = None
            ) -> list[np.ndarray]:
        """The outputs named (only the graph's one output exists), each a new array; ``run_options`` is
        accepted for signature parity with onnxruntime and ignored."""
        if list(output_names) != [self._output]:
            raise ValueError(f"the backbone graph has one output, {self._output!r}; asked for {output_names}")
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        # inputs copied into the request (share_inputs=True would leave the reused request holding the
        # caller's arrays after they are freed: a crash at the next call)
        result = request.infer({name: feed[name] for name in self._inputs})
        return [np.array(result[0], dtype=np.float32)]  # a copy: the request reuses its output buffer


def fold_constant_weights(core: Any, model: Any) -> int:
    """Replace each MatMul weight computed from constants alone (the folder's 8-bit levels behind
    ``DequantizeLinear``) by the fp32 constant it computes, evaluated once in fp32: left as it is, OpenVINO
    would dequantize them at every call. Returns how many were folded."""
    import openvino as ov
    import openvino.opset13 as ops

    targets = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        source = op.input_value(1)
        if source.get_node().get_type_name() != "Constant" and _constant_only(source.get_node()):
            targets.append((op, source))
    if not targets:
        return 0
    weights = ov.Model([ops.result(s) for _, s in targets], [], "weights")
    request = core.compile_model(weights, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    values = request.infer({})
    for (op, _), w in zip(targets, values.values()):
        op.input(1).replace_source_output(ops.constant(np.ascontiguousarray(w, dtype=np.float32)).output(0))
    model.validate_nodes_and_infer_types()
    return len(targets)


def _constant_only(node: Any) -> bool:
    """Whether ``node``'s value depends on no graph input."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n.get_type_name() == "Parameter":
            return False
        key = n.get_name()  # unique within the model
        if key in seen:
            continue
        seen.add(key)
        stack += [n.input_value(i).get_node() for i in range(n.get_input_size())]
    return True


def default_cache_dir() -> Path:
    """Where compiled models are kept by default: ``$MOERM_LITE_CACHE/openvino``, else
    ``$XDG_CACHE_HOME/moerm-lite/openvino``, else ``~/.cache/moerm-lite/openvino``."""
    if os.environ.get("MOERM_LITE_CACHE"):
        return Path(os.environ["MOERM_LITE_CACHE"]) / "openvino"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moerm-lite" / "openvino"


def cache_key(core: Any, graph_sha256: str, config: dict[str, Any]) -> str:
    """The name of a compiled model's cache file: a hash of what the compiled model depends on."""
    import openvino as ov

    cpu = [str(core.get_property("CPU", p)) for p in ("FULL_DEVICE_NAME", "OPTIMIZATION_CAPABILITIES")]
    what = [graph_sha256, ov.get_version(), cpu, sorted((k, str(v)) for k, v in config.items())]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]


def import_cached(core: Any, blob: Path, config: dict[str, Any], inputs: list[str], output: str
                  ) -> OpenVinoBackbone | None:
    """The compiled model cached in ``blob`` (mapped, not read: its weights stay in the file's pages), or
    None where there is none, it cannot be imported, or it embeds the probe to other numbers than the
    ones recorded beside it when it was compiled."""
    import openvino as ov

    record = blob.with_suffix(".json")
    if not (blob.is_file() and record.is_file()):
        return None
    try:
        want = np.array(json.loads(record.read_text(encoding="utf-8"))["probe"], dtype=np.float32)
        mapped = np.memmap(blob, dtype=np.uint8, mode="c")  # copy-on-write: OpenVINO wants a writable array
        compiled = core.import_model(ov.Tensor(mapped, shared_memory=True), "CPU", config)
        check_graph_io(blob, {p.get_any_name() for p in compiled.inputs},
                       {name for o in compiled.outputs for name in o.get_names()}, inputs, [output])
        backbone = OpenVinoBackbone(compiled, inputs, output, mapped)
        got = backbone.probe()
    except Exception:  # a stale, foreign or damaged file: compiled again by the caller
        return None
    return backbone if got.shape == want.shape and np.array_equal(got, want) else None


def store_cached(compiled: Any, backbone: OpenVinoBackbone, blob: Path) -> None:
    """Write ``compiled`` to ``blob``, then ``backbone``'s (the same model's) probe embedding beside it (each
    atomically; a reader needs both). A cache that cannot be written is a warning: the model is loaded all
    the same."""
    import io

    try:
        stream = io.BytesIO()
        compiled.export_model(stream)
        atomic_write_text(blob, stream.getbuffer())  # no copy of the 56 MB
        atomic_write_text(blob.with_suffix(".json"), json.dumps({"probe": backbone.probe().tolist()}))
    except Exception as e:  # a read-only or full disk, or an engine that cannot export
        warnings.warn(f"moerm-lite: cannot cache the compiled OpenVINO model in {blob.parent}: "
                      f"{str(e)[:200]} (it is compiled again at each load; compile_cache=False skips it)",
                      stacklevel=3)


def open_openvino_backbone(path: Path, threads: int, inputs: list[str], output: str, graph_sha256: str,
                           cache_dir: Path | None = None) -> OpenVinoBackbone:
    """The folder's backbone graph compiled by OpenVINO for the CPU with ``threads`` threads; its inputs and
    output checked against config.json (``ModelFolderError`` naming the file). ``cache_dir``: where the
    compiled model is kept between loads (``graph_sha256``, the file's sha256 from the manifest, names it);
    None compiles it at every load."""
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    core = ov.Core()
    # one stream per thread, each single-threaded: texts run side by side (run_many); on 2 cores the
    # replies of a rank() call took 60 ms this way against 65 ms with one stream of 2 threads
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": threads, "PERFORMANCE_HINT": "THROUGHPUT"}
    blob = None
    try:
        if cache_dir is not None:
            blob = Path(cache_dir) / f"{cache_key(core, graph_sha256, config)}.blob"
            cached = import_cached(core, blob, config, inputs, output)
            if cached is not None:
                return cached
        model = core.read_model(str(path))
        check_graph_io(path, {p.get_any_name() for p in model.inputs},
                       {name for o in model.outputs for name in o.get_names()}, inputs, [output])
        fold_constant_weights(core, model)
        compiled = core.compile_model(model, "CPU", config)
    except ModelFolderError:
        raise
    except Exception as e:  # OpenVINO raises its own exception types
        raise ModelFolderError(f"OpenVINO cannot load {path}: {str(e)[:300]}") from e
    del model
    backbone = OpenVinoBackbone(compiled, inputs, output)
    if blob is not None:
        store_cached(compiled, backbone, blob)
    return backbone
