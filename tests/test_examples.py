"""The README's two commands: their inputs exist and parse, and CI runs command (2) as the README shows it."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "models" / "examples"


def read(name):
    return [json.loads(line) for line in (EXAMPLES / name).read_text().splitlines() if line.strip()]


def commands(text: str) -> list[str]:
    """Shell commands, one per line or ``&&`` step, comments and blank lines dropped."""
    out = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            out += [c.strip() for c in line.split("&&") if c.strip()]
    return out


def readme_blocks() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    return [commands(b) for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_rank_example():
    rows = read("rank.jsonl")
    assert rows and all(isinstance(r["prompt"], str) and len(r["responses"]) >= 3 for r in rows)


def test_comparisons_example():
    rows = read("user_comparisons.jsonl")
    assert len(rows) >= 5
    for r in rows:
        assert set(r) >= {"prompt", "chosen", "rejected"} and r["chosen"] != r["rejected"]


def test_readme_command_one_installs_normally_and_uses_the_examples():
    main = next(b for b in readme_blocks() if any("moerm-lite rank" in c for c in b))
    assert "pip install ." in main and not any("-e" in c.split() for c in main)  # a normal install
    assert any("models/examples/rank.jsonl" in c for c in main)
    assert any("models/examples/user_comparisons.jsonl" in c for c in main)


def test_ci_runs_readme_command_two():
    ci = commands((ROOT / ".ci" / "run").read_text())
    ci = [c for c in ci if not c.startswith(("set ", "cd "))]
    assert ci[-1] == "python -m pytest"
    assert ci in readme_blocks()  # the README shows exactly the steps CI runs


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "precision" not in text  # the shipped model has int8 graphs only
