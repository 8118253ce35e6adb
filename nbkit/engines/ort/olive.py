"""Microsoft Olive → ONNX Runtime GenAI: the second engine, side by side with OpenVINO.

:func:`export_olive` turns any model source into an ONNX Runtime GenAI folder (``model.onnx``,
``model.onnx.data``, ``genai_config.json``, tokenizer files, chat template) by running an
Olive workflow whose first pass is Olive's ``ModelBuilder`` (onnxruntime-genai's model
builder; data-free, works offline):

========  ===================================================================================
int4      ``ModelBuilder`` precision int4: RTN ``MatMulNBits`` 4-bit blocks of
          ``int4_block_size`` (default 32) with ``int4_accuracy_level`` (default 4: int8 compute)
int8      ``ModelBuilder`` fp32, then ``OnnxKQuantQuantization`` bits 8, blocks of 64 (data-free)
fp16      ``ModelBuilder`` fp32, then ``OnnxFloatToFloat16`` (Olive's ModelBuilder skips fp16
          for the CPU execution provider without an error, so fp16 is built this way)
fp32      ``ModelBuilder`` fp32
========  ===================================================================================

The workflow runs in a child process (:func:`nbkit.infra.worker.run_isolated`, so Cancel ends it
at once) and its result lands in nbkit's content-addressed cache as an ``ort-genai`` entry,
with the same atomic/locked rules as the OpenVINO steps. The Olive JSON config that built it
is saved in the folder as ``olive_config.json``: ``olive run --config olive_config.json``
rebuilds the same files into ``./olive-output`` (nbkit ran it with ``output_dir`` and
``cache_dir`` pointing into its temporary build folder; nothing else differs).

Olive is optional: install it with ``pip install "nbkit[olive]"``. Without it every function
here raises :class:`~nbkit.errors.MissingDependencyError` saying what to install, and the
rest of nbkit is unaffected (nothing here imports Olive or ONNX Runtime at module level).

Why not ``olive auto-opt``/``olive optimize``: without ``--use_model_builder`` auto-opt fails
in the TorchScript export under transformers 5.5, and ``optimize --precision int4`` schedules
GPTQ, which downloads a calibration data set (fails offline). olive-ai 0.13 needs
onnxruntime-genai 0.14.x (0.15 and later removed ``onnxruntime_genai.models.quantized_model``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, ClassVar

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.ort.chat import OrtChatSession
from nbkit.engines.ort.deps import require_olive, require_ort_genai
from nbkit.engines.ort.olive_config import (
    OliveExportConfig,
    check_olive_config,
    olive_passes,
    olive_run_config,
)
from nbkit.engines.ort.olive_runner import OUTPUT_DIR, last_error, run_olive_here
from nbkit.errors import ModelSourceError, OliveExportError, OliveRunError
from nbkit.infra.cache import ORT_GENAI_KIND, Cache, CacheEntry, cache_key
from nbkit.infra.disk import float32_weights_bytes
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import versions
from nbkit.infra.worker import run_isolated
from nbkit.sources.models import ModelSource, resolve_source

log = logging.getLogger(__name__)

KIND = ORT_GENAI_KIND
OLIVE_FORMAT = 1
CONFIG_NAME = "olive_config.json"
GENAI_CONFIG = "genai_config.json"
MODEL_ONNX = "model.onnx"

OLIVE_LIBRARIES = ("olive-ai", "onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "transformers", "torch")


# -- export --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OrtGenAIModel:
    """An ONNX Runtime GenAI folder in nbkit's cache, built by Olive."""

    entry: CacheEntry
    engine: ClassVar[str] = "ort"

    @property
    def path(self) -> Path:
        return self.entry.path

    @property
    def source_name(self) -> str:
        return str(self.entry.metadata.get("source_name", ""))

    @property
    def label(self) -> str:
        return str(self.entry.metadata.get("label", ""))

    @property
    def precision(self) -> str:
        return str(self.entry.metadata.get("config", {}).get("precision", ""))

    @property
    def olive_config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def weights_bytes(self) -> int:
        """Size of ``model.onnx`` and its external data (tokenizer files not included)."""
        return sum(f.stat().st_size for f in self.path.glob("model.onnx*") if f.is_file())

    def __repr__(self) -> str:
        return f"OrtGenAIModel({self.source_name}:{self.label} at {self.path})"


def export_olive(
    source: ModelSource | str,
    config: OliveExportConfig | None = None,
    *,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> OrtGenAIModel:
    """The ONNX Runtime GenAI model of ``source`` built by Olive, from the cache or built now."""
    config = config or OliveExportConfig()
    require_olive()  # before any work: a missing extra should not cost a GGUF conversion first
    source = resolve_source(source)
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    hf_folder = source.hf_folder(cache, reporter.step(0.0, 0.3))
    check_olive_config(config, source.architecture(cache))
    library_versions = versions(OLIVE_LIBRARIES)
    key = cache_key(
        {
            "stage": "olive-ort-genai",
            "format": OLIVE_FORMAT,
            "source": source.identity(),
            # Its name, not its path: a GGUF's converted folder is named by its own key and a hub
            # snapshot by its commit, while a path would tie every entry to where the cache lives.
            "hf_folder": hf_folder.name,
            "config": config.fingerprint(),
            "passes": olive_passes(config),  # so a change of nbkit's pass settings rebuilds
            "versions": library_versions,
        }
    )
    name = f"{source.name}-olive-{config.label}"
    final = cache.entry_path(KIND, key, name)
    user_config = olive_run_config(hf_folder, config)

    def build(folder: Path) -> dict[str, Any]:
        files = run_isolated(
            run_olive_workflow, user_config, folder, str(final), reporter=reporter.step(0.3, 1.0)
        )
        (folder / CONFIG_NAME).write_text(json.dumps(user_config, indent=2) + "\n")
        return {
            "source_name": source.name,
            "source": source.identity(),
            "engine": "ort",
            "label": config.label,
            "config": config.to_dict(),
            "hf_folder": str(hf_folder),
            "olive_config": CONFIG_NAME,
            "files": files,
            "versions": library_versions,
        }

    # Olive's model builder writes the float32 ONNX model next to its output for every
    # precision but int4, inside the build folder.
    entry = cache.get_or_build(
        KIND,
        key,
        name,
        build,
        description={"source": source.identity()},
        needs_bytes=lambda: 2 * float32_weights_bytes(hf_folder),
        inputs=[hf_folder],
    )
    reporter.report(1.0, "ONNX Runtime GenAI model ready")
    return OrtGenAIModel(entry)


def run_olive_workflow(
    user_config: dict[str, Any], out_dir: Path, final_path: str, *, reporter: ProgressReporter
) -> dict[str, int]:
    """Run the Olive workflow ``user_config`` writing the model into ``out_dir`` (child process).

    Olive's cache, temporary files and onnxruntime-genai's scratch files go to a folder inside
    ``out_dir`` that is removed at the end, so a cancelled or failed build leaves nothing behind.
    Returns the files written with their sizes.
    """
    scratch = out_dir / ".olive-scratch"
    try:
        errors = run_olive_here(user_config, scratch, False, reporter=reporter.step(0.0, 0.9))
    except OliveRunError as exc:
        raise OliveExportError(str(exc)) from exc
    output = scratch / OUTPUT_DIR
    if not (output / MODEL_ONNX).is_file() or not (output / GENAI_CONFIG).is_file():
        raise OliveExportError(
            f"Olive finished without writing {MODEL_ONNX}/{GENAI_CONFIG} ({last_error(errors)})."
        )
    reporter.report(0.95, "Collecting the ONNX Runtime GenAI files")
    for item in output.iterdir():
        shutil.move(str(item), str(out_dir / item.name))
    _fix_model_config(out_dir / "model_config.json", str(output), final_path)
    shutil.rmtree(scratch, ignore_errors=True)
    reporter.report(1.0, "Built with Olive")
    return {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}


def _fix_model_config(path: Path, written_to: str, final_path: str) -> None:
    # Olive's model_config.json (an ONNXModelHandler config) names the folder it wrote; point it at
    # the cache entry instead of the temporary build folder.
    if path.is_file():
        path.write_text(path.read_text().replace(written_to, final_path))


# -- chat --------------------------------------------------------------------------------------


def is_ort_genai_folder(path: Path | str) -> bool:
    return (Path(path).expanduser() / GENAI_CONFIG).is_file()


def open_chat(
    model: OrtGenAIModel | ModelSource | Path | str,
    config: OliveExportConfig | None = None,
    runtime: RuntimeConfig | None = None,
    settings: GenerationSettings | None = None,
    *,
    system_prompt: str | None = None,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> Any:
    """An :class:`~nbkit.engines.ort.chat.OrtChatSession` on ``model``.

    ``model`` is an ONNX Runtime GenAI folder (used as it is), or any model source, which is
    exported with Olive (``config``, default int4) first. Same arguments and the same session
    interface as the OpenVINO :class:`~nbkit.engines.openvino.chat.ChatSession`.
    """
    require_ort_genai()
    if isinstance(model, OrtGenAIModel):
        path = model.path
    elif not isinstance(model, ModelSource) and is_ort_genai_folder(model):
        path = Path(model).expanduser()
    else:
        if not isinstance(model, ModelSource) and (Path(model).expanduser() / "openvino_model.xml").is_file():
            raise ModelSourceError(
                f"{model} is an OpenVINO model folder; chat with it with the openvino engine, or pass "
                "the original model source to build an ONNX Runtime GenAI model with Olive."
            )
        path = export_olive(model, config, cache=cache, progress=progress, reporter=reporter).path
    return OrtChatSession(path, runtime, settings, system_prompt=system_prompt)


__all__ = [
    "OrtGenAIModel",
    "export_olive",
    "open_chat",
]
