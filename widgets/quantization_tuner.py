"""QuantizationTuner: sweep compression configs, measure each, and pick one from the Pareto front.

The panel builds the grid with :func:`nbkit.sweep.grid` (configs invalid for the model are
listed with their reason, never run), runs :func:`nbkit.sweep.run_sweep` in a worker thread
and plots every record as it arrives on :func:`nbkit.charts.pareto_figure` in a plotly
``FigureWidget``. Clicking a point, or the list below the chart, picks the model to chat with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets
from ipywidgets import CallbackDispatcher

from nbkit.artifacts import OVModel
from nbkit.cache import Cache
from nbkit.charts import pareto_figure
from nbkit.config import CompressionConfig, RuntimeConfig
from nbkit.errors import ConfigError
from nbkit.inference import DEFAULT_RUNTIME
from nbkit.ledger import Ledger
from nbkit.progress import ProgressReporter
from nbkit.sources import ModelSource
from nbkit.sweep import TABLE_HEADER, MeasureSettings, SweepRecord, grid, pareto_front, run_sweep, table_rows

from ._common import close_tree, code_html, first_sentence, status_html, table_html, title_html
from ._worker import IDLE, STATES, BackgroundTask, TaskView

MODES = ("int4_sym", "int4_asym", "nf4", "int8_asym", "int8_sym")
RATIOS = (1.0, 0.9, 0.8, 0.6)
PRESETS: dict[str, MeasureSettings] = {
    "quick": MeasureSettings(quality_tokens=256, speed_new_tokens=32, speed_repeats=1, answers=False),
    "standard": MeasureSettings(),
}
_MODE_TIPS = {
    "int4_sym": "INT4 symmetric: smallest and fastest",
    "int4_asym": "INT4 asymmetric: a zero point per group, a little more accurate",
    "nf4": "NF4: 4-bit normal-float levels",
    "int8_asym": "INT8 asymmetric, per-channel: close to float (ignores group sizes and ratios)",
    "int8_sym": "INT8 symmetric, per-channel (ignores group sizes and ratios)",
}


def _toggle(label: str, tooltip: str, value: bool = False) -> widgets.ToggleButton:
    return widgets.ToggleButton(
        value=value, description=label, tooltip=tooltip, layout=widgets.Layout(width="auto", min_width="64px")
    )


class QuantizationTuner(widgets.VBox):
    """Sweep modes x group sizes x ratios of ``source``'s float ``model`` and chart size/quality/speed."""

    model = traitlets.Instance(OVModel, allow_none=True, help="The float model whose facts shape the grid")
    source = traitlets.Instance(ModelSource, allow_none=True, help="What run_sweep exports (a cache hit)")
    runtime = traitlets.Instance(RuntimeConfig, help="Device and properties speed is measured with")
    records = traitlets.List(help="SweepRecords measured so far, the float reference first")
    compressed_model = traitlets.Instance(OVModel, allow_none=True, help="The measured model chosen")
    problem = traitlets.Unicode("", help="Why Run is unavailable (one sentence), or empty")
    state = traitlets.Enum(STATES, default_value=IDLE, help="State of the sweep")

    def __init__(
        self,
        model: OVModel | None = None,
        source: ModelSource | None = None,
        *,
        cache: Cache | None = None,
        ledger: Ledger | None = None,
        runtime: RuntimeConfig | None = None,
    ) -> None:
        self.cache = cache or Cache()
        self.ledger = ledger
        self.configs: list[CompressionConfig] = []
        self.skipped: list[tuple[str, str]] = []
        self._chosen_callbacks = CallbackDispatcher()
        self.log_output = widgets.Output(layout=widgets.Layout(max_height="200px", overflow="auto"))
        self.task = BackgroundTask("the sweep", self.log_output)
        self.mode_buttons = {m: _toggle(m, _MODE_TIPS[m], m == "int4_sym") for m in MODES}
        self.group_buttons: dict[int, widgets.ToggleButton] = {}
        self.group_row = widgets.HBox()
        self.ratio_buttons = {
            r: _toggle(f"{r:g}", f"ratio {r:g}: {r:.0%} of the layers in the 4-bit mode", r == 1.0)
            for r in RATIOS
        }
        self.preset = widgets.Dropdown(
            options=[
                ("Quick: 256 tokens of text, 1 speed run", "quick"),
                ("Standard: nbkit's defaults", "standard"),
            ],
            value="quick",
            description="Measure",
            tooltip="How much text the quality is measured on, and how often speed is timed",
            layout=widgets.Layout(width="420px"),
        )
        self.plan = widgets.HTML(tooltip="What Run will compress and measure")
        self.run_button = widgets.Button(
            description="Run sweep",
            icon="play",
            button_style="primary",
            layout=widgets.Layout(width="140px"),
            tooltip="Compress and measure every config (measured configs are reused from the ledger)",
        )
        self.run_button.on_click(lambda _: self.run())
        self.view = TaskView(self.task, idle_text="Prepare a model in the Model tab first.")
        self.figure = go.FigureWidget(pareto_figure([], title="Size vs quality vs speed"))
        self.figure.layout.height = 420
        # Hidden until the first record: an empty chart says nothing.
        self.results = widgets.VBox(layout=widgets.Layout(display="none", width="100%"))
        self.table = widgets.HTML(tooltip="Every measured config; * marks the Pareto front")
        self.choice = widgets.Dropdown(
            options=[],
            description="Chat with",
            layout=widgets.Layout(width="420px"),
            tooltip="A measured compressed model for the chat (or click its point on the chart)",
        )
        self.results.children = [self.figure, self.table, self.choice]
        self._watched = [*self.mode_buttons.values(), *self.ratio_buttons.values(), self.preset]
        row = widgets.Layout(flex_flow="row wrap")
        log_box = widgets.Accordion([self.log_output], titles=("Log",), selected_index=None)
        super().__init__(
            [
                widgets.HTML(title_html("Tune", "compress in several ways, measure, keep the best")),
                widgets.HBox(
                    [
                        widgets.HTML("<b>Modes</b>", layout=widgets.Layout(width="110px")),
                        *self.mode_buttons.values(),
                    ],
                    layout=row,
                ),
                widgets.HBox(
                    [
                        widgets.HTML("<b>Group sizes</b>", layout=widgets.Layout(width="110px")),
                        self.group_row,
                    ],
                    layout=row,
                ),
                widgets.HBox(
                    [
                        widgets.HTML("<b>Ratios</b>", layout=widgets.Layout(width="110px")),
                        *self.ratio_buttons.values(),
                    ],
                    layout=row,
                ),
                self.preset,
                self.plan,
                self.run_button,
                self.view,
                self.figure,
                self.table,
                self.choice,
                log_box,
            ]
        )
        for control in self._watched:
            control.observe(self._plan, names="value")
        self.choice.observe(self._on_choice, names="value")
        self.observe(self._on_model, names=["model", "source"])
        self.observe(self._on_records, names="records")
        self.task.observe(self._on_task_state, names="state")
        self._links = [traitlets.dlink((self.task, "state"), (self, "state"))]
        self.runtime = runtime or DEFAULT_RUNTIME
        self._closed = False
        with self.hold_trait_notifications():
            self.model, self.source = model, source
        self._on_model()

    # -- public -----------------------------------------------------------------------------------

    def run(self) -> bool:
        """Sweep the planned configs in the background; False (with the reason shown) when it cannot."""
        if self.task.running:
            self.view.notify("warn", "A sweep is running; wait for it or press Cancel.")
            return False
        self._plan()
        if self.problem or self.source is None:
            self.view.notify("error", self.problem or "Prepare a model in the Model tab first.")
            return False
        source, configs = self.source, list(self.configs)
        settings = dataclasses.replace(PRESETS[self.preset.value], runtime=self.runtime)
        self.records = []

        def work(reporter: ProgressReporter) -> Any:
            return run_sweep(
                source,
                configs,
                settings=settings,
                cache=self.cache,
                ledger=self.ledger,
                reporter=reporter,
                on_record=lambda record: self.set_trait("records", [*self.records, record]),
            )

        self.task.start(work, on_success=self._swept, message=f"Sweeping {len(configs)} configs")
        return True

    def cancel(self) -> bool:
        return self.task.cancel()

    def wait(self, timeout: float | None = None) -> str:
        return self.task.wait(timeout)

    def choose(self, label: str) -> OVModel:
        """Chat with the measured model named ``label`` (as the chart and the table name it)."""
        record = next((r for r in self.records if r.label == label), None)
        if record is None:
            raise ConfigError(
                f"No measured config named {label!r}; measured: {', '.join(r.label for r in self.records)}."
            )
        entry = Cache.read_entry(Path(record.model_path))
        if entry is None:
            raise ConfigError(f"{record.model_path} is no longer in the cache; run the sweep again.")
        model = OVModel(entry)
        self.compressed_model = model
        self._chosen_callbacks(model)
        return model

    def on_chosen(self, callback: Callable[[OVModel], Any], remove: bool = False) -> None:
        """(Un)register ``callback(model)``, called when a measured model is chosen for the chat."""
        self._chosen_callbacks.register_callback(callback, remove=remove)

    def close(self) -> None:
        if self.__dict__.get("_closed", True):
            super().close()
            return
        self._closed = True
        self.task.cancel()
        for link in self._links:
            link.unlink()
        for control in [*self._watched, *self.group_buttons.values()]:
            control.unobserve(self._plan, names="value")
        self.choice.unobserve(self._on_choice, names="value")
        self.unobserve(self._on_model, names=["model", "source"])
        self.unobserve(self._on_records, names="records")
        self.task.unobserve(self._on_task_state, names="state")
        self.view.close()
        close_tree(self)
        self.figure.close()
        super().close()

    # -- reacting ---------------------------------------------------------------------------------

    def _on_model(self, _: Any = None) -> None:
        for button in self.group_buttons.values():
            button.unobserve(self._plan, names="value")
            button.close()
        valid = self.model.architecture.valid_group_sizes() if self.model is not None else ()
        best = max((s for s in valid if s <= 128), default=-1)
        sizes = [*valid, -1]
        self.group_buttons = {
            s: _toggle(
                "per-channel" if s == -1 else str(s),
                "One scale per output channel"
                if s == -1
                else f"Groups of {s} input channels (valid for this model)",
                s == best,
            )
            for s in sizes
        }
        for button in self.group_buttons.values():
            button.observe(self._plan, names="value")
        self.group_row.children = list(self.group_buttons.values())
        if self.model is not None and self.task.state == IDLE:
            self.view.show("info", f"Ready to tune {self.model.source_name}: pick configs, then Run sweep.")
        self._plan()

    def _plan(self, _: Any = None) -> None:
        for button in [
            *self.mode_buttons.values(),
            *self.group_buttons.values(),
            *self.ratio_buttons.values(),
        ]:
            button.button_style, button.icon = ("info", "check") if button.value else ("", "")
        modes = [m for m, b in self.mode_buttons.items() if b.value]
        groups = [None if s == -1 else s for s, b in self.group_buttons.items() if b.value]
        ratios = [r for r, b in self.ratio_buttons.items() if b.value]
        problem = ""
        if self.model is None or self.source is None:
            problem = "Prepare a model in the Model tab first."
        elif not modes:
            problem = "Pick at least one mode."
        elif any(not CompressionConfig(mode=m, group_size=None).mode.is_int8 for m in modes) and not (
            groups and ratios
        ):
            problem = "4-bit modes need at least one group size and one ratio."
        self.configs, self.skipped = [], []
        if not problem and self.model is not None:
            try:
                self.configs, self.skipped = grid(
                    self.model.architecture, modes=modes, group_sizes=groups or [None], ratios=ratios or [1.0]
                )
            except ConfigError as exc:
                problem = first_sentence(exc)
            if not problem and not self.configs:
                problem = "None of these configs fits this model; see the reasons below."
        self.problem = problem
        self.run_button.disabled = bool(problem) or self.task.running
        self.run_button.tooltip = problem or "Compress and measure every config (measured configs are reused)"
        lines = [status_html("error", problem)] if problem else []
        if self.configs:
            labels = ", ".join(c.label for c in self.configs)
            lines.append(
                code_html(
                    labels,
                    f"{len(self.configs)} config(s) to compress and measure, plus the float reference:",
                )
            )
        for label, reason in self.skipped:
            lines.append(status_html("warn", f"Skipped {label}: {reason}"))
        self.plan.value = "".join(lines)

    def _on_records(self, _: Any = None) -> None:
        records: Sequence[SweepRecord] = self.records
        fresh = pareto_figure(records, title=f"Size vs quality vs speed ({len(records)} measured)")
        with self.figure.batch_update():
            for target, trace in zip(self.figure.data, fresh.data, strict=False):
                values = trace.to_plotly_json()
                values.pop("type", None)
                target.update(values, overwrite=True)
                target.cliponaxis = False  # labels of points at the edge stay whole
            self.figure.layout.title = fresh.layout.title
        for trace in self.figure.data:
            trace.on_click(self._on_point, append=False)
        self.table.value = table_html(TABLE_HEADER, table_rows(records), empty="Nothing measured yet.")
        self.results.layout.display = "flex" if records else "none"
        front = pareto_front(records)
        ordered = [*front, *(r for r in records if r not in front)]
        options = (
            [
                (("★ " if r in front else "") + r.label, r.label)
                for r in ordered
                if r.model_path != records[0].model_path
            ]
            if records
            else []
        )
        current = self.choice.value
        with self.hold_trait_notifications():
            self.choice.options = options
            self.choice.value = current if current in [v for _, v in options] else None

    def _on_point(self, trace: Any, points: Any, _: Any = None) -> None:
        for index in points.point_inds:
            label = trace.text[index]
            if label in [v for _, v in self.choice.options]:
                self.choice.value = label

    def _on_choice(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.choose(change["new"])

    def _on_task_state(self, change: dict[str, Any]) -> None:
        running = change["new"] == "running"
        for button in [
            *self.mode_buttons.values(),
            *self.group_buttons.values(),
            *self.ratio_buttons.values(),
        ]:
            button.disabled = running
        self.preset.disabled = running
        self._plan()

    def _swept(self, result: Any) -> str:
        self.records = list(result.all_records)
        front = pareto_front(self.records)
        best = next((r for r in front if r.model_path != result.reference.model_path), None)
        if best is not None:
            self.choice.value = best.label  # the smallest config on the front goes to the chat
        skipped = f"; skipped {len(result.skipped)}" if result.skipped else ""
        return f"Measured {len(result.records)} config(s) and the float reference{skipped}"
