"""Model-folder checks: manifest, schema version, missing and tampered files."""

import json
import shutil

import numpy as np
import pytest

from moerm_lite import ModelFolderError, RewardModel
from moerm_lite.folder import ModelConfig, write_manifest


@pytest.fixture
def copy(tiny_folder, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_folder, dst)
    return dst


def rewrite_manifest(folder):
    write_manifest(folder)


def write_config(folder, cfg):
    (folder / "config.json").write_text(json.dumps(cfg))
    rewrite_manifest(folder)


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


def test_backbone_that_is_not_onnx(copy):
    """The backbone session is built while the files are checked: a garbled backbone is reported by its
    sha256 check, not by the onnxruntime error its build ran into; with a matching manifest, by name."""
    path = copy / "onnx" / "backbone_int8.onnx"
    path.write_bytes(b"\x00 not a graph " * (path.stat().st_size // 14) + b"\x00" * (path.stat().st_size % 14))
    with pytest.raises(ModelFolderError, match="backbone_int8.onnx fails its sha256 check"):
        RewardModel.load(copy)
    rewrite_manifest(copy)
    with pytest.raises(ModelFolderError, match="onnxruntime cannot load .*backbone_int8.onnx"):
        RewardModel.load(copy)


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


def test_schema_2_folders_still_load(copy):
    """Version 3 only added a graph flag (dequantize_at_load, default off): version-2 folders load as before."""
    cfg = json.loads((copy / "config.json").read_text())
    before = RewardModel.load(copy).score("q", ["a", "bb"])
    cfg["schema_version"] = 2
    for g in cfg["graphs"].values():
        g.pop("dequantize_at_load", None)
    write_config(copy, cfg)
    m = RewardModel.load(copy)
    assert not any(g.dequantize_at_load for g in m.config.graphs.values())
    np.testing.assert_array_equal(m.score("q", ["a", "bb"]), before)


def test_recommended_residual_strength_is_read_with_its_default(copy):
    """A config without the field (the folders before it, and any that keep the default) recommends 30; one
    with it, its own value; the default is not written, so a rebuilt folder's config stays byte-identical."""
    cfg = json.loads((copy / "config.json").read_text())
    assert "recommended_residual_strength" not in cfg  # the default, not written
    assert ModelConfig.from_dict(cfg).recommended_residual_strength == 30.0
    cfg["recommended_residual_strength"] = 12.5
    write_config(copy, cfg)
    loaded = RewardModel.load(copy).config
    assert loaded.recommended_residual_strength == 12.5
    assert loaded.to_dict()["recommended_residual_strength"] == 12.5
    cfg["recommended_residual_strength"] = "evidence"  # a strength chosen per user (a build's recommendation)
    write_config(copy, cfg)
    m = RewardModel.load(copy)
    assert m.config.recommended_residual_strength == "evidence"
    assert m.config.to_dict()["recommended_residual_strength"] == "evidence"
    comps = [{"prompt": "Name a fruit.", "chosen": c, "rejected": r}
             for c, r in (("An apple.", "No."), ("A ripe pear.", "Whatever."))]
    assert m.fit_user(comps).residual_strength == "evidence"


def test_recommended_residual_prior_is_read_checked_and_fit_users_default(copy):
    """A config without the field recommends no prior (every block of the pair features alike); one with it,
    its scales per block, which fit_user uses unless told otherwise; an unknown block or a bad scale is refused
    naming the field."""
    cfg = json.loads((copy / "config.json").read_text())
    assert "recommended_residual_prior" not in cfg
    assert ModelConfig.from_dict(cfg).recommended_residual_prior is None
    cfg["recommended_residual_prior"] = {"relevance": 0.1, "statistics": 3}
    write_config(copy, cfg)
    m = RewardModel.load(copy)
    assert m.config.to_dict()["recommended_residual_prior"] == {"relevance": 0.1, "statistics": 3.0}
    comps = [{"prompt": "Name a fruit.", "chosen": c, "rejected": r}
             for c, r in (("An apple.", "No."), ("A ripe pear.", "Whatever."))]
    H = m.config.hidden_size
    assert m.fit_user(comps).residual_prior == (("reply", H, 1.0), ("relevance", H, 0.1), ("statistics", 13, 3.0))
    assert m.fit_user(comps, residual_prior=None).residual_prior is None
    for bad, match in (({"tone": 2.0}, "names blocks among"), ({"statistics": -1}, "positive finite")):
        cfg["recommended_residual_prior"] = bad
        with pytest.raises(ModelFolderError, match=f"recommended_residual_prior: .*{match}"):
            ModelConfig.from_dict(cfg)


def test_graph_flags_round_trip(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["graphs"]["int8"]["dequantize_at_load"] = True
    c = ModelConfig.from_dict(cfg)
    assert c.graphs["int8"].dequantize_at_load and not c.graphs["fp32"].dequantize_at_load
    assert ModelConfig.from_dict(c.to_dict()) == c
    assert "dequantize_at_load" not in c.to_dict()["graphs"]["fp32"]  # written only where it is on


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(w0=c["w0"][:-1]), "n_experts"),
    (lambda c: c.update(top_k=c["n_experts"] + 1), "top_k"),
    (lambda c: c.pop("io"), "io"),
    (lambda c: c["graphs"]["int8"].update(head="../../etc/passwd"), "outside"),
    (lambda c: c["io"]["head"].update(outputs=["idx", "gates", "rewards"]), "expects"),
    (lambda c: c["graphs"]["int8"].update(head="onnx/backbone_int8.onnx"), "expects"),
    (lambda c: c.update(recommended_residual_strength=0), "recommended_residual_strength"),
    (lambda c: c.update(recommended_residual_strength=float("nan")), "recommended_residual_strength"),
    (lambda c: c.update(recommended_residual_strength="sometimes"), "recommended_residual_strength"),
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


@pytest.mark.parametrize("bad,match", [([[1.0, 0.0]], "symmetric"), ("asym", "symmetric"), ("neg", "positive definite"),
                                       ("nan", "symmetric")])
def test_prior_precision_is_checked(copy, bad, match):
    cfg = json.loads((copy / "config.json").read_text())
    K = cfg["n_experts"]
    P = np.eye(K)
    if bad == "asym":
        P[0, 1] = 0.5
    elif bad == "neg":
        P[0, 0] = -1.0
    elif bad == "nan":
        P[0, 0] = np.nan
    cfg["prior_precision"] = bad if isinstance(bad, list) else P.tolist()
    write_config(copy, cfg)
    with pytest.raises(ModelFolderError, match=match):
        RewardModel.load(copy)


def test_model_fits_users_with_its_prior_precision(copy):
    from moerm_lite import fit_map

    cfg = json.loads((copy / "config.json").read_text())
    K = cfg["n_experts"]
    A = np.random.default_rng(0).normal(size=(K, K))
    P = A @ A.T + np.eye(K)
    cfg["prior_precision"] = P.tolist()
    write_config(copy, cfg)
    m = RewardModel.load(copy, precision="fp32", threads=1)
    comps = [{"prompt": "why", "chosen": "good kind", "rejected": "rude bad"},
             {"prompt": "", "chosen": "thanks", "rejected": "no"}]
    u = m.fit_user(comps)
    want, _ = fit_map(m.comparison_features(comps), m.w0, cfg["default_prior_strength"], P)
    np.testing.assert_allclose(u.weights_, want, atol=1e-6)
    np.testing.assert_allclose(u.prior_precision, P)
    q = m.next_comparison("why", ["good kind", "rude bad", "thanks"])  # a new user: the prior (lambda P)^-1
    a, b = q["responses"]
    d = m.comparison_features([{"prompt": "why", "chosen": a, "rejected": b}])[0]
    lam = cfg["default_prior_strength"]
    assert q["variance"] == pytest.approx(d @ np.linalg.inv(lam * P) @ d, rel=1e-6)


def test_atomic_write_keeps_a_readable_mode(tmp_path):
    """Model files and profiles stay readable by others (0644), and an existing file keeps its mode."""
    import stat

    from moerm_lite.folder import atomic_write_text

    new = tmp_path / "new.json"
    atomic_write_text(new, "{}")
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    old = tmp_path / "old.json"
    old.write_text("x")
    old.chmod(0o640)
    atomic_write_text(old, "y")
    assert stat.S_IMODE(old.stat().st_mode) == 0o640 and old.read_text() == "y"


def test_config_round_trips_through_its_one_definition(tiny_folder):
    """ModelConfig reads and writes config.json: the build side writes with to_dict, nothing else."""
    d = json.loads((tiny_folder / "config.json").read_text())
    cfg = ModelConfig.from_dict(d)
    assert cfg.to_dict() == d  # what the build side wrote is exactly the runtime's layout
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
