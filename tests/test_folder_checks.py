"""A folder whose parts disagree fails at load with a ModelFolderError naming the disagreement,
also when its manifest was regenerated to match (a folder edited or built by hand)."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest

from moerm_lite import ModelFolderError, RewardModel
from tests.test_folder import rewrite_manifest, write_config
from tests.tiny import WORDS, tiny_tokenizer


@pytest.fixture
def copy(tiny_folder, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_folder, dst)
    return dst


def edit_config(folder, fn):
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    write_config(folder, cfg)


def drop_last_expert(cfg):
    cfg["n_experts"] -= 1
    cfg["expert_names"].pop()
    cfg["w0"].pop()


def add_expert(cfg):
    cfg["n_experts"] += 1
    cfg["expert_names"].append("extra")
    cfg["w0"].append(0.0)


@pytest.mark.parametrize("edit,match", [
    (drop_last_expert, "n_experts 5"),
    (add_expert, "n_experts 7"),
    (lambda c: c.update(top_k=1), "top_k 1"),
    (lambda c: c.update(n_shared=1), "n_shared 1"),
    (lambda c: c["backbone"].update(hidden_size=17), "hidden_size 17"),
])
def test_config_that_disagrees_with_the_graphs(copy, edit, match):
    edit_config(copy, edit)
    for precision in ("int8", "fp32"):
        with pytest.raises(ModelFolderError, match=match):
            RewardModel.load(copy, precision=precision)


def test_tokenizer_larger_than_the_backbone_vocabulary(copy):
    tok = tiny_tokenizer()
    tok.add_tokens([f"new{i}" for i in range(5)])  # ids the backbone's embedding table does not have
    (copy / "tokenizer.json").write_text(tok.to_str())
    rewrite_manifest(copy)
    with pytest.raises(ModelFolderError, match=f"ids up to {len(WORDS) + 5 + 5 - 1}"):
        RewardModel.load(copy)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"{}", b"[1, 2]", b'{"model": 3}'])
def test_corrupt_tokenizer_is_a_model_folder_error(copy, content):
    (copy / "tokenizer.json").write_bytes(content)
    rewrite_manifest(copy)
    with pytest.raises(ModelFolderError, match="tokenizer.json"):
        RewardModel.load(copy)


@pytest.mark.parametrize("text", ["[1, 2]", "null", "[" * 100_000 + "]" * 100_000, '{"schema_version": 2}',
                                  "\xff"])
def test_config_that_is_not_an_object(copy, text):
    (copy / "config.json").write_text(text, encoding="latin-1")
    rewrite_manifest(copy)
    with pytest.raises(ModelFolderError, match="config"):
        RewardModel.load(copy)


def test_manifest_that_is_not_a_table(copy):
    for text in ("[]", '{"files": [1]}', '{"files": {"config.json": 3}}', '{"files": {"../x": {}}}'):
        (copy / "manifest.json").write_text(text)
        with pytest.raises(ModelFolderError, match="manifest"):
            RewardModel.load(copy)


def test_onnx_external_data_is_checked(copy):
    """A graph whose weights live in an external data file: that file is verified like the graph."""
    path = copy / "onnx" / "head_int8.onnx"
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, location="head_int8.data", size_threshold=256)
    rewrite_manifest(copy)
    before = RewardModel.load(copy).score("why", "the cat is good")
    data = copy / "onnx" / "head_int8.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(ModelFolderError, match="head_int8.data.*sha256"):
        RewardModel.load(copy)
    data.unlink()
    (copy / "onnx" / "stray.data").write_bytes(b"x")
    rewrite_manifest(copy)
    (copy / "onnx" / "unlisted.bin").write_bytes(b"x")
    with pytest.raises(ModelFolderError, match="unlisted.bin is not listed"):
        RewardModel.load(copy)
    assert np.isfinite(before)


def test_symlinked_files_load_when_their_bytes_match(copy, tmp_path):
    """A Hugging Face cache keeps a snapshot's files as symlinks into blobs/: that layout loads."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for rel in ("config.json", "tokenizer.json", "onnx/head_int8.onnx", "onnx/backbone_int8.onnx"):
        target = blobs / rel.replace("/", "_")
        shutil.move(copy / rel, target)
        os.symlink(target, copy / rel)
    m = RewardModel.load(copy)
    assert np.isfinite(m.score("why", "the cat is good"))
    (blobs / "tokenizer.json").write_text(tiny_tokenizer().to_str() + " ")
    with pytest.raises(ModelFolderError, match="tokenizer.json"):
        RewardModel.load(copy)


@pytest.mark.parametrize("path", ["../head.onnx", "/etc/passwd", "onnx/../../x.onnx"])
def test_graph_path_outside_the_folder(copy, path):
    edit_config(copy, lambda c: c["graphs"]["int8"].update(head=path))
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        RewardModel.load(copy)


def test_model_hash_names_what_scores_not_what_describes_it(tiny_folder, tmp_path):
    """A profile survives an edit of the card (README.md), expert cards or reference corpus, not of a graph
    or the config: the hash covers exactly the files that take part in scoring."""
    from moerm_lite.folder import DESCRIBING, write_manifest

    folder = tmp_path / "m"
    shutil.copytree(tiny_folder, folder)
    before = RewardModel.load(folder, threads=1).model_hash
    (folder / "README.md").write_text("# a new card\n")
    write_manifest(folder)
    assert RewardModel.load(folder, threads=1).model_hash == before
    assert "README.md" in DESCRIBING
    cfg = json.loads((folder / "config.json").read_text())
    cfg["w0"] = [x + 1.0 for x in cfg["w0"]]  # a config that changes scores is another model
    (folder / "config.json").write_text(json.dumps(cfg))
    write_manifest(folder)
    assert RewardModel.load(folder, threads=1).model_hash != before
