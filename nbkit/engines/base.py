"""What every engine's chat session shares: the conversation, streaming, stop, metrics, transcripts.

An engine subclasses :class:`BaseChatSession` and provides two things: counting the tokens
of a rendered conversation, and generating an answer piece by piece. Everything a user
touches (``send``, ``stop``, ``reset``, the system prompt, context-length checks, cut
characters, transcripts, holding the model's cache entry) lives here once, so both engines
behave the same in the CLI, the panels and the Python API.
"""

from __future__ import annotations

import abc
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.errors import BusyError, ConfigError, ContextLengthError
from nbkit.infra.cache import hold_entry
from nbkit.sources.architecture import config_int, read_config

log = logging.getLogger(__name__)

TextCallback = Callable[[str], None]

# Lone surrogates: Python's stand-ins for bytes that were not UTF-8 (sys.argv and stdin decode
# undecodable bytes with "surrogateescape"); tokenizers cannot encode them.
_SURROGATES = re.compile("[\ud800-\udfff]")
# Those outside U+DC80..U+DCFF stand for no byte, so surrogateescape cannot turn them back.
_NOT_ESCAPED_BYTES = re.compile("[\ud800-\udc7f\udd00-\udfff]")
REPLACEMENT = "\ufffd"


def clean_message(message: object, what: str = "message") -> str:
    """``message`` as text the engines can tokenize, or a ConfigError sentence.

    The one place every chat message passes (``send()`` of both engines, hence the CLI and the
    panels): it must be a string, and not only whitespace. Bytes that were not UTF-8 (a
    terminal in another encoding) are decoded with replacement characters (U+FFFD) and a
    warning is logged, rather than failing deep inside the tokenizer.
    """
    if not isinstance(message, str):
        kind = "None" if message is None else f"the {type(message).__name__} {message!r}"
        raise ConfigError(f"The {what} must be text (a str), not {kind}.")
    if _SURROGATES.search(message):
        raw = _NOT_ESCAPED_BYTES.sub(REPLACEMENT, message).encode("utf-8", "surrogateescape")
        message = raw.decode("utf-8", "replace")
        log.warning(
            "The %s was not valid UTF-8 text; each undecodable byte sequence was replaced by U+FFFD (%s).",
            what,
            REPLACEMENT,
        )
    if not message.strip():
        raise ConfigError(f"The {what} is empty; type a question first.")
    return message


def clean_system_prompt(system_prompt: object) -> str | None:
    """``system_prompt`` checked like a message (:func:`clean_message`); None, "" or blank mean none."""
    if system_prompt is None or (isinstance(system_prompt, str) and not system_prompt.strip()):
        return None
    return clean_message(system_prompt, "system prompt")


class CutCharacterGuard:
    """Holds back a trailing U+FFFD of streamed text until more text shows it was not a cut.

    Decoding a token stream that stops in the middle of a multi-byte UTF-8 character (an
    answer cut at ``max_new_tokens``, or stopped) yields U+FFFD for the incomplete bytes:
    openvino-genai's streamer flushes it at the end, and the final decode ends with it. Text
    that continues after the U+FFFD passes unchanged; a U+FFFD still held at the end is the
    half character and is dropped (see :meth:`finish`). Shared by both engines.
    """

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        """The part of ``piece`` (with what was held) that can be shown now."""
        text = self._held + piece
        shown = text.rstrip(REPLACEMENT)
        self._held = text[len(shown) :]
        return shown

    def finish(self) -> None:
        """End of the stream: what is still held was a cut character, and is never shown."""
        if self._held:
            log.debug(
                "Dropped %d trailing U+FFFD of a character cut by the end of the answer", len(self._held)
            )
        self._held = ""


def without_cut_character(text: str) -> str:
    """``text`` without the trailing U+FFFD a cut multi-byte character leaves."""
    return text.rstrip(REPLACEMENT)


@dataclass(frozen=True)
class TurnMetrics:
    """Speed of one turn, as openvino-genai measured it (times in milliseconds)."""

    input_tokens: int
    generated_tokens: int
    ttft_ms: float
    tpot_ms: float
    tokens_per_s: float
    total_s: float
    # Steps of the model that produced the tokens: one per token in plain decoding, fewer when
    # assisted decoding accepts guesses (each step yields the accepted guesses plus one token of
    # the model's own). 0: not counted.
    decode_steps: int = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def tokens_per_step(self) -> float | None:
        """Tokens each step of the model yielded on average (1.0 in plain decoding); None if not counted."""
        return self.generated_tokens / self.decode_steps if self.decode_steps else None

    @property
    def accepted_tokens(self) -> int:
        """Guessed tokens the model accepted (0 in plain decoding or when steps were not counted)."""
        return max(0, self.generated_tokens - self.decode_steps) if self.decode_steps else 0


FINISH_LENGTH, FINISH_STOP = "length", "stop"  # Turn.finish_reason: cut at max_new_tokens, ended by the model


@dataclass(frozen=True)
class Turn:
    prompt: str
    text: str
    stopped: bool  # True when stop() ended the turn early
    metrics: TurnMetrics
    max_new_tokens: int = 0  # the answer's token limit (0: not recorded)
    finish_reason: str = (
        ""  # the engine's word: "length" (cut at the limit), "stop" (the model ended it), or ""
    )

    @property
    def reached_token_limit(self) -> bool:
        """True when the answer was cut by ``max_new_tokens`` rather than ended by the model.

        The engine's finish reason when it gave one; else an answer that generated
        ``max_new_tokens`` tokens and was not stopped (it may then have ended on its last token).
        """
        if self.stopped:
            return False
        if self.finish_reason:
            return self.finish_reason == FINISH_LENGTH
        return self.max_new_tokens > 0 and self.metrics.generated_tokens >= self.max_new_tokens


class BaseChatSession(abc.ABC):
    """A conversation with one model; engines implement loading, token counting and generation.

    ``send()`` blocks until the answer is complete; call it from a worker thread in UIs and
    use ``stop()`` from any thread to end the current answer early (its text is kept).
    """

    engine: str = ""
    # An engine's _generate may set it to FINISH_LENGTH or FINISH_STOP (why the answer ended);
    # left empty, Turn.reached_token_limit counts the tokens instead.
    _finish_reason: str = ""

    def __init__(
        self,
        model_path: Path,
        runtime: RuntimeConfig,
        settings: GenerationSettings | None,
        system_prompt: str | None,
    ) -> None:
        self.model_path = model_path
        self.runtime = runtime
        if settings is not None and not isinstance(settings, GenerationSettings):
            raise ConfigError(f"settings must be a GenerationSettings, not a {type(settings).__name__}.")
        self.settings = settings or GenerationSettings()
        self.system_prompt = system_prompt
        self.messages: list[dict[str, str]] = []
        self.turns: list[Turn] = []
        self.context_length = _context_length(model_path)
        self.load_s = 0.0
        self.warmup_s = 0.0  # the warm-up's time (see warm_up()); 0 when the session skipped it
        self._stop = threading.Event()
        self._busy = threading.Lock()
        # While the session is open, `nbkit cache clear` skips its model instead of deleting it.
        self._hold = hold_entry(model_path)

    def close(self) -> None:
        """Stop any answer and release the model's cache entry (the session is unusable after)."""
        self.stop()
        self._hold.close()

    def __enter__(self) -> BaseChatSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def system_prompt(self) -> str | None:
        """The system message of every turn, or None (set None, "" or blank text for none)."""
        return self._system_prompt

    @system_prompt.setter
    def system_prompt(self, value: str | None) -> None:
        self._system_prompt = clean_system_prompt(value)

    def warm_up(self) -> float:
        """Answer a one-token message and forget it, so the first real turn starts like later ones.

        A pipeline's first inference pays one-off costs (kernels compiled for the shapes, memory
        allocated); without a warm-up the user's first question waits for them. Engines call
        this at the end of loading unless asked not to; it returns (and keeps in ``warmup_s``)
        the seconds it took. The conversation is untouched.
        """
        if not self._busy.acquire(blocking=False):
            raise BusyError("The model is answering; it is warm already.")
        try:
            started = time.perf_counter()
            self._generate(
                self._conversation(WARM_UP_MESSAGE), GenerationSettings(max_new_tokens=1), _keep_going
            )
            self.warmup_s = time.perf_counter() - started
        finally:
            self._finish_reason = ""
            self._busy.release()
        log.info("Warmed up %s in %.2f s", self.model_path.name, self.warmup_s)
        return self.warmup_s

    # -- what an engine provides -------------------------------------------------------------

    @abc.abstractmethod
    def _count_tokens(self, conversation: list[dict[str, str]]) -> int:
        """Tokens of ``conversation`` rendered with the chat template and a generation prompt."""

    @abc.abstractmethod
    def _generate(
        self,
        conversation: list[dict[str, str]],
        settings: GenerationSettings,
        on_piece: Callable[[str], bool],
    ) -> tuple[str, TurnMetrics]:
        """Answer ``conversation``; call ``on_piece`` per decoded piece, stop when it returns False."""

    # -- conversation ----------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new conversation (the loaded model stays)."""
        self.messages.clear()
        self.turns.clear()

    def pop_turn(self) -> Turn | None:
        """Take the last turn (and its two messages) back, e.g. to ask it again; None when there is none."""
        if self._busy.locked():
            raise BusyError("The model is still answering; stop it before taking the last turn back.")
        if not self.turns:
            return None
        del self.messages[-2:]
        return self.turns.pop()

    def _conversation(self, prompt: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, *self.messages, {"role": "user", "content": prompt}]

    def count_prompt_tokens(self, prompt: str) -> int:
        """Tokens the next turn's templated prompt takes (what must fit the context)."""
        return self._count_tokens(self._conversation(clean_message(prompt)))

    def send(
        self,
        prompt: str,
        on_text: TextCallback | None = None,
        *,
        settings: GenerationSettings | None = None,
    ) -> Turn:
        """Answer ``prompt`` in the context of the conversation, streaming text to ``on_text``."""
        prompt = clean_message(prompt)
        if settings is not None and not isinstance(settings, GenerationSettings):
            raise ConfigError(f"settings must be a GenerationSettings, not a {type(settings).__name__}.")
        settings = settings or self.settings
        if not self._busy.acquire(blocking=False):
            raise BusyError(
                "The model is still answering the previous message; wait for it or stop it first."
            )
        try:
            conversation = self._conversation(prompt)
            input_tokens = self._count_tokens(conversation)
            if input_tokens + settings.max_new_tokens > self.context_length:
                raise ContextLengthError(
                    f"The conversation is {input_tokens} tokens and max_new_tokens is {settings.max_new_tokens}, "
                    f"more than the model's context of {self.context_length} tokens; "
                    "start a new chat, shorten the message, or lower max_new_tokens."
                )
            return self._run_turn(prompt, conversation, settings, on_text)
        finally:
            # Cleared at the end, not the start, so a stop() right after send() is never lost.
            self._stop.clear()
            self._busy.release()

    def _run_turn(
        self,
        prompt: str,
        conversation: list[dict[str, str]],
        settings: GenerationSettings,
        on_text: TextCallback | None,
    ) -> Turn:
        # The engine's streamer only records pieces and reads the stop flag; a separate thread
        # hands pieces to ``on_text``. A slow consumer (a notebook redrawing HTML) then neither
        # slows decoding nor delays a stop.
        pieces: list[str] = []
        stop_seen = threading.Event()
        delivery: queue.Queue[str | None] = queue.Queue()
        failures: list[BaseException] = []
        guard = CutCharacterGuard()  # never streams half a character
        streamed = False

        def on_piece(piece: str) -> bool:
            nonlocal streamed
            streamed = True
            shown = guard.feed(piece)
            if shown:
                pieces.append(shown)
                delivery.put(shown)
            if self._stop.is_set() or failures:
                stop_seen.set()
                return False
            return True

        def deliver() -> None:
            while (piece := delivery.get()) is not None:
                if on_text is not None and not failures:
                    try:
                        on_text(piece)
                    except BaseException as exc:  # re-raised in send(); generation stops
                        failures.append(exc)

        deliverer = threading.Thread(target=deliver, name="nbkit-chat-delivery", daemon=True)
        deliverer.start()
        self._finish_reason = ""
        try:
            text, metrics = self._generate(conversation, settings, on_piece)
        finally:
            delivery.put(None)
            deliverer.join()
        guard.finish()
        if failures:
            raise failures[0]
        # Engines may decode a little past a stop: the history keeps exactly what was streamed;
        # without streaming, the engine's text loses a trailing cut character the same way.
        text = "".join(pieces) if streamed else without_cut_character(text)
        turn = Turn(
            prompt=prompt,
            text=text,
            stopped=stop_seen.is_set(),
            metrics=metrics,
            max_new_tokens=settings.max_new_tokens,
            finish_reason=self._finish_reason,
        )
        self.messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        self.turns.append(turn)
        return turn

    def stop(self) -> None:
        """End the answer being generated after its next token (thread-safe; no-op when idle)."""
        if self._busy.locked():
            self._stop.set()

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    # -- export ----------------------------------------------------------------------------

    def transcript_markdown(self) -> str:
        lines = [f"# Chat with {self.model_path.name} ({self.engine}, {self.runtime.device})", ""]
        for turn in self.turns:
            m = turn.metrics
            lines += [
                f"**User:** {turn.prompt}",
                "",
                f"**Assistant:** {turn.text}"
                + (" *(stopped)*" if turn.stopped else "")
                + (" *(stopped at the token limit)*" if turn.reached_token_limit else ""),
                "",
                f"<sub>TTFT {m.ttft_ms:.0f} ms · {m.tokens_per_s:.1f} tokens/s · {m.generated_tokens} tokens</sub>",
                "",
            ]
        return "\n".join(lines)

    def transcript_json(self) -> str:
        return json.dumps(
            {
                "model": str(self.model_path),
                "engine": self.engine,
                "runtime": self.runtime.to_dict(),
                "settings": self.settings.to_dict(),
                "system_prompt": self.system_prompt,
                "turns": [
                    {
                        "prompt": t.prompt,
                        "text": t.text,
                        "stopped": t.stopped,
                        "reached_token_limit": t.reached_token_limit,
                        "metrics": t.metrics.to_dict(),
                    }
                    for t in self.turns
                ],
            },
            indent=2,
        )


WARM_UP_MESSAGE = "Hi"


def _keep_going(_: str) -> bool:
    return True


def _context_length(model_path: Path) -> int:
    if not (model_path / "config.json").is_file():
        return 2048  # a conservative default when the folder has no Hugging Face config
    # A damaged config.json is a ModelSourceError naming the file and field, not a traceback.
    config = read_config(model_path)
    names = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
    return config_int(config, names, model_path / "config.json", default=2048)
