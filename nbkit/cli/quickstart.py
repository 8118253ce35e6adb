"""The main job: model -> float OpenVINO IR -> NNCF INT4 -> a streamed chat answer -> a table."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from nbkit.artifacts import OVModel
from nbkit.compression.weights import compress
from nbkit.config import CompressionConfig, CompressionMode, ExportConfig, GenerationSettings, RuntimeConfig
from nbkit.engines.base import TextCallback, Turn
from nbkit.engines.openvino.chat import ChatSession
from nbkit.engines.openvino.export import export_openvino
from nbkit.engines.openvino.runtime import DEFAULT_RUNTIME
from nbkit.infra.cache import Cache
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.sources.architecture import ArchitectureFacts
from nbkit.sources.models import DEFAULT_MODEL, ModelSource, resolve_source

log = logging.getLogger(__name__)

DEFAULT_QUESTION = "What is the capital of France?"
# Asked after the first turn, in a new conversation and not shown: a warm pipeline's time to first
# token on a question it has not seen (another length too, so no shape is reused), which the first
# turn's is measured against.
WARM_QUESTION = "Name one river that flows through a large European city."


def default_int4_config(facts: ArchitectureFacts) -> CompressionConfig:
    """INT4 symmetric, every layer, the largest group size (<= 128) valid for this model."""
    return CompressionConfig(mode=CompressionMode.INT4_SYM, ratio=1.0).resolve(facts.valid_group_sizes())


@dataclass
class QuickstartReport:
    source: str
    float_model: OVModel
    compressed_model: OVModel
    turn: Turn
    load_s: float
    timings_s: dict[str, float] = field(default_factory=dict)
    warmup_s: float = 0.0  # the one-token warm-up that follows loading (see BaseChatSession.warm_up)
    warm_turn: Turn | None = None  # WARM_QUESTION asked next: what a warm pipeline takes

    @property
    def first_turn_ratio(self) -> float | None:
        """The first turn's time to first token over the warm turn's (1 when the warm-up did its job)."""
        if self.warm_turn is None or self.warm_turn.metrics.ttft_ms <= 0:
            return None
        return self.turn.metrics.ttft_ms / self.warm_turn.metrics.ttft_ms

    @property
    def compression_ratio(self) -> float:
        return self.float_model.weights_bytes / max(self.compressed_model.weights_bytes, 1)

    def rows(self) -> list[tuple[str, str]]:
        m = self.turn.metrics
        mib = 1024 * 1024
        precisions = ", ".join(f"{k} {v:.0%}" for k, v in self.compressed_model.weight_precisions.items())
        return [
            ("model", self.source),
            (
                "float IR weights",
                f"{self.float_model.weights_bytes / mib:.1f} MiB ({self.float_model.label})",
            ),
            (
                "compressed weights",
                f"{self.compressed_model.weights_bytes / mib:.1f} MiB ({self.compressed_model.label})",
            ),
            ("compression", f"{self.compression_ratio:.1f}x smaller; weights: {precisions}"),
            ("pipeline load", f"{self.load_s:.1f} s, then a {self.warmup_s * 1000:.0f} ms warm-up"),
            ("time to first token", f"{m.ttft_ms:.0f} ms (first turn)" + self._warm_ttft()),
            (
                "decode speed",
                f"{m.tokens_per_s:.1f} tokens/s ({m.tpot_ms:.1f} ms/token, {m.generated_tokens} tokens)",
            ),
            ("float IR folder", str(self.float_model.path)),
            ("compressed folder", str(self.compressed_model.path)),
        ]

    def _warm_ttft(self) -> str:
        ratio = self.first_turn_ratio
        if self.warm_turn is None or ratio is None:
            return ""
        return f"; {self.warm_turn.metrics.ttft_ms:.0f} ms warm (another question): {ratio:.1f}x"

    def table(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{key.ljust(width)}  {value}" for key, value in self.rows())


def quickstart(
    model: str | ModelSource = DEFAULT_MODEL,
    *,
    question: str = DEFAULT_QUESTION,
    compression: CompressionConfig | None = None,
    runtime: RuntimeConfig | None = None,
    settings: GenerationSettings | None = None,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
    on_text: TextCallback | None = None,
) -> QuickstartReport:
    """Run the whole path on ``model`` and answer ``question``; every step is cached."""
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    source = resolve_source(model)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    float_model = export_openvino(source, ExportConfig(), cache=cache, reporter=reporter.step(0.0, 0.7))
    timings["export"] = time.perf_counter() - started

    config = compression or default_int4_config(float_model.architecture)
    started = time.perf_counter()
    compressed = compress(float_model, config, cache=cache, reporter=reporter.step(0.7, 0.95))
    timings["compress"] = time.perf_counter() - started

    reporter.report(0.95, f"Loading {compressed.label} with openvino-genai")
    session = ChatSession(
        compressed, runtime or DEFAULT_RUNTIME, settings or GenerationSettings(max_new_tokens=64)
    )
    reporter.report(1.0, "Ready")
    turn = session.send(question, on_text)
    session.reset()
    warm_turn = session.send(WARM_QUESTION, settings=GenerationSettings(max_new_tokens=8))
    session.close()
    return QuickstartReport(
        source=source.name,
        float_model=float_model,
        compressed_model=compressed,
        turn=turn,
        load_s=session.load_s,
        timings_s=timings,
        warmup_s=session.warmup_s,
        warm_turn=warm_turn,
    )


__all__ = ["QuickstartReport", "default_int4_config", "quickstart"]
