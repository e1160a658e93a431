"""`python -m moerm_build own` on a base model: the base's experts kept, one read-out of your preferences added."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moerm_lite import RewardModel
from tests.tiny import WORDS

pytest.importorskip("onnx")
ROOT = Path(__file__).resolve().parents[1]


def prefs(n: int, seed: int = 0) -> list[dict]:
    """A plain taste: replies made of kind words beat replies made of rude ones."""
    rng = np.random.default_rng(seed)
    return [{"prompt": f"{WORDS[i % 40]} {WORDS[(i * 7) % 40]} question {i}",
             "chosen": " ".join(rng.choice(["good", "great", "kind", "nice", "help"], 4)),
             "rejected": " ".join(rng.choice(["bad", "awful", "rude", "mean", "harm"], 4))} for i in range(n)]


@pytest.fixture(scope="module")
def own(tiny_folder, tmp_path_factory):
    from moerm_build.release.own import own_on_base

    tmp = tmp_path_factory.mktemp("own")
    f = tmp / "prefs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in prefs(150)))
    report = own_on_base(f, tmp / "mine", base=tiny_folder, with_quality=False)
    return report, tmp / "mine"


def test_own_adds_one_expert_and_learns_the_taste(own, tiny_folder):
    report, out = own
    base, m = RewardModel.load(tiny_folder, threads=1), RewardModel.load(out, threads=1)
    assert m.n_experts == base.n_experts + 1 and m.config.n_shared == base.config.n_shared + 1
    assert m.expert_names[:-1] == base.expert_names and m.expert_names[-1] == "your preferences"
    np.testing.assert_allclose(m.w0, [*base.w0, 1.0])
    assert report["heldout_accuracy"] >= 0.9 and report["heldout_accuracy"] >= report["heldout_accuracy_base"]
    assert report["l2"] in (0.1, 1.0, 10.0, 100.0) and report["cv_log_likelihood"]["base"] < 0
    assert any("training comparisons" in w for w in report["warnings"])  # 135 < 200: said
    q = f"{WORDS[3]} {WORDS[5]} question 999"
    assert m.score(q, "good kind help nice") > m.score(q, "rude awful harm mean")
    assert len(m.describe_experts()) == m.n_experts  # expert cards for the new list


def test_own_is_the_base_plus_the_readout_and_silent_without_a_prompt(own, tiny_folder):
    _, out = own
    for precision, atol in (("fp32", 1e-4), ("int8", 2e-2)):  # int8 keeps shared experts in fp16
        base = RewardModel.load(tiny_folder, threads=1, precision=precision)
        m = RewardModel.load(out, threads=1, precision=precision)
        texts = ["good kind help", "rude awful mean", "the cat is good"]
        np.testing.assert_allclose(m.score("", texts), base.score("", texts), atol=1e-5)  # gated off
        e = m.explain("why question", "good kind help nice")
        extra = float(e["contributions"][-1])
        assert e["score"] == pytest.approx(base.score("why question", "good kind help nice") + extra, abs=atol)


def test_own_cli_is_quiet_and_refuses_scratch_options(tiny_folder, tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in prefs(80, seed=1)))
    cmd = [sys.executable, "-m", "moerm_build", "own", str(f), "-o", str(tmp_path / "m"), "--base", str(tiny_folder)]
    res = subprocess.run(cmd + ["--set", "epochs=3"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2 and "--scratch" in res.stderr
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    default = [sys.executable, "-m", "moerm_build", "own", str(f), "--base", str(tiny_folder)]
    res = subprocess.run(default, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["folder"] == "moerm-models/prefs" and (tmp_path / "moerm-models" / "prefs").is_dir()
    assert "quality" in report and 0 <= report["quality"]["everyday_wins"] <= 1
    noise = [line for line in res.stderr.splitlines() if line.strip() and "WARNING" not in line
             and "only" not in line and "cross-validation" not in line and "everyday" not in line]
    assert len(noise) <= 5, res.stderr[-2000:]  # quiet: warnings and the report, no step log
