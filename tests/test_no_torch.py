"""The runtime never imports torch or transformers (nor matplotlib, outside plotting, nor the build side,
which installs beside it), directly or indirectly."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import moerm_lite

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "optimum"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def test_runtime_scores_without_torch(tiny_folder):
    modules = [f"moerm_lite.{m.name}" for m in pkgutil.iter_modules(moerm_lite.__path__)
               if m.name != "__main__"]
    code = BLOCK + f"""
import importlib
for mod in {modules!r}:
    importlib.import_module(mod)
from moerm_lite import RewardModel
m = RewardModel.load({str(tiny_folder)!r}, threads=1)
s = m.score("why", ["the cat is good", "rude"])
u = m.fit_user([{{"prompt": "", "chosen": "good", "rejected": "bad"}}])
bad = [k for k in sys.modules if k.split(".")[0] in ("torch", "transformers", "optimum", "matplotlib", "moerm_build")]
assert not bad, bad
print("OK", s.shape, u.n_comparisons_)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(moerm_lite.__file__).parents[1])
    assert res.returncode == 0, res.stderr
    assert "OK (2,) 1" in res.stdout


def test_blocker_really_blocks():
    """The guard above is real: with it, importing torch fails."""
    res = subprocess.run([sys.executable, "-c", BLOCK + "import torch"], capture_output=True, text=True)
    assert res.returncode != 0 and "blocked" in res.stderr


def test_scoring_does_not_import_scipy(tiny_folder):
    """Cold start: scipy (about 0.3 s to import) loads only when a fit or an active question needs it."""
    code = f"""
import sys
from moerm_lite import RewardModel
from moerm_lite.integrations import trl_reward_func
m = RewardModel.load({str(tiny_folder)!r}, threads=1)
m.rank("why", ["the cat is good", "rude"]); m.explain("why", "ok"); trl_reward_func(m)(["q"], ["a"])
assert not [k for k in sys.modules if k.split(".")[0] == "scipy"], "scipy imported"
m.fit_user([{{"chosen": "good", "rejected": "bad"}}])
assert "scipy.special" in sys.modules  # the fit: Newton steps on scipy.special
print("OK")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(moerm_lite.__file__).parents[1])
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr
