"""CompressionForm: compress the prepared float IR with NNCF, one config at a time.

A stand-in for the QuantizationTuner: mode, a group size among the valid ones only, ratio and
backup precision, with a Run/Cancel progress bar and the compressed models of this float IR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import traitlets
from ipywidgets import CallbackDispatcher

from nbkit.artifacts import OVModel
from nbkit.cache import Cache
from nbkit.compress import check_compression, compress
from nbkit.config import BackupMode, CompressionConfig, CompressionMode
from nbkit.errors import ConfigError
from nbkit.progress import ProgressReporter

from ._common import close_tree, code_html, first_sentence, mib, status_html, table_html, title_html
from ._worker import IDLE, STATES, BackgroundTask, TaskView

_MODES = [
    ("INT4 symmetric — smallest, fastest", "int4_sym"),
    ("INT4 asymmetric — a little more accurate", "int4_asym"),
    ("NF4 — 4-bit normal float", "nf4"),
    ("INT8 asymmetric — close to float", "int8_asym"),
    ("INT8 symmetric", "int8_sym"),
]
_BACKUPS = [("INT8 asymmetric", "int8_asym"), ("INT8 symmetric", "int8_sym"), ("none (keep float)", "none")]
_INT8_REASON = "INT8 modes are per-channel and compress every layer: no group size or ratio"


class CompressionForm(widgets.VBox):
    """Compress ``model`` (a float OVModel); ``compressed_model`` is the result chosen for chatting."""

    model = traitlets.Instance(OVModel, allow_none=True, help="The float model to compress")
    config = traitlets.Instance(CompressionConfig, allow_none=True, help="The config the form describes")
    compressed_model = traitlets.Instance(OVModel, allow_none=True, help="The compressed model chosen")
    problem = traitlets.Unicode("", help="Why Run is unavailable (one sentence), or empty")
    state = traitlets.Enum(STATES, default_value=IDLE, help="State of the compression task")

    def __init__(self, model: OVModel | None = None, *, cache: Cache | None = None) -> None:
        self.cache = cache or Cache()
        self._compressed_callbacks = CallbackDispatcher()
        self.log_output = widgets.Output(layout=widgets.Layout(max_height="200px", overflow="auto"))
        self.task = BackgroundTask("Compression", self.log_output)
        wide = widgets.Layout(width="440px")
        self.mode = widgets.Dropdown(
            options=_MODES,
            value="int4_sym",
            description="Mode",
            layout=wide,
            tooltip="Weight precision (nncf.compress_weights mode)",
        )
        self.group_size = widgets.Dropdown(
            options=[("per-channel", -1)],
            value=-1,
            description="Group size",
            layout=wide,
            tooltip="Weights share a scale per group of this many input channels; only sizes valid for this model",
        )
        self.ratio = widgets.FloatSlider(
            value=1.0,
            min=0.0,
            max=1.0,
            step=0.05,
            description="Ratio",
            readout_format=".2f",
            continuous_update=False,
            layout=wide,
            tooltip="Share of the layers in the 4-bit mode; the rest use the backup precision",
        )
        self.backup = widgets.Dropdown(
            options=_BACKUPS,
            value="int8_asym",
            description="Backup",
            layout=wide,
            tooltip="Precision of layers not in 4-bit (the embeddings, the head, and 1 - ratio of the rest)",
        )
        self.code = widgets.HTML(tooltip="The same compression in Python")
        self.run_button = widgets.Button(
            description="Run",
            icon="play",
            button_style="primary",
            layout=widgets.Layout(width="140px"),
            tooltip="Compress the float IR with this config (cached: instant the second time)",
        )
        self.run_button.on_click(lambda _: self.run())
        self.view = TaskView(self.task, idle_text="Prepare a model in the Model tab first.")
        self.results = widgets.Select(
            options=[],
            rows=4,
            description="Chat with",
            layout=widgets.Layout(width="440px", display="none"),
            tooltip="Compressed models of this float IR in the cache; the selected one goes to the chat",
        )
        self.results_table = widgets.HTML(tooltip="Compressed models of this float IR")
        log_box = widgets.Accordion([self.log_output], titles=("Log",), selected_index=None)
        super().__init__(
            [
                widgets.HTML(title_html("Compress", "NNCF weight compression of the float IR")),
                self.mode,
                self.group_size,
                self.ratio,
                self.backup,
                self.code,
                self.run_button,
                self.view,
                widgets.HTML("<b>Compressed models</b>"),
                self.results_table,
                self.results,
                log_box,
            ]
        )
        self._controls = (self.mode, self.group_size, self.ratio, self.backup)
        for control in self._controls:
            control.observe(self._read_form, names="value")
        self.results.observe(self._on_result_picked, names="value")
        self.observe(self._on_model, names="model")
        self.task.observe(self._on_task_state, names="state")
        self._links = [traitlets.dlink((self.task, "state"), (self, "state"))]
        self._closed = False
        self.model = model
        self._on_model()

    # -- public -----------------------------------------------------------------------------------

    def run(self) -> bool:
        """Compress in the background; False (with the reason shown) when it cannot start."""
        if self.task.running:
            self.view.notify("warn", "A compression is running; wait for it or press Cancel.")
            return False
        model, config = self.model, self.config
        if model is None or config is None:
            self.view.notify("error", self.problem or "Prepare a model in the Model tab first.")
            return False

        def work(reporter: ProgressReporter) -> OVModel:
            return compress(model, config, cache=self.cache, reporter=reporter)

        self.task.start(work, on_success=self._compressed, message=f"Compressing {config.label}")
        return True

    def cancel(self) -> bool:
        return self.task.cancel()

    def wait(self, timeout: float | None = None) -> str:
        return self.task.wait(timeout)

    def on_compressed(self, callback: Callable[[OVModel], Any], remove: bool = False) -> None:
        """(Un)register ``callback(model)``, called when a compression finishes."""
        self._compressed_callbacks.register_callback(callback, remove=remove)

    def compressed_models(self) -> list[OVModel]:
        """Compressed models of ``model`` in the cache, newest first."""
        if self.model is None:
            return []
        key = self.model.entry.key
        return [
            OVModel(e)
            for e in self.cache.entries("openvino-compressed")
            if e.metadata.get("float_model") == key
        ]

    def close(self) -> None:
        if self.__dict__.get("_closed", True):
            super().close()
            return
        self._closed = True
        self.task.cancel()
        for link in self._links:
            link.unlink()
        for control in self._controls:
            control.unobserve(self._read_form, names="value")
        self.results.unobserve(self._on_result_picked, names="value")
        self.unobserve(self._on_model, names="model")
        self.task.unobserve(self._on_task_state, names="state")
        self.view.close()
        close_tree(self)
        super().close()

    # -- reacting -----------------------------------------------------------------------------

    def _on_model(self, _: Any = None) -> None:
        model = self.model
        valid = model.architecture.valid_group_sizes() if model is not None else ()
        options = [(f"{size}", size) for size in valid] + [("per-channel", -1)]
        best = max((s for s in valid if s <= 128), default=-1)
        with self.hold_trait_notifications():
            self.group_size.options = options
            self.group_size.value = best
        if model is not None:
            sizes = ", ".join(str(s) for s in model.architecture.input_channel_sizes())
            self.group_size.tooltip = (
                f"Valid for {model.source_name}: {', '.join(map(str, valid)) or 'none'} "
                f"(they divide its input channels {sizes}); per-channel always works"
            )
            if self.task.state == IDLE:
                self.view.show("info", f"Ready to compress {model.source_name} ({model.label}).")
        self._refresh_results()
        self._read_form()

    def _read_form(self, _: Any = None) -> None:
        int8 = CompressionMode(self.mode.value).is_int8
        for control in (self.group_size, self.ratio, self.backup):
            control.disabled = int8 or self.task.running
        self.ratio.tooltip = (
            _INT8_REASON
            if int8
            else "Share of the layers in the 4-bit mode; the rest use the backup precision"
        )
        config, problem = None, ""
        if self.model is None:
            problem = "Prepare a model in the Model tab first."
        else:
            try:
                if int8:
                    config = CompressionConfig(mode=self.mode.value, group_size=None)
                else:
                    group = None if self.group_size.value == -1 else int(self.group_size.value)
                    config = CompressionConfig(
                        mode=self.mode.value,
                        group_size=group,
                        ratio=float(self.ratio.value),
                        backup_mode=BackupMode(self.backup.value),
                    )
                check_compression(config, self.model.architecture)
            except ConfigError as exc:
                config, problem = None, first_sentence(exc)
        self.config, self.problem = config, problem
        self.run_button.disabled = config is None or self.task.running
        self.run_button.tooltip = (
            problem or "Compress the float IR with this config (cached: instant the second time)"
        )
        if config is None:
            self.code.value = status_html("error", problem) if self.model is not None else ""
            return
        args = ", ".join(f"{k}={v!r}" for k, v in _config_args(config).items())
        self.code.value = code_html(
            f"nbkit.compress(model, CompressionConfig({args}))", f"{config.label}, as code:"
        )

    def _on_task_state(self, change: dict[str, Any]) -> None:
        running = change["new"] == "running"
        self.mode.disabled = running
        self.results.disabled = running
        self._read_form()
        if not running:
            self._refresh_results()

    def _refresh_results(self) -> None:
        models = self.compressed_models()
        float_bytes = self.model.weights_bytes if self.model is not None else 0
        rows = []
        for m in models:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in m.weight_precisions.items())
            ratio = f"{float_bytes / m.weights_bytes:.1f}x" if m.weights_bytes else "-"
            rows.append((m.label, mib(m.weights_bytes), ratio, shares))
        self.results_table.value = table_html(
            ("config", "weights", "smaller", "precisions"), rows, empty="None yet: press Run."
        )
        current = self.compressed_model
        with self.hold_trait_notifications():
            self.results.options = [(m.label, m) for m in models]
            keep = next((m for m in models if current is not None and m.path == current.path), None)
            self.results.value = keep
        self.results.layout.display = "flex" if models else "none"

    def _on_result_picked(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.compressed_model = change["new"]

    def _compressed(self, model: OVModel) -> str:
        self.compressed_model = model
        self._refresh_results()
        self._compressed_callbacks(model)
        ratio = self.model.weights_bytes / model.weights_bytes if self.model is not None else 0
        return f"{model.label} ready: {mib(model.weights_bytes)} of weights, {ratio:.1f}x smaller than float"


def _config_args(config: CompressionConfig) -> dict[str, Any]:
    args: dict[str, Any] = {"mode": config.mode.value}
    if not config.mode.is_int8:
        args.update(group_size=config.group_size, ratio=config.ratio)
        if config.backup_mode is not BackupMode.INT8_ASYM:
            args["backup_mode"] = config.backup_mode.value
    else:
        args["group_size"] = None
    return args
