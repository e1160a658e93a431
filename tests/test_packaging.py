"""The default model travels with the install: build the wheel, install it in a fresh venv, load from anywhere."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "moerm-minilm"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the checkout in which a user also built their own model under models/."""
    src = tmp_path_factory.mktemp("src") / "repo"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "runs", ".cache", "build", "dist",
                                                              "*.egg-info", "__pycache__", ".*_cache", "profiles"))
    (src / "models" / "mine" / "onnx").mkdir(parents=True)  # what `python -m moerm_build own -o models/mine` leaves
    (src / "models" / "mine" / "config.json").write_text("{}")
    (src / "models" / "mine" / "onnx" / "head.int8.onnx").write_bytes(b"not shipped")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(out), str(src)], check=True, capture_output=True, text=True, timeout=600)
    (whl,) = out.glob("moerm_lite-*.whl")
    return whl


def test_wheel_holds_the_shipped_model_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = json.loads((SHIPPED / "manifest.json").read_text())["files"]
    for rel in list(manifest) + ["manifest.json"]:
        assert f"moerm_lite/models/moerm-minilm/{rel}" in names, rel
    assert not any(n.startswith(("tests/", "bench/", "experiments/")) for n in names)
    # the build side installs with its recipes and evaluation set, for python -m moerm_build
    assert {"moerm_build/__main__.py", "moerm_build/configs/moerm-minilm.json",
            "moerm_build/data/evalsets/everyday.jsonl", "moerm_build/release/card.md"} <= names
    models = {n.split("/")[2] for n in names if n.startswith("moerm_lite/models/") and n.count("/") > 2}
    assert models == {"moerm-minilm", "examples"}  # a user's models/mine stays out of the wheel


@pytest.mark.slow
def test_fresh_venv_loads_the_default_model_from_any_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    code = ("import moerm_lite, json; from moerm_lite import RewardModel; m = RewardModel.load(threads=1); "
            "print(json.dumps({'file': moerm_lite.__file__, 'folder': str(m.folder), "
            "'scores': m.score('How do I boil an egg?', ['Boil it for eight minutes.', 'No idea.']).tolist()}))")
    env = {k: v for k, v in os.environ.items() if k not in ("MOERM_LITE_MODEL", "PYTHONPATH")}
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    res = subprocess.run([str(py), "-c", code], cwd=elsewhere, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert str(venv) in out["file"] and out["folder"].startswith(str(venv))  # the installed copy, not the checkout
    assert out["scores"][0] > out["scores"][1]
    res = subprocess.run([str(venv / "bin" / "moerm-lite"), "info"], cwd=elsewhere, capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0 and json.loads(res.stdout)["model_id"] == "moerm-minilm"


def test_missing_model_names_every_place_it_looked(tmp_path, monkeypatch):
    from moerm_lite import model

    monkeypatch.delenv("MOERM_LITE_MODEL", raising=False)
    monkeypatch.setattr(model, "default_model_candidates", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError) as e:
        model.default_model_path()
    assert str(tmp_path / "a") in str(e.value) and str(tmp_path / "b") in str(e.value)
    assert "MOERM_LITE_MODEL" in str(e.value)
