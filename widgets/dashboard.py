"""Dashboard: model -> tuning (compress + measure) -> chat, with one device selection for every step."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbkit.artifacts import OVModel
from nbkit.engines.openvino.devices import DeviceInfo
from nbkit.infra.cache import Cache
from nbkit.sources.models import DEFAULT_MODEL

from ._common import close_tree
from .chat_pane import ChatPane, SessionFactory
from .device_selector import DeviceCheck, DeviceSelector
from .model_picker import HubCheck, ModelPicker
from .quantization_tuner import QuantizationTuner

MODEL_TAB, TUNE_TAB, CHAT_TAB = 0, 1, 2


class Dashboard(widgets.VBox):
    """The panels wired together: a prepared model feeds the tuner and the chat, the model chosen
    in the tuner feeds the chat, and the device selection applies to every step."""

    def __init__(
        self,
        model: str | None = DEFAULT_MODEL,
        *,
        cache: Cache | None = None,
        devices: list[DeviceInfo] | None = None,
        device_check: DeviceCheck | None = None,
        hub_check: HubCheck | None = None,
        session_factory: SessionFactory | None = None,
        export_dir: Path | str | None = None,
    ) -> None:
        self.cache = cache or Cache()
        self.picker = ModelPicker(model, cache=self.cache, hub_check=hub_check)
        self.devices = DeviceSelector(devices, check=device_check)
        self.tuner = QuantizationTuner(cache=self.cache, runtime=self.devices.runtime)
        self.chat = ChatPane(
            runtime=self.devices.runtime, session_factory=session_factory, export_dir=export_dir
        )
        self.tabs = widgets.Tab(
            [self.picker, self.tuner, self.chat],
            titles=("1 · Model", "2 · Tune", "3 · Chat"),
        )
        self.summary = widgets.HTML(tooltip="What the chat uses now")
        header = widgets.HTML(
            '<div style="display:flex;align-items:baseline;gap:12px;border-bottom:2px solid #0969da;'
            'margin-bottom:6px"><span style="font-size:20px;font-weight:600">nbkit</span>'
            '<span style="color:#57606a">export · compress · chat with small language models, on this machine'
            "</span></div>"
        )
        self.app = widgets.AppLayout(
            header=widgets.VBox([header, self.summary]),
            center=self.tabs,
            right_sidebar=self.devices,
            left_sidebar=None,
            footer=None,
            pane_widths=[0, "1fr", "330px"],
            pane_heights=["84px", "1fr", 0],
            grid_gap="12px",
            layout=widgets.Layout(width="100%"),
        )
        super().__init__([self.app], layout=widgets.Layout(width="100%", max_width="1400px"))
        self._observers = [
            (self.picker, self._on_float_model, "float_model"),
            (self.tuner, self._on_compressed_model, "compressed_model"),
            (self.devices, self._on_runtime, "runtime"),
        ]
        for owner, handler, name in self._observers:
            owner.observe(handler, names=name)
        self._closed = False
        self._update_summary()

    # -- public -----------------------------------------------------------------------------------

    @property
    def chat_model(self) -> OVModel | None:
        """The model the chat talks to: the chosen compressed one, else the prepared float one."""
        return self.tuner.compressed_model or self.picker.float_model

    def close(self) -> None:
        if self.__dict__.get("_closed", True):
            super().close()
            return
        self._closed = True
        for owner, handler, name in self._observers:
            owner.unobserve(handler, names=name)
        for panel in (self.picker, self.tuner, self.chat, self.devices):
            panel.close()
        close_tree(self)
        super().close()

    # -- wiring -----------------------------------------------------------------------------------

    def _on_float_model(self, change: dict[str, Any]) -> None:
        model: OVModel | None = change["new"]
        if model is None:
            return
        with self.tuner.hold_trait_notifications():
            self.tuner.source, self.tuner.model = self.picker.source, model
        if (
            self.tuner.compressed_model is None
            or self.tuner.compressed_model.source_name != model.source_name
        ):
            self.tuner.compressed_model = None
            self.chat.set_model(model)
            self.devices.model = model
        self.tabs.selected_index = TUNE_TAB
        self._update_summary()

    def _on_compressed_model(self, change: dict[str, Any]) -> None:
        model: OVModel | None = change["new"]
        if model is None:
            return
        self.chat.set_model(model)
        self.devices.model = model
        self.tabs.selected_index = CHAT_TAB
        self._update_summary()

    def _on_runtime(self, change: dict[str, Any]) -> None:
        self.chat.runtime = change["new"]
        self.tuner.runtime = change["new"]  # speed is measured where the chat will run
        self._update_summary()

    def _update_summary(self) -> None:
        runtime = self.devices.runtime
        hint = runtime.property_dict.get("PERFORMANCE_HINT")
        parts = [
            ("Model", self.picker.float_model.source_name if self.picker.float_model else "not prepared yet"),
            ("Chat with", self.chat_model.label if self.chat_model else "—"),
            ("Device", runtime.device + (f" · {hint.lower()}" if hint else "")),
        ]
        self.summary.value = (
            '<div style="color:#57606a;font-size:13px">'
            + " &nbsp;|&nbsp; ".join(
                f"{html.escape(k)}: <b style='color:#1f2328'>{html.escape(v)}</b>" for k, v in parts
            )
            + "</div>"
        )


def dashboard(model: str | None = DEFAULT_MODEL, **options: Any) -> Dashboard:
    """The nbkit dashboard for ``model`` (the bundled one by default); display it as a cell's last line."""
    return Dashboard(model, **options)
