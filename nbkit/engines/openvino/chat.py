"""Chat with an OpenVINO model through openvino-genai: multi-turn, streaming, stoppable, measured.

:class:`ChatSession` keeps the conversation as plain ``{"role", "content"}`` messages and
passes them to ``LLMPipeline.generate`` as a ``ChatHistory`` each turn, so the model's own
chat template is applied and the history can be shown, exported or edited freely.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbkit.artifacts import OVModel
from nbkit.config import AssistedDecoding, GenerationSettings, RuntimeConfig
from nbkit.engines.base import FINISH_LENGTH, FINISH_STOP, BaseChatSession, TurnMetrics
from nbkit.engines.openvino.assisted import (
    apply_to_config,
    check_assisted,
    pipeline_options,
    step_counting_streamer,
)
from nbkit.engines.openvino.runtime import check_runtime, default_runtime
from nbkit.errors import ConfigError, DeviceError, ModelSourceError, error_summary

log = logging.getLogger(__name__)


class ChatSession(BaseChatSession):
    """Chat through openvino-genai's ``LLMPipeline`` with the model's own chat template.

    ``assisted`` turns on prompt-lookup or speculative decoding (:class:`AssistedDecoding`);
    each turn's metrics then count the model's steps (``decode_steps``), so the tokens accepted
    per step show what it saved.
    """

    engine = "openvino"

    def __init__(
        self,
        model: OVModel | Path | str,
        runtime: RuntimeConfig | None = None,
        settings: GenerationSettings | None = None,
        *,
        system_prompt: str | None = None,
        assisted: AssistedDecoding | None = None,
        warm_up: bool = True,
    ) -> None:
        import openvino_genai

        self.assisted = check_assisted(assisted)

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
        options = pipeline_options(self.assisted, model_path, device, runtime)
        started = time.perf_counter()
        try:
            self.pipeline = openvino_genai.LLMPipeline(
                str(model_path), device, **runtime.property_dict, **options
            )
        except RuntimeError as exc:
            assisted_by = f" and {self.assisted.label}" if self.assisted else ""
            raise DeviceError(
                f"openvino-genai could not load {model_path.name} on {device} with "
                f"{runtime.property_dict or 'default properties'}{assisted_by}: {error_summary(exc)}"
            ) from exc
        self.load_s = time.perf_counter() - started
        self.tokenizer = self.pipeline.get_tokenizer()
        log.info("Loaded %s on %s in %.1f s", model_path.name, device, self.load_s)
        if warm_up:  # the first inference's one-off costs are paid here, not by the first question
            self.warm_up()

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

        config = generation_config(settings, self.assisted)
        streamer: Any = stream if self.assisted is None else step_counting_streamer(self.tokenizer, stream)
        started = time.perf_counter()
        result = self.pipeline.generate(openvino_genai.ChatHistory(conversation), config, streamer=streamer)
        total_s = time.perf_counter() - started
        self._finish_reason = _finish_reason(result)
        perf = result.perf_metrics
        generated = int(perf.get_num_generated_tokens())
        metrics = TurnMetrics(
            input_tokens=int(perf.get_num_input_tokens()),
            generated_tokens=generated,
            ttft_ms=float(perf.get_ttft().mean),
            tpot_ms=float(perf.get_tpot().mean),
            tokens_per_s=float(perf.get_throughput().mean),
            total_s=total_s,
            # plain decoding makes one token per step; assisted decoding's steps were counted
            decode_steps=generated if self.assisted is None else streamer.steps,
        )
        return (result.texts[0] if result.texts else "".join(pieces)), metrics


def _finish_reason(result: Any) -> str:
    """Why openvino-genai ended the answer: FINISH_LENGTH at max_new_tokens, FINISH_STOP at an
    end-of-sequence or stop token, "" when this version does not say."""
    import openvino_genai

    reasons = getattr(result, "finish_reasons", None)
    if not reasons:
        return ""
    if reasons[0] == openvino_genai.GenerationFinishReason.LENGTH:
        return FINISH_LENGTH
    return FINISH_STOP if reasons[0] == openvino_genai.GenerationFinishReason.STOP else ""


def generation_config(settings: GenerationSettings, assisted: AssistedDecoding | None = None) -> Any:
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = settings.max_new_tokens
    config.min_new_tokens = settings.min_new_tokens
    config.do_sample = settings.do_sample
    if settings.do_sample:
        config.temperature = settings.temperature
        config.top_p = settings.top_p
        if settings.top_k:  # 0 disables it (openvino-genai's default keeps every token)
            config.top_k = settings.top_k
        if settings.seed is not None:
            config.rng_seed = settings.seed
    config.repetition_penalty = settings.repetition_penalty
    return apply_to_config(config, assisted)
