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
            f"{path} is not a readable safetensors file ({exc}); re-download or re-save it."
        ) from exc
    header.pop("__metadata__", None)
    return header


def read_architecture(folder: Path) -> ArchitectureFacts:
    """Facts of the Hugging Face model in ``folder`` (``config.json`` + safetensors headers)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{folder} has no config.json; it is not a Hugging Face model folder.")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{config_path} is not valid JSON ({exc}).") from exc
    config = config.get("text_config", config)  # multimodal configs nest the language model
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
            shape = [int(dim) for dim in info["shape"]]  # type: ignore[union-attr]
            num_parameters += math.prod(shape)
            if len(shape) == 2 and name.endswith(".weight"):
                layers.append(LinearLayer(name=name, out_features=shape[0], in_features=shape[1]))
    tie = bool(config.get("tie_word_embeddings", False))
    return ArchitectureFacts(
        model_type=str(config.get("model_type", "unknown")),
        num_layers=int(config.get("num_hidden_layers", config.get("n_layer", 0))),
        hidden_size=int(config.get("hidden_size", config.get("n_embd", 0))),
        num_parameters=num_parameters,
        context_length=int(config.get("max_position_embeddings", config.get("n_positions", 0))),
        tie_word_embeddings=tie,
        linear_layers=tuple(layers),
    )
