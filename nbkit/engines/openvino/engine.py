"""The OpenVINO engine: optimum-intel export, NNCF weight compression, openvino-genai runtime.

:data:`ENGINE` is what :mod:`nbkit.engines.registry` lists; everything above the engines
reaches OpenVINO through it (see :class:`nbkit.engines.protocol.Engine`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nbkit.artifacts import MODEL_BIN, MODEL_XML, OVModel
from nbkit.compression.layers import check_layer_names
from nbkit.compression.nncf_compress import weight_precisions
from nbkit.compression.snippets import cli_code, nncf_code, python_code
from nbkit.compression.weights import compress, resolve_config
from nbkit.config import (
    COMPRESSION_OPTIONS,
    FOUR_BIT_ONLY,
    AssistedDecoding,
    CompressionConfig,
    CompressionMode,
    ExportConfig,
    GenerationSettings,
    RuntimeConfig,
    unavailable_options,
)
from nbkit.engines.base import BaseChatSession
from nbkit.engines.openvino.assisted import check_assisted
from nbkit.engines.openvino.chat import ChatSession
from nbkit.engines.openvino.devices import available_device_names
from nbkit.engines.openvino.export import export_openvino
from nbkit.engines.openvino.gguf_native import build_gguf_native
from nbkit.engines.openvino.runtime import base_runtime, check_runtime, default_runtime
from nbkit.engines.openvino.scoring import OpenVINOScorer, token_ids
from nbkit.engines.openvino.search import search_traits
from nbkit.engines.openvino.tuning import default_candidates, tune_device
from nbkit.engines.protocol import GridOptions, SearchTraits, Skip
from nbkit.engines.serving import ServingBackend
from nbkit.engines.tuning_report import DeviceTuning
from nbkit.errors import ConfigError
from nbkit.infra.cache import (
    GGUF_NATIVE_KIND,
    OPENVINO_COMPRESSED_KIND,
    OPENVINO_FLOAT_KIND,
    OPENVINO_QUANTIZED_KIND,
    Cache,
    CacheEntry,
)
from nbkit.infra.progress import ProgressReporter
from nbkit.infra.versions import COMPRESSION_LIBRARIES, versions
from nbkit.sources.architecture import ArchitectureFacts
from nbkit.sources.models import ModelSource

_FLOAT_MODES = {
    "fp32": "the OpenVINO fp32 export is the float reference itself",
    "fp16": "OpenVINO float models are exports (`nbkit export --weight-format fp16`), not compressions",
}
# The command line's flags of the other engine, and the CompressionConfig fields its own flags fill.
_ORT_FLAGS = ("precision", "int4_block_size", "int4_accuracy_level", "int4_asym")
_NNCF_FIELDS = ("group_size", "ratio", *COMPRESSION_OPTIONS)
# The CompressionConfig fields a per-channel INT8 config takes from the grid's options.
_NOT_INT8 = (*FOUR_BIT_ONLY, "sensitivity_metric", "calibration_samples", "calibration_tokens")


def nncf_grid(
    facts: ArchitectureFacts,
    *,
    modes: Any = ("int4_sym",),
    group_sizes: Any = ("auto",),
    ratios: Any = (1.0,),
    **options: Any,
) -> tuple[list[CompressionConfig], list[Skip]]:
    """Valid NNCF configs of the cartesian product, and the (label, reason) of those left out.

    INT8 modes ignore group sizes, ratios and the 4-bit-only ``options`` (they are
    per-channel, every layer), so they appear once; a group size that does not fit the model
    is left out with the reason, never run. A layer in ``keep_float``/``keep_int8`` the
    model lacks raises :class:`ConfigError` at once.
    """
    # A layer name the model lacks is a typo in every config: one error now, not one skip per config.
    kept = {name: options[name] for name in ("keep_float", "keep_int8") if options.get(name)}
    if kept:
        check_layer_names(CompressionConfig(**kept), facts)
    configs: list[CompressionConfig] = []
    skipped: list[Skip] = []
    seen: set[CompressionConfig] = set()
    int8_options = {name: value for name, value in options.items() if name not in _NOT_INT8}
    for mode, group_size, ratio in itertools.product(modes, group_sizes, ratios):
        if isinstance(mode, str) and mode.strip().lower() in _FLOAT_MODES:
            reason = _FLOAT_MODES[mode.strip().lower()]
            if (f"openvino {mode}", reason) not in skipped:
                skipped.append((f"openvino {mode}", reason))
            continue
        parsed = CompressionMode.parse(mode)
        try:
            if parsed.is_int8:
                config = CompressionConfig(mode=parsed, group_size=None, **int8_options)
            else:
                config = CompressionConfig(mode=parsed, group_size=group_size, ratio=ratio, **options)
            config = resolve_config(config, facts)
        except ConfigError as exc:
            skipped.append((f"openvino {parsed.value} g{group_size} r{ratio:g}", str(exc)))
            continue
        if config not in seen:
            seen.add(config)
            configs.append(config)
    return configs, skipped


class OpenVINOEngine:
    """OpenVINO IR + NNCF + openvino-genai (see :class:`nbkit.engines.protocol.Engine`)."""

    name = "openvino"
    title = "OpenVINO + NNCF"
    cache_kinds = (OPENVINO_FLOAT_KIND, OPENVINO_COMPRESSED_KIND, OPENVINO_QUANTIZED_KIND, GGUF_NATIVE_KIND)
    config_type = CompressionConfig
    modes = tuple(mode.value for mode in CompressionMode)

    def missing(self) -> str | None:
        return None  # a core dependency

    def versions(self) -> dict[str, str | None]:
        return versions(("openvino", "openvino-genai", *COMPRESSION_LIBRARIES))

    # -- configs ---------------------------------------------------------------------------

    def grid(self, facts: ArchitectureFacts, grid: GridOptions) -> tuple[list[Any], list[Skip]]:
        return nncf_grid(
            facts,
            modes=grid.modes,
            group_sizes=grid.group_sizes,
            ratios=grid.ratios,
            **dict(grid.options or {}),
        )

    def resolve(self, config: Any, facts: ArchitectureFacts) -> CompressionConfig:
        return resolve_config(config, facts)

    def search_traits(self, config: Any, facts: ArchitectureFacts) -> SearchTraits:
        return search_traits(config, facts)

    def unavailable_options(self, config: Any) -> dict[str, str]:
        return unavailable_options(
            config.mode,
            ratio=config.ratio,
            all_layers=config.all_layers,
            awq=config.awq,
            scale_estimation=config.scale_estimation,
            gptq=config.gptq,
            lora_correction=config.lora_correction,
            sensitivity_metric=config.sensitivity_metric,
        )

    def label(self, config: Any) -> str:
        return str(config.label)

    def config_from_dict(self, data: Mapping[str, Any]) -> CompressionConfig:
        return CompressionConfig(**dict(data))

    def code(self, config: Any, model_spec: str) -> dict[str, str]:
        return {
            "nbkit (Python)": python_code(config, model_spec),
            "nbkit (command line)": cli_code(config, model_spec),
            "NNCF": nncf_code(config),
        }

    # -- building --------------------------------------------------------------------------

    def export_reference(
        self,
        source: ModelSource,
        export_config: ExportConfig | None,
        *,
        cache: Cache,
        reporter: ProgressReporter,
    ) -> OVModel:
        return export_openvino(source, export_config, cache=cache, reporter=reporter)

    def build(
        self,
        source: ModelSource,
        config: Any,
        *,
        reference: Any,
        cache: Cache,
        reporter: ProgressReporter,
        worker: Any | None = None,
    ) -> OVModel:
        # NNCF compresses the float IR the sweep exported (the reference).
        return compress(reference, config, cache=cache, reporter=reporter, worker=worker)

    def config_from_options(self, options: Mapping[str, Any]) -> CompressionConfig:
        foreign = [f"--{n.replace('_', '-')}" for n in _ORT_FLAGS if options.get(n) not in (None, False)]
        if foreign:
            raise ConfigError(
                f"{', '.join(foreign)} only work with --engine ort; for OpenVINO use --weight-format "
                "(export) or --mode/--group-size (compress, chat)."
            )
        fields = {name: options[name] for name in _NNCF_FIELDS if options.get(name) is not None}
        return CompressionConfig(mode=CompressionMode.parse(options.get("mode") or "int4_sym"), **fields)

    def source_quantization(self, reference: Any, *, cache: Cache, reporter: ProgressReporter) -> OVModel:
        return build_gguf_native(reference, cache=cache, reporter=reporter)

    def build_from_source(
        self,
        source: ModelSource,
        config: Any,
        *,
        cache: Cache,
        reporter: ProgressReporter,
        export_config: ExportConfig | None = None,
    ) -> OVModel:
        float_model = export_openvino(source, export_config, cache=cache, reporter=reporter.step(0.0, 0.6))
        return compress(float_model, config, cache=cache, reporter=reporter.step(0.6, 1.0))

    def export(
        self, source: ModelSource, options: Mapping[str, Any], *, cache: Cache, reporter: ProgressReporter
    ) -> OVModel:
        self.config_from_options(options)  # another engine's flags fail before any work
        export_config = ExportConfig(weight_format=options.get("weight_format") or "fp32")
        return export_openvino(source, export_config, cache=cache, reporter=reporter)

    def describe(self, model: Any) -> list[str]:
        mib = model.weights_bytes / 1024 / 1024
        return [f"{model.source_name} {model.label}: {mib:.1f} MiB of weights (OpenVINO IR)", str(model.path)]

    def model_from_entry(self, entry: CacheEntry) -> OVModel:
        return OVModel(entry)

    def is_model_folder(self, path: Path) -> bool:
        return (Path(path) / MODEL_XML).is_file()

    def model_files(self, folder: Path) -> tuple[Path, ...]:
        return (folder / MODEL_XML, folder / MODEL_BIN)

    def weights_bytes(self, folder: Path) -> int:
        return (folder / MODEL_BIN).stat().st_size

    def weight_precisions(self, folder: Path) -> dict[str, float]:
        entry = Cache.read_entry(folder)
        recorded = entry.metadata.get("weight_precisions") if entry is not None else None
        if recorded:  # compression records them
            return {str(k): float(v) for k, v in recorded.items()}
        import openvino as ov

        return weight_precisions(ov.Core().read_model(str(folder / MODEL_XML)))

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
        return ChatSession(
            folder, runtime, settings, system_prompt=system_prompt, assisted=assisted, warm_up=warm_up
        )

    def check_assisted(self, assisted: AssistedDecoding | None) -> AssistedDecoding | None:
        return check_assisted(assisted)

    def serving_backend(
        self, folder: Path, runtime: RuntimeConfig | None = None, *, max_batch: int = 8
    ) -> ServingBackend:
        from nbkit.engines.openvino.serving import ContinuousBatchingBackend

        return ContinuousBatchingBackend(folder, runtime, max_batch=max_batch)

    def logits_scorer(self, folder: Path, device: str = "CPU") -> OpenVINOScorer:
        return OpenVINOScorer(folder, device)

    def token_ids(self, folder: Path, text: str) -> np.ndarray:
        return token_ids(folder, text)

    def devices(self) -> list[str]:
        return available_device_names()

    def check_runtime(self, runtime: RuntimeConfig) -> RuntimeConfig:
        check_runtime(runtime)
        return runtime

    def runtime_properties(self, device: str = "CPU") -> dict[str, str]:
        # Which of these a given device accepts is the device's to say (its writable properties).
        return {
            "hint": "PERFORMANCE_HINT",
            "streams": "NUM_STREAMS",
            "threads": "INFERENCE_NUM_THREADS",
            "kv_cache_precision": "KV_CACHE_PRECISION",
            "precision": "INFERENCE_PRECISION_HINT",
            "compiled_cache": "CACHE_DIR",
        }

    def base_runtime(self, device: str = "CPU") -> RuntimeConfig:
        return base_runtime(device)

    def default_runtime(self, model: Any, device: str = "CPU") -> RuntimeConfig:
        if not isinstance(model, OVModel):  # a folder: its cache entry, if it is one, knows its tuning
            entry = Cache.read_entry(Path(getattr(model, "path", model)))
            model = OVModel(entry) if entry is not None else model
        return default_runtime(model, device)

    def tuning_candidates(self, device: str = "CPU") -> list[dict[str, Any]]:
        return [dict(candidate) for candidate in default_candidates(device)]

    def tune(self, model: Any, device: str = "CPU", **options: Any) -> DeviceTuning:
        return tune_device(model, device, **options)


ENGINE = OpenVINOEngine()
