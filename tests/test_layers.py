"""The runtime's imports run one way: parts never import the facade or the tools built on it."""

import ast
from pathlib import Path

import moerm_lite

PKG = Path(moerm_lite.__file__).parent
# each module may import only modules of a lower layer (and the standard library / third parties)
LAYERS = [
    {"text", "features", "head", "files", "deprecated", "guard", "request_gate"},
    {"personalize"},
    {"folder", "active"},  # a folder's config names the residual a user gets (personalize.PER_USER)
    {"ov_backbone"},
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
    """experiments/ is research: no module of the runtime, the build side, the bench,
    and no test but tests/test_experiments.py, imports it or loads a file from it (tests/test_typing.py
    type-checks it, which depends on nothing in it)."""
    root = PKG.parent
    files = [p for d in ("moerm_lite", "moerm_build", "bench", "tests") for p in (root / d).rglob("*.py")]
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


BUILD_LAYERS = ["data", "model", "train", "evaluate", "graphs", "release", "__main__"]  # the build side, bottom up


def build_modules() -> dict[str, Path]:
    """Every module of moerm_build by dotted name (a package by its own name)."""
    root = PKG.parent / "moerm_build"
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def build_imports(path: Path, name: str) -> set[str]:
    """The moerm_build modules ``path`` imports, deferred imports included (absolute names)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "moerm_build":
                out |= {f"{base}.{a.name}" for a in node.names}  # `from moerm_build.data import tastes`
                if base != "moerm_build":  # `from moerm_build import data` imports data, not the package
                    out.add(base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "moerm_build"}
    return out


def build_layer(name: str) -> int:
    parts = name.split(".")
    return BUILD_LAYERS.index(parts[1]) if len(parts) > 1 else len(BUILD_LAYERS)  # the package itself: top


def test_build_side_imports_run_down_its_layers():
    """moerm_build: data -> model -> train -> evaluate -> graphs -> release -> the CLI; a module imports
    only its own layer or those below (deferred imports count), and no two modules import each other,
    however indirectly."""
    mods = build_modules()
    assert {n.split(".")[1] for n in mods if n.count(".")} == set(BUILD_LAYERS), "a module outside the layers"
    graph = {}
    for name, path in mods.items():
        deps = {d for d in build_imports(path, name) if d in mods and d != name}
        for d in deps:
            assert build_layer(d) <= build_layer(name), f"{name} imports {d}, a layer above it"
        graph[name] = deps
    done: set[str] = set()

    def visit(n: str, stack: list[str]) -> None:
        assert n not in stack, f"import cycle: {' -> '.join(stack[stack.index(n):] + [n])}"
        if n in done:
            return
        for d in graph[n]:
            if d.startswith(n + "."):  # a package importing its own submodule is not a cycle by itself
                continue
            visit(d, stack + [n])
        done.add(n)

    for n in graph:
        visit(n, [])
