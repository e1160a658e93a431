"""The moerm-lite command end to end on the tiny model."""

import io
import json

import numpy as np
import pytest

from moerm_lite import RewardModel, UserProfile
from moerm_lite.cli import Progress, main


def run(args, capsys=None):
    out = io.StringIO()
    code = main(args, out=out)
    return code, out.getvalue()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_info(tiny_folder):
    code, out = run(["info", "--model", str(tiny_folder)])
    info = json.loads(out)
    assert code == 0 and info["n_experts"] == 6 and info["top_k"] == 2 and info["precisions"] == ["fp32", "int8"]


def test_score_rank_explain_fit(tiny_folder, tmp_path):
    m = RewardModel.load(tiny_folder, threads=1)
    pairs = [{"prompt": "why", "response": "the cat is good", "id": 7}, {"response": "rude and bad"}]
    code, out = run(["score", "--model", str(tiny_folder), "-i", write_jsonl(tmp_path / "p.jsonl", pairs)])
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and rows[0]["id"] == 7  # input fields are kept
    np.testing.assert_allclose([r["score"] for r in rows],
                               m.score_pairs([("why", "the cat is good"), ("", "rude and bad")]), atol=1e-9)

    rank_in = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "q", "responses": ["good", "bad", "the dog"]}])
    code, out = run(["rank", "--model", str(tiny_folder), "-i", rank_in])
    ranking = json.loads(out)["ranking"]
    assert code == 0 and ranking == m.rank("q", ["good", "bad", "the dog"])

    code, out = run(["explain", "--model", str(tiny_folder), "-i", str(tmp_path / "p.jsonl")])
    e = json.loads(out.splitlines()[0])
    assert code == 0 and len(e["rewards"]) == 6 and e["score"] == pytest.approx(rows[0]["score"])

    worst = ranking[-1]["text"]
    best = ranking[0]["text"]
    comps = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "chosen": worst, "rejected": best}] * 10)
    prof = tmp_path / "u.json"
    code, _ = run(["fit", comps, "-o", str(prof), "--model", str(tiny_folder), "--user-id", "u",
                   "--prior-strength", "0.1"])
    assert code == 0 and UserProfile.load(prof).n_comparisons_ == 10
    code, out = run(["rank", "--model", str(tiny_folder), "-i", rank_in, "--user", str(prof),
                     "--format", "table"])
    lines = [x for x in out.splitlines() if x.strip().startswith("1.")]
    assert code == 0 and lines[0].endswith(worst)  # the user's choice now ranks first


@pytest.mark.parametrize("content,msg", [
    ('{"prompt": "q"}\n', "no 'response' field"),
    ("not json\n", "not valid JSON"),
    ('{"response": ""}\n', "empty"),
    ("[1, 2]\n", "JSON object"),
])
def test_bad_input_exit_code(tiny_folder, tmp_path, capsys, content, msg):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "why", "response": "the cat is good"}\n\n' + content)
    code, _ = run(["score", "--model", str(tiny_folder), "-i", str(f)])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert f"line 3 of {f}:" in err  # the input line, counted as an editor does (blank lines too)


def test_errors_name_the_line_in_every_command(tiny_folder, tmp_path, capsys):
    good = {"prompt": "q", "responses": ["good", "bad"]}
    f = write_jsonl(tmp_path / "r.jsonl", [good, good, {"prompt": "q", "responses": ["good", ""]}])
    code, _ = run(["rank", "--model", str(tiny_folder), "-i", f])
    assert code == 2 and f"line 3 of {f}: " in capsys.readouterr().err
    comps = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"},
                                               {"prompt": "q", "chosen": "good"}])
    code, _ = run(["fit", comps, "-o", str(tmp_path / "u.json"), "--model", str(tiny_folder)])
    err = capsys.readouterr().err
    assert code == 2 and f"line 2 of {comps}: " in err and "rejected" in err


def test_explain_table(tiny_folder, tmp_path):
    m = RewardModel.load(tiny_folder, threads=1)
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "why", "response": "the cat is good"}])
    code, out = run(["explain", "--model", str(tiny_folder), "-i", f, "--format", "table"])
    e = m.explain("why", "the cat is good")
    assert code == 0 and f"score {e['score']:+.3f}" in out
    rows = [line for line in out.splitlines() if line.startswith("  ") and "contribution" not in line]
    assert len(rows) == m.top_k + m.config.n_shared  # one row per active expert
    assert sum(float(r.split()[-1]) for r in rows) == pytest.approx(e["score"], abs=5e-3 * len(rows))
    assert "-0.000 " not in out and "e-" not in out


def test_jsonl_output_has_no_float_noise(tiny_folder, tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "why", "response": "the cat is good"}])
    code, out = run(["explain", "--model", str(tiny_folder), "-i", f])
    e = json.loads(out)
    values = [v for k in ("rewards", "gating_output", "contributions") for v in e[k]]
    assert code == 0 and "-0.0," not in out and not any(0 < abs(v) < 1e-9 for v in values)


def test_broken_pipe_is_quiet(tiny_folder, tmp_path):
    """`moerm-lite score ... | head -1`: the reader leaves early; no traceback, no error message."""
    import subprocess
    import sys

    rows = [{"prompt": "why", "response": "the cat is good"}] * 3000
    f = write_jsonl(tmp_path / "p.jsonl", rows)
    cmd = (f"{sys.executable} -m moerm_lite score --model {tiny_folder} -i {f} --threads 1 | head -1")
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert res.stdout.count("\n") == 1 and "score" in res.stdout
    assert "Error" not in res.stderr and "error" not in res.stderr


def test_missing_model_exit_code(tmp_path, capsys):
    code, _ = run(["info", "--model", str(tmp_path / "none")])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_progress_bar_only_for_long_inputs():
    s = io.StringIO()
    p = Progress(10, "score", stream=s)
    p(10)
    assert s.getvalue() == ""
    p = Progress(400, "score", stream=s)
    p(200)
    p(200)
    assert "400/400" in s.getvalue() and s.getvalue().endswith("\n")
