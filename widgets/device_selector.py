"""DeviceSelector: the device and OpenVINO properties a model runs with, as a RuntimeConfig."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.artifacts import OVModel
from nbkit.config import PERFORMANCE_HINTS, PropertyValue, RuntimeConfig
from nbkit.engines.openvino.devices import DeviceInfo, device_problem, list_devices
from nbkit.engines.openvino.runtime import DEFAULT_RUNTIME, base_runtime

from ._common import Choice, ChoiceButtons, card_layout, close_tree, code_html, title_html

DeviceCheck = Callable[[DeviceInfo, "OVModel | None"], "str | None"]
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


def no_device_problem(device: DeviceInfo, model: OVModel | None) -> str | None:
    """A rule that lets every device run any model (for tests and custom setups)."""
    return None


def _stream_range(device: DeviceInfo) -> range:
    try:
        low, high = (int(v) for v in device.properties.get("RANGE_FOR_STREAMS", "1, 4").split(","))
    except ValueError:
        low, high = 1, 4
    return range(max(low, 1), min(high, 8) + 1)


class DeviceSelector(widgets.VBox):
    """Choose a device (full names shown) and a few properties; ``runtime`` is the resulting RuntimeConfig.

    ``devices`` defaults to :func:`nbkit.list_devices`; ``check(device, model)`` returns why a device
    cannot run ``model`` (such devices are shown disabled with that reason).
    """

    device = traitlets.Unicode("CPU", help="The selected device name (CPU, GPU.0, NPU, AUTO)")
    runtime = traitlets.Instance(RuntimeConfig, help="Device + properties, ready for ChatSession")
    model = traitlets.Instance(OVModel, allow_none=True, help="The model the runtime is for")

    def __init__(
        self,
        devices: Sequence[DeviceInfo] | None = None,
        *,
        check: DeviceCheck | None = None,
        runtime: RuntimeConfig | None = None,
    ) -> None:
        self.check = check or device_problem
        self.devices: list[DeviceInfo] = list(devices) if devices is not None else list_devices()
        start = runtime or DEFAULT_RUNTIME
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
        self.code = widgets.HTML(tooltip="The same runtime in Python")
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
        self._links = [traitlets.link((self.device_buttons, "value"), (self, "device"))]
        for control in self._inputs:
            control.observe(self._rebuild, names="value")
        self.observe(self._on_device, names="device")
        self.observe(self._on_model, names="model")
        self.set_devices(self.devices, start.device)
        self._closed = False

    # -- public -----------------------------------------------------------------------------------

    def set_devices(self, devices: Sequence[DeviceInfo], selected: str | None = None) -> None:
        """Show ``devices`` (AUTO is added when there are several) and re-check them against ``model``."""
        self.devices = list(devices)
        shown = [*self.devices, AUTO_DEVICE] if len(self.devices) > 1 else list(self.devices)
        choices = []
        for device in shown:
            reason = self.check(device, self.model) if device.name != "AUTO" else None
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

    def unavailable(self) -> dict[str, str]:
        """Devices that cannot run the current model, with the reason."""
        return {v: c.unavailable for v, c in self.device_buttons.choices.items() if c.unavailable}

    @property
    def info(self) -> DeviceInfo | None:
        if self.device == "AUTO":
            return AUTO_DEVICE
        return next((d for d in self.devices if d.name == self.device), None)

    def close(self) -> None:
        if self.__dict__.get("_closed", True):
            super().close()
            return
        self._closed = True
        for link in self._links:
            link.unlink()
        for control in self._inputs:
            control.unobserve(self._rebuild, names="value")
        self.unobserve(self._on_device, names="device")
        self.unobserve(self._on_model, names="model")
        close_tree(self)
        super().close()

    # -- reacting -----------------------------------------------------------------------------

    def _on_model(self, _: Any = None) -> None:
        self.set_devices(self.devices)

    def _on_device(self, _: Any = None) -> None:
        info = self.info
        writable = set(info.writable_properties) if info else set()
        name = info.name if info else "this device"
        streams = [("device default", "")] + [("AUTO", "AUTO")] * ("NUM_STREAMS" in writable)
        streams += [(str(n), str(n)) for n in _stream_range(info)] if info else []
        current = self.streams.value if self.streams.options else self._initial_streams
        with self.hold_trait_notifications():
            self.streams.options = streams
            self.streams.value = current if current in [v for _, v in streams] else ""
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
        runtime = RuntimeConfig.create(self.device, self._properties())
        self.runtime = runtime
        self.code.value = code_html(
            f"RuntimeConfig.create({runtime.device!r}, {runtime.property_dict!r})",
            f"{runtime.device} runtime, as code:",
        )
