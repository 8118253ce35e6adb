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
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbkit.artifacts import OVModel
from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.devices import check_device
from nbkit.errors import (
    ConfigError,
    ContextLengthError,
    DeviceError,
    ModelSourceError,
    NbkitError,
    error_summary,
)

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
        self.settings = settings or GenerationSettings()
        self.system_prompt = system_prompt
        self.messages: list[dict[str, str]] = []
        self.turns: list[Turn] = []
        self.context_length = _context_length(model_path)
        self.load_s = 0.0
        self._stop = threading.Event()
        self._busy = threading.Lock()

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
        return self._count_tokens(self._conversation(prompt))

    def send(
        self,
        prompt: str,
        on_text: TextCallback | None = None,
        *,
        settings: GenerationSettings | None = None,
    ) -> Turn:
        """Answer ``prompt`` in the context of the conversation, streaming text to ``on_text``."""
        if not prompt.strip():
            raise ConfigError("The message is empty; type a question first.")
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

        def on_piece(piece: str) -> bool:
            pieces.append(piece)
            delivery.put(piece)
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
        if failures:
            raise failures[0]
        if pieces:
            # Engines may decode a little past a stop: the history keeps exactly what was streamed.
            text = "".join(pieces)
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
        device = check_device(runtime.device)
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
        from nbkit.device_tuning import tuned_runtime

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
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return 2048  # a conservative default when the folder has no Hugging Face config
    config = config.get("text_config", config)
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
