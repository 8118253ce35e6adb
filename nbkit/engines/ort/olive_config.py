"""The Olive side's configuration: what to build, checked against the model, as Olive's JSON.

:class:`OliveExportConfig` is the frozen config that enters the cache key;
:func:`check_olive_config` refuses a block size the model's layers cannot take before any
work; :func:`olive_run_config` is the workflow ``olive run --config`` accepts. Nothing here
imports Olive: the engine that runs it is :mod:`nbkit.engines.ort.olive`.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from nbkit.config import _Fingerprinted
from nbkit.errors import ConfigError
from nbkit.sources.architecture import ArchitectureFacts

OLIVE_OUTPUT_DIR = "olive-output"  # where `olive run --config olive_config.json` writes, relative to the cwd
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what ModelBuilder's MatMulNBits accepts
ACCURACY_LEVELS = {1: "fp32", 2: "fp16", 3: "bf16", 4: "int8"}  # compute type of MatMulNBits' input A
DEFAULT_BLOCK_SIZE = 32  # ModelBuilder's default
DEFAULT_ACCURACY_LEVEL = 4  # ModelBuilder's default on CPU; 1 is ~2x slower here
# int8 is 8-bit MatMulNBits from OnnxKQuantQuantization. Measured here (onnxruntime 1.31.1, AVX2):
# without accuracy level 4 it decoded at ~2 tokens/s (vs ~60), and its default block size 32 with
# accuracy level 4 produced gibberish on SmolLM2-135M, while 16, 64 and 128 answered correctly.
INT8_BLOCK_SIZE = 64
INT8_ACCURACY_LEVEL = 4


class OlivePrecision(str, enum.Enum):
    INT4 = "int4"
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"

    @classmethod
    def parse(cls, value: str | OlivePrecision) -> OlivePrecision:
        if isinstance(value, OlivePrecision):
            return value
        choices = ", ".join(p.value for p in cls)
        if not isinstance(value, str):
            raise ConfigError(f"precision must be a string, one of {choices}; not {value!r}.")
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise ConfigError(f"Unknown Olive precision {value!r}; choose one of: {choices}.") from None


@dataclasses.dataclass(frozen=True)
class OliveExportConfig(_Fingerprinted):
    """How Olive builds the ONNX Runtime GenAI model.

    ``int4_block_size`` (16, 32, 64, 128 or 256; default 32), ``int4_accuracy_level``
    (1 fp32, 2 fp16, 3 bf16, 4 int8 compute; default 4) and ``int4_symmetric`` (default True:
    no zero points, as NNCF's ``int4_sym``) apply to ``precision="int4"`` only; leave them
    ``None`` for the other precisions. The block size must divide the input
    channels of every quantized layer (checked against the model by :func:`check_olive_config`).
    """

    precision: OlivePrecision = OlivePrecision.INT4
    int4_block_size: int | None = None
    int4_accuracy_level: int | None = None
    int4_symmetric: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", OlivePrecision.parse(self.precision))
        int4 = self.precision is OlivePrecision.INT4
        if self.int4_symmetric is None:
            object.__setattr__(self, "int4_symmetric", True if int4 else None)
        elif not isinstance(self.int4_symmetric, bool):
            raise ConfigError(f"int4_symmetric must be True or False, not {self.int4_symmetric!r}.")
        elif not int4:
            raise ConfigError(
                f"int4_symmetric applies to precision 'int4' only, not {self.precision.value!r}; leave it unset."
            )
        for name, allowed, default in (
            ("int4_block_size", BLOCK_SIZES, DEFAULT_BLOCK_SIZE),
            ("int4_accuracy_level", tuple(ACCURACY_LEVELS), DEFAULT_ACCURACY_LEVEL),
        ):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, default if int4 else None)
                continue
            if not int4:
                raise ConfigError(
                    f"{name} applies to precision 'int4' only, not {self.precision.value!r}; leave it unset."
                )
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}"
                    + (" (1 fp32, 2 fp16, 3 bf16, 4 int8 compute)." if name == "int4_accuracy_level" else ".")
                )

    @property
    def label(self) -> str:
        if self.precision is OlivePrecision.INT4:
            scheme = "" if self.int4_symmetric else "asym-"
            return f"int4-{scheme}b{self.int4_block_size}-acc{self.int4_accuracy_level}"
        if self.precision is OlivePrecision.INT8:
            return f"int8-b{INT8_BLOCK_SIZE}"
        return self.precision.value


def check_olive_config(config: OliveExportConfig, facts: ArchitectureFacts) -> None:
    """Raise :class:`ConfigError` if the int4 block size does not fit the model's layers.

    ModelBuilder quantizes every MatMul (the LM head too), so every 2-D weight but the
    embedding must have input channels divisible by the block size.
    """
    if config.precision is not OlivePrecision.INT4:
        return
    size = int(config.int4_block_size or DEFAULT_BLOCK_SIZE)
    layers = [
        layer
        for layer in facts.linear_layers
        if "embed" not in layer.name.lower() and "wte" not in layer.name.lower()
    ]
    bad = [layer for layer in layers if layer.in_features % size]
    if bad:
        valid = [b for b in BLOCK_SIZES if all(layer.in_features % b == 0 for layer in layers)]
        sizes = sorted({layer.in_features for layer in bad})
        valid_text = ", ".join(map(str, valid)) if valid else "none; use precision 'int8' or 'fp32'"
        raise ConfigError(
            f"int4_block_size {size} does not divide the input channels {sizes} of {len(bad)} layer(s) "
            f"(e.g. {bad[0].name}); valid block sizes for this model: {valid_text}."
        )


def olive_passes(config: OliveExportConfig) -> dict[str, dict[str, Any]]:
    """The ``passes`` section of the Olive workflow for ``config`` (run in this order)."""
    fp32_builder = {"type": "ModelBuilder", "precision": "fp32"}
    if config.precision is OlivePrecision.INT4:
        return {
            "model_builder": {
                "type": "ModelBuilder",
                "precision": "int4",
                "int4_block_size": config.int4_block_size,
                "int4_accuracy_level": config.int4_accuracy_level,
                "int4_is_symmetric": config.int4_symmetric,
            }
        }
    if config.precision is OlivePrecision.INT8:
        return {
            "model_builder": fp32_builder,
            "int8_weights": {
                "type": "OnnxKQuantQuantization",
                "bits": 8,
                "block_size": INT8_BLOCK_SIZE,
                "accuracy_level": INT8_ACCURACY_LEVEL,
                "save_as_external_data": True,
            },
        }
    if config.precision is OlivePrecision.FP16:
        return {
            "model_builder": fp32_builder,
            "to_fp16": {"type": "OnnxFloatToFloat16", "save_as_external_data": True},
        }
    return {"model_builder": fp32_builder}


def olive_run_config(
    hf_folder: Path | str, config: OliveExportConfig, *, output_dir: str = OLIVE_OUTPUT_DIR
) -> dict[str, Any]:
    """A complete Olive 0.13 workflow config (what ``olive run --config`` accepts) for ``config``.

    The shape is the one Olive itself writes with ``olive capture-onnx-graph --use_model_builder
    --save_config_file``: an ``HfModel`` input, a local CPU system, the passes, no evaluator.
    """
    return {
        "input_model": {"type": "HfModel", "model_path": str(hf_folder)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "passes": olive_passes(config),
        "host": "local_system",
        "target": "local_system",
        "no_artifacts": True,
        "log_severity_level": 1,
        "output_dir": output_dir,
    }
