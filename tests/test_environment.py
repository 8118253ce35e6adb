"""The notebook environment a learner opens: JupyterLab runs from the venv and sees the widget
front-ends, renders an ipywidgets slider, and Voila loads every widget front-end without a
shared-module version conflict ("Unsatisfied version 4.2.5 ... required ^4.6.2": the widget
pins in pyproject.toml's widgets extra say why) while a plotly FigureWidget still renders.

Every server gets Jupyter folders of its own under the test's temporary folder, so nothing of
the machine's Jupyter set-up (user settings, other kernels, extensions) changes the outcome.
The browser tests need Debian's chromium at /usr/bin/chromium and playwright; skipped otherwise.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
import pytest
from jupyter_servers import CHROMIUM, CHROMIUM_ARGS, free_port, jupyter_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser

JUPYTER = Path(sys.executable).parent / "jupyter"
# The lab extensions the panels and tutorials need: ipywidgets' widget manager, plotly's
# FigureWidget and anywidget (which FigureWidget is built on).
WIDGET_FRONTENDS = ("@jupyter-widgets/jupyterlab-manager", "jupyterlab-plotly", "anywidget")
# What webpack's module federation logs when a front-end needs a newer shared package than the
# page provides (it then runs against the older one anyway, or not at all).
VERSION_CONFLICT = re.compile(r"Unsatisfied version|No satisfying version")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
PAGE_MS = 60_000

browser_missing = [
    what
    for what, ok in (
        ("/usr/bin/chromium", CHROMIUM.exists()),
        ("playwright", importlib.util.find_spec("playwright") is not None),
        ("voila", importlib.util.find_spec("voila") is not None),
    )
    if not ok
]
needs_browser = pytest.mark.skipif(
    bool(browser_missing), reason=f"needs {', '.join(browser_missing)}" if browser_missing else ""
)


def _jupyter_env(home: Path) -> dict[str, str]:
    """This environment with Jupyter's and IPython's folders of its own under ``home``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JUPYTER")}
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        IPYTHONDIR=str(home / "ipython"),
        HF_HUB_OFFLINE="1",
    )
    return env


def _jupyter(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The venv's ``jupyter ARGS`` with Jupyter folders of its own."""
    return subprocess.run(
        [str(JUPYTER), *args], capture_output=True, text=True, env=_jupyter_env(tmp_path), timeout=120
    )


def test_jupyter_lab_runs_from_the_environment(tmp_path: Path) -> None:
    result = _jupyter(tmp_path, "lab", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == importlib.metadata.version("jupyterlab")


def test_jupyterlab_has_the_widget_frontends_enabled(tmp_path: Path) -> None:
    result = _jupyter(tmp_path, "labextension", "list")
    assert result.returncode == 0, result.stderr
    listing = ANSI_ESCAPE.sub("", result.stdout + result.stderr)
    for name in WIDGET_FRONTENDS:
        lines = [line.split() for line in listing.splitlines() if name in line.split()]
        assert lines, f"JupyterLab does not list the {name} extension:\n{listing}"
        assert {"enabled", "OK"} <= set(lines[0]), f"{name} is not enabled and OK:\n{listing}"
    manager = next(line.split() for line in listing.splitlines() if WIDGET_FRONTENDS[0] in line.split())
    # The widget manager JupyterLab loads is the one the installed jupyterlab_widgets ships.
    assert "jupyterlab_widgets)" in manager


def _page_logging_console(browser: Browser) -> tuple[Any, list[str]]:
    """A 1400x900 page, and the list its console messages are appended to."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    return page, console


def _widgets_notebook(folder: Path) -> Path:
    """A notebook showing an ipywidgets slider and a plotly FigureWidget (anywidget)."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.IntSlider(value=3, description='slider')"),
        nbformat.v4.new_code_cell(
            "import plotly.graph_objects as go\ngo.FigureWidget(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))"
        ),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "widgets.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.browser
@needs_browser
def test_voila_loads_the_widget_frontends_without_a_version_conflict(
    tmp_path: Path, browser: Browser
) -> None:
    from playwright.sync_api import expect

    notebook = _widgets_notebook(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}"]
    command += ["--Voila.ip=127.0.0.1"]
    with jupyter_server(
        command, port, tmp_path, _jupyter_env(tmp_path / "home"), tmp_path / "server.log"
    ) as url:
        page, console = _page_logging_console(browser)
        page.goto(url, timeout=PAGE_MS)
        # Both widgets drawn means every front-end has loaded, and logged whatever it objects to.
        expect(page.locator(".widget-slider")).to_be_visible(timeout=PAGE_MS)
        expect(page.locator(".js-plotly-plot .main-svg").first).to_be_visible(timeout=PAGE_MS)
        assert page.locator(".jupyter-widgets-error-widget").count() == 0, "a widget failed to render"
        page.close()
    conflicts = [line for line in console if VERSION_CONFLICT.search(line)]
    assert not conflicts, "shared-module version conflicts in Voila:\n" + "\n".join(conflicts)


@pytest.mark.browser
@needs_browser
def test_jupyterlab_renders_an_ipywidgets_slider(tmp_path: Path, browser: Browser) -> None:
    from playwright.sync_api import expect

    notebook = _widgets_notebook(tmp_path)
    port = free_port()
    command = [
        str(JUPYTER),
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.token=",
        "--ServerApp.password=",
        "--allow-root",  # CI runs as root; JupyterLab refuses root without it
        f"--ServerApp.root_dir={tmp_path}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run the cells by command
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with jupyter_server(
        command, port, tmp_path, _jupyter_env(tmp_path / "home"), tmp_path / "server.log"
    ) as url:
        page, console = _page_logging_console(browser)
        page.goto(f"{url}lab/tree/{notebook.name}", timeout=PAGE_MS)
        # The notebook panel is current once its kernel is idle; then run every cell.
        page.wait_for_function(
            "() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
            timeout=PAGE_MS,
        )
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        expect(page.locator(".jp-OutputArea .widget-slider")).to_be_visible(timeout=PAGE_MS)
        expect(page.locator(".jp-OutputArea .js-plotly-plot .main-svg").first).to_be_visible(timeout=PAGE_MS)
        assert page.locator(".jupyter-widgets-error-widget").count() == 0, "a widget failed to render"
        page.close()
    conflicts = [line for line in console if VERSION_CONFLICT.search(line)]
    assert not conflicts, "shared-module version conflicts in JupyterLab:\n" + "\n".join(conflicts)
