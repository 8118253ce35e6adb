"""Every panel's close(): no observer, link, click or message handler left, tasks cancelled, twice harmless.

The panels register their wiring through :class:`nbkit.widgets.Panel`, so ``close()`` undoes
it by construction. Each test closes a panel, checks that nothing nbkit wired still listens
anywhere in its widget tree (or on its tasks), then changes a trait the panel used to
observe and checks that nothing reacts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pytest
import traitlets

from nbkit import Cache, GenerationSettings, RuntimeConfig
from nbkit import widgets as panels
from nbkit.engines.base import BaseChatSession, TurnMetrics
from nbkit.engines.openvino.devices import DeviceInfo
from nbkit.widgets._common import iter_widgets

CPU = DeviceInfo(
    name="CPU",
    full_name="Example CPU",
    writable_properties=("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT"),
)


class SlowSession(BaseChatSession):
    """Answers "word" once every 50 ms until stopped (or 400 tokens)."""

    engine = "slow"

    def __init__(self, model_path: Path, runtime: RuntimeConfig, settings: GenerationSettings) -> None:
        super().__init__(model_path, runtime, settings, None)
        self.started = threading.Event()

    def _count_tokens(self, conversation: list[dict[str, str]]) -> int:
        return 8

    def _generate(
        self,
        conversation: list[dict[str, str]],
        settings: GenerationSettings,
        on_piece: Callable[[str], bool],
    ) -> tuple[str, TurnMetrics]:
        self.started.set()
        pieces: list[str] = []
        for _ in range(settings.max_new_tokens):
            time.sleep(0.05)
            pieces.append(" word")
            if not on_piece(" word"):
                break
        return "".join(pieces), TurnMetrics(8, len(pieces), 1.0, 1.0, 1.0, 0.1)


def _reachable(panel: widgets.Widget) -> Iterator[traitlets.HasTraits]:
    """Every widget of the panel's tree, and the background tasks of its panels."""
    for widget in iter_widgets(panel):
        yield widget
        task = getattr(widget, "task", None)
        if isinstance(task, panels.BackgroundTask):
            yield task


def _ours(handler: Any) -> bool:
    """True for a handler nbkit wired: one of its functions, or a traitlets link between traits."""
    if isinstance(getattr(handler, "__self__", None), traitlets.link | traitlets.dlink):
        return True
    return str(getattr(handler, "__module__", "") or "").startswith("nbkit")


def leftover_wiring(panel: widgets.Widget) -> list[str]:
    """Observers, links, click and message handlers of nbkit still attached under ``panel``."""
    found: list[str] = []
    for owner in _reachable(panel):
        for name, kinds in owner._trait_notifiers.items():
            for handlers in kinds.values():
                found += [
                    f"{type(owner).__name__}.{name} -> {getattr(h, '__qualname__', h)}"
                    for h in handlers
                    if not isinstance(h, traitlets.traitlets.ObserveHandler) and _ours(h)
                ]
        if isinstance(owner, widgets.Button):
            found += [f"click {owner.description!r}" for h in owner._click_handlers.callbacks if _ours(h)]
        if isinstance(owner, widgets.Widget):
            found += [f"message {type(owner).__name__}" for h in owner._msg_callbacks.callbacks if _ours(h)]
    return found


def _closed_twice(panel: panels.Panel) -> None:
    assert leftover_wiring(panel), "the panel should be wired before close (or this test proves nothing)"
    children = [w for w in iter_widgets(panel) if w is not panel]
    panel.close()
    panel.close()  # harmless
    assert panel.closed and leftover_wiring(panel) == []
    assert all(w.comm is None for w in children)


def test_model_picker_close(tmp_path: Path) -> None:
    picker = panels.ModelPicker(cache=Cache(tmp_path), hub_check=lambda: "offline in this test")
    source = picker.source
    _closed_twice(picker)
    picker.location = str(tmp_path / "elsewhere")  # observed before close: would resolve a new source
    assert picker.source is source


def test_quantization_tuner_close() -> None:
    tuner = panels.QuantizationTuner()
    seen: list[Any] = []
    tuner.on_chosen(seen.append)
    disabled = tuner.mode_buttons["int4_sym"].disabled
    _closed_twice(tuner)
    tuner.task.state = "running"  # observed before close: would disable the toggles and link state
    assert tuner.state == "idle" and tuner.mode_buttons["int4_sym"].disabled == disabled
    others = [v for v, c in tuner.engine_buttons.choices.items() if v != tuner.engine and not c.unavailable]
    if others:  # linked before close: the switch would change the engine
        tuner.engine_buttons.value = others[0]
        assert tuner.engine == "openvino"
    assert tuner._chosen_callbacks.callbacks == []
    assert all(not t._click_callbacks for t in tuner.figure.data)


def test_device_selector_close() -> None:
    selector = panels.DeviceSelector([CPU])
    runtime = selector.runtime
    _closed_twice(selector)
    selector.hint.value = "THROUGHPUT"  # observed before close: would rebuild the runtime
    assert selector.runtime == runtime and not selector.custom


def test_chat_pane_close_cancels_the_answer_and_closes_the_session(tmp_path: Path) -> None:
    sessions: list[SlowSession] = []

    def factory(path: Path, runtime: RuntimeConfig, settings: GenerationSettings) -> BaseChatSession:
        sessions.append(SlowSession(path, runtime, settings))
        return sessions[-1]

    chat = panels.ChatPane(tmp_path, session_factory=factory, settings=GenerationSettings(max_new_tokens=400))
    assert chat.send("Talk for a while")
    deadline = time.monotonic() + 30
    while not (sessions and sessions[0].started.is_set()) and time.monotonic() < deadline:
        time.sleep(0.01)
    header = chat.header.value
    _closed_twice(chat)
    assert chat.wait(30) == "cancelled"  # the background answer was stopped
    assert chat.session is None and 0 < sessions[0].turns[0].metrics.generated_tokens < 400
    chat.model_path = str(tmp_path / "another")  # observed before close: would redraw the header
    assert chat.header.value == header


def test_dashboard_close_closes_every_panel(tmp_path: Path) -> None:
    app = panels.Dashboard(cache=Cache(tmp_path), devices=[CPU], hub_check=lambda: "offline in this test")
    inner = [app.picker, app.tuner, app.chat, app.devices]
    _closed_twice(app)
    assert all(panel.closed for panel in inner)
    app.devices.custom = True  # observed before close: would hand the runtime to the chat
    assert app.chat.runtime is None


@pytest.mark.parametrize("form", [panels.OliveForm, panels.CompressionForm])
def test_forms_close(form: type[widgets.Widget]) -> None:
    made = form()
    config = made.config
    made.close()
    made.close()
    assert leftover_wiring(made) == []
    made.code_toggle.value = True  # linked to show_code before close
    assert made.show_code is False and made.config == config
