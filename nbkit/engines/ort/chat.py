"""Chat with an ONNX Runtime GenAI model (built by Olive): multi-turn, streaming, stoppable, measured.

:class:`OrtChatSession` is the ONNX Runtime GenAI engine behind the same interface as the
OpenVINO :class:`~nbkit.engines.openvino.chat.ChatSession` (both are
:class:`~nbkit.engines.base.BaseChatSession`): the conversation is kept as plain
``{"role", "content"}`` messages, rendered each turn with the chat template shipped in the
model folder, and decoded with the current onnxruntime-genai loop::

    generator.append_tokens(ids)          # prefill
    while not generator.is_done():
        generator.generate_next_token()
        piece = stream.decode(generator.get_next_tokens()[0])

(``params.input_ids = ...`` and ``generator.compute_logits()`` from older tutorials were
removed in onnxruntime-genai 0.6.) onnxruntime-genai reports no timings, so TTFT, TPOT and
tokens/s are measured here with ``time.perf_counter`` the way openvino-genai defines them:
TTFT from the call to the first token (prefill + first sampling), TPOT the mean time of
every later token, tokens/s = 1000 / TPOT.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.base import FINISH_LENGTH, FINISH_STOP, BaseChatSession, TurnMetrics
from nbkit.engines.ort.deps import require_ort_genai
from nbkit.errors import ConfigError, DeviceError, ModelSourceError, error_summary

log = logging.getLogger(__name__)

GENAI_CONFIG = "genai_config.json"
CPU_RUNTIME = RuntimeConfig.create("CPU")


def eos_token_ids(folder: Path) -> frozenset[int]:
    """The end-of-sequence ids in ``folder``'s genai_config.json (empty when it names none)."""
    try:
        value = json.loads((folder / GENAI_CONFIG).read_text()).get("model", {}).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return frozenset()
    values = value if isinstance(value, list) else [value]
    return frozenset(v for v in values if isinstance(v, int) and not isinstance(v, bool))


def chat_template_of(folder: Path) -> str | None:
    """The chat template shipped in ``folder``: ``chat_template.jinja`` (transformers >= 4.43
    saves it apart), else ``tokenizer_config.json``'s ``chat_template``, else ``None``."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template else None


# Session options of genai_config.json nbkit sets per run (tune-device times them); onnxruntime's
# own defaults (0: one thread per physical core) apply when they are not given.
ORT_PROPERTIES = ("intra_op_num_threads", "inter_op_num_threads")


def check_ort_runtime(runtime: RuntimeConfig) -> RuntimeConfig:
    """The runtime ONNX Runtime GenAI sessions use, once ``runtime`` asks for something it can do.

    Cheap, so the CLI calls it before an Olive export. The device must be the CPU (nbkit
    installs the onnxruntime-genai CPU package); the properties it keeps are
    :data:`ORT_PROPERTIES` (whole numbers >= 0). OpenVINO's properties (upper-case names such as
    ``PERFORMANCE_HINT``) do not apply to onnxruntime-genai and are dropped with a log line.
    """
    if not isinstance(runtime, RuntimeConfig):
        raise ConfigError(f"runtime must be a RuntimeConfig, not a {type(runtime).__name__}.")
    if runtime.device.upper() != "CPU":
        raise DeviceError(
            f"nbkit runs ONNX Runtime GenAI models on CPU only (the onnxruntime-genai CPU package), "
            f"not {runtime.device!r}; use device 'CPU' or the openvino engine for other devices."
        )
    kept: dict[str, int] = {}
    dropped: dict[str, object] = {}
    for key, value in runtime.properties:
        if key in ORT_PROPERTIES:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"{key} must be a whole number >= 0 (0: onnxruntime decides), not {value!r}."
                )
            kept[key] = value
        elif key.isupper():
            dropped[key] = value
        else:
            raise ConfigError(
                f"onnxruntime-genai has no session option {key!r} in nbkit; the ones it takes are "
                f"{', '.join(ORT_PROPERTIES)}."
            )
    if dropped:
        log.info("OpenVINO properties %s do not apply to onnxruntime-genai; ignored.", dropped)
    return RuntimeConfig.create("CPU", kept)


def load_model(folder: Path, runtime: RuntimeConfig) -> Any:
    """An ``onnxruntime_genai.Model`` of ``folder`` with ``runtime``'s session options."""
    import onnxruntime_genai as og

    options = dict(runtime.properties)
    if not options:  # the folder's own genai_config.json as it is
        return og.Model(str(folder))
    config = og.Config(str(folder))
    if options:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return og.Model(config)


def search_options(settings: GenerationSettings, prompt_tokens: int) -> dict[str, Any]:
    """onnxruntime-genai search options for ``settings`` (lengths there count the prompt too)."""
    options: dict[str, Any] = {
        "max_length": prompt_tokens + settings.max_new_tokens,
        "min_length": prompt_tokens + settings.min_new_tokens,
        "do_sample": settings.do_sample,
        "repetition_penalty": settings.repetition_penalty,
        "num_beams": 1,
    }
    if settings.do_sample:
        options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        if settings.seed is not None:
            options["random_seed"] = settings.seed
    return options


class OrtChatSession(BaseChatSession):
    """Chat through onnxruntime-genai with the model's own chat template."""

    engine = "onnxruntime-genai"

    def __init__(
        self,
        model: Any,
        runtime: RuntimeConfig | None = None,
        settings: GenerationSettings | None = None,
        *,
        system_prompt: str | None = None,
        warm_up: bool = True,
    ) -> None:
        require_ort_genai()
        import onnxruntime_genai as og

        model_path = Path(getattr(model, "path", model)).expanduser()
        if not (model_path / GENAI_CONFIG).is_file():
            hint = (
                " It is an OpenVINO model folder: use the openvino engine (nbkit.ChatSession)."
                if (model_path / "openvino_model.xml").is_file()
                else " Build one with nbkit.engines.ort.olive.export_olive or `nbkit export --engine ort`."
            )
            raise ModelSourceError(
                f"{model_path} is not an ONNX Runtime GenAI model folder (no {GENAI_CONFIG}).{hint}"
            )
        super().__init__(model_path, check_ort_runtime(runtime or CPU_RUNTIME), settings, system_prompt)
        self.template = chat_template_of(model_path)
        self.eos_ids = eos_token_ids(model_path)  # to tell an answer the model ended from one cut
        started = time.perf_counter()
        try:
            self.model = load_model(model_path, self.runtime)
            self.tokenizer = og.Tokenizer(self.model)
        except Exception as exc:  # onnxruntime-genai raises RuntimeError/OSError with its own text
            raise ModelSourceError(
                f"onnxruntime-genai could not load {model_path.name}: {error_summary(exc)}"
            ) from exc
        self.load_s = time.perf_counter() - started
        self._og = og
        log.info("Loaded %s with onnxruntime-genai in %.1f s", model_path.name, self.load_s)
        if warm_up:  # the first inference's one-off costs are paid here, not by the first question
            self.warm_up()

    def _prompt(self, conversation: list[dict[str, str]]) -> str:
        messages = json.dumps(conversation)
        try:
            if self.template is not None:
                return str(
                    self.tokenizer.apply_chat_template(
                        messages, template_str=self.template, add_generation_prompt=True
                    )
                )
            return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        except Exception as exc:
            raise ModelSourceError(
                f"The chat template of {self.model_path.name} could not be applied ({error_summary(exc)}); "
                "the folder needs chat_template.jinja or a chat_template in tokenizer_config.json."
            ) from exc

    def _encode(self, conversation: list[dict[str, str]]) -> Any:
        return self.tokenizer.encode(self._prompt(conversation))

    def _count_tokens(self, conversation: list[dict[str, str]]) -> int:
        return len(self._encode(conversation))

    def _generate(
        self,
        conversation: list[dict[str, str]],
        settings: GenerationSettings,
        on_piece: Callable[[str], bool],
    ) -> tuple[str, TurnMetrics]:
        og = self._og
        ids = self._encode(conversation)
        params = og.GeneratorParams(self.model)
        params.set_search_options(**search_options(settings, len(ids)))
        stream = self.tokenizer.create_stream()
        pieces: list[str] = []
        generated = 0
        last_token: int | None = None
        started = time.perf_counter()
        first_token_at: float | None = None
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)  # the prefill runs here
        while not generator.is_done():
            generator.generate_next_token()
            generated += 1
            if first_token_at is None:
                first_token_at = time.perf_counter()
            last_token = int(generator.get_next_tokens()[0])
            piece = stream.decode(last_token)
            if piece:
                pieces.append(piece)
                if not on_piece(piece):  # False: stop() was called
                    break
        finished = time.perf_counter()
        if self.eos_ids and last_token is not None:
            ended_by_model = last_token in self.eos_ids or generated < settings.max_new_tokens
            self._finish_reason = FINISH_STOP if ended_by_model else FINISH_LENGTH
        del generator  # frees the KV cache now rather than at the next garbage collection
        ttft_s = (first_token_at or finished) - started
        tpot_ms = (
            (finished - first_token_at) * 1000 / (generated - 1) if first_token_at and generated > 1 else 0.0
        )
        metrics = TurnMetrics(
            input_tokens=len(ids),
            generated_tokens=generated,
            ttft_ms=ttft_s * 1000,
            tpot_ms=tpot_ms,
            tokens_per_s=1000 / tpot_ms if tpot_ms > 0 else 0.0,
            total_s=finished - started,
        )
        return "".join(pieces), metrics


__all__ = [
    "ORT_PROPERTIES",
    "OrtChatSession",
    "chat_template_of",
    "check_ort_runtime",
    "eos_token_ids",
    "load_model",
    "search_options",
]
