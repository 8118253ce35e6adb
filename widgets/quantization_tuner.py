"""QuantizationTuner: build one config or a grid with either engine, measure each, pick from the Pareto front.

An engine switch (every engine of :mod:`nbkit.engines.registry`; one whose ``missing()`` gives
a reason is disabled with it) shows that engine's form: :class:`CompressionForm` for OpenVINO
+ NNCF, :class:`OliveForm` for Olive + ONNX Runtime GenAI. Each form disables what cannot
apply with the core's reason and shows the equivalent code. **Compress & measure** builds and
measures the form's config. The sweep part builds a grid of engines x modes x group sizes x
ratios x accuracy levels with :func:`nbkit.measure.sweep.grid` (each engine maps it onto what
it builds; what it cannot build is listed with the reason, never run). Both run
:func:`nbkit.measure.sweep.run_sweep` in a worker thread and plot every record as it arrives
on the one chart of :func:`nbkit.measure.charts.pareto_figure` (one trace per engine, updated
in place). Clicking a point, or the list below the chart, picks the model to chat with
(found with :func:`nbkit.engines.registry.model_at`) and shows its config in its engine's form.

Unless a runtime is given (the device selector's explicit choice), measurements pass
``MeasureSettings.runtime=None``: each model runs with what ``nbkit tune-device`` recorded for
it, else its engine's default, as ``nbkit sweep`` does, so a config measured here and on the
command line gets the same runtime and the same ledger record.
"""

from __future__ import annotations

import copy
import dataclasses
import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
import traitlets

from nbkit.artifacts import OVModel
from nbkit.config import CompressionConfig, CompressionMode, RuntimeConfig, largest_group_size
from nbkit.engines.ort.olive_config import ACCURACY_LEVELS, OliveExportConfig
from nbkit.engines.protocol import BuiltModel, Engine
from nbkit.engines.registry import (
    REFERENCE_ENGINE,
    engine_for_config,
    engine_of_model,
    engines,
    get_engine,
    model_at,
)
from nbkit.errors import ConfigError
from nbkit.infra.cache import Cache
from nbkit.infra.ledger import Ledger
from nbkit.infra.progress import ProgressReporter
from nbkit.measure.charts import is_reference, pareto_figure, size_quality_front
from nbkit.measure.pick import PICK_GROUP_SIZES, PICK_MODES, PICK_RATIOS, PickStep, option_variants
from nbkit.measure.sweep import (
    MEASUREMENT_KIND,
    TABLE_NOTE,
    MeasureSettings,
    SweepRecord,
    grid,
    recommend,
    record_summary,
    run_sweep,
    table_header,
    table_rows,
)
from nbkit.sources.models import ModelSource

from ._common import Choice, ChoiceButtons, code_html, first_sentence, status_html, table_html, title_html
from ._panel import Panel
from ._worker import IDLE, STATES, BackgroundTask, TaskView
from .compression_form import MODE_TIPS, CompressionForm
from .olive_form import ACCURACY_TIPS, OliveForm
from .pick_controls import PickControls

RATIOS = (1.0, 0.9, 0.8, 0.6)
PRESETS: dict[str, MeasureSettings] = {
    # Answers even in Quick (short ones): a learner should see where the greedy answers change.
    "quick": MeasureSettings(quality_tokens=256, speed_new_tokens=32, speed_repeats=1, answer_tokens=16),
    "standard": MeasureSettings(),
}
PRESET_LABELS = {
    "quick": "Quick: 256 tokens of text, 1 speed run, short answers",
    "standard": "Standard: nbkit's defaults",
}
# The grid's modes: NNCF's words, plus the float builds only Olive's ModelBuilder makes.
SWEEP_MODES = (
    *(mode.value for mode in CompressionMode if not mode.is_int8),
    *(mode.value for mode in CompressionMode if mode.is_int8),
    "fp16",
    "fp32",
)
_FLOAT_TIPS = {"fp16": "fp16: a half-precision float build", "fp32": "fp32: a full-precision float build"}
# The form that edits each config type: an engine without one cannot be picked in the switch.
FORMS: dict[type, type[CompressionForm] | type[OliveForm]] = {
    CompressionConfig: CompressionForm,
    OliveExportConfig: OliveForm,
}
EngineForm = CompressionForm | OliveForm
_HIDDEN = {"height": "0px", "overflow": "hidden", "visibility": "hidden"}
_SHOWN = {"height": "auto", "overflow": "visible", "visibility": "visible"}


def _toggle(label: str, tooltip: str, value: bool = False) -> widgets.ToggleButton:
    return widgets.ToggleButton(
        value=value, description=label, tooltip=tooltip, layout=widgets.Layout(width="auto", min_width="64px")
    )


def _preset_label(name: str, settings: MeasureSettings) -> str:
    runs = f"{settings.speed_repeats} speed run{'s' if settings.speed_repeats != 1 else ''}"
    answers = "" if settings.answers else ", no answers"
    return (
        f"{name.capitalize()}: {settings.quality_tokens} tokens of text, {runs} of "
        f"{settings.speed_new_tokens} tokens{answers}"
    )


def _engine_problem(engine: Engine) -> str:
    """Why ``engine`` cannot be picked here (its missing extra, or no form for its configs), or ""."""
    if engine.config_type not in FORMS:
        return f"the panels have no form for {engine.config_type.__name__} yet; use the command line"
    return engine.missing() or ""


def _mode_tip(mode: str) -> str:
    builders = [e.title for e in engines() if mode in e.modes]
    tip = MODE_TIPS.get(mode) or _FLOAT_TIPS.get(mode, mode)
    return f"{tip} — built by {' and '.join(builders) if builders else 'no engine'}"


class QuantizationTuner(Panel):
    """Build ``source``'s float ``model`` with either engine, one config or a grid; chart size/quality/speed."""

    engine = traitlets.Unicode(
        REFERENCE_ENGINE.name,
        help="The engine whose form is shown and whose config Compress & measure builds",
    )
    model = traitlets.Instance(
        OVModel, allow_none=True, help="The float reference export whose facts shape the configs"
    )
    source = traitlets.Instance(ModelSource, allow_none=True, help="What run_sweep builds from (a cache hit)")
    runtime = traitlets.Instance(
        RuntimeConfig,
        allow_none=True,
        help="Device and properties picked explicitly for speed, or None: each model's tuned runtime, "
        "else its engine's default (as nbkit sweep)",
    )
    records = traitlets.List(help="SweepRecords measured so far (either engine's), the float reference first")
    compressed_model = traitlets.Any(
        None,
        allow_none=True,
        help="The measured model the user chose for the chat (an OVModel or an OrtGenAIModel, the float "
        "reference included): set only by choose(), a click on the chart or the Chat with list",
    )
    latest_model = traitlets.Any(
        None,
        allow_none=True,
        help="The newest model a build or sweep measured (the smallest new one on the front): "
        "informational, it never goes to the chat by itself",
    )
    problem = traitlets.Unicode("", help="Why Compress & measure is unavailable (one sentence), or empty")
    sweep_problem = traitlets.Unicode("", help="Why Run sweep is unavailable (one sentence), or empty")
    state = traitlets.Enum(STATES, default_value=IDLE, help="State of the running build or sweep")
    pick_result = traitlets.Any(None, help="The last Pick for me search (a PickResult), or None")
    pick_problem = traitlets.Unicode("", help="Why Pick for me is unavailable (one sentence), or empty")
    client = traitlets.Any(
        None,
        allow_none=True,
        help="A dask.distributed Client: builds, sweeps and searches run as tasks on its cluster (None: here)",
    )
    worker_cache = traitlets.Unicode(
        None,
        allow_none=True,
        help="The cache folder of the cluster's workers ({worker}: each worker's name); None: each worker's own",
    )

    def __init__(
        self,
        model: OVModel | None = None,
        source: ModelSource | None = None,
        *,
        cache: Cache | None = None,
        ledger: Ledger | None = None,
        runtime: RuntimeConfig | None = None,
        presets: Mapping[str, MeasureSettings] | None = None,
        engine: str | None = None,
    ) -> None:
        """``presets`` adds measurement presets (name -> settings) to the Measure menu; the first
        added one is preselected (tests and small machines use it for short measurements)."""
        self._start_registry()
        self.cache = cache or Cache()
        self.ledger = ledger
        self.presets: dict[str, MeasureSettings] = {**PRESETS, **dict(presets or {})}
        self._choosing = False
        self.configs: list[Any] = []
        self.skipped: list[tuple[str, str]] = []
        self._chosen_callbacks = self.dispatcher()
        self.log_output = widgets.Output(layout=widgets.Layout(max_height="200px", overflow="auto"))
        self.task = self.own_task(BackgroundTask("the compression", self.log_output))
        self.engine_buttons = ChoiceButtons(
            [
                Choice(e.name, e.title, f"Build with {e.title}", unavailable=_engine_problem(e))
                for e in engines()
            ],
            REFERENCE_ENGINE.name,
        )
        self.forms: dict[str, EngineForm] = {
            e.name: FORMS[e.config_type]() for e in engines() if e.config_type in FORMS
        }
        self.form_box = widgets.VBox(list(self.forms.values()))
        self.run_button = widgets.Button(
            description="Compress & measure",
            icon="play",
            button_style="primary",
            layout=widgets.Layout(width="180px"),
            tooltip="Build the config above, then measure its size, quality and speed",
        )
        self.engine_toggles = {
            e.name: _toggle(e.title, _engine_problem(e) or f"Sweep with {e.title}", e is REFERENCE_ENGINE)
            for e in engines()
        }
        for name, button in self.engine_toggles.items():
            if _engine_problem(get_engine(name)):
                button.value, button.disabled = False, True
        self.mode_buttons = {m: _toggle(m, _mode_tip(m), m == "int4_sym") for m in SWEEP_MODES}
        self.group_buttons: dict[int, widgets.ToggleButton] = {}
        self.group_row = widgets.HBox()
        self.ratio_buttons = {
            r: _toggle(f"{r:g}", f"ratio {r:g}: {r:.0%} of the layers in the 4-bit mode", r == 1.0)
            for r in RATIOS
        }
        self.accuracy_buttons = {
            level: _toggle(
                str(level), f"{ACCURACY_TIPS[level]} (ONNX Runtime's int4 builds only)", level == 4
            )
            for level in ACCURACY_LEVELS
        }
        added = [name for name in self.presets if name not in PRESETS]
        self.preset = widgets.Dropdown(
            options=[
                (PRESET_LABELS.get(name) or _preset_label(name, self.presets[name]), name)
                for name in self.presets
            ],
            value=added[0] if added else "quick",
            description="Measure",
            tooltip="How much text the quality is measured on, and how often speed is timed",
            layout=widgets.Layout(width="500px"),
        )
        self.plan = widgets.HTML(tooltip="What Run sweep will build and measure")
        self.sweep_button = widgets.Button(
            description="Run sweep",
            icon="th",
            layout=widgets.Layout(width="140px"),
            tooltip="Build and measure every config of the grid (measured configs are reused)",
        )
        self.view = TaskView(self.task, idle_text="Prepare a model in the Model tab first.")
        # No fixed width: the chart follows its container (autosize), also after the tab is shown.
        self.figure = _chart_widget()
        self.table = widgets.HTML(
            tooltip="Every measured config; * marks the front on size, KL and speed together",
            layout=widgets.Layout(overflow="auto"),
        )
        self.table.add_class("nbkit-tuner-table")
        self.choice = widgets.Dropdown(
            options=[],
            description="Chat with",
            style={"description_width": "70px"},
            layout=widgets.Layout(width="480px"),
            tooltip="A measured model for the chat, the float reference included (or click its point)",
        )
        self.choice.add_class("nbkit-chat-with")
        self.chat_latest_button = widgets.Button(
            description="Chat with this",
            icon="comments",
            layout=widgets.Layout(width="auto", display="none"),
            tooltip="Chat with the model just measured",
        )
        self.chat_latest_button.add_class("nbkit-chat-latest")
        self.records_note = widgets.HTML()
        self.records_note.add_class("nbkit-records-note")
        # Every statistic of the chat's model (the table is the compact view; the ledger keeps all).
        self.details = widgets.HTML()
        self.details.add_class("nbkit-record-details")
        self.details_box = widgets.Accordion(
            [self.details], titles=("Every statistic of the chat's model",), selected_index=None
        )
        # Hidden (no height, but laid out at full width) until the first record: an empty chart says
        # nothing, and a chart drawn inside display:none would keep plotly's 700 px default width.
        self.results = widgets.VBox(
            [
                self.figure,
                widgets.HBox(
                    [self.choice, self.chat_latest_button], layout=widgets.Layout(align_items="center")
                ),
                self.records_note,
                self.table,
                self.details_box,
            ],
            layout=widgets.Layout(width="100%", **_HIDDEN),
        )
        self.results.add_class("nbkit-tuner-results")
        self._toggles = [
            *self.engine_toggles.values(),
            *self.mode_buttons.values(),
            *self.ratio_buttons.values(),
            *self.accuracy_buttons.values(),
        ]
        row = widgets.Layout(flex_flow="row wrap")
        log_box = widgets.Accordion([self.log_output], titles=("Log",), selected_index=None)
        grid_box = widgets.VBox(
            [
                widgets.HTML(
                    "Every combination of the engines, modes, group sizes, ratios and accuracy levels "
                    "picked here, with the other options of the OpenVINO config. Each engine builds what "
                    "it can; the rest is listed with the reason."
                ),
                _row("Engines", list(self.engine_toggles.values()), row),
                _row("Modes", list(self.mode_buttons.values()), row),
                _row("Group sizes", [self.group_row], row),
                _row("Ratios", list(self.ratio_buttons.values()), row),
                _row("Accuracy levels", list(self.accuracy_buttons.values()), row),
                self.plan,
                self.sweep_button,
            ]
        )
        self.sweep_box = widgets.Accordion([grid_box], titles=("Sweep a grid",), selected_index=None)
        self.pick_controls = PickControls()
        self.pick_box = widgets.Accordion([self.pick_controls], titles=("Pick for me",), selected_index=None)
        self.pick_box.add_class("nbkit-pick-box")
        # Whether the model chosen last should be brought forward in the chat (the dashboard reads
        # it): a click on the chart, the list or a button does; a finished Pick for me loads its
        # winner without taking the user away from the search's path.
        self.bring_chat_forward = True
        super().__init__(
            [
                widgets.HTML(title_html("Tune", "build, measure, keep the best")),
                _row("Engine", [self.engine_buttons], row),
                self.form_box,
                widgets.HBox([self.run_button, self.preset], layout=row),
                self.pick_box,
                self.sweep_box,
                self.view,
                self.results,
                log_box,
            ]
        )
        self.own(self.view, self.figure, self.pick_controls, *self.forms.values())
        self.on_click(self.run_button, lambda _: self.run())
        self.on_click(self.pick_controls.button, lambda _: self.pick())
        self.watch(self.pick_controls, self._plan, "problem")
        self.on_click(self.sweep_button, lambda _: self.sweep())
        self.on_click(self.chat_latest_button, lambda _: self.choose_latest())
        for control in self._toggles:
            self.watch(control, self._plan, "value")
        for form in self.forms.values():
            self.watch(form, self._plan, "config")
        self.link((self.engine_buttons, "value"), (self, "engine"))
        self.watch(self, self._on_engine, "engine")
        self.watch(self.choice, self._on_choice, "value")
        self.watch(self, self._on_model, ["model", "source"])
        self.watch(self, self._on_records, ["records", "compressed_model"])
        self.watch(self, self._on_latest, ["latest_model", "compressed_model"])
        self.watch(self.task, self._on_task_state, "state")
        self.dlink((self.task, "state"), (self, "state"))
        self.on_close(self._unwire_chart)
        self.runtime = runtime
        if engine is not None:
            self.engine = engine
        with self.hold_trait_notifications():
            self.model, self.source = model, source
        self._on_engine()
        self._on_model()

    # -- public -----------------------------------------------------------------------------------

    @property
    def form(self) -> EngineForm:
        """The form of the engine picked in the switch."""
        return self.forms[self.engine]

    @property
    def config(self) -> Any:
        """The config the shown form describes (resolved for the model), or None while it is invalid."""
        return self.form.config

    def measure_settings(self) -> MeasureSettings:
        """The settings the next run measures with: the preset, and ``runtime`` (None: tuned/default)."""
        return dataclasses.replace(self.presets[self.preset.value], runtime=self.runtime)

    def run(self) -> bool:
        """Build and measure the form's config in the background; False (reason shown) if it cannot."""
        self._plan()
        if self.problem or self.config is None:
            return self._refuse(self.problem or "The config is invalid.")
        config = self.config
        engine = engine_for_config(config)
        return self._start([config], f"Building and measuring {engine.name} {engine.label(config)}")

    def sweep(self) -> bool:
        """Build and measure every config of the grid in the background; False if it cannot."""
        self._plan()
        if self.sweep_problem:
            return self._refuse(self.sweep_problem)
        return self._start(list(self.configs), f"Sweeping {len(self.configs)} configs")

    def pick(self) -> bool:
        """Search for the best config meeting the Pick-for-me target in the background; False if it cannot.

        The search (``run_sweep`` with a ``target``) measures configs cheapest first, drawing each
        on the chart; the winner goes into its engine's form and the chat (see ``pick_result``).
        """
        self._plan()
        target = self.pick_controls.target()
        if self.pick_problem or target is None:
            return self._refuse(self.pick_problem or self.pick_controls.problem)
        configs, _ = self._pick_grid()
        self.pick_controls.show_steps([])
        self.pick_controls.message.value = ""
        return self._start(
            configs,
            f"Searching {len(configs)} configs for the {'smallest' if self.pick_controls.optimize == 'size' else 'fastest'} "
            f"meeting {target}",
            target=target,
            optimize=self.pick_controls.optimize,
        )

    def cancel(self) -> bool:
        return self.task.cancel()

    def wait(self, timeout: float | None = None) -> str:
        return self.task.wait(timeout)

    def record(self, which: str | SweepRecord) -> SweepRecord:
        """The measured record named ``which``: its model folder, or its label when that is unique."""
        if isinstance(which, SweepRecord):
            return which
        by_path = [r for r in self.records if r.model_path == which]
        if by_path:
            return by_path[0]
        by_label = [r for r in self.records if r.label == which]
        if len(by_label) == 1:
            return by_label[0]
        if by_label:
            raise ConfigError(
                f"{which!r} names a model of {len(by_label)} engines; choose it by its folder: "
                + ", ".join(r.model_path for r in by_label)
            )
        raise ConfigError(
            f"No measured config named {which!r}; measured: {', '.join(r.label for r in self.records)}."
        )

    def choose(self, which: str | SweepRecord, *, bring_forward: bool = True) -> BuiltModel:
        """Chat with a measured model (a record, its folder or its label): either engine's, or the float one.

        The user's choice: only this (and the chart and list that call it) sets ``compressed_model``.
        Its config goes into its engine's form (and the switch follows), unless work runs.
        ``bring_forward=False`` loads it into the chat without asking the dashboard to show the chat.
        """
        record = self.record(which)
        model = model_at(record.model_path)
        if model is None:
            raise ConfigError(f"{record.model_path} is no longer in the cache; run it again.")
        self.bring_chat_forward = bring_forward
        try:
            self.compressed_model = model
        finally:
            self.bring_chat_forward = True
        if self.choice.value != record.model_path and record.model_path in self.offered():
            self._choosing = True  # the list follows the choice without choosing a second time
            try:
                self.choice.value = record.model_path
            finally:
                self._choosing = False
        if not self.task.running and not self._is_reference(record):
            self._load_config(record)
        self._chosen_callbacks(model)
        return model

    def choose_latest(self) -> BuiltModel | None:
        """Chat with the model the last build or sweep measured (``latest_model``), if any."""
        if self.latest_model is None:
            return None
        return self.choose(str(self.latest_model.path))

    def redraw_chart(self) -> None:
        """Draw the chart anew, at its container's width: one first drawn while its tab was hidden
        keeps plotly's 700 px default (the dashboard calls this when the Tune tab is shown)."""
        old = self.figure
        for trace in old.data:
            trace.on_click(None)
        self.figure = _chart_widget()
        self.own(self.figure)
        self.results.children = [self.figure, *self.results.children[1:]]
        old.close()
        self._on_records()

    def clear_records(self) -> None:
        """Take every point off the chart (the ledger keeps them: preparing the model again shows them)."""
        self.records = []

    def on_chosen(self, callback: Callable[[BuiltModel], Any], remove: bool = False) -> None:
        """(Un)register ``callback(model)``, called when a measured model is chosen for the chat."""
        self._chosen_callbacks.register_callback(callback, remove=remove)

    # -- running ----------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> bool:
        if self.task.running:
            self.view.notify("warn", "Compression is running; wait for it or press Cancel.")
        else:
            self.view.notify("error", reason)
        return False

    def _start(self, configs: list[Any], message: str, *, target: Any = None, optimize: str = "size") -> bool:
        if self.task.running:
            return self._refuse("")
        assert self.source is not None
        source = self.source
        settings = self.measure_settings()
        client, worker_cache = self.client, self.worker_cache if self.client is not None else None
        steps: list[PickStep] = []

        def on_step(step: PickStep) -> None:
            steps.append(step)
            self.pick_controls.show_steps(steps)

        def work(reporter: ProgressReporter) -> Any:
            return run_sweep(
                source,
                configs,
                settings=settings,
                cache=self.cache,
                ledger=self.ledger,
                reporter=reporter,
                on_record=lambda record: self.set_trait("records", _merged(self.records, [record])),
                target=target,
                optimize=optimize,
                on_step=on_step if target is not None else None,
                client=client,
                worker_cache=worker_cache,
            )

        self.task.start(work, on_success=self._finished, message=message)
        return True

    def _finished(self, result: Any) -> str:
        if result.pick is not None:
            return self._picked(result)
        return self._swept(result)

    def _picked(self, result: Any) -> str:
        """A finished search: the path and conclusion shown, the winner in its form and the chat."""
        self.records = _merged(self.records, result.all_records)
        self.pick_result = result.pick
        self.pick_controls.show_result(result.pick)
        winner = result.pick.winner
        if winner is None:
            return result.pick.conclusion()
        self.latest_model = model_at(winner.model_path)
        self._load_config(winner)
        self.choose(winner, bring_forward=False)
        return f"{result.pick.conclusion()} It is loaded into the form and the chat."

    def _swept(self, result: Any) -> str:
        self.records = _merged(self.records, result.all_records)
        measured = {r.model_path for r in result.records}
        front = [r for r in size_quality_front(self.records) if r.model_path in measured]
        best = front[0] if front else (result.records[0] if result.records else None)
        # The smallest new config on the front is offered ("Chat with this"), never switched to:
        # the chat keeps the model the user picked.
        self.latest_model = model_at(best.model_path) if best is not None else None
        skipped = f"; skipped {len(result.skipped)}" if result.skipped else ""
        offer = f"; {best.label} is on the chart (click it, or Chat with this)" if best is not None else ""
        return f"Measured {len(result.records)} config(s) and the float reference{skipped}{offer}"

    # -- reacting ---------------------------------------------------------------------------------

    @traitlets.validate("engine")
    def _check_engine(self, proposal: traitlets.Bunch) -> str:
        name = get_engine(str(proposal["value"])).name  # "olive" names ort; unknown names fail here
        reason = _engine_problem(get_engine(name))
        if reason:
            raise traitlets.TraitError(f"{get_engine(name).title} is unavailable: {reason}")
        return name

    @traitlets.validate("compressed_model")
    def _check_model(self, proposal: traitlets.Bunch) -> Any:
        model = proposal["value"]
        if model is not None:
            engine_of_model(model)  # what no engine runs cannot go to the chat
        return model

    def _on_engine(self, _: Any = None) -> None:
        for name, form in self.forms.items():
            form.layout.display = "flex" if name == self.engine else "none"
        self._plan()

    def _on_model(self, _: Any = None) -> None:
        for button in self.group_buttons.values():
            self.unwatch(button, self._plan, "value")
            button.close()
        self._show_recorded()
        facts = self.model.architecture if self.model is not None else None
        valid = facts.valid_group_sizes() if facts is not None else ()
        best = largest_group_size(valid) or -1
        self.group_buttons = {
            s: _toggle(
                "per-channel" if s == -1 else str(s),
                "One scale per output channel (NNCF; ONNX Runtime takes blocks only)"
                if s == -1
                else f"Groups (ONNX Runtime: blocks) of {s} input channels, valid for this model",
                s == best,
            )
            for s in [*valid, -1]
        }
        for button in self.group_buttons.values():
            self.watch(button, self._plan, "value")
        self.group_row.children = list(self.group_buttons.values())
        spec = self.source.spec if self.source is not None else ""
        float_xml = str(self.model.model_xml) if self.model is not None else ""
        for form in self.forms.values():
            form.set_facts(facts, model_spec=spec, float_xml=float_xml)
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
        self.run_button.tooltip = self.problem or "Build the config above, then measure it"
        self.configs, self.skipped = self._grid(no_model)
        self.sweep_button.disabled = bool(self.sweep_problem) or self.task.running
        self.sweep_button.tooltip = self.sweep_problem or "Build and measure every config of the grid"
        lines = [status_html("error", self.sweep_problem)] if self.sweep_problem else []
        if self.configs:
            labels = ", ".join(
                f"{engine_for_config(c).name} {engine_for_config(c).label(c)}" for c in self.configs
            )
            lines.append(
                code_html(labels, f"{len(self.configs)} config(s) to build and measure, plus float:")
            )
        lines += [status_html("warn", f"Skipped {label}: {reason}") for label, reason in self.skipped]
        self.plan.value = "".join(lines)
        self.pick_problem = self._pick_grid_problem(no_model)
        self.pick_controls.button.disabled = bool(self.pick_problem) or self.task.running
        self.pick_controls.button.tooltip = (
            self.pick_problem or "Search for the best config meeting the target"
        )

    def _pick_grid_problem(self, no_model: bool) -> str:
        if no_model:
            return "Prepare a model in the Model tab first."
        if self.pick_controls.problem:
            return self.pick_controls.problem
        try:
            configs, _ = self._pick_grid()
        except ConfigError as exc:
            return first_sentence(exc)
        return "" if configs else "No configuration of the search fits this model or the ticked engines."

    def _pick_grid(self) -> tuple[list[Any], list[tuple[str, str]]]:
        """The configs Pick for me searches: nbkit's search grid on the ticked engines, with the
        OpenVINO form's other options and each data-aware option the user asked to try."""
        assert self.model is not None
        chosen_engines = [name for name, b in self.engine_toggles.items() if b.value]
        if not chosen_engines:
            raise ConfigError("Tick at least one engine in the sweep grid.")
        nncf_form = self.forms.get(REFERENCE_ENGINE.name)
        base = nncf_form.options() if nncf_form is not None and nncf_form.config is not None else {}
        levels = [level for level, b in self.accuracy_buttons.items() if b.value] or [4]
        configs: list[Any] = []
        skipped: list[tuple[str, str]] = []
        for variant in option_variants(self.pick_controls.data_aware):
            found, left_out = grid(
                self.model.architecture,
                engines=chosen_engines,
                modes=PICK_MODES,
                group_sizes=PICK_GROUP_SIZES,
                ratios=PICK_RATIOS,
                accuracy_levels=levels,
                **{**base, **variant},
            )
            configs += found
            skipped += left_out
        return configs, skipped

    def _grid(self, no_model: bool) -> tuple[list[Any], list[tuple[str, str]]]:
        """The sweep's configs (and skipped ones, with why); sets ``sweep_problem``."""
        chosen_engines = [name for name, b in self.engine_toggles.items() if b.value]
        modes = [m for m, b in self.mode_buttons.items() if b.value]
        groups = [None if s == -1 else s for s, b in self.group_buttons.items() if b.value]
        ratios = [r for r, b in self.ratio_buttons.items() if b.value]
        levels = [level for level, b in self.accuracy_buttons.items() if b.value]
        four_bit = any(m not in _FLOAT_TIPS and not CompressionMode.parse(m).is_int8 for m in modes)
        nncf_form = self.forms.get(REFERENCE_ENGINE.name)
        problem = ""
        if no_model:
            problem = "Prepare a model in the Model tab first."
        elif not chosen_engines:
            problem = "Pick at least one engine."
        elif not modes:
            problem = "Pick at least one mode."
        elif four_bit and not (groups and ratios):
            problem = "4-bit modes need at least one group size and one ratio."
        elif four_bit and not levels:
            problem = "4-bit modes need at least one accuracy level (ONNX Runtime's int4 compute type)."
        elif nncf_form is not None and nncf_form.config is None:
            problem = f"Fix the OpenVINO config first: {nncf_form.problem}"
        configs: list[Any] = []
        skipped: list[tuple[str, str]] = []
        if not problem and self.model is not None:
            try:
                configs, skipped = grid(
                    self.model.architecture,
                    engines=chosen_engines,
                    modes=modes,
                    group_sizes=groups or [None],
                    ratios=ratios or [1.0],
                    accuracy_levels=levels or [4],
                    **(nncf_form.options() if nncf_form is not None else {}),
                )
            except ConfigError as exc:
                problem = first_sentence(exc)
            if not problem and not configs:
                problem = "None of these configs fits this model; see the reasons below."
        self.sweep_problem = problem
        return configs, skipped

    def _on_records(self, _: Any = None) -> None:
        records: Sequence[SweepRecord] = self.records
        # Until the user chooses, the chat (of the dashboard) talks to the float reference.
        if self.compressed_model is not None:
            chosen: str | None = str(self.compressed_model.path)
        else:
            chosen = str(self.model.path) if self.model is not None else None
        fresh = pareto_figure(
            records, title=f"Size vs quality vs speed ({len(records)} measured)", chosen=chosen
        )
        with self.figure.batch_update():
            for target, trace in zip(self.figure.data, fresh.data, strict=False):
                values = trace.to_plotly_json()
                values.pop("type", None)
                target.update(values, overwrite=True)
                target.cliponaxis = False  # labels of points at the edge stay whole
            for name in ("title", "xaxis", "yaxis", "shapes", "annotations"):
                self.figure.layout[name] = fresh.layout[name]
        # What a view created later renders from (plotly does the same when a figure is displayed
        # on its own): the edits above reach only views that exist already, and the dashboard
        # fills the chart from the ledger before it is displayed.
        self.figure._widget_layout = copy.deepcopy(self.figure._layout_obj._props)
        self.figure._widget_data = copy.deepcopy(self.figure._data)
        for trace in self.figure.data:
            trace.on_click(self._on_point, append=False)
        recommendation = recommend(records)
        self.table.value = (
            table_html(table_header(records), table_rows(records), empty="Nothing measured yet.")
            + (f'<div style="color:#57606a;font-size:90%">{html.escape(TABLE_NOTE)}</div>' if records else "")
            + (
                f'<div class="nbkit-recommendation" style="margin-top:4px">{html.escape(recommendation.text())}</div>'
                if recommendation is not None
                else ""
            )
        )
        unanswered = [r for r in records if r.answers is None]
        self.records_note.value = (
            status_html(
                "info",
                'answers "-": not measured for '
                + ", ".join(r.label for r in unanswered[:4])
                + ("…" if len(unanswered) > 4 else "")
                + " (its preset skips them); measure it again with Quick or Standard to compare its "
                "greedy answers with the float model's.",
            )
            if unanswered
            else ""
        )
        shown = next((r for r in records if r.model_path == chosen), None)
        self.details.value = code_html(record_summary(shown)) if shown is not None else ""
        for name, value in (_SHOWN if records else _HIDDEN).items():
            setattr(self.results.layout, name, value)
        front = size_quality_front(records)
        references = [r for r in records if self._is_reference(r)]
        ordered = [*references, *front, *(r for r in records if r not in front and r not in references)]
        options = [(self._option_label(r, front), r.model_path) for r in ordered]
        # The list follows the chat's model; changing its options never chooses one by itself.
        current = chosen if chosen in [v for _, v in options] else None
        self._choosing = True
        try:
            with self.hold_trait_notifications():
                self.choice.options = options
                self.choice.value = current
        finally:
            self._choosing = False

    def _on_latest(self, _: Any = None) -> None:
        latest = self.latest_model
        offer = latest is not None and (
            self.compressed_model is None or str(self.compressed_model.path) != str(latest.path)
        )
        self.chat_latest_button.layout.display = "" if offer else "none"
        if latest is not None:
            self.chat_latest_button.description = f"Chat with {latest.label}"
            self.chat_latest_button.tooltip = f"Chat with {latest.label}, measured last ({latest.engine})"

    def _on_point(self, trace: Any, points: Any, _: Any = None) -> None:
        """A click on the chart: the point's model (customdata[0] is its folder) goes to the chat."""
        customdata = trace.customdata if trace.customdata is not None else ()
        for index in points.point_inds:
            if index >= len(customdata):
                continue  # the Pareto line: its points are the engines' points, clicked there
            path = customdata[index][0]
            if path in self.offered():
                self.choose(path)  # also when the list shows it already: the chat may hold another

    def _on_choice(self, change: dict[str, Any]) -> None:
        if change["new"] and not self._choosing:
            self.choose(change["new"])

    def _on_task_state(self, change: dict[str, Any]) -> None:
        running = change["new"] == "running"
        for button in [*self._toggles, *self.group_buttons.values()]:
            button.disabled = running
        for name, button in self.engine_toggles.items():
            button.disabled = running or bool(_engine_problem(get_engine(name)))
        for value, button in self.engine_buttons.buttons.items():
            button.disabled = running or bool(self.engine_buttons.choices[value].unavailable)
        self.preset.disabled = running
        self.pick_controls.set_disabled(running)
        for form in self.forms.values():
            form.set_disabled(running)
        self._plan()

    # -- helpers ----------------------------------------------------------------------------------

    def offered(self) -> list[str]:
        """The model folders the chat list offers (every measured model, the float reference first)."""
        return [value for _, value in self.choice.options]

    def _is_reference(self, record: SweepRecord) -> bool:
        return is_reference(record) or (self.model is not None and record.model_path == str(self.model.path))

    def _option_label(self, record: SweepRecord, front: Sequence[SweepRecord]) -> str:
        title = get_engine(record.engine).title
        if self._is_reference(record):
            return f"Float reference: {record.label} ({title})"
        return ("★ " if record in front else "") + f"{title}: {record.label}"

    def _show_recorded(self) -> None:
        """Show the model's measurements the ledger already holds (a notebook above, an earlier
        session, the command line), with the points of this session; another model's points go
        (the ledger keeps them: preparing that model again brings them back)."""
        if self.model is None:
            return
        mine = [r for r in self.records if r.model == self.model.source_name]
        recorded = recorded_measurements(self.ledger or Ledger(cache=self.cache), self.model)
        merged = _merged(recorded, mine)
        if [r.model_path for r in merged] != [r.model_path for r in self.records] or merged != self.records:
            self.records = merged
        if self.latest_model is not None and self.latest_model.source_name != self.model.source_name:
            self.latest_model = None

    def _load_config(self, record: SweepRecord) -> None:
        """Show ``record``'s config in its engine's form, and switch to that engine."""
        engine = get_engine(record.engine)
        form = self.forms.get(engine.name)
        if form is None or _engine_problem(engine):
            return
        try:
            config = engine.config_from_dict(record.config)
        except (ConfigError, TypeError):  # a record of an older nbkit: the chart still works
            return
        self.engine = engine.name
        form.load(config)  # type: ignore[arg-type]

    def _unwire_chart(self) -> None:
        for trace in self.figure.data:
            trace.on_click(None)
        for button in self.group_buttons.values():
            self.unwatch(button, self._plan, "value")


def _chart_widget() -> go.FigureWidget:
    """An empty chart; no fixed width: it follows its container (autosize, responsive)."""
    figure = go.FigureWidget(pareto_figure([], title="Size vs quality vs speed"))
    figure.layout.height = 440
    figure._config = {**figure._config, "responsive": True}
    return figure


def _row(title: str, children: list[widgets.Widget], layout: widgets.Layout) -> widgets.HBox:
    return widgets.HBox(
        [widgets.HTML(f"<b>{title}</b>", layout=widgets.Layout(width="110px")), *children], layout=layout
    )


def recorded_measurements(ledger: Ledger, model: OVModel) -> list[SweepRecord]:
    """The ledger's newest measurement of each still-cached model built from ``model``'s source,
    the float reference ``model`` first (what the chart showed when they were measured)."""
    newest: dict[str, SweepRecord] = {}
    for data in ledger.records(MEASUREMENT_KIND, model=model.source_name):
        try:
            record = SweepRecord.from_dict(data)
        except (KeyError, TypeError, ValueError):  # a line of an older nbkit: skipped, never fatal
            continue
        newest.pop(record.model_path, None)  # re-inserted: the dict keeps the newest last
        newest[record.model_path] = record
    reference = str(model.path)
    kept = [r for path, r in newest.items() if path == reference or model_at(path) is not None]
    return sorted(kept, key=lambda r: r.model_path != reference)


def _merged(old: Sequence[SweepRecord], new: Sequence[SweepRecord]) -> list[SweepRecord]:
    """``old`` with ``new`` added; a record of the same model replaces the older one in place."""
    merged = {r.model_path: r for r in old}
    for record in new:
        merged[record.model_path] = record
    return list(merged.values())
