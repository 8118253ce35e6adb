"""Frozen configuration dataclasses.

Each config is hashable and has a stable :meth:`fingerprint` that goes into cache keys, so
two equal configs always share a cache entry and any changed field makes a new one.
Validation that needs no model runs in ``__post_init__``; validation against a model's
channel sizes lives in :mod:`nbkit.compression.weights`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from nbkit.errors import ConfigError

# OpenVINO's performance hints (a runtime option every device takes).
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


class CompressionMode(str, enum.Enum):
    """Weight precision modes of ``nncf.compress_weights`` that nbkit offers.

    Only formats that both compress and run on the CPU with the pinned OpenVINO are offered;
    :data:`NOT_OFFERED_FORMATS` names the others with the reason (``tests/test_compression_choices.py``
    re-checks both claims on a tiny model).
    """

    INT8_SYM = "int8_sym"
    INT8_ASYM = "int8_asym"
    INT4_SYM = "int4_sym"
    INT4_ASYM = "int4_asym"
    NF4 = "nf4"
    CB4 = "cb4"
    MXFP4 = "mxfp4"
    FP4 = "fp4"
    NVFP4 = "nvfp4"
    FP8_E4M3 = "fp8_e4m3"
    MXFP8_E4M3 = "mxfp8_e4m3"

    @property
    def is_int8(self) -> bool:
        """Per-channel INT8 over every layer: no groups, ratio, backup or data-aware options."""
        return self in (CompressionMode.INT8_SYM, CompressionMode.INT8_ASYM)

    @property
    def bits(self) -> int:
        return 8 if self.is_int8 or self in (CompressionMode.FP8_E4M3, CompressionMode.MXFP8_E4M3) else 4

    @property
    def fixed_group_size(self) -> int | None:
        """The one group size the format defines (MX formats: 32, NVFP4: 16), or None if any fits."""
        return _FIXED_GROUP_SIZES.get(self)

    @property
    def takes_data_aware(self) -> bool:
        """Whether AWQ, scale estimation and GPTQ apply (NNCF 3.4 refuses them for the FP and MX formats)."""
        return self in _DATA_AWARE_MODES

    @property
    def takes_lora_correction(self) -> bool:
        """Whether NNCF 3.4 computes LoRA correction adapters for this mode (integer 4-bit and NF4 only)."""
        return self in _LORA_MODES

    @classmethod
    def parse(cls, value: str | CompressionMode) -> CompressionMode:
        if isinstance(value, CompressionMode):
            return value
        if not isinstance(value, str):
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(
                f"The compression mode must be a string such as 'int4_sym', not {value!r}; choose one of: {choices}."
            )
        key = value.lower().replace("-", "_")
        if key in NOT_OFFERED_FORMATS:
            raise ConfigError(f"{value} is not offered: {NOT_OFFERED_FORMATS[key]}.")
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(f"Unknown compression mode {value!r}; choose one of: {choices}.") from None


_FIXED_GROUP_SIZES = {
    CompressionMode.MXFP4: 32,
    CompressionMode.MXFP8_E4M3: 32,
    CompressionMode.NVFP4: 16,
}
# nncf.compress_weights (OpenVINO backend) refuses AWQ, scale estimation, GPTQ and LoRA
# correction with MXFP4, MXFP8_E4M3, FP8_E4M3, FP4 and NVFP4; CB4 runs AWQ, scale estimation
# and GPTQ, but its LoRA correction raises NNCF's InternalError (see _LORA_MODES).
_DATA_AWARE_MODES = (
    CompressionMode.INT4_SYM,
    CompressionMode.INT4_ASYM,
    CompressionMode.NF4,
    CompressionMode.CB4,
)
# NNCF's LoraCorrectionAlgorithm dequantizes integer (INT4/3/2) and NF4 weights only.
_LORA_MODES = (CompressionMode.INT4_SYM, CompressionMode.INT4_ASYM, CompressionMode.NF4)

# Formats of the issue nbkit does not offer, with why; shown where the user picks a mode.
NOT_OFFERED_FORMATS: dict[str, str] = {
    "fp8_e5m2": (
        "NNCF 3.4 has no E5M2 weight mode (optimum-cli's f8e5m2 quantizes activations too); "
        "fp8_e4m3 and mxfp8_e4m3 are offered"
    ),
    "codebook": "it needs a codebook of your own; cb4 is NNCF's fixed 16-value codebook",
    "adaptive_codebook": "it needs codebook parameters of your own; cb4 is NNCF's fixed 16-value codebook",
}


class BackupMode(str, enum.Enum):
    """Precision of the layers a 4-bit config leaves out (``ratio`` < 1, first/last layers)."""

    INT8_ASYM = "int8_asym"
    INT8_SYM = "int8_sym"
    NONE = "none"


class GroupSizeFallback(str, enum.Enum):
    """What to do with a layer whose channels are not a multiple of the group size."""

    ERROR = "error"
    IGNORE = "ignore"  # keep that layer in the backup precision
    ADJUST = "adjust"  # use the largest valid power of two for that layer


def _fields(obj: Any) -> dict[str, Any]:
    """The fields that identify ``obj``: all but the later additions still at their default.

    Leaving those out keeps every fingerprint (so every cache key and ledger record) of a
    config made before a field existed unchanged.
    """
    fields = dataclasses.asdict(obj)
    for field in dataclasses.fields(obj):
        if field.name in obj.ADDED_FIELDS and fields[field.name] == field.default:
            del fields[field.name]
    return fields


def _fingerprint(obj: Any) -> str:
    payload = {"type": type(obj).__name__, "fields": _jsonable(_fields(obj))}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Fingerprinted:
    ADDED_FIELDS: tuple[str, ...] = ()  # fields added later: left out of the identity at their default

    def fingerprint(self) -> str:
        """A stable SHA-256 of the type and every field; equal configs, equal fingerprints."""
        return _fingerprint(self)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(_fields(self))  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class ExportConfig(_Fingerprinted):
    """How a Hugging Face model becomes a float OpenVINO IR."""

    weight_format: str = "fp32"  # "fp32" or "fp16": the float reference the compressors start from

    def __post_init__(self) -> None:
        if self.weight_format not in ("fp32", "fp16"):
            raise ConfigError(
                f"weight_format must be 'fp32' or 'fp16', not {self.weight_format!r}; "
                "compressed formats come from CompressionConfig."
            )


AUTO = "auto"
AUTO_GROUP_SIZE_LIMIT = 128  # "auto" picks the largest valid group size up to this


def largest_group_size(
    valid_group_sizes: tuple[int, ...], at_most: int = AUTO_GROUP_SIZE_LIMIT
) -> int | None:
    """The group size ``"auto"`` resolves to: the largest valid one <= ``at_most``, or None if none is."""
    return max((size for size in valid_group_sizes if size <= at_most), default=None)


class SensitivityMetric(str, enum.Enum):
    """How NNCF ranks layers when ``ratio`` < 1 decides which stay in the backup precision."""

    WEIGHT_QUANTIZATION_ERROR = "weight_quantization_error"  # data-free
    HESSIAN_INPUT_ACTIVATION = "hessian_input_activation"
    MEAN_ACTIVATION_VARIANCE = "mean_activation_variance"
    MAX_ACTIVATION_VARIANCE = "max_activation_variance"
    MEAN_ACTIVATION_MAGNITUDE = "mean_activation_magnitude"


@dataclasses.dataclass(frozen=True)
class CompressionConfig(_Fingerprinted):
    """Arguments of ``nncf.compress_weights``.

    ``group_size``: ``"auto"`` (default) means per-channel for INT8 modes and, for 4-bit
    modes, the largest group size up to 128 that divides every layer of the model at hand
    (see :meth:`resolve`); ``None`` (or -1) means per-channel; an integer is used as given.
    ``ratio`` is the share of eligible layers in the 4-bit ``mode``; the rest use ``backup_mode``.
    ``awq``, ``scale_estimation``, ``gptq``, ``lora_correction`` and a data-aware
    ``sensitivity_metric`` need calibration text: ``calibration_samples`` sequences of
    ``calibration_tokens`` tokens. ``lora_correction`` adds low-rank INT8 adapters that cancel
    part of the 4-bit rounding error (NNCF's LoRA correction; INT4 and NF4 only, not with GPTQ).

    ``keep_float`` and ``keep_int8`` name layers as the model's modules (``"lm_head"``,
    ``"model.embed_tokens"``, ``"model.layers.0.mlp.down_proj"``; see
    :func:`nbkit.compression.layers.model_layer_names`): the first stay in float (NNCF's
    ``ignored_scope``), the second are compressed to INT8_ASYM per-channel by a second
    ``nncf.compress_weights`` pass after the main one left them out. Both are stored as
    sorted tuples so equal choices fingerprint alike.
    """

    mode: CompressionMode = CompressionMode.INT4_SYM
    group_size: int | str | None = AUTO
    ratio: float = 1.0
    all_layers: bool = False
    backup_mode: BackupMode = BackupMode.INT8_ASYM
    group_size_fallback: GroupSizeFallback = GroupSizeFallback.ERROR
    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    lora_correction: bool = False
    sensitivity_metric: SensitivityMetric | None = None
    calibration_samples: int = 32
    calibration_tokens: int = 128
    keep_float: tuple[str, ...] = ()
    keep_int8: tuple[str, ...] = ()

    ADDED_FIELDS = ("lora_correction", "keep_float", "keep_int8")

    def __post_init__(self) -> None:
        # Normalize strings to enums so "int4_sym" and CompressionMode.INT4_SYM hash alike.
        object.__setattr__(self, "mode", CompressionMode.parse(self.mode))
        object.__setattr__(self, "backup_mode", _parse_enum(BackupMode, self.backup_mode, "backup_mode"))
        object.__setattr__(
            self,
            "group_size_fallback",
            _parse_enum(GroupSizeFallback, self.group_size_fallback, "group_size_fallback"),
        )
        if self.sensitivity_metric is not None:
            object.__setattr__(
                self,
                "sensitivity_metric",
                _parse_enum(SensitivityMetric, self.sensitivity_metric, "sensitivity_metric"),
            )
        for name in ("all_layers", "awq", "scale_estimation", "gptq", "lora_correction"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        for name in ("keep_float", "keep_int8"):
            object.__setattr__(self, name, _layer_names(name, getattr(self, name)))
        both = sorted(set(self.keep_float) & set(self.keep_int8))
        if both:
            raise ConfigError(
                f"{', '.join(both)} cannot be kept both in float and in INT8; remove it from keep_float or keep_int8."
            )
        self._check_group_size()
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
            raise ConfigError(f"ratio must be a number in [0, 1], not {self.ratio!r}.")
        object.__setattr__(self, "ratio", float(self.ratio))
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(
                f"ratio must be in [0, 1] (the share of layers in {self.mode.value}), not {self.ratio}."
            )
        if self.mode.is_int8:
            if self.group_size is not None:
                raise ConfigError(
                    f"{self.mode.value} is per-channel: it takes no group_size "
                    f"(got {self.group_size}); use group_size=None, or a 4-bit mode for groups."
                )
            if self.ratio != 1.0:
                raise ConfigError(
                    f"ratio applies to 4-bit modes only; {self.mode.value} compresses every layer, "
                    f"so ratio must be 1.0 (got {self.ratio})."
                )
            if self.all_layers:
                raise ConfigError(
                    f"all_layers applies to 4-bit modes only; {self.mode.value} already compresses every "
                    "layer, embeddings and the last layer included, so leave all_layers off."
                )
            if self.is_data_aware or self.sensitivity_metric is not None:
                raise ConfigError(
                    f"AWQ, scale estimation, GPTQ, LoRA correction and data-aware sensitivity metrics apply "
                    f"to 4-bit modes, not {self.mode.value}."
                )
            if self.keep_int8:
                raise ConfigError(
                    f"keep_int8 has no effect with {self.mode.value}: every layer is INT8 already; "
                    "use keep_float to keep layers in float."
                )
        elif not self.mode.takes_data_aware and (self.awq or self.scale_estimation or self.gptq):
            raise ConfigError(
                f"AWQ, scale estimation and GPTQ apply to int4_sym, int4_asym, nf4 and cb4; NNCF 3.4 refuses "
                f"them for {self.mode.value}."
            )
        if self.lora_correction and not self.mode.takes_lora_correction:
            raise ConfigError(
                f"LoRA correction applies to int4_sym, int4_asym and nf4 (NNCF 3.4 computes its adapters "
                f"for those only), not {self.mode.value}."
            )
        if self.lora_correction and self.gptq:
            raise ConfigError("LoRA correction and GPTQ cannot be combined (NNCF refuses both); pick one.")
        if self.awq and self.gptq:
            raise ConfigError(
                "AWQ and GPTQ cannot be combined; pick one (scale estimation combines with either)."
            )
        for name in ("calibration_samples", "calibration_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}.")

    def _check_group_size(self) -> None:
        size = self.group_size
        fixed = self.mode.fixed_group_size
        if fixed is not None and size not in (AUTO, fixed):
            raise ConfigError(
                f"{self.mode.value} always quantizes in groups of {fixed} weights (the format defines it); "
                f"use group_size={fixed} or 'auto', not {size!r}."
            )
        if isinstance(size, str):
            if size.lower() != AUTO:
                raise ConfigError(
                    f"group_size must be a positive integer, None (per-channel) or 'auto', not {size!r}."
                )
            object.__setattr__(self, "group_size", None if self.mode.is_int8 else AUTO)
            return
        if size == -1:
            object.__setattr__(self, "group_size", None)
            return
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ConfigError(
                f"group_size must be a positive integer, or None (-1) for per-channel, or 'auto', not {size!r}."
            )

    @property
    def is_data_aware(self) -> bool:
        """True when compression needs calibration data (activation statistics)."""
        # The metric only ranks layers when some stay in the backup precision (ratio < 1).
        metric_needs_data = self.ratio < 1.0 and self.sensitivity_metric not in (
            None,
            SensitivityMetric.WEIGHT_QUANTIZATION_ERROR,
        )
        return self.awq or self.scale_estimation or self.gptq or self.lora_correction or metric_needs_data

    def resolve(
        self, valid_group_sizes: tuple[int, ...], at_most: int = AUTO_GROUP_SIZE_LIMIT
    ) -> CompressionConfig:
        """This config with ``group_size="auto"`` replaced by the largest valid size <= ``at_most``."""
        if self.group_size != AUTO:
            return self
        if self.mode.fixed_group_size is not None:
            return dataclasses.replace(self, group_size=self.mode.fixed_group_size)
        size = largest_group_size(valid_group_sizes, at_most)
        if size is None:
            raise ConfigError(
                "No power-of-two group size up to 128 divides every layer of this model; use group_size=None "
                "(per-channel) or group_size_fallback='adjust'."
            )
        return dataclasses.replace(self, group_size=size)

    @property
    def label(self) -> str:
        """A short human name, e.g. ``int4_sym-g64-r0.8-awq``."""
        parts = [self.mode.value]
        if not self.mode.is_int8:
            if self.group_size == AUTO:
                parts.append("gauto")
            else:
                parts.append(f"g{self.group_size}" if self.group_size else "per-channel")
            parts.append(f"r{self.ratio:g}")
            if self.backup_mode is not BackupMode.INT8_ASYM:
                parts.append(f"backup-{self.backup_mode.value}")
        if self.all_layers:
            parts.append("all-layers")
        if self.group_size_fallback is not GroupSizeFallback.ERROR:
            parts.append(f"fallback-{self.group_size_fallback.value}")
        for flag, name in (
            (self.awq, "awq"),
            (self.scale_estimation, "se"),
            (self.gptq, "gptq"),
            (self.lora_correction, "lora"),
        ):
            if flag:
                parts.append(name)
        if self.sensitivity_metric not in (None, SensitivityMetric.WEIGHT_QUANTIZATION_ERROR):
            parts.append(self.sensitivity_metric.value.replace("_", "-"))  # type: ignore[union-attr]
        if self.is_data_aware:
            parts.append(f"cal{self.calibration_samples}x{self.calibration_tokens}")
        for prefix, names in (("float", self.keep_float), ("int8", self.keep_int8)):
            if names:
                parts.append(_layers_label(prefix, names))
        return "-".join(parts)


def _layer_names(field: str, value: Any) -> tuple[str, ...]:
    """``value`` (a layer name or a sequence of them) as a sorted tuple without repeats."""
    names = [value] if isinstance(value, str) else value
    if names is None:
        return ()
    try:
        items = list(names)
    except TypeError:
        raise ConfigError(
            f"{field} must be a list of layer names such as ['lm_head'], not {_type_phrase(value)}."
        ) from None
    bad = [item for item in items if not isinstance(item, str) or not item.strip()]
    if bad:
        raise ConfigError(
            f"{field} must hold layer names (non-empty strings) such as 'lm_head', not {bad[0]!r}."
        )
    return tuple(sorted({item.strip() for item in items}))


def _layers_label(prefix: str, names: tuple[str, ...]) -> str:
    """``float-lm_head+L0.q_proj``; more than two layers: ``float-5layers-<hash>`` (still distinct)."""
    short = [
        re.sub(r"^model\.layers\.(\d+)\.(?:[a-z_]+\.)?", r"L\1.", name).removeprefix("model.")
        for name in names
    ]
    if len(short) <= 2:
        return f"{prefix}-{'+'.join(short)}"
    digest = hashlib.sha256(",".join(names).encode()).hexdigest()[:6]
    return f"{prefix}-{len(names)}layers-{digest}"


# The CompressionConfig fields besides mode, group size and ratio (the command line's other flags).
COMPRESSION_OPTIONS = (
    "all_layers",
    "backup_mode",
    "group_size_fallback",
    "awq",
    "scale_estimation",
    "gptq",
    "lora_correction",
    "sensitivity_metric",
    "calibration_samples",
    "calibration_tokens",
    "keep_float",
    "keep_int8",
)
FOUR_BIT_ONLY = (
    "group_size",
    "ratio",
    "all_layers",
    "backup_mode",
    "awq",
    "scale_estimation",
    "gptq",
    "lora_correction",
    "keep_int8",
)


def unavailable_options(
    mode: str | CompressionMode,
    *,
    ratio: float = 1.0,
    all_layers: bool = False,
    awq: bool = False,
    scale_estimation: bool = False,
    gptq: bool = False,
    lora_correction: bool = False,
    sensitivity_metric: str | SensitivityMetric | None = None,
) -> dict[str, str]:
    """The :class:`CompressionConfig` fields that cannot apply given these choices, each with why.

    Panels disable those controls and show the reason as the tooltip; the rules are the ones
    ``CompressionConfig`` enforces (plus fields that would have no effect), so a control is
    never enabled for a value the config would refuse. ``"calibration"`` stands for
    ``calibration_samples`` and ``calibration_tokens``.
    """
    parsed = CompressionMode.parse(mode)
    reasons: dict[str, str] = {}
    if parsed.is_int8:
        why = f"{parsed.value} is per-channel over every layer"
        reasons.update(
            group_size=f"{why}: no groups",
            ratio=f"{why}: the ratio applies to 4-bit modes",
            all_layers=f"{why}, embeddings and the last layer included",
            backup_mode=f"{why}: no layer is left for a backup precision",
            awq=f"AWQ applies to 4-bit modes, not {parsed.value}",
            scale_estimation=f"Scale estimation applies to 4-bit modes, not {parsed.value}",
            gptq=f"GPTQ applies to 4-bit modes, not {parsed.value}",
            lora_correction=f"LoRA correction applies to int4 and nf4 modes, not {parsed.value}",
            sensitivity_metric=f"{why}: no layers to rank",
            keep_int8=f"{why}: every layer is INT8 already",
        )
    else:
        if parsed.fixed_group_size is not None:
            reasons["group_size"] = f"{parsed.value} always uses groups of {parsed.fixed_group_size} weights"
        if not parsed.takes_data_aware:
            refused = f"NNCF 3.4 refuses it for {parsed.value} (int4, nf4 and cb4 modes only)"
            reasons.update(
                awq=f"AWQ: {refused}",
                scale_estimation=f"Scale estimation: {refused}",
                gptq=f"GPTQ: {refused}",
            )
        if not parsed.takes_lora_correction:
            reasons["lora_correction"] = (
                f"LoRA correction: NNCF 3.4 computes adapters for int4 and nf4 only, not {parsed.value}"
            )
        if awq:
            reasons.setdefault("gptq", "AWQ and GPTQ cannot be combined: turn AWQ off to use GPTQ")
        if gptq:
            reasons.setdefault("awq", "GPTQ and AWQ cannot be combined: turn GPTQ off to use AWQ")
            reasons.setdefault(
                "lora_correction", "GPTQ and LoRA correction cannot be combined: turn GPTQ off to use it"
            )
        if lora_correction:
            reasons.setdefault(
                "gptq", "LoRA correction and GPTQ cannot be combined: turn LoRA correction off"
            )
        if ratio >= 1.0:
            reasons["sensitivity_metric"] = (
                "The metric ranks layers for the backup precision only when ratio < 1"
            )
            if all_layers:
                reasons["backup_mode"] = (
                    "With ratio 1 and all layers, no layer is left in the backup precision"
                )
    metric = (
        None
        if sensitivity_metric is None
        else _parse_enum(SensitivityMetric, sensitivity_metric, "sensitivity_metric")
    )
    metric_needs_data = ratio < 1.0 and metric not in (None, SensitivityMetric.WEIGHT_QUANTIZATION_ERROR)
    uses_data = {
        "awq": awq,
        "scale_estimation": scale_estimation,
        "gptq": gptq,
        "lora_correction": lora_correction,
    }
    enabled_data = any(value and name not in reasons for name, value in uses_data.items())
    if parsed.is_int8 or not (enabled_data or metric_needs_data):
        reasons["calibration"] = (
            "Calibration text is used only by AWQ, scale estimation, GPTQ, LoRA correction or a "
            "data-aware sensitivity metric"
        )
    return reasons


@dataclasses.dataclass(frozen=True)
class QuantizationConfig(_Fingerprinted):
    """Full INT8 post-training quantization (weights and activations) with ``nncf.quantize``.

    ``preset``: ``"mixed"`` (symmetric weights, asymmetric activations; NNCF's advice for
    transformers) or ``"performance"`` (all symmetric). ``smooth_quant_alpha``: None keeps
    NNCF's default for transformers; a float in [0, 1] sets it.
    """

    preset: str = "mixed"
    calibration_samples: int = 64
    calibration_tokens: int = 128
    smooth_quant_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.preset not in ("mixed", "performance"):
            raise ConfigError(f"preset must be 'mixed' or 'performance', not {self.preset!r}.")
        for name in ("calibration_samples", "calibration_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}.")
        alpha = self.smooth_quant_alpha
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise ConfigError(f"smooth_quant_alpha must be a number in [0, 1] or None, not {alpha!r}.")
        if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"smooth_quant_alpha must be in [0, 1] or None, not {self.smooth_quant_alpha}.")

    @property
    def label(self) -> str:
        return f"ptq-int8-{self.preset}-cal{self.calibration_samples}x{self.calibration_tokens}"


def _parse_enum(enum_type: type[enum.Enum], value: Any, name: str) -> Any:
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).lower().replace("-", "_"))
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum_type)
        raise ConfigError(f"Unknown {name} {value!r}; choose one of: {choices}.") from None


def _type_phrase(value: Any) -> str:
    """``value`` as messages show it: ``the string '5'``, ``nan``, ``None``, ``['a'] (a list)``."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)  # nan, inf, fractions and True speak for themselves
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{value!r} (a {type(value).__name__})"


def _int_text(value: Any) -> Any:
    """A string of a whole number as that int (the CLI's KEY=VALUE gives text), else ``value``."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return value


def _whole_number(name: str, value: Any, expected: str = "a whole number (int)") -> int:
    """``value`` as an int, or a ConfigError naming the field and the type it must have.

    bool is refused although it is an int subclass (``True`` tokens is a mistake, not 1);
    numpy integers are accepted (numbers.Integral) and stored as int so settings compare equal.
    Ranges are the caller's to check, with a message that says what the bound means.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be {expected}, not {_type_phrase(value)}.")
    return int(value)


def _is_flag(value: Any) -> bool:
    """True for True and False, numpy's included (widgets and notebooks hand those over)."""
    if isinstance(value, bool):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and dtype.kind == "b" and getattr(value, "ndim", None) == 0


def _real_number(name: str, value: Any) -> float:
    """``value`` as a finite float, or a ConfigError naming the field (nan and inf compare oddly)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (float), not {_type_phrase(value)}.")
    return float(value)


SEED_LIMIT = 2**31 - 1  # onnxruntime-genai's random_seed is a signed 32-bit int


@dataclasses.dataclass(frozen=True)
class GenerationSettings(_Fingerprinted):
    """Decoding settings of one chat turn (maps onto ``openvino_genai.GenerationConfig``).

    Every field is checked for its type and range here, so a mistake is one ConfigError
    sentence when the settings are made, not a TypeError from an engine mid-turn.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        # Coerce so equal settings fingerprint alike (temperature=1 and 1.0 are one config).
        for name in ("temperature", "top_p", "repetition_penalty"):
            object.__setattr__(self, name, _real_number(name, getattr(self, name)))
        for name in ("max_new_tokens", "min_new_tokens", "top_k"):
            object.__setattr__(self, name, _whole_number(name, getattr(self, name)))
        if not _is_flag(self.do_sample):  # 1 or "no" is a mistake, not a flag
            raise ConfigError(f"do_sample must be True or False, not {_type_phrase(self.do_sample)}.")
        object.__setattr__(self, "do_sample", bool(self.do_sample))
        if self.seed is not None:
            seed = _whole_number("seed", self.seed, "a whole number (int) or None")
            if not 0 <= seed <= SEED_LIMIT:
                raise ConfigError(f"seed must be between 0 and {SEED_LIMIT} (or None), not {seed}.")
            object.__setattr__(self, "seed", seed)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), "
                f"not {self.min_new_tokens}."
            )
        if self.temperature <= 0:
            raise ConfigError(
                f"temperature must be > 0, not {self.temperature}; use do_sample=False for greedy."
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it), not {self.top_k}.")
        if self.repetition_penalty <= 0:
            raise ConfigError(
                f"repetition_penalty must be > 0 (1.0 disables it), not {self.repetition_penalty}."
            )


PropertyValue = str | int | float | bool

# Activation precisions OpenVINO devices take (CPU: f32, bf16, f16; GPU: f16, f32; NPU: f16, i8);
# the device itself refuses the ones it lacks (nbkit.engines.openvino.runtime.check_runtime).
INFERENCE_PRECISIONS = ("f32", "f16", "bf16", "i8")
_PRECISION_ALIASES = {"fp32": "f32", "fp16": "f16"}  # OpenVINO accepts these spellings too
_BOOLEAN_PROPERTIES = (
    "ENABLE_HYPER_THREADING",
    "ENABLE_CPU_PINNING",
    "ENABLE_CPU_RESERVATION",
    "ENABLE_PROFILING",
    "ENABLE_MMAP",
    "PERF_COUNT",
)
_PRECISION_PROPERTIES = ("KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION")


def _property_value(key: str, value: Any) -> PropertyValue:
    """``value`` checked (and spelled the one way OpenVINO takes) for the properties nbkit knows.

    The checks need no device, so they run when a RuntimeConfig is made, before any export;
    names and values only a device can judge are left to :func:`nbkit.engines.openvino.runtime.check_runtime`.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"The OpenVINO property {key} must be a finite value, not {value!r}.")
    if isinstance(value, str) and not value.strip():
        raise ConfigError(
            f"The OpenVINO property {key} has an empty value; give one or leave the property out."
        )
    if key == "PERFORMANCE_HINT":
        hint = value.strip().upper() if isinstance(value, str) else value
        if hint not in PERFORMANCE_HINTS:
            raise ConfigError(
                f"PERFORMANCE_HINT must be {', '.join(PERFORMANCE_HINTS[:-1])} or {PERFORMANCE_HINTS[-1]}, "
                f"not {_type_phrase(value)}."
            )
        return str(hint)
    if key == "INFERENCE_PRECISION_HINT":
        precision = value.strip().lower() if isinstance(value, str) else value
        precision = _PRECISION_ALIASES.get(precision, precision) if isinstance(precision, str) else precision
        if precision not in INFERENCE_PRECISIONS:
            raise ConfigError(
                f"INFERENCE_PRECISION_HINT must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                f"not {_type_phrase(value)}."
            )
        return str(precision)
    if key == "INFERENCE_NUM_THREADS":
        expected = "a whole number >= 0 (0 lets the device choose)"
        threads = _whole_number(key, _int_text(value), expected)
        if threads < 0:
            raise ConfigError(f"{key} must be {expected}, not {threads}.")
        return threads
    if key == "NUM_STREAMS":
        if isinstance(value, str) and value.strip().upper() in ("AUTO", "NUMA"):
            return value.strip().upper()
        expected = "a whole number >= 0, AUTO or NUMA"
        streams = _whole_number(key, _int_text(value), expected)
        if streams < 0:
            raise ConfigError(f"{key} must be {expected}, not {streams}.")
        return streams
    if key in _BOOLEAN_PROPERTIES:
        flag = {"true": True, "false": False}.get(value.strip().lower()) if isinstance(value, str) else value
        if not isinstance(flag, bool):
            raise ConfigError(f"{key} must be true or false, not {_type_phrase(value)}.")
        return flag
    if key in _PRECISION_PROPERTIES and not isinstance(value, str):
        raise ConfigError(f"{key} must be a precision name such as 'u8' or 'f16', not {_type_phrase(value)}.")
    return value


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(_Fingerprinted):
    """Device and OpenVINO properties a pipeline is compiled with.

    ``properties`` is a sorted tuple of pairs so the config stays hashable; build one with
    :meth:`create` from a plain mapping. Construction checks what needs no device (the
    performance hint, the precision hint, thread and stream counts, boolean switches, value
    types); :func:`nbkit.engines.openvino.runtime.check_runtime` asks the device about the rest.
    """

    device: str = "CPU"
    properties: tuple[tuple[str, PropertyValue], ...] = ()

    @classmethod
    def create(
        cls, device: str = "CPU", properties: Mapping[str, PropertyValue] | None = None
    ) -> RuntimeConfig:
        if properties is not None and not isinstance(properties, Mapping):
            raise ConfigError(
                f"properties must be a mapping such as {{'PERFORMANCE_HINT': 'LATENCY'}}, not {_type_phrase(properties)}."
            )
        return cls(device=device, properties=tuple(sorted((properties or {}).items())))

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device.strip():
            raise ConfigError(f"device must be a non-empty string such as 'CPU', not {self.device!r}.")
        if any(character.isspace() for character in self.device.strip()):
            raise ConfigError(
                f"device must be one name such as 'CPU' or 'AUTO:GPU,CPU', not {self.device!r}."
            )
        object.__setattr__(self, "device", self.device.strip())
        try:
            items = self.properties.items() if isinstance(self.properties, Mapping) else self.properties
            pairs = [tuple(pair) for pair in items]
        except TypeError:
            pairs = []
        if any(len(pair) != 2 for pair in pairs) or (self.properties and not pairs):
            raise ConfigError(
                f"properties must be (name, value) pairs, not {self.properties!r}; build the config with "
                "RuntimeConfig.create(device, {name: value})."
            )
        checked: list[tuple[str, PropertyValue]] = []
        for key, value in pairs:
            if not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key.strip()):
                raise ConfigError(
                    f"OpenVINO property names are words such as 'PERFORMANCE_HINT', not {key!r}."
                )
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                value = _plain_number(value)
            elif not isinstance(value, (bool, str)):
                raise ConfigError(
                    f"The OpenVINO property {key} must be a string, number or boolean, not {_type_phrase(value)}."
                )
            checked.append((key.strip(), _property_value(key.strip(), value)))
        names = [key for key, _ in checked]
        if len(set(names)) != len(names):
            raise ConfigError(f"An OpenVINO property is given twice in {names}; give each one once.")
        object.__setattr__(self, "properties", tuple(sorted(checked)))

    @property
    def property_dict(self) -> dict[str, PropertyValue]:
        return dict(self.properties)


def _plain_number(value: numbers.Real) -> int | float:
    # numpy scalars become Python ones so the config hashes, compares and fingerprints as usual.
    return int(value) if isinstance(value, numbers.Integral) else float(value)


PROMPT_LOOKUP, DRAFT = "prompt_lookup", "draft"
ASSISTED_METHODS = (PROMPT_LOOKUP, DRAFT)


@dataclasses.dataclass(frozen=True)
class AssistedDecoding(_Fingerprinted):
    """Guess several tokens at once and let the model check them in one step.

    * ``prompt_lookup``: the guesses are what followed the last ``max_ngram`` tokens earlier in
      the prompt; cheap, and strong when the answer copies from the input (rewrite, extract,
      summarize a given passage).
    * ``draft``: a smaller model with the same tokenizer (``draft``, an OpenVINO model folder)
      writes the guesses: speculative decoding.

    The model keeps only the guesses it would have produced itself, so greedy answers are the same
    tokens as without assistance, as long as the model computes a token the same way alone and in a
    step of several; only the speed changes, for better or worse (each step checks ``candidates``
    guesses). On CPU, a compressed model's dynamic quantization of activations rounds differently
    for one token and for several, which can flip a near-tie and change the answer from there on:
    run both with ``DYNAMIC_QUANTIZATION_GROUP_SIZE=0`` for the exact same answers (float models are
    exact as they are). Build one with :meth:`prompt_lookup` or :meth:`speculative`.
    """

    method: str = PROMPT_LOOKUP
    candidates: int = 5  # guesses per step (openvino-genai's num_assistant_tokens)
    max_ngram: int = 3  # prompt lookup: the longest tail of the text matched in the prompt
    draft: str = ""  # speculative: the draft model's folder
    draft_device: str = ""  # speculative: the draft's device; "" runs it where the model runs

    @classmethod
    def prompt_lookup(cls, candidates: int = 5, max_ngram: int = 3) -> AssistedDecoding:
        return cls(PROMPT_LOOKUP, candidates=candidates, max_ngram=max_ngram)

    @classmethod
    def speculative(cls, draft: Any, candidates: int = 5, device: str = "") -> AssistedDecoding:
        """Speculative decoding with ``draft``: a model folder, or a built model (its ``path``)."""
        return cls(
            DRAFT, candidates=candidates, draft=str(getattr(draft, "path", draft)), draft_device=device
        )

    def __post_init__(self) -> None:
        if self.method not in ASSISTED_METHODS:
            raise ConfigError(
                f"The assisted decoding method must be {PROMPT_LOOKUP!r} or {DRAFT!r}, not {self.method!r}."
            )
        candidates = _whole_number("candidates", _int_text(self.candidates), "a whole number from 1 to 32")
        if not 1 <= candidates <= 32:
            raise ConfigError(f"candidates must be a whole number from 1 to 32, not {candidates}.")
        object.__setattr__(self, "candidates", candidates)
        max_ngram = _whole_number("max_ngram", _int_text(self.max_ngram), "a whole number from 1 to 16")
        if not 1 <= max_ngram <= 16:
            raise ConfigError(f"max_ngram must be a whole number from 1 to 16, not {max_ngram}.")
        object.__setattr__(self, "max_ngram", max_ngram)
        if not isinstance(self.draft, str) or not isinstance(self.draft_device, str):
            raise ConfigError("draft and draft_device must be strings (a model folder and a device name).")
        if self.method == DRAFT and not self.draft.strip():
            raise ConfigError("Speculative decoding needs a draft model: pass its folder as draft.")
        if self.method == PROMPT_LOOKUP and (self.draft or self.draft_device):
            raise ConfigError("Prompt lookup takes its guesses from the prompt; it has no draft model.")

    @property
    def label(self) -> str:
        """A short name: ``prompt-lookup k5 n3`` or ``draft <folder name> k5``."""
        if self.method == PROMPT_LOOKUP:
            return f"prompt-lookup k{self.candidates} n{self.max_ngram}"
        return f"draft {self.draft.rstrip('/').rsplit('/', 1)[-1]} k{self.candidates}"
