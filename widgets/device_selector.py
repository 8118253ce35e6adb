"""DeviceSelector: the device a model runs on and, when asked for, the properties it runs with.

Until the user sets a property here (``custom`` is False) no panel passes properties: the
chat runs ``engine.default_runtime(model, device)`` and measurements use
:func:`nbkit.measure.sweep.measurement_runtime`, i.e. what ``nbkit tune-device`` recorded for
the model, else its engine's default, exactly as ``nbkit chat`` and ``nbkit sweep`` do. Setting
any property makes the selection explicit (``custom``); **Use tuned/defaults** undoes that.

Each control is a knob of :data:`nbkit.engines.protocol.RUNTIME_KNOBS`; the property it sets is
the one the model's engine names for it (``engine.runtime_properties(device)[knob]``), so the
same Threads box sets OpenVINO's ``INFERENCE_NUM_THREADS`` or onnxruntime-genai's
``intra_op_num_threads``. A knob the engine lacks is disabled with the reason.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.config import PERFORMANCE_HINTS, PropertyValue, RuntimeConfig
from nbkit.engines.openvino.devices import DeviceInfo, device_problem, list_devices
from nbkit.engines.protocol import BuiltModel, Engine
from nbkit.engines.registry import REFERENCE_ENGINE, engine_of_model
from nbkit.errors import NbkitError

from ._common import Choice, ChoiceButtons, card_layout, first_sentence, status_html, title_html
from ._panel import Panel

DeviceCheck = Callable[[DeviceInfo, "BuiltModel | None"], "str | None"]
AUTO_DEVICE = DeviceInfo(
    name="AUTO",
    full_name="Let OpenVINO choose among the devices above",
    writable_properties=("PERFORMANCE_HINT",),
)
_HINT_TIPS = {
    "LATENCY": "One request at a time, answered fastest: the right choice for a chat",
    "THROUGHPUT": "Many parallel requests; each answer may be slower",
    "CUMULATIVE_THROUGHPUT": "Spread parallel requests over all devices (AUTO/MULTI)",
}
_HINT_LABELS = {"LATENCY": "Latency", "THROUGHPUT": "Throughput", "CUMULATIVE_THROUGHPUT": "Cumulative"}
_KV_OPTIONS = [("device default", ""), ("u8 (smallest)", "u8"), ("f16", "f16"), ("f32 (exact)", "f32")]
NBKIT_PRECISION = "nbkit"  # the precision of base_runtime(device): f32 on CPU, the device's own elsewhere
_PRECISION_OPTIONS = [
    ("nbkit default (f32 on CPU)", NBKIT_PRECISION),
    ("device default", ""),
    ("f32 (accurate)", "f32"),
    ("bf16 (faster on AMX CPUs)", "bf16"),
    ("f16 (GPU/NPU)", "f16"),
]
_NO_DEVICE_TIP = "not offered by {device}"
# What a person calls each knob of RUNTIME_KNOBS (the controls below, one per knob) ...
KNOB_NAMES = {
    "hint": "performance hint",
    "streams": "stream count",
    "threads": "thread count",
    "kv_cache_precision": "KV-cache precision",
    "precision": "inference precision",
    "compiled_cache": "compiled-model cache",
}
# ... and what it does, after the name of the property it sets ("NUM_STREAMS: parallel ...").
_KNOB_TIPS = {
    "hint": "what the runtime optimizes the compiled model for",
    "streams": "parallel inference streams (device default follows the hint)",
    "threads": "CPU threads for inference; 0 = the runtime decides",
    "kv_cache_precision": "precision of the attention cache (u8 saves memory on long chats)",
    "precision": "the precision activations are computed in; bf16 can change a small model's answers",
    "compiled_cache": "keep compiled models here so the next load is faster; empty = off",
}
# Knobs the runtime reads itself, not a device plugin (OpenVINO's Core keeps the compiled-model
# cache): no device lists them among its writable properties, yet every device gets them.
_RUNTIME_READ_KNOBS = frozenset({"compiled_cache"})
# The label of each knob's control; the hint's is the heading above its buttons.
_KNOB_LABELS = {
    "hint": "Performance hint",
    "streams": "Streams",
    "threads": "Threads",
    "kv_cache_precision": "KV cache",
    "precision": "Precision",
    "compiled_cache": "Blob cache",
}
_CONTROL_WIDTH = "156px"
# A control that takes the rest of its row and may shrink below its content's width: without
# min_width 0 a flex item never gets narrower than its longest option, and spills out of the card.
_FILL_ROW = {"flex": "1 1 0%", "width": "auto", "min_width": "0"}


def max_threads() -> int:
    """The most threads the Threads box accepts: the logical CPU cores of this machine."""
    return max(os.cpu_count() or 1, 1)


def thread_problem(threads: int, limit: int | None = None) -> str:
    """Why ``threads`` is no thread count for this machine (one sentence), or ""."""
    limit = limit if limit is not None else max_threads()
    if 0 <= threads <= limit:
        return ""
    return (
        f"Threads must be a whole number from 0 (the runtime decides) to {limit}, the CPU cores of "
        f"this machine, not {threads}."
    )


def snippet_html(code: str, caption: str = "") -> str:
    """Code kept on its lines (never broken inside a name), in a monospace font, scrolled sideways."""
    cap = f'<div style="color:#57606a;font-size:12px">{html.escape(caption)}</div>' if caption else ""
    # width 0 + min-width 100%: the box takes its container's width without widening it to the
    # longest line (which would push the text below out of the card); the long line scrolls.
    return (
        f'{cap}<div style="width:0;min-width:100%"><pre style="margin:2px 0;padding:4px 8px;'
        "background:#f6f8fa;border-radius:4px;"
        "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,'Liberation Mono',monospace;"
        'font-size:12px;line-height:1.4;white-space:pre;overflow-x:auto">'
        f"{html.escape(code)}</pre></div>"
    )


def runtime_code(runtime: RuntimeConfig) -> str:
    """``RuntimeConfig.create(...)`` for ``runtime``, one property per line (it fits a narrow card)."""
    properties = runtime.property_dict
    if not properties:
        return f"RuntimeConfig.create({runtime.device!r})"
    lines = "".join(f"\n    {name!r}: {value!r}," for name, value in properties.items())
    return f"RuntimeConfig.create({runtime.device!r}, {{{lines}\n}})"


class HintButtons(ChoiceButtons):
    """The performance hints as choice buttons (teal with a check when picked), disabled as one control."""

    # Kept here, not sent: the browser side of a box fails on a tooltip, and each button shows its own.
    tooltip = traitlets.Unicode(None, allow_none=True, help="Why the hint is unavailable, or its role").tag(
        sync=False
    )

    def __init__(self, value: str) -> None:
        choices = [Choice(h, _HINT_LABELS.get(h, h.title()), _HINT_TIPS[h]) for h in PERFORMANCE_HINTS]
        super().__init__(choices, value)
        self.children[0].layout.flex_flow = "row wrap"  # a narrow card wraps the buttons, never cuts them

    def set_reason(self, reason: str) -> None:
        """Disable every button with ``reason`` as its tooltip, or enable them again ("")."""
        for value, button in self.buttons.items():
            button.tooltip = reason or self.choices[value].tooltip
        self.disabled = bool(reason)

    @property
    def tooltips(self) -> list[str]:
        """Each button's tooltip, in the order of PERFORMANCE_HINTS."""
        return [str(button.tooltip) for button in self.buttons.values()]


def _label_layout(knob: str) -> widgets.Layout:
    return widgets.Layout() if knob == "hint" else widgets.Layout(width="80px", min_width="80px")


def _label_html(knob: str, tooltip: str, *, disabled: bool) -> str:
    """A knob's label carrying the control's tooltip, greyed as the control when it is disabled."""
    color = "#8c959f" if disabled else "#1f2328"
    text = html.escape(_KNOB_LABELS[knob])
    if knob == "hint":
        return f'<b title="{html.escape(tooltip)}" style="color:{color}">{text}</b>'
    return (
        f'<div title="{html.escape(tooltip)}" style="color:{color};text-align:right;padding-right:6px">'
        f"{text}</div>"
    )


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _and_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def knob_problems(engine: Engine, device: DeviceInfo | None, properties: Mapping[str, str]) -> dict[str, str]:
    """Why each knob cannot be set for ``engine`` on ``device`` (a knob that can is absent).

    ``properties`` is ``engine.runtime_properties(device)``. A knob the engine lacks gets one
    sentence naming the engine. A device lists the writable properties of its OpenVINO plugin:
    they decide for an engine that hands its properties to that plugin (one whose properties
    the device lists), not for an engine with session options of its own, which no device
    lists (``engine.check_runtime`` judges those when the model loads).
    """
    writable = set(device.writable_properties) if device is not None else set()
    device_decides = device is None or bool(writable & set(properties.values()))
    offered = [f"{_article(KNOB_NAMES[k])} ({p})" for k, p in properties.items() if k in KNOB_NAMES]
    takes = f"it takes only {_and_list(offered)}" if offered else "it takes none of these options"
    problems: dict[str, str] = {}
    for knob, noun in KNOB_NAMES.items():
        name = properties.get(knob)
        if name is None:
            problems[knob] = f"{engine.title} has no {noun}: {takes}."
        elif device_decides and knob not in _RUNTIME_READ_KNOBS and name not in writable:
            problems[knob] = _NO_DEVICE_TIP.format(device=device.name if device else "this device")
    return problems


def no_device_problem(device: DeviceInfo, model: BuiltModel | None) -> str | None:
    """A rule that lets every device run any model (for tests and custom setups)."""
    return None


def engine_device_problem(device: DeviceInfo, model: BuiltModel | None) -> str | None:
    """Why ``device`` cannot run ``model``: its engine refuses the device, or OpenVINO's rules say so.

    The engine's own check (:meth:`~nbkit.engines.protocol.Engine.check_runtime` on the bare
    device) is what the chat and the measurements run into later, asked before any load:
    ONNX Runtime GenAI runs on the CPU only, OpenVINO on the devices it lists.
    """
    if model is None:
        return None
    try:
        engine_of_model(model).check_runtime(RuntimeConfig.create(device.name))
    except NbkitError as exc:
        return first_sentence(exc)
    return device_problem(device, model)


def _stream_range(device: DeviceInfo) -> range:
    try:
        low, high = (int(v) for v in device.properties.get("RANGE_FOR_STREAMS", "1, 4").split(","))
    except ValueError:
        low, high = 1, 4
    return range(max(low, 1), min(high, 8) + 1)


class DeviceSelector(Panel):
    """Choose a device (full names shown) and, optionally, a few properties of the model's engine.

    ``runtime`` is what the controls describe; panels use it only when ``custom`` is True
    (:attr:`explicit_runtime`, :attr:`measurement_runtime`). ``devices`` defaults to
    :func:`nbkit.list_devices`; ``check(device, model)`` returns why a device cannot run
    ``model`` (such devices are shown disabled with that reason; default
    :func:`engine_device_problem`). The controls are those of ``model``'s engine, or of the
    reference engine while there is no model.
    """

    device = traitlets.Unicode("CPU", help="The selected device name (CPU, GPU.0, NPU, AUTO)")
    runtime = traitlets.Instance(RuntimeConfig, help="The device and the properties the controls describe")
    custom = traitlets.Bool(
        False,
        help="True once properties are picked here: panels then pass runtime as it is; False: each "
        "model runs with what nbkit tune-device recorded for it, else its engine's default (as the CLI)",
    )
    model = traitlets.Any(None, allow_none=True, help="The built model (either engine's) the device is for")
    knob_properties = traitlets.Dict(
        help="The property each enabled control sets, by knob (RUNTIME_KNOBS): the engine's name for "
        "it on this device, e.g. {'threads': 'intra_op_num_threads'}",
    )
    unavailable_knobs = traitlets.Dict(
        help="The knobs the engine or the device lacks, each with why (their controls are disabled)",
    )
    problem = traitlets.Unicode(
        "", help="Why the picked properties are refused (one sentence; runtime keeps its last valid value)"
    )

    def __init__(
        self,
        devices: Sequence[DeviceInfo] | None = None,
        *,
        check: DeviceCheck | None = None,
        runtime: RuntimeConfig | None = None,
    ) -> None:
        self._start_registry()
        self.check = check or engine_device_problem
        self.devices: list[DeviceInfo] = list(devices) if devices is not None else list_devices()
        # No model yet: the controls are the reference engine's, and so is a runtime handed in.
        start = runtime or REFERENCE_ENGINE.base_runtime("CPU")
        self._syncing = 0  # > 0 while the panel itself sets controls: that is no user choice
        self._starting = True  # the runtime handed in is what the controls start from, even if refused
        start_names = REFERENCE_ENGINE.runtime_properties(start.device)
        start_props = start.property_dict

        def start_value(knob: str, default: PropertyValue) -> PropertyValue:
            name = start_names.get(knob)
            return start_props.get(name, default) if name else default

        self.device_buttons = ChoiceButtons([], vertical=True)
        self.engine_note = widgets.HTML()
        self.hint = HintButtons(str(start_value("hint", "LATENCY")))
        self.streams = widgets.Dropdown(layout=widgets.Layout(width=_CONTROL_WIDTH))
        # Not a BoundedIntText: that silently turns 999 into its maximum. A count out of range
        # is refused with the range instead (see problem).
        self.threads = widgets.IntText(
            value=int(start_value("threads", 0)),
            layout=widgets.Layout(width=_CONTROL_WIDTH),
        )
        self.kv_precision = widgets.Dropdown(
            options=_KV_OPTIONS,
            value=str(start_value("kv_cache_precision", "")),
            layout=widgets.Layout(width=_CONTROL_WIDTH),
        )
        start_precision = start_value("precision", "")
        base_precision = self._base_property(REFERENCE_ENGINE, start.device, "precision")
        self.precision = widgets.Dropdown(
            options=_PRECISION_OPTIONS,
            value=NBKIT_PRECISION if start_precision == base_precision else str(start_precision or ""),
            layout=widgets.Layout(**_FILL_ROW),  # as wide as the card leaves, never wider
        )
        self.cache_dir = widgets.Text(
            value=str(start_value("compiled_cache", "")),
            placeholder="(off) folder for compiled models",
            continuous_update=False,
            layout=widgets.Layout(**_FILL_ROW),
        )
        self.code = widgets.HTML(
            tooltip="The runtime the model runs with, and where it comes from",
            layout=widgets.Layout(width="100%", min_width="0"),  # a long line scrolls inside the card
        )
        self.problem_view = widgets.HTML()
        self.defaults_button = widgets.Button(
            description="Use tuned/defaults",
            icon="undo",
            tooltip="Forget the properties picked here: each model runs with what `nbkit tune-device` "
            "recorded for it, else its engine's defaults (as the command line does)",
            layout=widgets.Layout(width="170px"),
        )
        # One control per knob of RUNTIME_KNOBS; the property each sets is the engine's to name.
        self.knob_controls: dict[str, widgets.Widget] = {
            "hint": self.hint,
            "streams": self.streams,
            "threads": self.threads,
            "kv_cache_precision": self.kv_precision,
            "precision": self.precision,
            "compiled_cache": self.cache_dir,
        }
        # Labels apart from their controls: ipywidgets 8 shows no tooltip for a Dropdown or a Text
        # that has a description, and the reason a knob is disabled must show on hover.
        self.knob_labels = {knob: widgets.HTML(layout=_label_layout(knob)) for knob in self.knob_controls}
        self._initial_streams = str(start_value("streams", ""))
        super().__init__(
            [
                widgets.HTML(title_html("Device", "where the model runs")),
                self.device_buttons,
                self.engine_note,
                self.knob_labels["hint"],
                self.hint,
                widgets.HTML("<b>Properties</b>"),
                *(
                    widgets.HBox(
                        [self.knob_labels[knob], self.knob_controls[knob]],
                        layout=widgets.Layout(align_items="center"),
                    )
                    for knob in self.knob_controls
                    if knob != "hint"
                ),
                self.problem_view,
                self.defaults_button,
                self.code,
            ],
            layout=card_layout(),
        )
        self.link((self.device_buttons, "value"), (self, "device"))
        for control in self.knob_controls.values():
            self.watch(control, self._on_property, "value")
        self.watch(self, self._on_device, "device")
        self.watch(self, self._on_model, "model")
        self.watch(self, self._show_code, "custom")
        self.on_click(self.defaults_button, lambda _: self.use_defaults())
        self.set_devices(self.devices, start.device)
        self.custom = runtime is not None  # a runtime handed in is an explicit choice
        self._starting = False
        self._show_code()

    # -- public -----------------------------------------------------------------------------------

    def set_devices(self, devices: Sequence[DeviceInfo], selected: str | None = None) -> None:
        """Show ``devices`` (AUTO is added when there are several) and re-check them against ``model``."""
        self.devices = list(devices)
        shown = [*self.devices, AUTO_DEVICE] if len(self.devices) > 1 else list(self.devices)
        choices = []
        for device in shown:
            reason = self.check(device, self.model)  # AUTO too: not every engine has it
            caps = ", ".join(device.capabilities[:4])
            choices.append(
                Choice(
                    device.name,
                    device.name,
                    f"{device.full_name} ({device.name})",
                    detail=f"{device.full_name}" + (f" · {caps}" if caps else ""),
                    unavailable=reason or "",
                )
            )
        self.device_buttons.set_choices(choices, selected or self.device)
        self._on_device()

    @property
    def engine(self) -> Engine:
        """The engine whose properties the controls set: the model's, else the reference engine."""
        return engine_of_model(self.model) if self.model is not None else REFERENCE_ENGINE

    @property
    def explicit_runtime(self) -> RuntimeConfig | None:
        """``runtime`` when properties were picked here, else None (the engine decides, per model)."""
        return self.runtime if self.custom else None

    @property
    def measurement_runtime(self) -> RuntimeConfig | None:
        """What a panel puts in ``MeasureSettings.runtime``: None on the CPU without picked properties.

        None lets :func:`nbkit.measure.sweep.measurement_runtime` pick each model's tuned runtime,
        else its engine's default, as ``nbkit sweep``. Another device is a choice the
        measurement can only carry as a runtime (MeasureSettings has no device of its own).
        """
        if self.custom or self.device.upper() != "CPU":
            return self.runtime
        return None

    def runtime_for(self, model: BuiltModel | None) -> RuntimeConfig:
        """The runtime ``model`` runs with here: the picked one, else its engine's tuned/default one."""
        if self.custom or model is None:
            return self.runtime
        return engine_of_model(model).default_runtime(model, self.device)

    def use_defaults(self) -> None:
        """Forget the picked properties: the controls go back to nbkit's defaults, ``custom`` to False."""
        self._syncing += 1
        try:
            self.hint.value = str(self._base_property(self.engine, self.device, "hint") or "LATENCY")
            self.streams.value = ""
            self.threads.value = 0
            self.kv_precision.value = ""
            self.precision.value = NBKIT_PRECISION
            self.cache_dir.value = ""
        finally:
            self._syncing -= 1
        self._rebuild()
        self.custom = False

    def unavailable(self) -> dict[str, str]:
        """Devices that cannot run the current model, with the reason."""
        return {v: c.unavailable for v, c in self.device_buttons.choices.items() if c.unavailable}

    @property
    def info(self) -> DeviceInfo | None:
        if self.device == "AUTO":
            return AUTO_DEVICE
        return next((d for d in self.devices if d.name == self.device), None)

    # -- reacting -----------------------------------------------------------------------------

    @traitlets.validate("model")
    def _check_model(self, proposal: traitlets.Bunch) -> Any:
        model = proposal["value"]
        if model is not None:
            engine_of_model(model)  # a ConfigError/ModelSourceError for what no engine runs
        return model

    def _on_model(self, _: Any = None) -> None:
        self.set_devices(self.devices)  # re-checks the devices, then shows the new engine's knobs

    def _on_property(self, change: Any = None) -> None:
        if not self._syncing:
            self.custom = True  # the user picked a property: from now on it is passed as it is
        self._rebuild()

    def _on_device(self, _: Any = None) -> None:
        info = self.info
        engine = self.engine
        names = engine.runtime_properties(self.device or "CPU")
        problems = knob_problems(engine, info, names)
        writable = set(info.writable_properties) if info else set()
        streams = [("device default", "")] + [("AUTO", "AUTO")] * (names.get("streams") in writable)
        streams += [(str(n), str(n)) for n in _stream_range(info)] if info else []
        current = self.streams.value if self.streams.options else self._initial_streams
        self._syncing += 1
        try:
            with self.hold_trait_notifications():
                self.streams.options = streams
                self.streams.value = current if current in [v for _, v in streams] else ""
        finally:
            self._syncing -= 1
        for knob, control in self.knob_controls.items():
            problem = problems.get(knob, "")
            control.disabled = bool(problem)
            if knob in names and not problem:
                control.tooltip = f"{names[knob]}: {_KNOB_TIPS[knob]}"
            elif knob in names:  # the engine has it, this device does not
                control.tooltip = f"{names[knob]}: {_KNOB_TIPS[knob]} — {problem}"
            else:
                control.tooltip = problem
            self.knob_labels[knob].value = _label_html(knob, control.tooltip, disabled=bool(problem))
        # The hint's buttons show their own tooltips, not the group's: they carry the reason too.
        self.hint.set_reason(problems.get("hint", ""))
        self.knob_properties = {k: v for k, v in names.items() if k in KNOB_NAMES and k not in problems}
        self.unavailable_knobs = problems
        self._show_engine(engine)
        self._rebuild()

    def _show_engine(self, engine: Engine) -> None:
        whose = (
            f"the engine of {getattr(self.model, 'label', 'the model')}"
            if self.model is not None
            else "no model yet, so the reference engine every model is measured against"
        )
        tip = f"The options below are the ones {engine.title} takes: {whose}"
        self.engine_note.value = (
            f'<div style="color:#57606a;font-size:12px" title="{html.escape(tip)}">'
            f"Options for <b style='color:#1f2328'>{html.escape(engine.title)}</b></div>"
        )

    @staticmethod
    def _base_property(engine: Engine, device: str, knob: str) -> PropertyValue | None:
        """What ``engine``'s untuned runtime sets for ``knob`` on ``device`` (None: nothing, or no such device)."""
        name = engine.runtime_properties(device or "CPU").get(knob)
        if name is None:
            return None
        try:
            return engine.base_runtime(device or "CPU").property_dict.get(name)
        except NbkitError:  # a device this engine cannot use: the device list falls back anyway
            return None

    def _properties(self) -> dict[str, PropertyValue]:
        streams = self.streams.value
        precision = self.precision.value
        if precision == NBKIT_PRECISION:
            precision = self._base_property(self.engine, self.device, "precision") or ""
        values: dict[str, PropertyValue] = {
            "hint": self.hint.value or "",
            "streams": int(streams) if streams.isdigit() else streams,
            "threads": int(self.threads.value),
            "kv_cache_precision": self.kv_precision.value,
            "precision": precision,
            "compiled_cache": self.cache_dir.value.strip(),
        }
        # An empty choice (or 0 threads) is the runtime's own default: no property is sent for it.
        return {
            self.knob_properties[knob]: value
            for knob, value in values.items()
            if knob in self.knob_properties and value not in ("", 0)
        }

    def _rebuild(self, _: Any = None) -> None:
        if not self.device:
            self.code.value = '<span style="color:#cf222e">No device can run this model.</span>'
            return
        try:
            runtime = RuntimeConfig.create(self.device, self._properties())  # the core's checks first
            problem = "" if "threads" not in self.knob_properties else thread_problem(int(self.threads.value))
        except NbkitError as exc:
            runtime, problem = None, first_sentence(exc)
        self.problem = problem
        self.problem_view.value = status_html("error", problem) if problem else ""
        if problem and not self._starting:
            return  # refused, not changed: the runtime stays the last valid one
        if runtime is not None:
            self.runtime = runtime  # at construction, a runtime handed in stands (with its problem shown)
        self._show_code()

    def _show_code(self, _: Any = None) -> None:
        if not self.device:
            return
        runtime = self.runtime
        code = snippet_html(runtime_code(runtime), f"{runtime.device} runtime, as code:")
        self.defaults_button.disabled = not self.custom
        if self.custom:
            self.code.value = code + status_html("info", "Picked here: the chat and the measurements use it.")
            return
        note = (
            "Each model runs with what `nbkit tune-device` recorded for it on this device, "
            "else its engine's defaults (as the command line)."
        )
        if self.model is not None:
            try:
                used = self.runtime_for(self.model)
            except NbkitError as exc:
                self.code.value = status_html("error", first_sentence(exc))
                return
            code = snippet_html(runtime_code(used), f"{getattr(self.model, 'label', 'the model')} runs with:")
        self.code.value = code + status_html("info", note)
