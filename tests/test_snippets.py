"""The code nbkit shows for a config reproduces that config, in every form it is shown.

Each config is rendered as nbkit Python, the nbkit CLI, plain NNCF and optimum-cli; the
tests run the first three back through their real parsers (the CLI's argparse, Python's
``exec``, NNCF's enums) and compare with the config or with what nbkit passes to NNCF.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from nbkit.cli.main import _compression_config
from nbkit.cli.parser import build_parser
from nbkit.compression.nncf_compress import nncf_arguments
from nbkit.compression.snippets import compression_code, non_default_fields
from nbkit.config import CompressionConfig

CONFIGS = [
    CompressionConfig(),
    CompressionConfig(mode="int4_sym", group_size=64, ratio=0.8),
    CompressionConfig(mode="int4_asym", group_size=None, ratio=0.6, backup_mode="int8_sym"),
    CompressionConfig(mode="nf4", group_size=32, all_layers=True, backup_mode="none"),
    CompressionConfig(mode="int8_asym"),
    CompressionConfig(mode="int8_sym"),
    CompressionConfig(group_size=128, group_size_fallback="adjust"),
    CompressionConfig(group_size=32, awq=True, scale_estimation=True),
    CompressionConfig(group_size=64, ratio=0.8, gptq=True, sensitivity_metric="hessian_input_activation"),
    CompressionConfig(
        mode="int4_asym",
        group_size=16,
        ratio=0.9,
        awq=True,
        sensitivity_metric="max_activation_variance",
        calibration_samples=8,
        calibration_tokens=64,
    ),
    CompressionConfig(group_size=64, ratio=0.7, sensitivity_metric="weight_quantization_error"),
]
IDS = [c.label for c in CONFIGS]


def _argv(command: str) -> list[str]:
    return shlex.split(command.replace("\\\n", " "))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_cli_code_parses_back_to_the_same_config(config: CompressionConfig) -> None:
    argv = _argv(compression_code(config).cli)
    assert argv[:2] == ["nbkit", "compress"]
    args = build_parser().parse_args(argv[1:])
    assert _compression_config(args) == config


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_python_code_builds_the_same_config(config: CompressionConfig) -> None:
    code = compression_code(config, "my-model").python
    config_lines = code[: code.index("float_model =")]
    namespace: dict[str, Any] = {}
    exec(config_lines, namespace)  # imports nbkit and builds the config, nothing else
    assert namespace["config"] == config
    assert "nbkit.export_openvino('my-model')" in code and "nbkit.compress(float_model, config)" in code


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_nncf_code_passes_what_nbkit_passes(config: CompressionConfig) -> None:
    code = compression_code(config, float_xml="/models/float/openvino_model.xml").nncf
    call = code[code.index("nncf.compress_weights(") :]
    call = call[: call.index("\n)") + 2]
    dataset = object()
    namespace: dict[str, Any] = {"dataset": dataset, "model": "MODEL"}
    exec("import nncf\nfrom nncf.quantization.advanced_parameters import *\n", namespace)
    namespace["captured"] = {}
    exec("def _capture(model, **kwargs):\n    captured.update(kwargs)\n", namespace)
    exec(call.replace("nncf.compress_weights(", "_capture("), namespace)
    shown = namespace["captured"]
    expected = nncf_arguments(config, dataset=dataset if config.is_data_aware else None)
    assert set(shown) == set(expected)
    for name, value in expected.items():
        if name == "advanced_parameters":
            assert vars(shown[name]) == vars(value)
        else:
            assert shown[name] == value, name
    assert "ov.Core().read_model('/models/float/openvino_model.xml')" in code
    assert ("nncf.Dataset(" in code) == config.is_data_aware


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_optimum_cli_code_uses_optimum_flags(config: CompressionConfig) -> None:
    argv = _argv(compression_code(config).optimum_cli)
    assert argv[:3] == ["optimum-cli", "export", "openvino"]
    assert argv[argv.index("--weight-format") + 1] == config.mode.value.split("_")[0]
    assert ("--sym" in argv) == config.mode.value.endswith("_sym")
    assert ("--awq" in argv) == config.awq and ("--gptq" in argv) == config.gptq
    assert ("--dataset" in argv) == config.is_data_aware
    if not config.mode.is_int8:
        assert argv[argv.index("--ratio") + 1] == f"{config.ratio:g}"


def test_long_commands_wrap_before_an_option() -> None:
    config = CONFIGS[-2]
    cli = compression_code(config).cli
    lines = cli.split(" \\\n")
    assert len(lines) > 1 and all(line.startswith("    --") for line in lines[1:])
    assert max(len(line) for line in lines) <= 100


def test_only_non_default_fields_are_written() -> None:
    assert non_default_fields(CompressionConfig()) == {}
    assert non_default_fields(CompressionConfig(ratio=0.8, awq=True)) == {"ratio": 0.8, "awq": True}
    assert "config = nbkit.CompressionConfig(mode='int4_sym')" in compression_code(CompressionConfig()).python


def test_paths_with_spaces_are_quoted() -> None:
    code = compression_code(CompressionConfig(group_size=64), "/data/my models/tiny")
    assert shlex.split(code.cli)[2] == "/data/my models/tiny"
