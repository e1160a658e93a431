"""The runtime's type hints hold (py.typed ships them to users)."""

import subprocess
import sys
from pathlib import Path

import pytest


def test_runtime_type_checks():
    pytest.importorskip("mypy")  # in the test extra
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "mypy", "moerm_lite"], cwd=root, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_build_side_type_checks():
    pytest.importorskip("mypy")
    pytest.importorskip("torch")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "mypy", "moerm_build", "experiments", "bench"], cwd=root,
                         capture_output=True, text=True, check=False)  # the build side and its tools
    assert res.returncode == 0, res.stdout + res.stderr
