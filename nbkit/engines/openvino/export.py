"""Export a model source to a float OpenVINO IR folder with optimum-intel.

The folder carries everything openvino-genai needs: the stateful model IR, the
OpenVINO tokenizer and detokenizer IRs (which embed the chat template), and the Hugging
Face tokenizer files.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from nbkit.artifacts import MODEL_XML, OVModel, facts_to_dict
from nbkit.config import ExportConfig
from nbkit.errors import ExportError
from nbkit.infra.cache import OPENVINO_FLOAT_KIND, Cache, cache_key
from nbkit.infra.disk import float32_weights_bytes
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import EXPORT_LIBRARIES, versions
from nbkit.infra.worker import run_isolated
from nbkit.sources.architecture import read_architecture
from nbkit.sources.models import ModelSource, resolve_source

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"


def export_openvino(
    source: ModelSource | str,
    config: ExportConfig | None = None,
    *,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> OVModel:
    """The float OpenVINO IR of ``source``, from the cache or exported now.

    Pass ``progress`` for a callback, or a ``reporter`` (which also carries a cancel token).
    """
    source = resolve_source(source)
    config = config or ExportConfig()
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    hf_folder = source.hf_folder(cache, reporter.step(0.0, 0.4))
    facts = read_architecture(hf_folder)  # the folder is at hand: no second lookup
    key = cache_key(
        {
            "stage": "openvino-export",
            "format": EXPORT_FORMAT,
            "source": source.identity(),
            # Its name, not its path: a GGUF's converted folder is named by its own key and a hub
            # snapshot by its commit, while a path would tie every entry to where the cache lives.
            "hf_folder": hf_folder.name,
            "config": config.fingerprint(),
            "versions": versions(EXPORT_LIBRARIES),
        }
    )
    label = f"float-{config.weight_format}"

    def build(folder: Path) -> dict[str, Any]:
        run_isolated(export_folder, hf_folder, folder, config.weight_format, reporter=reporter.step(0.4, 1.0))
        return {
            "source_name": source.name,
            "source": source.identity(),
            "label": label,
            "config": config.to_dict(),
            "architecture": facts_to_dict(facts),
            "versions": versions(EXPORT_LIBRARIES),
        }

    bytes_per_weight = {"fp32": 4, "fp16": 2}[config.weight_format]
    entry = cache.get_or_build(
        OPENVINO_FLOAT_KIND,
        key,
        f"{source.name}-{label}",
        build,
        needs_bytes=lambda: float32_weights_bytes(hf_folder) * bytes_per_weight // 4,
        inputs=[hf_folder],
    )
    reporter.report(1.0, "Float OpenVINO IR ready")
    return OVModel(entry)


def export_folder(hf_folder: Path, out_dir: Path, weight_format: str, *, reporter: ProgressReporter) -> None:
    """Run optimum-intel's exporter (the same code path as ``optimum-cli export openvino``)."""
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    reporter.report(0.05, "Loading the PyTorch model and tracing it to OpenVINO")
    try:
        main_export(
            str(hf_folder),
            output=out_dir,
            task="text-generation-with-past",
            stateful=True,
            convert_tokenizer=True,
            ov_config=OVConfig(dtype=weight_format),
            local_files_only=True,
        )
    except Exception as exc:
        raise ExportError(
            f"optimum-intel could not export {hf_folder.name}: {type(exc).__name__}: {exc}"
        ) from exc
    reporter.report(0.9, "Checking the tokenizer IRs")
    if not (out_dir / TOKENIZER_XML).is_file() or not (out_dir / DETOKENIZER_XML).is_file():
        _convert_tokenizer(hf_folder, out_dir)
    for name in ("chat_template.jinja",):
        if (hf_folder / name).is_file() and not (out_dir / name).is_file():
            shutil.copy2(hf_folder / name, out_dir / name)
    if not (out_dir / MODEL_XML).is_file():
        raise ExportError(f"optimum-intel finished without writing {MODEL_XML} for {hf_folder.name}.")
    reporter.report(1.0, "Exported")


def _convert_tokenizer(hf_folder: Path, out_dir: Path) -> None:
    # optimum-intel skips the tokenizer IRs silently when conversion fails; do it ourselves so
    # the failure is visible instead of surfacing later as an LLMPipeline load error.
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(hf_folder))
        tokenizer, detokenizer = convert_tokenizer(hf_tokenizer, with_detokenizer=True)
    except Exception as exc:
        raise ExportError(
            f"openvino-tokenizers cannot convert the tokenizer of {hf_folder.name} ({type(exc).__name__}: {exc}); "
            "openvino-genai needs it to run the model."
        ) from exc
    ov.save_model(tokenizer, str(out_dir / TOKENIZER_XML))
    ov.save_model(detokenizer, str(out_dir / DETOKENIZER_XML))
