"""The tutorial notebooks: one catalog, and how to run one (papermill, then an HTML copy).

:data:`NOTEBOOKS` is the single list of the numbered tutorials in ``notebooks/`` with what
each teaches and the small parameters CI runs it with (few tokens, tiny grids).
``notebooks/dashboard.ipynb`` is the widgets app (served with Voila), not a tutorial, so it
is not listed.

:func:`run_notebook` executes one tutorial with papermill and writes the executed notebook and
an HTML copy. Parameter names are checked against the notebook's ``parameters`` cell
(``papermill.inspect_notebook``) before anything runs: a misspelt name is a
:class:`~nbkit.errors.ConfigError` listing the valid ones, never a silently ignored value.

The kernel is always this Python: papermill is asked for the ``python3`` kernel and the kernel
manager starts ``ipykernel`` with :data:`sys.executable`, whatever ``python`` the ``python3``
kernel spec names (a spec installed by another environment would otherwise run the notebook
without nbkit, or with another nbkit).

Core module: papermill, nbformat, nbconvert and jupyter_client are imported only when a
notebook is inspected or run (the ``notebooks`` extra), never ipywidgets or IPython.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbkit.errors import ConfigError, MissingDependencyError, NbkitError, NotebookExecutionError

NOTEBOOKS_ENV_VAR = "NBKIT_NOTEBOOKS_DIR"
DEFAULT_OUTPUT_DIR = Path("artifacts") / "notebooks"
KERNEL_NAME = "python3"
NOT_IN_CATALOG = ("dashboard",)  # notebooks/dashboard.ipynb: the widgets app, served by Voila


# In a variant's parameters: the second model the test suite builds (a tiny random-weight llama,
# tests/conftest.py ``tiny_hf_model``), so a notebook is run on a model other than the bundled one.
SECOND_MODEL = "<the test suite's second model>"


@dataclass(frozen=True)
class NotebookSpec:
    """One tutorial: ``notebooks/<name>.ipynb``, what it teaches, and its CI parameters.

    ``ci_variants`` are extra CI runs, by name: parameters that replace some of
    ``ci_parameters`` (another mode, another model: :data:`SECOND_MODEL`), so CI also runs the
    notebook with values other than its defaults.
    """

    name: str
    title: str
    teaches: str
    ci_parameters: Mapping[str, Any] = field(default_factory=dict)
    ci_variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def variant_parameters(self, variant: str) -> dict[str, Any]:
        """The parameters of the CI run ``variant``: ``ci_parameters`` with the variant's on top."""
        if variant not in self.ci_variants:
            raise ConfigError(
                f"{self.name} has no CI variant {variant!r}; its variants: {', '.join(self.ci_variants) or 'none'}."
            )
        return {**self.ci_parameters, **self.ci_variants[variant]}

    @property
    def filename(self) -> str:
        return f"{self.name}.ipynb"

    @property
    def short_name(self) -> str:
        """The name without its number: ``quickstart`` for ``01_quickstart``."""
        return self.name.split("_", 1)[1] if "_" in self.name else self.name


NOTEBOOKS: tuple[NotebookSpec, ...] = (
    NotebookSpec(
        "01_quickstart",
        "Quickstart: model -> OpenVINO IR -> INT4 -> chat",
        "nbkit.cli.quickstart and the same path step by step (export_openvino, compress, ChatSession), "
        "the plain openvino_genai.LLMPipeline call on the result, float vs compressed size, speed and "
        "peak memory (table and chart), the dashboard",
        {"max_new_tokens": 16, "speed_repeats": 1},
        ci_variants={"int8_asym": {"mode": "int8_asym"}, "second_model": {"model": SECOND_MODEL}},
    ),
    NotebookSpec(
        "02_openvino_runtime",
        "OpenVINO Runtime: convert, read, compile, devices, hints, caching, async",
        "ov.convert_model on a torch CNN and on its ONNX export (torch.onnx.export); ov.Core().read_model "
        "on openvino_model.xml and compile_model; devices and AUTO with the DeviceSelector panel; "
        "PERFORMANCE_HINT LATENCY vs THROUGHPUT measured; CACHE_DIR cold vs warm compile in fresh "
        "processes, time and peak memory charted; batched and AsyncInferQueue inference measured",
        {"image_size": 96, "batch_size": 4, "requests": 32, "repeats": 1},
    ),
    NotebookSpec(
        "03_nncf_weight_compression",
        "NNCF weight compression: INT8 vs INT4, sym vs asym, group size, ratio, AWQ",
        "nncf.compress_weights directly and through nbkit; InvalidGroupSizeError and how nbkit prevents "
        "it; a group_size x ratio sweep run by the QuantizationTuner panel, with the Pareto chart and "
        "peak memory; pick for me (a guided search for a quality target); data-aware AWQ + scale estimation",
        {
            "direct_modes": ["INT4_ASYM"],
            "sweep_group_sizes": [64, 128],
            "sweep_ratios": [1.0],
            "quality_tokens": 128,
            "speed_new_tokens": 8,
            "speed_repeats": 1,
            "check_answers": False,
            "data_aware": False,  # AWQ + scale estimation: tests/test_data_aware.py checks them on this model
            "calibration_samples": 4,
            "calibration_tokens": 64,
        },
    ),
    NotebookSpec(
        "04_nncf_ptq",
        "NNCF post-training quantization (weights and activations) with calibration",
        "nncf.quantize with nncf.Dataset and ModelType.TRANSFORMER on the LLM IR, nbkit.compression.ptq, and an "
        "accuracy check against the float model (perplexity, KL, top-1) next to INT8 weight-only, "
        "charted model x metric",
        {"calibration_samples": 4, "calibration_tokens": 32, "quality_tokens": 128, "max_new_tokens": 16},
    ),
    NotebookSpec(
        "05_genai_chat",
        "openvino-genai: LLMPipeline, ChatHistory, streaming, GenerationConfig, metrics, GGUF",
        "LLMPipeline on the INT4 folder, ChatHistory turns, a streaming callback, GenerationConfig "
        "(greedy, sampling, stop strings), perf metrics and a time-per-token chart from streamer timestamps, "
        "nbkit.ChatSession, the ChatPane and GenerationForm driven by send()/wait(), LLMPipeline on the GGUF "
        "when the model is one",
        {"max_new_tokens": 16},
    ),
    NotebookSpec(
        "06_optimum_intel",
        "optimum-intel: OVModelForCausalLM export, INT4, save/load, pipeline, ov_config",
        "OVModelForCausalLM.from_pretrained(export=True) with OVWeightQuantizationConfig (INT4 with "
        "group_size/ratio checked up front, or INT8 per channel), save_pretrained, "
        "loading with ov_config done right, the transformers pipeline, tokenizer IRs for openvino-genai",
        {"max_new_tokens": 16},
    ),
    NotebookSpec(
        "07_olive",
        "Microsoft Olive -> ONNX Runtime GenAI, and the same prompts on OpenVINO",
        "olive capture-onnx-graph --use_model_builder (plus olive run-pass for int8/fp16) and olive run "
        "--config on the olive_config.json "
        "nbkit.engines.ort.olive.export_olive writes, the same files either way; the onnxruntime_genai loop done right "
        "(chat template, append_tokens, max_length, tokenizer stream); the matching OpenVINO build per "
        "precision vs ONNX Runtime GenAI with nbkit.measure.compare.compare_models: quality against the "
        "float model, interleaved speed and peak memory in one table and chart, conclusions computed; both "
        "builds in one QuantizationTuner through its engine switch",
        {"prompts": ["What is the capital of France?"], "max_new_tokens": 16, "repeats": 1},
    ),
    NotebookSpec(
        "08_model_server",
        "OpenVINO Model Server: model repository, config, and the client run against nbkit serve",
        "the OVMS repository layout (graph.pbtxt + config.json) for --task text_generation from the INT4 "
        "folder, the exact server commands; then the same /v3/chat/completions client code (requests, "
        "openai streaming) run against nbkit serve, and continuous batching against one at a time",
        {},
    ),
    NotebookSpec(
        "09_seed_errata",
        "The seed tutorial's snippets: what breaks today and what works",
        "every broken snippet of the OpenVINO and Olive tutorial pages with its real error (run where "
        "cheap and offline) next to the working form, executed",
        {"max_new_tokens": 16, "calibration_samples": 4, "calibration_tokens": 32},
    ),
    NotebookSpec(
        "10_olive_finetune",
        "Fine-tuning with Olive: teach new facts offline, then run the model on both engines",
        "the shipped Veloria dataset with held-out questions; the seed's olive finetune (its real error offline, "
        "then the local-JSONL form) and olive run-pass MergeAdapterWeights; nbkit.finetune scored before and after; "
        "a steps study; the merged model built for OpenVINO and ONNX Runtime GenAI, asked through both chats, "
        "compared with compare_models; the dashboard on the tuned model",
        {"step_counts": [30], "cli_steps": 2, "repeats": 1, "quality_tokens": 128},
    ),
    NotebookSpec(
        "11_olive_recipes_search",
        "Olive beyond one export: evaluators and search, recipes, auto-opt/optimize, OpenVINO passes, GPU configs",
        "olive --help, hf download with patterns and trust_remote_code (offline, executed); execution providers and the CUDA/DirectML configs validated by Olive's parser; the seed's "
        "auto-opt with its real error, the --use_model_builder form, optimize offline and with local calibration; "
        "a recipe in the olive-recipes layout run as is and adapted, with the seed's benchmark claims checked "
        "against ORT fp32 and PyTorch; a search_strategy scored by nbkit's KL and tokens/s, checked against "
        "nbkit's sweep; Olive's OpenVINO passes next to nbkit's NNCF INT4",
        {
            "run_local_calibration": False,  # GPTQ's minute; test_olive_commands runs the call on a tiny model
            "torch_baseline": False,  # PyTorch's timing of the float model; benchmarks/ time it
            "calibration_samples": 4,
            "calibration_tokens": 128,
            "search_block_sizes": [32, 64],
            "search_max_samples": 2,
            "quality_tokens": 128,
            "new_tokens": 16,
            "repeats": 1,
        },
    ),
    NotebookSpec(
        "12_dask_cluster",
        "Sweeps on a Dask cluster: speed measured where the model runs, many configurations at once",
        "LocalClusterProcess and the Dask client widget with its dashboard link; run_sweep(client=...) with each "
        "configuration a task and on_record printing where each record's speed was measured; format_table's "
        "'speed measured on' column, the Pareto chart and a recommendation per machine; size and quality lent "
        "across machines by quality_key; dask scheduler / dask worker --resources and connect() for a real "
        "cluster, --worker-cache, a device no worker declares refused",
        {
            "workers": 2,
            "modes": ["int4_sym"],
            "group_sizes": [32, 64],
            "quality_tokens": 128,
            "speed_tokens": 16,
            "repeats": 1,
            "answers": False,
        },
    ),
)


# -- the catalog ------------------------------------------------------------------------------


def notebooks_dir() -> Path:
    """``$NBKIT_NOTEBOOKS_DIR``, else ``notebooks/`` of the nbkit checkout this module runs from."""
    override = os.environ.get(NOTEBOOKS_ENV_VAR)
    folder = Path(override).expanduser() if override else Path(__file__).resolve().parents[2] / "notebooks"
    if not folder.is_dir():
        raise NbkitError(
            f"The tutorial notebooks are not at {folder}: they ship with the nbkit repository, not the "
            f"wheel. Run from a checkout (git clone ...; pip install -e .) or set {NOTEBOOKS_ENV_VAR}."
        )
    return folder


def notebook_names() -> list[str]:
    return [spec.name for spec in NOTEBOOKS]


def get_notebook(name: str) -> NotebookSpec:
    """The catalog entry for ``name``: ``01_quickstart``, ``01_quickstart.ipynb``, ``quickstart`` or ``01``."""
    text = Path(str(name).strip()).name.removesuffix(".ipynb")
    for spec in NOTEBOOKS:
        if text in (spec.name, spec.short_name, spec.name.split("_", 1)[0]):
            return spec
    raise ConfigError(f"No notebook named {name!r}; choose one of: {', '.join(notebook_names())}.")


def notebook_path(name: str) -> Path:
    spec = get_notebook(name)
    path = notebooks_dir() / spec.filename
    if not path.is_file():
        raise NbkitError(f"{spec.filename} is in nbkit's catalog but missing from {path.parent}.")
    return path


# -- parameters -------------------------------------------------------------------------------


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f'Running notebooks needs {module}; install it with: pip install "nbkit[notebooks]".'
        ) from None


def notebook_parameters(name: str) -> dict[str, dict[str, Any]]:
    """The notebook's ``parameters`` cell as papermill reads it: name -> {default, inferred_type_name, help}."""
    papermill = _require("papermill")
    return dict(papermill.inspect_notebook(str(notebook_path(name))))


def _default_value(info: Mapping[str, Any]) -> Any:
    try:
        return ast.literal_eval(str(info.get("default")))
    except (ValueError, SyntaxError):
        return None


def _coerce(key: str, value: str, default: Any) -> Any:
    """A command-line string turned into the type of the notebook's default for ``key``."""
    if isinstance(default, str):
        return value
    text = value.strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"Parameter {key!r} is true or false, not {value!r}.")
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if default is None:  # an optional value: a bare word is a string
            return value
        raise ConfigError(
            f"Parameter {key!r} takes a {type(default).__name__} value such as {default!r}, not {value!r}."
        ) from None
    if isinstance(default, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        return float(parsed)
    if default is not None and not isinstance(parsed, type(default)):
        raise ConfigError(
            f"Parameter {key!r} takes a {type(default).__name__} value such as {default!r}, not {value!r}."
        )
    return parsed


def check_parameters(name: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """``parameters`` checked against the notebook's ``parameters`` cell.

    Raises :class:`ConfigError` naming the valid parameters when a name is unknown. String
    values for parameters whose default is not a string (what a command line passes) are
    converted: ``"8"`` -> 8, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"[32, 64]"`` -> [32, 64].
    """
    parameters = dict(parameters or {})
    known = notebook_parameters(name)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        valid = ", ".join(f"{key} (default {info.get('default')})" for key, info in known.items())
        raise ConfigError(
            f"{get_notebook(name).name} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {valid or 'none'}."
        )
    return {
        key: _coerce(key, value, _default_value(known[key])) if isinstance(value, str) else value
        for key, value in parameters.items()
    }


# -- running ------------------------------------------------------------------------------


@functools.cache
def _this_python_kernel_manager() -> type:
    """A jupyter_client KernelManager that starts ipykernel with this interpreter."""
    from jupyter_client.manager import KernelManager

    class ThisPythonKernelManager(KernelManager):  # type: ignore[misc]
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            command = list(super().format_kernel_cmd(extra_arguments))
            # jupyter_client already maps a bare "python" to sys.executable; a kernel spec with an
            # absolute path to another environment's python would slip through, so map that too.
            if len(command) >= 3 and command[1:3] == ["-m", "ipykernel_launcher"]:
                command[0] = sys.executable
            return command

    return ThisPythonKernelManager


def _write_html(notebook: Path, html: Path) -> Path:
    nbformat = _require("nbformat")
    nbconvert = _require("nbconvert")
    node = nbformat.read(str(notebook), as_version=4)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(node)
    html.write_text(body, encoding="utf-8")
    return html


def _failure(
    spec: NotebookSpec, executed: Path, html: Path, started: float, what: str
) -> NotebookExecutionError:
    """The error for a failed run, after writing the HTML copy of what ran (when there is one)."""
    written: Path | None = None
    if executed.is_file():
        try:
            written = _write_html(executed, html)
        except Exception:  # a half-written notebook: the .ipynb is still the evidence
            written = None
    where = (
        f"see {executed}" + (f" (or {written})" if written else "")
        if executed.is_file()
        else "nothing was written"
    )
    return NotebookExecutionError(
        f"{spec.filename} failed after {time.perf_counter() - started:.0f} s {what}; {where}.",
        executed,
        written,
    )


def run_notebook(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    output_dir: Path | str | None = None,
    *,
    timeout: float | None = None,
    log_output: bool = False,
    progress_bar: bool = False,
) -> tuple[Path, Path]:
    """Execute the tutorial ``name`` with ``parameters``; return (executed .ipynb, .html).

    ``name``: ``01_quickstart``, ``quickstart``, ``01`` or ``01_quickstart.ipynb``.
    ``parameters`` override the notebook's ``parameters`` cell; unknown names raise
    :class:`ConfigError` (listing the valid ones) before anything runs, and string values are
    converted to the default's type (see :func:`check_parameters`).
    ``output_dir`` (default ``artifacts/notebooks`` under the current folder) receives
    ``<name>.ipynb`` and ``<name>.html``; the notebook runs with it as working directory, so
    the files a notebook writes (its ``work_dir``) land there too.
    ``timeout``: seconds any one cell may take (default: no limit).

    A failing notebook raises :class:`NotebookExecutionError` naming the cell and the error;
    the executed notebook and its HTML copy are written first, so they show where it failed.
    """
    spec = get_notebook(name)
    source = notebook_path(spec.name)
    values = check_parameters(spec.name, parameters)
    papermill = _require("papermill")
    _require("nbconvert")
    out_dir = Path(output_dir if output_dir is not None else DEFAULT_OUTPUT_DIR).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / spec.filename
    html = out_dir / f"{spec.name}.html"
    for stale in (executed, html):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source),
            str(executed),
            parameters=values,
            kernel_name=KERNEL_NAME,
            kernel_manager_class=_this_python_kernel_manager(),
            coalesce_streams=True,  # a streamed answer is one output, not one per token
            cwd=str(out_dir),
            execution_timeout=timeout,
            log_output=log_output,
            progress_bar=progress_bar,
        )
    except papermill.PapermillExecutionError as exc:
        first_line = str(exc.evalue).strip().splitlines()[0] if exc.evalue else ""
        raise _failure(
            spec, executed, html, started, f"in cell {exc.exec_count}: {exc.ename}: {first_line}"
        ) from exc
    except Exception as exc:  # the kernel died, a cell timed out, the kernel would not start
        raise _failure(spec, executed, html, started, f"{type(exc).__name__}: {exc}") from exc
    return executed, _write_html(executed, html)


__all__ = [
    "NOTEBOOKS",
    "SECOND_MODEL",
    "NotebookSpec",
    "check_parameters",
    "get_notebook",
    "notebook_names",
    "notebook_parameters",
    "notebook_path",
    "notebooks_dir",
    "run_notebook",
]
