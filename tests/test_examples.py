"""The README's example inputs exist and parse."""

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "models" / "examples"


def read(name):
    return [json.loads(line) for line in (EXAMPLES / name).read_text().splitlines() if line.strip()]


def test_rank_example():
    rows = read("rank.jsonl")
    assert rows and all(isinstance(r["prompt"], str) and len(r["responses"]) >= 3 for r in rows)


def test_comparisons_example():
    rows = read("user_comparisons.jsonl")
    assert len(rows) >= 5
    for r in rows:
        assert set(r) >= {"prompt", "chosen", "rejected"} and r["chosen"] != r["rejected"]


def test_readme_commands_use_the_examples():
    readme = (EXAMPLES.parents[1] / "README.md").read_text()
    assert "models/examples/rank.jsonl" in readme and "models/examples/user_comparisons.jsonl" in readme


def test_ci_runs_readme_command_two():
    readme = (EXAMPLES.parents[1] / "README.md").read_text()
    ci = (EXAMPLES.parents[1] / ".ci" / "run").read_text().splitlines()[-1]
    assert ci in readme and "python -m pytest" in ci
