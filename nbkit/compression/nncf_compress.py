"""The NNCF side of a compression: what runs in the worker process.

:func:`compress_folder` reads the float IR, runs ``nncf.compress_weights`` with the
arguments :func:`nncf_arguments` derives from the config (collecting or loading the cached
activation statistics of a data-aware config), saves the result next to the float model's
tokenizer files and measures the share of weights per precision. :mod:`nbkit.compression.weights` checks
the config, keys the cache entry and starts this in the worker.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.artifacts import MODEL_BIN, MODEL_XML
from nbkit.compression.calibration import CalibrationSet
from nbkit.compression.layers import ignored_scope_patterns, only_these_pattern
from nbkit.compression.nncf_kernels import nncf_kernels
from nbkit.compression.nncf_progress import nncf_progress
from nbkit.config import CompressionConfig, GroupSizeFallback
from nbkit.errors import CompressionError, ConfigError, NbkitError
from nbkit.infra.cache import NNCF_STATISTICS_KIND, Cache
from nbkit.infra.progress import ProgressReporter

STATISTICS_KIND = NNCF_STATISTICS_KIND
STATISTICS_FOLDER = "statistics"  # inside the entry: NNCF writes it only when it does not exist yet
# The part of compress_folder's bar that NNCF's own phases fill (see nncf_phases).
NNCF_START, NNCF_END = 0.1, 0.85


@dataclass(frozen=True)
class StatisticsSpec:
    """Where the child process finds or stores the activation statistics of one calibration set."""

    cache_root: Path
    key: str
    name: str
    source_name: str
    description: dict[str, Any]


def nncf_arguments(
    config: CompressionConfig, *, dataset: Any = None, statistics_path: Path | str | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``nncf.compress_weights`` for ``config`` (also shown as code in panels).

    For a data-aware config the result holds ``dataset`` (the ``nncf.Dataset`` given, or
    ``None`` when only showing the arguments), ``subset_size`` (all calibration samples),
    ``awq``, ``scale_estimation``, ``gptq``, ``lora_correction`` and, when set,
    ``sensitivity_metric``; ``statistics_path`` goes into ``advanced_parameters``. Layers in
    ``keep_float`` or ``keep_int8`` go into ``ignored_scope`` (the INT8 ones are compressed
    afterwards by :func:`int8_pass_arguments`).
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
    left_out = tuple(sorted({*config.keep_float, *config.keep_int8}))
    if left_out:
        arguments["ignored_scope"] = nncf.IgnoredScope(patterns=ignored_scope_patterns(left_out))
    if config.is_data_aware:
        arguments.update(
            dataset=dataset,
            subset_size=config.calibration_samples,
            awq=config.awq,
            scale_estimation=config.scale_estimation,
            gptq=config.gptq,
        )
        if config.lora_correction:
            arguments["lora_correction"] = True
        if statistics_path is not None:
            advanced["statistics_path"] = str(statistics_path)
    if advanced:
        arguments["advanced_parameters"] = AdvancedCompressionParameters(**advanced)
    return arguments


def int8_pass_arguments(config: CompressionConfig) -> dict[str, Any] | None:
    """Arguments of the second ``nncf.compress_weights`` call that makes ``keep_int8`` INT8, or None.

    The first call left those layers float (ignored scope); this one compresses them to
    INT8_ASYM per-channel and ignores every other layer, so layers the first call kept float on
    purpose (``keep_float``, a ``backup_mode`` of ``none``) stay float, and compressed ones are
    not touched.
    """
    if not config.keep_int8:
        return None
    import nncf

    return {
        "mode": nncf.CompressWeightsMode.INT8_ASYM,
        "ignored_scope": nncf.IgnoredScope(patterns=[only_these_pattern(config.keep_int8)]),
    }


def nncf_phases(config: CompressionConfig, *, collect_statistics: bool = False) -> list[tuple[str, float]]:
    """The progress phases ``nncf.compress_weights`` runs for ``config``, in order, with weights.

    Names match NNCF's progress bar descriptions (see :mod:`nbkit.compression.nncf_progress`). A weight is
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
    # LoRA correction fits its adapters layer by layer inside NNCF's weight compression loop.
    phases.append(("Applying Weight Compression", 30.0 if config.lora_correction else 6.5))
    if config.keep_int8:
        phases.append(("Applying Weight Compression", 0.5))  # the INT8 pass over the kept layers
    return phases


class _CollectLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def nncf_errors(label: str, failure: type[NbkitError]) -> Iterator[None]:
    """Turn what NNCF raises into nbkit errors: what it refuses to do with ``label`` is a
    :class:`ConfigError`, anything else that breaks is a ``failure``."""
    import nncf

    try:
        yield
    except (nncf.ParameterNotSupportedError, nncf.ValidationError, nncf.UnsupportedModelError) as exc:
        raise ConfigError(f"NNCF does not support {label} on this model: {exc}") from exc
    except NbkitError:
        raise
    except Exception as exc:
        raise failure(f"NNCF failed on {label}: {type(exc).__name__}: {exc}") from exc


def _run_nncf(model: Any, config: CompressionConfig, arguments: dict[str, Any]) -> Any:
    import nncf

    with nncf_errors(config.label, CompressionError):
        try:
            compressed = nncf.compress_weights(model, **arguments)
        except nncf.InvalidGroupSizeError as exc:
            raise ConfigError(f"NNCF rejected group_size {config.group_size}: {exc}") from exc
        second = int8_pass_arguments(config)
        if second is not None:
            make_names_unique(compressed)
            compressed = nncf.compress_weights(compressed, **second)
        return compressed


def make_names_unique(model: Any) -> int:
    """Give every node of ``model`` its own friendly name; returns how many were renamed.

    With its NumPy kernels NNCF adds some constants of one name more than once (seen on
    SmolLM2-135M, NNCF 3.4), and a second ``compress_weights`` on that model refuses it
    ("More than one node in NNCFGraph matches name ..."). The copies get a suffix; only
    names change, never values or edges.
    """
    seen: Counter[str] = Counter()
    renamed = 0
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        seen[name] += 1
        if seen[name] > 1:
            op.set_friendly_name(f"{name}_nbkit{seen[name] - 1}")
            renamed += 1
    return renamed


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
    :mod:`nbkit.compression.nncf_kernels`).
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
    from nbkit.compression.calibration import CalibrationProgress, calibration_items, make_dataset

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
_PRECISION_NAMES = {
    "u4": "int4",
    "i4": "int4",
    "u8": "int8",
    "i8": "int8",
    "nf4": "nf4",
    "f4e2m1": "fp4",
    "f8e4m3": "fp8",
    "f8e5m2": "fp8",
}
CODEBOOK = "cb4"  # weights stored as 4-bit indexes into a 16-value codebook


def _weight_constant(node: Any) -> tuple[Any, str | None]:
    """The stored constant behind a weight input, and its precision name when the path says it."""
    while True:
        kind = node.get_type_name()
        if kind in _PASS_THROUGH:
            node = node.input_value(0).get_node()
        elif kind == "Gather" and len(node.get_input_partial_shape(0)) == 1:
            # NNCF's codebook lookup: Gather(codebook values, indexes); the indexes are the weight.
            index = node.input_value(1).get_node()
            while index.get_type_name() in _PASS_THROUGH:
                index = index.input_value(0).get_node()
            return index, CODEBOOK
        else:
            return node, None


def weight_precisions(model: Any) -> dict[str, float]:
    """Share of weight parameters (MatMul and embedding Gather weights) per storage precision.

    Follows each weight input back through NNCF's decompression subgraph
    (Constant -> Convert -> Subtract -> Multiply -> Reshape, with a codebook Gather for CB4) to
    the stored constant. LoRA correction's adapters are MatMul weights too, and count.
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
        node, precision = _weight_constant(op.input_value(port).get_node())
        if node.get_type_name() != "Constant":
            continue  # activations x activations (attention scores), not a weight
        name = node.get_friendly_name()
        if name in counted or len(node.get_output_partial_shape(0)) < 2:
            continue  # shared, or a codebook's values / a scale vector
        size = _numel(node)
        counted[name] = size
        element = node.get_output_element_type(0).get_type_name()
        per_precision[precision or _PRECISION_NAMES.get(element, "float")] += size
    total = sum(per_precision.values())
    return {name: round(count / total, 4) for name, count in sorted(per_precision.items())} if total else {}


def _numel(node: Any) -> int:
    count = 1
    for dim in node.get_output_partial_shape(0).to_shape():
        count *= int(dim)
    return count
