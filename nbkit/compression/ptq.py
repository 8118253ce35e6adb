"""Full INT8 post-training quantization (weights *and* activations) with ``nncf.quantize``.

This is the working form of the old "``nncf.quantize_with_tune_runner`` / ``NNCFConfig``"
recipe: NNCF 2.x+ has neither for OpenVINO models; the post-training API is
``nncf.quantize(model, nncf.Dataset(...), ...)``. For a language model nbkit calls it with
``model_type=nncf.ModelType.TRANSFORMER`` (which keeps attention-internal operations such as
softmax and the score MatMuls out of INT8 and enables SmoothQuant), the config's ``preset``,
and ``subset_size`` = all calibration samples. The calibration samples are those of
:mod:`nbkit.compression.calibration`: whole prefills of the stateful IR, whose KV state NNCF resets
before each one.

The result is an OpenVINO IR with FakeQuantize operations on the inputs of the MatMuls and
INT8 weights; openvino-genai's ``LLMPipeline`` runs it like any other IR. Like
:func:`nbkit.compression.weights.compress` the work runs in a child process and the result is a cache
entry (kind ``openvino-quantized``) with the tokenizer files copied along.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from nbkit.artifacts import MODEL_BIN, MODEL_XML, OVModel
from nbkit.compression.calibration import CalibrationSet
from nbkit.compression.nncf_compress import copy_model_files, nncf_errors, weight_precisions
from nbkit.compression.nncf_progress import nncf_progress
from nbkit.compression.weights import check_calibration_tokens, compressed_bytes_estimate, require_float_model
from nbkit.config import QuantizationConfig
from nbkit.errors import QuantizationError
from nbkit.infra.cache import OPENVINO_QUANTIZED_KIND, Cache, cache_key
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import COMPRESSION_LIBRARIES, versions
from nbkit.infra.worker import Worker, run_isolated

log = logging.getLogger(__name__)

QUANTIZATION_FORMAT = 1
QUANTIZED_KIND = OPENVINO_QUANTIZED_KIND
# The part of quantize_folder's bar that NNCF's own phases fill, and the phases nncf.quantize
# runs for a transformer (see nbkit.compression.nncf_progress): SmoothQuant's statistics pass and its
# scaling, the min/max statistics pass of the quantizers, fast bias correction. Weights are the
# seconds from the start of a phase to the start of the next one on SmolLM2-135M with 64
# calibration samples of 128 tokens on two CPU cores (NNCF 3.4); "Smooth Quant" includes the
# ~20 s NNCF then spends inserting the scales and placing the quantizers without a progress bar.
NNCF_START, NNCF_END = 0.1, 0.85
NNCF_PHASES = (
    ("Statistics collection", 15.0),
    ("Smooth Quant", 24.0),
    ("Statistics collection", 16.0),
    ("Fast Bias correction", 1.5),
)


def quantize(
    model: OVModel,
    config: QuantizationConfig | None = None,
    *,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
    worker: Worker | None = None,
) -> OVModel:
    """The INT8 post-training quantization of the float ``model``, from the cache or computed now.

    ``worker``: run in this :class:`~nbkit.infra.worker.Worker` (kept up for the next task) instead
    of a fresh child process.
    """
    require_float_model(model, "quantize")
    config = config or QuantizationConfig()
    check_calibration_tokens(config.calibration_tokens, model.architecture)
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    calibration = CalibrationSet(config.calibration_samples, config.calibration_tokens)
    key = cache_key(
        {
            "stage": "nncf-quantize",
            "format": QUANTIZATION_FORMAT,
            "float_model": model.entry.key,
            "config": config.fingerprint(),
            "calibration": calibration.identity(),
            "versions": versions(COMPRESSION_LIBRARIES),
        }
    )

    def build(folder: Path) -> dict[str, Any]:
        result = run_isolated(quantize_folder, model.path, folder, config, reporter=reporter, worker=worker)
        metadata = dict(model.entry.metadata)
        metadata.update(
            label=config.label,
            config=config.to_dict(),
            float_model=model.entry.key,
            float_weights_bytes=model.weights_bytes,
            versions=versions(COMPRESSION_LIBRARIES),
            **result,
        )
        return metadata

    entry = cache.get_or_build(
        QUANTIZED_KIND,
        key,
        f"{model.source_name}-{config.label}",
        build,
        needs_bytes=lambda: compressed_bytes_estimate(model),
        inputs=[model.path],
    )
    return OVModel(entry)


def quantize_arguments(config: QuantizationConfig, *, dataset: Any = None) -> dict[str, Any]:
    """Keyword arguments of ``nncf.quantize`` for ``config`` (``calibration_dataset`` is ``dataset``)."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    arguments: dict[str, Any] = {
        "calibration_dataset": dataset,
        "subset_size": config.calibration_samples,
        "model_type": nncf.ModelType.TRANSFORMER,
        "preset": nncf.QuantizationPreset(config.preset),
    }
    if config.smooth_quant_alpha is not None:
        arguments["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=float(config.smooth_quant_alpha))
        )
    return arguments


def quantize_folder(
    float_dir: Path, out_dir: Path, config: QuantizationConfig, *, reporter: ProgressReporter
) -> dict[str, Any]:
    """Quantize ``float_dir``'s IR into ``out_dir`` (with the tokenizer files copied alongside)."""
    import nncf
    import openvino as ov

    from nbkit.compression.calibration import CalibrationProgress, calibration_items, make_dataset

    reporter.report(0.02, "Reading the float IR")
    model = ov.Core().read_model(str(float_dir / MODEL_XML))
    calibration = CalibrationSet(config.calibration_samples, config.calibration_tokens)
    reporter.report(0.05, f"Tokenizing the calibration text ({calibration.label})")
    items = calibration_items(model, float_dir, calibration)
    # The calibration reads report themselves only if NNCF's phases cannot be followed.
    dataset = make_dataset(items, CalibrationProgress(reporter, NNCF_START, NNCF_END))
    reporter.report(NNCF_START, f"Quantizing weights and activations ({config.label}) with NNCF")
    started = time.perf_counter()
    with (
        nncf_errors(config.label, QuantizationError),
        nncf_progress(reporter, NNCF_START, NNCF_END, NNCF_PHASES),
    ):
        quantized = nncf.quantize(model, **quantize_arguments(config, dataset=dataset))
    seconds = time.perf_counter() - started
    reporter.report(0.88, "Saving the quantized IR")
    ov.save_model(quantized, str(out_dir / MODEL_XML), compress_to_fp16=False)
    copy_model_files(float_dir, out_dir)
    counts = _operation_counts(quantized)
    reporter.report(1.0, "Quantized")
    return {
        "weight_precisions": weight_precisions(quantized),
        "weights_bytes": (out_dir / MODEL_BIN).stat().st_size,
        "fake_quantize_ops": counts.get("FakeQuantize", 0),
        "calibration": {**calibration.identity(), "nncf_s": round(seconds, 2)},
    }


def _operation_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        counts[kind] = counts.get(kind, 0) + 1
    return counts


__all__ = ["QUANTIZED_KIND", "quantize", "quantize_arguments", "quantize_folder"]
