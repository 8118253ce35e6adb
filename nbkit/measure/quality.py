"""Quality of a model against its reference: perplexity, KL divergence and top-1 agreement.

:func:`measure_quality` measures how far a model's next-token distribution moves from the
reference's on the fixed :func:`~nbkit.sources.texts.evaluation_text`, with the statistics of
llama.cpp's ``llama-perplexity --kl-divergence``: perplexity of both (and their ratio), mean
KL(reference || model) with its percentiles, Δp RMS (the change in the probability of the
actual next token), "same top token" agreement, and standard errors. Each engine scores its
own models (:meth:`~nbkit.engines.protocol.Engine.logits_scorer`: one forward pass per window,
logits of every position), so an OpenVINO and an ONNX Runtime GenAI model are measured on the
same token ids against the same reference. The reference's log-probabilities stay in memory,
so a sweep pays for the float model once.

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
    positions are scored (``positions``).

    The other statistics are over those positions, as llama.cpp's perplexity tool reports them:

    * ``kl_median``, ``kl_p99``, ``kl_p999``, ``kl_max``: percentiles of the per-position KL
      (linear interpolation between sorted values, numpy's default);
    * ``delta_p_rms``: root mean square of Δp = p_model(next token) - p_reference(next token),
      a probability (0.05 is 5 percentage points);
    * ``*_stderr``: standard errors, the sample standard deviation (``ddof=1``) over positions
      divided by sqrt(positions); for a perplexity, by the delta method, perplexity times the
      standard error of the mean negative log-likelihood; for the perplexity ratio, the ratio
      times the standard error of the mean per-position difference of negative log-likelihoods
      (paired, so what both models find hard cancels out).

    They are None in a report read from a ledger line written before they were measured, and
    the standard errors are None when a single position is scored.
    """

    perplexity: float
    reference_perplexity: float
    mean_kl: float
    top1_agreement: float
    num_tokens: int
    positions: int | None = None
    perplexity_stderr: float | None = None
    reference_perplexity_stderr: float | None = None
    perplexity_ratio_stderr: float | None = None
    mean_kl_stderr: float | None = None
    kl_median: float | None = None
    kl_p99: float | None = None
    kl_p999: float | None = None
    kl_max: float | None = None
    delta_p_rms: float | None = None
    top1_stderr: float | None = None

    # The names quality targets are written with ("kl<=0.1", "top1>=0.9", "ppl_ratio<=1.05").
    @property
    def kl(self) -> float:
        return self.mean_kl

    @property
    def top1(self) -> float:
        return self.top1_agreement

    @property
    def perplexity_ratio(self) -> float:
        """Perplexity over the reference's: 1.0 for the same model, above 1 when worse."""
        return self.perplexity / self.reference_perplexity

    @property
    def ppl_ratio(self) -> float:
        return self.perplexity_ratio

    @property
    def has_distribution(self) -> bool:
        """True when the percentiles, Δp and standard errors were measured (False for an old ledger line)."""
        return self.kl_max is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityReport:
        """The report of a ledger line; statistics a line lacks (written before they existed) are None."""
        optional = {name: _optional_float(data.get(name)) for name in _OPTIONAL_FLOATS}
        positions = data.get("positions")
        return cls(
            perplexity=float(data["perplexity"]),
            reference_perplexity=float(data["reference_perplexity"]),
            mean_kl=float(data["mean_kl"]),
            top1_agreement=float(data["top1_agreement"]),
            num_tokens=int(data["num_tokens"]),
            positions=None if positions is None else int(positions),
            **optional,
        )


_OPTIONAL_FLOATS = (
    "perplexity_stderr",
    "reference_perplexity_stderr",
    "perplexity_ratio_stderr",
    "mean_kl_stderr",
    "kl_median",
    "kl_p99",
    "kl_p999",
    "kl_max",
    "delta_p_rms",
    "top1_stderr",
)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def quality_summary(report: QualityReport) -> str:
    """Every statistic of ``report`` as a few lines of text, laid out like llama.cpp's summary."""

    def pm(value: float, error: float | None, digits: int, scale: float = 1.0) -> str:
        text = f"{value * scale:.{digits}f}"
        return text if error is None else f"{text} ± {error * scale:.{digits}f}"

    positions = f"{report.positions} scored positions of " if report.positions is not None else ""
    lines = [
        f"Perplexity {pm(report.perplexity, report.perplexity_stderr, 3)} "
        f"(reference {pm(report.reference_perplexity, report.reference_perplexity_stderr, 3)}), "
        f"ratio {pm(report.perplexity_ratio, report.perplexity_ratio_stderr, 4)}",
        f"Mean KL {pm(report.mean_kl, report.mean_kl_stderr, 4)} nats"
        + (
            f"; median {report.kl_median:.4f}, 99 % {report.kl_p99:.4f}, 99.9 % {report.kl_p999:.4f}, "
            f"max {report.kl_max:.4f}"
            if report.kl_median is not None
            and report.kl_p99 is not None
            and report.kl_p999 is not None
            and report.kl_max is not None
            else ""
        ),
        f"Same top token {pm(report.top1_agreement, report.top1_stderr, 2, 100)} %"
        + (f"; Δp RMS {100 * report.delta_p_rms:.2f} %" if report.delta_p_rms is not None else ""),
        f"Over {positions}{report.num_tokens} tokens of the evaluation text."
        + (
            ""
            if report.has_distribution
            else " Percentiles, Δp and standard errors were not measured (a record from before they were)."
        ),
    ]
    return "\n".join(lines)


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
    target_log_probs: tuple[np.ndarray, ...]  # float64 log p(actual next token), per position
    nll_sum: float
    positions: int
    vocab_size: int

    def negative_log_likelihoods(self) -> np.ndarray:
        return -np.concatenate(self.target_log_probs)


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
    """Perplexity, KL(reference || model) statistics, Δp and top-1 agreement on the evaluation text.

    ``model`` and ``reference`` are model folders of any engine (OpenVINO IR, ONNX Runtime
    GenAI). The first ``num_tokens`` tokens of :func:`~nbkit.sources.texts.evaluation_text`
    (tokenized with the reference folder's tokenizer; both models must share it) are cut into non-overlapping
    windows of ``window`` tokens; each window is one forward pass from an empty KV cache.
    The reference's log-probabilities are remembered in this process, so measuring many
    models against one reference computes them once. Identical IRs give exactly 0 KL (and
    0 for every KL percentile, Δp and standard error but the perplexities').

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
        reference_nll = cached.negative_log_likelihoods()
        zeros = np.zeros(cached.positions)
        report = quality_statistics(
            kl=zeros,
            model_nll=reference_nll,
            reference_nll=reference_nll,
            same_top=np.ones(cached.positions, dtype=bool),
            num_tokens=num_tokens,
        )
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
    log_probs, top1, target_log_probs = [], [], []
    for index, window_ids in enumerate(windows):
        reporter.report(index / len(windows), f"Reference: window {index + 1} of {len(windows)}")
        lp = scorer.log_probs(window_ids)
        log_probs.append(lp)
        top1.append(lp.argmax(axis=-1))
        target_log_probs.append(_target_log_probs(lp, window_ids))
    targets = np.concatenate(target_log_probs)
    return _ReferenceRun(
        log_probs=tuple(log_probs),
        top1=tuple(top1),
        target_log_probs=tuple(target_log_probs),
        nll_sum=-float(targets.sum()),
        positions=len(targets),
        vocab_size=int(log_probs[0].shape[-1]),
    )


def _target_log_probs(log_probs: np.ndarray, window_ids: np.ndarray) -> np.ndarray:
    """log p(actual next token) at each position of a window, in float64."""
    targets = window_ids[1:]
    return log_probs[np.arange(len(targets)), targets].astype(np.float64)


def _score_model(
    scorer: LogitsScorer,
    folder: Path,
    reference_dir: Path,
    windows: list[np.ndarray],
    reference: _ReferenceRun,
    reporter: ProgressReporter,
    num_tokens: int,
) -> QualityReport:
    # Per-position values (a few float64 per scored token) are kept until the statistics are
    # computed; the vocab-wide arrays never outlive a window.
    kl, model_target, same_top = [], [], []
    for index, window_ids in enumerate(windows):
        reporter.report(index / len(windows), f"Model: window {index + 1} of {len(windows)}")
        lp = scorer.log_probs(window_ids)
        reference_lp = reference.log_probs[index]
        if lp.shape[-1] != reference_lp.shape[-1]:
            _check_vocab(lp.shape[-1], reference_lp.shape[-1], folder, reference_dir)
        model_target.append(_target_log_probs(lp, window_ids))
        same_top.append(lp.argmax(axis=-1) == reference.top1[index])
        kl.append(_kl_per_position(reference_lp, lp))
    return quality_statistics(
        kl=np.concatenate(kl),
        model_nll=-np.concatenate(model_target),
        reference_nll=reference.negative_log_likelihoods(),
        same_top=np.concatenate(same_top),
        num_tokens=num_tokens,
    )


def _kl_per_position(reference_lp: np.ndarray, model_lp: np.ndarray) -> np.ndarray:
    """KL(reference || model) = sum_v p_ref (log p_ref - log p_model) at each position, in float64.

    Row blocks bound the float64 temporaries to a few MiB whatever the window.
    """
    blocks = []
    for start in range(0, len(reference_lp), _COMPARE_ROWS):
        ref = reference_lp[start : start + _COMPARE_ROWS].astype(np.float64)
        mod = model_lp[start : start + _COMPARE_ROWS].astype(np.float64)
        blocks.append((np.exp(ref) * (ref - mod)).sum(axis=-1))
    # Rounding can leave a hair below zero for near-identical rows; KL is never negative.
    return np.maximum(np.concatenate(blocks), 0.0)


def quality_statistics(
    *,
    kl: np.ndarray,
    model_nll: np.ndarray,
    reference_nll: np.ndarray,
    same_top: np.ndarray,
    num_tokens: int,
) -> QualityReport:
    """The report of per-position values: KL(reference || model) in nats, each model's negative
    log-likelihood of the actual next token, and whether both models' top tokens agree.

    All four arrays hold one value per scored position (see :class:`QualityReport` for what is
    computed from them). Exposed so the statistics can be checked against a plain recomputation.
    """
    kl = np.asarray(kl, dtype=np.float64)
    model_nll = np.asarray(model_nll, dtype=np.float64)
    reference_nll = np.asarray(reference_nll, dtype=np.float64)
    same = np.asarray(same_top, dtype=np.float64)
    positions = len(kl)
    if positions == 0 or not (len(model_nll) == len(reference_nll) == len(same) == positions):
        raise ConfigError(
            f"quality_statistics needs one value per position in each array, not {len(kl)}, "
            f"{len(model_nll)}, {len(reference_nll)} and {len(same)}."
        )
    perplexity = float(np.exp(model_nll.mean()))
    reference_perplexity = float(np.exp(reference_nll.mean()))
    delta_p = np.exp(-model_nll) - np.exp(-reference_nll)
    median, p99, p999 = (float(v) for v in np.percentile(kl, [50.0, 99.0, 99.9]))

    def stderr(values: np.ndarray) -> float | None:
        return float(values.std(ddof=1) / np.sqrt(positions)) if positions > 1 else None

    def scaled(error: float | None, scale: float) -> float | None:
        return None if error is None else scale * error

    ratio = perplexity / reference_perplexity
    return QualityReport(
        perplexity=perplexity,
        reference_perplexity=reference_perplexity,
        mean_kl=float(kl.mean()),
        top1_agreement=float(same.mean()),
        num_tokens=num_tokens,
        positions=positions,
        perplexity_stderr=scaled(stderr(model_nll), perplexity),
        reference_perplexity_stderr=scaled(stderr(reference_nll), reference_perplexity),
        perplexity_ratio_stderr=scaled(stderr(model_nll - reference_nll), ratio),
        mean_kl_stderr=stderr(kl),
        kl_median=median,
        kl_p99=p99,
        kl_p999=p999,
        kl_max=float(kl.max()),
        delta_p_rms=float(np.sqrt(np.mean(delta_p**2))),
        top1_stderr=stderr(same),
    )


__all__ = ["QualityReport", "measure_quality", "quality_statistics", "quality_summary"]
