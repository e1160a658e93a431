"""The model folder: the contract between ``moerm_build/`` and the runtime.

A model folder holds ``config.json`` (schema below), ``tokenizer.json``,
``onnx/*.onnx`` (one backbone graph and one expert-head graph per precision),
``manifest.json`` (sha256 and size of every other file) and a ``README.md``
model card. Loading reads JSON and ONNX only: no pickle, no code execution.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .features import DEFAULT_LAYOUT, LAYOUTS, block_prior, feature_blocks
from .files import atomic_write_text
from .personalize import PER_USER
from .request_gate import RequestGate

RECOMMENDED_RESIDUAL_STRENGTH = 30.0  # a folder's config without the field recommends this (docs/decisions/residual.md)

SCHEMA_VERSION = 4  # 2: prompt and response embedded separately, pair features, shared experts;
#                    3: a graph may ask for its quantized weights to be dequantized at load (GraphFiles);
#                    4: a request gate (request_gate.py). A folder without one is written as 3, which older
#                    readers score alike; one with it as 4, which they refuse rather than score without it
READABLE_SCHEMA_VERSIONS = (2, 3, 4)
MANIFEST_SCHEMA_VERSION = 3  # manifest.json's own format, the same since schema 3
MANIFEST = "manifest.json"
CONFIG = "config.json"


class ModelFolderError(ValueError):
    """A model folder is missing a file, fails its manifest or has a bad config."""


@dataclass(frozen=True)
class GraphFiles:
    """The two graphs of one precision, as paths relative to the model folder."""

    backbone: str
    head: str
    per_sequence: bool = False  # run the backbone one sequence at a time (dynamic-int8 graphs quantize
    #                             activations per call, so batching would make scores batch-dependent)
    dequantize_at_load: bool = False  # the backbone stores 8-bit weights behind DequantizeLinear nodes on
    #   constants: onnxruntime folds them to fp32 once at load and computes in fp32, instead of fusing them
    #   with quantized activations (which would change the scores); see moerm_lite.sessions.cpu_session


@dataclass(frozen=True)
class ModelConfig:
    """Parsed ``config.json``. Field names follow the paper (K = ``n_experts``)."""

    model_id: str
    n_experts: int
    top_k: int
    expert_names: list[str]
    w0: list[float]  # population user weights, (K,)
    max_length: int  # tokens per text (prompt or response), truncation beyond it
    hidden_size: int  # H, the backbone's embedding size
    graphs: dict[str, GraphFiles]  # precision -> graph files
    pooling: str = "mean"
    backbone_name: str = ""  # where the backbone came from (documentation only)
    feature_layout: str = DEFAULT_LAYOUT  # config.json's "features": how the head's input is built (features.py)
    n_shared: int = 0  # the last n_shared experts are always active (gate 1); the router picks top_k of the rest
    default_prior_strength: float = 1.0  # lambda of the MAP user fit
    # the residual fit_user uses by default and the card measures (docs/decisions/residual.md): a strength,
    # or one chosen per user ("evidence", "auto": moerm_lite.personalize.PER_USER)
    recommended_residual_strength: float | str = RECOMMENDED_RESIDUAL_STRENGTH
    # the residual's prior scale per block of the pair features (features.BLOCKS; None: all 1), fit_user's default
    recommended_residual_prior: dict[str, float] | None = None
    prior_precision: list[list[float]] | None = None  # P (K, K): user prior N(w0, (lambda P)^-1); None = I
    request_gate: RequestGate | None = None  # experts switched off for benign requests (request_gate.py)
    max_chars: int = 100_000  # longer texts are rejected, not silently cut
    backbone_inputs: list[str] = field(
        default_factory=lambda: ["input_ids", "attention_mask", "token_type_ids"]
    )
    backbone_output: str = "embedding"
    head_input: str = "features"
    head_outputs: list[str] = field(default_factory=lambda: ["expert_index", "gates", "rewards"])
    extra: dict[str, Any] = field(default_factory=dict)  # everything else, kept verbatim

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Validate a parsed ``config.json`` and build the config."""
        if not isinstance(d, dict):
            raise ModelFolderError(f"config.json must hold a JSON object, got {type(d).__name__}")
        version = d.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ModelFolderError(
                f"config.json has schema_version {version!r}; this moerm-lite reads schema_version "
                f"{' or '.join(map(str, READABLE_SCHEMA_VERSIONS))}. Re-export the model or upgrade moerm-lite."
            )
        try:
            backbone = d["backbone"]
            io = d["io"]
            graphs = {
                prec: GraphFiles(backbone=g["backbone"], head=g["head"],
                                 per_sequence=bool(g.get("per_sequence", False)),
                                 dequantize_at_load=bool(g.get("dequantize_at_load", False)))
                for prec, g in d["graphs"].items()
            }
            cfg = cls(
                model_id=str(d["model_id"]),
                n_experts=int(d["n_experts"]),
                top_k=int(d["top_k"]),
                expert_names=[str(n) for n in d["expert_names"]],
                w0=[float(x) for x in d["w0"]],
                max_length=int(backbone["max_length"]),
                hidden_size=int(backbone["hidden_size"]),
                pooling=str(backbone.get("pooling", "mean")),
                backbone_name=str(backbone.get("name", "")),
                feature_layout=str(d["features"]),
                n_shared=int(d.get("n_shared", 0)),
                graphs=graphs,
                default_prior_strength=float(d.get("default_prior_strength", 1.0)),
                recommended_residual_strength=residual_setting(d.get("recommended_residual_strength",
                                                                     RECOMMENDED_RESIDUAL_STRENGTH)),
                recommended_residual_prior=(
                    None if d.get("recommended_residual_prior") is None
                    else {str(k): float(v) for k, v in d["recommended_residual_prior"].items()}),
                prior_precision=(None if d.get("prior_precision") is None
                                 else [[float(x) for x in row] for row in d["prior_precision"]]),
                max_chars=int(d.get("max_chars", 100_000)),
                request_gate=(None if d.get("request_gate") is None else
                              RequestGate.from_dict(d["request_gate"], int(d["n_experts"]),
                                                    int(backbone["hidden_size"]))),
                backbone_inputs=list(io["backbone"]["inputs"]),
                backbone_output=str(io["backbone"]["output"]),
                head_input=str(io["head"]["input"]),
                head_outputs=list(io["head"]["outputs"]),
                extra={k: v for k, v in d.items() if k not in _KNOWN_KEYS},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelFolderError(f"config.json is missing or has a malformed field: {e!r}") from e
        cfg._check()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` object of this config (``from_dict(c.to_dict()) == c``); ``extra`` keys
        (gating, score semantics, reference corpus, training record, ...) are kept verbatim."""
        return {
            "schema_version": SCHEMA_VERSION if self.request_gate is not None else 3,
            "model_id": self.model_id,
            "backbone": {"name": self.backbone_name, "max_length": self.max_length, "pooling": self.pooling,
                         "hidden_size": self.hidden_size},
            "features": self.feature_layout,
            "n_experts": self.n_experts,
            "n_shared": self.n_shared,
            "top_k": self.top_k,
            "expert_names": list(self.expert_names),
            "w0": [float(x) for x in self.w0],
            "default_prior_strength": self.default_prior_strength,
            # not written at its default: a folder from before the field is written again byte for byte
            **({"recommended_residual_strength": self.recommended_residual_strength}
               if self.recommended_residual_strength != RECOMMENDED_RESIDUAL_STRENGTH else {}),
            **({"recommended_residual_prior": dict(self.recommended_residual_prior)}
               if self.recommended_residual_prior is not None else {}),
            "prior_precision": self.prior_precision,
            **({"request_gate": self.request_gate.to_dict()} if self.request_gate is not None else {}),
            "max_chars": self.max_chars,
            "graphs": {p: {"backbone": g.backbone, "head": g.head, "per_sequence": g.per_sequence,
                           **({"dequantize_at_load": True} if g.dequantize_at_load else {})}
                       for p, g in self.graphs.items()},
            "io": {"backbone": {"inputs": list(self.backbone_inputs), "output": self.backbone_output},
                   "head": {"input": self.head_input, "outputs": list(self.head_outputs)}},
            **self.extra,
        }

    def _check(self) -> None:
        K = self.n_experts
        if self.max_length < 2 or self.hidden_size < 1 or self.max_chars < 1:
            raise ModelFolderError(f"config.json: need max_length >= 2, hidden_size >= 1, max_chars >= 1; got "
                                   f"{self.max_length}, {self.hidden_size}, {self.max_chars}")
        for name in ("default_prior_strength", "recommended_residual_strength"):
            value = getattr(self, name)
            if isinstance(value, str) and name == "recommended_residual_strength" and value in PER_USER:
                continue
            if isinstance(value, (str, bool)) or not (math.isfinite(value) and value > 0):
                raise ModelFolderError(f"config.json: {name} must be a positive number"
                                       + (f" or one of {sorted(PER_USER)}" if name.startswith("recommended") else "")
                                       + f", got {value!r}")
        if self.recommended_residual_prior is not None:
            try:
                block_prior(self.recommended_residual_prior, feature_blocks(self.hidden_size, self.feature_layout))
            except ValueError as e:
                raise ModelFolderError(f"config.json: recommended_residual_prior: {e}") from None
        if not 0 <= self.n_shared < K or not 1 <= self.top_k <= K - self.n_shared:
            raise ModelFolderError(f"config.json: need 0 <= n_shared < n_experts and 1 <= top_k <= "
                                   f"n_experts - n_shared, got top_k={self.top_k}, n_shared={self.n_shared}, "
                                   f"n_experts={K}")
        if len(self.expert_names) != K or len(self.w0) != K:
            raise ModelFolderError(
                f"config.json: expert_names ({len(self.expert_names)}) and w0 ({len(self.w0)}) "
                f"must both have n_experts = {K} entries"
            )
        if not all(math.isfinite(x) for x in self.w0):
            raise ModelFolderError("config.json: w0 contains NaN or inf")
        if self.pooling != "mean" or self.feature_layout not in LAYOUTS:
            raise ModelFolderError(
                f"config.json: unsupported pooling/features {self.pooling!r}/{self.feature_layout!r}; this "
                f"moerm-lite computes mean pooling and one of {sorted(LAYOUTS)}")
        if not self.graphs:
            raise ModelFolderError("config.json: 'graphs' lists no precision")
        if self.prior_precision is not None:
            P = np.asarray(self.prior_precision, dtype=np.float64)
            ok = P.shape == (K, K) and np.isfinite(P).all()
            if not (ok and np.allclose(P, P.T, atol=1e-8 * np.abs(P).max())):
                raise ModelFolderError(
                    f"config.json: prior_precision must be a finite symmetric {K}x{K} matrix")
            if np.linalg.eigvalsh(P).min() <= 0:
                raise ModelFolderError("config.json: prior_precision is not positive definite")


def residual_setting(value: Any) -> float | str:
    """config.json's ``recommended_residual_strength`` as read: a per-user choice's name kept, else a float."""
    if isinstance(value, str) and value in PER_USER:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"recommended_residual_strength must be a positive number or one of {sorted(PER_USER)}, "
                         f"got {value!r}") from None


_KNOWN_KEYS = {
    "schema_version", "model_id", "n_experts", "top_k", "expert_names", "w0", "backbone",
    "graphs", "default_prior_strength", "prior_precision", "max_chars", "io", "features", "n_shared",
    "recommended_residual_strength", "recommended_residual_prior", "request_gate",
}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


DESCRIBING = frozenset({"README.md", "expert_cards.json", "reference.jsonl"})  # describe the model, score nothing


def model_hash(manifest: dict[str, dict[str, Any]]) -> str:
    """Which exact model a folder is (16 hex digits): the sha256 of the manifest's entries for every file
    that takes part in scoring, so profiles and catalogs fitted for it survive an edit of its card, expert
    cards or reference corpus (``DESCRIBING``), and nothing else."""
    scoring = {name: e.get("sha256") for name, e in sorted(manifest.items()) if name not in DESCRIBING}
    return hashlib.sha256(json.dumps(scoring, sort_keys=True).encode()).hexdigest()[:16]


def build_manifest(folder: Path) -> dict[str, Any]:
    """Manifest of every file under ``folder`` except the manifest itself."""
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST:
            files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return {"schema_version": MANIFEST_SCHEMA_VERSION, "files": files}


def write_manifest(folder: Path) -> Path:
    """(Re)write ``manifest.json`` for every file now in ``folder``, atomically."""
    path = Path(folder) / MANIFEST
    atomic_write_text(path, json.dumps(build_manifest(Path(folder)), indent=1) + "\n")
    return path


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file of the model folder; ``ModelFolderError`` naming it if it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise ModelFolderError(f"{path} is not valid {what} JSON: {str(e)[:200]}") from None


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The ``files`` table of ``manifest.json``; a clear error if it is missing or malformed."""
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"model folder {folder} has no {MANIFEST}")
    d = read_json(path, "manifest")
    files = d.get("files") if isinstance(d, dict) else None
    if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
        raise ModelFolderError(f"{path} is not a valid manifest: it needs a 'files' object of "
                               "{name: {sha256, size}}")
    for name in files:
        resolve_inside(folder, name, MANIFEST)
    return files


def verify_graph_dirs(folder: Path, manifest: dict[str, dict[str, Any]], graphs: GraphFiles,
                      other_graphs: list[str]) -> None:
    """Check a precision's two graphs and every other file in their folders against the manifest.

    An ONNX graph may keep its weights in external data files next to it, which onnxruntime reads
    unchecked; so any file there must be listed and intact (``other_graphs``, the graph files of
    other precisions, are skipped: a broken fp32 graph does not stop the int8 one from loading).
    """
    verify_files(folder, manifest, [graphs.backbone, graphs.head])
    for d in sorted({Path(graphs.backbone).parent, Path(graphs.head).parent}):
        for p in sorted((folder / d).iterdir()):
            rel = p.relative_to(folder).as_posix()
            if rel not in manifest:
                raise ModelFolderError(f"{p} is not listed in {folder / MANIFEST}: a file next to the graphs "
                                       "(such as ONNX external data) must be in the manifest")
            if rel not in other_graphs and rel not in (graphs.backbone, graphs.head):
                verify_files(folder, manifest, [rel])


def verify_files(folder: Path, manifest: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Check size and sha256 of ``names`` against the manifest; name the first bad file.

    A file may be a symlink (a Hugging Face cache keeps files as links into ``blobs/``): what counts
    is that the bytes it points to match the manifest.
    """
    for name in names:
        entry = manifest.get(name)
        if entry is None:
            raise ModelFolderError(f"{name} is not listed in {folder / MANIFEST}")
        path = resolve_inside(folder, name, MANIFEST)
        if not path.is_file():
            raise FileNotFoundError(f"model file missing: {path}")
        if path.stat().st_size != entry.get("size"):
            raise ModelFolderError(
                f"model file {path} has size {path.stat().st_size}, manifest says {entry.get('size')}: "
                "the file is truncated or was modified"
            )
        if sha256_file(path) != entry.get("sha256"):
            raise ModelFolderError(f"model file {path} fails its sha256 check: the file is corrupted or was modified")


def resolve_inside(folder: Path, rel: Any, where: str = CONFIG) -> Path:
    """``folder / rel`` for a relative path that stays inside the folder by its name (no ``..``,
    not absolute). The file itself may be a symlink: its bytes are checked against the manifest."""
    parts = Path(rel).parts if isinstance(rel, str) and rel else ()
    if not parts or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise ModelFolderError(f"{where} names a path outside the model folder: {rel!r}")
    return folder / rel


def check_graph_io(path: Path, have_in: set[str], have_out: set[str], inputs: list[str],
                   outputs: list[str]) -> None:
    """A graph's input and output names (``have_in``, ``have_out``, as the engine that loaded ``path`` reads
    them) against what config.json says: exactly ``inputs``, and at least ``outputs``."""
    if set(inputs) != have_in or not set(outputs) <= have_out:
        raise ModelFolderError(
            f"{path} has inputs {sorted(have_in)} and outputs {sorted(have_out)}; config.json "
            f"expects inputs {inputs} and outputs {outputs}")
