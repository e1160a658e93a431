"""Every code block in README.md and docs/ runs as written: on the shipped model, with small input files
this test writes under the names the docs use. A block that cannot run here (installs, hour-long builds,
torchrun) is listed in NOT_RUN with the test that covers it instead, so a new block needs a decision."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from moerm_lite.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the first line of each block that is not run here, and why
NOT_RUN = {
    "python3 -m venv .venv-rt": "installs (README command 1; CI runs its steps in a fresh venv)",
    "python3 -m venv .venv": "installs (README command 2 is what .ci/run runs; tests/test_examples.py)",
    "python -m moerm_build release build": "rebuilds the shipped model: hours (tests/test_train.py, test_export.py)",
    "python -m moerm_build release reexport backbone": "re-exports the shipped model (tests/test_export.py)",
    "python -m moerm_build train --config moerm_build/configs/moerm-minilm.json --out runs/x": "trains for hours",
    "torchrun --nproc_per_node 2 -m moerm_build train --config moerm_build/configs/moerm-minilm.json --out runs/x":
        "trains (tests/test_distributed.py runs torchrun on a tiny model)",
    "moerm_lite/   runtime (no torch): model.py  features.py  head.py (the formula)  personalize.py":
        "a directory listing, not code",
    "../shared/data ─> moerm_build/data: sources, contrast, attributes, degrade, tastes   (train splits only)":
        "a diagram of the pipeline (docs/architecture.md), not code",
}
QUESTION = "How do I boil an egg?"
REPLIES = ["Boil it for about eight minutes, then cool it in cold water.", "No idea.", "Google it."]
COMPARISONS = [{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A nice colour is blue, like the sky."},
               {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "It is 4, because two and two make four."},
               {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hello there, how are you doing today?"}]


def blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of each fenced block."""
    return re.findall(r"```(\w*)\n(.*?)```", path.read_text(), re.S)


def first_line(code: str) -> str:
    return code.strip().splitlines()[0].split(" #")[0].strip()


def write_inputs(where: Path) -> None:
    """The files the docs' examples read, small."""
    def jsonl(name: str, rows: list[dict]) -> None:
        (where / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("pairs.jsonl", [{"prompt": QUESTION, "response": r} for r in REPLIES])
    jsonl("requests.jsonl", [{"prompt": QUESTION, "responses": REPLIES}])
    jsonl("comparisons.jsonl", COMPARISONS[:2])
    jsonl("more.jsonl", COMPARISONS[2:])
    jsonl("candidates.jsonl", [{"prompt": "Plan my Saturday.", "candidates": ["Museum.", "Hiking.", "Stay in."]}])
    jsonl("items.jsonl", [{"id": f"item-{i}", "prompt": QUESTION, "response": r} for i, r in enumerate(REPLIES)])
    jsonl("replies.jsonl", [{"prompt": QUESTION, "response": r, "user_id": "alice" if i % 2 else None}
                            for i, r in enumerate(REPLIES * 4)])
    jsonl("users.jsonl", [{"user_id": "alice"}, {"user_id": "bob"}])
    (where / "profiles").mkdir(exist_ok=True)


def run_python(code: str, cwd: Path, timeout: int = 300) -> None:
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"block failed:\n{code}\n--- stderr ---\n{res.stderr[-3000:]}"


def test_every_block_is_run_or_listed():
    run_here = {"python", "bash"}
    for path in DOCS:
        for lang, code in blocks(path):
            head = first_line(code)
            if head in NOT_RUN:
                continue
            assert lang in run_here, f"{path.name}: a {lang or 'plain'} block starting {head!r} is neither run nor listed"
    listed = {first_line(code) for path in DOCS for _, code in blocks(path)}
    assert set(NOT_RUN) <= listed, f"NOT_RUN names blocks that are gone: {set(NOT_RUN) - listed}"


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_python_blocks_run_as_written(doc, tmp_path):
    write_inputs(tmp_path)
    code = "\n".join(c for lang, c in blocks(ROOT / doc) if lang == "python" and first_line(c) not in NOT_RUN)
    assert code
    run_python(code, tmp_path)


def cli_lines(doc: str) -> list[list[str]]:
    """Each ``moerm-lite ...`` line of the doc's bash blocks, as arguments."""
    out = []
    for lang, code in blocks(ROOT / doc):
        if lang == "bash" and first_line(code) not in NOT_RUN:
            for line in code.splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith("moerm-lite "):
                    out.append(shlex.split(line)[1:])
    return out


def test_readme_command_lines_run_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")  # the plot line (the plot extra)
    write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    lines = cli_lines("README.md")
    assert len(lines) >= 10
    for args in lines:
        assert main(args) == 0, f"moerm-lite {' '.join(args)}: {capsys.readouterr().err}"
    assert main(["fit", "comparisons.jsonl", "-o", "profiles/alice.json"]) == 0  # api.md's Python block's user
    for args in cli_lines("docs/api.md"):
        assert main(args) == 0, f"moerm-lite {' '.join(args)}: {capsys.readouterr().err}"


def test_scaling_ray_blocks_run_on_a_2_cpu_ray(tmp_path):
    pytest.importorskip("ray")
    write_inputs(tmp_path)
    setup = (f"from moerm_lite import RewardModel\nm = RewardModel.load()\n"
             f"m.fit_user({COMPARISONS!r}, user_id='alice').save('profiles/alice.json')\n"
             f"m.fit_user({COMPARISONS[:1]!r}, user_id='bob').save('profiles/bob.json')\n"
             f"m.encode_catalog([({QUESTION!r}, r) for r in {REPLIES!r} * 10], "
             f"ids=[f'item-{{i}}' for i in range(30)]).save('feed.npz')\n")
    code = "\n".join(c for lang, c in blocks(ROOT / "docs" / "scaling.md") if lang == "python")
    code = code.replace("ray.init()", "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)", 1)
    check = ("import pyarrow.parquet as pq\n"
             "s = pq.read_table('scored/').to_pydict()\n"
             "assert len(s['score']) == 12 and all(isinstance(x, float) for x in s['score'])\n"
             "f = pq.read_table('feeds/').to_pydict()\n"
             "assert sorted(f['user_id']) == ['alice', 'bob'] and all(len(t) == 20 for t in f['top_ids'])\n")
    run_python(setup + code + "\n" + check, tmp_path, timeout=600)


def test_build_own_block_runs_as_written(tmp_path):
    """docs/build.md's `own` block: a small preferences file, the folder built on the shipped model, ranked."""
    pytest.importorskip("onnx")
    write_inputs(tmp_path)
    rows = [{"prompt": f"Question {i}: what should I know about topic {i}?", "chosen": f"Short answer {i}.",
             "rejected": f"A much longer answer about topic {i}, which goes on and on with many more words."}
            for i in range(60)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (code,) = [c for lang, c in blocks(ROOT / "docs" / "build.md") if "moerm_build own" in c]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # `python -m moerm_build` runs from the checkout
    for line in code.splitlines():
        args = shlex.split(line.split(" #")[0])
        cmd = [sys.executable, *args[1:]] if args[0] == "python" else [sys.executable, "-m", "moerm_lite", *args[1:]]
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{line}\n{res.stderr[-3000:]}"
        if "moerm_build own" in line:
            report = json.loads(res.stdout)
            assert report["heldout_accuracy"] >= 0.9 and report["warnings"]  # 60 comparisons: too few, said
