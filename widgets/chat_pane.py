"""ChatPane: a streamed, stoppable, measured multi-turn chat with a model of any engine.

The pane drives any :class:`~nbkit.engines.base.BaseChatSession` made by
``session_factory(model_path, runtime, settings)``; by default the model folder's engine, found
in the registry, opens it (:meth:`~nbkit.engines.protocol.Engine.open_chat`: openvino-genai for
an OpenVINO IR, onnxruntime-genai for an Olive build). Unless a runtime is picked explicitly,
the model runs with ``engine.default_runtime(model, device)``: what ``nbkit tune-device``
recorded for it, else the engine's default, as ``nbkit chat`` does. Generation runs in a
worker thread; tokens reach the page as they arrive.

A second model picked in "Compare with" (one of ``available_models``) answers every message
too, after the first, and its answer is shown next to the first one with its own metrics.
Changing the model or starting a new chat never loses a conversation: the old one is kept in
``past_conversations`` and can be read and downloaded under "Earlier conversations".
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import platformdirs
import traitlets

from nbkit.config import AssistedDecoding, GenerationSettings, RuntimeConfig
from nbkit.engines.base import BaseChatSession, Turn
from nbkit.engines.protocol import BuiltModel, Engine
from nbkit.engines.registry import engine_for_folder, engine_of_model, get_engine
from nbkit.errors import Cancelled, NbkitError
from nbkit.infra.progress import ProgressReporter

from ._common import close_tree, download_link, first_sentence, title_html
from ._panel import Panel
from ._worker import CANCELLED, ERROR, IDLE, RUNNING, STATES, BackgroundTask, TaskView
from .generation_form import GenerationForm

SessionFactory = Callable[[Path, RuntimeConfig, GenerationSettings], BaseChatSession]
ChatModel = BuiltModel | Path | str
_REDRAW_S = 0.05  # at most 20 page updates a second while streaming
_LOADING_TICK_S = 1.0  # how often "Loading the model… N s" counts up
_USER = "margin:8px 0 2px 18%;padding:6px 10px;background:#ddf4ff;border-radius:10px;white-space:pre-wrap"
_BOT = "margin:2px 18% 0 0;padding:6px 10px;background:#f6f8fa;border-radius:10px;white-space:pre-wrap"
_BOT_SIDE = "margin:2px 0 0 0;padding:6px 10px;background:#f6f8fa;border-radius:10px;white-space:pre-wrap"
_META = "margin:0 0 4px 4px;color:#57606a;font-size:11px"
_COLUMN_TITLE = "margin:2px 0 0 4px;color:#57606a;font-size:11px;font-weight:600"
EXAMPLE_PROMPTS = (
    "What is the capital of France?",
    "Name three colors.",
    "Explain in one sentence what quantization does to a neural network.",
    "Write a haiku about the sea.",
)


def engine_session(
    model_path: Path,
    runtime: RuntimeConfig,
    settings: GenerationSettings,
    *,
    assisted: AssistedDecoding | None = None,
) -> BaseChatSession:
    """The default: the session of the engine that loads ``model_path`` (found in the registry),
    loaded and warmed up."""
    return engine_of_model(model_path).open_chat(model_path, runtime, settings, assisted=assisted)


def openvino_session(
    model_path: Path, runtime: RuntimeConfig, settings: GenerationSettings
) -> BaseChatSession:
    """openvino-genai's LLMPipeline, whatever the folder holds (kept for notebooks that name it)."""
    return get_engine("openvino").open_chat(model_path, runtime, settings)


def default_transcript_dir() -> Path:
    """Where "Save" writes transcripts unless told otherwise: the user's documents, never the cwd."""
    return Path(platformdirs.user_documents_dir()) / "nbkit" / "transcripts"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass(frozen=True)
class PastConversation:
    """A conversation the pane moved aside (a new chat, another model): still readable and downloadable."""

    model_label: str
    model_path: str
    turns: tuple[Turn, ...]
    markdown: str
    json: str
    ended: str  # local time, for the list

    @property
    def title(self) -> str:
        return f"{self.ended} · {self.model_label} · {plural(len(self.turns), 'turn')}"


@dataclass
class _Column:
    """One model's answer in a row: its bubble, its metrics line and (side by side) its title."""

    answer: widgets.HTML
    meta: widgets.HTML
    style: str = _BOT
    turn: Turn | None = None


@dataclass
class _Row:
    """One exchange on the page: the user's message and one or two answers."""

    widgets: list[widgets.Widget]
    main: _Column
    compare: _Column | None = None
    compare_session: BaseChatSession | None = None  # the session that answered in the compare column
    done: list[str] = field(default_factory=list)  # "main", "compare": which answers are complete


@dataclass(frozen=True)
class _Answers:
    main: Turn
    main_load_s: float | None
    compare: Turn | None = None
    compare_load_s: float | None = None
    compare_label: str = ""


def _close_row(row: _Row) -> None:
    """Close the widgets of an exchange taken off the page (the page keeps no models of them)."""
    for widget in row.widgets:
        close_tree(widget)
        widget.close()


def _bubble(text: str, style: str, cursor: bool = False, kind: str = "nbkit-answer") -> str:
    return (
        f'<div class="nbkit-bubble {kind}" style="{style}">{html.escape(text)}{"▌" if cursor else ""}</div>'
    )


def turn_summary(turn: Turn) -> str:
    """How the answer went, in words: its speed, and why it ended when the model did not end it."""
    m = turn.metrics
    text = f"TTFT {m.ttft_ms:.0f} ms · {m.tokens_per_s:.1f} tokens/s · {plural(m.generated_tokens, 'token')} · {m.total_s:.1f} s"
    if turn.stopped:
        text += " · stopped"
    elif turn.reached_token_limit:
        text += f" · stopped at the token limit ({plural(turn.max_new_tokens, 'token')})"
    return text


def _metrics_html(turn: Turn, load_s: float | None) -> str:
    loaded = (
        f'<div style="{_META}">Model loaded in {load_s:.1f} s before this answer '
        "(not counted in the speed above).</div>"
        if load_s is not None
        else ""
    )
    return f'<div class="nbkit-turn-metrics" style="{_META}">{html.escape(turn_summary(turn))}</div>{loaded}'


def _transcript_html(turns: Sequence[Turn]) -> str:
    rows = []
    for turn in turns:
        rows += [
            _bubble(turn.prompt, _USER, kind="nbkit-user"),
            _bubble(turn.text, _BOT),
            f'<div style="{_META}">{html.escape(turn_summary(turn))}</div>',
        ]
    return "".join(rows)


def _describe(model: ChatModel) -> tuple[str, str, str]:
    """(folder, label, engine name) of a built model or a model folder."""
    if not isinstance(model, str | Path):
        return str(model.path), f"{model.source_name} · {model.label}", engine_of_model(model).name
    path = str(Path(model).expanduser())
    engine: Engine | None = engine_for_folder(path)
    return path, Path(path).name, engine.name if engine is not None else ""


class _ChatTaskView(TaskView):
    """The task view without its own Stop (the compose row has it) and without a percentage:
    an answer's length is not known in advance, and loading a model reports no progress."""

    def __init__(self, task: BackgroundTask, *, idle_text: str = "") -> None:
        super().__init__(task, idle_text=idle_text, cancel_label="Stop")
        self.cancel_button.layout.display = "none"

    def _update(self, change: Any = None) -> None:
        super()._update(change)
        if self.task.state == RUNNING:
            self.show("running", self.task.message)


class ChatPane(Panel):
    """Chat with a model folder of any engine: Enter sends, Stop ends the answer, Clear starts over."""

    model_path = traitlets.Unicode(
        "", help="The model folder to chat with (an OpenVINO IR or an Olive build)"
    )
    model_label = traitlets.Unicode("", help="A short name of the model shown in the header")
    engine = traitlets.Unicode("", help="The registry name of the engine that runs the model, or empty")
    runtime = traitlets.Instance(
        RuntimeConfig,
        allow_none=True,
        help="Properties picked explicitly (the device selector's), or None: "
        "engine.default_runtime(model, device), as nbkit chat",
    )
    device = traitlets.Unicode("CPU", help="The device the model runs on when runtime is None")
    model = traitlets.Any(
        None, allow_none=True, help="The built model behind model_path (either engine's), when one was given"
    )
    settings = traitlets.Instance(GenerationSettings, allow_none=True, help="Valid settings, or None")
    state = traitlets.Enum(STATES, default_value=IDLE, help="State of the current or last answer")
    current_text = traitlets.Unicode("", help="The answer being streamed, as it grows")
    available_models = traitlets.List(
        help="Models the chat can be compared with (built models or folders; the dashboard's float "
        "model and every built one)"
    )
    compare_model = traitlets.Any(
        None, allow_none=True, help="The model that answers every message too, side by side, or None"
    )
    compare_text = traitlets.Unicode("", help="The compared model's answer being streamed")
    past_conversations = traitlets.List(
        help="Conversations moved aside by Clear or another model (PastConversation), oldest first"
    )
    preload = traitlets.Bool(
        False,
        help="Load and warm up each model in the background as soon as it is set, so the first "
        "answer starts at once; a message sent meanwhile waits for it",
    )
    prompt_lookup = traitlets.Bool(
        False,
        help="Prompt-lookup decoding (engines that offer it): guesses taken from the conversation, "
        "faster when answers copy it (rewrite, extract, summarize), greedy answers unchanged",
    )

    def __init__(
        self,
        model: ChatModel | None = None,
        *,
        runtime: RuntimeConfig | None = None,
        device: str = "CPU",
        settings: GenerationSettings | None = None,
        session_factory: SessionFactory | None = None,
        export_dir: Path | str | None = None,
        system_prompt: str = "",
        examples: Sequence[str] = EXAMPLE_PROMPTS,
    ) -> None:
        """``export_dir`` is where Save writes transcripts by default (else :func:`default_transcript_dir`)."""
        self._start_registry()
        self.session_factory = session_factory or engine_session
        self.export_dir = (
            Path(export_dir).expanduser() if export_dir is not None else default_transcript_dir()
        )
        self.session: BaseChatSession | None = None
        self._session_runtime: RuntimeConfig | None = None  # what the session was asked to open with
        self.compare_session: BaseChatSession | None = None
        self._retired: list[BaseChatSession] = []  # replaced while answering; closed when it ends
        self._compare_runtime: RuntimeConfig | None = None
        self._compare_label = ""
        self._rows: list[_Row] = []
        self._pending: _Row | None = None  # the exchange being answered
        self._last_prompt = ""
        self._loading = False  # a preload (load()) is running
        self._queued = ""  # a message sent during the preload, answered when it ends
        self._queued_pending = False  # True from queuing a message until its answer has started
        # The model changed while a preload of the one before was ending: the new model's preload
        # starts when it has ended (a message sent meanwhile waits for that one).
        self._reload_pending = False
        self._ticker_lock = threading.Lock()
        self.log_output = widgets.Output(layout=widgets.Layout(max_height="160px", overflow="auto"))
        self.task = self.own_task(BackgroundTask("the answer", self.log_output))
        self.header = widgets.HTML(tooltip="The model and device of this chat")
        self.empty = widgets.HTML(
            '<div style="color:#57606a;font-style:italic;padding:8px">No messages yet. '
            "Type a question below, or click one of the examples.</div>"
        )
        # No overflow or height of its own: the scroller around it is the only scroll container.
        self.history = widgets.VBox(
            [self.empty], layout=widgets.Layout(width="100%", overflow="visible", flex="0 0 auto")
        )
        # column-reverse: the browser keeps the bottom (the newest text) in view while it grows,
        # and leaves the position alone once the user has scrolled up.
        self.scroller = widgets.Box(
            [self.history],
            layout=widgets.Layout(
                display="flex",
                flex_flow="column-reverse",
                overflow="hidden auto",  # CSS: x hidden, y scrolls
                height="380px",
                border="1px solid #d0d7de",
                padding="4px 8px",
                width="100%",
            ),
        )
        self.scroller.add_class("nbkit-chat-history")
        self.prompt = widgets.Text(
            placeholder="Type a message and press Enter",
            tooltip="Your message; Enter sends it",
            layout=widgets.Layout(flex="1 1 auto", width="auto"),
        )
        self.prompt.add_class("nbkit-prompt")
        self.on_msg(self.prompt, self._on_prompt_msg)
        self.send_button = self._button(
            "Send", "paper-plane", "Send the message (or press Enter)", "nbkit-send"
        )
        self.send_button.button_style = "primary"
        self.on_click(self.send_button, lambda _: self.send())
        self.stop_button = self._button(
            "Stop", "stop", "End the answer now; the partial answer is kept", "nbkit-stop"
        )
        self.stop_button.disabled = True
        self.on_click(self.stop_button, lambda _: self.stop())
        self.regenerate_button = self._button(
            "Regenerate", "redo", "Ask the last message again, replacing its answer", "nbkit-regenerate"
        )
        self.on_click(self.regenerate_button, lambda _: self.regenerate())
        self.new_button = self._button(
            "Clear",
            "plus",
            "Start a new chat; this one stays under Earlier conversations",
            "nbkit-new-chat",
        )
        self.on_click(self.new_button, lambda _: self.new_chat())
        self.example_buttons: list[widgets.Button] = []
        for text in examples:
            button = widgets.Button(
                description=text if len(text) <= 40 else text[:39] + "…",
                tooltip=f"Ask: {text}",
                layout=widgets.Layout(width="auto", max_width="320px", margin="0 4px 0 0"),
            )
            button.add_class("nbkit-example")
            self.on_click(button, self._asker(text))
            self.example_buttons.append(button)
        self.compare_with = widgets.Dropdown(
            options=[("nothing", -1)],
            value=-1,
            description="Compare with",
            tooltip="A second model that answers every message too, shown side by side",
            style={"description_width": "92px"},
            layout=widgets.Layout(width="380px"),
        )
        self.compare_with.add_class("nbkit-compare-with")
        self.view = _ChatTaskView(self.task, idle_text="Pick a model to start chatting.")
        self.generation = GenerationForm(settings, system_prompt=system_prompt)
        # The form's controls under the names a notebook (and the tests) reach them by.
        self.max_new_tokens = self.generation.max_new_tokens
        self.do_sample = self.generation.do_sample
        self.temperature = self.generation.temperature
        self.top_p = self.generation.top_p
        self.top_k = self.generation.top_k
        self.repetition_penalty = self.generation.repetition_penalty
        self.system_prompt = self.generation.system_prompt
        # Transcripts: downloads carry the text itself; files are written only where the user says.
        self.downloads = widgets.HTML(tooltip="The transcript of this chat; click to download")
        self.save_folder = widgets.Text(
            value=str(self.export_dir),
            description="Folder",
            tooltip="Where Save writes the transcript files",
            style={"description_width": "50px"},
            layout=widgets.Layout(width="460px"),
        )
        self.save_md = self._button(
            "Save Markdown", "save", "Write the transcript as a .md file in the folder"
        )
        self.save_md.layout.width = "150px"
        self.on_click(self.save_md, lambda _: self.save_transcript("markdown"))
        self.save_json = self._button(
            "Save JSON", "save", "Write the transcript with metrics as .json in the folder"
        )
        self.save_json.layout.width = "130px"
        self.on_click(self.save_json, lambda _: self.save_transcript("json"))
        self.saved = widgets.HTML(tooltip="Transcript files written so far")
        transcript_box = widgets.VBox(
            [self.downloads, widgets.HBox([self.save_folder, self.save_md, self.save_json]), self.saved]
        )
        self.past_picker = widgets.Dropdown(
            options=[("none yet", -1)],
            value=-1,
            description="Conversation",
            tooltip="A conversation moved aside by Clear or by another model",
            style={"description_width": "92px"},
            layout=widgets.Layout(width="560px"),
        )
        self.past_view = widgets.HTML(
            layout=widgets.Layout(max_height="300px", overflow="hidden auto", width="100%")
        )
        past_box = widgets.VBox([self.past_picker, self.past_view])
        self.prompt_lookup_box = widgets.Checkbox(
            description="Prompt lookup",
            tooltip="Prompt-lookup decoding (OpenVINO): the model checks several tokens guessed from the "
            "conversation in one step; faster when answers copy it, same greedy answers",
            indent=False,
            layout=widgets.Layout(width="auto"),
        )
        self.link((self, "prompt_lookup"), (self.prompt_lookup_box, "value"))
        self.extras = widgets.Accordion(
            [widgets.VBox([self.generation, self.prompt_lookup_box]), transcript_box, past_box, self.log_output],
            titles=("Generation settings", "Transcript", "Earlier conversations (0)", "Log"),
            selected_index=None,
        )
        compose = widgets.HBox(
            [self.prompt, self.send_button, self.stop_button, self.regenerate_button, self.new_button],
            layout=widgets.Layout(width="100%", align_items="center"),
        )
        compose.add_class("nbkit-chat-compose")
        examples_row = widgets.HBox(
            [widgets.HTML('<span style="color:#57606a;margin-right:6px">Try:</span>'), *self.example_buttons],
            layout=widgets.Layout(width="100%", flex_flow="row wrap", align_items="center"),
        )
        super().__init__(
            [
                widgets.HTML(title_html("Chat", "streamed answers, measured per turn")),
                widgets.HBox(
                    [self.header, self.compare_with],
                    layout=widgets.Layout(justify_content="space-between", align_items="center"),
                ),
                self.scroller,
                compose,
                examples_row,
                self.view,
                self.extras,
            ]
        )
        self.own(self.view, self.generation)
        self.runtime, self.device = runtime, device
        self.watch(self.generation, self._read_settings, ["settings", "error"])
        self.watch(self, self._on_model_or_runtime, ["model_path", "runtime", "device", "model_label"])
        self.watch(self.task, self._on_task_state, "state")
        self.watch(self, self._on_available_models, ["available_models", "model_path"])
        self.watch(self.compare_with, self._on_compare_choice, "value")
        self.watch(self, self._on_compare_model, "compare_model")
        self.watch(self, self._on_past, "past_conversations")
        self.watch(self.past_picker, self._show_past, "value")
        self.dlink((self.task, "state"), (self, "state"))
        self.on_close(self._close_sessions)
        self._read_settings()
        if model is not None:
            self.set_model(model)
        self._on_model_or_runtime()
        self._update_buttons()

    def _button(self, description: str, icon: str, tooltip: str, css: str = "") -> widgets.Button:
        button = widgets.Button(
            description=description, icon=icon, tooltip=tooltip, layout=widgets.Layout(width="110px")
        )
        if css:
            button.add_class(css)
        return button

    def _asker(self, text: str) -> Callable[[widgets.Button], None]:
        return lambda _: self.ask_example(text)

    # -- public actions ---------------------------------------------------------------------------

    def set_model(self, model: ChatModel | None, label: str = "") -> None:
        """Chat with ``model`` (a built model of any engine, or a model folder).

        Another model starts a new conversation; the one before is kept in ``past_conversations``.
        """
        built: BuiltModel | None = None
        if model is not None and not isinstance(model, str | Path):
            built = model
        if model is not None and model != "":
            path, default_label, engine_name = _describe(model)
        else:
            path, default_label, engine_name = "", "", ""
        if path == self.model_path:
            self.model = built or self.model
            return
        self.task.cancel()
        self.model = built
        self._archived_label = self.model_label  # the conversation moved aside keeps its model's name
        with self.hold_trait_notifications():
            self.engine = engine_name
            self.model_label = label or default_label
            self.model_path = path

    def session_runtime(self) -> RuntimeConfig:
        """The runtime the model is (or will be) loaded with.

        The explicit ``runtime`` when one is set; else the engine's
        :meth:`~nbkit.engines.protocol.Engine.default_runtime` for the model and ``device`` (what
        ``nbkit tune-device`` recorded, else the engine's default), exactly what ``nbkit chat``
        uses without ``--hint``/``--property``. A folder no engine loads gets the bare device.
        """
        if self.runtime is not None:
            return self.runtime
        if not self.engine:
            return RuntimeConfig.create(self.device or "CPU")
        target: BuiltModel | Path = self.model if self.model is not None else Path(self.model_path)
        return get_engine(self.engine).default_runtime(target, self.device or "CPU")

    def compare_runtime(self) -> RuntimeConfig:
        """The runtime of the compared model: the explicit one if it runs on the same engine, else its
        engine's default for ``device`` (an explicit runtime is picked for one engine's properties)."""
        if self.compare_model is None:
            raise NbkitError("No model to compare with; pick one in “Compare with”.")
        _, _, engine_name = _describe(self.compare_model)
        if self.runtime is not None and engine_name == self.engine:
            return self.runtime
        if not engine_name:
            return RuntimeConfig.create(self.device or "CPU")
        target = (
            self.compare_model if not isinstance(self.compare_model, str | Path) else Path(self.compare_model)
        )
        return get_engine(engine_name).default_runtime(target, self.device or "CPU")

    def assisted_decoding(self) -> AssistedDecoding | None:
        """What ``prompt_lookup`` asks of the engine (None: plain decoding)."""
        return AssistedDecoding.prompt_lookup() if self.prompt_lookup else None

    def load(self) -> bool:
        """Load and warm up the model in the background without answering (what ``preload`` does
        when a model is set); False when there is no model, or work is already running."""
        if not self.model_path or self.task.running or self.settings is None:
            return False
        if self.session is not None and self.session.model_path == Path(self.model_path):
            return False  # loaded already
        settings = self.settings
        self._loading = True  # from now: a message sent before the task thread runs waits for it too
        self.task.start(
            lambda reporter: self._preload(reporter, settings),
            on_success=self._preloaded,
            message="Loading the model and warming it up",
        )
        return True

    def send(self, prompt: str | None = None) -> bool:
        """Answer ``prompt`` (default: the text box) in the background; False when refused (and why).

        While a preload runs, the message waits for it and is answered as soon as the model is ready.
        """
        text = (self.prompt.value if prompt is None else prompt).strip()
        if (self._loading or self._reload_pending) and text and self.settings is not None:
            self._queued, self._queued_pending = text, True
            if prompt is None or self.prompt.value.strip() == text:
                self.prompt.value = ""
            self.view.notify("info", "The model is loading; your message is sent as soon as it is ready.")
            return True
        if not self._can_start(text):
            return False
        if prompt is None or self.prompt.value.strip() == text:
            self.prompt.value = ""
        self._start(text)
        return True

    def ask_example(self, text: str) -> bool:
        """Put ``text`` in the message box and send it (what an example button does)."""
        if self.task.running:
            self.view.notify("warn", "Still answering the previous message; wait for it or press Stop.")
            return False
        self.prompt.value = text
        return self.send()

    def stop(self) -> bool:
        """End the answer after its next token (the partial answer is kept)."""
        return self.task.cancel()

    def regenerate(self) -> bool:
        """Ask the last message again: its answer (and the compared one) is replaced by a new one."""
        if self.task.running:
            self.view.notify("warn", "Still answering the previous message; wait for it or press Stop.")
            return False
        last = self._rows[-1] if self._rows else None
        if last is None or last.main.turn is None or self.session is None or not self.session.turns:
            self.view.notify("warn", "Nothing to regenerate yet: send a message first.")
            return False
        text = last.main.turn.prompt
        if not self._can_start(text):
            return False
        _close_row(self._rows.pop())
        self.session.pop_turn()
        answered = last.compare is not None and last.compare.turn is not None
        if answered and self.compare_session is not None and last.compare_session is self.compare_session:
            self.compare_session.pop_turn()
        self._render_rows()
        self._start(text)
        return True

    def new_chat(self) -> bool:
        """Start a new conversation (the loaded model stays); the old one goes to ``past_conversations``."""
        if self.task.running:
            self.view.notify("warn", "Stop the current answer before starting a new chat.")
            return False
        had_turns = bool(self.turns)
        self._archive(self.session, self.model_label or Path(self.model_path).name)
        self._archive(self.compare_session, self._compare_label)
        for session in (self.session, self.compare_session):
            if session is not None:
                session.reset()
        self._clear_history()
        self._show_ready()
        self.view.notify(
            "info",
            "New chat started; the last one is under Earlier conversations."
            if had_turns
            else "New chat started.",
        )
        return True

    clear = new_chat  # the button's name

    def wait(self, timeout: float | None = None) -> str:
        """Block until the work ends, a message queued behind a preload included (tests and scripts)."""
        self.task.wait(timeout)
        while self._queued_pending or self._reload_pending:
            time.sleep(0.01)
            self.task.wait(timeout)
        return self.task.wait(timeout)  # the answer a queued message started, if it started one

    @property
    def turns(self) -> list[Turn]:
        return list(self.session.turns) if self.session is not None else []

    @property
    def compare_turns(self) -> list[Turn]:
        return list(self.compare_session.turns) if self.compare_session is not None else []

    def transcript_markdown(self) -> str:
        return self.session.transcript_markdown() if self.session is not None else ""

    def transcript_json(self) -> str:
        return self.session.transcript_json() if self.session is not None else ""

    def save_transcript(self, fmt: str = "markdown", folder: Path | str | None = None) -> Path | None:
        """Write the transcript into ``folder`` (default: the Folder box, else ``export_dir``)."""
        if fmt not in ("markdown", "json"):
            self.view.notify("error", f"A transcript is saved as markdown or json, not {fmt!r}.")
            return None
        if not self.turns:
            self.view.notify("warn", "Nothing to save yet: send a message first.")
            return None
        chosen = folder if folder is not None else (self.save_folder.value.strip() or self.export_dir)
        target = Path(chosen).expanduser()
        markdown = fmt == "markdown"
        text = self.transcript_markdown() if markdown else self.transcript_json()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = target / f"chat-{Path(self.model_path).name}-{stamp}.{'md' if markdown else 'json'}"
        if path.exists():  # never overwrite a file (two saves within one second)
            path = path.with_name(f"{path.stem}-{time.perf_counter_ns() % 100000}{path.suffix}")
        try:
            target.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.view.notify(
                "error",
                f"Cannot write the transcript to {target}: {exc.strerror or exc}; pick another folder.",
            )
            return None
        self.saved.value += f"<div>Saved <code>{html.escape(str(path))}</code></div>"
        self.view.notify("ok", f"Saved the transcript to {path}.")
        return path

    # -- starting a turn --------------------------------------------------------------------------

    def _can_start(self, text: str) -> bool:
        if self.task.running:
            self.view.notify("warn", "Still answering the previous message; wait for it or press Stop.")
            return False
        if not text:
            self.view.notify("warn", "Type a message first.")
            return False
        if not self.model_path:
            self.view.notify("warn", "Pick a model first: prepare one in the Model tab (or call set_model).")
            return False
        if self.settings is None:
            self.view.notify("error", f"Fix the generation settings first: {self.generation.error}")
            return False
        return True

    def _start(self, text: str) -> None:
        settings = self.settings
        assert settings is not None  # _can_start checked it
        self.view.notify("", "")
        self._last_prompt = text
        compare = self.compare_model
        main = _Column(widgets.HTML(_bubble("", _BOT, True)), widgets.HTML(""))
        user = widgets.HTML(_bubble(text, _USER, kind="nbkit-user"))
        if compare is None:
            row = _Row([user, main.answer, main.meta], main)
        else:
            main.style = _BOT_SIDE
            main.answer.value = _bubble("", _BOT_SIDE, True)
            side = _Column(widgets.HTML(_bubble("", _BOT_SIDE)), widgets.HTML(""), _BOT_SIDE)
            label = self.model_label or Path(self.model_path).name
            _, compare_label, _ = _describe(compare)
            columns = widgets.HBox(
                [
                    self._column_box(label, main),
                    self._column_box(compare_label, side),
                ],
                layout=widgets.Layout(width="100%", align_items="flex-start"),
            )
            columns.add_class("nbkit-compare-row")
            row = _Row([user, columns], main, side)
        self._pending = row
        self._rows.append(row)
        self._render_rows()
        self.current_text, self.compare_text = "", ""
        system = self.generation.system
        self.task.start(
            lambda reporter: self._answer_all(reporter, text, settings, system, row, compare),
            on_success=self._finish,
            on_cancel=self._stop_sessions,
            message="Loading the model" if self.session is None else "Thinking",
        )

    @staticmethod
    def _column_box(title: str, column: _Column) -> widgets.VBox:
        head = widgets.HTML(f'<div style="{_COLUMN_TITLE}">{html.escape(title)}</div>')
        return widgets.VBox(
            [head, column.answer, column.meta],
            layout=widgets.Layout(width="50%", overflow="visible", margin="0 4px"),
        )

    # -- the worker thread ------------------------------------------------------------------------

    def _answer_all(
        self,
        reporter: ProgressReporter,
        text: str,
        settings: GenerationSettings,
        system: str | None,
        row: _Row,
        compare: ChatModel | None,
    ) -> _Answers:
        session, load_s = self._session_for(reporter, Path(self.model_path), self.session_runtime(), settings)
        main = self._answer(reporter, session, text, settings, system, row.main, "current_text", "")
        row.done.append("main")
        if compare is None or row.compare is None or main.stopped:
            return _Answers(main, load_s)
        reporter.check()  # a Stop between the two answers ends here
        path, compare_label, _ = _describe(compare)
        if self.compare_model is None or _describe(self.compare_model)[0] != path:
            return _Answers(main, load_s)  # the comparison was changed while the first model answered
        other, other_load_s = self._compare_session_for(
            reporter, Path(path), compare_label, self.compare_runtime(), settings
        )
        row.compare_session = other
        turn = self._answer(
            reporter, other, text, settings, system, row.compare, "compare_text", compare_label
        )
        row.done.append("compare")
        return _Answers(main, load_s, turn, other_load_s, compare_label)

    def _preload(self, reporter: ProgressReporter, settings: GenerationSettings) -> str:
        self._loading = True
        try:
            session, load_s = self._session_for(
                reporter, Path(self.model_path), self.session_runtime(), settings
            )
        finally:
            self._loading = False
        warmup_s = getattr(session, "warmup_s", 0.0)
        return f"Ready: loaded in {load_s or 0.0:.1f} s" + (
            f", warmed up in {warmup_s * 1000:.0f} ms" if warmup_s else ""
        )

    def _preloaded(self, summary: str) -> str:
        queued, self._queued = self._queued, ""
        if queued:  # sent while the model loaded: answered now (after this task has ended)
            threading.Thread(target=self._send_queued, args=(queued,), name="nbkit-chat-queued", daemon=True).start()
        return summary

    def _reload(self) -> None:
        try:
            self.task.wait()
            started = self.load()
        finally:
            self._reload_pending = False
        if not started and self._queued:  # nothing to wait for: the message comes back
            if not self.prompt.value:
                self.prompt.value = self._queued
            self._queued, self._queued_pending = "", False

    def _send_queued(self, text: str) -> None:
        try:
            self.task.wait()
            if self._can_start(text):
                self._start(text)
        finally:
            self._queued_pending = False

    def _answer(
        self,
        reporter: ProgressReporter,
        session: BaseChatSession,
        text: str,
        settings: GenerationSettings,
        system: str | None,
        column: _Column,
        text_trait: str,
        who: str,
    ) -> Turn:
        reporter.report(0.0, f"{who} thinking" if who else "Thinking")
        session.system_prompt = system
        streamed: list[str] = []
        count = 0
        last_draw = 0.0

        def on_text(piece: str) -> None:
            nonlocal last_draw, count
            streamed.append(piece)
            count += 1
            setattr(self, text_trait, "".join(streamed))
            if reporter.cancel_token.cancelled:
                session.stop()  # a Stop that came before generation began
            now = time.perf_counter()
            if now - last_draw >= _REDRAW_S:
                last_draw = now
                column.answer.value = _bubble("".join(streamed), column.style, cursor=True)
                with contextlib.suppress(Cancelled):  # never raise into the engine: stop() ends it
                    what = f"{who} answering" if who else "Answering"
                    reporter.report(
                        count / settings.max_new_tokens, f"{what}: {plural(count, 'piece')} so far"
                    )

        turn = session.send(text, on_text, settings=settings)
        setattr(self, text_trait, turn.text)
        column.turn = turn
        column.answer.value = _bubble(turn.text, column.style)
        return turn

    def _open(
        self,
        reporter: ProgressReporter,
        old: BaseChatSession | None,
        old_runtime: RuntimeConfig | None,
        path: Path,
        runtime: RuntimeConfig,
        settings: GenerationSettings,
        what: str,
    ) -> tuple[BaseChatSession, float | None]:
        """``old`` when it already runs ``path`` with ``runtime``, else a newly loaded session."""
        # Compared with what the session was asked for: an engine may normalize its runtime
        # (ONNX Runtime GenAI drops OpenVINO's properties), which is no reason to reload.
        assisted = self.assisted_decoding()
        if (
            old is not None
            and old.model_path == path
            and old_runtime == runtime
            and getattr(old, "assisted", None) == assisted
        ):
            return old, None
        message = f"Loading {what}"
        reporter.report(0.0, message)
        started = time.perf_counter()
        loaded = threading.Event()

        def count_up() -> None:  # loading reports no progress: say how long it has taken so far
            while not loaded.wait(_LOADING_TICK_S):
                with self._ticker_lock:
                    if not loaded.is_set():
                        self.task.message = f"{message}… {time.perf_counter() - started:.0f} s"

        threading.Thread(target=count_up, name="nbkit-chat-loading", daemon=True).start()
        try:
            if assisted is None:
                session = self.session_factory(path, runtime, settings)
            else:
                session = self.session_factory(path, runtime, settings, assisted=assisted)
        finally:
            with self._ticker_lock:
                loaded.set()
        load_s = time.perf_counter() - started
        if old is not None and old.model_path == path:  # a new device: the conversation carries over
            session.messages, session.turns = list(old.messages), list(old.turns)
        if old is not None:
            old.close()  # releases its hold on the cache entry
        warmup_s = getattr(session, "warmup_s", 0.0)
        self.log_output.append_stdout(
            f"Loaded {path.name} on {runtime.device} in {load_s:.1f} s"
            + (f", warm-up {warmup_s * 1000:.0f} ms included" if warmup_s else "")
            + (f", {assisted.label}" if assisted is not None else "")
            + "\n"
        )
        return session, load_s

    def _session_for(
        self, reporter: ProgressReporter, path: Path, runtime: RuntimeConfig, settings: GenerationSettings
    ) -> tuple[BaseChatSession, float | None]:
        session, load_s = self._open(
            reporter, self.session, self._session_runtime, path, runtime, settings, "the model"
        )
        if str(path) != self.model_path:  # another model was picked while this one loaded
            session.close()
            raise Cancelled(f"{path.name} was replaced by another model before it answered.")
        self.session, self._session_runtime = session, runtime
        return session, load_s

    def _compare_session_for(
        self,
        reporter: ProgressReporter,
        path: Path,
        label: str,
        runtime: RuntimeConfig,
        settings: GenerationSettings,
    ) -> tuple[BaseChatSession, float | None]:
        session, load_s = self._open(
            reporter, self.compare_session, self._compare_runtime, path, runtime, settings, label
        )
        self.compare_session, self._compare_runtime, self._compare_label = session, runtime, label
        return session, load_s

    def _finish(self, answers: _Answers) -> str:
        row = self._pending
        self._pending = None
        main = answers.main
        if row is not None:
            row.main.meta.value = _metrics_html(main, answers.main_load_s)
            if row.compare is not None and answers.compare is not None:
                row.compare.meta.value = _metrics_html(answers.compare, answers.compare_load_s)
            elif row.compare is not None:
                why = "stopped before it answered" if main.stopped else "the comparison was changed"
                row.compare.answer.value = f'<div style="{_META}">Not answered: {why}.</div>'
        self._refresh_downloads()
        m = main.metrics
        if main.stopped:
            raise Cancelled(
                f"Stopped after {plural(m.generated_tokens, 'token')}; the partial answer is kept."
            )
        summary = f"Answered {plural(m.generated_tokens, 'token')} · TTFT {m.ttft_ms:.0f} ms · {m.tokens_per_s:.1f} tokens/s"
        if main.reached_token_limit:
            summary += (
                f" · stopped at the token limit ({plural(main.max_new_tokens, 'token')}); "
                "raise Max tokens in Generation settings for longer answers"
            )
        if answers.main_load_s is not None:
            summary += f" · model loaded in {answers.main_load_s:.1f} s first"
        if answers.compare is not None:
            c = answers.compare.metrics
            if answers.compare.stopped:
                raise Cancelled(
                    f"Stopped {answers.compare_label} after {plural(c.generated_tokens, 'token')}; "
                    "both answers are kept."
                )
            summary += f"; {answers.compare_label}: {plural(c.generated_tokens, 'token')} · {c.tokens_per_s:.1f} tokens/s"
        return summary

    def _stop_sessions(self) -> None:
        for session in (self.session, self.compare_session):
            if session is not None:
                session.stop()

    def _retire(self, session: BaseChatSession | None) -> None:
        """Close ``session`` now, or when the answer it may be giving is over."""
        if session is None:
            return
        if self.task.running:
            self._retired.append(session)
        else:
            session.close()

    def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for session in retired:
            if session is not self.session and session is not self.compare_session:
                session.close()

    def _close_sessions(self) -> None:
        self._close_retired()
        for name in ("session", "compare_session"):
            session = getattr(self, name)
            setattr(self, name, None)
            if session is not None:
                session.close()  # stops an answer still streaming and releases the cache entry

    # -- reacting ---------------------------------------------------------------------------------

    def _on_prompt_msg(self, _: Any, content: dict[str, Any], buffers: Any = None) -> None:
        if content.get("event") == "submit":  # Enter in the text box
            self.send()

    def _read_settings(self, _: Any = None) -> None:
        self.settings = self.generation.settings
        self.view.notify("error" if self.generation.error else "", self.generation.error)
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.task.running
        self.send_button.disabled = running or self.settings is None
        self.stop_button.disabled = not running
        self.regenerate_button.disabled = running or not self._rows
        self.new_button.disabled = running
        for button in self.example_buttons:
            button.disabled = running

    def _show_ready(self) -> None:
        if self.task.running:
            return
        if self.model_path:
            self.view.show("info", "Ready: type a message and press Enter.")
        else:
            self.view.show("info", "Pick a model to start chatting.")

    def _on_model_or_runtime(self, change: dict[str, Any] | None = None) -> None:
        if change is not None and change["name"] == "model_path":
            self._archive(self.session, change.get("old") and self._label_before(change["old"]))
            self._retire(self.session)
            self.session, self._session_runtime = None, None  # a new model: a new conversation
            if self.compare_session is not None:
                self._archive(self.compare_session, self._compare_label)
                if self.task.running:  # it may be answering: let it finish, then close it
                    self._retire(self.compare_session)
                    self.compare_session, self._compare_runtime = None, None
                else:
                    self.compare_session.reset()  # the compared model starts over with the new one
            self._clear_history()
            self._show_ready()  # whatever the last answer's outcome, it is stale now
            if self.preload and self.model_path and not self.load():
                # A preload of the model before is still ending (cancelled above): this one follows it.
                self._reload_pending = self.task.running
        try:
            runtime = self.session_runtime()
        except NbkitError as exc:
            self.header.value = f"<div style='color:#cf222e'>{html.escape(first_sentence(exc))}</div>"
            return
        hint = runtime.property_dict.get("PERFORMANCE_HINT")
        device = f"{runtime.device}" + (f" ({hint})" if hint else "")
        engine = get_engine(self.engine) if self.engine else None
        about = ""
        if engine is not None:
            if self.runtime is not None:
                source = "properties picked in the device selector"
            elif runtime != engine.base_runtime(runtime.device):
                source = "properties found by nbkit tune-device"
            else:
                source = "the engine's default properties"
            about = f" · {engine.title}, {source}"
        if self.model_path:
            self.header.value = (
                f"<div>Chatting with <b>{html.escape(self.model_label or Path(self.model_path).name)}</b> "
                f"on <b>{html.escape(device)}</b>"
                f"<span style='color:#57606a'>{html.escape(about)}</span></div>"
            )
            if self.task.state == IDLE:
                self._show_ready()
        else:
            self.header.value = (
                f"<div style='color:#57606a'>No model yet · device {html.escape(device)}</div>"
            )
        self.prompt.disabled = False

    def _label_before(self, old_path: str) -> str:
        # model_label changes together with model_path: set_model noted the one before
        label, self._archived_label = self._archived_label, ""
        return label or Path(old_path).name

    def _on_task_state(self, change: dict[str, Any]) -> None:
        self._update_buttons()
        new = change["new"]
        if new == RUNNING:
            return
        self._close_retired()
        self._loading = False  # whatever ended, no preload runs now
        if self._reload_pending:  # the cancelled preload ended: the current model's starts now
            threading.Thread(target=self._reload, name="nbkit-chat-reload", daemon=True).start()
        elif new in (ERROR, CANCELLED) and self._queued:  # the preload failed: the message comes back
            if not self.prompt.value:
                self.prompt.value = self._queued
            self._queued, self._queued_pending = "", False
        # The answer ended: a refusal shown while it streamed ("Still answering…") is stale now.
        self.view.notify("error" if self.generation.error else "", self.generation.error)
        row, self._pending = self._pending, None
        if new not in (ERROR, CANCELLED) or row is None:
            return
        if "main" not in row.done:
            # The turn never happened (a failure, or a stop while loading): take it off the page
            # and give the message back. A stopped answer that began is kept (_finish ran).
            if row in self._rows:
                self._rows.remove(row)
                _close_row(row)
            self._render_rows()
            if not self.prompt.value:
                self.prompt.value = self._last_prompt
            return
        # The first answer is complete; the compared model failed or was stopped before it answered.
        main_turn = row.main.turn
        if main_turn is not None and not row.main.meta.value:
            row.main.meta.value = _metrics_html(main_turn, None)
        if row.compare is not None and "compare" not in row.done:
            why = self.task.error if new == ERROR else "stopped before it answered"
            row.compare.answer.value = f'<div style="{_META}">Not answered: {html.escape(why)}</div>'
        self._refresh_downloads()

    def _render_rows(self) -> None:
        children = [w for row in self._rows for w in row.widgets]
        self.history.children = children or [self.empty]
        self._update_buttons()

    def _clear_history(self) -> None:
        for row in self._rows:
            _close_row(row)
        self._rows = []
        self._pending = None
        self.current_text = ""
        self.compare_text = ""
        self._render_rows()
        self._refresh_downloads()

    def _refresh_downloads(self) -> None:
        if not self.turns:
            self.downloads.value = '<span style="color:#57606a">The transcript can be downloaded once the model has answered.</span>'
            return
        name = f"chat-{Path(self.model_path).name}"
        links = [
            download_link(self.transcript_markdown(), f"{name}.md", "text/markdown", "Markdown"),
            download_link(self.transcript_json(), f"{name}.json", "application/json", "JSON with metrics"),
        ]
        if self.compare_session is not None and self.compare_session.turns:
            other = f"chat-{self.compare_session.model_path.name}"
            links.append(
                download_link(
                    self.compare_session.transcript_markdown(),
                    f"{other}.md",
                    "text/markdown",
                    f"{self._compare_label} (Markdown)",
                )
            )
        self.downloads.value = "<div>Download: " + "".join(links) + "</div>"

    # -- past conversations -----------------------------------------------------------------------

    _archived_label = ""

    def _archive(self, session: BaseChatSession | None, label: str | None) -> None:
        if session is None or not session.turns:
            return
        entry = PastConversation(
            model_label=label or session.model_path.name,
            model_path=str(session.model_path),
            turns=tuple(session.turns),
            markdown=session.transcript_markdown(),
            json=session.transcript_json(),
            ended=time.strftime("%H:%M:%S"),
        )
        self.past_conversations = [*self.past_conversations, entry]

    def _on_past(self, _: Any = None) -> None:
        past: list[PastConversation] = list(self.past_conversations)
        self.extras.set_title(2, f"Earlier conversations ({len(past)})")
        if not past:
            self.past_picker.options, self.past_picker.value = [("none yet", -1)], -1
            self.past_view.value = ""
            return
        options = [(f"{i + 1}. {p.title}", i) for i, p in enumerate(past)]
        self.past_picker.options = options
        self.past_picker.value = len(past) - 1
        self._show_past()

    def _show_past(self, _: Any = None) -> None:
        index = self.past_picker.value
        past: list[PastConversation] = list(self.past_conversations)
        if index is None or not 0 <= index < len(past):
            self.past_view.value = ""
            return
        entry = past[index]
        name = f"chat-{Path(entry.model_path).name}-{index + 1}"
        links = download_link(entry.markdown, f"{name}.md", "text/markdown", "Markdown") + download_link(
            entry.json, f"{name}.json", "application/json", "JSON with metrics"
        )
        self.past_view.value = f"<div>Download: {links}</div>{_transcript_html(entry.turns)}"

    # -- comparing --------------------------------------------------------------------------------

    def _compare_choices(self) -> list[tuple[str, int]]:
        """The "Compare with" options: (label, index in available_models), the chat's own model left out."""
        choices = [("nothing", -1)]
        for index, model in enumerate(self.available_models):
            path, label, _ = _describe(model)
            if path != self.model_path:
                choices.append((label, index))
        return choices

    def _on_available_models(self, _: Any = None) -> None:
        choices = self._compare_choices()
        wanted = _describe(self.compare_model)[0] if self.compare_model is not None else ""
        keep = next(
            (i for _, i in choices if i >= 0 and _describe(self.available_models[i])[0] == wanted), -1
        )
        self.compare_with.options = choices
        self.compare_with.value = keep
        # The same folder keeps its session; a model no longer offered is compared no more.
        self.compare_model = self.available_models[keep] if keep >= 0 else None

    def _on_compare_choice(self, change: dict[str, Any]) -> None:
        index = change["new"]
        self.compare_model = self.available_models[index] if index is not None and index >= 0 else None

    def _on_compare_model(self, change: dict[str, Any]) -> None:
        model = change["new"]
        path = _describe(model)[0] if model is not None else ""
        if model is not None and path == self.model_path:
            self.compare_model = None  # comparing a model with itself shows nothing new
            self.view.notify("warn", "That is the model of this chat; pick another one to compare with.")
            return
        if model is not None and all(_describe(m)[0] != path for m in self.available_models):
            self.available_models = [*self.available_models, model]  # offered from now on
        index = next(
            (
                i
                for _, i in self._compare_choices()
                if i >= 0 and _describe(self.available_models[i])[0] == path
            ),
            -1,
        )
        if self.compare_with.value != index:
            self.compare_with.value = index
        old = self.compare_session
        if old is not None and (model is None or Path(path) != old.model_path):
            self._archive(old, self._compare_label)
            self._retire(old)  # now, or when the answer it may be giving is over
            self.compare_session, self._compare_runtime = None, None
        if model is not None and change["old"] is None:
            self.view.notify("info", f"Each message now goes to {_describe(model)[1]} too, side by side.")
