"""Shared fixtures: a tiny model folder built once per session, without torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from moerm_lite import RewardModel
from tests.tiny import build_tiny_folder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, _ = build_tiny_folder(tmp_path_factory.mktemp("models") / "tiny")
    return folder


@pytest.fixture(scope="session")
def tiny_head(tiny_folder: Path):
    _, head = build_tiny_folder(tiny_folder.parent / "tiny_again")  # same seed: same weights
    return head


@pytest.fixture(scope="session")
def tiny_fp32(tiny_folder: Path) -> RewardModel:
    return RewardModel.load(tiny_folder, precision="fp32", threads=1)


@pytest.fixture(scope="session")
def tiny_int8(tiny_folder: Path) -> RewardModel:
    return RewardModel.load(tiny_folder, threads=1)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT encoder folder (torch and transformers; skipped without them)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.tiny import tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny_bert")
    tok = tiny_tokenizer()
    cfg = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(d)
    (d / "tokenizer.json").write_text(tok.to_str())
    return d
