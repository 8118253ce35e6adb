"""NNCF weight compression of a cached float OpenVINO IR.

:func:`check_compression` validates a config against the model's channel sizes before any
work starts, so an impossible group size is reported with the valid ones instead of as an
``InvalidGroupSizeError`` after a minute of work. :func:`compress` then runs
``nncf.compress_weights`` on a fresh read of the float IR (NNCF compresses in place, so the
cached float model is never touched) in a child process, and records the measured share of
weights per precision.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from nbkit.architecture import ArchitectureFacts
from nbkit.artifacts import MODEL_BIN, MODEL_XML, OVModel
from nbkit.cache import Cache, cache_key
from nbkit.config import CompressionConfig, GroupSizeFallback
from nbkit.errors import ConfigError, NbkitError
from nbkit.progress import ProgressCallback, ProgressReporter
from nbkit.versions import COMPRESSION_LIBRARIES, versions
from nbkit.worker import run_isolated

log = logging.getLogger(__name__)

COMPRESSION_FORMAT = 1


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


def compress(
    model: OVModel,
    config: CompressionConfig,
    *,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> OVModel:
    """The ``config`` compression of the float ``model``, from the cache or computed now."""
    if model.is_compressed:
        raise ConfigError(
            f"{model.label} is already compressed; compress the float export of {model.source_name} instead."
        )
    config = resolve_config(config, model.architecture)
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    key = cache_key(
        {
            "stage": "nncf-compress",
            "format": COMPRESSION_FORMAT,
            "float_model": model.entry.key,
            "config": config.fingerprint(),
            "versions": versions(COMPRESSION_LIBRARIES),
        }
    )

    def build(folder: Path) -> dict[str, Any]:
        result = run_isolated(compress_folder, model.path, folder, config, reporter=reporter)
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

    entry = cache.get_or_build("openvino-compressed", key, f"{model.source_name}-{config.label}", build)
    return OVModel(entry)


def nncf_arguments(config: CompressionConfig) -> dict[str, Any]:
    """Keyword arguments of ``nncf.compress_weights`` for ``config`` (also shown as code in panels)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    arguments: dict[str, Any] = {"mode": nncf.CompressWeightsMode(config.mode.value)}
    if not config.mode.is_int8:
        arguments.update(
            group_size=config.group_size if config.group_size is not None else -1,
            ratio=config.ratio,
            backup_mode=nncf.BackupMode(config.backup_mode.value),
        )
        if config.group_size_fallback is not GroupSizeFallback.ERROR:
            arguments["advanced_parameters"] = AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode(config.group_size_fallback.value)
            )
    if config.all_layers:
        arguments["all_layers"] = True
    return arguments


class _CollectLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def compress_folder(
    float_dir: Path, out_dir: Path, config: CompressionConfig, *, reporter: ProgressReporter
) -> dict[str, Any]:
    """Compress ``float_dir``'s IR into ``out_dir`` (with the tokenizer files copied alongside)."""
    import nncf
    import openvino as ov

    reporter.report(0.02, "Reading the float IR")
    model = ov.Core().read_model(str(float_dir / MODEL_XML))
    reporter.report(0.1, f"Compressing weights ({config.label}) with NNCF")
    collector = _CollectLog()
    nncf_logger = logging.getLogger("nncf")
    nncf_logger.addHandler(collector)
    try:
        compressed = nncf.compress_weights(model, **nncf_arguments(config))
    except nncf.InvalidGroupSizeError as exc:
        raise ConfigError(f"NNCF rejected group_size {config.group_size}: {exc}") from exc
    except Exception as exc:
        raise CompressionError(f"NNCF failed on {config.label}: {type(exc).__name__}: {exc}") from exc
    finally:
        nncf_logger.removeHandler(collector)
    reporter.report(0.85, "Saving the compressed IR")
    ov.save_model(compressed, str(out_dir / MODEL_XML), compress_to_fp16=False)
    for item in float_dir.iterdir():
        if item.name.startswith("openvino_model.") or item.name.startswith("nbkit-"):
            continue
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)
    precisions = weight_precisions(compressed)
    reporter.report(1.0, "Compressed")
    return {
        "weight_precisions": precisions,
        "weights_bytes": (out_dir / MODEL_BIN).stat().st_size,
        "nncf_report": "\n".join(line for line in collector.lines if "│" in line or "%" in line),
    }


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
