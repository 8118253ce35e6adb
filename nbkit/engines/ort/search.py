"""What the pick-for-me search may assume of an Olive/ModelBuilder config before building it.

ModelBuilder keeps the embedding in float, writes the LM head as its own tensor (quantized
with the other MatMuls, even when the model ties it to the embedding) and stores int4
blocks with one float32 scale (and, asymmetric, one 4-bit zero point) per block. The search
calibrates this estimate on measured sizes; it never reports it.
"""

from __future__ import annotations

import json
from typing import Any

from nbkit.engines.protocol import SearchTraits
from nbkit.sources.architecture import ArchitectureFacts

_FLOAT_BYTES = {"fp32": 4.0, "fp16": 2.0}
_SCALE_BYTES = 4.0
_INT8_BLOCK = 64
PER_TENSOR = 1 << 20


def search_traits(config: Any, facts: ArchitectureFacts) -> SearchTraits:
    """Family (precision, symmetry, compute type), coarseness (block size), layout and size estimate."""
    fields = {name: getattr(value, "value", value) for name, value in config.to_dict().items()}
    block = fields.get("int4_block_size")
    family = {k: v for k, v in fields.items() if k != "int4_block_size"}
    return SearchTraits(
        family=json.dumps(family, sort_keys=True),
        coarseness=(float(block) if isinstance(block, int) else float(PER_TENSOR),),
        layout=json.dumps(family, sort_keys=True),
        estimated_bytes=estimate_weights_bytes(fields, facts),
        build_cost=0,
    )


def estimate_weights_bytes(fields: dict[str, Any], facts: ArchitectureFacts) -> float:
    precision = str(fields.get("precision", "int4"))
    linear_total = sum(layer.in_features * layer.out_features for layer in facts.linear_layers)
    others = max(facts.num_parameters - linear_total, 0)
    if precision in _FLOAT_BYTES:
        return _FLOAT_BYTES[precision] * facts.num_parameters
    total = 4.0 * others
    layers = list(facts.linear_layers)
    embeddings = [layer for layer in layers if "embed" in layer.name.lower() or "wte" in layer.name.lower()]
    matmuls = [layer for layer in layers if layer not in embeddings]
    if facts.tie_word_embeddings:
        matmuls += embeddings  # the LM head, written as its own quantized tensor
    total += 4.0 * sum(layer.in_features * layer.out_features for layer in embeddings)
    if precision == "int8":
        block, weight_bytes, zero = _INT8_BLOCK, 1.0, 1.0
    else:
        block = int(fields.get("int4_block_size") or 32)
        weight_bytes = 0.5
        zero = 0.0 if fields.get("int4_symmetric", True) else 0.5
    for layer in matmuls:
        weights = layer.in_features * layer.out_features
        total += weights * weight_bytes + weights / block * (_SCALE_BYTES + zero)
    return total
