"""The code equal to a compression config: nbkit Python, plain NNCF, ``nbkit`` CLI, ``optimum-cli``.

Panels show these under "show code", so a learner who tuned a config with sliders leaves with
the call that reproduces it, in the API they prefer. Each text is built from the config's
fields alone (no NNCF import, so showing code stays instant in a notebook kernel); the tests
check that the CLI text parses back to the same config, that the nbkit text evaluates to it,
and that the NNCF text evaluates to the arguments :func:`nbkit.compression.nncf_compress.nncf_arguments` passes.
"""

from __future__ import annotations

import dataclasses
import enum
import shlex
from dataclasses import dataclass

from nbkit.compression.layers import ignored_scope_patterns, only_these_pattern
from nbkit.config import AUTO, BackupMode, CompressionConfig, CompressionMode, GroupSizeFallback
from nbkit.sources.models import DEFAULT_MODEL

_INDENT = "    "
_WIDTH = 100
# optimum-cli's --weight-format for each mode (optimum-intel 2.2); the others have none.
_OPTIMUM_WEIGHT_FORMATS = {
    CompressionMode.INT8_SYM: "int8",
    CompressionMode.INT8_ASYM: "int8",
    CompressionMode.INT4_SYM: "int4",
    CompressionMode.INT4_ASYM: "int4",
    CompressionMode.NF4: "nf4",
    CompressionMode.MXFP4: "mxfp4",
    CompressionMode.CB4: "cb4",
}
# Modes whose NNCF default backup precision is not INT8_ASYM: optimum-cli must be told nbkit's.
_OTHER_DEFAULT_BACKUP = (CompressionMode.MXFP4, CompressionMode.FP4, CompressionMode.FP8_E4M3)


def _shell(parts: list[str]) -> str:
    """A command line, continued with backslashes before an option once it grows past the width."""
    lines = [parts[0]]
    for part in parts[1:]:
        if part.startswith("-") and len(lines[-1]) + len(part) > _WIDTH - 10:
            lines.append(f"{_INDENT}{part}")
        else:
            lines[-1] += f" {part}"
    return " \\\n".join(lines)


@dataclass(frozen=True)
class CompressionCode:
    """Four equivalent ways to produce one compressed model."""

    python: str  # nbkit's Python API
    nncf: str  # openvino + nncf.compress_weights on the float IR
    cli: str  # the nbkit command line
    optimum_cli: str  # optimum-intel's exporter, for comparison (downloads calibration data)

    def as_markdown(self) -> str:
        return "\n\n".join(
            [
                f"**nbkit (Python)**\n\n```python\n{self.python}\n```",
                f"**nbkit (command line)**\n\n```bash\n{self.cli}\n```",
                f"**OpenVINO + NNCF directly**\n\n```python\n{self.nncf}\n```",
                f"**optimum-cli**\n\n```bash\n{self.optimum_cli}\n```",
            ]
        )


def non_default_fields(config: CompressionConfig) -> dict[str, object]:
    """The fields of ``config`` that differ from :class:`CompressionConfig`'s defaults."""
    defaults = CompressionConfig()
    return {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(config)
        if getattr(config, field.name) != getattr(defaults, field.name)
    }


def _literal(value: object) -> str:
    # Enums as their string value: what a user types, and what the config parses back.
    return repr(value.value) if isinstance(value, enum.Enum) else repr(value)


def python_code(config: CompressionConfig, model: str = DEFAULT_MODEL) -> str:
    fields = {"mode": config.mode, **non_default_fields(config)}
    arguments = [f"{name}={_literal(value)}" for name, value in fields.items()]
    call = f"config = nbkit.CompressionConfig({', '.join(arguments)})"
    if len(call) > _WIDTH:
        call = "\n".join(["config = nbkit.CompressionConfig(", *(f"{_INDENT}{a}," for a in arguments), ")"])
    return "\n".join(
        [
            "import nbkit",
            "",
            call,
            f"float_model = nbkit.export_openvino({model!r})  # cached after the first run",
            "model = nbkit.compress(float_model, config)  # runs NNCF in a child process, cached",
            "print(model.path)",
        ]
    )


def _option_flags(config: CompressionConfig) -> list[str]:
    """The flags nbkit's CLI and optimum-cli spell alike: all layers, fallback, algorithms, metric."""
    flags = ["--all-layers"] if config.all_layers else []
    if config.group_size_fallback is not GroupSizeFallback.ERROR:
        flags += ["--group-size-fallback", config.group_size_fallback.value]
    for enabled, flag in (
        (config.awq, "--awq"),
        (config.scale_estimation, "--scale-estimation"),
        (config.gptq, "--gptq"),
        (config.lora_correction, "--lora-correction"),
    ):
        if enabled:
            flags.append(flag)
    if config.sensitivity_metric is not None:
        flags += ["--sensitivity-metric", config.sensitivity_metric.value]
    return flags


def cli_code(config: CompressionConfig, model: str = DEFAULT_MODEL) -> str:
    parts = ["nbkit", "compress", shlex.quote(model), "--mode", config.mode.value]
    if not config.mode.is_int8:
        group = config.group_size
        parts += ["--group-size", "auto" if group == AUTO else "none" if group is None else str(group)]
        parts += ["--ratio", f"{config.ratio:g}"]
        if config.backup_mode is not BackupMode.INT8_ASYM:
            parts += ["--backup-mode", config.backup_mode.value]
    parts += _option_flags(config)
    defaults = CompressionConfig()
    if config.calibration_samples != defaults.calibration_samples:
        parts += ["--calibration-samples", str(config.calibration_samples)]
    if config.calibration_tokens != defaults.calibration_tokens:
        parts += ["--calibration-tokens", str(config.calibration_tokens)]
    for flag, names in (("--keep-float", config.keep_float), ("--keep-int8", config.keep_int8)):
        if names:
            parts += [flag, shlex.quote(",".join(names))]
    return _shell(parts)


def nncf_code(config: CompressionConfig, float_xml: str = "float/openvino_model.xml") -> str:
    """``nncf.compress_weights`` with the arguments nbkit passes for ``config``.

    ``group_size="auto"`` is shown as written; nbkit resolves it against the model first, so
    pass a resolved config (:func:`nbkit.compression.weights.resolve_config`) to see the number.
    """
    arguments = [f"mode=nncf.CompressWeightsMode.{config.mode.name}"]
    advanced: list[str] = []
    if not config.mode.is_int8:
        group = config.group_size
        arguments.append(f"group_size={-1 if group is None else repr(group)}")
        arguments.append(f"ratio={config.ratio!r}")
        arguments.append(f"backup_mode=nncf.BackupMode.{config.backup_mode.name}")
        if config.group_size_fallback is not GroupSizeFallback.ERROR:
            advanced.append(
                f"group_size_fallback_mode=GroupSizeFallbackMode.{config.group_size_fallback.name}"
            )
        if config.sensitivity_metric is not None:
            arguments.append(f"sensitivity_metric=nncf.SensitivityMetric.{config.sensitivity_metric.name}")
    if config.all_layers:
        arguments.append("all_layers=True")
    left_out = tuple(sorted({*config.keep_float, *config.keep_int8}))
    if left_out:
        # The float IR names each layer's nodes "__module.<layer>/...": these patterns match them.
        arguments.append(f"ignored_scope=nncf.IgnoredScope(patterns={ignored_scope_patterns(left_out)!r})")
    lines = ["import nncf", "import openvino as ov"]
    if advanced:
        lines.append(
            "from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode"
        )
    lines += ["", f"model = ov.Core().read_model({float_xml!r})"]
    if config.is_data_aware:
        lines += [
            "# Calibration: tokenized text fed as the model's inputs; nbkit builds them offline",
            "# (nbkit.compression.calibration) and caches NNCF's statistics between configs.",
            "dataset = nncf.Dataset(calibration_inputs)",
        ]
        arguments += [
            "dataset=dataset",
            f"subset_size={config.calibration_samples}",
            f"awq={config.awq!r}",
            f"scale_estimation={config.scale_estimation!r}",
            f"gptq={config.gptq!r}",
        ]
        if config.lora_correction:
            arguments.append("lora_correction=True")
    if advanced:
        arguments.append(f"advanced_parameters=AdvancedCompressionParameters({', '.join(advanced)})")
    lines.append("compressed = nncf.compress_weights(")
    lines += [f"{_INDENT}model,", *(f"{_INDENT}{argument}," for argument in arguments), ")"]
    if config.keep_int8:
        lines += [
            "# keep_int8: a second pass makes the layers left out above INT8; its pattern ignores every",
            "# other layer, so float layers stay float and compressed ones are not touched.",
            "compressed = nncf.compress_weights(",
            f"{_INDENT}compressed,",
            f"{_INDENT}mode=nncf.CompressWeightsMode.INT8_ASYM,",
            f"{_INDENT}ignored_scope=nncf.IgnoredScope(patterns=[{only_these_pattern(config.keep_int8)!r}]),",
            ")",
        ]
    lines.append('ov.save_model(compressed, "compressed/openvino_model.xml", compress_to_fp16=False)')
    return "\n".join(lines)


def optimum_cli_code(config: CompressionConfig, model: str = "path/to/hugging-face-folder") -> str:
    """The optimum-cli export closest to ``config``; what its flags cannot say follows as ``#`` lines."""
    weight_format = _OPTIMUM_WEIGHT_FORMATS.get(config.mode)
    if weight_format is None:
        return (
            f"# optimum-cli has no --weight-format for {config.mode.value}: export the float model with\n"
            f"# optimum-cli export openvino -m {shlex.quote(model)} --weight-format fp32 float-ov\n"
            "# and run the OpenVINO + NNCF code above on it."
        )
    parts = ["optimum-cli", "export", "openvino", "-m", shlex.quote(model)]
    parts += ["--task", "text-generation-with-past"]
    parts += ["--weight-format", weight_format]
    if config.mode.value.endswith("_sym"):
        parts.append("--sym")
    if not config.mode.is_int8:
        if config.group_size != AUTO:
            parts += ["--group-size", str(-1 if config.group_size is None else config.group_size)]
        parts += ["--ratio", f"{config.ratio:g}"]
        if config.backup_mode is not BackupMode.INT8_ASYM or config.mode in _OTHER_DEFAULT_BACKUP:
            parts += ["--backup-precision", config.backup_mode.value]
    parts += _option_flags(config)
    if config.is_data_aware:
        # optimum-intel calibrates on a hub dataset; nbkit's offline text has no optimum-cli name.
        parts += ["--dataset", "wikitext2", "--num-samples", str(config.calibration_samples)]
    parts.append("compressed-ov")
    command = _shell(parts)
    kept = [
        f"{field} {', '.join(names)}"
        for field, names in (("keep_float", config.keep_float), ("keep_int8", config.keep_int8))
        if names
    ]
    if kept:
        command += (
            "\n# optimum-cli has no flag to keep layers out of the 4-bit mode ("
            + "; ".join(kept)
            + "):\n# pass ignored_scope to optimum.intel.OVWeightQuantizationConfig in Python, or use the NNCF code."
        )
    return command


def compression_code(
    config: CompressionConfig,
    model: str = DEFAULT_MODEL,
    *,
    float_xml: str = "float/openvino_model.xml",
    hf_folder: str = "path/to/hugging-face-folder",
) -> CompressionCode:
    """The nbkit Python, nbkit CLI, plain NNCF and optimum-cli code for ``config`` on ``model``.

    ``model`` is what :func:`nbkit.resolve_source` reads (a bundled name, a path, a hub id);
    ``float_xml`` and ``hf_folder`` name the float IR and the Hugging Face folder for the
    NNCF and optimum-cli forms (pass the real paths when they are known).
    """
    return CompressionCode(
        python=python_code(config, model),
        nncf=nncf_code(config, float_xml),
        cli=cli_code(config, model),
        optimum_cli=optimum_cli_code(config, hf_folder),
    )
