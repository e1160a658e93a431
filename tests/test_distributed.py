"""`python -m moerm_build train` under torchrun: two CPU processes (gloo) train and export a loadable folder
with the same layout as a one-process run; the weights differ only by batch statistics and float order."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WORDS = "the cat dog sun rain tea code list answer short long kind rude help map city river".split()


def prefs(path, n=160, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"prompt": "question " + " ".join(rng.choice(WORDS, 4)),
             "chosen": " ".join(rng.choice(WORDS, int(rng.integers(8, 20)))) + ".",
             "rejected": str(rng.choice(["I don't know.", "No.", "Ask someone else."]))} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def run(args, timeout=240):
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_torchrun_trains_and_exports_a_loadable_folder(tmp_path):
    from moerm_build.train.train import load_checkpoint
    from moerm_lite import RewardModel

    rows = prefs(tmp_path / "prefs.jsonl")
    cfg = ["--set", "sources=[]", f'jsonl=["{tmp_path / "prefs.jsonl"}"]', "n_experts=4", "n_shared=1",
           "top_k=1", "expert_hidden=8", "epochs=4", "batch_size=32", f'cache_dir="{tmp_path / "cache"}"']
    run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "moerm_build", "train",
         "--out", str(tmp_path / "two"), *cfg])
    run(["-m", "moerm_build", "train", "--out", str(tmp_path / "one"), *cfg])
    assert json.loads((tmp_path / "two" / "train_log.json").read_text())["processes"] == 2
    (c2, h2), (c1, h1) = load_checkpoint(tmp_path / "two"), load_checkpoint(tmp_path / "one")
    s1, s2 = h1.state_dict(), h2.state_dict()
    assert {k: v.shape for k, v in s1.items()} == {k: v.shape for k, v in s2.items()}  # same layout
    assert c1["model_args"] == c2["model_args"] and c1["expert_names"] == c2["expert_names"]
    diff = max(float((s1[k] - s2[k]).abs().max()) for k in s1 if s1[k].numel())
    assert 0 < diff < 0.5  # trained on the same batches: close, not bit-equal (per-share batch statistics)

    run(["-m", "moerm_build", "export", "-i", str(tmp_path / "two"), "-o", str(tmp_path / "model"), "--no-reference"])
    m = RewardModel.load(tmp_path / "model", threads=1)
    s = m.score_pairs([(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows])
    assert np.isfinite(s).all() and (s[:len(rows)] > s[len(rows):]).mean() > 0.9  # it learned the task
