"""The tuner's measurements: size, quality against the float model, speed, and answers.

One function per measurement, each returning a frozen report with ``to_dict``/``from_dict``
so a sweep can keep them as JSON lines, the CLI can print them and a panel can plot them:

* :func:`measure_size`: weights on disk, compression ratio, share of weights per precision.
* :func:`measure_quality` (in :mod:`nbkit.measure.quality`): how far a model's next-token
  distribution moves from the reference's on the fixed :func:`~nbkit.sources.texts.evaluation_text`
  (perplexity, mean KL divergence, top-1 agreement).
* :func:`measure_speed` (in :mod:`nbkit.measure.speed`): load time, time to first token, time per
  output token and resident memory with the model's engine, by default in a fresh process.
* :func:`measure_answers`: how many greedy answers to :data:`~nbkit.sources.texts.ANSWER_PROMPTS`
  are word for word the reference's.

Every function takes a model of any engine (OpenVINO IR or ONNX Runtime GenAI folder) and
reaches it through :mod:`nbkit.engines.registry`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.registry import require_engine_for_folder
from nbkit.errors import ConfigError, ModelSourceError
from nbkit.measure.common import _LRU, ModelLike, _model_dir, _same_model, _stamp
from nbkit.measure.quality import _REFERENCE_RUNS, _TOKEN_IDS
from nbkit.sources.texts import ANSWER_PROMPTS

log = logging.getLogger(__name__)


# -- reports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeReport:
    """Weights on disk; ``compression_ratio`` is reference bytes / model bytes (None without one)."""

    weights_bytes: int
    reference_weights_bytes: int | None
    compression_ratio: float | None
    weight_precisions: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SizeReport:
        reference = data.get("reference_weights_bytes")
        ratio = data.get("compression_ratio")
        return cls(
            weights_bytes=int(data["weights_bytes"]),
            reference_weights_bytes=None if reference is None else int(reference),
            compression_ratio=None if ratio is None else float(ratio),
            weight_precisions={str(k): float(v) for k, v in data.get("weight_precisions", {}).items()},
        )


@dataclass(frozen=True)
class AnswerReport:
    """``identical`` of ``total`` greedy answers equal the reference's; ``answers`` are the model's."""

    identical: int
    total: int
    answers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"identical": self.identical, "total": self.total, "answers": list(self.answers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerReport:
        return cls(
            identical=int(data["identical"]),
            total=int(data["total"]),
            answers=tuple(str(a) for a in data["answers"]),
        )


# -- in-process memo -----------------------------------------------------------------------


_REFERENCE_ANSWERS = _LRU(16)


def clear_caches() -> None:
    """Forget the remembered reference log-probabilities, token ids and answers (frees memory)."""
    for memo in (
        _REFERENCE_RUNS,
        _TOKEN_IDS,
        _REFERENCE_ANSWERS,
    ):  # the first two live in nbkit.measure.quality
        memo.clear()


# -- model folders -------------------------------------------------------------------------


def _weights_bytes(folder: Path) -> int:
    engine = require_engine_for_folder(folder)
    try:
        return engine.weights_bytes(folder)
    except FileNotFoundError as exc:
        raise ModelSourceError(
            f"{folder} lacks its weights ({Path(str(exc.filename)).name}); rebuild the model."
        ) from None


# -- size ----------------------------------------------------------------------------------

_PRECISIONS = _LRU(16)


def measure_size(model: ModelLike, reference: ModelLike | None = None) -> SizeReport:
    """Weights on disk of ``model`` and, against ``reference``, the compression ratio.

    Without ``reference``, a compressed model is compared with the float model it was made
    from when its cache entry records that size. Shares of weights per precision come from the
    model's engine (recorded at compression, else counted from its graph).
    """
    folder = _model_dir(model)
    weights = _weights_bytes(folder)
    reference_bytes: int | None = None
    if reference is not None:
        reference_bytes = _weights_bytes(_model_dir(reference))
    elif "float_weights_bytes" in getattr(getattr(model, "entry", None), "metadata", {}):
        reference_bytes = int(model.entry.metadata["float_weights_bytes"])  # type: ignore[union-attr]
    precisions = _measured_precisions(folder)
    return SizeReport(
        weights_bytes=weights,
        reference_weights_bytes=reference_bytes,
        compression_ratio=reference_bytes / weights if reference_bytes and weights else None,
        weight_precisions=dict(precisions),
    )


def _measured_precisions(folder: Path) -> dict[str, float]:
    key = _stamp(folder)
    cached = _PRECISIONS.get(key)
    if cached is None:
        cached = require_engine_for_folder(folder).weight_precisions(folder)
        _PRECISIONS.put(key, cached)
    return dict(cached)


# -- answers -------------------------------------------------------------------------------


def measure_answers(
    model: ModelLike,
    reference: ModelLike,
    *,
    prompts: Sequence[str] = ANSWER_PROMPTS,
    max_new_tokens: int = 32,
    runtime: RuntimeConfig | None = None,
) -> AnswerReport:
    """Greedy answers of ``model`` to ``prompts`` (a fresh conversation each) and how many equal the reference's.

    Each model runs on its own engine with ``runtime`` (default: that engine's untuned CPU
    runtime, so answers do not depend on tuning). The reference's answers are remembered in
    this process per (folder, prompts, max_new_tokens, runtime).
    """
    model_dir, reference_dir = _model_dir(model), _model_dir(reference)
    prompts = tuple(prompts)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ConfigError("prompts must be a non-empty list of non-empty questions.")
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    reference_runtime = runtime or require_engine_for_folder(reference_dir).base_runtime("CPU")
    key = (_stamp(reference_dir), prompts, max_new_tokens, reference_runtime.fingerprint())
    reference_answers = _REFERENCE_ANSWERS.get(key)
    if reference_answers is None:
        reference_answers = _greedy_answers(reference_dir, prompts, settings, reference_runtime)
        _REFERENCE_ANSWERS.put(key, reference_answers)
    if _same_model(model_dir, reference_dir):
        answers = reference_answers
    else:
        answers = _greedy_answers(model_dir, prompts, settings, runtime)
    identical = sum(a == r for a, r in zip(answers, reference_answers, strict=True))
    return AnswerReport(identical=identical, total=len(prompts), answers=answers)


def _greedy_answers(
    folder: Path, prompts: tuple[str, ...], settings: GenerationSettings, runtime: RuntimeConfig | None
) -> tuple[str, ...]:
    engine = require_engine_for_folder(folder)
    with engine.open_chat(folder, runtime or engine.base_runtime("CPU"), settings) as session:
        answers = []
        for prompt in prompts:
            session.reset()  # each question alone: an earlier answer must not steer the next
            answers.append(session.send(prompt).text)
    return tuple(answers)


__all__ = [
    "AnswerReport",
    "SizeReport",
    "clear_caches",
    "measure_answers",
    "measure_size",
]
