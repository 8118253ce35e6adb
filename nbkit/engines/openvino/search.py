"""What the pick-for-me search may assume of an NNCF config before building it (:class:`SearchTraits`).

The size estimate counts every weight of the model at the precision the config gives it:
the ``ratio`` share of the eligible layers (by parameter count) in the 4-bit mode with one
scale (and, for asymmetric modes, one zero point) per group, the rest in the backup
precision with one scale per output channel, embeddings and the LM head in the backup
precision unless ``all_layers``, layers kept in float at the float IR's width. NNCF picks
*which* layers stay in the backup precision by sensitivity, so the estimate is a prediction
the search calibrates on measured sizes, never a figure it reports.
"""

from __future__ import annotations

import json
from typing import Any

from nbkit.engines.protocol import SearchTraits
from nbkit.sources.architecture import ArchitectureFacts

FLOAT_BYTES = 4.0  # the float IR nbkit exports by default (fp32)
SCALE_BYTES = 2.0  # NNCF stores scales in fp16
MX_BLOCK = 32  # MX formats share one 8-bit exponent per 32 weights
LORA_RANK = 8  # NNCF's default adapter rank for lora_correction; adapters are stored in INT8

# Bits per weight of each NNCF mode; anything not listed is taken as 4-bit.
_MODE_BITS = {"int8_sym": 8, "int8_asym": 8, "fp8_e4m3": 8, "mxfp8_e4m3": 8}
_PER_CHANNEL_MODES = ("int8_sym", "int8_asym")  # every layer, embeddings included, one scale per row
_BACKUP_BYTES_PER_WEIGHT = {"int8_asym": 1.0, "int8_sym": 1.0, "none": FLOAT_BYTES}

# Options that change weight values but not the graph that runs, in the order they cost time
# to build (the search tries cheaper ones first among configs of equal size).
_DATA_AWARE_COST = {"awq": 1, "scale_estimation": 2, "gptq": 3}
_CALIBRATION_FIELDS = ("calibration_samples", "calibration_tokens", "sensitivity_metric")
_COARSENESS_FIELDS = ("ratio", "group_size")
PER_CHANNEL = 1 << 20  # per-channel is the coarsest grouping there is


def _value(value: Any) -> Any:
    return getattr(value, "value", value)


def search_traits(config: Any, facts: ArchitectureFacts) -> SearchTraits:
    """Family, coarseness, runtime layout, size estimate and build cost of a resolved ``CompressionConfig``."""
    fields = {name: _value(value) for name, value in config.to_dict().items()}
    group = fields.get("group_size")
    family = {k: v for k, v in fields.items() if k not in _COARSENESS_FIELDS}
    layout = {k: v for k, v in family.items() if k not in _DATA_AWARE_COST and k not in _CALIBRATION_FIELDS}
    cost = sum(c for name, c in _DATA_AWARE_COST.items() if fields.get(name))
    if fields.get("lora_correction"):
        cost += 20  # fits adapters layer by layer: by far the slowest build
    if fields.get("sensitivity_metric") not in (None, "weight_quantization_error"):
        cost += 1  # a data-aware ranking runs the calibration text through the model
    return SearchTraits(
        family=json.dumps(family, sort_keys=True),
        coarseness=(
            float(fields.get("ratio", 1.0)),
            float(group) if isinstance(group, int) else float(PER_CHANNEL),
        ),
        layout=json.dumps(layout, sort_keys=True),
        estimated_bytes=estimate_weights_bytes(fields, facts),
        build_cost=cost,
    )


def estimate_weights_bytes(fields: dict[str, Any], facts: ArchitectureFacts) -> float:
    mode = str(fields.get("mode", "int4_sym"))
    bits = _MODE_BITS.get(mode, 4)
    asymmetric = mode.endswith("_asym")
    kept_float = set(fields.get("keep_float") or ())
    kept_int8 = set(fields.get("keep_int8") or ())
    total = FLOAT_BYTES * max(
        facts.num_parameters - sum(layer.in_features * layer.out_features for layer in facts.linear_layers), 0
    )

    def per_channel_bytes(layer: Any, weight_bytes: float, zero_point: float) -> float:
        return layer.out_features * (layer.in_features * weight_bytes + SCALE_BYTES + zero_point)

    eligible: list[Any] = []
    for layer in facts.linear_layers:
        module = layer.name.removesuffix(".weight")
        if module in kept_float:
            total += FLOAT_BYTES * layer.in_features * layer.out_features
        elif module in kept_int8:
            total += per_channel_bytes(layer, 1.0, 1.0)
        elif mode in _PER_CHANNEL_MODES:
            total += per_channel_bytes(layer, 1.0, 1.0 if asymmetric else 0.0)
        elif layer.is_embedding_or_head and not fields.get("all_layers"):
            total += _backup_bytes(layer, str(fields.get("backup_mode", "int8_asym")))
        else:
            eligible.append(layer)
    if not eligible:
        return total
    ratio = float(fields.get("ratio", 1.0))
    backup = str(fields.get("backup_mode", "int8_asym"))
    group = fields.get("group_size")
    for layer in eligible:
        weights = layer.in_features * layer.out_features
        group_len = group if isinstance(group, int) and group > 0 else layer.in_features
        if mode.startswith("mx"):
            low = weights * (bits / 8 + 1 / MX_BLOCK)
        else:
            low = weights * (bits / 8) + (weights / group_len) * (SCALE_BYTES + (0.5 if asymmetric else 0.0))
        total += ratio * low + (1 - ratio) * _backup_bytes(layer, backup)
        if fields.get("lora_correction"):
            total += (layer.in_features + layer.out_features) * LORA_RANK
    return total


def _backup_bytes(layer: Any, backup: str) -> float:
    weights = layer.in_features * layer.out_features
    per_weight = _BACKUP_BYTES_PER_WEIGHT.get(backup, 1.0)
    if per_weight >= FLOAT_BYTES:
        return weights * per_weight
    zero_point = 1.0 if backup == "int8_asym" else 0.0
    return weights * per_weight + layer.out_features * (SCALE_BYTES + zero_point)
