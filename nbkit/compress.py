"""NNCF weight compression of a cached float OpenVINO IR.

:func:`check_compression` validates a config against the model's channel sizes before any
work starts, so an impossible group size is reported with the valid ones instead of as an
``InvalidGroupSizeError`` after a minute of work. :func:`compress` then runs
``nncf.compress_weights`` on a fresh read of the float IR (NNCF compresses in place, so the
cached float model is never touched) in a child process, and records the measured share of
weights per precision.

Data-aware configs (AWQ, scale estimation, GPTQ, data-aware sensitivity metrics) calibrate on
:mod:`nbkit.calibration`'s fixed text. The activation statistics NNCF collects depend only on
the float model and the calibration set, not on the config, so they are cached once per
(float model, calibration set) as an ``nncf-statistics`` cache entry (NNCF's
``AdvancedCompressionParameters(statistics_path=...)``): the first data-aware config on a
model collects them, every later one loads them. The entry is built under the cache's per-key
lock, in a temporary folder renamed into place, so concurrent runs never see half-written
statistics and collect them once.

While NNCF works, its own progress bars ("Statistics collection", "Applying data-aware AWQ",
"Applying Scale Estimation", "Applying GPTQ", "Mixed-Precision assignment", "Applying Weight
Compression") move nbkit's bar through :func:`nbkit.nncf_progress.nncf_progress`, with the
phases :func:`nncf_phases` expects for the config.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.architecture import ArchitectureFacts
from nbkit.artifacts import MODEL_BIN, MODEL_XML, OVModel
from nbkit.cache import Cache, CacheEntry, _alive, _pid_of, cache_key
from nbkit.calibration import CalibrationSet
from nbkit.config import CompressionConfig, GroupSizeFallback
from nbkit.errors import ConfigError, NbkitError
from nbkit.nncf_kernels import choose_kernels, nncf_kernels
from nbkit.nncf_progress import nncf_progress
from nbkit.progress import ProgressCallback, ProgressReporter
from nbkit.versions import COMPRESSION_LIBRARIES, versions
from nbkit.worker import Worker, run_isolated

log = logging.getLogger(__name__)

COMPRESSION_FORMAT = 1
STATISTICS_FORMAT = 1
STATISTICS_KIND = "nncf-statistics"
STATISTICS_FOLDER = "statistics"  # inside the entry: NNCF writes it only when it does not exist yet
FLOAT_KIND = "openvino-float"
# The part of compress_folder's bar that NNCF's own phases fill (see nncf_phases).
NNCF_START, NNCF_END = 0.1, 0.85


class CompressionError(NbkitError):
    """NNCF failed on a config that passed nbkit's checks."""


def resolve_config(config: CompressionConfig, facts: ArchitectureFacts) -> CompressionConfig:
    """``config`` with ``group_size="auto"`` made concrete for this model, then checked."""
    resolved = config.resolve(facts.valid_group_sizes(all_layers=config.all_layers))
    check_compression(resolved, facts)
    return resolved


def check_compression(config: CompressionConfig, facts: ArchitectureFacts) -> None:
    """Raise :class:`ConfigError` if ``config`` cannot run on a model with these facts."""
    config = config.resolve(facts.valid_group_sizes(all_layers=config.all_layers))
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


@dataclass(frozen=True)
class StatisticsSpec:
    """Where the child process finds or stores the activation statistics of one calibration set."""

    cache_root: Path
    key: str
    name: str
    source_name: str
    description: dict[str, Any]


def statistics_spec(model: OVModel, calibration: CalibrationSet, cache: Cache) -> StatisticsSpec:
    """The ``nncf-statistics`` cache entry for ``model`` calibrated on ``calibration``.

    Its key holds the float model's key (which covers the source, the export config and the
    tokenizer), the calibration set's identity (text source and hash, samples, tokens), and
    the OpenVINO/NNCF versions; never the compression config, which the statistics do not
    depend on.
    """
    description = {
        "stage": "nncf-statistics",
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

    ``worker``: run in this :class:`~nbkit.worker.Worker` (kept up for the next task) instead
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
                remove_orphaned_builds(cache, STATISTICS_KIND, statistics.key, statistics.name)
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
        "openvino-compressed",
        key,
        f"{model.source_name}-{config.label}",
        build,
        needs_bytes=lambda: compressed_bytes_estimate(model),
    )
    return OVModel(entry)


def compressed_bytes_estimate(model: OVModel) -> int:
    """Room a compression of ``model`` is given: half its float weights.

    INT8 weights take a quarter of float32 and INT4 less; the rest covers NNCF's statistics
    and a float16 model as the source.
    """
    return model.weights_bytes // 2


def remove_orphaned_builds(cache: Cache, kind: str, key: str, name: str) -> None:
    """Remove temporary build folders of this entry left by child processes that were ended.

    A child ended by a cancel gets no chance to clean up the entry it was building (the
    statistics); its folder in ``.tmp`` carries its process id, which is no longer alive.
    """
    prefix = cache.entry_path(kind, key, name).name + "."
    tmp = cache.root / ".tmp"
    if not tmp.is_dir():
        return
    for folder in tmp.iterdir():
        pid = _pid_of(folder.name)
        if folder.name.startswith(prefix) and pid is not None and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def nncf_arguments(
    config: CompressionConfig, *, dataset: Any = None, statistics_path: Path | str | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``nncf.compress_weights`` for ``config`` (also shown as code in panels).

    For a data-aware config the result holds ``dataset`` (the ``nncf.Dataset`` given, or
    ``None`` when only showing the arguments), ``subset_size`` (all calibration samples),
    ``awq``, ``scale_estimation``, ``gptq`` and, when set, ``sensitivity_metric``;
    ``statistics_path`` goes into ``advanced_parameters``.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    arguments: dict[str, Any] = {"mode": nncf.CompressWeightsMode(config.mode.value)}
    advanced: dict[str, Any] = {}
    if not config.mode.is_int8:
        arguments.update(
            group_size=config.group_size if config.group_size is not None else -1,
            ratio=config.ratio,
            backup_mode=nncf.BackupMode(config.backup_mode.value),
        )
        if config.group_size_fallback is not GroupSizeFallback.ERROR:
            advanced["group_size_fallback_mode"] = GroupSizeFallbackMode(config.group_size_fallback.value)
        if config.sensitivity_metric is not None:
            arguments["sensitivity_metric"] = nncf.SensitivityMetric(config.sensitivity_metric.value)
    if config.all_layers:
        arguments["all_layers"] = True
    if config.is_data_aware:
        arguments.update(
            dataset=dataset,
            subset_size=config.calibration_samples,
            awq=config.awq,
            scale_estimation=config.scale_estimation,
            gptq=config.gptq,
        )
        if statistics_path is not None:
            advanced["statistics_path"] = str(statistics_path)
    if advanced:
        arguments["advanced_parameters"] = AdvancedCompressionParameters(**advanced)
    return arguments


def nncf_phases(config: CompressionConfig, *, collect_statistics: bool = False) -> list[tuple[str, float]]:
    """The progress phases ``nncf.compress_weights`` runs for ``config``, in order, with weights.

    Names match NNCF's progress bar descriptions (see :mod:`nbkit.nncf_progress`). A weight is
    the time from the start of the phase to the start of the next one, in seconds, measured on
    SmolLM2-135M with 32 calibration samples of 128 tokens on two CPU cores (NNCF 3.4): the bar
    sits at the end of a phase while NNCF works between phases (saving and loading statistics,
    applying scales), so that time counts for the phase before it. Only the proportions matter.
    """
    phases: list[tuple[str, float]] = []
    if config.is_data_aware and collect_statistics:
        phases.append(("Statistics collection", 10.0))  # then statistics saved and loaded again
    if not config.mode.is_int8 and config.ratio < 1.0:
        phases.append(("Mixed-Precision assignment", 0.5))
    if config.awq:
        phases.append(("AWQ", 4.0))  # "Applying data-aware AWQ"
    if config.gptq:
        phases.append(("GPTQ", 85.0))  # "Applying GPTQ [with Scale Estimation]", layer by layer
    elif config.scale_estimation:
        phases.append(("Scale Estimation", 14.0))
    phases.append(("Applying Weight Compression", 6.5))
    return phases


class _CollectLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _run_nncf(model: Any, config: CompressionConfig, arguments: dict[str, Any]) -> Any:
    import nncf

    try:
        return nncf.compress_weights(model, **arguments)
    except nncf.InvalidGroupSizeError as exc:
        raise ConfigError(f"NNCF rejected group_size {config.group_size}: {exc}") from exc
    except (nncf.ParameterNotSupportedError, nncf.ValidationError, nncf.UnsupportedModelError) as exc:
        raise ConfigError(f"NNCF does not support {config.label} on this model: {exc}") from exc
    except NbkitError:
        raise
    except Exception as exc:
        raise CompressionError(f"NNCF failed on {config.label}: {type(exc).__name__}: {exc}") from exc


def compress_folder(
    float_dir: Path,
    out_dir: Path,
    config: CompressionConfig,
    *,
    reporter: ProgressReporter,
    statistics: StatisticsSpec | None = None,
    kernels: str = "openvino",
) -> dict[str, Any]:
    """Compress ``float_dir``'s IR into ``out_dir`` (with the tokenizer files copied alongside).

    A data-aware ``config`` needs ``statistics``: where the activation statistics of its
    calibration set are cached (read if present, collected and stored otherwise).
    ``kernels``: NNCF's ``"numpy"`` or ``"openvino"`` quantization kernels (same result, see
    :mod:`nbkit.nncf_kernels`).
    """
    with nncf_kernels(kernels):
        result = _compress_folder(float_dir, out_dir, config, reporter, statistics)
    return {**result, "nncf_kernels": kernels}


def _compress_folder(
    float_dir: Path,
    out_dir: Path,
    config: CompressionConfig,
    reporter: ProgressReporter,
    statistics: StatisticsSpec | None,
) -> dict[str, Any]:
    import openvino as ov

    reporter.report(0.02, "Reading the float IR")
    model = ov.Core().read_model(str(float_dir / MODEL_XML))
    collector = _CollectLog()
    nncf_logger = logging.getLogger("nncf")
    nncf_logger.addHandler(collector)
    extra: dict[str, Any] = {}
    try:
        if config.is_data_aware:
            if statistics is None:
                raise ConfigError(f"{config.label} needs calibration data; call nbkit.compress().")
            compressed, extra = _compress_data_aware(model, float_dir, config, statistics, reporter)
        else:
            reporter.report(NNCF_START, f"Compressing weights ({config.label}) with NNCF")
            with nncf_progress(reporter, NNCF_START, NNCF_END, nncf_phases(config)):
                compressed = _run_nncf(model, config, nncf_arguments(config))
    finally:
        nncf_logger.removeHandler(collector)
    reporter.report(NNCF_END, "Saving the compressed IR")
    ov.save_model(compressed, str(out_dir / MODEL_XML), compress_to_fp16=False)
    copy_model_files(float_dir, out_dir)
    precisions = weight_precisions(compressed)
    reporter.report(1.0, "Compressed")
    return {
        "weight_precisions": precisions,
        "weights_bytes": (out_dir / MODEL_BIN).stat().st_size,
        "nncf_report": "\n".join(line for line in collector.lines if "│" in line or "%" in line),
        **extra,
    }


def _compress_data_aware(
    model: Any,
    float_dir: Path,
    config: CompressionConfig,
    statistics: StatisticsSpec,
    reporter: ProgressReporter,
) -> tuple[Any, dict[str, Any]]:
    from nbkit.calibration import CalibrationProgress, calibration_items, make_dataset

    calibration = CalibrationSet(config.calibration_samples, config.calibration_tokens)
    reporter.report(0.05, f"Tokenizing the calibration text ({calibration.label})")
    items = calibration_items(model, float_dir, calibration)
    # The calibration reads report themselves only if NNCF's phases cannot be followed.
    dataset = make_dataset(items, CalibrationProgress(reporter, NNCF_START, 0.8))
    cache = Cache(statistics.cache_root)
    made: dict[str, Any] = {}

    def collect(folder: Path) -> dict[str, Any]:
        # NNCF collects every statistic its data-aware algorithms use into a path that does not
        # exist yet, then compresses with them: one pass over the data serves this config and
        # every later one.
        reporter.report(NNCF_START, f"Compressing weights ({config.label}) with NNCF, collecting statistics")
        arguments = nncf_arguments(config, dataset=dataset, statistics_path=folder / STATISTICS_FOLDER)
        started = time.perf_counter()
        with nncf_progress(reporter, NNCF_START, NNCF_END, nncf_phases(config, collect_statistics=True)):
            made["model"] = _run_nncf(model, config, arguments)
        made["seconds"] = time.perf_counter() - started
        return {
            "source_name": statistics.source_name,
            "label": f"statistics-{calibration.label}",
            "calibration": calibration.identity(),
            "float_model": statistics.description["float_model"],
            "versions": statistics.description["versions"],
        }

    entry = cache.get_or_build(
        STATISTICS_KIND, statistics.key, statistics.name, collect, description=statistics.description
    )
    if "model" in made:
        state, compressed, seconds = "collected", made["model"], made["seconds"]
    else:
        state = "reused"
        reporter.report(NNCF_START, f"Compressing weights ({config.label}) with NNCF, cached statistics")
        arguments = nncf_arguments(config, dataset=dataset, statistics_path=entry.path / STATISTICS_FOLDER)
        started = time.perf_counter()
        with nncf_progress(reporter, NNCF_START, NNCF_END, nncf_phases(config)):
            compressed = _run_nncf(model, config, arguments)
        seconds = time.perf_counter() - started
    return compressed, {
        "calibration": {
            **calibration.identity(),
            "statistics": state,  # "collected" by this run or "reused" from an earlier one
            "statistics_entry": str(entry.path),
            "nncf_s": round(seconds, 2),
        }
    }


def copy_model_files(float_dir: Path, out_dir: Path) -> None:
    """Copy the tokenizer IRs, tokenizer and config files (everything but the model IR)."""
    for item in float_dir.iterdir():
        if item.name.startswith("openvino_model.") or item.name.startswith("nbkit-"):
            continue
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)


_PASS_THROUGH = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze"}
_PRECISION_NAMES = {"u4": "int4", "i4": "int4", "u8": "int8", "i8": "int8", "nf4": "nf4"}


def weight_precisions(model: Any) -> dict[str, float]:
    """Share of weight parameters (MatMul and embedding Gather weights) per storage precision.

    Follows each weight input back through NNCF's decompression subgraph
    (Constant -> Convert -> Subtract -> Multiply -> Reshape) to the stored constant.
    """
    counted: dict[str, int] = {}
    per_precision: Counter[str] = Counter()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "MatMul":
            port = 1
        elif kind == "Gather":
            port = 0
        else:
            continue
        node = op.input_value(port).get_node()
        while node.get_type_name() in _PASS_THROUGH:
            node = node.input_value(0).get_node()
        if node.get_type_name() != "Constant":
            continue  # activations x activations (attention scores), not a weight
        name = node.get_friendly_name()
        if name in counted or len(node.get_output_partial_shape(0)) < 2:
            continue
        size = int(node.get_output_partial_shape(0).to_shape().__iter__().__class__ and _numel(node))
        counted[name] = size
        element = node.get_output_element_type(0).get_type_name()
        per_precision[_PRECISION_NAMES.get(element, "float")] += size
    total = sum(per_precision.values())
    return {name: round(count / total, 4) for name, count in sorted(per_precision.items())} if total else {}


def _numel(node: Any) -> int:
    count = 1
    for dim in node.get_output_partial_shape(0).to_shape():
        count *= int(dim)
    return count
