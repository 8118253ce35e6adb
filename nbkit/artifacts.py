"""What the pipeline steps return: a cached OpenVINO model folder and the facts about it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nbkit.infra.cache import OPENVINO_COMPRESSED_KIND, CacheEntry
from nbkit.sources.architecture import ArchitectureFacts, LinearLayer

MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"


def facts_to_dict(facts: ArchitectureFacts) -> dict[str, Any]:
    return {
        "model_type": facts.model_type,
        "num_layers": facts.num_layers,
        "hidden_size": facts.hidden_size,
        "num_parameters": facts.num_parameters,
        "context_length": facts.context_length,
        "tie_word_embeddings": facts.tie_word_embeddings,
        "linear_layers": [
            [layer.name, layer.out_features, layer.in_features] for layer in facts.linear_layers
        ],
    }


def facts_from_dict(data: dict[str, Any]) -> ArchitectureFacts:
    return ArchitectureFacts(
        model_type=str(data["model_type"]),
        num_layers=int(data["num_layers"]),
        hidden_size=int(data["hidden_size"]),
        num_parameters=int(data["num_parameters"]),
        context_length=int(data["context_length"]),
        tie_word_embeddings=bool(data["tie_word_embeddings"]),
        linear_layers=tuple(LinearLayer(str(n), int(o), int(i)) for n, o, i in data["linear_layers"]),
    )


@dataclass(frozen=True)
class OVModel:
    """An OpenVINO model folder in the cache: IR, tokenizer/detokenizer IRs, chat template.

    The folder is what openvino-genai's ``LLMPipeline`` and OpenVINO Model Server load.
    """

    entry: CacheEntry
    engine: ClassVar[str] = "openvino"

    @property
    def path(self) -> Path:
        return self.entry.path

    @property
    def cache_root(self) -> Path:
        """The cache this model lives in (entries are ``<root>/<kind>/<name>``)."""
        return self.path.parent.parent

    @property
    def model_xml(self) -> Path:
        return self.path / MODEL_XML

    @property
    def source_name(self) -> str:
        return str(self.entry.metadata.get("source_name", ""))

    @property
    def label(self) -> str:
        """``float-fp32`` for an export, the compression label (``int4_sym-g64-r1``) otherwise."""
        return str(self.entry.metadata.get("label", "float"))

    @property
    def is_compressed(self) -> bool:
        return self.entry.kind == OPENVINO_COMPRESSED_KIND

    @property
    def architecture(self) -> ArchitectureFacts:
        return facts_from_dict(self.entry.metadata["architecture"])

    @property
    def weights_bytes(self) -> int:
        """Size of the model's weights file on disk (tokenizer IRs not included)."""
        return (self.path / MODEL_BIN).stat().st_size

    @property
    def weight_precisions(self) -> dict[str, float]:
        """Share of weight parameters per precision, e.g. ``{"int4": 0.79, "int8": 0.21}``."""
        return dict(self.entry.metadata.get("weight_precisions", {}))

    def __repr__(self) -> str:
        return f"OVModel({self.source_name}:{self.label} at {self.path})"
