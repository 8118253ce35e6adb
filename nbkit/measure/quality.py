"""Quality of a model against its reference: perplexity, mean KL divergence and top-1 agreement.

:func:`measure_quality` measures how far a model's next-token distribution moves from the
reference's on the fixed :func:`~nbkit.sources.texts.evaluation_text`: perplexity of both, mean
KL(reference || model) and top-1 agreement, the KLD and "same top token" statistics of
llama.cpp's ``llama-perplexity --kl-divergence``. Each engine scores its own models
(:meth:`~nbkit.engines.protocol.Engine.logits_scorer`: one forward pass per window, logits of
every position), so an OpenVINO and an ONNX Runtime GenAI model are measured on the same
token ids against the same reference. The reference's log-probabilities stay in memory, so a
sweep pays for the float model once.

It lives apart from :mod:`nbkit.measure.evaluation` to keep modules small; that module re-exports
:func:`measure_quality` and :class:`QualityReport`, and its ``clear_caches`` clears the memos here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nbkit.engines.protocol import LogitsScorer
from nbkit.engines.registry import require_engine_for_folder
from nbkit.errors import ConfigError
from nbkit.infra.cache import hold_entry
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.measure.common import _LRU, ModelLike, _model_dir, _same_model, _stamp
from nbkit.sources.texts import evaluation_text, evaluation_text_id

log = logging.getLogger(__name__)

# Rows of a window compared at once: bounds the float64 temporaries to a few MiB per row block.
_COMPARE_ROWS = 32


@dataclass(frozen=True)
class QualityReport:
    """Next-token statistics of a model against its reference over ``num_tokens`` tokens of text.

    ``mean_kl`` is in nats; 0.0 and ``top1_agreement`` 1.0 mean the same distributions.
    Each window's first token has no context, so ``num_tokens`` minus the number of windows
    positions are scored.
    """

    perplexity: float
    reference_perplexity: float
    mean_kl: float
    top1_agreement: float
    num_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityReport:
        return cls(
            perplexity=float(data["perplexity"]),
            reference_perplexity=float(data["reference_perplexity"]),
            mean_kl=float(data["mean_kl"]),
            top1_agreement=float(data["top1_agreement"]),
            num_tokens=int(data["num_tokens"]),
        )


# Reference log-probabilities are vocab x tokens float32 (about 100 MiB for 512 tokens of a
# 49k vocabulary): two entries cover a sweep against one float model with room for a switch.
_REFERENCE_RUNS = _LRU(2)
_TOKEN_IDS = _LRU(8)


# -- quality -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReferenceRun:
    """What scoring a model needs from the reference, per window (positions x vocab)."""

    log_probs: tuple[np.ndarray, ...]  # float32 log-softmax
    top1: tuple[np.ndarray, ...]
    nll_sum: float
    positions: int
    vocab_size: int


def measure_quality(
    model: ModelLike,
    reference: ModelLike,
    *,
    num_tokens: int = 512,
    window: int = 128,
    device: str = "CPU",
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> QualityReport:
    """Perplexity, mean KL(reference || model) and top-1 agreement on the evaluation text.

    ``model`` and ``reference`` are model folders of any engine (OpenVINO IR, ONNX Runtime
    GenAI). The first ``num_tokens`` tokens of :func:`~nbkit.sources.texts.evaluation_text`
    (tokenized with the reference folder's tokenizer; both models must share it) are cut into non-overlapping
    windows of ``window`` tokens; each window is one forward pass from an empty KV cache.
    The reference's log-probabilities are remembered in this process, so measuring many
    models against one reference computes them once. Identical IRs give exactly 0 KL.

    The models' cache entries are held in use meanwhile: ``nbkit cache clear`` skips them.
    """
    with hold_entry(_model_dir(model)), hold_entry(_model_dir(reference)):
        return _measure_quality(
            model,
            reference,
            num_tokens=num_tokens,
            window=window,
            device=device,
            progress=progress,
            reporter=reporter,
        )


def _measure_quality(
    model: ModelLike,
    reference: ModelLike,
    *,
    num_tokens: int = 512,
    window: int = 128,
    device: str = "CPU",
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> QualityReport:
    """The body of :func:`measure_quality`."""
    model_dir, reference_dir = _model_dir(model), _model_dir(reference)
    for name, value in (("num_tokens", num_tokens), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ConfigError(f"{name} must be an integer of at least 2, not {value!r}.")
    if not isinstance(device, str) or not device.strip():
        raise ConfigError(f"device must be a device name such as 'CPU', not {device!r}.")
    device = device.strip().upper()
    model_engine, reference_engine = (
        require_engine_for_folder(model_dir),
        require_engine_for_folder(reference_dir),
    )
    reporter = reporter or ProgressReporter(progress)
    windows, window = _quality_windows(reference_dir, num_tokens, window)

    started = time.perf_counter()
    identical = _same_model(model_dir, reference_dir)
    key = (_stamp(reference_dir), evaluation_text_id(), num_tokens, window, device)
    cached = _REFERENCE_RUNS.get(key)
    reference_scorer = reference_engine.logits_scorer(reference_dir, device) if cached is None else None
    model_scorer = None
    if not identical:  # open both first: a vocabulary mismatch fails before any inference
        model_scorer = model_engine.logits_scorer(model_dir, device)
        reference_vocab = cached.vocab_size if cached is not None else reference_scorer.vocab_size  # type: ignore[union-attr]
        _check_vocab(model_scorer.vocab_size, reference_vocab, model_dir, reference_dir)
    model_span = reporter
    if cached is None:
        assert reference_scorer is not None
        span = reporter if identical else reporter.step(0.0, 0.5)
        cached = _score_reference(reference_scorer, windows, span)
        _REFERENCE_RUNS.put(key, cached)
        model_span = reporter.step(0.5, 1.0)
    if identical:
        # The same IR gives the same numbers: skip the second run and report the exact zero.
        reference_ppl = float(np.exp(cached.nll_sum / cached.positions))
        report = QualityReport(reference_ppl, reference_ppl, 0.0, 1.0, num_tokens)
    else:
        assert model_scorer is not None
        report = _score_model(model_scorer, model_dir, reference_dir, windows, cached, model_span, num_tokens)
    reporter.report(1.0, "Quality measured")
    log.info(
        "Quality of %s vs %s over %d tokens in %.1f s: KL %.4g, top-1 %.1f%%",
        model_dir.name,
        reference_dir.name,
        num_tokens,
        time.perf_counter() - started,
        report.mean_kl,
        100 * report.top1_agreement,
    )
    return report


def _quality_windows(folder: Path, num_tokens: int, window: int) -> tuple[list[np.ndarray], int]:
    """The evaluation tokens cut into windows, after checking the request fits text and model."""
    ids = _token_ids(folder)

    if num_tokens > len(ids):
        raise ConfigError(
            f"The evaluation text has {len(ids)} tokens with this tokenizer; "
            f"num_tokens must be at most {len(ids)}, not {num_tokens}."
        )
    window = min(window, num_tokens)
    context = _context_length(folder)
    if context is not None and window > context:
        raise ConfigError(
            f"window {window} is longer than the model's context of {context} tokens; use at most {context}."
        )
    windows = [ids[start : start + window] for start in range(0, num_tokens, window)]
    return [w for w in windows if len(w) >= 2], window  # a 1-token tail predicts nothing


def _context_length(folder: Path) -> int | None:
    for name, path in (("config.json", ()), ("genai_config.json", ("model",))):
        try:
            config = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        for part in path:
            config = config.get(part, {})
        config = config.get("text_config", config)
        value = (
            config.get("max_position_embeddings") or config.get("n_positions") or config.get("context_length")
        )
        if value:
            return int(value)
    return None


def _token_ids(folder: Path) -> np.ndarray:
    """The evaluation text as token ids, with the tokenizer the reference folder ships."""
    engine = require_engine_for_folder(folder)
    key = (_stamp(folder), engine.name, evaluation_text_id())
    ids = _TOKEN_IDS.get(key)
    if ids is None:
        ids = engine.token_ids(folder, evaluation_text())
        ids.flags.writeable = False  # shared between calls
        _TOKEN_IDS.put(key, ids)
    return ids


def _check_vocab(model_vocab: int | None, reference_vocab: int | None, model: Path, reference: Path) -> None:
    if model_vocab is not None and reference_vocab is not None and model_vocab != reference_vocab:
        raise ConfigError(
            f"{model.name} has a vocabulary of {model_vocab} tokens and the reference {reference.name} "
            f"{reference_vocab}; compare models of the same family (one tokenizer)."
        )


def _score_reference(
    scorer: LogitsScorer, windows: list[np.ndarray], reporter: ProgressReporter
) -> _ReferenceRun:
    log_probs, top1 = [], []
    nll_sum, positions = 0.0, 0
    for index, window_ids in enumerate(windows):
        reporter.report(index / len(windows), f"Reference: window {index + 1} of {len(windows)}")
        lp = scorer.log_probs(window_ids)
        targets = window_ids[1:]
        nll_sum -= float(lp[np.arange(len(targets)), targets].astype(np.float64).sum())
        positions += len(targets)
        log_probs.append(lp)
        top1.append(lp.argmax(axis=-1))
    return _ReferenceRun(tuple(log_probs), tuple(top1), nll_sum, positions, int(log_probs[0].shape[-1]))


def _score_model(
    scorer: LogitsScorer,
    folder: Path,
    reference_dir: Path,
    windows: list[np.ndarray],
    reference: _ReferenceRun,
    reporter: ProgressReporter,
    num_tokens: int,
) -> QualityReport:
    kl_sum, agree, nll_sum = 0.0, 0, 0.0
    for index, window_ids in enumerate(windows):
        reporter.report(index / len(windows), f"Model: window {index + 1} of {len(windows)}")
        lp = scorer.log_probs(window_ids)
        reference_lp = reference.log_probs[index]
        if lp.shape[-1] != reference_lp.shape[-1]:
            _check_vocab(lp.shape[-1], reference_lp.shape[-1], folder, reference_dir)
        targets = window_ids[1:]
        nll_sum -= float(lp[np.arange(len(targets)), targets].astype(np.float64).sum())
        agree += int((lp.argmax(axis=-1) == reference.top1[index]).sum())
        kl_sum += _kl_sum(reference_lp, lp)
    positions = reference.positions
    return QualityReport(
        perplexity=float(np.exp(nll_sum / positions)),
        reference_perplexity=float(np.exp(reference.nll_sum / positions)),
        # Rounding can leave a hair below zero for near-identical models; KL is never negative.
        mean_kl=max(kl_sum / positions, 0.0),
        top1_agreement=agree / positions,
        num_tokens=num_tokens,
    )


def _kl_sum(reference_lp: np.ndarray, model_lp: np.ndarray) -> float:
    """Sum over positions of KL(reference || model) = sum_v p_ref (log p_ref - log p_model), in float64."""
    total = 0.0
    for start in range(0, len(reference_lp), _COMPARE_ROWS):
        ref = reference_lp[start : start + _COMPARE_ROWS].astype(np.float64)
        mod = model_lp[start : start + _COMPARE_ROWS].astype(np.float64)
        total += float((np.exp(ref) * (ref - mod)).sum())
    return total


__all__ = ["QualityReport", "measure_quality"]
