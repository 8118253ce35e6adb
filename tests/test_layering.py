"""The architecture, enforced: which part of nbkit may import which.

Every ``import`` in ``nbkit/`` counts, the ones inside functions too (they used to hide two
cycles). Layers, bottom to top::

    errors  <  infra  <  config, artifacts, sources  <  compression, engines, finetuning  <  measure, server  <  cli  <  nbkit

A module imports only from its own layer or below; nothing forms a cycle; ``infra`` imports
nothing of nbkit's but ``errors``; the two engines never import each other; the core never
imports a UI library; and a name is imported from the module that defines it, never through
another module that merely imported it (the top-level ``nbkit`` package, the public API, is
the one exception).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "nbkit"
LAYERS = {
    "nbkit.errors": 0,
    "nbkit.infra": 1,
    "nbkit.config": 2,
    "nbkit.artifacts": 2,
    "nbkit.sources": 2,
    "nbkit.compression": 3,
    "nbkit.engines": 3,
    "nbkit.finetuning": 3,
    "nbkit.measure": 4,
    "nbkit.server": 4,
    "nbkit.cli": 5,
    "nbkit.__main__": 6,
}
UI_LIBRARIES = ("ipywidgets", "IPython", "traitlets", "anywidget", "plotly.graph_objs._figurewidget")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def is_module(name: str) -> bool:
    return name in core_modules()


def imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import statement in ``path``, at any depth."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno


def nbkit_edges(path: Path) -> set[str]:
    """The nbkit modules ``path`` imports (a ``from package import module`` names the module)."""
    found = set()
    for module, names, _ in imports(path):
        if module != "nbkit" and not module.startswith("nbkit."):
            continue
        submodules = [f"{module}.{n}" for n in names if is_module(f"{module}.{n}")]
        found.update(submodules or [module])
    return found


def layer(module: str) -> int:
    if module == "nbkit":
        return 7
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    return LAYERS[max(matches, key=len)]


def graph() -> dict[str, set[str]]:
    return {name: nbkit_edges(path) for name, path in core_modules().items()}


def test_every_module_has_a_layer() -> None:
    for name in core_modules():
        layer(name)


def test_no_module_imports_from_a_higher_layer() -> None:
    wrong = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in graph().items()
        for target in targets
        if module != "nbkit" and layer(target) > layer(module)
    ]
    assert wrong == []


def test_there_are_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_infra_imports_nothing_of_nbkit_but_errors() -> None:
    wrong = {
        module: sorted(t for t in targets if t != "nbkit.errors" and not t.startswith("nbkit.infra"))
        for module, targets in graph().items()
        if module.startswith("nbkit.infra")
    }
    assert {m: t for m, t in wrong.items() if t} == {}


@pytest.mark.parametrize(("engine", "other"), [("ort", "openvino"), ("openvino", "ort")])
def test_an_engine_never_imports_the_other(engine: str, other: str) -> None:
    wrong = {
        module: sorted(t for t in targets if t.startswith(f"nbkit.engines.{other}"))
        for module, targets in graph().items()
        if module.startswith(f"nbkit.engines.{engine}")
    }
    assert {m: t for m, t in wrong.items() if t} == {}


def test_the_core_never_imports_ui_code() -> None:
    wrong = [
        f"{module_name(path)}:{line} imports {module}"
        for path in CORE.rglob("*.py")
        for module, _, line in imports(path)
        if module.split(".")[0] in {u.split(".")[0] for u in UI_LIBRARIES if "." not in u}
        or module in UI_LIBRARIES
    ]
    assert wrong == []


def defined_names(path: Path) -> set[str]:
    """Names a module defines itself (classes, functions, assignments at its top level)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Try):  # optional imports (fcntl on Windows) define names too
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    names.update((a.asname or a.name).split(".")[0] for a in inner.names)
                elif isinstance(inner, ast.Assign):
                    names.update(n.id for t in inner.targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def every_python_file() -> Iterator[Path]:
    for folder in ("nbkit", "widgets", "tests", "benchmarks", "scripts"):
        yield from (ROOT / folder).rglob("*.py")


def test_names_come_from_the_module_that_defines_them() -> None:
    modules = core_modules()
    wrong = []
    for path in every_python_file():
        for module, names, line in imports(path):
            if module == "nbkit" or module not in modules:
                continue
            defined = defined_names(modules[module])
            for name in names:
                if name != "*" and name not in defined and not is_module(f"{module}.{name}"):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} is not defined in {module}")
    assert wrong == []


def test_no_public_name_shadows_a_submodule() -> None:
    import nbkit

    shadowed = [name for name in nbkit.__all__ if importlib.util.find_spec(f"nbkit.{name}") is not None]
    assert shadowed == []


ENGINE_WORDS = {"openvino", "ort", "olive", "onnxruntime-genai"}


def test_no_code_outside_the_engines_asks_which_engine_it_holds() -> None:
    """``if engine == "olive"`` and the like live in nbkit/engines only (the registry, the engines
    themselves); sweeps, measurements, panels and the CLI go through the protocol."""
    wrong = []
    for folder in ("nbkit", "widgets"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(CORE / "engines"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Compare):
                    continue
                operands = [node.left, *node.comparators]
                words = [o.value for o in operands if isinstance(o, ast.Constant) and o.value in ENGINE_WORDS]
                collections = [
                    e.value
                    for o in operands
                    if isinstance(o, (ast.Tuple, ast.List, ast.Set))
                    for e in o.elts
                    if isinstance(e, ast.Constant) and e.value in ENGINE_WORDS
                ]
                about_engines = any("engine" in ast.unparse(o).lower() for o in operands)
                if (words or collections) and about_engines:  # not NNCF's "openvino" kernels
                    wrong.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} compares with {words or collections}"
                    )
    assert wrong == []


def test_cache_kinds_are_named_once() -> None:
    """Every cache kind is spelled in nbkit/infra/cache.py only; other modules import its constant."""
    from nbkit.infra.cache import CACHE_KINDS

    wrong = [
        f"{path.relative_to(ROOT)}:{node.lineno} spells {node.value!r}"
        for path in CORE.rglob("*.py")
        if path != CORE / "infra" / "cache.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in CACHE_KINDS
    ]
    assert wrong == []
