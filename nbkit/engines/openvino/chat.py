"""Chat with an OpenVINO model through openvino-genai: multi-turn, streaming, stoppable, measured.

:class:`ChatSession` keeps the conversation as plain ``{"role", "content"}`` messages and
passes them to ``LLMPipeline.generate`` as a ``ChatHistory`` each turn, so the model's own
chat template is applied and the history can be shown, exported or edited freely.
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
from typing import Any

from nbkit.artifacts import OVModel
from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.openvino.devices import check_device
from nbkit.errors import (
    ConfigError,
    ContextLengthError,
    DeviceError,
    ModelSourceError,
    NbkitError,
    error_summary,
)
from nbkit.infra.cache import hold_entry
from nbkit.sources.architecture import config_int, read_config

log = logging.getLogger(__name__)

# LATENCY: a chat is one request at a time (on a loaded 2-core CPU it decoded up to twice as fast
# as the defaults; on a quiet one the two were equal within noise).
# f32: on CPUs with bf16 units (AVX512-BF16, AMX) OpenVINO computes in bf16 by default, which on
# SmolLM2-135M turned INT8's "The capital of France is Paris." into "L'Étoile, la Marseillaise..."
# (1 of 8 fixed answers equal to float's, against 4 of 8 in f32), while INT4 decoded at the same
# speed within noise (interleaved medians 86 tokens/s both). CPUs without bf16 compute in f32 anyway.
DEFAULT_RUNTIME = RuntimeConfig.create(
    "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
)

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

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Turn:
    prompt: str
    text: str
    stopped: bool  # True when stop() ended the turn early
    metrics: TurnMetrics


class BaseChatSession(abc.ABC):
    """A conversation with one model; engines implement loading, token counting and generation.

    ``send()`` blocks until the answer is complete; call it from a worker thread in UIs and
    use ``stop()`` from any thread to end the current answer early (its text is kept).
    """

    engine: str = ""

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
            raise NbkitError(
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
        turn = Turn(prompt=prompt, text=text, stopped=stop_seen.is_set(), metrics=metrics)
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
                f"**Assistant:** {turn.text}" + (" *(stopped)*" if turn.stopped else ""),
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
                    {"prompt": t.prompt, "text": t.text, "stopped": t.stopped, "metrics": t.metrics.to_dict()}
                    for t in self.turns
                ],
            },
            indent=2,
        )


class ChatSession(BaseChatSession):
    """Chat through openvino-genai's ``LLMPipeline`` with the model's own chat template."""

    engine = "openvino"

    def __init__(
        self,
        model: OVModel | Path | str,
        runtime: RuntimeConfig | None = None,
        settings: GenerationSettings | None = None,
        *,
        system_prompt: str | None = None,
    ) -> None:
        import openvino_genai

        model_path = model.path if isinstance(model, OVModel) else Path(model).expanduser()
        if not (model_path / "openvino_model.xml").is_file():
            raise ModelSourceError(
                f"{model_path} is not an OpenVINO model folder (no openvino_model.xml); "
                "export one with nbkit.export_openvino or `nbkit export`."
            )
        if not (model_path / "openvino_detokenizer.xml").is_file():
            raise ModelSourceError(
                f"{model_path} has no openvino_tokenizer.xml/openvino_detokenizer.xml; re-export it with nbkit."
            )
        runtime = runtime or default_runtime(model)
        if not isinstance(runtime, RuntimeConfig):
            raise ConfigError(f"runtime must be a RuntimeConfig, not a {type(runtime).__name__}.")
        device = check_runtime(runtime)
        super().__init__(model_path, runtime, settings, system_prompt)
        started = time.perf_counter()
        try:
            self.pipeline = openvino_genai.LLMPipeline(str(model_path), device, **runtime.property_dict)
        except RuntimeError as exc:
            raise DeviceError(
                f"openvino-genai could not load {model_path.name} on {device} with "
                f"{runtime.property_dict or 'default properties'}: {error_summary(exc)}"
            ) from exc
        self.load_s = time.perf_counter() - started
        self.tokenizer = self.pipeline.get_tokenizer()
        log.info("Loaded %s on %s in %.1f s", model_path.name, device, self.load_s)

    def _count_tokens(self, conversation: list[dict[str, str]]) -> int:
        import openvino_genai

        text = self.tokenizer.apply_chat_template(
            openvino_genai.ChatHistory(conversation), add_generation_prompt=True
        )
        return int(self.tokenizer.encode(text, add_special_tokens=False).input_ids.get_shape()[-1])

    def _generate(
        self,
        conversation: list[dict[str, str]],
        settings: GenerationSettings,
        on_piece: Callable[[str], bool],
    ) -> tuple[str, TurnMetrics]:
        import openvino_genai

        pieces: list[str] = []

        def stream(piece: str) -> openvino_genai.StreamingStatus:
            pieces.append(piece)
            # STOP keeps what was generated (CANCEL would drop it).
            keep_going = on_piece(piece)
            return (
                openvino_genai.StreamingStatus.RUNNING if keep_going else openvino_genai.StreamingStatus.STOP
            )

        started = time.perf_counter()
        result = self.pipeline.generate(
            openvino_genai.ChatHistory(conversation), generation_config(settings), streamer=stream
        )
        total_s = time.perf_counter() - started
        perf = result.perf_metrics
        metrics = TurnMetrics(
            input_tokens=int(perf.get_num_input_tokens()),
            generated_tokens=int(perf.get_num_generated_tokens()),
            ttft_ms=float(perf.get_ttft().mean),
            tpot_ms=float(perf.get_tpot().mean),
            tokens_per_s=float(perf.get_throughput().mean),
            total_s=total_s,
        )
        return (result.texts[0] if result.texts else "".join(pieces)), metrics


def default_runtime(model: OVModel | Path | str, device: str = "CPU") -> RuntimeConfig:
    """What `nbkit tune-device` found best for this model and device, else :data:`DEFAULT_RUNTIME`."""
    if isinstance(model, OVModel):
        from nbkit.engines.openvino.tuning import tuned_runtime

        tuned = tuned_runtime(model, device)
        if tuned is not None:
            log.info("Using the tuned properties %s for %s on %s", tuned.property_dict, model.label, device)
            return tuned
    return base_runtime(device)


def base_runtime(device: str = "CPU") -> RuntimeConfig:
    """nbkit's untuned properties for ``device``: :data:`DEFAULT_RUNTIME` on CPU, LATENCY elsewhere.

    Only the CPU gets the f32 precision hint: GPUs and NPUs run f16 by design.
    """
    if device.upper() == "CPU":
        return DEFAULT_RUNTIME
    return RuntimeConfig.create(device, {"PERFORMANCE_HINT": "LATENCY"})


# Properties openvino-genai's LLMPipeline or the OpenVINO Core read themselves: a device plugin
# does not know them, so check_runtime passes them on unchecked (tune-device times
# ATTENTION_BACKEND, the device selector sets CACHE_DIR).
PIPELINE_PROPERTIES = frozenset(
    {
        "ATTENTION_BACKEND",
        "CACHE_DIR",
        "CACHE_MODE",
        "ENABLE_MMAP",
        "MODEL_PROPERTIES",
        "DEVICE_PROPERTIES",
        "scheduler_config",
        "draft_model",
        "adapters",
        "generation_config",
        "prompt_lookup",
    }
)
# Devices whose LLM pipeline hands the properties to the device plugin as they are, so asking
# the plugin beforehand gives its verdict. The NPU pipeline and the virtual devices (AUTO,
# HETERO, MULTI) take options of their own; for them RuntimeConfig's checks are all there is.
_PLUGIN_CHECKED_DEVICES = ("CPU", "GPU")


def check_runtime(runtime: RuntimeConfig) -> str:
    """``runtime``'s device, normalized, once it and every property are known to work.

    Cheap (no model is read) so commands call it before any export or compression: the
    device must exist (:func:`~nbkit.engines.openvino.devices.check_device`) and, on CPU and GPU, the device
    plugin must take every property name and value. RuntimeConfig itself has already checked
    what needs no device. Raises :class:`DeviceError` or :class:`ConfigError`, one sentence.
    """
    device = check_device(runtime.device)
    properties = {k: v for k, v in runtime.properties if k not in PIPELINE_PROPERTIES}
    if device.split(".")[0] not in _PLUGIN_CHECKED_DEVICES or not properties:
        return device
    import openvino as ov

    core = ov.Core()  # a throwaway Core: set_property changes the defaults of the Core it is called on
    try:
        supported = core.get_property(device, "SUPPORTED_PROPERTIES")  # also loads the plugin, so
    except RuntimeError as exc:  # a driver that cannot answer: loading the model will say why
        log.debug("Cannot ask %s for its properties (%s); not checking them now", device, error_summary(exc))
        return device
    settable = sorted(name for name, mode in supported.items() if str(mode) in ("RW", "WO"))
    for key, value in properties.items():  # ...set_property below is judged at once, not lazily
        if key not in supported:
            raise ConfigError(
                f"{device} has no OpenVINO property {key!r}; the ones it takes are {', '.join(settable)}."
            )
        try:
            core.set_property(device, {key: value})
        except Exception as exc:  # the plugin's RuntimeError: a wrong value or a read-only property
            reason = error_summary(exc).rstrip(".").replace(". ", "; ")
            raise ConfigError(f"{device} does not accept {key}={value!r} ({reason}).") from exc
    return device


def generation_config(settings: GenerationSettings) -> Any:
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = settings.max_new_tokens
    config.min_new_tokens = settings.min_new_tokens
    config.do_sample = settings.do_sample
    if settings.do_sample:
        config.temperature = settings.temperature
        config.top_p = settings.top_p
        config.top_k = settings.top_k
        if settings.seed is not None:
            config.rng_seed = settings.seed
    config.repetition_penalty = settings.repetition_penalty
    return config


def _context_length(model_path: Path) -> int:
    if not (model_path / "config.json").is_file():
        return 2048  # a conservative default when the folder has no Hugging Face config
    # A damaged config.json is a ModelSourceError naming the file and field, not a traceback.
    config = read_config(model_path)
    names = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
    return config_int(config, names, model_path / "config.json", default=2048)
