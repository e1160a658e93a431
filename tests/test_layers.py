"""The runtime's imports run one way: parts never import the facade or the tools built on it."""

import ast
from pathlib import Path

import moerm_lite

PKG = Path(moerm_lite.__file__).parent
# each module may import only modules of a lower layer (and the standard library / third parties)
LAYERS = [
    {"text", "features", "head", "files"},
    {"folder", "personalize", "active"},
    {"experts", "catalog", "plot", "sessions"},
    {"model"},
    {"cli", "integrations", "batch"},
    {"__main__", "__init__"},
]


def local_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module} if node.module else {a.name for a in node.names}
        if isinstance(node, ast.Name) and node.id == "TYPE_CHECKING":
            out.add("TYPE_CHECKING")
    return out


def test_imports_run_one_way():
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    modules = {p.stem for p in PKG.glob("*.py")}
    assert modules == set(layer), f"place every module in a layer: {sorted(modules ^ set(layer))}"
    for m in sorted(modules):
        for dep in local_imports(PKG / f"{m}.py"):
            assert dep != "TYPE_CHECKING", f"{m} hides an import cycle behind TYPE_CHECKING"
            assert layer[dep] < layer[m], f"{m} imports {dep}"


def test_no_product_code_or_test_loads_the_experiments():
    """experiments/ is research: no module of the runtime, the build side, the bench or the release script,
    and no test but tests/test_experiments.py, imports it or loads a file from it (tests/test_typing.py
    type-checks it, which depends on nothing in it)."""
    root = PKG.parent
    files = [p for d in ("moerm_lite", "export", "bench", "scripts", "tests") for p in (root / d).rglob("*.py")]
    assert len(files) > 50
    for path in files:
        if path.name in ("test_experiments.py", "test_typing.py", "test_layers.py"):  # checks of it, this one
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] == "experiments" for n in names), f"{path} imports experiments"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value != "experiments", f"{path} builds a path into experiments/"
