"""NNCF weight compression of a cached float OpenVINO IR.

:func:`check_compression` validates a config against the model's channel sizes before any
work starts, so an impossible group size is reported with the valid ones instead of as an
``InvalidGroupSizeError`` after a minute of work. :func:`compress` then runs
``nncf.compress_weights`` on a fresh read of the float IR (NNCF compresses in place, so the
cached float model is never touched) in a child process, and records the measured share of
weights per precision.

Data-aware configs (AWQ, scale estimation, GPTQ, data-aware sensitivity metrics) calibrate on
:mod:`nbkit.compression.calibration`'s fixed text. The activation statistics NNCF collects depend only on
the float model and the calibration set, not on the config, so they are cached once per
(float model, calibration set) as an ``nncf-statistics`` cache entry (NNCF's
``AdvancedCompressionParameters(statistics_path=...)``): the first data-aware config on a
model collects them, every later one loads them. The entry is built under the cache's per-key
lock, in a temporary folder renamed into place, so concurrent runs never see half-written
statistics and collect them once.

While NNCF works, its own progress bars ("Statistics collection", "Applying data-aware AWQ",
"Applying Scale Estimation", "Applying GPTQ", "Mixed-Precision assignment", "Applying Weight
Compression") move nbkit's bar through :func:`nbkit.compression.nncf_progress.nncf_progress`, with the
phases :func:`nncf_phases` expects for the config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nbkit.artifacts import OVModel
from nbkit.compression.calibration import CalibrationSet
from nbkit.compression.layers import check_layer_names
from nbkit.compression.nncf_compress import (  # re-exported: the names tests, ptq and panels use from here
    STATISTICS_KIND,
    StatisticsSpec,
    compress_folder,
)
from nbkit.compression.nncf_kernels import choose_kernels
from nbkit.config import CompressionConfig, GroupSizeFallback
from nbkit.errors import ConfigError
from nbkit.infra.cache import OPENVINO_COMPRESSED_KIND, OPENVINO_FLOAT_KIND, Cache, CacheEntry, cache_key
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import COMPRESSION_LIBRARIES, versions
from nbkit.infra.worker import Worker, run_isolated
from nbkit.sources.architecture import ArchitectureFacts

log = logging.getLogger(__name__)

COMPRESSION_FORMAT = 1
STATISTICS_FORMAT = 1
FLOAT_KIND = OPENVINO_FLOAT_KIND


def resolve_config(config: CompressionConfig, facts: ArchitectureFacts) -> CompressionConfig:
    """``config`` with ``group_size="auto"`` made concrete for this model, then checked."""
    resolved = config.resolve(facts.valid_group_sizes(all_layers=config.all_layers))
    check_compression(resolved, facts)
    return resolved


def check_compression(config: CompressionConfig, facts: ArchitectureFacts) -> None:
    """Raise :class:`ConfigError` if ``config`` cannot run on a model with these facts."""
    config = config.resolve(facts.valid_group_sizes(all_layers=config.all_layers))
    check_layer_names(config, facts)
    if config.is_data_aware:
        check_calibration_tokens(config.calibration_tokens, facts)
    if config.mode.is_int8 or config.group_size is None:
        return
    assert isinstance(config.group_size, int)
    if config.group_size_fallback is not GroupSizeFallback.ERROR:
        return  # NNCF keeps or adjusts the layers the group size does not fit
    bad = facts.layers_not_divisible_by(config.group_size, all_layers=config.all_layers)
    if bad:
        sizes = sorted({layer.in_features for layer in bad})
        valid = facts.valid_group_sizes(all_layers=config.all_layers)
        valid_text = ", ".join(str(v) for v in valid) if valid else "none of the usual powers of two"
        raise ConfigError(
            f"group_size {config.group_size} does not divide the input channels {sizes} of "
            f"{len(bad)} layer(s) (e.g. {bad[0].name}); valid group sizes for this model: {valid_text}, "
            "or set group_size_fallback to 'ignore' or 'adjust'."
        )


def check_calibration_tokens(tokens: int, facts: ArchitectureFacts) -> None:
    """Raise :class:`ConfigError` if calibration sequences would not fit the model's context."""
    if facts.context_length and tokens > facts.context_length:
        raise ConfigError(
            f"calibration_tokens {tokens} exceeds the context of {facts.context_length} tokens of this "
            f"model; use at most {facts.context_length}."
        )


def require_float_model(model: OVModel, action: str) -> None:
    """Raise :class:`ConfigError` unless ``model`` is a float export (not compressed or quantized)."""
    if model.entry.kind != FLOAT_KIND:
        raise ConfigError(
            f"{model.label} is already {'compressed' if model.is_compressed else 'quantized'}; "
            f"{action} the float export of {model.source_name or 'the model'} instead."
        )


def statistics_spec(model: OVModel, calibration: CalibrationSet, cache: Cache) -> StatisticsSpec:
    """The ``nncf-statistics`` cache entry for ``model`` calibrated on ``calibration``.

    Its key holds the float model's key (which covers the source, the export config and the
    tokenizer), the calibration set's identity (text source and hash, samples, tokens), and
    the OpenVINO/NNCF versions; never the compression config, which the statistics do not
    depend on.
    """
    description = {
        "stage": STATISTICS_KIND,  # the same words as before: keys do not change
        "format": STATISTICS_FORMAT,
        "float_model": model.entry.key,
        "calibration": calibration.identity(),
        "versions": versions(COMPRESSION_LIBRARIES),
    }
    name = f"{model.source_name or 'model'}-{calibration.label}"
    return StatisticsSpec(cache.root, cache_key(description), name, model.source_name, description)


def statistics_entry(model: OVModel, calibration: CalibrationSet, cache: Cache) -> CacheEntry | None:
    """The cached statistics of ``model`` on ``calibration``, if a data-aware run collected them."""
    spec = statistics_spec(model, calibration, cache)
    return cache.lookup(STATISTICS_KIND, spec.key, spec.name)


def compression_key(model: OVModel, config: CompressionConfig) -> str:
    """The cache key of ``model`` compressed with the resolved ``config``.

    A data-aware config's key also holds the calibration set's identity: its fingerprint
    carries the sample and token counts, but not the text itself (source and exact chunks,
    which differ between Python minor versions).
    """
    parts: dict[str, Any] = {
        "stage": "nncf-compress",
        "format": COMPRESSION_FORMAT,
        "float_model": model.entry.key,
        "config": config.fingerprint(),
        "versions": versions(COMPRESSION_LIBRARIES),
    }
    if config.is_data_aware:
        parts["calibration"] = CalibrationSet(
            config.calibration_samples, config.calibration_tokens
        ).identity()
    return cache_key(parts)


def compress(
    model: OVModel,
    config: CompressionConfig,
    *,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
    worker: Worker | None = None,
) -> OVModel:
    """The ``config`` compression of the float ``model``, from the cache or computed now.

    ``worker``: run in this :class:`~nbkit.infra.worker.Worker` (kept up for the next task) instead
    of a fresh child process.
    """
    require_float_model(model, "compress")
    config = resolve_config(config, model.architecture)
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    key = compression_key(model, config)
    statistics: StatisticsSpec | None = None
    if config.is_data_aware:
        calibration = CalibrationSet(config.calibration_samples, config.calibration_tokens)
        statistics = statistics_spec(model, calibration, cache)

    def build(folder: Path) -> dict[str, Any]:
        try:
            result = run_isolated(
                compress_folder,
                model.path,
                folder,
                config,
                reporter=reporter,
                worker=worker,
                statistics=statistics,
                kernels=choose_kernels(model.architecture),
            )
        except BaseException:
            if statistics is not None:  # the child was collecting statistics when it was ended
                cache.reclaim_leftovers()  # its build folder names it, and it is gone
            raise
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
        OPENVINO_COMPRESSED_KIND,
        key,
        f"{model.source_name}-{config.label}",
        build,
        needs_bytes=lambda: compressed_bytes_estimate(model),
        inputs=[model.path],
    )
    return OVModel(entry)


def compressed_bytes_estimate(model: OVModel) -> int:
    """Room a compression of ``model`` is given: half its float weights.

    INT8 weights take a quarter of float32 and INT4 less; the rest covers NNCF's statistics
    and a float16 model as the source.
    """
    return model.weights_bytes // 2


__all__ = [
    "check_calibration_tokens",
    "check_compression",
    "compress",
    "compressed_bytes_estimate",
    "compression_key",
    "require_float_model",
    "resolve_config",
    "statistics_entry",
    "statistics_spec",
]
