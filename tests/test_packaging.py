"""The install surface: environment.yml mirrors pyproject.toml, the CLI entry point and the
``nbkit.widgets`` namespace are wired, and the core imports no UI code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# The extras environment.yml installs with pip, and those it takes prebuilt from conda-forge instead
# (llama-cpp-python: pip compiles llama.cpp for minutes). dev is the developers' bundle of extras.
PIP_EXTRAS = ("widgets", "notebooks", "olive", "finetune", "serve", "dask")
CONDA_EXTRAS = ("bench",)


def _environment_yml() -> tuple[set[str], set[str]]:
    """environment.yml's conda dependencies (python and pip aside) and its pip section (``-e .`` aside)."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {
        d for d in env["dependencies"] if isinstance(d, str) and d != "pip" and not d.startswith("python")
    }
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return conda, {line for line in pip_section if not line.startswith("-e")}


def _extra(name: str) -> set[str]:
    # "nbkit[olive]" inside an extra names another extra, listed on its own lines already.
    return {d for d in _pyproject()["project"]["optional-dependencies"][name] if not d.startswith("nbkit[")}


def test_every_extra_has_its_place_in_environment_yml() -> None:
    extras = set(_pyproject()["project"]["optional-dependencies"])
    assert extras == {*PIP_EXTRAS, *CONDA_EXTRAS, "dev"}, "a new extra: add it to environment.yml and here"


def test_environment_yml_lists_exactly_the_pip_dependencies() -> None:
    expected = set(_pyproject()["project"]["dependencies"])
    for extra in PIP_EXTRAS:
        expected |= _extra(extra)
    _, listed = _environment_yml()
    assert listed == expected


def test_bench_extra_is_a_conda_dependency_with_the_same_pin() -> None:
    conda, pip = _environment_yml()
    bench = set().union(*(_extra(extra) for extra in CONDA_EXTRAS))
    assert bench == {"llama-cpp-python==0.3.36"}
    assert conda == bench  # the same package name and version as the extra
    assert not bench & pip


def test_dev_does_not_pull_the_bench_extra() -> None:
    """llama-cpp-python compiles llama.cpp on install: never in `make test` (which installs dev)."""
    extras = _pyproject()["project"]["optional-dependencies"]
    seen: set[str] = set()
    todo = ["dev"]
    while todo:  # dev and every extra it names, however deep
        name = todo.pop()
        seen.add(name)
        for dependency in extras[name]:
            if dependency.startswith("nbkit["):
                todo += [
                    n.strip() for n in dependency[len("nbkit[") : -1].split(",") if n.strip() not in seen
                ]
    assert not seen & set(CONDA_EXTRAS)
    pulled = set().union(*(extras[name] for name in seen))
    assert "llama-cpp-python" not in {canonicalize_name(Requirement(d).name) for d in pulled}


def test_widgets_install_under_the_nbkit_namespace(tmp_path: Path) -> None:
    code = (
        "import importlib.util, nbkit.widgets; "
        "print(nbkit.widgets.__file__); print(importlib.util.find_spec('widgets') is None)"
    )
    # Run outside the repo so the checkout folder is not on sys.path: only the install counts.
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    widgets_file, no_top_level = out.stdout.split()
    assert Path(widgets_file).parent == ROOT / "widgets"
    assert no_top_level == "True", "the panels must not install as a top-level 'widgets' module"


def test_core_never_imports_ui_code() -> None:
    banned = {"ipywidgets", "IPython"}  # plotly figures are fine: the CLI writes HTML charts
    for path in (ROOT / "nbkit").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_import_nbkit_loads_no_heavy_library() -> None:
    code = "import sys, nbkit; print(','.join(m for m in ('openvino', 'torch', 'nncf', 'transformers') if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nbkit", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"nbkit {_pyproject()['project']['version']}"
