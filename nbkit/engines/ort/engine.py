"""The ONNX Runtime GenAI engine: Olive's ModelBuilder builds, onnxruntime-genai runs.

:data:`ENGINE` is what :mod:`nbkit.engines.registry` lists. Its grid maps NNCF's words onto
what ModelBuilder offers offline (the table below); what it cannot build is skipped with the
reason, as an invalid group size is on the OpenVINO side.

===============  ============================================================================
grid             ONNX Runtime GenAI build
===============  ============================================================================
int4_sym g64     int4, block 64, symmetric, each accuracy level asked for (default 4)
int4_asym g64    int4, block 64, asymmetric (zero points)
int8_sym/asym    int8 (OnnxKQuantQuantization, 8 bits, blocks of 64): one config for both
fp32, fp16       ModelBuilder's float builds
nf4              skipped: ModelBuilder has no NF4
ratio < 1        skipped: ModelBuilder quantizes every MatMul (no mixed precision by ratio)
per-channel      skipped: MatMulNBits takes blocks of 16 to 256
AWQ, SE, GPTQ    skipped: NNCF's data-aware algorithms; ModelBuilder's int4 is round-to-nearest
===============  ============================================================================
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nbkit.config import AUTO, AssistedDecoding, GenerationSettings, RuntimeConfig
from nbkit.engines.base import BaseChatSession
from nbkit.engines.ort.chat import GENAI_CONFIG, OrtChatSession, check_ort_runtime
from nbkit.engines.ort.deps import INSTALL_OLIVE, olive_available
from nbkit.engines.ort.olive import KIND, MODEL_ONNX, OLIVE_LIBRARIES, OrtGenAIModel, export_olive
from nbkit.engines.ort.olive_config import (
    ACCURACY_LEVELS,
    BLOCK_SIZES,
    OliveExportConfig,
    OlivePrecision,
    check_olive_config,
    olive_run_config,
)
from nbkit.engines.ort.scoring import OrtScorer, token_ids
from nbkit.engines.ort.search import search_traits
from nbkit.engines.ort.tuning import default_candidates, tune_ort
from nbkit.engines.protocol import GridOptions, SearchTraits, Skip
from nbkit.engines.serving import ServingBackend
from nbkit.engines.tuning_report import DeviceTuning, tuned_properties
from nbkit.errors import ConfigError
from nbkit.infra.cache import Cache, CacheEntry
from nbkit.infra.ledger import Ledger
from nbkit.infra.progress import ProgressReporter
from nbkit.infra.versions import versions
from nbkit.sources.architecture import ArchitectureFacts
from nbkit.sources.models import ModelSource

_DATA_AWARE = ("awq", "scale_estimation", "gptq")
# onnxruntime-genai 0.14 (the version olive-ai 0.13 needs) has neither, so nbkit offers none here.
NO_ASSISTED_DECODING = (
    "onnxruntime-genai 0.14 has no prompt-lookup or speculative decoding; "
    "use the OpenVINO engine for assisted decoding, or leave it out."
)
_MODE_REASONS = {
    "nf4": "Olive's ModelBuilder has no NF4; its 4-bit format is int4 (MatMulNBits)",
}


def _valid_blocks(facts: ArchitectureFacts) -> list[int]:
    valid = []
    for size in BLOCK_SIZES:
        try:
            check_olive_config(OliveExportConfig(int4_block_size=size), facts)
        except ConfigError:
            continue
        valid.append(size)
    return valid


def olive_grid(facts: ArchitectureFacts, grid: GridOptions) -> tuple[list[OliveExportConfig], list[Skip]]:
    """The ONNX Runtime GenAI builds ``grid`` maps onto (see the module's table), and what it skips."""
    configs: list[OliveExportConfig] = []
    skipped: list[Skip] = []

    def skip(label: str, reason: str) -> None:
        if (label, reason) not in skipped:
            skipped.append((label, reason))

    def add(config: OliveExportConfig) -> None:
        if config not in configs:
            configs.append(config)

    options = dict(grid.options or {})
    data_aware = [name for name in _DATA_AWARE if options.get(name)]
    for level in grid.accuracy_levels:
        if isinstance(level, bool) or level not in ACCURACY_LEVELS:
            raise ConfigError(
                f"accuracy levels must be among {', '.join(map(str, ACCURACY_LEVELS))} "
                f"(1 fp32, 2 fp16, 3 bf16, 4 int8 compute), not {level!r}."
            )
    for mode in grid.modes:
        name = str(mode).strip().lower().replace("-", "_")
        if name in ("fp32", "fp16"):
            add(OliveExportConfig(precision=name))
        elif name in ("int8_sym", "int8_asym"):
            add(OliveExportConfig(precision="int8"))
        elif name in ("int4_sym", "int4_asym"):
            if data_aware:
                skip(
                    f"ort {name}",
                    f"{', '.join(data_aware)} are NNCF algorithms; ModelBuilder's int4 is round-to-nearest",
                )
                continue
            for group_size, ratio, level in itertools.product(
                grid.group_sizes, grid.ratios, grid.accuracy_levels
            ):
                label = f"ort {name} g{group_size} r{ratio:g}"
                if ratio != 1.0:
                    skip(
                        f"ort {name} r{ratio:g}",
                        "ModelBuilder quantizes every MatMul; a ratio below 1 is NNCF's mixed precision",
                    )
                    continue
                size = group_size
                if size == AUTO or (isinstance(size, str) and size.lower() == AUTO):
                    size = max((b for b in _valid_blocks(facts) if b <= 128), default=None)
                    if size is None:
                        skip(label, "no block size of 16 to 128 divides every layer of this model")
                        continue
                if size is None or size == -1:
                    skip(
                        f"ort {name} per-channel",
                        "MatMulNBits takes blocks of 16 to 256, not per-channel scales",
                    )
                    continue
                try:
                    config = OliveExportConfig(
                        precision="int4",
                        int4_block_size=size,
                        int4_accuracy_level=level,
                        int4_symmetric=name == "int4_sym",
                    )
                    check_olive_config(config, facts)
                except ConfigError as exc:
                    skip(label, str(exc))
                    continue
                add(config)
        elif name in _MODE_REASONS:
            skip(f"ort {name}", _MODE_REASONS[name])
        else:
            raise ConfigError(
                f"Unknown mode {mode!r}; choose among int4_sym, int4_asym, int8_sym, int8_asym, nf4, fp16, fp32."
            )
    return configs, skipped


def onnx_weight_precisions(model_onnx: Path) -> dict[str, float]:
    """Share of weight parameters per precision in an ONNX Runtime GenAI model, from its graph alone.

    A ``MatMulNBits`` node holds an ``N`` x ``K`` weight of ``bits`` bits (its packed bytes,
    scales and zero points are inputs); every other initializer of two or more dimensions
    (embeddings, float MatMuls) counts in its own precision.
    """
    import onnx
    from onnx import helper

    graph = onnx.load(str(model_onnx), load_external_data=False).graph
    counts: dict[str, int] = {}
    packed: set[str] = set()
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            name = f"int{attributes.get('bits', 4)}"
            counts[name] = counts.get(name, 0) + int(attributes["N"]) * int(attributes["K"])
            packed.update(node.input[1:])
    for initializer in graph.initializer:
        if initializer.name in packed or len(initializer.dims) < 2:
            continue
        size = 1
        for dimension in initializer.dims:
            size *= int(dimension)
        name = "int8" if initializer.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) else "float"
        counts[name] = counts.get(name, 0) + size
    total = sum(counts.values())
    return {name: round(count / total, 4) for name, count in sorted(counts.items())} if total else {}


def olive_cli_code(config: OliveExportConfig, model: str) -> str:
    """``olive capture-onnx-graph`` with ModelBuilder: the same build from Olive's command line."""
    parts = ["olive", "capture-onnx-graph", "--model_name_or_path", shlex.quote(model), "--use_model_builder"]
    if config.precision is OlivePrecision.INT4:
        parts += ["--precision", "int4", "--int4_block_size", str(config.int4_block_size)]
        parts += ["--int4_accuracy_level", str(config.int4_accuracy_level)]
        if not config.int4_symmetric:
            parts += ["--extra_mb_options", "int4_is_symmetric=false"]
    else:  # int8 and fp16 are an fp32 build plus an Olive pass: `olive run` with the JSON below
        parts += ["--precision", "fp32"]
    parts += ["--output_path", "olive-output"]
    text = " ".join(parts)
    if config.precision in (OlivePrecision.INT8, OlivePrecision.FP16):
        text += (
            f"\n# then the {config.precision.value} pass: olive run --config olive_config.json (the JSON tab)"
        )
    return text


class OrtEngine:
    """Olive + ONNX Runtime GenAI (see :class:`nbkit.engines.protocol.Engine`)."""

    name = "ort"
    title = "Olive + ONNX Runtime GenAI"
    cache_kinds = (KIND,)
    config_type = OliveExportConfig
    modes = ("int4_sym", "int4_asym", "int8_sym", "int8_asym", "fp16", "fp32")

    def missing(self) -> str | None:
        if olive_available():
            return None
        return f"Olive and onnxruntime-genai are not installed: {INSTALL_OLIVE}."

    def versions(self) -> dict[str, str | None]:
        return versions(OLIVE_LIBRARIES)

    # -- configs ---------------------------------------------------------------------------

    def grid(self, facts: ArchitectureFacts, grid: GridOptions) -> tuple[list[Any], list[Skip]]:
        return olive_grid(facts, grid)

    def resolve(self, config: Any, facts: ArchitectureFacts) -> OliveExportConfig:
        check_olive_config(config, facts)
        return config

    def search_traits(self, config: Any, facts: ArchitectureFacts) -> SearchTraits:
        return search_traits(config, facts)

    def unavailable_options(self, config: Any) -> dict[str, str]:
        if config.precision is OlivePrecision.INT4:
            return {}
        why = f"{config.precision.value} has no int4 blocks"
        return {"int4_block_size": why, "int4_accuracy_level": why, "int4_symmetric": why}

    def label(self, config: Any) -> str:
        return str(config.label)

    def config_from_dict(self, data: Mapping[str, Any]) -> OliveExportConfig:
        return OliveExportConfig(**dict(data))

    def code(self, config: Any, model_spec: str) -> dict[str, str]:
        fields = ", ".join(
            f"{name}={value!r}" for name, value in config.to_dict().items() if value is not None
        )
        python = "\n".join(
            [
                "from nbkit.engines.ort.olive import export_olive",
                "from nbkit.engines.ort.olive_config import OliveExportConfig",
                "",
                f"model = export_olive({model_spec!r}, OliveExportConfig({fields}))",
                "print(model.path)  # model.onnx, genai_config.json, tokenizer: load with onnxruntime_genai.Model",
            ]
        )
        cli = [
            "nbkit",
            "export",
            shlex.quote(model_spec),
            "--engine",
            "olive",
            "--precision",
            config.precision.value,
        ]
        if config.precision is OlivePrecision.INT4:
            cli += ["--int4-block-size", str(config.int4_block_size)]
            cli += ["--int4-accuracy-level", str(config.int4_accuracy_level)]
        olive_json = json.dumps(olive_run_config("path/to/hugging-face-folder", config), indent=2)
        return {
            "nbkit (Python)": python,
            "nbkit (command line)": " ".join(cli),
            "Olive (command line)": olive_cli_code(config, "path/to/hugging-face-folder"),
            "Olive (JSON for olive run --config)": olive_json,
        }

    # -- building --------------------------------------------------------------------------

    def build(
        self,
        source: ModelSource,
        config: Any,
        *,
        reference: Any,
        cache: Cache,
        reporter: ProgressReporter,
        worker: Any | None = None,
    ) -> OrtGenAIModel:
        # ModelBuilder starts from the Hugging Face folder, not from the reference export.
        return export_olive(source, config, cache=cache, reporter=reporter)

    def config_from_options(self, options: Mapping[str, Any]) -> OliveExportConfig:
        precision = options.get("precision") or "int4"
        asym = bool(options.get("int4_asym"))
        return OliveExportConfig(
            precision,
            options.get("int4_block_size"),
            options.get("int4_accuracy_level"),
            False if asym else None,
        )

    def build_from_source(
        self,
        source: ModelSource,
        config: Any,
        *,
        cache: Cache,
        reporter: ProgressReporter,
        export_config: Any | None = None,
    ) -> OrtGenAIModel:
        return export_olive(source, config, cache=cache, reporter=reporter)

    def export(
        self, source: ModelSource, options: Mapping[str, Any], *, cache: Cache, reporter: ProgressReporter
    ) -> OrtGenAIModel:
        return export_olive(source, self.config_from_options(options), cache=cache, reporter=reporter)

    def describe(self, model: Any) -> list[str]:
        mib = model.weights_bytes / 1024 / 1024
        return [
            f"{model.source_name} ort {model.label}: {mib:.1f} MiB of weights (ONNX Runtime GenAI)",
            f"Olive config (rebuilds it with `olive run --config FILE`): {model.olive_config_path}",
            str(model.path),
        ]

    def model_from_entry(self, entry: CacheEntry) -> OrtGenAIModel:
        return OrtGenAIModel(entry)

    def is_model_folder(self, path: Path) -> bool:
        return (Path(path) / GENAI_CONFIG).is_file()

    def model_files(self, folder: Path) -> tuple[Path, ...]:
        return tuple(sorted(p for p in folder.glob(f"{MODEL_ONNX}*") if p.is_file()))

    def weights_bytes(self, folder: Path) -> int:
        return sum(p.stat().st_size for p in self.model_files(folder))

    def weight_precisions(self, folder: Path) -> dict[str, float]:
        return onnx_weight_precisions(folder / MODEL_ONNX)

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
        self.check_assisted(assisted)
        runtime = runtime or self.default_runtime(folder)
        return OrtChatSession(folder, runtime, settings, system_prompt=system_prompt, warm_up=warm_up)

    def check_assisted(self, assisted: AssistedDecoding | None) -> AssistedDecoding | None:
        if assisted is not None:
            raise ConfigError(NO_ASSISTED_DECODING)
        return None

    def serving_backend(
        self, folder: Path, runtime: RuntimeConfig | None = None, *, max_batch: int = 8
    ) -> ServingBackend:
        from nbkit.engines.ort.serving import SequentialBackend

        return SequentialBackend(folder, runtime, max_batch=max_batch)

    def logits_scorer(self, folder: Path, device: str = "CPU") -> OrtScorer:
        return OrtScorer(folder, device)

    def token_ids(self, folder: Path, text: str) -> np.ndarray:
        return token_ids(folder, text)

    def devices(self) -> list[str]:
        return ["CPU"]

    def check_runtime(self, runtime: RuntimeConfig) -> RuntimeConfig:
        return check_ort_runtime(runtime)

    def runtime_properties(self, device: str = "CPU") -> dict[str, str]:
        # The CPU execution provider has no hints, streams or compiled-model cache; the decoder's
        # thread count is what tune-device times.
        return {"threads": "intra_op_num_threads"}

    def base_runtime(self, device: str = "CPU") -> RuntimeConfig:
        return check_ort_runtime(RuntimeConfig.create(device))

    def default_runtime(self, model: Any, device: str = "CPU") -> RuntimeConfig:
        entry = getattr(model, "entry", None) or Cache.read_entry(Path(getattr(model, "path", model)))
        if entry is not None:
            best = tuned_properties(Ledger(cache=Cache(entry.path.parent.parent)), entry.key, device)
            if best is not None:
                return check_ort_runtime(RuntimeConfig.create(device.upper(), best))
        return self.base_runtime(device)

    def tuning_candidates(self, device: str = "CPU") -> list[dict[str, Any]]:
        return default_candidates(device)

    def tune(self, model: Any, device: str = "CPU", **options: Any) -> DeviceTuning:
        return tune_ort(model, device, **options)


ENGINE = OrtEngine()
