"""The install surface: environment.yml mirrors pyproject.toml, the CLI entry point and the
``nbkit.widgets`` namespace are wired, and the core imports no UI code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_lists_exactly_the_pip_dependencies() -> None:
    project = _pyproject()["project"]
    expected = set(project["dependencies"])
    for extra in ("widgets", "notebooks", "olive", "finetune", "serve"):
        # "nbkit[olive]" inside an extra names another extra, listed on its own lines already.
        expected |= {d for d in project["optional-dependencies"][extra] if not d.startswith("nbkit[")}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {line for line in pip_section if not line.startswith("-e")}
    assert listed == expected


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
