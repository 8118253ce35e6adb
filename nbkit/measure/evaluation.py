"""The tuner's measurements: size, quality against the float model, speed, and answers.

One function per measurement, each returning a frozen report with ``to_dict``/``from_dict``
so a sweep can keep them as JSON lines, the CLI can print them and a panel can plot them:

* :func:`measure_size`: weights on disk, compression ratio, share of weights per precision.
* :func:`measure_quality` (in :mod:`nbkit.measure.quality`): how far a model's next-token
  distribution moves from the reference's on the fixed :func:`~nbkit.sources.texts.evaluation_text`
  (perplexity, KL divergence and its percentiles, Δp, top-1 agreement, standard errors).
* :func:`measure_speed` (in :mod:`nbkit.measure.speed`): load time, time to first token, time per
  output token and resident memory with the model's engine, by default in a fresh process.
* :func:`measure_answers`: how many greedy answers to :data:`~nbkit.sources.texts.ANSWER_PROMPTS`
  are word for word the reference's, and where each other one first departs from it.

Every function takes a model of any engine (OpenVINO IR or ONNX Runtime GenAI folder) and
reaches it through :mod:`nbkit.engines.registry`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
class AnswerDivergence:
    """Where a model's answer first departs from the reference's.

    ``index`` counts tokens from the start of the answers, with the reference's tokenizer
    applied to both answer texts (so both are cut the same way). ``reference_token`` and
    ``model_token`` are the two tokens there as text; "" means that answer ended there while
    the other went on.
    """

    index: int
    reference_token: str
    model_token: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerDivergence:
        return cls(
            index=int(data["index"]),
            reference_token=str(data["reference_token"]),
            model_token=str(data["model_token"]),
        )


@dataclass(frozen=True)
class AnswerReport:
    """``identical`` of ``total`` greedy answers equal the reference's; ``answers`` are the model's.

    ``divergences`` has one entry per prompt: None where the answer is the reference's, else
    its first divergent token. It is None itself in a report read from a ledger line written
    before divergences were recorded.
    """

    identical: int
    total: int
    answers: tuple[str, ...]
    divergences: tuple[AnswerDivergence | None, ...] | None = None

    @property
    def identical_fraction(self) -> float:
        """Share of answers word for word the reference's (what an ``answers`` target is written on)."""
        return self.identical / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "total": self.total,
            "answers": list(self.answers),
            "divergences": None
            if self.divergences is None
            else [None if d is None else d.to_dict() for d in self.divergences],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerReport:
        divergences = data.get("divergences")
        return cls(
            identical=int(data["identical"]),
            total=int(data["total"]),
            answers=tuple(str(a) for a in data["answers"]),
            divergences=None
            if divergences is None
            else tuple(None if d is None else AnswerDivergence.from_dict(d) for d in divergences),
        )


def answers_summary(report: AnswerReport, prompts: Sequence[str] = ANSWER_PROMPTS) -> str:
    """One line per answer that departs from the reference's: the prompt, the token index and both tokens."""
    lines = [f"Answers identical to the reference's: {report.identical}/{report.total}"]
    if report.divergences is None:
        if report.identical < report.total:
            lines.append("Where they depart was not recorded (a record from before it was).")
        return "\n".join(lines)
    for number, divergence in enumerate(report.divergences):
        if divergence is None:
            continue
        prompt = (
            prompts[number] if number < len(prompts) and len(prompts) == report.total else f"#{number + 1}"
        )
        lines.append(
            f"  {_shorten(prompt)}: token {divergence.index}, "
            f"reference {_token_text(divergence.reference_token)}, model {_token_text(divergence.model_token)}"
        )
    return "\n".join(lines)


def _shorten(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _token_text(token: str) -> str:
    return "(end)" if token == "" else repr(token)


def first_divergence(
    reference_ids: Sequence[int], model_ids: Sequence[int], token_text: Callable[[int], str]
) -> AnswerDivergence | None:
    """The first index where two token sequences differ, with both tokens as ``token_text`` writes
    them ("" past the end of the shorter one); None when they are the same."""
    for index, (reference_id, model_id) in enumerate(zip(reference_ids, model_ids, strict=False)):
        if int(reference_id) != int(model_id):
            return AnswerDivergence(index, token_text(int(reference_id)), token_text(int(model_id)))
    if len(reference_ids) == len(model_ids):
        return None
    index = min(len(reference_ids), len(model_ids))
    reference_token = token_text(int(reference_ids[index])) if index < len(reference_ids) else ""
    model_token = token_text(int(model_ids[index])) if index < len(model_ids) else ""
    return AnswerDivergence(index, reference_token, model_token)


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
    """Greedy answers of ``model`` to ``prompts`` (a fresh conversation each), how many equal the
    reference's, and where each other one first departs from it (:class:`AnswerDivergence`).

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
    return AnswerReport(
        identical=identical,
        total=len(prompts),
        answers=answers,
        divergences=_divergences(reference_dir, reference_answers, answers),
    )


def _divergences(
    reference_dir: Path, reference_answers: tuple[str, ...], answers: tuple[str, ...]
) -> tuple[AnswerDivergence | None, ...]:
    """Each answer's first divergent token, both answers cut by the reference's tokenizer."""
    if answers == reference_answers:
        return (None,) * len(answers)
    encode, token_text = _answer_tokenizer(reference_dir)
    return tuple(
        None if answer == reference else first_divergence(encode(reference), encode(answer), token_text)
        for answer, reference in zip(answers, reference_answers, strict=True)
    )


def _answer_tokenizer(folder: Path) -> tuple[Callable[[str], Sequence[int]], Callable[[int], str]]:
    """Encode text to token ids and write one token as text, with the tokenizer ``folder`` ships.

    Folders exported by optimum-intel or built by Olive carry the Hugging Face ``tokenizer.json``
    their engine's tokenizer was made from, which can also write single tokens; a folder
    without one falls back to its engine's encoder and names tokens by id.
    """
    path = folder / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # a corrupt file: the engine's own encoder still works
            log.warning("Cannot read %s (%s); naming divergent tokens by id", path, exc)
        else:
            return (
                lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
                lambda token: tokenizer.decode([token], skip_special_tokens=False),
            )
    engine = require_engine_for_folder(folder)
    return (lambda text: [int(i) for i in engine.token_ids(folder, text)], lambda token: f"<token {token}>")


def _greedy_answers(
    folder: Path, prompts: tuple[str, ...], settings: GenerationSettings, runtime: RuntimeConfig | None
) -> tuple[str, ...]:
    engine = require_engine_for_folder(folder)
    with engine.open_chat(folder, runtime or engine.base_runtime("CPU"), settings, warm_up=False) as session:
        answers = []
        for prompt in prompts:
            session.reset()  # each question alone: an earlier answer must not steer the next
            answers.append(session.send(prompt).text)
    return tuple(answers)


__all__ = [
    "AnswerDivergence",
    "AnswerReport",
    "SizeReport",
    "answers_summary",
    "clear_caches",
    "first_divergence",
    "measure_answers",
    "measure_size",
]
