"""ModelPicker: choose a model source, see its architecture and cache, prepare its float OpenVINO IR."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.artifacts import OVModel
from nbkit.config import ExportConfig
from nbkit.engines.openvino.export import export_openvino
from nbkit.errors import NbkitError
from nbkit.infra.cache import Cache
from nbkit.infra.progress import ProgressReporter
from nbkit.sources.architecture import ArchitectureFacts, read_architecture
from nbkit.sources.models import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    BundledSource,
    GGUFFile,
    HubModel,
    LocalFolder,
    ModelSource,
    cached_entries,
    describe_bundled,
    hub_unavailable_reason,
)

from ._common import (
    Choice,
    ChoiceButtons,
    card_layout,
    count,
    facts_html,
    first_sentence,
    mib,
    status_html,
    table_html,
    title_html,
)
from ._panel import Panel
from ._worker import IDLE, STATES, BackgroundTask, TaskView

HubCheck = Callable[[], "str | None"]
KINDS = ("bundled", "folder", "gguf", "hub")
_PLACEHOLDERS = {
    "folder": "/path/to/hugging-face-model-folder (config.json + *.safetensors)",
    "gguf": "/path/to/model.gguf",
    "hub": "organization/model, e.g. HuggingFaceTB/SmolLM2-135M-Instruct",
}
_STAGES = {
    "hf": "Hugging Face folder",
    "openvino-float": "float IR",
    "openvino-compressed": "compressed IR",
    "ort-genai": "ONNX Runtime GenAI build",
}


def default_hub_check() -> str | None:
    """Why hub ids cannot be used now, or None (:func:`nbkit.sources.models.hub_unavailable_reason`)."""
    return hub_unavailable_reason()


class ModelPicker(Panel):
    """Pick the bundled model (preselected), a local folder, a local GGUF file or a hub id, then Prepare.

    ``float_model`` holds the prepared float :class:`~nbkit.OVModel`; ``on_prepared(callback)``
    calls ``callback(model)`` each time one is ready.
    """

    kind = traitlets.Enum(KINDS, default_value="bundled", help="bundled, folder, gguf or hub")
    location = traitlets.Unicode("", help="Bundled name, folder path, .gguf path or hub id")
    source = traitlets.Instance(ModelSource, allow_none=True, help="The resolved model source")
    facts = traitlets.Instance(
        ArchitectureFacts, allow_none=True, help="Architecture of the source, if known"
    )
    float_model = traitlets.Instance(OVModel, allow_none=True, help="The prepared float OpenVINO IR")
    problem = traitlets.Unicode("", help="Why Prepare is unavailable (one sentence), or empty")
    state = traitlets.Enum(STATES, default_value=IDLE, help="State of the Prepare task")

    def __init__(
        self,
        model: str | None = DEFAULT_MODEL,
        *,
        cache: Cache | None = None,
        hub_check: HubCheck | None = None,
    ) -> None:
        self._start_registry()
        self.cache = cache or Cache()
        self.hub_problem = (hub_check or default_hub_check)()
        self._prepared_callbacks = self.dispatcher()
        self._selecting = False
        self.log_output = widgets.Output(layout=widgets.Layout(max_height="200px", overflow="auto"))
        self.task = self.own_task(BackgroundTask("Prepare", self.log_output))
        self.kind_buttons = ChoiceButtons(
            [
                Choice("bundled", "Bundled", "A model shipped as a Python package: works offline"),
                Choice(
                    "folder", "Local folder", "A Hugging Face model folder on this machine: works offline"
                ),
                Choice("gguf", "GGUF file", "A llama-family .gguf file, converted once: works offline"),
                Choice(
                    "hub",
                    "Hub id",
                    "A Hugging Face hub id, downloaded once (needs the network)",
                    unavailable=self.hub_problem or "",
                ),
            ],
            "bundled",
        )
        bundled = describe_bundled()
        self.bundled = widgets.Dropdown(
            options=[
                (f"{row['name']} — {'works offline' if row['installed'] else 'not installed'}", row["name"])
                for row in bundled
            ],
            value=DEFAULT_MODEL if DEFAULT_MODEL in BUNDLED_MODELS else None,
            description="Model",
            tooltip="Models shipped inside a pip package: no download, works offline",
            layout=widgets.Layout(width="460px"),
        )
        self.path_text = widgets.Text(
            description="Location",
            continuous_update=False,
            tooltip="Press Enter (or leave the field) to look the model up",
            layout=widgets.Layout(width="620px"),
        )
        self.note = widgets.HTML(tooltip="About this source")
        self.facts_view = widgets.HTML(tooltip="Read from config.json and the safetensors headers")
        self.cache_view = widgets.HTML(tooltip=f"Entries under {self.cache.root}")
        self.weight_format = widgets.Dropdown(
            options=[("fp32 (exact reference)", "fp32"), ("fp16 (half the size)", "fp16")],
            value="fp32",
            description="Float IR",
            tooltip="Precision of the float IR the compressors start from; fp32 is the exact reference",
            layout=widgets.Layout(width="280px"),
        )
        self.prepare_button = widgets.Button(
            description="Prepare",
            icon="play",
            button_style="primary",
            tooltip="Export the float OpenVINO IR (cached: instant the second time)",
            layout=widgets.Layout(width="140px"),
        )
        self.on_click(self.prepare_button, lambda _: self.prepare())
        self.view = TaskView(self.task, idle_text="Pick a model, then press Prepare.")
        self.refresh_button = widgets.Button(
            icon="refresh", tooltip="Re-read the cache", layout=widgets.Layout(width="40px")
        )
        self.on_click(self.refresh_button, lambda _: self.refresh())
        log_box = widgets.Accordion([self.log_output], titles=("Log",), selected_index=None)
        self.source_row = widgets.VBox([self.bundled])
        super().__init__(
            [
                widgets.HTML(title_html("Model", "pick a model and prepare its float OpenVINO IR")),
                self.kind_buttons,
                self.source_row,
                self.note,
                widgets.HBox(
                    [
                        widgets.VBox(
                            [widgets.HTML("<b>Architecture</b>"), self.facts_view],
                            layout=card_layout(width="42%"),
                        ),
                        widgets.VBox(
                            [
                                widgets.HBox([widgets.HTML("<b>In the cache</b>"), self.refresh_button]),
                                self.cache_view,
                            ],
                            layout=card_layout(width="56%", margin="0 0 8px 12px"),
                        ),
                    ],
                    layout=widgets.Layout(width="100%"),
                ),
                widgets.HBox([self.weight_format, self.prepare_button]),
                self.view,
                log_box,
            ]
        )
        self.own(self.view)
        self.dlink((self.task, "state"), (self, "state"))
        self.link((self.kind_buttons, "value"), (self, "kind"))
        self.watch(self.bundled, self._on_bundled, "value")
        self.watch(self.path_text, self._on_path, "value")
        self.watch(self, self._on_source_fields, ["kind", "location"])
        self.watch(self.task, self._on_task_state, "state")
        self.select(model or DEFAULT_MODEL)

    # -- public actions ---------------------------------------------------------------------------

    def select(self, spec: str | Path) -> None:
        """Select a model the way :func:`nbkit.resolve_source` reads a name, path or hub id."""
        text = str(spec).strip()
        path = Path(text).expanduser()
        if text in BUNDLED_MODELS:
            kind = "bundled"
        elif path.is_dir():
            kind = "folder"
        elif path.suffix.lower() == ".gguf":
            kind = "gguf"
        elif "/" in text and not path.exists() and not text.startswith(("/", ".", "~")):
            kind = "hub"
        else:
            kind = "folder"
        self._selecting = True
        try:
            self.kind = kind if kind != "hub" or not self.hub_problem else "folder"
            self.location = text
        finally:
            self._selecting = False
        self._resolve()

    def prepare(self) -> bool:
        """Export the float IR in the background; returns False (and says why) when it cannot start."""
        if self.task.running:
            self.view.notify("warn", "Already preparing a model; wait for it or press Cancel.")
            return False
        self._resolve()
        if self.source is None:
            self.view.notify("error", self.problem or "Pick a model first.")
            return False
        source, config = self.source, ExportConfig(weight_format=self.weight_format.value)

        def work(reporter: ProgressReporter) -> OVModel:
            return export_openvino(source, config, cache=self.cache, reporter=reporter)

        self.task.start(work, on_success=self._prepared, message=f"Preparing {source.name}")
        return True

    def cancel(self) -> bool:
        return self.task.cancel()

    def wait(self, timeout: float | None = None) -> str:
        return self.task.wait(timeout)

    def on_prepared(self, callback: Callable[[OVModel], Any], remove: bool = False) -> None:
        """(Un)register ``callback(model)``, called (in the worker thread) when a float IR is ready."""
        self._prepared_callbacks.register_callback(callback, remove=remove)

    def refresh(self) -> None:
        """Re-read the cache and the architecture facts of the selected source."""
        self._show_facts()
        self._show_cache()

    @property
    def status(self) -> str:
        return str(self.view.status.value)

    # -- reacting -----------------------------------------------------------------------------

    def _on_bundled(self, change: dict[str, Any]) -> None:
        if self.kind == "bundled" and change["new"]:
            self.location = change["new"]

    def _on_path(self, change: dict[str, Any]) -> None:
        if self.kind != "bundled":
            self.location = change["new"].strip()

    def _on_source_fields(self, change: dict[str, Any]) -> None:
        if self._selecting:
            return
        if change["name"] == "kind":
            # Switching kinds starts from that kind's own field.
            field = (self.bundled.value or "") if change["new"] == "bundled" else self.path_text.value.strip()
            if field != self.location:
                self.location = field  # observed again, as a location change
                return
        self._resolve()

    def _on_task_state(self, change: dict[str, Any]) -> None:
        busy = change["new"] == "running"
        self.prepare_button.disabled = busy or self.source is None
        for control in (self.kind_buttons, self.bundled, self.path_text, self.weight_format):
            if isinstance(control, ChoiceButtons):
                for value, button in control.buttons.items():
                    button.disabled = busy or bool(control.choices[value].unavailable)
            else:
                control.disabled = busy
        if not busy:
            self._show_cache()

    def _resolve(self) -> None:
        kind, text = self.kind, self.location.strip()
        self.source_row.children = [self.bundled] if kind == "bundled" else [self.path_text]
        if kind != "bundled":
            self.path_text.placeholder = _PLACEHOLDERS[kind]
            if self.path_text.value.strip() != text:
                self.path_text.value = text
        elif text in BUNDLED_MODELS and self.bundled.value != text:
            self.bundled.value = text
        source: ModelSource | None = None
        problem = ""
        try:
            if not text:
                problem = "Type a path or hub id first." if kind != "bundled" else "Pick a bundled model."
            elif kind == "bundled":
                source = BundledSource(BUNDLED_MODELS[text])
            elif kind == "folder":
                source = LocalFolder(text)
            elif kind == "gguf":
                source = GGUFFile(text)
            elif self.hub_problem:
                problem = f"Hub ids are unavailable: {self.hub_problem}."
            else:
                source = HubModel(text)
        except NbkitError as exc:
            problem = first_sentence(exc)
        except KeyError:
            problem = f"{text!r} is not a bundled model."
        self.source, self.problem = source, problem
        self.prepare_button.disabled = source is None or self.task.running
        self.prepare_button.tooltip = (
            problem or "Export the float OpenVINO IR (cached: instant the second time)"
        )
        if source is None:
            self.note.value = ""
            self.facts = None
            self.facts_view.value = table_html((), (), empty="No model selected.")
            self.cache_view.value = ""
            if not self.task.running:
                self.view.show("error" if text else "info", problem)
            return
        offline = "works offline" if source.works_offline else "needs the network the first time"
        self.note.value = status_html("ok" if source.works_offline else "warn", f"{source.name}: {offline}.")
        if not self.task.running:
            self.view.show("info", f"Ready to prepare {source.name}.")
        self.refresh()

    def _show_facts(self) -> None:
        source = self.source
        facts: ArchitectureFacts | None = None
        if source is not None:
            try:
                facts = self._known_facts(source)
            except NbkitError as exc:
                self.facts_view.value = status_html("error", first_sentence(exc))
                self.facts = None
                return
        self.facts = facts
        if facts is None:
            self.facts_view.value = table_html(
                (), (), empty="Known after Prepare (a GGUF or hub model is converted or downloaded first)."
            )
            return
        summary = facts.summary()
        valid = ", ".join(str(v) for v in facts.valid_group_sizes()) or "none: use per-channel"
        self.facts_view.value = facts_html(
            [
                ("Type", str(summary["model_type"])),
                ("Parameters", count(facts.num_parameters)),
                ("Layers", str(facts.num_layers)),
                ("Hidden size", str(facts.hidden_size)),
                ("Context", f"{facts.context_length} tokens"),
                ("Input channels", ", ".join(str(v) for v in facts.input_channel_sizes())),
                ("Valid 4-bit group sizes", valid),
            ]
        )

    def _known_facts(self, source: ModelSource) -> ArchitectureFacts | None:
        if (
            self.float_model is not None
            and self.float_model.entry.metadata.get("source") == source.identity()
        ):
            return self.float_model.architecture
        if isinstance(source, LocalFolder):
            return source.architecture(self.cache)
        for entry in cached_entries(source, self.cache):
            if entry.kind == "hf":
                return read_architecture(entry.path)
            if "architecture" in entry.metadata:
                return OVModel(entry).architecture
        return None

    def _show_cache(self) -> None:
        if self.source is None:
            self.cache_view.value = ""
            return
        rows = [
            (
                _STAGES.get(entry.kind, entry.kind),
                str(entry.metadata.get("label", "")),
                mib(entry.size_bytes),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(float(entry.manifest.get("created", 0)))),
                entry.path.name,
            )
            for entry in cached_entries(self.source, self.cache)
        ]
        self.cache_view.value = table_html(
            ("stage", "label", "size", "built", "folder"), rows, empty="Nothing cached for this model yet."
        )

    def _prepared(self, model: OVModel) -> str:
        self.float_model = model
        self.refresh()
        self._prepared_callbacks(model)
        return f"Float IR of {model.source_name} ready: {mib(model.weights_bytes)} of weights in {model.path}"
