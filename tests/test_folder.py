"""Model-folder checks: manifest, schema version, missing and tampered files."""

import json
import shutil

import pytest

from moerm_lite import ModelFolderError, RewardModel
from moerm_lite.folder import build_manifest


@pytest.fixture
def copy(tiny_folder, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_folder, dst)
    return dst


def rewrite_manifest(folder):
    (folder / "manifest.json").write_text(json.dumps(build_manifest(folder)))


def test_manifest_lists_every_file(tiny_folder):
    listed = set(json.loads((tiny_folder / "manifest.json").read_text())["files"])
    assert listed == {"config.json", "tokenizer.json", "README.md", "onnx/backbone_fp32.onnx",
                      "onnx/backbone_int8.onnx", "onnx/head_fp32.onnx", "onnx/head_int8.onnx", "reference.jsonl"}


def test_tampered_graph_is_named(copy):
    path = copy / "onnx" / "head_int8.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="head_int8.onnx.*sha256"):
        RewardModel.load(copy)
    RewardModel.load(copy, precision="fp32")  # the untouched precision still loads


def test_truncated_file_is_named(copy):
    path = copy / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFolderError, match="tokenizer.json.*size"):
        RewardModel.load(copy)


def test_missing_files(copy, tmp_path):
    (copy / "onnx" / "backbone_int8.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="backbone_int8.onnx"):
        RewardModel.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        RewardModel.load(copy)
    with pytest.raises(FileNotFoundError, match="not found"):
        RewardModel.load(tmp_path / "nowhere")


def test_unknown_schema_version(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["schema_version"] = 99
    (copy / "config.json").write_text(json.dumps(cfg))
    rewrite_manifest(copy)
    with pytest.raises(ModelFolderError, match="schema_version 99"):
        RewardModel.load(copy)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(w0=c["w0"][:-1]), "n_experts"),
    (lambda c: c.update(top_k=c["n_experts"] + 1), "top_k"),
    (lambda c: c.pop("io"), "io"),
    (lambda c: c["graphs"]["int8"].update(head="../../etc/passwd"), "outside"),
    (lambda c: c["io"]["head"].update(outputs=["idx", "gates", "rewards"]), "expects"),
    (lambda c: c["graphs"]["int8"].update(head="onnx/backbone_int8.onnx"), "expects"),
])
def test_bad_config(copy, edit, match):
    cfg = json.loads((copy / "config.json").read_text())
    edit(cfg)
    (copy / "config.json").write_text(json.dumps(cfg))
    rewrite_manifest(copy)
    with pytest.raises(ModelFolderError, match=match):
        RewardModel.load(copy)


def test_unloadable_graph_is_named(copy):
    (copy / "onnx" / "head_int8.onnx").write_bytes(b"not an onnx graph")
    rewrite_manifest(copy)  # a consistent manifest, but a broken file
    with pytest.raises(ModelFolderError, match="head_int8.onnx"):
        RewardModel.load(copy)
