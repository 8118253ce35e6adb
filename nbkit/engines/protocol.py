"""What an engine provides: the one interface sweeps, measurements, panels and the CLI use.

An engine is a peer subpackage of :mod:`nbkit.engines` (``openvino``, ``ort``) exposing one
object that satisfies :class:`Engine`; :mod:`nbkit.engines.registry` names them. Nothing
above the engines asks which engine it holds: a third one (llama.cpp, say) is a new
subpackage and one line in the registry.

The float reference every configuration is measured against is the reference engine's float
export (:data:`nbkit.engines.registry.REFERENCE_ENGINE`), so the figures of both engines
compare: same evaluation text, same token ids, same reference log-probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nbkit.config import AssistedDecoding, ExportConfig, GenerationSettings, RuntimeConfig
from nbkit.engines.base import BaseChatSession
from nbkit.engines.serving import ServingBackend
from nbkit.infra.cache import Cache, CacheEntry
from nbkit.infra.progress import ProgressReporter
from nbkit.sources.architecture import ArchitectureFacts
from nbkit.sources.models import ModelSource


@runtime_checkable
class BuiltModel(Protocol):
    """A model folder an engine built into the cache (an ``OVModel`` or an ``OrtGenAIModel``)."""

    engine: str
    entry: CacheEntry

    @property
    def path(self) -> Path: ...

    @property
    def label(self) -> str: ...

    @property
    def source_name(self) -> str: ...

    @property
    def weights_bytes(self) -> int: ...


class LogitsScorer(Protocol):
    """Next-token log-probabilities of a model, one window of token ids at a time (for quality)."""

    vocab_size: int | None

    def log_probs(self, window_ids: np.ndarray) -> np.ndarray:
        """float32 log-softmax of the next-token logits at every position but the window's last,
        each window starting from an empty KV cache."""
        ...


@dataclass(frozen=True)
class GridOptions:
    """A sweep grid as the user states it; each engine maps it onto what it can build.

    ``modes``, ``group_sizes`` and ``ratios`` are NNCF's words (``int4_sym``, 64, 0.8);
    ``options`` holds the other ``CompressionConfig`` fields; ``accuracy_levels`` is
    ONNX Runtime's MatMulNBits compute type (1 fp32, 2 fp16, 3 bf16, 4 int8), an ORT-only knob.
    """

    modes: tuple[str, ...] = ("int4_sym",)
    group_sizes: tuple[int | str | None, ...] = ("auto",)
    ratios: tuple[float, ...] = (1.0,)
    accuracy_levels: tuple[int, ...] = (4,)
    options: Mapping[str, Any] | None = None


def log_softmax32(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis, computed in float64 (what every scorer returns).

    float32 halves what the reference keeps in memory; both sides are rounded alike, so
    identical models still compare equal bit for bit.
    """
    values = logits.astype(np.float64)
    values -= values.max(axis=-1, keepdims=True)
    values -= np.log(np.exp(values).sum(axis=-1, keepdims=True))
    return values.astype(np.float32)


# The knobs a device selector offers, and what each does (an engine maps them to its own properties).
RUNTIME_KNOBS: dict[str, str] = {
    "hint": "what the runtime optimizes for (latency or throughput)",
    "streams": "parallel inference streams",
    "threads": "CPU threads for inference (0: the runtime decides)",
    "kv_cache_precision": "precision of the attention cache",
    "precision": "precision activations are computed in",
    "compiled_cache": "a folder keeping compiled models, so the next load is faster",
}


# A (label, reason) pair: a grid point an engine cannot build, and why.
Skip = tuple[str, str]


@dataclass(frozen=True)
class SearchTraits:
    """What the pick-for-me search (:mod:`nbkit.measure.pick`) may assume of a config before building it.

    ``family`` groups configs that differ only in how coarsely they quantize; within a family,
    a config whose every ``coarseness`` coordinate is at least another's is assumed to lose at
    least as much quality (ratio 1 is coarser than 0.8, group 64 coarser than 32).
    ``layout`` names the runtime graph: configs of one layout run at one speed (AWQ or GPTQ
    change weight values, not the graph), and within a layout family coarser runs no slower.
    ``estimated_bytes`` is a prediction of the weights' size on disk, which the search
    calibrates against what it measures. ``build_cost`` orders configs of equal size: plain
    rounding first, data-aware algorithms after, the slowest last.
    """

    family: str
    coarseness: tuple[float, ...]
    layout: str
    estimated_bytes: float
    build_cost: int = 0

    def at_least_as_coarse_as(self, other: SearchTraits) -> bool:
        return self.family == other.family and all(
            mine >= theirs for mine, theirs in zip(self.coarseness, other.coarseness, strict=True)
        )


@runtime_checkable
class Engine(Protocol):
    """One inference stack: how it builds, checks, chats, scores, times and tunes a model."""

    name: str  # registry key and the ``engine`` column of sweeps: "openvino", "ort"
    title: str  # what a person calls it: "OpenVINO + NNCF"
    cache_kinds: tuple[str, ...]  # the cache kinds its builds live under
    config_type: type  # the frozen dataclass its builds are keyed by
    modes: tuple[str, ...]  # the grid modes it can build (others are skipped with a reason)

    def missing(self) -> str | None:
        """Why this engine cannot run here (a missing extra, one sentence), or None."""
        ...

    def versions(self) -> dict[str, str | None]:
        """The library versions its builds and measurements depend on (part of ledger keys)."""
        ...

    # -- configs ---------------------------------------------------------------------------

    def grid(self, facts: ArchitectureFacts, grid: GridOptions) -> tuple[list[Any], list[Skip]]:
        """The configs of ``grid`` this engine builds for a model of ``facts``, and the rest with why."""
        ...

    def resolve(self, config: Any, facts: ArchitectureFacts) -> Any:
        """``config`` made concrete for the model (``"auto"`` resolved); ConfigError if it cannot fit."""
        ...

    def search_traits(self, config: Any, facts: ArchitectureFacts) -> SearchTraits:
        """What the guided search may assume of the resolved ``config`` before building it."""
        ...

    def unavailable_options(self, config: Any) -> dict[str, str]:
        """The fields of ``config`` that cannot apply given its other fields, each with why."""
        ...

    def label(self, config: Any) -> str:
        """A short name of ``config`` for tables and charts."""
        ...

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        """The config a ledger record or a cache entry stored with ``config.to_dict()``."""
        ...

    def code(self, config: Any, model_spec: str) -> dict[str, str]:
        """Code that builds ``config`` outside the panels: {title: text}, nbkit's Python first."""
        ...

    # -- building --------------------------------------------------------------------------

    def build(
        self,
        source: ModelSource,
        config: Any,
        *,
        reference: BuiltModel,
        cache: Cache,
        reporter: ProgressReporter,
        worker: Any | None = None,
    ) -> BuiltModel:
        """The model of ``source`` built with ``config`` (from the cache when it is there).

        ``reference`` is the float reference the sweep exported (an engine may start from it);
        ``worker`` a :class:`~nbkit.infra.worker.Worker` reused across builds, or None.
        """
        ...

    def config_from_options(self, options: Mapping[str, Any]) -> Any:
        """The config the command line's options describe (its own flags; ConfigError for another engine's)."""
        ...

    def build_from_source(
        self,
        source: ModelSource,
        config: Any,
        *,
        cache: Cache,
        reporter: ProgressReporter,
        export_config: ExportConfig | None = None,
    ) -> BuiltModel:
        """``source`` built with ``config`` from scratch (through the float reference where the engine needs it)."""
        ...

    def export(
        self,
        source: ModelSource,
        options: Mapping[str, Any],
        *,
        cache: Cache,
        reporter: ProgressReporter,
    ) -> BuiltModel:
        """What ``nbkit export`` writes: the engine's deployable folder for the command line's options."""
        ...

    def describe(self, model: BuiltModel) -> list[str]:
        """Lines the command line prints about a model it built (size, where, how to rebuild)."""
        ...

    def model_from_entry(self, entry: CacheEntry) -> BuiltModel:
        """The built model a cache entry of one of :attr:`cache_kinds` holds."""
        ...

    def is_model_folder(self, path: Path) -> bool:
        """True when ``path`` is a folder this engine loads."""
        ...

    def model_files(self, folder: Path) -> tuple[Path, ...]:
        """The graph and weight files: what identifies the model (a rewrite makes it new)."""
        ...

    def weights_bytes(self, folder: Path) -> int:
        """Bytes of weights on disk (tokenizer files not counted)."""
        ...

    def weight_precisions(self, folder: Path) -> dict[str, float]:
        """Share of weight parameters (MatMul and embedding weights) per precision: int4, int8, float."""
        ...

    # -- running ---------------------------------------------------------------------------

    def open_chat(
        self,
        folder: Path,
        runtime: RuntimeConfig | None = None,
        settings: GenerationSettings | None = None,
        *,
        system_prompt: str | None = None,
        assisted: AssistedDecoding | None = None,
        warm_up: bool = True,
    ) -> BaseChatSession:
        """A chat session on ``folder`` (the same interface for every engine), warmed up unless
        ``warm_up`` is False (measurements that warm up on their own). ``assisted``: prompt-lookup
        or speculative decoding; an engine without them refuses it with a ConfigError."""
        ...

    def check_assisted(self, assisted: AssistedDecoding | None) -> AssistedDecoding | None:
        """``assisted`` when this engine can decode with it (None always can); else a ConfigError
        that says so, raised before anything is built or loaded."""
        ...

    def serving_backend(
        self, folder: Path, runtime: RuntimeConfig | None = None, *, max_batch: int = 8
    ) -> ServingBackend:
        """A backend that generates for many requests at once on ``folder`` (``nbkit serve``);
        it says how it shares the model in its ``scheduling`` sentence."""
        ...

    def logits_scorer(self, folder: Path, device: str = "CPU") -> LogitsScorer:
        """A scorer of ``folder``'s next-token log-probabilities, in exact (float32) arithmetic."""
        ...

    def token_ids(self, folder: Path, text: str) -> np.ndarray:
        """``text`` as token ids (no special tokens) with the tokenizer ``folder`` ships."""
        ...

    def devices(self) -> list[str]:
        """The devices this engine can run on here."""
        ...

    def check_runtime(self, runtime: RuntimeConfig) -> RuntimeConfig:
        """``runtime`` as this engine will use it, or ConfigError/DeviceError, before any work."""
        ...

    def runtime_properties(self, device: str = "CPU") -> dict[str, str]:
        """The runtime property this engine takes for each knob a device selector offers, by knob:
        ``hint``, ``streams``, ``threads``, ``kv_cache_precision``, ``precision``,
        ``compiled_cache`` (see :data:`RUNTIME_KNOBS`); a knob the engine lacks is absent."""
        ...

    def base_runtime(self, device: str = "CPU") -> RuntimeConfig:
        """The engine's untuned runtime for ``device``."""
        ...

    def default_runtime(self, model: BuiltModel | Path, device: str = "CPU") -> RuntimeConfig:
        """What ``tune-device`` found best for this model and device, else the engine's default."""
        ...

    def tuning_candidates(self, device: str = "CPU") -> list[dict[str, Any]]:
        """The runtime properties ``tune-device`` times on ``device``, the default first."""
        ...

    def tune(self, model: BuiltModel, device: str = "CPU", **options: Any) -> Any:
        """Time the candidates on ``model`` in a fresh process and record the fastest (a DeviceTuning).

        ``options``: ``candidates``, ``new_tokens``, ``repeats``, ``ledger``, ``reporter``.
        """
        ...


class ReferenceEngine(Engine, Protocol):
    """The engine whose float export is the reference of every measurement."""

    def export_reference(
        self,
        source: ModelSource,
        export_config: ExportConfig | None,
        *,
        cache: Cache,
        reporter: ProgressReporter,
    ) -> BuiltModel:
        """The float model of ``source`` (fp32 by default), exported once and cached."""
        ...

    def source_quantization(self, reference: Any, *, cache: Cache, reporter: ProgressReporter) -> BuiltModel:
        """The model with its source's own quantization kept (a GGUF's blocks, read as they are),
        built from the float ``reference``'s source; a ModelSourceError says why when it cannot be."""
        ...
