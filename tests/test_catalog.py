"""Encoded catalogs: ranking without the backbone equals RewardModel.rank on the same texts."""

import json

import numpy as np
import pytest

from moerm_lite import Catalog, RewardModel, UserProfile
from moerm_lite.cli import main
from tests.tiny import WORDS


def texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, 9))) for _ in range(n)]


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_catalog_ranks_like_rank(tiny_folder, tmp_path, precision):
    m = RewardModel.load(tiny_folder, threads=1, precision=precision)
    cands = texts(300) + ["", "the cat is good", "the cat is good"]  # an empty reply and an exact tie
    user = m.fit_user([{"prompt": "why", "chosen": a, "rejected": b} for a, b in zip(cands[:8], cands[8:16])],
                      user_id="u")
    cat = m.encode_catalog([("why", c) for c in cands], ids=[f"c{i}" for i in range(len(cands))])
    path = cat.save(tmp_path / "cat.npz")
    loaded = Catalog.load(path)
    for who in (None, user, np.linspace(-1, 1, m.n_experts)):
        want = m.rank("why", cands, user=who)
        for c in (cat, loaded):
            got = c.rank(who)
            assert [g["corpus_id"] for g in got] == [w["corpus_id"] for w in want]
            np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], rtol=0, atol=1e-12)
            top = c.rank(who, top_k=5)
            assert [t["corpus_id"] for t in top] == [w["corpus_id"] for w in want[:5]]
            assert top[0]["id"] == f"c{want[0]['corpus_id']}"


def test_catalog_refuses_a_profile_of_another_model(tiny_folder):
    m = RewardModel.load(tiny_folder, threads=1)
    cat = m.encode_catalog([("q", "a"), ("q", "b")])
    other = UserProfile(model_id="x", model_hash="f" * 16).fit(np.zeros((0, m.n_experts)), m.w0)
    with pytest.raises(ValueError, match="was fitted for model .x."):
        cat.rank(other)
    with pytest.raises(ValueError, match="top_k"):
        cat.rank(None, top_k=0)


def test_bad_catalog_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        Catalog.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable catalog"):
        Catalog.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", meta=np.array("{}"))
    with pytest.raises(ValueError, match="not a moerm-lite catalog"):
        Catalog.load(tmp_path / "other.npz")


def test_cli_encode_then_rank_for_a_profile(tiny_folder, tmp_path):
    rows = [{"id": f"item-{i}", "prompt": "why", "response": t} for i, t in enumerate(texts(40, seed=1))]
    src = tmp_path / "catalog.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["encode", "--model", str(tiny_folder), "-i", str(src), "-o", str(tmp_path / "c.npz")]) == 0
    m = RewardModel.load(tiny_folder, threads=1)
    user = m.fit_user([{"prompt": "why", "chosen": rows[0]["response"], "rejected": rows[1]["response"]}] * 5)
    user.save(tmp_path / "u.json")
    import io

    out = io.StringIO()
    assert main(["rank", "--catalog", str(tmp_path / "c.npz"), "--user", str(tmp_path / "u.json"),
                 "--top-k", "3"], out=out) == 0
    got = [json.loads(x) for x in out.getvalue().splitlines()]
    want = m.rank("why", [r["response"] for r in rows], user=user, top_k=3)
    assert [g["id"] for g in got] == [rows[w["corpus_id"]]["id"] for w in want]


def test_cli_rank_catalog_refuses_input_and_aligns_its_table(tiny_folder, tmp_path, capsys):
    import io

    rows = [{"id": f"item-{i}", "prompt": "why", "response": t} for i, t in enumerate(texts(12, seed=2))]
    src = tmp_path / "catalog.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["encode", "--model", str(tiny_folder), "-i", str(src), "-o", str(tmp_path / "c.npz")]) == 0
    assert main(["rank", "--catalog", str(tmp_path / "c.npz"), "-i", str(src)]) == 2  # -i would be ignored
    err = capsys.readouterr().err
    assert "reads no -i" in err and str(src) in err
    out = io.StringIO()
    assert main(["rank", "--catalog", str(tmp_path / "c.npz"), "--format", "table"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 12 and len({line.index(".") for line in lines}) == 1  # " 9." lines up with "10."


def test_old_names_warn_and_read_the_new_ones(tiny_folder):
    """Renamed attributes (one meaning per name: ``features`` was the expert features here and the pair
    features elsewhere) still read, with a DeprecationWarning naming the new name."""
    m = RewardModel.load(tiny_folder, threads=1)
    cat = m.encode_catalog([("q", "a"), ("q", "b b")])
    user = m.fit_user([{"prompt": "q", "chosen": "a", "rejected": "b b"}], user_id="u")
    for obj, old, new in ((cat, "features", "expert_features"), (user, "features_", "expert_features_"),
                          (m, "top_k", "experts_per_input")):
        with pytest.warns(DeprecationWarning, match=new):
            value = getattr(obj, old)
        np.testing.assert_array_equal(value, getattr(obj, new))
    assert cat.expert_features.shape == (2, m.n_experts) and user.expert_features_.shape == (1, m.n_experts)
