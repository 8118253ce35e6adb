"""Olive's OpenVINO passes: an OpenVINO weight-compressed model built by an Olive workflow.

Olive 0.13 wraps optimum-intel and NNCF in passes, so one Olive config can produce the same
kind of model nbkit's own OpenVINO engine builds (optimum-intel export, then
``nncf.compress_weights``). Three forms run offline on a local Hugging Face folder
(:data:`FORMS`):

=========================  ==================================================================
``optimum``                ``OpenVINOOptimumConversion`` with ``ov_quant_config``: optimum-intel
                           exports and compresses in one pass (what ``optimum-cli export
                           openvino --weight-format int4`` does)
``convert-then-compress``  ``OpenVINOOptimumConversion`` to a float IR, then
                           ``OpenVINOWeightCompression`` (``nncf.compress_weights``) on it
``compress-hf``            ``OpenVINOWeightCompression`` directly on the ``HfModel`` (the pass
                           exports with optimum-intel first, then compresses)
=========================  ==================================================================

Two things every form needs, found by running them (see :func:`olive_openvino_config`): the
task ``text-generation-with-past`` in ``extra_args`` (optimum-intel cannot infer the task of a
local folder, and the pass then fails with "Cannot infer the task from a local directory yet"
while Olive exits 0), and a file layout openvino-genai can load (:func:`fix_tokenizer_layout`).

Why the layout needs fixing: Olive's ``OpenVINOModelHandler`` takes a folder with exactly one
model, so the passes move ``openvino_tokenizer.{xml,bin}`` and ``openvino_detokenizer.{xml,bin}``
into subfolders of the same names. ``openvino_genai.LLMPipeline`` looks for them next to
``openvino_model.xml`` and fails with ``Check 'm_ireq_queue_tokenizer' failed``. The
``convert-then-compress`` form keeps only ``openvino_model.{xml,bin}`` (the compression pass
does not carry the first pass's tokenizer or config files over), so its folder gets them
copied from a folder that has them (``tokenizer_from``, e.g. nbkit's own float export of the
same model); the file ``nbkit-olive-openvino.json`` records what was moved and copied.

Nothing here imports the OpenVINO engine (engines never import each other): this is an Olive
config plus a file layout; the measure layer puts the result next to nbkit's own compression
(:mod:`nbkit.measure.olive_openvino_compare`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from nbkit.config import CompressionConfig, CompressionMode
from nbkit.engines.ort.deps import require_olive
from nbkit.engines.ort.olive_config import OLIVE_OUTPUT_DIR
from nbkit.engines.ort.olive_runner import OUTPUT_DIR, run_olive_config
from nbkit.errors import ConfigError
from nbkit.infra.cache import Cache
from nbkit.infra.progress import ProgressReporter
from nbkit.sources.architecture import read_architecture
from nbkit.sources.models import ModelSource, resolve_source

log = logging.getLogger(__name__)

FORMS = ("optimum", "convert-then-compress", "compress-hf")
# Forms whose output folder has no tokenizer IRs or Hugging Face files of its own.
FORMS_WITHOUT_TOKENIZER = frozenset({"convert-then-compress"})
TASK = "text-generation-with-past"  # optimum-intel cannot infer it from a local folder
MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
TOKENIZER_IRS = ("openvino_tokenizer", "openvino_detokenizer")
# What openvino-genai and nbkit's measurements read besides the model IR.
COMPANION_FILES = (
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
)
RECORD_NAME = "nbkit-olive-openvino.json"
OLIVE_MODEL_DIR = "model"  # Olive saves an OpenVINO output model in <output_dir>/model


def _checked_compression(
    hf_folder: Path, mode: str | CompressionMode, group_size: int | str | None, ratio: float
) -> CompressionConfig:
    """``mode``/``group_size``/``ratio`` validated as nbkit's own compression would (same rules, same errors).

    ``group_size="auto"`` becomes the size nbkit would pick for this model, so both sides
    compress alike; a group size that does not divide the model's layers is refused here
    instead of as NNCF's ``InvalidGroupSizeError`` inside Olive.
    """
    from nbkit.compression.weights import resolve_config

    config = CompressionConfig(mode=mode, group_size=group_size, ratio=ratio)
    if (hf_folder / "config.json").is_file():
        return resolve_config(config, read_architecture(hf_folder))
    if config.group_size == "auto":
        raise ConfigError(
            f"group_size 'auto' needs the model's layer sizes, but {hf_folder} has no config.json; "
            "give a number (e.g. 64) or the Hugging Face folder of the model."
        )
    return config


def _group_size_value(config: CompressionConfig) -> int:
    # NNCF and optimum-intel spell per-channel as -1.
    return int(config.group_size) if isinstance(config.group_size, int) else -1


def _optimum_quant_config(config: CompressionConfig) -> dict[str, Any]:
    """``ov_quant_config`` of ``OpenVINOOptimumConversion`` (optimum-intel's weight-format options)."""
    mode = config.mode
    if mode.is_int8:
        return {"weight_format": "int8", "sym": mode is CompressionMode.INT8_SYM}
    quant: dict[str, Any] = {"weight_format": "nf4" if mode is CompressionMode.NF4 else "int4"}
    if mode is not CompressionMode.NF4:
        quant["sym"] = mode is CompressionMode.INT4_SYM
    quant.update(group_size=_group_size_value(config), ratio=config.ratio)
    return quant


def _nncf_compress_config(config: CompressionConfig) -> dict[str, Any]:
    """``compress_config`` of ``OpenVINOWeightCompression`` (``nncf.compress_weights`` arguments)."""
    compress: dict[str, Any] = {"mode": config.mode.value.upper()}
    if not config.mode.is_int8:  # NNCF's 8-bit modes are per-channel over every layer
        compress.update(group_size=_group_size_value(config), ratio=config.ratio)
    return compress


def olive_openvino_config(
    hf_folder: Path | str,
    *,
    mode: str | CompressionMode = "int4_sym",
    group_size: int | str | None = 64,
    ratio: float = 1.0,
    form: str = "optimum",
    output_dir: str = OLIVE_OUTPUT_DIR,
) -> dict[str, Any]:
    """An Olive 0.13 workflow (what ``olive run --config`` accepts) building an OpenVINO model of ``hf_folder``.

    ``mode``/``group_size``/``ratio`` mean what they mean in nbkit's
    :class:`~nbkit.config.CompressionConfig` (``int4_sym``, group 64, ratio 1.0 by default; the
    8-bit modes are per-channel); ``form`` is one of :data:`FORMS`. The input model is the
    local folder (no hub id), the target the local CPU, and no pass downloads anything.
    """
    if form not in FORMS:
        raise ConfigError(f"Unknown Olive OpenVINO form {form!r}; choose one of: {', '.join(FORMS)}.")
    folder = Path(hf_folder).expanduser()
    config = _checked_compression(folder, mode, group_size, ratio)
    convert: dict[str, Any] = {"type": "OpenVINOOptimumConversion", "extra_args": {"task": TASK}}
    compress: dict[str, Any] = {
        "type": "OpenVINOWeightCompression",
        "compress_config": _nncf_compress_config(config),
    }
    if form == "optimum":
        passes = {"convert": {**convert, "ov_quant_config": _optimum_quant_config(config)}}
    elif form == "convert-then-compress":
        # A float export first, as nbkit's own float IR (optimum-intel would otherwise store
        # 8-bit weights by default for models over a billion parameters).
        passes = {"convert": {**convert, "ov_quant_config": {"weight_format": "fp32"}}, "compress": compress}
    else:
        passes = {"compress": {**compress, "extra_args": {"task": TASK}}}
    return {
        "input_model": {"type": "HfModel", "model_path": str(folder)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "passes": passes,
        "host": "local_system",
        "target": "local_system",
        "log_severity_level": 1,
        "output_dir": output_dir,
    }


def fix_tokenizer_layout(folder: Path) -> list[str]:
    """Move the tokenizer IRs Olive put in subfolders next to ``openvino_model.xml``; the names moved.

    Only ``openvino_tokenizer/openvino_tokenizer.{xml,bin}`` and
    ``openvino_detokenizer/openvino_detokenizer.{xml,bin}`` move; a file already at the top is
    never replaced (the subfolder copy stays), and a subfolder is removed only when the move
    left it empty. Nothing else is touched.
    """
    moved: list[str] = []
    for name in TOKENIZER_IRS:
        subfolder = folder / name
        if not subfolder.is_dir() or subfolder.is_symlink():
            continue
        for suffix in (".xml", ".bin"):
            source = subfolder / f"{name}{suffix}"
            target = folder / source.name
            if not source.is_file():
                continue
            if target.exists():
                log.warning("%s already exists; leaving %s where Olive put it.", target, source)
                continue
            os.replace(source, target)
            moved.append(source.name)
        if not any(subfolder.iterdir()):
            subfolder.rmdir()
    return moved


def copy_companion_files(source: Path, folder: Path) -> list[str]:
    """Copy the tokenizer IRs and Hugging Face files ``folder`` lacks from ``source``; the names copied.

    Never overwrites a file ``folder`` has.
    """
    copied: list[str] = []
    for name in COMPANION_FILES:
        if (source / name).is_file() and not (folder / name).exists():
            shutil.copy2(source / name, folder / name)
            copied.append(name)
    return copied


def _check_tokenizer_source(tokenizer_from: Path | None, form: str) -> Path | None:
    if tokenizer_from is None:
        if form in FORMS_WITHOUT_TOKENIZER:
            raise ConfigError(
                f"The {form!r} form writes only openvino_model.xml/.bin, and openvino-genai also needs the "
                "tokenizer IRs: pass tokenizer_from=<a folder that has openvino_tokenizer.xml>, e.g. nbkit's "
                "float export of the same model (nbkit.export_openvino(...).path)."
            )
        return None
    folder = Path(tokenizer_from).expanduser()
    missing = [f"{n}.xml" for n in TOKENIZER_IRS if not (folder / f"{n}.xml").is_file()]
    if missing:
        raise ConfigError(
            f"tokenizer_from {folder} has no {' or '.join(missing)}; give an OpenVINO model folder exported "
            "with its tokenizer (nbkit.export_openvino(...).path)."
        )
    return folder


def build_openvino_with_olive(
    source_or_hf_folder: ModelSource | Path | str,
    *,
    form: str = "optimum",
    mode: str | CompressionMode = "int4_sym",
    group_size: int | str | None = 64,
    ratio: float = 1.0,
    work_dir: Path,
    reporter: ProgressReporter | None = None,
    tokenizer_from: Path | None = None,
    cache: Cache | None = None,
) -> Path:
    """The OpenVINO model Olive builds in ``form`` (see :data:`FORMS`), as a folder openvino-genai loads.

    ``source_or_hf_folder`` is a Hugging Face folder or any nbkit model source (converted to
    one in ``cache`` first). The workflow runs in a child process with
    :func:`~nbkit.engines.ort.olive_runner.run_olive_config`, writing into ``work_dir``; the
    returned folder is ``work_dir/output/model`` with the tokenizer IRs moved to its top
    (:func:`fix_tokenizer_layout`) and, when ``tokenizer_from`` is given (required for
    ``convert-then-compress``), the tokenizer and config files it lacks copied from there.

    Called again with the same ``work_dir`` and the same config, it returns the folder it built
    before; with another config it refuses (it never deletes a previous build).
    """
    require_olive()
    reporter = reporter or ProgressReporter()
    if form not in FORMS:
        raise ConfigError(f"Unknown Olive OpenVINO form {form!r}; choose one of: {', '.join(FORMS)}.")
    tokenizer_source = _check_tokenizer_source(tokenizer_from, form)
    hf_folder = resolve_source(source_or_hf_folder).hf_folder(cache or Cache(), reporter.step(0.0, 0.05))
    user_config = olive_openvino_config(hf_folder, mode=mode, group_size=group_size, ratio=ratio, form=form)
    work_dir = Path(work_dir).expanduser()
    output = work_dir / OUTPUT_DIR
    folder = output / OLIVE_MODEL_DIR
    record_path = folder / RECORD_NAME
    if record_path.is_file() and json.loads(record_path.read_text()).get("olive_config") == user_config:
        log.info("Reusing the Olive OpenVINO model in %s", folder)
        reporter.report(1.0, "Olive OpenVINO model ready (built before)")
        return folder
    if output.exists() and any(output.iterdir()):
        raise ConfigError(
            f"{output} already holds another Olive output; give build_openvino_with_olive an empty work_dir "
            "(nbkit does not delete earlier builds)."
        )
    run = run_olive_config(
        user_config,
        work_dir,
        reporter=reporter.step(0.05, 0.95),
        produced=lambda out: (out / OLIVE_MODEL_DIR / MODEL_XML).is_file(),
    )
    moved = fix_tokenizer_layout(folder)
    copied = copy_companion_files(tokenizer_source, folder) if tokenizer_source is not None else []
    if not (folder / "openvino_tokenizer.xml").is_file():
        log.warning("%s has no openvino_tokenizer.xml: openvino-genai cannot load it as it is.", folder)
    record = {
        "form": form,
        "olive_config": user_config,
        "moved_to_top": moved,
        "copied_from": str(tokenizer_source) if copied else None,
        "copied": copied,
        "olive_seconds": round(run.seconds, 2),
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    reporter.report(1.0, "Olive OpenVINO model ready")
    return folder


__all__ = [
    "FORMS",
    "build_openvino_with_olive",
    "copy_companion_files",
    "fix_tokenizer_layout",
    "olive_openvino_config",
]
