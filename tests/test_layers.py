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
