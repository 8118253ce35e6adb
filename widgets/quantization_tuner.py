"""QuantizationTuner: compress one config or a grid, measure each, and pick one from the Pareto front.

The upper part is a :class:`CompressionForm` (every field of the config, impossible
combinations disabled with the reason, "show code"); **Compress & measure** runs that one
config. The sweep part builds a grid of modes x group sizes x ratios with
:func:`nbkit.measure.sweep.grid` (with the form's other options; configs invalid for the model are
listed with their reason, never run). Both run :func:`nbkit.measure.sweep.run_sweep` in a worker
thread and plot every record as it arrives on :func:`nbkit.measure.charts.pareto_figure` in a plotly
``FigureWidget``. Clicking a point, or the list below the chart, picks the model to chat with
and shows its config in the form.
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
from nbkit.config import CompressionConfig, CompressionMode, RuntimeConfig, largest_group_size
from nbkit.engines.openvino.runtime import DEFAULT_RUNTIME
from nbkit.errors import ConfigError
from nbkit.infra.cache import Cache
from nbkit.infra.ledger import Ledger
from nbkit.infra.progress import ProgressReporter
from nbkit.measure.charts import pareto_figure
from nbkit.measure.sweep import (
    TABLE_HEADER,
    MeasureSettings,
    SweepRecord,
    grid,
    pareto_front,
    run_sweep,
    table_rows,
)
from nbkit.sources.models import ModelSource

from ._common import close_tree, code_html, first_sentence, status_html, table_html, title_html
from ._worker import IDLE, STATES, BackgroundTask, TaskView
from .compression_form import MODE_TIPS, MODES, CompressionForm

RATIOS = (1.0, 0.9, 0.8, 0.6)
PRESETS: dict[str, MeasureSettings] = {
    "quick": MeasureSettings(quality_tokens=256, speed_new_tokens=32, speed_repeats=1, answers=False),
    "standard": MeasureSettings(),
}


def _toggle(label: str, tooltip: str, value: bool = False) -> widgets.ToggleButton:
    return widgets.ToggleButton(
        value=value, description=label, tooltip=tooltip, layout=widgets.Layout(width="auto", min_width="64px")
    )


class QuantizationTuner(widgets.VBox):
    """Compress ``source``'s float ``model`` one config or a grid at a time; chart size/quality/speed."""

    model = traitlets.Instance(OVModel, allow_none=True, help="The float model whose facts shape the configs")
    source = traitlets.Instance(ModelSource, allow_none=True, help="What run_sweep exports (a cache hit)")
    runtime = traitlets.Instance(RuntimeConfig, help="Device and properties speed is measured with")
    records = traitlets.List(help="SweepRecords measured so far, the float reference first")
    compressed_model = traitlets.Instance(OVModel, allow_none=True, help="The measured model chosen")
    problem = traitlets.Unicode("", help="Why Compress & measure is unavailable (one sentence), or empty")
    sweep_problem = traitlets.Unicode("", help="Why Run sweep is unavailable (one sentence), or empty")
    state = traitlets.Enum(STATES, default_value=IDLE, help="State of the running compression or sweep")

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
        self.task = BackgroundTask("the compression", self.log_output)
        self.form = CompressionForm()
        self.run_button = widgets.Button(
            description="Compress & measure",
            icon="play",
            button_style="primary",
            layout=widgets.Layout(width="180px"),
            tooltip="Compress the config above, then measure its size, quality and speed",
        )
        self.run_button.on_click(lambda _: self.run())
        self.mode_buttons = {m: _toggle(m, MODE_TIPS[m], m == "int4_sym") for m in MODES}
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
        self.plan = widgets.HTML(tooltip="What Run sweep will compress and measure")
        self.sweep_button = widgets.Button(
            description="Run sweep",
            icon="th",
            layout=widgets.Layout(width="140px"),
            tooltip="Compress and measure every config of the grid (measured configs are reused)",
        )
        self.sweep_button.on_click(lambda _: self.sweep())
        self.view = TaskView(self.task, idle_text="Prepare a model in the Model tab first.")
        self.figure = go.FigureWidget(pareto_figure([], title="Size vs quality vs speed"))
        self.figure.layout.height = 420
        self.table = widgets.HTML(tooltip="Every measured config; * marks the Pareto front")
        self.choice = widgets.Dropdown(
            options=[],
            description="Chat with",
            layout=widgets.Layout(width="420px"),
            tooltip="A measured compressed model for the chat (or click its point on the chart)",
        )
        # Hidden until the first record: an empty chart says nothing.
        self.results = widgets.VBox(
            [self.figure, self.table, self.choice], layout=widgets.Layout(display="none", width="100%")
        )
        self._toggles = [*self.mode_buttons.values(), *self.ratio_buttons.values()]
        row = widgets.Layout(flex_flow="row wrap")
        log_box = widgets.Accordion([self.log_output], titles=("Log",), selected_index=None)
        grid_box = widgets.VBox(
            [
                widgets.HTML(
                    "Every combination of the modes, group sizes and ratios picked here, "
                    "with the other options of the config above."
                ),
                _row("Modes", list(self.mode_buttons.values()), row),
                _row("Group sizes", [self.group_row], row),
                _row("Ratios", list(self.ratio_buttons.values()), row),
                self.plan,
                self.sweep_button,
            ]
        )
        self.sweep_box = widgets.Accordion([grid_box], titles=("Sweep a grid",), selected_index=None)
        super().__init__(
            [
                widgets.HTML(title_html("Tune", "compress, measure, keep the best")),
                self.form,
                widgets.HBox([self.run_button, self.preset], layout=row),
                self.sweep_box,
                self.view,
                self.results,
                log_box,
            ]
        )
        for control in [*self._toggles, self.form]:
            control.observe(self._plan, names="config" if control is self.form else "value")
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

    @property
    def config(self) -> CompressionConfig | None:
        """The config the form describes (resolved for the model), or None while it is invalid."""
        return self.form.config

    def run(self) -> bool:
        """Compress and measure the form's config in the background; False (reason shown) if it cannot."""
        self._plan()
        if self.problem or self.config is None:
            return self._refuse(self.problem or "The config is invalid.")
        config = self.config
        return self._start([config], f"Compressing and measuring {config.label}")

    def sweep(self) -> bool:
        """Compress and measure every config of the grid in the background; False if it cannot."""
        self._plan()
        if self.sweep_problem:
            return self._refuse(self.sweep_problem)
        return self._start(list(self.configs), f"Sweeping {len(self.configs)} configs")

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
            raise ConfigError(f"{record.model_path} is no longer in the cache; run it again.")
        model = OVModel(entry)
        self.compressed_model = model
        if "mode" in record.config and not self.task.running:
            self.form.load(CompressionConfig(**record.config))  # the form (and its code) follow the choice
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
        for control in [*self._toggles, *self.group_buttons.values()]:
            control.unobserve(self._plan, names="value")
        self.form.unobserve(self._plan, names="config")
        self.choice.unobserve(self._on_choice, names="value")
        self.unobserve(self._on_model, names=["model", "source"])
        self.unobserve(self._on_records, names="records")
        self.task.unobserve(self._on_task_state, names="state")
        self.view.close()
        self.form.close()
        close_tree(self)
        self.figure.close()
        super().close()

    # -- running ----------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> bool:
        if self.task.running:
            self.view.notify("warn", "Compression is running; wait for it or press Cancel.")
        else:
            self.view.notify("error", reason)
        return False

    def _start(self, configs: list[CompressionConfig], message: str) -> bool:
        if self.task.running:
            return self._refuse("")
        assert self.source is not None
        source = self.source
        settings = dataclasses.replace(PRESETS[self.preset.value], runtime=self.runtime)

        def work(reporter: ProgressReporter) -> Any:
            return run_sweep(
                source,
                configs,
                settings=settings,
                cache=self.cache,
                ledger=self.ledger,
                reporter=reporter,
                on_record=lambda record: self.set_trait("records", _merged(self.records, [record])),
            )

        self.task.start(work, on_success=self._finished, message=message)
        return True

    def _finished(self, result: Any) -> str:
        self.records = _merged(self.records, result.all_records)
        measured = {r.model_path for r in result.records}
        front = [r for r in pareto_front(self.records) if r.model_path in measured]
        best = front[0] if front else (result.records[0] if result.records else None)
        if best is not None:
            self.choice.value = best.label  # the smallest new config on the front goes to the chat
        skipped = f"; skipped {len(result.skipped)}" if result.skipped else ""
        return f"Measured {len(result.records)} config(s) and the float reference{skipped}"

    # -- reacting ---------------------------------------------------------------------------------

    def _on_model(self, _: Any = None) -> None:
        for button in self.group_buttons.values():
            button.unobserve(self._plan, names="value")
            button.close()
        if self.records and (self.model is None or self.records[0].model_path != str(self.model.path)):
            self.records = []  # another model: its measurements do not belong on this chart
        facts = self.model.architecture if self.model is not None else None
        valid = facts.valid_group_sizes() if facts is not None else ()
        best = largest_group_size(valid) or -1
        self.group_buttons = {
            s: _toggle(
                "per-channel" if s == -1 else str(s),
                "One scale per output channel"
                if s == -1
                else f"Groups of {s} input channels (valid for this model)",
                s == best,
            )
            for s in [*valid, -1]
        }
        for button in self.group_buttons.values():
            button.observe(self._plan, names="value")
        self.group_row.children = list(self.group_buttons.values())
        self.form.set_facts(
            facts,
            model_spec=self.source.spec if self.source is not None else "",
            float_xml=str(self.model.model_xml) if self.model is not None else "",
        )
        if self.model is not None and self.task.state == IDLE:
            self.view.show(
                "info", f"Ready to tune {self.model.source_name}: pick a config, then Compress & measure."
            )
        self._plan()

    def _plan(self, _: Any = None) -> None:
        for button in [*self._toggles, *self.group_buttons.values()]:
            button.button_style, button.icon = ("info", "check") if button.value else ("", "")
        no_model = self.model is None or self.source is None
        self.problem = "Prepare a model in the Model tab first." if no_model else self.form.problem
        self.run_button.disabled = bool(self.problem) or self.task.running
        self.run_button.tooltip = self.problem or "Compress the config above, then measure it"
        self.configs, self.skipped = self._grid(no_model)
        self.sweep_button.disabled = bool(self.sweep_problem) or self.task.running
        self.sweep_button.tooltip = self.sweep_problem or "Compress and measure every config of the grid"
        lines = [status_html("error", self.sweep_problem)] if self.sweep_problem else []
        if self.configs:
            labels = ", ".join(c.label for c in self.configs)
            lines.append(
                code_html(labels, f"{len(self.configs)} config(s) to compress and measure, plus float:")
            )
        lines += [status_html("warn", f"Skipped {label}: {reason}") for label, reason in self.skipped]
        self.plan.value = "".join(lines)

    def _grid(self, no_model: bool) -> tuple[list[CompressionConfig], list[tuple[str, str]]]:
        """The sweep's configs (and skipped ones); sets ``sweep_problem``."""
        modes = [m for m, b in self.mode_buttons.items() if b.value]
        groups = [None if s == -1 else s for s, b in self.group_buttons.items() if b.value]
        ratios = [r for r, b in self.ratio_buttons.items() if b.value]
        four_bit = any(not CompressionMode.parse(m).is_int8 for m in modes)
        problem = ""
        if no_model:
            problem = "Prepare a model in the Model tab first."
        elif not modes:
            problem = "Pick at least one mode."
        elif four_bit and not (groups and ratios):
            problem = "4-bit modes need at least one group size and one ratio."
        elif self.form.config is None:
            problem = f"Fix the config above first: {self.form.problem}"
        configs: list[CompressionConfig] = []
        skipped: list[tuple[str, str]] = []
        if not problem and self.model is not None:
            try:
                configs, skipped = grid(
                    self.model.architecture,
                    modes=modes,
                    group_sizes=groups or [None],
                    ratios=ratios or [1.0],
                    **self.form.options(),
                )
            except ConfigError as exc:
                problem = first_sentence(exc)
            if not problem and not configs:
                problem = "None of these configs fits this model; see the reasons below."
        self.sweep_problem = problem
        return configs, skipped

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
        options = [
            (("★ " if r in front else "") + r.label, r.label)
            for r in ordered
            if records and r.model_path != records[0].model_path
        ]
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
        for button in [*self._toggles, *self.group_buttons.values()]:
            button.disabled = running
        self.preset.disabled = running
        self.form.set_disabled(running)
        self._plan()


def _row(title: str, children: list[widgets.Widget], layout: widgets.Layout) -> widgets.HBox:
    return widgets.HBox(
        [widgets.HTML(f"<b>{title}</b>", layout=widgets.Layout(width="110px")), *children], layout=layout
    )


def _merged(old: Sequence[SweepRecord], new: Sequence[SweepRecord]) -> list[SweepRecord]:
    """``old`` with ``new`` added; a record of the same model replaces the older one in place."""
    merged = {r.model_path: r for r in old}
    for record in new:
        merged[record.model_path] = record
    return list(merged.values())
