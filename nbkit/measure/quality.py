"""Quality of a model against its reference: perplexity, mean KL divergence and top-1 agreement.

:func:`measure_quality` measures how far a model's next-token distribution moves from the
reference's on the fixed :func:`~nbkit.sources.texts.evaluation_text`: perplexity of both, mean
KL(reference || model) and top-1 agreement, the KLD and "same top token" statistics of
llama.cpp's ``llama-perplexity --kl-divergence``. It runs the stateful OpenVINO IR directly
(no generation loop), one forward pass per window, and keeps the reference's
log-probabilities in memory so a sweep pays for the float model once.

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

from nbkit.artifacts import MODEL_XML
from nbkit.engines.openvino.devices import check_device
from nbkit.errors import ConfigError, ModelSourceError
from nbkit.infra.cache import hold_entry
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.measure.common import _LRU, ModelLike, _model_dir, _same_model, _stamp
from nbkit.sources.texts import evaluation_text, evaluation_text_id

log = logging.getLogger(__name__)

TOKENIZER_XML = "openvino_tokenizer.xml"

# f32 on CPU so the measured difference is the weight compression alone: CPUs with bf16 or
# AMX otherwise run both models in bf16 with a u8 KV cache, which adds its own noise.
CPU_QUALITY_PROPERTIES: dict[str, str] = {
    "PERFORMANCE_HINT": "LATENCY",
    "INFERENCE_PRECISION_HINT": "f32",
    "KV_CACHE_PRECISION": "f32",
}
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

    The first ``num_tokens`` tokens of :func:`~nbkit.sources.texts.evaluation_text` (tokenized with
    the reference folder's tokenizer; both models must share it) are cut into non-overlapping
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
    device = check_device(device)
    reporter = reporter or ProgressReporter(progress)
    windows, window = _quality_windows(reference_dir, num_tokens, window)

    started = time.perf_counter()
    identical = _same_model(model_dir, reference_dir)
    key = (_stamp(reference_dir), evaluation_text_id(), num_tokens, window, device)
    cached = _REFERENCE_RUNS.get(key)
    reference_ir = _read_ir(reference_dir) if cached is None else None
    model_ir = None
    if not identical:  # read both IRs first: a vocabulary mismatch fails before any inference
        model_ir = _read_ir(model_dir)
        reference_vocab = cached.vocab_size if cached is not None else _vocab_size(reference_ir)
        _check_vocab(_vocab_size(model_ir), reference_vocab, model_dir, reference_dir)
    model_span = reporter
    if cached is None:
        span = reporter if identical else reporter.step(0.0, 0.5)
        cached = _score_reference(reference_ir, reference_dir, windows, device, span)
        _REFERENCE_RUNS.put(key, cached)
        model_span = reporter.step(0.5, 1.0)
    if identical:
        # The same IR gives the same numbers: skip the second run and report the exact zero.
        reference_ppl = float(np.exp(cached.nll_sum / cached.positions))
        report = QualityReport(reference_ppl, reference_ppl, 0.0, 1.0, num_tokens)
    else:
        assert model_ir is not None
        report = _score_model(
            model_ir, model_dir, reference_dir, windows, cached, device, model_span, num_tokens
        )
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
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config)
    value = config.get("max_position_embeddings") or config.get("n_positions")
    return int(value) if value else None


def _token_ids(folder: Path) -> np.ndarray:
    """The evaluation text as token ids, with the folder's OpenVINO tokenizer (what genai runs)."""
    tokenizer_xml = folder / TOKENIZER_XML
    if not tokenizer_xml.is_file():
        raise ModelSourceError(f"{folder} has no {TOKENIZER_XML}; re-export the model with nbkit.")
    stat = tokenizer_xml.stat()
    key = (str(tokenizer_xml.resolve()), stat.st_size, stat.st_mtime_ns, evaluation_text_id())
    ids = _TOKEN_IDS.get(key)
    if ids is None:
        import openvino_genai

        tokenizer = openvino_genai.Tokenizer(str(folder))
        encoded = tokenizer.encode(evaluation_text(), add_special_tokens=False)
        ids = np.array(encoded.input_ids.data[0], dtype=np.int64)
        ids.flags.writeable = False  # shared between calls
        _TOKEN_IDS.put(key, ids)
    return ids


def _read_ir(folder: Path) -> Any:
    import openvino as ov

    try:
        return ov.Core().read_model(str(folder / MODEL_XML))
    except RuntimeError as exc:
        raise ModelSourceError(f"OpenVINO cannot read {folder / MODEL_XML}: {exc}") from exc


def _vocab_size(ir: Any) -> int | None:
    dimension = ir.output("logits").get_partial_shape()[-1] if _has_logits(ir) else None
    return dimension.get_length() if dimension is not None and dimension.is_static else None


def _has_logits(ir: Any) -> bool:
    return any("logits" in output.get_names() for output in ir.outputs)


def _check_vocab(model_vocab: int | None, reference_vocab: int | None, model: Path, reference: Path) -> None:
    if model_vocab is not None and reference_vocab is not None and model_vocab != reference_vocab:
        raise ConfigError(
            f"{model.name} has a vocabulary of {model_vocab} tokens and the reference {reference.name} "
            f"{reference_vocab}; compare models of the same family (one tokenizer)."
        )


def _compile(ir: Any, folder: Path, device: str) -> Any:
    import openvino as ov

    if not _has_logits(ir):
        raise ModelSourceError(f"{folder / MODEL_XML} has no 'logits' output; it is not a causal LM export.")
    properties = CPU_QUALITY_PROPERTIES if device == "CPU" else {}
    return ov.Core().compile_model(ir, device, properties)


def _window_log_probs(request: Any, inputs: set[str], window_ids: np.ndarray) -> np.ndarray:
    """float32 log-softmax of the next-token logits at every position but the window's last."""
    length = len(window_ids)
    feed = {
        "input_ids": window_ids[None, :],
        "attention_mask": np.ones((1, length), dtype=np.int64),
        "position_ids": np.arange(length, dtype=np.int64)[None, :],
        "beam_idx": np.zeros(1, dtype=np.int32),
    }
    request.reset_state()  # each window starts from an empty KV cache
    request.infer({name: value for name, value in feed.items() if name in inputs})
    logits = request.get_tensor("logits").data[0, :-1].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logits -= np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    # float32 halves what the reference keeps in memory; both sides are rounded alike, so
    # identical models still compare equal bit for bit.
    return logits.astype(np.float32)


def _input_names(compiled: Any) -> set[str]:
    return {name for port in compiled.inputs for name in port.get_names()}


def _score_reference(
    ir: Any, folder: Path, windows: list[np.ndarray], device: str, reporter: ProgressReporter
) -> _ReferenceRun:
    compiled = _compile(ir, folder, device)
    request, inputs = compiled.create_infer_request(), _input_names(compiled)
    log_probs, top1 = [], []
    nll_sum, positions = 0.0, 0
    for index, window_ids in enumerate(windows):
        reporter.report(index / len(windows), f"Reference: window {index + 1} of {len(windows)}")
        lp = _window_log_probs(request, inputs, window_ids)
        targets = window_ids[1:]
        nll_sum -= float(lp[np.arange(len(targets)), targets].astype(np.float64).sum())
        positions += len(targets)
        log_probs.append(lp)
        top1.append(lp.argmax(axis=-1))
    return _ReferenceRun(tuple(log_probs), tuple(top1), nll_sum, positions, int(log_probs[0].shape[-1]))


def _score_model(
    ir: Any,
    folder: Path,
    reference_dir: Path,
    windows: list[np.ndarray],
    reference: _ReferenceRun,
    device: str,
    reporter: ProgressReporter,
    num_tokens: int,
) -> QualityReport:
    compiled = _compile(ir, folder, device)
    request, inputs = compiled.create_infer_request(), _input_names(compiled)
    kl_sum, agree, nll_sum = 0.0, 0, 0.0
    for index, window_ids in enumerate(windows):
        reporter.report(index / len(windows), f"Model: window {index + 1} of {len(windows)}")
        lp = _window_log_probs(request, inputs, window_ids)
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


__all__ = ["CPU_QUALITY_PROPERTIES", "QualityReport", "measure_quality"]
