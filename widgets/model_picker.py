"""ModelPicker: choose a model source, prepare its float OpenVINO IR, see its architecture and cache.

The primary action comes first (source, Prepare, progress); the architecture card and the
cache table (collapsed, one short row per entry) follow. A float IR already in the cache is
adopted when the panel is made, with the export's own cache lookup: nothing is rebuilt.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.artifacts import OVModel
from nbkit.config import ExportConfig
from nbkit.engines.openvino.export import export_openvino
from nbkit.errors import NbkitError
from nbkit.finetuning.run import FinetuneResult, finetuned_models
from nbkit.infra.cache import (
    FINETUNED_KIND,
    HF_KIND,
    NNCF_STATISTICS_KIND,
    OPENVINO_COMPRESSED_KIND,
    OPENVINO_FLOAT_KIND,
    OPENVINO_QUANTIZED_KIND,
    ORT_GENAI_KIND,
    Cache,
    CacheEntry,
    find_built,
)
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

log = logging.getLogger(__name__)

HubCheck = Callable[[], "str | None"]
KINDS = ("bundled", "finetuned", "folder", "gguf", "hub")
# What each kind of typed location asks for, in the text box and when it is empty.
_PLACEHOLDERS = {
    "folder": "/path/to/model-folder (holding config.json and *.safetensors)",
    "gguf": "/path/to/model.gguf",
    "hub": "organization/model, e.g. HuggingFaceTB/SmolLM2-135M-Instruct",
}
_EMPTY_PROMPTS = {
    "bundled": "Pick a bundled model.",
    "finetuned": "Pick a fine-tuned model.",
    "folder": "Type the path of a model folder on this machine (one holding config.json).",
    "gguf": "Type the path of a .gguf file on this machine.",
    "hub": "Type a hub id such as organization/model.",
}
# Short names of the cache kinds for the table (CACHE_KINDS has the long descriptions).
_KIND_LABELS = {
    HF_KIND: "Hugging Face folder",
    OPENVINO_FLOAT_KIND: "OpenVINO float",
    OPENVINO_COMPRESSED_KIND: "OpenVINO compressed",
    OPENVINO_QUANTIZED_KIND: "OpenVINO INT8 (PTQ)",
    NNCF_STATISTICS_KIND: "NNCF statistics",
    ORT_GENAI_KIND: "ONNX Runtime GenAI",
    FINETUNED_KIND: "fine-tuned",
}
_PREPARE_TIP = "Export the float OpenVINO IR (cached: instant the second time)"
_NO_FINETUNED = "none in this cache yet: `nbkit finetune` (or notebook 10) makes one"
_CELL = "padding:2px 12px 2px 0;text-align:left;white-space:nowrap"


def default_hub_check() -> str | None:
    """Why hub ids cannot be used now, or None (:func:`nbkit.sources.models.hub_unavailable_reason`)."""
    return hub_unavailable_reason()


def built_when(entry: CacheEntry, now: float | None = None) -> str:
    """When ``entry`` was built, in one short form: "Nov 30 14:05", with the year if not this one."""
    created = time.localtime(float(entry.manifest.get("created", 0)))
    this_year = time.localtime(now if now is not None else time.time()).tm_year
    return time.strftime("%b %d %H:%M" if created.tm_year == this_year else "%Y-%m-%d", created)


def entry_row(entry: CacheEntry) -> tuple[str, str, str, str, str]:
    """(model, kind, format, size, built) of a cache entry: readable names, no folder hashes."""
    model = str(entry.metadata.get("source_name") or entry.manifest.get("name") or entry.kind)
    kind = _KIND_LABELS.get(entry.kind, entry.kind)
    return model, kind, str(entry.metadata.get("label", "")), mib(entry.size_bytes), built_when(entry)


def cache_table_html(entries: Sequence[CacheEntry], empty: str) -> str:
    """One short row per entry, no folder hashes: the entry's full folder is its row's tooltip."""
    if not entries:
        return f'<div style="color:#57606a;font-style:italic">{html.escape(empty)}</div>'
    header = "".join(
        f'<th style="{_CELL};border-bottom:1px solid #d0d7de">{name}</th>'
        for name in ("model", "kind", "format", "size", "built")
    )
    rows = "".join(
        f'<tr title="{html.escape(str(entry.path))}">'
        + "".join(f'<td style="{_CELL}">{html.escape(cell)}</td>' for cell in entry_row(entry))
        + "</tr>"
        for entry in entries
    )
    return (
        '<div style="overflow-x:auto"><table style="border-collapse:collapse;font-size:13px">'
        f"<tr>{header}</tr>{rows}</table></div>"
    )


def finetuned_label(result: FinetuneResult) -> str:
    """How a fine-tuned model is named in the picker: its base model, what it learned, when."""
    metadata = result.entry.metadata
    base = str(metadata.get("source_name") or "model")
    label = str(metadata.get("label") or result.path.name)
    return f"{base} + {label} ({built_when(result.entry)})"


class ModelPicker(Panel):
    """Pick the bundled model (preselected), a fine-tuned one, a local folder, a GGUF file or a hub id.

    ``float_model`` holds the prepared float :class:`~nbkit.OVModel`: set by Prepare, or at
    construction when the float IR of the selected model is already in the cache.
    ``on_prepared(callback)`` calls ``callback(model)`` each time Prepare made one ready.
    """

    kind = traitlets.Enum(KINDS, default_value="bundled", help="bundled, finetuned, folder, gguf or hub")
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
        self._listing = False
        self.log_output = widgets.Output(layout=widgets.Layout(max_height="200px", overflow="auto"))
        self.task = self.own_task(BackgroundTask("Prepare", self.log_output))
        self.kind_buttons = ChoiceButtons(self._kind_choices([]), "bundled")
        # Why a kind cannot be picked, as text (a disabled button's tooltip alone is easy to miss).
        self.kind_notes = widgets.HTML()
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
        self.finetuned = widgets.Dropdown(
            options=[],
            description="Model",
            tooltip="Models `nbkit finetune` taught and merged, kept in the cache",
            layout=widgets.Layout(width="620px"),
        )
        self.path_text = widgets.Text(
            description="Location",
            continuous_update=False,
            tooltip="Press Enter (or leave the field) to look the model up",
            layout=widgets.Layout(width="620px"),
        )
        self.note = widgets.HTML(tooltip="About this source")
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
            tooltip=_PREPARE_TIP,
            layout=widgets.Layout(width="140px"),
        )
        self.on_click(self.prepare_button, lambda _: self.prepare())
        self.view = TaskView(self.task, idle_text="Pick a model, then press Prepare.")
        log_box = widgets.Accordion([self.log_output], titles=("Log",), selected_index=None)
        self.facts_view = widgets.HTML(tooltip="Read from config.json and the safetensors headers")
        # Sized to its content, not stretched to the height of its neighbour.
        facts_card = widgets.VBox(
            [widgets.HTML("<b>Architecture</b>"), self.facts_view],
            layout=card_layout(flex="0 0 auto", width="auto", margin="0 12px 8px 0"),
        )
        self.cache_view = widgets.HTML()
        self.refresh_button = widgets.Button(
            description="Refresh",
            icon="refresh",
            tooltip="Re-read the cache",
            layout=widgets.Layout(width="100px"),
        )
        self.on_click(self.refresh_button, lambda _: self.refresh())
        where = widgets.HTML(
            f'<span style="color:#57606a;font-size:12px">Entries built from this model, newest first, '
            f"under {html.escape(str(self.cache.root))} (hover a row for its folder).</span>",
            layout=widgets.Layout(margin="0 0 0 8px"),
        )
        self.cache_box = widgets.Accordion(
            [
                widgets.VBox(
                    [
                        widgets.HBox(
                            [self.refresh_button, where], layout=widgets.Layout(align_items="center")
                        ),
                        self.cache_view,
                    ]
                )
            ],
            titles=("In the cache",),
            selected_index=None,
            layout=widgets.Layout(flex="1 1 auto", min_width="0"),
        )
        self.source_row = widgets.VBox([self.bundled])
        super().__init__(
            [
                widgets.HTML(title_html("Model", "pick a model and prepare its float OpenVINO IR")),
                self.kind_buttons,
                self.kind_notes,
                self.source_row,
                self.note,
                widgets.HBox(
                    [self.weight_format, self.prepare_button], layout=widgets.Layout(margin="4px 0")
                ),
                self.view,
                log_box,
                widgets.HBox(
                    [facts_card, self.cache_box],
                    layout=widgets.Layout(width="100%", align_items="flex-start", margin="8px 0 0 0"),
                ),
            ]
        )
        self.own(self.view)
        self.dlink((self.task, "state"), (self, "state"))
        self.link((self.kind_buttons, "value"), (self, "kind"))
        self.watch(self.bundled, self._on_bundled, "value")
        self.watch(self.finetuned, self._on_finetuned, "value")
        self.watch(self.path_text, self._on_path, "value")
        self.watch(self, self._on_source_fields, ["kind", "location"])
        self.watch(self.task, self._on_task_state, "state")
        self._show_finetuned()
        self.select(model or DEFAULT_MODEL)
        self._adopt_cached_float()

    # -- public actions ---------------------------------------------------------------------------

    def select(self, spec: str | Path) -> None:
        """Select a model the way :func:`nbkit.resolve_source` reads a name, path or hub id.

        A folder of the cache's fine-tuned models is selected as a fine-tuned model.
        """
        text = str(spec).strip()
        path = Path(text).expanduser()
        if text in BUNDLED_MODELS:
            kind = "bundled"
        elif path.is_dir() and self._finetuned_value(path) is not None:
            kind, text = "finetuned", self._finetuned_value(path) or text
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

        self.task.start(work, on_success=self._prepared, message=f"Preparing {self.display_name}")
        return True

    def cancel(self) -> bool:
        return self.task.cancel()

    def wait(self, timeout: float | None = None) -> str:
        return self.task.wait(timeout)

    def on_prepared(self, callback: Callable[[OVModel], Any], remove: bool = False) -> None:
        """(Un)register ``callback(model)``, called (in the worker thread) when a float IR is ready."""
        self._prepared_callbacks.register_callback(callback, remove=remove)

    def refresh(self) -> None:
        """Re-read the cache: its table, the fine-tuned models offered, the architecture facts."""
        self._show_finetuned()
        self._show_facts()
        self._show_cache()

    @property
    def cached(self) -> list[CacheEntry]:
        """The cache entries built from the selected source, newest first (the table's rows)."""
        return cached_entries(self.source, self.cache) if self.source is not None else []

    @property
    def display_name(self) -> str:
        """The selected model as the picker names it: a fine-tuned one by what it learned, not its folder."""
        if self.source is None:
            return ""
        if self.kind == "finetuned":
            label = next((text for text, value in self.finetuned.options if value == self.location), "")
            return label.rsplit(" (", 1)[0] or self.source.name  # without the build date
        return self.source.name

    @property
    def status(self) -> str:
        return str(self.view.status.value)

    # -- reacting -----------------------------------------------------------------------------

    def _on_bundled(self, change: dict[str, Any]) -> None:
        if self.kind == "bundled" and change["new"]:
            self.location = change["new"]

    def _on_finetuned(self, change: dict[str, Any]) -> None:
        if self.kind == "finetuned" and change["new"] and not self._listing:
            self.location = change["new"]

    def _on_path(self, change: dict[str, Any]) -> None:
        if self.kind not in ("bundled", "finetuned"):
            self.location = change["new"].strip()

    def _kind_field(self, kind: str) -> str:
        """What the field of ``kind`` holds now (its dropdown's value, or the typed location)."""
        if kind == "bundled":
            return self.bundled.value or ""
        if kind == "finetuned":
            return self.finetuned.value or ""
        return self.path_text.value.strip()

    def _on_source_fields(self, change: dict[str, Any]) -> None:
        if self._selecting:
            return
        if change["name"] == "kind":
            # Switching kinds starts from that kind's own field.
            field = self._kind_field(change["new"])
            if field != self.location:
                self.location = field  # observed again, as a location change
                return
        self._resolve()

    def _on_task_state(self, change: dict[str, Any]) -> None:
        busy = change["new"] == "running"
        self.prepare_button.disabled = busy or self.source is None
        for value, button in self.kind_buttons.buttons.items():
            button.disabled = busy or bool(self.kind_buttons.choices[value].unavailable)
        for control in (self.bundled, self.finetuned, self.path_text, self.weight_format):
            control.disabled = busy
        if not busy:
            self.refresh()

    def _kind_choices(self, finetuned: Sequence[FinetuneResult]) -> list[Choice]:
        return [
            Choice("bundled", "Bundled", "A model shipped as a Python package: works offline"),
            Choice(
                "finetuned",
                "Fine-tuned",
                "A model `nbkit finetune` taught, from this cache: works offline",
                unavailable="" if finetuned else _NO_FINETUNED,
            ),
            Choice("folder", "Local folder", "A model folder on this machine (config.json + safetensors)"),
            Choice("gguf", "GGUF file", "A llama-family .gguf file, converted once: works offline"),
            Choice(
                "hub",
                "Hub id",
                "A Hugging Face hub id, downloaded once (needs the network)",
                unavailable=self.hub_problem or "",
            ),
        ]

    def _show_finetuned(self) -> None:
        """Offer the cache's fine-tuned models by name; the Fine-tuned kind says why when there are none."""
        try:
            results = finetuned_models(self.cache)
        except (OSError, KeyError, ValueError) as exc:  # a manifest of another nbkit version
            log.warning("Cannot list the fine-tuned models in %s: %s", self.cache.root, exc)
            results = []
        options = [(finetuned_label(r), str(r.path)) for r in results]
        if options != list(self.finetuned.options):
            current = self.finetuned.value
            values = [value for _, value in options]
            self._listing = True  # new options reset the value on the way: no selection of the user's
            try:
                self.finetuned.options = options
                self.finetuned.value = current if current in values else (values[0] if values else None)
            finally:
                self._listing = False
            if self.kind == "finetuned" and self.finetuned.value != current:
                self.location = self.finetuned.value or ""
        available = not self.kind_buttons.choices["finetuned"].unavailable
        if available != bool(results):
            self.kind_buttons.set_choices(self._kind_choices(results), self.kind)
            for button in self.kind_buttons.buttons.values():  # new buttons: still frozen while preparing
                button.disabled = button.disabled or self.task.running
        unavailable = [c for c in self.kind_buttons.choices.values() if c.unavailable]
        self.kind_notes.value = "".join(
            f'<div style="color:#57606a;font-size:12px;line-height:1.5">'
            f"<b>{html.escape(c.label)}</b> unavailable: {html.escape(c.unavailable)}.</div>"
            for c in unavailable
        )

    def _finetuned_value(self, path: Path) -> str | None:
        """The fine-tuned dropdown's value for the folder ``path``, if it is one of them."""
        try:
            resolved = path.expanduser().resolve()
        except OSError:
            return None
        for _, value in self.finetuned.options:
            if Path(value).resolve() == resolved:
                return str(value)
        return None

    def _resolve(self) -> None:
        kind, text = self.kind, self.location.strip()
        field = {"bundled": self.bundled, "finetuned": self.finetuned}.get(kind, self.path_text)
        self.source_row.children = [field]
        if kind in _PLACEHOLDERS:
            self.path_text.placeholder = _PLACEHOLDERS[kind]
            if self.path_text.value.strip() != text:
                self.path_text.value = text
        elif kind == "bundled" and text in BUNDLED_MODELS and self.bundled.value != text:
            self.bundled.value = text
        elif kind == "finetuned" and self._finetuned_value(Path(text)) not in (None, self.finetuned.value):
            self.finetuned.value = self._finetuned_value(Path(text))
        source: ModelSource | None = None
        problem = ""
        try:
            if not text:
                problem = _EMPTY_PROMPTS[kind]
            elif kind == "bundled":
                source = BundledSource(BUNDLED_MODELS[text])
            elif kind in ("folder", "finetuned"):
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
        self.prepare_button.tooltip = problem or _PREPARE_TIP
        if source is None:
            self.note.value = ""
            self.facts = None
            self.facts_view.value = table_html((), (), empty="No model selected.")
            self._show_cache()
            if not self.task.running:
                self.view.show("error" if text else "info", problem)
            return
        offline = "works offline" if source.works_offline else "needs the network the first time"
        name = self.display_name
        self.note.value = status_html("ok" if source.works_offline else "warn", f"{name}: {offline}.")
        if not self.task.running:
            self.view.show("info", f"Ready to prepare {name}.")
        self.refresh()

    def _adopt_cached_float(self) -> None:
        """Take the selected model's float IR from the cache when it is there, building nothing.

        The lookup is the export's own (its cache key, through a lookup-only view of the cache),
        so what is adopted is exactly what Prepare would return.
        """
        source = self.source
        # A hub model offline, or one not yet downloaded, would reach the network on a lookup.
        if source is None or not source.works_offline:
            return
        if not any(entry.kind == OPENVINO_FLOAT_KIND for entry in self.cached):
            return  # the common case of a fresh cache: not even the export's key is computed
        config = ExportConfig(weight_format=self.weight_format.value)
        try:
            model = find_built(lambda cache: export_openvino(source, config, cache=cache), self.cache)
        except NbkitError as exc:  # e.g. a source that changed on disk: Prepare will say why
            log.info("Not adopting a cached float IR of %s: %s", source.name, first_sentence(exc))
            return
        if model is None:
            return
        self.float_model = model
        self._show_facts()
        self.view.show(
            "ok",
            f"Float IR of {model.source_name} found in the cache ({mib(model.weights_bytes)} of weights): "
            "ready to tune.",
        )

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
            if entry.kind == HF_KIND:
                return read_architecture(entry.path)
            if "architecture" in entry.metadata:
                return OVModel(entry).architecture
        return None

    def _show_cache(self) -> None:
        entries = self.cached
        self.cache_view.value = cache_table_html(
            entries,
            "Nothing cached for this model yet." if self.source is not None else "No model selected.",
        )
        noun = "entry" if len(entries) == 1 else "entries"
        self.cache_box.set_title(0, f"In the cache: {len(entries)} {noun} for this model")

    def _prepared(self, model: OVModel) -> str:
        self.float_model = model
        self.refresh()
        self._prepared_callbacks(model)
        return f"Float IR of {model.source_name} ready: {mib(model.weights_bytes)} of weights in {model.path}"
