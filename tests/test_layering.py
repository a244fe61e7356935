"""The house rules of the layout: data flows one way, no cycles, no hidden imports, old paths still work."""

import ast
import importlib
import json
import pathlib
import subprocess
import sys
import warnings

import stitch
from stitch._moved import MOVED

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("stitch", "analyses")
# Function-level imports of project modules that are allowed, with the reason.
ALLOWED_LAZY: dict[str, str] = {}


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PROJECT:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: pathlib.Path, top_level_only: bool) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in the module (top level, or inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else [
        node for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(fn)
    ]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found += [(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base, node.lineno) for alias in node.names]
    return [(m, line) for m, line in found if m.split(".")[0] in PROJECT]


def test_the_core_never_imports_analyses():
    bad = [
        f"{name}:{line} imports {target}"
        for name, path in modules().items()
        if name.startswith("stitch") and not name.startswith("stitch.cli")
        for target, line in imports(name, path, top_level_only=False) + imports(name, path, top_level_only=True)
        if target.startswith("analyses")
    ]
    assert bad == []


def test_no_function_level_imports_of_project_modules():
    lazy = [
        f"{name}:{line} imports {target}"
        for name, path in modules().items()
        for target, line in imports(name, path, top_level_only=False)
        if name not in ALLOWED_LAZY
    ]
    assert lazy == []


def test_no_import_cycles():
    mods = modules()
    graph = {name: {t for t, _ in imports(name, path, True) if t in mods and t != name} for name, path in mods.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not (d.startswith(name + ".") and mods[name].name == "__init__.py")}
    cycles = []

    def visit(node, stack, seen):
        for dep in graph[node]:
            if dep in stack:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in seen:
                seen.add(dep)
                visit(dep, [*stack, dep], seen)

    for start in graph:
        visit(start, [start], {start})
    shortest = sorted({" → ".join(c) for c in cycles}, key=len)[:5]
    assert shortest == []


def test_old_paths_warn_and_give_the_same_objects():
    # a fresh interpreter, so that no old path is already imported (one process for all: torch loads once)
    code = (
        "import importlib, json, warnings\n"
        "import stitch\n"
        "from stitch._moved import MOVED\n"
        "seen = {}\n"
        "for old in sorted(MOVED):\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        importlib.import_module(old)\n"
        "    seen[old] = [str(w.message) for w in caught if w.category is DeprecationWarning]\n"
        "print(json.dumps(seen))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    seen = json.loads(result.stdout.splitlines()[-1])
    for old, new in MOVED.items():
        assert f"{old} has moved to {new}" in " ".join(seen[old]), old
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            alias = importlib.import_module(old)
        public = [n for n in dir(importlib.import_module(new)) if not n.startswith("__")]
        assert public and all(getattr(alias, n) is getattr(importlib.import_module(new), n) for n in public), old


def test_design_public_names_resolve():
    for name in ("load_model", "Splice", "TokenAlignment", "save_adapter", "load_adapter", "fit_adapter",
                 "TrainConfig", "train_adapter", "HookedLM", "Batch"):
        assert getattr(stitch, name) is not None
    for name in ("Identity", "Procrustes", "Affine", "Linear", "LowRank", "MLP"):
        assert isinstance(getattr(stitch.adapters, name), type)
    import analyses

    assert callable(analyses.cka.linear_cka) and callable(analyses.cka.cka_matrix)
    assert callable(analyses.sweep.layer_sweep)
