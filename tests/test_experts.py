"""Expert cards from the reference corpus, and the plots."""

import json

import numpy as np
import pytest

from moerm_lite import ModelFolderError, RewardModel
from moerm_lite.cli import main
from moerm_lite.experts import attribute_matrix, correlations
from moerm_lite.head import expert_features
from tests.test_cli import run
from tests.tiny import build_tiny_folder, tiny_reference


def test_cards_agree_with_a_brute_force_reading(tiny_fp32):
    rows = tiny_reference()
    cards = tiny_fp32.describe_experts(n_texts=2, n_attributes=None)
    out = tiny_fp32.expert_outputs([(r["prompt"], r["response"]) for r in rows])
    g, r = out["gating_output"], out["rewards"]
    assert len(cards) == tiny_fp32.n_experts
    # k routed experts per row, and the shared ones always
    assert sum(c["routing_share"] for c in cards) == pytest.approx(tiny_fp32.experts_per_input + tiny_fp32.config.n_shared)
    tone = np.array([row["labels"]["tone"] for row in rows], dtype=float)
    for k, c in enumerate(cards):
        on = np.flatnonzero(g[:, k] > 0)
        assert c["routing_share"] == pytest.approx(len(on) / len(rows))
        if len(on):
            best = on[np.argmax(r[on, k])]
            assert c["highest"][0] == " ".join(rows[best]["response"].split())
        f = expert_features(g, r)[:, k]
        want = np.corrcoef(f, tone)[0, 1] if f.std() > 0 else 0.0
        assert c["correlations"]["tone"] == pytest.approx(want, abs=1e-9)
        left = np.array([row["source"] == "left" for row in rows])
        assert c["routing_share_by_source"]["left"] == pytest.approx((g[left, k] > 0).mean())


def test_attribute_matrix_and_correlation():
    rows = [{"response": "a", "source": "s1", "labels": {"x": 1}}, {"response": "b", "source": "s2", "labels": {"x": -1}},
            {"response": "c", "source": "s1"}]
    names, Y = attribute_matrix(rows)
    assert names == ["x", "source:s1", "source:s2"]
    np.testing.assert_array_equal(Y, [[1, 1, 0], [-1, 0, 1], [0, 1, 0]])
    F = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 0.0]])  # a constant column correlates 0, not NaN
    C = correlations(F, Y)
    assert C[0, 0] == pytest.approx(1.0) and (C[1] == 0).all()


def test_no_or_broken_reference_is_named(tmp_path):
    folder, _ = build_tiny_folder(tmp_path / "plain", reference=False)
    with pytest.raises(ValueError, match="no reference corpus"):
        RewardModel.load(folder, threads=1).describe_experts()
    folder, _ = build_tiny_folder(tmp_path / "with")
    with open(folder / "reference.jsonl", "a") as f:
        f.write('{"response": "sneaked in"}\n')
    with pytest.raises(ModelFolderError, match="reference.jsonl"):
        RewardModel.load(folder, threads=1).describe_experts()


def test_cli_experts(tiny_folder):
    code, out = run(["experts", "--model", str(tiny_folder), "--threads", "1", "--format", "jsonl"])
    cards = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [c["expert"] for c in cards] == list(range(6))
    for c in cards:  # highest and lowest never show the same text twice
        assert not set(c["highest"]) & set(c["lowest"])
    code, out = run(["experts", "--model", str(tiny_folder), "--threads", "1"])
    assert code == 0 and "routed" in out


@pytest.mark.parametrize("kind", ["experts", "routing", "user"])
def test_plots_are_valid_pngs(tiny_folder, tmp_path, kind):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    m = ["--model", str(tiny_folder), "--threads", "1"]
    comps = tmp_path / "c.jsonl"
    comps.write_text(json.dumps({"prompt": "why", "chosen": "good kind", "rejected": "rude bad"}) + "\n")
    assert main(["fit", str(comps), "-o", str(tmp_path / "u.json"), "--user-id", "ann", *m]) == 0
    out = tmp_path / f"{kind}.png"
    assert main(["plot", kind, "-o", str(out), "--user", str(tmp_path / "u.json"), *m]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # something was drawn


def test_plot_user_needs_a_profile(tiny_folder, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plot", "user", "-o", str(tmp_path / "x.png"), "--model", str(tiny_folder)]) == 2
    assert "--user" in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(tiny_folder, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    assert main(["plot", "routing", "-o", str(tmp_path / "x.png"), "--model", str(tiny_folder)]) == 2
    assert "moerm-lite[plot]" in capsys.readouterr().err


def test_stored_cards_are_read_not_recomputed(tiny_folder, tmp_path):
    """Cards stored at export (expert_cards.json) equal a fresh computation, and are what describe_experts reads."""
    import shutil

    from moerm_build.release.package import add_expert_cards

    folder = tmp_path / "with_cards"
    shutil.copytree(tiny_folder, folder)
    add_expert_cards(folder)
    m = RewardModel.load(folder, threads=1)
    assert m.config.extra["expert_cards"] == "expert_cards.json"
    assert m.describe_experts() == m.compute_expert_cards()
    one, fresh = m.describe_experts(n_texts=1, n_attributes=None), m.compute_expert_cards(n_texts=1, n_attributes=None)
    assert [c["highest"] for c in one] == [c["highest"] for c in fresh]
    assert [c["correlations"] for c in one] == [c["correlations"] for c in fresh]
    m.expert_outputs = None  # describe_experts must not score anything now
    cards = m.describe_experts()
    assert all(isinstance(k, str) and type(k) is str for c in cards for k in c["routing_share_by_source"])


def test_rename_experts_changes_names_only(tiny_folder, tmp_path):
    """moerm_build.release.package.rename_experts: new names in config.json and the stored cards, a folder that loads
    (manifest refreshed) and scores exactly as before; a wrong count is refused."""
    import shutil

    from moerm_build.release.package import add_expert_cards, rename_experts

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_folder, folder)
    add_expert_cards(folder)
    before = RewardModel.load(folder, threads=1)
    names = [f"expert number {k}" for k in range(before.n_experts)]
    assert rename_experts(folder, names) and not rename_experts(folder, names)
    after = RewardModel.load(folder, threads=1)
    assert after.expert_names == names and [c["name"] for c in after.describe_experts()] == names
    pairs = [("why", "the cat is good"), ("", "a dog")]
    assert np.array_equal(after.score_pairs(pairs), before.score_pairs(pairs))
    with pytest.raises(ValueError, match="names for"):
        rename_experts(folder, names[:-1])
