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
    assert code == 0 and info["n_experts"] == 6 and info["experts_per_input"] == 2 and info["precisions"] == ["fp32", "int8"]


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
    ('{"response": 3}\n', "must be a string"),
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
    f = write_jsonl(tmp_path / "r.jsonl", [good, good, {"prompt": "q", "responses": ["good", 5]}])
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
    assert len(rows) == m.experts_per_input + m.config.n_shared  # one row per active expert
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


@pytest.mark.parametrize("command,field", [("score", "response"), ("explain", "response"),
                                           ("rank", "responses"), ("next", "candidates")])
def test_all_or_nothing_and_skip_bad(tiny_folder, tmp_path, capsys, command, field):
    """A bad row 3 stops the command before anything is written, named by its line; --skip-bad
    writes the good rows (input fields such as id carried along), lists the bad one and exits 3."""
    good = "the cat is good" if field == "response" else ["the cat is good", "rude"]
    bad = 7 if field == "response" else ["ok", 7]
    rows = [{"id": "a", "prompt": "why", field: good}, {"id": "b", "prompt": "why", field: good},
            {"id": "c", "prompt": "why", field: bad}, {"id": "d", "prompt": "how", field: good}]
    f = write_jsonl(tmp_path / "in.jsonl", rows)
    code, out = run([command, "--model", str(tiny_folder), "-i", f])
    err = capsys.readouterr().err
    assert code == 2 and out == "" and f"line 3 of {f}:" in err and "pair" not in err
    code, out = run([command, "--model", str(tiny_folder), "-i", f, "--skip-bad"])
    err = capsys.readouterr().err
    got = [json.loads(x) for x in out.splitlines()]
    assert code == 3 and [g["id"] for g in got] == ["a", "b", "d"] and f"line 3 of {f}:" in err
    assert got[2]["prompt"] == "how" and field not in got[0] or command in ("score", "explain")


def test_fit_skip_bad_and_line_numbers(tiny_folder, tmp_path, capsys):
    comps = [{"prompt": "q", "chosen": "good", "rejected": "bad"}] * 3 + [{"prompt": "q", "chosen": "good"}]
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps(c) + "\n" for c in comps) + "{not json\n")
    code, _ = run(["fit", str(f), "-o", str(tmp_path / "u.json"), "--model", str(tiny_folder)])
    err = capsys.readouterr().err
    assert code == 2 and f"line 4 of {f}:" in err and not (tmp_path / "u.json").exists()
    code, _ = run(["fit", str(f), "-o", str(tmp_path / "u.json"), "--model", str(tiny_folder), "--skip-bad"])
    err = capsys.readouterr().err
    assert code == 3 and f"line 4 of {f}" in err and f"line 5 of {f}" in err
    assert UserProfile.load(tmp_path / "u.json").n_comparisons_ == 3


def test_concurrent_fit_updates_lose_nothing(tiny_folder, tmp_path):
    """Two `moerm-lite fit --update` on one profile at once: both updates land (3 trials here; the
    issue's 50-trial run is in the session note)."""
    import subprocess
    import sys

    comps = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}])
    prof = tmp_path / "u.json"
    assert run(["fit", comps, "-o", str(prof), "--model", str(tiny_folder)])[0] == 0
    cmd = [sys.executable, "-m", "moerm_lite", "fit", comps, "--update", str(prof), "--model", str(tiny_folder),
           "--threads", "1"]
    for trial in range(3):
        procs = [subprocess.Popen(cmd, stderr=subprocess.DEVNULL) for _ in range(2)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        assert UserProfile.load(prof).n_comparisons_ == 1 + 2 * (trial + 1)


def test_describe_a_profile(tiny_folder, tmp_path, capsys):
    m = RewardModel.load(tiny_folder, threads=1)
    comps = [{"prompt": "q", "chosen": "the cat is good", "rejected": "rude and bad"}] * 6
    f = write_jsonl(tmp_path / "c.jsonl", comps)
    assert run(["fit", f, "-o", str(tmp_path / "u.json"), "--model", str(tiny_folder)])[0] == 0
    code, out = run(["describe", "--model", str(tiny_folder), "--user", str(tmp_path / "u.json"),
                     "--format", "jsonl"])
    d = json.loads(out)
    assert code == 0 and d == json.loads(json.dumps(m.describe_user(UserProfile.load(tmp_path / "u.json"))))
    code, out = run(["describe", "--model", str(tiny_folder), "--user", str(tmp_path / "u.json")])
    assert code == 0 and out.startswith("Fitted on 6 comparisons.")
    code, _ = run(["describe", "--model", str(tiny_folder)])
    assert code == 2 and "describe needs --user" in capsys.readouterr().err


def test_fit_without_comparisons_is_an_error(tiny_folder, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _ = run(["fit", str(empty), "-o", str(tmp_path / "u.json"), "--model", str(tiny_folder)])
    assert code == 2 and "no comparisons in" in capsys.readouterr().err and not (tmp_path / "u.json").exists()
