"""DeviceSelector: the device a model runs on and, when asked for, the properties it runs with.

Until the user sets a property here (``custom`` is False) no panel passes properties: the
chat runs ``engine.default_runtime(model, device)`` and measurements use
:func:`nbkit.measure.sweep.measurement_runtime`, i.e. what ``nbkit tune-device`` recorded for
the model, else its engine's default, exactly as ``nbkit chat`` and ``nbkit sweep`` do. Setting
any property makes the selection explicit (``custom``); **Use tuned/defaults** undoes that.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.config import PERFORMANCE_HINTS, PropertyValue, RuntimeConfig
from nbkit.engines.openvino.devices import DeviceInfo, device_problem, list_devices
from nbkit.engines.openvino.runtime import DEFAULT_RUNTIME, base_runtime
from nbkit.engines.protocol import BuiltModel
from nbkit.engines.registry import engine_of_model
from nbkit.errors import NbkitError

from ._common import Choice, ChoiceButtons, card_layout, code_html, first_sentence, status_html, title_html
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
    """Choose a device (full names shown) and, optionally, a few properties.

    ``runtime`` is what the controls describe; panels use it only when ``custom`` is True
    (:attr:`explicit_runtime`, :attr:`measurement_runtime`). ``devices`` defaults to
    :func:`nbkit.list_devices`; ``check(device, model)`` returns why a device cannot run
    ``model`` (such devices are shown disabled with that reason; default
    :func:`engine_device_problem`).
    """

    device = traitlets.Unicode("CPU", help="The selected device name (CPU, GPU.0, NPU, AUTO)")
    runtime = traitlets.Instance(RuntimeConfig, help="The device and the properties the controls describe")
    custom = traitlets.Bool(
        False,
        help="True once properties are picked here: panels then pass runtime as it is; False: each "
        "model runs with what nbkit tune-device recorded for it, else its engine's default (as the CLI)",
    )
    model = traitlets.Any(None, allow_none=True, help="The built model (either engine's) the device is for")

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
        start = runtime or DEFAULT_RUNTIME
        self._syncing = 0  # > 0 while the panel itself sets controls: that is no user choice
        props = start.property_dict
        self.device_buttons = ChoiceButtons([], vertical=True)
        self.hint = widgets.ToggleButtons(
            options=[(_HINT_LABELS.get(h, h.title()), h) for h in PERFORMANCE_HINTS],
            value=str(props.get("PERFORMANCE_HINT", "LATENCY")),
            tooltips=[_HINT_TIPS[h] for h in PERFORMANCE_HINTS],
            tooltip="PERFORMANCE_HINT: what OpenVINO optimizes the compiled model for",
            style={"button_width": "96px"},
        )
        self.streams = widgets.Dropdown(
            description="Streams",
            tooltip="NUM_STREAMS: parallel inference streams (device default follows the hint)",
            layout=widgets.Layout(width="240px"),
        )
        self.threads = widgets.BoundedIntText(
            value=int(props.get("INFERENCE_NUM_THREADS", 0)),
            min=0,
            max=max(os.cpu_count() or 1, 1) * 2,
            description="Threads",
            tooltip="INFERENCE_NUM_THREADS: CPU threads for inference; 0 = device default",
            layout=widgets.Layout(width="240px"),
        )
        self.kv_precision = widgets.Dropdown(
            options=_KV_OPTIONS,
            value=str(props.get("KV_CACHE_PRECISION", "")),
            description="KV cache",
            tooltip="KV_CACHE_PRECISION: precision of the attention cache (u8 saves memory on long chats)",
            layout=widgets.Layout(width="240px"),
        )
        start_precision = props.get("INFERENCE_PRECISION_HINT")
        base_precision = base_runtime(start.device).property_dict.get("INFERENCE_PRECISION_HINT")
        self.precision = widgets.Dropdown(
            options=_PRECISION_OPTIONS,
            value=NBKIT_PRECISION if start_precision == base_precision else str(start_precision or ""),
            description="Precision",
            tooltip="INFERENCE_PRECISION_HINT: the precision activations are computed in; bf16 can change "
            "a small model's answers",
            layout=widgets.Layout(width="320px"),
        )
        self.cache_dir = widgets.Text(
            value=str(props.get("CACHE_DIR", "")),
            description="Blob cache",
            placeholder="(off) folder for compiled models",
            tooltip="CACHE_DIR: keep compiled models here so the next load is faster; empty = off",
            continuous_update=False,
            layout=widgets.Layout(width="100%"),
        )
        self.code = widgets.HTML(tooltip="The runtime the model runs with, and where it comes from")
        self.defaults_button = widgets.Button(
            description="Use tuned/defaults",
            icon="undo",
            tooltip="Forget the properties picked here: each model runs with what `nbkit tune-device` "
            "recorded for it, else its engine's defaults (as the command line does)",
            layout=widgets.Layout(width="170px"),
        )
        self._controls: dict[str, widgets.Widget] = {
            "PERFORMANCE_HINT": self.hint,
            "NUM_STREAMS": self.streams,
            "INFERENCE_NUM_THREADS": self.threads,
            "KV_CACHE_PRECISION": self.kv_precision,
            "INFERENCE_PRECISION_HINT": self.precision,
        }
        self._tips = {key: str(control.tooltip) for key, control in self._controls.items()}
        self._initial_streams = str(props.get("NUM_STREAMS", ""))
        super().__init__(
            [
                widgets.HTML(title_html("Device", "where the model runs")),
                self.device_buttons,
                widgets.HTML("<b>Performance hint</b>"),
                self.hint,
                widgets.HTML("<b>Properties</b>"),
                self.streams,
                self.threads,
                self.kv_precision,
                self.precision,
                self.cache_dir,
                self.defaults_button,
                self.code,
            ],
            layout=card_layout(),
        )
        self._inputs = (
            self.hint,
            self.streams,
            self.threads,
            self.kv_precision,
            self.precision,
            self.cache_dir,
        )
        self.link((self.device_buttons, "value"), (self, "device"))
        for control in self._inputs:
            self.watch(control, self._on_property, "value")
        self.watch(self, self._on_device, "device")
        self.watch(self, self._on_model, "model")
        self.watch(self, self._show_code, "custom")
        self.on_click(self.defaults_button, lambda _: self.use_defaults())
        self.set_devices(self.devices, start.device)
        self.custom = runtime is not None  # a runtime handed in is an explicit choice
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
        base = base_runtime(self.device or "CPU").property_dict
        self._syncing += 1
        try:
            self.hint.value = str(base.get("PERFORMANCE_HINT", "LATENCY"))
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
        self.set_devices(self.devices)

    def _on_property(self, change: Any = None) -> None:
        if not self._syncing:
            self.custom = True  # the user picked a property: from now on it is passed as it is
        self._rebuild()

    def _on_device(self, _: Any = None) -> None:
        info = self.info
        writable = set(info.writable_properties) if info else set()
        name = info.name if info else "this device"
        streams = [("device default", "")] + [("AUTO", "AUTO")] * ("NUM_STREAMS" in writable)
        streams += [(str(n), str(n)) for n in _stream_range(info)] if info else []
        current = self.streams.value if self.streams.options else self._initial_streams
        self._syncing += 1
        try:
            with self.hold_trait_notifications():
                self.streams.options = streams
                self.streams.value = current if current in [v for _, v in streams] else ""
        finally:
            self._syncing -= 1
        for key, control in self._controls.items():
            supported = key in writable
            control.disabled = not supported
            control.tooltip = self._tips[key] + (
                "" if supported else f" — {_NO_DEVICE_TIP.format(device=name)}"
            )
        self._rebuild()

    def _properties(self) -> dict[str, PropertyValue]:
        info = self.info
        writable = set(info.writable_properties) if info else set()
        props: dict[str, PropertyValue] = {}
        if "PERFORMANCE_HINT" in writable and self.hint.value:
            props["PERFORMANCE_HINT"] = self.hint.value
        if "NUM_STREAMS" in writable and self.streams.value:
            props["NUM_STREAMS"] = (
                int(self.streams.value) if self.streams.value.isdigit() else self.streams.value
            )
        if "INFERENCE_NUM_THREADS" in writable and self.threads.value > 0:
            props["INFERENCE_NUM_THREADS"] = int(self.threads.value)
        if "KV_CACHE_PRECISION" in writable and self.kv_precision.value:
            props["KV_CACHE_PRECISION"] = self.kv_precision.value
        precision = self.precision.value
        if precision == NBKIT_PRECISION and self.device:
            precision = str(base_runtime(self.device).property_dict.get("INFERENCE_PRECISION_HINT", ""))
        if "INFERENCE_PRECISION_HINT" in writable and precision:
            props["INFERENCE_PRECISION_HINT"] = precision
        if self.cache_dir.value.strip():
            props["CACHE_DIR"] = self.cache_dir.value.strip()
        return props

    def _rebuild(self, _: Any = None) -> None:
        if not self.device:
            self.code.value = '<span style="color:#cf222e">No device can run this model.</span>'
            return
        self.runtime = RuntimeConfig.create(self.device, self._properties())
        self._show_code()

    def _show_code(self, _: Any = None) -> None:
        if not self.device:
            return
        runtime = self.runtime
        code = code_html(
            f"RuntimeConfig.create({runtime.device!r}, {runtime.property_dict!r})",
            f"{runtime.device} runtime, as code:",
        )
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
            code = code_html(
                f"RuntimeConfig.create({used.device!r}, {used.property_dict!r})",
                f"{getattr(self.model, 'label', 'the model')} runs with:",
            )
        self.code.value = code + status_html("info", note)
