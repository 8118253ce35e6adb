"""Architecture facts of a Hugging Face model folder, read without loading any weights.

The tuner needs the input-channel sizes of the linear layers before anything runs: a
4-bit group size is valid only if it divides the input channels of every layer it applies
to (SmolLM2-135M has 576 and 1536, so 32 and 64 work and 128 does not). The facts come
from ``config.json`` and the headers of the ``*.safetensors`` files.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

from nbkit.errors import ModelSourceError

GROUP_SIZE_CANDIDATES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class LinearLayer:
    """A 2-D weight: ``name`` (Hugging Face tensor name), ``out_features`` x ``in_features``."""

    name: str
    out_features: int
    in_features: int

    @property
    def is_embedding_or_head(self) -> bool:
        # NNCF keeps these in the backup precision unless all_layers=True.
        lowered = self.name.lower()
        return any(part in lowered for part in ("embed", "lm_head", "wte", "wpe", "output.weight"))


@dataclass(frozen=True)
class ArchitectureFacts:
    model_type: str
    num_layers: int
    hidden_size: int
    num_parameters: int
    context_length: int
    tie_word_embeddings: bool
    linear_layers: tuple[LinearLayer, ...]

    def input_channel_sizes(self, *, all_layers: bool = False) -> tuple[int, ...]:
        """Distinct input-channel sizes of the layers a 4-bit config quantizes in groups."""
        return tuple(sorted({layer.in_features for layer in self._grouped_layers(all_layers)}))

    def _grouped_layers(self, all_layers: bool) -> list[LinearLayer]:
        return [layer for layer in self.linear_layers if all_layers or not layer.is_embedding_or_head]

    def valid_group_sizes(
        self, *, all_layers: bool = False, candidates: tuple[int, ...] = GROUP_SIZE_CANDIDATES
    ) -> tuple[int, ...]:
        """The candidates that divide every input-channel size (so no layer needs a fallback)."""
        sizes = self.input_channel_sizes(all_layers=all_layers)
        if not sizes:
            return ()
        common = reduce(math.gcd, sizes)
        return tuple(size for size in candidates if common % size == 0)

    def layers_not_divisible_by(self, group_size: int, *, all_layers: bool = False) -> list[LinearLayer]:
        return [layer for layer in self._grouped_layers(all_layers) if layer.in_features % group_size]

    def summary(self) -> dict[str, object]:
        return {
            "model_type": self.model_type,
            "parameters": self.num_parameters,
            "layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "context_length": self.context_length,
            "input_channel_sizes": list(self.input_channel_sizes()),
            "valid_group_sizes": list(self.valid_group_sizes()),
        }


def _safetensors_header(path: Path) -> dict[str, dict[str, object]]:
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, struct.error) as exc:
        raise ModelSourceError(
            f"{path} is not a readable safetensors file ({_one_line(exc)}); re-download or re-save it."
        ) from exc
    header.pop("__metadata__", None)
    return header


def _tensor_shape(path: Path, name: str, info: object) -> list[int]:
    """The shape of one header entry, or a ModelSourceError naming the file and the tensor."""
    shape = info.get("shape") if isinstance(info, dict) else None
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise ModelSourceError(
            f"{path} is not a readable safetensors file (tensor {name!r} has no valid shape); "
            "re-download or re-save it."
        )
    return shape


def _one_line(exc: BaseException) -> str:
    # json and OS errors are one line already; the guard keeps the message one sentence anyway.
    return " ".join(str(exc).split()) or type(exc).__name__


def read_config(folder: Path) -> dict[str, Any]:
    """The language-model part of ``folder/config.json`` as a dict (``text_config`` if nested).

    Raises :class:`ModelSourceError` naming the file when it is missing, not JSON, or not an
    object; the fields are checked by whoever reads them (:func:`config_int`, :func:`config_bool`).
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{folder} has no config.json; it is not a Hugging Face model folder.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelSourceError(
            f"{config_path} is not valid JSON ({_one_line(exc)}); re-download the model or re-save it "
            "with save_pretrained."
        ) from exc
    if not isinstance(config, dict):
        raise ModelSourceError(
            f"{config_path} holds a JSON {_json_kind(config)} where a Hugging Face config needs an object "
            '({"model_type": ..., "hidden_size": ...}); re-download the model or re-save it with save_pretrained.'
        )
    nested = config.get("text_config")  # multimodal configs nest the language model
    if nested is None:
        return config
    if not isinstance(nested, dict):
        raise ModelSourceError(
            f"{config_path} has a text_config that is a JSON {_json_kind(nested)}, not an object; "
            "re-download the model or re-save it with save_pretrained."
        )
    merged = dict(nested)
    if merged.get("model_type") is None:  # the outer one names the architecture then
        merged["model_type"] = config.get("model_type")
    return merged


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "list", str: "string", int: "number", float: "number"}.get(
        type(value), "null"
    )


def config_int(config: dict[str, Any], names: tuple[str, ...], config_path: Path, default: int = 0) -> int:
    """The first of ``names`` present in ``config`` as a positive whole number, else ``default``.

    Refuses (with a :class:`ModelSourceError` naming the field and the file) what transformers
    would choke on later: strings, booleans, fractions, zero or negative sizes.
    """
    for name in names:
        value = config.get(name)
        if value is None:
            continue
        # JSON has one number type: 2048.0 is a whole number, true is not a size.
        whole = isinstance(value, int) or (
            isinstance(value, float) and math.isfinite(value) and value == int(value)
        )
        if isinstance(value, bool) or not whole or value <= 0:
            raise ModelSourceError(
                f"{config_path}: {name} must be a positive whole number, not {value!r}; "
                "fix that field or re-download the model."
            )
        return int(value)
    return default


def config_bool(config: dict[str, Any], name: str, config_path: Path, default: bool = False) -> bool:
    """``config[name]`` as a JSON boolean (missing or null: ``default``)."""
    value = config.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelSourceError(
            f"{config_path}: {name} must be true or false, not {value!r}; fix that field or re-download the model."
        )
    return value


def read_architecture(folder: Path) -> ArchitectureFacts:
    """Facts of the Hugging Face model in ``folder`` (``config.json`` + safetensors headers)."""
    config = read_config(folder)
    config_path = folder / "config.json"
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type.strip():
        what = "has no model_type" if model_type is None else f"has model_type {model_type!r}, not a name"
        raise ModelSourceError(
            f"{config_path} {what}, so transformers cannot tell the architecture (such as 'llama'); "
            "re-download the model or re-save it with save_pretrained."
        )
    # Sizes are read (and checked) before the weights so a broken config is named first.
    num_layers = config_int(config, ("num_hidden_layers", "n_layer", "num_layers", "n_layers"), config_path)
    hidden_size = config_int(config, ("hidden_size", "n_embd", "d_model"), config_path)
    context_length = config_int(
        config, ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"), config_path
    )
    tie = config_bool(config, "tie_word_embeddings", config_path)
    weight_files = sorted(folder.glob("*.safetensors"))
    if not weight_files:
        raise ModelSourceError(
            f"{folder} has no *.safetensors weights; nbkit reads model facts from safetensors files "
            "(re-save the model with save_pretrained(safe_serialization=True))."
        )
    num_parameters = 0
    layers: list[LinearLayer] = []
    for weight_file in weight_files:
        for name, info in _safetensors_header(weight_file).items():
            shape = _tensor_shape(weight_file, name, info)
            num_parameters += math.prod(shape)
            if len(shape) == 2 and name.endswith(".weight"):
                layers.append(LinearLayer(name=name, out_features=shape[0], in_features=shape[1]))
    return ArchitectureFacts(
        model_type=model_type,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_parameters=num_parameters,
        context_length=context_length,
        tie_word_embeddings=tie,
        linear_layers=tuple(layers),
    )
