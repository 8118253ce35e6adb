"""ChatPane: a streamed, stoppable, measured multi-turn chat with a model of any engine.

The pane drives any :class:`~nbkit.engines.base.BaseChatSession` made by
``session_factory(model_path, runtime, settings)``; by default the model folder's engine, found
in the registry, opens it (:meth:`~nbkit.engines.protocol.Engine.open_chat`: openvino-genai for
an OpenVINO IR, onnxruntime-genai for an Olive build). Unless a runtime is picked explicitly,
the model runs with ``engine.default_runtime(model, device)``: what ``nbkit tune-device``
recorded for it, else the engine's default, as ``nbkit chat`` does. Generation runs in a
worker thread; tokens reach the page as they arrive.
"""

from __future__ import annotations

import contextlib
import html
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.base import BaseChatSession, Turn
from nbkit.engines.protocol import BuiltModel, Engine
from nbkit.engines.registry import engine_for_folder, engine_of_model, get_engine
from nbkit.errors import Cancelled, NbkitError
from nbkit.infra.progress import ProgressReporter

from ._common import download_link, first_sentence, title_html
from ._panel import Panel
from ._worker import CANCELLED, ERROR, IDLE, RUNNING, STATES, BackgroundTask, TaskView
from .generation_form import GenerationForm

SessionFactory = Callable[[Path, RuntimeConfig, GenerationSettings], BaseChatSession]
_REDRAW_S = 0.05  # at most 20 page updates a second while streaming
_USER = "margin:8px 0 2px 18%;padding:6px 10px;background:#ddf4ff;border-radius:10px;white-space:pre-wrap"
_BOT = "margin:2px 18% 0 0;padding:6px 10px;background:#f6f8fa;border-radius:10px;white-space:pre-wrap"
_META = "margin:0 0 4px 4px;color:#57606a;font-size:11px"


def engine_session(model_path: Path, runtime: RuntimeConfig, settings: GenerationSettings) -> BaseChatSession:
    """The default: the session of the engine that loads ``model_path`` (found in the registry)."""
    return engine_of_model(model_path).open_chat(model_path, runtime, settings)


def openvino_session(
    model_path: Path, runtime: RuntimeConfig, settings: GenerationSettings
) -> BaseChatSession:
    """openvino-genai's LLMPipeline, whatever the folder holds (kept for notebooks that name it)."""
    return get_engine("openvino").open_chat(model_path, runtime, settings)


def _bubble(text: str, style: str, cursor: bool = False) -> str:
    return f'<div style="{style}">{html.escape(text)}{"▌" if cursor else ""}</div>'


def _metrics_line(turn: Turn) -> str:
    m = turn.metrics
    stopped = " · stopped" if turn.stopped else ""
    return (
        f'<div style="{_META}">TTFT {m.ttft_ms:.0f} ms · {m.tokens_per_s:.1f} tokens/s · '
        f"{m.generated_tokens} tokens · {m.total_s:.1f} s{stopped}</div>"
    )


class ChatPane(Panel):
    """Chat with a model folder of any engine: Enter sends, Stop ends the answer, New chat clears."""

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

    def __init__(
        self,
        model: BuiltModel | Path | str | None = None,
        *,
        runtime: RuntimeConfig | None = None,
        device: str = "CPU",
        settings: GenerationSettings | None = None,
        session_factory: SessionFactory | None = None,
        export_dir: Path | str | None = None,
        system_prompt: str = "",
    ) -> None:
        self._start_registry()
        self.session_factory = session_factory or engine_session
        self.export_dir = Path(export_dir) if export_dir is not None else Path.cwd()
        self.session: BaseChatSession | None = None
        self._session_runtime: RuntimeConfig | None = None  # what the session was asked to open with
        self._pending: list[widgets.HTML] = []
        self._last_prompt = ""
        self.log_output = widgets.Output(layout=widgets.Layout(max_height="160px", overflow="auto"))
        self.task = self.own_task(BackgroundTask("the answer", self.log_output))
        self.header = widgets.HTML(tooltip="The model and device of this chat")
        self.empty = widgets.HTML(
            '<div style="color:#57606a;font-style:italic;padding:8px">No messages yet. '
            "Ask something, e.g. “What is the capital of France?”</div>"
        )
        self.history = widgets.VBox([self.empty], layout=widgets.Layout(width="100%"))
        # column-reverse keeps the newest message in view without any scrolling code
        self.scroller = widgets.Box(
            [self.history],
            layout=widgets.Layout(
                display="flex",
                flex_flow="column-reverse",
                overflow="auto",
                height="360px",
                border="1px solid #d0d7de",
                padding="4px 8px",
                width="100%",
            ),
        )
        self.prompt = widgets.Text(
            placeholder="Type a message and press Enter",
            tooltip="Your message; Enter sends it",
            layout=widgets.Layout(flex="1 1 auto", width="auto"),
        )
        self.on_msg(self.prompt, self._on_prompt_msg)
        self.send_button = widgets.Button(
            description="Send",
            icon="paper-plane",
            button_style="primary",
            tooltip="Send the message (or press Enter)",
            layout=widgets.Layout(width="96px"),
        )
        self.on_click(self.send_button, lambda _: self.send())
        self.new_button = widgets.Button(
            description="New chat",
            icon="plus",
            tooltip="Forget the conversation and start over",
            layout=widgets.Layout(width="110px"),
        )
        self.on_click(self.new_button, lambda _: self.new_chat())
        self.view = TaskView(self.task, idle_text="Pick a model to start chatting.", cancel_label="Stop")
        self.generation = GenerationForm(settings, system_prompt=system_prompt)
        # The form's controls under the names a notebook (and the tests) reach them by.
        self.max_new_tokens = self.generation.max_new_tokens
        self.do_sample = self.generation.do_sample
        self.temperature = self.generation.temperature
        self.top_p = self.generation.top_p
        self.repetition_penalty = self.generation.repetition_penalty
        self.system_prompt = self.generation.system_prompt
        self.save_md = widgets.Button(
            description="Save Markdown",
            icon="download",
            tooltip="Write the transcript as a .md file",
            layout=widgets.Layout(width="150px"),
        )
        self.on_click(self.save_md, lambda _: self.save_transcript("markdown"))
        self.save_json = widgets.Button(
            description="Save JSON",
            icon="download",
            tooltip="Write the transcript with metrics as .json",
            layout=widgets.Layout(width="130px"),
        )
        self.on_click(self.save_json, lambda _: self.save_transcript("json"))
        self.downloads = widgets.HTML(tooltip="Saved transcripts; click to download")
        transcript_box = widgets.VBox([widgets.HBox([self.save_md, self.save_json]), self.downloads])
        extras = widgets.Accordion(
            [self.generation, transcript_box, self.log_output],
            titles=("Generation settings", "Transcript", "Log"),
            selected_index=None,
        )
        super().__init__(
            [
                widgets.HTML(title_html("Chat", "streamed answers, measured per turn")),
                self.header,
                self.scroller,
                widgets.HBox(
                    [self.prompt, self.send_button, self.new_button], layout=widgets.Layout(width="100%")
                ),
                self.view,
                extras,
            ]
        )
        self.own(self.view, self.generation)
        self.runtime, self.device = runtime, device
        self.watch(self.generation, self._read_settings, ["settings", "error"])
        self.watch(self, self._on_model_or_runtime, ["model_path", "runtime", "device", "model_label"])
        self.watch(self.task, self._on_task_state, "state")
        self.dlink((self.task, "state"), (self, "state"))
        self.on_close(self._close_session)
        self._read_settings()
        if model is not None:
            self.set_model(model)
        self._on_model_or_runtime()

    # -- public actions ---------------------------------------------------------------------------

    def set_model(self, model: BuiltModel | Path | str | None, label: str = "") -> None:
        """Chat with ``model`` (a built model of any engine, or a model folder); starts a new conversation."""
        built: BuiltModel | None = None
        if model is not None and not isinstance(model, str | Path):
            built = model
            path, label = str(built.path), label or f"{built.source_name} · {built.label}"
            engine: Engine | None = engine_of_model(built)
        else:
            path = str(Path(model).expanduser()) if model else ""
            label = label or (Path(path).name if path else "")
            engine = engine_for_folder(path) if path else None
        if path == self.model_path:
            self.model = built or self.model
            return
        self.task.cancel()
        self.model = built
        with self.hold_trait_notifications():
            self.engine = engine.name if engine is not None else ""
            self.model_label = label
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

    def send(self, prompt: str | None = None) -> bool:
        """Answer ``prompt`` (default: the text box) in the background; False when refused (and why)."""
        text = (self.prompt.value if prompt is None else prompt).strip()
        if self.task.running:
            self.view.notify("warn", "Still answering the previous message; wait for it or press Stop.")
            return False
        if not text:
            self.view.notify("warn", "Type a message first.")
            return False
        if not self.model_path:
            self.view.notify("warn", "Pick a model first: prepare one in the Model tab (or call set_model).")
            return False
        settings = self.settings
        if settings is None:
            self.view.notify("error", "Fix the generation settings first (see the message above).")
            return False
        self.view.notify("", "")
        self._last_prompt = text
        if prompt is None or self.prompt.value.strip() == text:
            self.prompt.value = ""
        user, answer, meta = (
            widgets.HTML(_bubble(text, _USER)),
            widgets.HTML(_bubble("", _BOT, True)),
            widgets.HTML(""),
        )
        self._pending = [user, answer, meta]
        self.history.children = [c for c in self.history.children if c is not self.empty] + self._pending
        self.current_text = ""
        system = self.generation.system
        self.task.start(
            lambda reporter: self._generate(reporter, text, settings, system, answer),
            on_success=lambda turn: self._finish(turn, answer, meta),
            on_cancel=self._stop_session,
            message="Loading the model" if self.session is None else "Thinking",
        )
        return True

    def stop(self) -> bool:
        """End the answer after its next token (the partial answer is kept)."""
        return self.task.cancel()

    def new_chat(self) -> bool:
        """Forget the conversation (the loaded model stays); refused while an answer streams."""
        if self.task.running:
            self.view.notify("warn", "Stop the current answer before starting a new chat.")
            return False
        if self.session is not None:
            self.session.reset()
        self._clear_history()
        self.view.notify("info", "New chat started.")
        return True

    def wait(self, timeout: float | None = None) -> str:
        return self.task.wait(timeout)

    @property
    def turns(self) -> list[Turn]:
        return list(self.session.turns) if self.session is not None else []

    def transcript_markdown(self) -> str:
        return self.session.transcript_markdown() if self.session is not None else ""

    def transcript_json(self) -> str:
        return self.session.transcript_json() if self.session is not None else ""

    def save_transcript(self, fmt: str = "markdown") -> Path | None:
        """Write the transcript to ``export_dir`` and offer it as a download link."""
        if not self.turns:
            self.view.notify("warn", "Nothing to save yet: send a message first.")
            return None
        markdown = fmt == "markdown"
        text = self.transcript_markdown() if markdown else self.transcript_json()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"chat-{Path(self.model_path).name}-{stamp}.{'md' if markdown else 'json'}"
        try:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            path = self.export_dir / name
            path.write_text(text)
        except OSError as exc:
            self.view.notify("error", f"Cannot write the transcript to {self.export_dir}: {exc.strerror}.")
            return None
        mime = "text/markdown" if markdown else "application/json"
        self.downloads.value += (
            f"<div>{download_link(text, name, mime, name)}<code>{html.escape(str(path))}</code></div>"
        )
        self.view.notify("ok", f"Saved the transcript to {path}.")
        return path

    # -- the worker thread ------------------------------------------------------------------------

    def _generate(
        self,
        reporter: ProgressReporter,
        text: str,
        settings: GenerationSettings,
        system: str | None,
        answer: widgets.HTML,
    ) -> Turn:
        session = self._session_for(Path(self.model_path), self.session_runtime(), settings)
        reporter.report(0.0, "Thinking")
        session.system_prompt = system
        pieces: list[str] = []
        last_draw = 0.0

        def on_text(piece: str) -> None:
            nonlocal last_draw
            pieces.append(piece)
            self.current_text += piece
            if reporter.cancel_token.cancelled:
                session.stop()  # a Stop that came before generation began
            now = time.perf_counter()
            if now - last_draw >= _REDRAW_S:
                last_draw = now
                answer.value = _bubble(self.current_text, _BOT, cursor=True)
                with contextlib.suppress(Cancelled):  # never raise into the engine: stop() ends it
                    reporter.report(len(pieces) / settings.max_new_tokens, f"Answering: {len(pieces)} tokens")

        return session.send(text, on_text, settings=settings)

    def _session_for(
        self, path: Path, runtime: RuntimeConfig, settings: GenerationSettings
    ) -> BaseChatSession:
        old = self.session
        # Compared with what the session was asked for: an engine may normalize its runtime
        # (ONNX Runtime GenAI drops OpenVINO's properties), which is no reason to reload.
        if old is not None and old.model_path == path and self._session_runtime == runtime:
            return old
        started = time.perf_counter()
        session = self.session_factory(path, runtime, settings)
        if old is not None and old.model_path == path:  # a new device: the conversation carries over
            session.messages, session.turns = list(old.messages), list(old.turns)
        if old is not None:
            old.close()  # releases its hold on the cache entry
        self.session, self._session_runtime = session, runtime
        self.log_output.append_stdout(
            f"Loaded {path.name} on {runtime.device} in {time.perf_counter() - started:.1f} s\n"
        )
        return session

    def _finish(self, turn: Turn, answer: widgets.HTML, meta: widgets.HTML) -> str:
        self.current_text = turn.text
        answer.value = _bubble(turn.text, _BOT)
        meta.value = _metrics_line(turn)
        self._pending = []
        m = turn.metrics
        if turn.stopped:
            raise Cancelled(f"Stopped after {m.generated_tokens} tokens; the partial answer is kept.")
        return (
            f"Answered {m.generated_tokens} tokens · TTFT {m.ttft_ms:.0f} ms · {m.tokens_per_s:.1f} tokens/s"
        )

    def _stop_session(self) -> None:
        if self.session is not None:
            self.session.stop()

    def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()  # stops an answer still streaming and releases the cache entry

    # -- reacting ---------------------------------------------------------------------------------

    def _on_prompt_msg(self, _: Any, content: dict[str, Any], buffers: Any = None) -> None:
        if content.get("event") == "submit":  # Enter in the text box
            self.send()

    def _read_settings(self, _: Any = None) -> None:
        self.settings = self.generation.settings
        self.view.notify("error" if self.generation.error else "", self.generation.error)
        self.send_button.disabled = self.settings is None

    def _on_model_or_runtime(self, change: dict[str, Any] | None = None) -> None:
        if change is not None and change["name"] == "model_path":
            if self.session is not None and not self.task.running:
                self.session.close()
            self.session, self._session_runtime = None, None  # a new model: a new conversation
            self._clear_history()
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
                self.view.show("info", "Ready: type a message and press Enter.")
        else:
            self.header.value = (
                f"<div style='color:#57606a'>No model yet · device {html.escape(device)}</div>"
            )
        self.prompt.disabled = False

    def _on_task_state(self, change: dict[str, Any]) -> None:
        running = change["new"] == RUNNING
        self.new_button.disabled = running
        if change["new"] in (ERROR, CANCELLED) and self._pending:
            # The turn never happened (a failure, or a stop while loading): take it off the page
            # and give the message back. A stopped answer that began is kept (_finish ran).
            self.history.children = [c for c in self.history.children if c not in self._pending] or [
                self.empty
            ]
            self._pending = []
            if not self.prompt.value:
                self.prompt.value = self._last_prompt

    def _clear_history(self) -> None:
        self.history.children = [self.empty]
        self._pending = []
        self.current_text = ""
