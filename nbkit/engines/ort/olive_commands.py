"""The Olive page's commands as they run today, offline, and the causes of the forms that do not.

The tutorial's quick start is ``olive auto-opt --model_name_or_path <model> --output_path <out>
--device cpu --provider CPUExecutionProvider --use_ort_genai --precision int4 --log_level 1``.
With olive-ai 0.13, onnxruntime-genai 0.14 and transformers 5.5 (run them with
:func:`nbkit.engines.ort.olive_runner.run_olive_command`, which runs ``python -m olive`` offline):

* :func:`auto_opt_args` with ``use_model_builder=False`` (the page's form) **fails**: without
  ``--use_model_builder``, auto-opt captures the ONNX graph with the TorchScript
  ``OnnxConversion`` pass, which calls the model with the old list-of-tensors
  ``past_key_values``; transformers 5's mask code asks that for ``get_seq_length()``
  (a method of its ``Cache`` objects), so the export stops with ``AttributeError: 'list' object
  has no attribute 'get_seq_length'`` and exit code 1. No download is involved: it fails the
  same way online.
* :func:`auto_opt_args` with ``use_model_builder=True`` **works**: the ``ModelBuilder`` pass
  (onnxruntime-genai's builder: RTN int4 ``MatMulNBits``) reads the Hugging Face weights itself,
  with no tracing, and writes an ONNX Runtime GenAI folder (``model.onnx``,
  ``genai_config.json``, tokenizer files); then ``ExtractAdapters``, which finds no LoRA.
  ``olive --help`` marks auto-opt deprecated in favour of ``optimize``.
* :func:`optimize_args` (``olive optimize --precision int4``) **produces no model offline, and
  exits 0**: Olive 0.13 schedules ``Gptq`` (4-bit, symmetric) before ``ModelBuilder``, and GPTQ's
  default calibration data is the hub data set ``Salesforce/wikitext``. Offline the
  ``datasets`` library raises ``ConnectionError: Couldn't reach 'Salesforce/wikitext' on the Hub
  (OfflineModeIsEnabled)``; Olive logs the failed pass, prints "No output model produced" and
  still exits 0 (so check the output, as :class:`~nbkit.engines.ort.olive_runner.OliveCommand`'s
  ``produced_output`` does, not the exit code). Without ``datasets`` installed it is
  ``ModuleNotFoundError: No module named 'datasets'`` and exit code 1. ``--exporter model_builder``
  and ``--block_size`` do not remove the GPTQ pass.
* :func:`optimize_with_local_calibration` is the offline form of ``optimize``: ``--dry_run
  --save_config_file`` writes the workflow Olive would run, nbkit points its GPTQ pass at a local
  JSONL file (:func:`write_calibration_jsonl`), and runs it.

Every function here only builds arguments or configs and runs Olive in a child process; Olive
writes its caches inside the given work folder (:func:`scratch_env`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nbkit.config import CompressionConfig
from nbkit.engines.ort.deps import INSTALL_FINETUNE, require_olive
from nbkit.engines.ort.olive_runner import OUTPUT_DIR, OliveRun, run_olive_command, run_olive_config
from nbkit.errors import ConfigError, MissingDependencyError, OliveRunError
from nbkit.infra.progress import ProgressReporter
from nbkit.sources.architecture import read_architecture
from nbkit.sources.texts import calibration_texts

log = logging.getLogger(__name__)

DEFAULT_DEVICE = "cpu"
DEFAULT_PROVIDER = "CPUExecutionProvider"
CALIBRATION_DATA = "nbkit_calibration"
CALIBRATION_FILE = "calibration.jsonl"
DRY_RUN_DIR = "optimize-dry-run"
SAVED_CONFIG = "config.json"  # what `olive optimize --save_config_file` writes into --output_path
LOCAL_CONFIG = "optimize_local_calibration.json"
SCRATCH = ".olive-scratch"
CHARS_PER_TOKEN = 5  # generous: each JSONL line holds a little more than one sequence of text
# The calibration budget of nbkit's own data-aware NNCF configs (GPTQ included), so both engines'
# GPTQ see as much text; GPTQ's time grows with it.
CALIBRATION_SAMPLES = CompressionConfig().calibration_samples
CALIBRATION_TOKENS = CompressionConfig().calibration_tokens


def _words(model: Path | str, output: Path | str) -> list[str]:
    if not str(model).strip():
        raise ConfigError("No model given; pass a Hugging Face folder (or a model id when online).")
    if not str(output).strip():
        raise ConfigError("No output folder given; pass where Olive should write the model.")
    return ["--model_name_or_path", str(model), "--output_path", str(output)]


def auto_opt_args(
    model: Path | str,
    output: Path | str,
    *,
    precision: str = "int4",
    use_model_builder: bool = True,
    device: str = DEFAULT_DEVICE,
    provider: str = DEFAULT_PROVIDER,
    log_level: int = 1,
) -> list[str]:
    """``olive auto-opt`` arguments: the tutorial's command, plus ``--use_model_builder`` by default.

    ``use_model_builder=False`` is the tutorial's exact form, which fails in the TorchScript
    export under transformers 5 (see the module docstring for the cause).
    """
    args = ["auto-opt", *_words(model, output), "--device", device, "--provider", provider, "--use_ort_genai"]
    args += ["--precision", precision, "--log_level", str(log_level)]
    if use_model_builder:
        args.append("--use_model_builder")
    return args


def optimize_args(
    model: Path | str,
    output: Path | str,
    *,
    precision: str = "int4",
    device: str = DEFAULT_DEVICE,
    provider: str = DEFAULT_PROVIDER,
    exporter: str | None = None,
    block_size: int | None = None,
    dry_run: bool = False,
    save_config_file: bool = False,
    log_level: int = 1,
) -> list[str]:
    """``olive optimize`` arguments (auto-opt's successor).

    With ``precision="int4"`` Olive schedules GPTQ on a hub data set, so offline it produces no
    model (and exits 0); ``dry_run=True, save_config_file=True`` writes the workflow into
    ``output/config.json`` without running it, which :func:`optimize_with_local_calibration` edits.
    """
    args = ["optimize", *_words(model, output), "--device", device, "--provider", provider]
    args += ["--precision", precision, "--log_level", str(log_level)]
    if exporter is not None:
        args += ["--exporter", exporter]
    if block_size is not None:
        args += ["--block_size", str(block_size)]
    if save_config_file:
        args.append("--save_config_file")
    if dry_run:
        args.append("--dry_run")
    return args


def scratch_env(work_dir: Path) -> dict[str, str]:
    """Environment for :func:`run_olive_command` keeping Olive's side files inside ``work_dir``.

    ModelBuilder keeps intermediate files in the Hugging Face hub cache folder, and ``datasets``
    its lock and Arrow files in its own cache: both point into ``work_dir/.olive-scratch``.
    """
    scratch = Path(work_dir) / SCRATCH
    return {"HF_HUB_CACHE": str(scratch / "hf-hub"), "HF_DATASETS_CACHE": str(scratch / "datasets")}


def write_calibration_jsonl(
    path: Path, *, samples: int = CALIBRATION_SAMPLES, tokens: int = CALIBRATION_TOKENS
) -> Path:
    """Write nbkit's calibration text as JSONL (``{"text": ...}`` per line) for Olive's GPTQ pass.

    The text is :func:`nbkit.sources.texts.calibration_texts`: Python's help topics other than
    the evaluation topics, with every paragraph that also occurs in the evaluation text left
    out. So a KL divergence or top-1 agreement measured afterwards on
    :func:`~nbkit.sources.texts.evaluation_text` is measured on text the compression never saw
    (calibrating on the evaluation text itself would make those numbers optimistic).
    ``samples`` lines of at least ``tokens * 5`` characters: enough for ``samples`` sequences of
    ``tokens`` tokens once Olive joins and cuts them. An existing file is left alone unless it
    holds exactly this text.
    """
    lines = [json.dumps({"text": text}) for text in calibration_texts(samples, tokens * CHARS_PER_TOKEN)]
    content = "\n".join(lines) + "\n"
    path = Path(path).expanduser()
    if path.exists():
        if path.is_file() and path.read_text() == content:
            return path
        raise ConfigError(f"{path} already exists with other content; choose another calibration file path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def with_local_calibration(
    saved_config: Mapping[str, Any],
    calibration_jsonl: Path,
    *,
    datasets_cache: Path,
    max_seq_len: int = CALIBRATION_TOKENS,
    max_samples: int = CALIBRATION_SAMPLES,
) -> dict[str, Any]:
    """``olive optimize``'s saved workflow with its GPTQ pass calibrated on a local JSONL file.

    Adds a ``HuggingfaceContainer`` data config reading ``calibration_jsonl`` with the
    ``datasets`` "json" loader (no hub), joined and cut into ``max_samples`` sequences of
    ``max_seq_len`` tokens, and names it in every ``Gptq`` pass. Raises :class:`OliveRunError`
    when the saved workflow has no GPTQ pass (another Olive version schedules differently).
    """
    config = json.loads(json.dumps(saved_config))  # a deep copy; the caller's dict stays as it was
    passes = config.get("passes") or {}
    gptq = [name for name, spec in passes.items() if str(spec.get("type", "")).lower() == "gptq"]
    if not gptq:
        raise OliveRunError(
            f"The workflow olive optimize saved has no Gptq pass (passes: {', '.join(passes) or 'none'}); "
            "nothing needs calibration data, run it as it is."
        )
    data_config = {
        "name": CALIBRATION_DATA,
        "type": "HuggingfaceContainer",
        "load_dataset_config": {
            "data_name": "json",
            "split": "train",
            "data_files": [str(Path(calibration_jsonl).expanduser().resolve())],
            "cache_dir": str(datasets_cache),  # datasets' Arrow files stay in the work folder
        },
        "pre_process_data_config": {
            "text_cols": ["text"],
            "strategy": "join",
            "max_seq_len": max_seq_len,
            "max_samples": max_samples,
            "add_special_tokens": False,
        },
        "dataloader_config": {"batch_size": 1},
    }
    others = [d for d in config.get("data_configs") or [] if d.get("name") != CALIBRATION_DATA]
    config["data_configs"] = [*others, data_config]
    for name in gptq:
        passes[name]["data_config"] = CALIBRATION_DATA
    config["log_severity_level"] = 1  # INFO: the "Running pass" lines drive the progress bar
    return config


def _genai_folder_written(output: Path) -> bool:
    return (output / "model.onnx").is_file() and (output / "genai_config.json").is_file()


def optimize_with_local_calibration(
    hf_folder: Path,
    calibration_jsonl: Path,
    work_dir: Path,
    *,
    reporter: ProgressReporter | None = None,
    block_size: int = 32,
    max_seq_len: int = CALIBRATION_TOKENS,
    max_samples: int = CALIBRATION_SAMPLES,
) -> OliveRun:
    """``olive optimize --precision int4`` run offline: GPTQ calibrated on a local file, then ModelBuilder int4.

    1. ``olive optimize ... --exporter model_builder --block_size <block_size> --dry_run
       --save_config_file`` (:func:`~nbkit.engines.ort.olive_runner.run_olive_command`) writes
       the workflow Olive would run into ``work_dir/optimize-dry-run/config.json``;
    2. :func:`with_local_calibration` points its GPTQ pass at ``calibration_jsonl`` (write one with
       :func:`write_calibration_jsonl`); the edited workflow is saved as
       ``work_dir/optimize_local_calibration.json`` (``olive run --config`` runs it);
    3. :func:`~nbkit.engines.ort.olive_runner.run_olive_config` runs it in a child process; the
       ONNX Runtime GenAI model lands in ``work_dir/output``.

    GPTQ calibrates on ``max_samples`` sequences of ``max_seq_len`` tokens (default: the budget of
    nbkit's own data-aware NNCF configs; ``max_seq_len`` is capped at the model's context length).
    Its time grows with that budget. GPTQ needs the ``datasets`` library. Called again with the
    same arguments it returns the model it built before; a ``work_dir`` holding another output is
    refused (nothing is deleted).
    """
    require_olive()
    if importlib.util.find_spec("datasets") is None:
        raise MissingDependencyError(
            f"Olive's GPTQ pass reads the calibration file with the datasets library, which is not installed: {INSTALL_FINETUNE}."
        )
    reporter = reporter or ProgressReporter()
    hf_folder = Path(hf_folder).expanduser()
    calibration = Path(calibration_jsonl).expanduser()
    if not calibration.is_file():
        raise ConfigError(
            f"The calibration file {calibration} does not exist; write one with write_calibration_jsonl()."
        )
    context = read_architecture(hf_folder).context_length
    work_dir = Path(work_dir).expanduser()
    work_dir.mkdir(parents=True, exist_ok=True)
    dry_run_dir = work_dir / DRY_RUN_DIR
    reporter.report(0.0, "olive optimize --dry_run: Olive writes the workflow it would run")
    command = run_olive_command(
        optimize_args(
            hf_folder,
            dry_run_dir,
            precision="int4",
            exporter="model_builder",
            block_size=block_size,
            dry_run=True,
            save_config_file=True,
        ),
        work_dir,
        env=scratch_env(work_dir),
    )
    saved = dry_run_dir / SAVED_CONFIG
    if not saved.is_file():
        raise OliveRunError(f"`{command.shell}` wrote no {SAVED_CONFIG}: {command.error_line}")
    config = with_local_calibration(
        json.loads(saved.read_text()),
        calibration,
        datasets_cache=work_dir / SCRATCH / "datasets",
        max_seq_len=min(max_seq_len, context) if context else max_seq_len,
        max_samples=max_samples,
    )
    local_config = work_dir / LOCAL_CONFIG
    output = work_dir / OUTPUT_DIR
    if (
        local_config.is_file()
        and json.loads(local_config.read_text()) == config
        and _genai_folder_written(output)
    ):
        log.info("Reusing the model %s built from %s", output, local_config)
        reporter.report(1.0, "olive optimize: model ready (built before)")
        return OliveRun(output, 0.0, ())
    if output.exists() and any(output.iterdir()):
        raise ConfigError(
            f"{output} already holds another Olive output; give optimize_with_local_calibration an empty "
            "work_dir (nbkit does not delete earlier builds)."
        )
    local_config.write_text(json.dumps(config, indent=2) + "\n")
    log.info("Running %s (GPTQ on %s)", work_dir / LOCAL_CONFIG, calibration)
    return run_olive_config(
        config, work_dir, reporter=reporter.step(0.15, 1.0), produced=_genai_folder_written
    )


__all__ = [
    "auto_opt_args",
    "optimize_args",
    "optimize_with_local_calibration",
    "scratch_env",
    "with_local_calibration",
    "write_calibration_jsonl",
]
