"""Dashboard: model -> tuning (build + measure, either engine) -> chat, with one device selection for every step.

Tabs change only on a user's action: preparing a model moves on to Tune, choosing a model for
the chat (a click on the chart, the "Chat with" list, "Chat with this") opens Chat. A build or
sweep that finishes changes neither the tab nor the chat's model: it is offered, not imposed.

The device selector's choice reaches the tuner and the chat only when it is explicit (a
property picked there, or a device other than the CPU for the measurements); otherwise both
pass no runtime and the core decides per model, what ``nbkit tune-device`` recorded, else the
engine's default, exactly as ``nbkit sweep`` and ``nbkit chat`` do.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbkit.artifacts import OVModel
from nbkit.engines.openvino.devices import DeviceInfo
from nbkit.engines.protocol import BuiltModel
from nbkit.engines.registry import REFERENCE_ENGINE, engine_of_model, model_at
from nbkit.errors import NbkitError
from nbkit.infra.cache import Cache
from nbkit.infra.ledger import Ledger
from nbkit.measure.sweep import MeasureSettings
from nbkit.sources.models import DEFAULT_MODEL

from ._common import first_sentence
from ._panel import Panel
from .chat_pane import ChatPane, SessionFactory
from .device_selector import DeviceCheck, DeviceSelector
from .model_picker import HubCheck, ModelPicker
from .quantization_tuner import QuantizationTuner

MODEL_TAB, TUNE_TAB, CHAT_TAB = 0, 1, 2


class Dashboard(Panel):
    """The panels wired together: a prepared model feeds the tuner and the chat, the model chosen
    in the tuner (either engine's) feeds the chat, and the device selection applies to every step."""

    def __init__(
        self,
        model: str | None = DEFAULT_MODEL,
        *,
        cache: Cache | None = None,
        ledger: Ledger | None = None,
        devices: list[DeviceInfo] | None = None,
        device_check: DeviceCheck | None = None,
        hub_check: HubCheck | None = None,
        session_factory: SessionFactory | None = None,
        export_dir: Path | str | None = None,
        presets: Mapping[str, MeasureSettings] | None = None,
    ) -> None:
        """``ledger`` defaults to the cache's; ``presets`` adds measurement presets to the tuner."""
        self._start_registry()
        self.cache = cache or Cache()
        self.picker = ModelPicker(model, cache=self.cache, hub_check=hub_check)
        self.devices = DeviceSelector(devices, check=device_check)
        self.tuner = QuantizationTuner(
            cache=self.cache, ledger=ledger, runtime=self.devices.measurement_runtime, presets=presets
        )
        self.chat = ChatPane(
            runtime=self.devices.explicit_runtime,
            device=self.devices.device,
            session_factory=session_factory,
            export_dir=export_dir,
        )
        # The model loads and warms up while the user reads the Chat tab or types.
        self.chat.preload = True
        self.tabs = widgets.Tab(
            [self.picker, self.tuner, self.chat],
            titles=("1 · Model", "2 · Tune", "3 · Chat"),
        )
        self.summary = widgets.HTML(tooltip="What the chat uses now")
        self.summary.add_class("nbkit-summary")
        header = widgets.HTML(
            '<div class="nbkit-header" style="display:flex;align-items:baseline;gap:12px;'
            'border-bottom:2px solid #0969da;padding-bottom:4px;margin-bottom:6px">'
            '<span style="font-size:20px;font-weight:600;color:#0969da">nbkit</span>'
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
        self.own(self.picker, self.tuner, self.chat, self.devices)
        self.watch(self.picker, self._on_float_model, "float_model")
        self.watch(self.tuner, self._on_compressed_model, "compressed_model")
        self.watch(self.devices, self._on_runtime, ["runtime", "custom", "device"])
        self.watch(self.tuner, self._on_records, "records")
        self.watch(self.tabs, self._on_tab, "selected_index")
        self.watch(self.picker, self._on_prepared, "state")
        self._chart_fitted = False
        self.watch(self.tuner, self._on_tuner_state, "state")
        if self.picker.float_model is not None:  # a float export already in the cache (a notebook above)
            self._adopt(self.picker.float_model)
        self._update_summary()

    # -- public -----------------------------------------------------------------------------------

    @property
    def chat_model(self) -> BuiltModel | None:
        """The model the chat talks to: the chosen built one (either engine's), else the float one."""
        return self.tuner.compressed_model or self.picker.float_model

    # -- wiring -----------------------------------------------------------------------------------

    def _on_float_model(self, change: dict[str, Any]) -> None:
        model = change["new"]
        if model is None:
            return
        self._adopt(model)

    def _on_prepared(self, change: dict[str, Any]) -> None:
        if change["new"] == "finished" and self.picker.float_model is not None:
            self.tabs.selected_index = TUNE_TAB  # the user's Prepare is done: the next step is tuning

    def _adopt(self, model: OVModel) -> None:
        """Feed a float export to the tuner (which shows the model's recorded measurements) and, for
        another model than the chat's, to the chat."""
        with self.tuner.hold_trait_notifications():
            self.tuner.source, self.tuner.model = self.picker.source, model
        chosen = self.tuner.compressed_model
        if chosen is None or chosen.source_name != model.source_name:
            self.tuner.compressed_model = None
            self.devices.model = model
            self.chat.set_model(model)
        self._offer_models()
        self._update_summary()

    def _on_compressed_model(self, change: dict[str, Any]) -> None:
        model = change["new"]
        if model is None:
            return
        self.devices.model = model  # first: a device this model's engine cannot use falls back
        self.chat.set_model(model)
        if self.tuner.bring_chat_forward:  # set only by a user's choice (chart, list, button)
            self.tabs.selected_index = CHAT_TAB
        self._update_summary()

    def _on_tab(self, change: dict[str, Any]) -> None:
        if change["new"] == TUNE_TAB and not self._chart_fitted:
            self._chart_fitted = True
            self.tuner.redraw_chart()  # drawn while hidden, the chart would keep plotly's 700 px

    def _on_records(self, _: Any = None) -> None:
        self._offer_models()

    def _on_tuner_state(self, change: dict[str, Any]) -> None:
        if change["new"] != "running":
            self.picker.refresh()  # the cache table lists what the build or sweep added

    def _offer_models(self) -> None:
        """The chat's model list: the float model, then every measured model still in the cache, in the
        order of the tuner's "Chat with" list."""
        offered: list[BuiltModel] = []
        if self.picker.float_model is not None:
            offered.append(self.picker.float_model)
        for path in self.tuner.offered():  # the tuner's order: the float reference, the front, the rest
            if any(str(m.path) == path for m in offered):
                continue
            model = model_at(path)
            if model is not None:
                offered.append(model)
        self.chat.available_models = offered

    def _on_runtime(self, _: Any = None) -> None:
        with self.chat.hold_trait_notifications():
            self.chat.runtime = self.devices.explicit_runtime
            self.chat.device = self.devices.device
        self.tuner.runtime = self.devices.measurement_runtime  # speed is measured where the chat runs
        self._update_summary()

    def _update_summary(self) -> None:
        model = self.chat_model
        try:
            runtime = self.chat.session_runtime() if model is not None else self.devices.runtime
            device = runtime.device
            engine = engine_of_model(model) if model is not None else REFERENCE_ENGINE
            # The engine's hint property, where it has one (ONNX Runtime GenAI has none).
            hint_property = engine.runtime_properties(device).get("hint")
            hint = runtime.property_dict.get(hint_property) if hint_property else None
            device += f" · {hint.lower()}" if isinstance(hint, str) else ""
        except NbkitError as exc:
            device = first_sentence(exc)
        parts = [
            ("Model", self.picker.float_model.source_name if self.picker.float_model else "not prepared yet"),
            ("Chat with", weight_format(model) if model is not None else "—"),
            ("Device", device),
        ]
        chips = "".join(
            '<span class="nbkit-summary-item" style="display:inline-flex;align-items:baseline;gap:6px;'
            'padding:2px 10px;border:1px solid #d0d7de;border-radius:12px;background:#f6f8fa">'
            f'<span style="color:#57606a">{html.escape(k)}</span>'
            f'<b style="color:#1f2328">{html.escape(v)}</b></span>'
            for k, v in parts
        )
        self.summary.value = f'<div style="display:flex;flex-wrap:wrap;gap:8px;font-size:13px">{chips}</div>'


def weight_format(model: BuiltModel) -> str:
    """The model's weight format for people: ``int4_asym-g64-r0.8`` -> ``INT4 asym g64 r0.8 (OpenVINO + NNCF)``."""
    mode, _, rest = model.label.partition("-")
    bits, _, kind = mode.partition("_")
    words = [bits.upper(), kind, *rest.split("-")] if rest or kind else [bits.upper()]
    if bits == "float":
        words = ["float", rest.upper()] if rest else ["float"]
    try:
        title = engine_of_model(model).title
    except NbkitError:
        title = model.engine
    return f"{' '.join(w for w in words if w)} ({title})"


def dashboard(model: str | None = DEFAULT_MODEL, **options: Any) -> Dashboard:
    """The nbkit dashboard for ``model`` (the bundled one by default); display it as a cell's last line."""
    return Dashboard(model, **options)
