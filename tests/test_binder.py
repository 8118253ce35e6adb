"""Binder: what repo2docker reads from ``binder/`` agrees with the project, and, on request, a
replay of the whole build (``scripts/binder_replay.py``) runs the quickstart notebook under 2 GB.

The replay builds a fresh virtual environment from PyPI and runs a notebook on a cold cache:
many minutes, so it is marked ``binder`` and runs only when asked:

    NBKIT_BINDER_REPLAY=1 .venv/bin/python -m pytest -m binder tests/test_binder.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
REPLAY_SCRIPT = ROOT / "scripts" / "binder_replay.py"
REPLAY_TIMEOUT_S = 3 * 3600


def _replay_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("binder_replay", REPLAY_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def _pin(lines: list[str], name: str) -> str:
    """The specifier of ``name`` in requirement ``lines`` (``==2.13.0+cpu`` for ``torch==2.13.0+cpu``)."""
    for line in lines:
        match = re.match(rf"^{re.escape(name)}\s*([=<>!~].*)$", line, re.IGNORECASE)
        if match:
            return match.group(1).replace(" ", "")
    raise AssertionError(f"{name} is not pinned in {lines}")


def test_runtime_txt_names_a_python_the_project_supports() -> None:
    replay = _replay_module()
    text = (BINDER / "runtime.txt").read_text().strip()
    match = replay.RUNTIME_PATTERN.match(text)
    assert match, f"runtime.txt says {text!r}, not repo2docker's 'python-X.Y'"
    minor = int(match.group(1).split(".")[1])
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.10,<3.13" and 10 <= minor <= 12, f"Python 3.{minor} against {requires}"


def test_a_runtime_txt_in_another_form_is_refused_with_its_content(tmp_path: Path) -> None:
    replay = _replay_module()
    runtime = tmp_path / "runtime.txt"
    runtime.write_text("r-4.3-2024-01-01\n")
    with pytest.raises(replay.ReplayError, match=r"'r-4\.3-2024-01-01'; expected repo2docker's form"):
        replay.python_for_runtime(runtime)


def test_binder_installs_the_torch_and_voila_the_project_pins() -> None:
    binder = _requirement_lines(BINDER / "requirements.txt")
    constraints = _requirement_lines(ROOT / "constraints.txt")
    # The CPU build's local label (+cpu) names the wheel on PyTorch's index; the version must match.
    assert _pin(binder, "torch").split("+")[0] == _pin(constraints, "torch")
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert _pin(binder, "voila") == _pin(dev, "voila"), "Binder's Voila must be the one the tests check"


def test_postbuild_installs_extras_the_project_defines() -> None:
    post_build = (BINDER / "postBuild").read_text()
    installs = re.findall(r'-e\s+"\.\[([^\]]+)\]"', post_build)
    assert installs, "postBuild does not install the repository with pip install -e"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in installs[0].split(","):
        assert extra.strip() in extras, f"postBuild asks for the extra {extra!r}, which pyproject.toml lacks"


@pytest.mark.binder
@pytest.mark.skipif(
    os.environ.get("NBKIT_BINDER_REPLAY") != "1", reason="the Binder replay runs with NBKIT_BINDER_REPLAY=1"
)
def test_binder_replay_runs_the_quickstart_under_binders_memory(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPLAY_SCRIPT),
            "--work-dir",
            str(tmp_path / "replay"),
            "--json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=REPLAY_TIMEOUT_S,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    summary = json.loads(summary_path.read_text())
    assert summary["passed"]
    assert summary["peak_pss_bytes"] < summary["limit_bytes"]
    assert summary["python"].startswith("Python 3.")
