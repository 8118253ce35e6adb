"""The nbkit command line on the tiny random Llama: exit codes, one-sentence errors, every command.

Most commands run in-process through ``nbkit.cli.main.main`` (fast, with capsys); a few run as
``python -m nbkit`` subprocesses to check the real exit status and that stderr is one line
with no traceback. Exports and compressions hit the cache folder test_pipeline.py and
test_chat.py share.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nbkit import Cache, CompressionConfig, OVModel, compress, export_openvino
from nbkit.cli.main import main
from nbkit.errors import NbkitError
from nbkit.infra.cache import MANIFEST_NAME

SHARED_CACHE = "nbkit-shared-tiny-cache"  # the same folder test_pipeline.py and test_chat.py use
MODES = ("int8_sym", "int8_asym", "int4_sym", "int4_asym", "nf4")

cli_module = importlib.import_module("nbkit.cli.main")
compress_module = importlib.import_module(
    "nbkit.compression.weights"
)  # ``nbkit.compression.weights`` is the function
inference_module = importlib.import_module(
    "nbkit.engines.openvino.engine"
)  # where the engine finds ChatSession


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / SHARED_CACHE


@pytest.fixture(scope="module")
def int4_model(shared_cache: Path, tiny_hf_model: Path) -> OVModel:
    cache = Cache(shared_cache)
    float_model = export_openvino(tiny_hf_model, cache=cache)
    return compress(float_model, CompressionConfig(mode="int4_sym", group_size=32), cache=cache)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_process(
    *argv: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nbkit", *map(str, argv)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def assert_one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("nbkit: ")
    return lines[0]


def no_call(what: str):  # type: ignore[no-untyped-def]
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{what} ran although the command should have stopped before")

    return fail


# -- errors: exit codes and messages -----------------------------------------------------------


def test_wrong_path_exits_1_with_one_sentence(tmp_path: Path) -> None:
    result = run_process("--cache-dir", tmp_path / "cache", "export", "./no/such/folder", cwd=tmp_path)
    assert result.returncode == 1
    line = assert_one_sentence(result.stderr)
    assert line.startswith("nbkit: error: ")
    assert "./no/such/folder" in line and "hub id" in line
    assert result.stdout == ""
    assert not (tmp_path / "cache" / "openvino-float").exists()


def test_unknown_mode_exits_2_listing_the_modes(
    tmp_path: Path, shared_cache: Path, tiny_hf_model: Path
) -> None:
    result = run_process(
        "--cache-dir", shared_cache, "-q", "compress", tiny_hf_model, "--mode", "int9", cwd=tmp_path
    )
    assert result.returncode == 2
    line = assert_one_sentence(result.stderr)
    assert "int9" in line
    for mode in MODES:
        assert mode in line


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--ratio", "1.5"], r"ratio must be in \[0, 1\].*1\.5"),
        (["--ratio", "-0.1"], r"ratio must be in \[0, 1\]"),
        (["--mode", "int9"], "int8_sym, int8_asym, int4_sym, int4_asym, nf4"),
        (["--mode", "int8_asym", "--group-size", "32"], "per-channel"),
        (["--backup-mode", "int2"], "backup_mode"),
        (["--group-size-fallback", "maybe"], "group_size_fallback"),
        (["--awq", "--gptq"], "AWQ and GPTQ cannot be combined"),
        (["--mode", "int8_asym", "--awq"], "apply to 4-bit modes"),
        (["--mode", "int8_sym", "--all-layers"], "all_layers applies to 4-bit modes only"),
        (["--sensitivity-metric", "loudness"], "sensitivity_metric"),
        (["--awq", "--calibration-samples", "0"], "calibration_samples must be a positive integer"),
    ],
)
def test_invalid_flags_exit_2_before_any_export(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flags: list[str],
    match: str,
) -> None:
    # No model argument: the default bundled model would take minutes to convert and export.
    monkeypatch.setattr(cli_module, "_export", no_call("the export"))
    code, out, err = run(capsys, "--cache-dir", tmp_path / "cache", "-q", "compress", *flags)
    assert code == 2
    line = assert_one_sentence(err)
    assert line.startswith("nbkit: invalid configuration: ")
    assert re.search(match, line), line
    assert out == ""
    assert not (tmp_path / "cache").exists()


def test_sweep_refuses_bad_options_once_before_any_export(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli_module, "_export", no_call("the export"))
    code, out, err = run(capsys, "--cache-dir", tmp_path / "cache", "-q", "sweep", "--awq", "--gptq")
    assert code == 2 and out == ""
    assert "AWQ and GPTQ cannot be combined" in assert_one_sentence(err)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}),
        (["--hint", "throughput"], {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}),
        (["--hint", "DEFAULT"], {"INFERENCE_PRECISION_HINT": "f32"}),
        (
            ["--property", "INFERENCE_PRECISION_HINT=bf16"],
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"},
        ),
        (["--device", "GPU"], {"PERFORMANCE_HINT": "LATENCY"}),
    ],
)
def test_runtime_flags_keep_nbkit_precision_unless_told(flags: list[str], expected: dict[str, Any]) -> None:
    args = cli_module.build_parser().parse_args(["chat", *flags])
    runtime = cli_module._runtime(args, cli_module._engine(args))
    assert runtime.property_dict == expected


def test_data_aware_flags_reach_the_config() -> None:
    args = cli_module.build_parser().parse_args(
        [
            "compress",
            "--group-size", "64",
            "--ratio", "0.8",
            "--awq",
            "--scale-estimation",
            "--sensitivity-metric", "max_activation_variance",
            "--calibration-samples", "8",
            "--calibration-tokens", "64",
        ]
    )  # fmt: skip
    assert cli_module._compression_config(args) == CompressionConfig(
        group_size=64,
        ratio=0.8,
        awq=True,
        scale_estimation=True,
        sensitivity_metric="max_activation_variance",
        calibration_samples=8,
        calibration_tokens=64,
    )


def test_group_size_64_exits_2_naming_the_valid_sizes(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    shared_cache: Path,
    tiny_hf_model: Path,
    int4_model: OVModel,
) -> None:
    monkeypatch.setattr(compress_module, "run_isolated", no_call("NNCF"))
    entries_before = [e.path for e in Cache(shared_cache).entries()]
    code, out, err = run(
        capsys, "--cache-dir", shared_cache, "-q", "compress", tiny_hf_model, "--group-size", "64"
    )
    assert code == 2
    line = assert_one_sentence(err)
    assert re.search(r"valid group sizes for this model: 16, 32\b", line), line
    assert out == ""
    assert [e.path for e in Cache(shared_cache).entries()] == entries_before


def test_bad_group_size_text_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--cache-dir", str(tmp_path), "compress", "--group-size", "big"])
    assert caught.value.code == 2
    assert "group size must be an integer, 'auto' or 'none'" in capsys.readouterr().err


def test_unknown_device_exits_1_naming_cpu(capsys: pytest.CaptureFixture[str], int4_model: OVModel) -> None:
    code, out, err = run(capsys, "-q", "chat", int4_model.path, "--device", "TPU", "--prompt", "hi")
    assert code == 1
    line = assert_one_sentence(err)
    assert "TPU" in line and "CPU" in line
    assert out == ""


def test_hub_id_offline_exits_1_fast_with_the_alternatives(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_process(
        "--cache-dir",
        tmp_path / "cache",
        "export",
        "nbkit-tests/no-such-model",
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    line = assert_one_sentence(result.stderr)
    assert "nbkit-tests/no-such-model" in line and "HF_HUB_OFFLINE" in line
    assert "offline" in line and "smollm2-135m-instruct" in line and ".gguf" in line and "folder" in line
    assert elapsed < 60


class ExportStarted(Exception):
    """Raised by a stand-in for the export: the command began minutes of work."""


def refuse_export(*args: object, **kwargs: object) -> None:
    raise ExportStarted("the export started before the flags were checked")


@pytest.mark.parametrize(
    "flags",
    [["--device", "TPU"], ["--max-new-tokens", "0"], ["--top-p", "2"]],
    ids=["device", "tokens", "top-p"],
)
def test_chat_flag_errors_come_before_the_export(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_hf_model: Path,
    flags: list[str],
) -> None:
    monkeypatch.setattr(cli_module, "_export", refuse_export)
    code, _, err = run(
        capsys, "--cache-dir", tmp_path / "cache", "-q", "chat", tiny_hf_model, "--prompt", "hi", *flags
    )
    assert code in (1, 2)
    assert_one_sentence(err)


def test_temperature_zero_is_greedy_or_rejected(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, int4_model: OVModel
) -> None:
    captured: list[Any] = []

    class SpySession:
        def __init__(self, path: Path, runtime: Any, settings: Any, **kwargs: Any) -> None:
            captured.append(settings)
            raise NbkitError("spy session: stop before loading")

    monkeypatch.setattr(inference_module, "ChatSession", SpySession)
    code, _, err = run(capsys, "-q", "chat", int4_model.path, "--prompt", "hi", "--temperature", "0")
    if code == 2:  # rejected as a configuration error: fine
        assert "temperature" in err
        return
    assert len(captured) == 1, err
    settings = captured[0]
    assert not settings.do_sample, f"--temperature 0 became {settings}"


# -- working commands --------------------------------------------------------------------------


def test_chat_one_prompt_exits_0(tmp_path: Path, int4_model: OVModel) -> None:
    result = run_process(
        "-q", "chat", int4_model.path, "--prompt", "hi", "--max-new-tokens", "5", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    stats = re.search(r"\[(\d+) tokens, TTFT \d+ ms, [\d.]+ tokens/s\]", result.stderr)
    assert stats, result.stderr
    assert 1 <= int(stats.group(1)) <= 5
    if "stopped at the token limit of 5" in result.stderr:  # said only of an answer the limit cut
        assert int(stats.group(1)) == 5


def test_chat_interactive_loop(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, int4_model: OVModel
) -> None:
    transcript = tmp_path / "chat.json"
    lines = iter(["", "first message", "/reset", "second message", f"/save {transcript}", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, _, err = run(
        capsys, "-q", "chat", int4_model.path, "--max-new-tokens", "4", "--system", "Be brief."
    )
    assert code == 0, err
    assert "(new conversation)" in err and f"(saved {transcript})" in err
    data = json.loads(transcript.read_text())
    assert [t["prompt"] for t in data["turns"]] == ["second message"]  # /reset dropped the first
    assert data["system_prompt"] == "Be brief."
    assert data["settings"]["max_new_tokens"] == 4


def test_export_prints_the_folder(
    capsys: pytest.CaptureFixture[str], shared_cache: Path, tiny_hf_model: Path
) -> None:
    code, out, err = run(capsys, "--cache-dir", shared_cache, "-q", "export", tiny_hf_model)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "float-fp32" in lines[0] and "MiB" in lines[0]
    folder = Path(lines[-1])
    assert folder.is_dir() and folder.is_relative_to(shared_cache)
    assert (folder / "openvino_model.xml").is_file() and (folder / MANIFEST_NAME).is_file()


def test_compress_auto_group_size_picks_32(
    capsys: pytest.CaptureFixture[str], shared_cache: Path, tiny_hf_model: Path, int4_model: OVModel
) -> None:
    code, out, err = run(capsys, "--cache-dir", shared_cache, "-q", "compress", tiny_hf_model)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "int4_sym-g32-r1" in lines[0] and "smaller than float-fp32" in lines[0] and "int4" in lines[0]
    assert Path(lines[-1]) == int4_model.path  # the same entry the API built


def _fill(cache: Cache) -> None:
    """Two small fake entries and one folder without manifest (not nbkit's)."""
    for kind, name in (("openvino-float", "alpha"), ("openvino-compressed", "beta")):

        def build(folder: Path, name: str = name) -> dict[str, str]:
            (folder / "weights.bin").write_bytes(b"x" * 1024)
            return {"source_name": name, "label": f"{name}-label"}

        cache.get_or_build(kind, f"{name}-key".ljust(64, "0"), name, build)
    (cache.root / "openvino-float" / "interrupted-0123456789abcdef").mkdir()


def test_cache_path_list_and_clear(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "own-cache"
    _fill(Cache(root))

    code, out, _ = run(capsys, "--cache-dir", root, "cache", "path")
    assert (code, out.strip()) == (0, str(root))
    monkeypatch.setenv("NBKIT_CACHE_DIR", str(tmp_path / "from-env"))
    code, out, _ = run(capsys, "cache", "path")
    assert (code, out.strip()) == (0, str(tmp_path / "from-env"))

    code, out, _ = run(capsys, "--cache-dir", root, "cache", "list")
    assert code == 0
    assert "alpha-label" in out and "beta-label" in out
    assert f"2 entries, 0.0 MiB in {root}" in out
    # A folder without a manifest is not nbkit's: never called an interrupted build.
    assert "not nbkit's:" in out and "interrupted-0123456789abcdef" in out
    assert "clear --incomplete" not in out

    code, out, _ = run(capsys, "--cache-dir", root, "cache", "list", "--kind", "openvino-compressed")
    assert "beta-label" in out and "alpha-label" not in out and "1 entries" in out

    # Without a terminal and without --yes, clear only lists what it would remove.
    code, out, _ = run(capsys, "--cache-dir", root, "cache", "clear")
    assert code == 0
    assert out.count("remove: ") == 2 and "Would remove 2 folder(s)" in out and "--yes" in out
    assert len(Cache(root).entries()) == 2

    code, out, _ = run(capsys, "--cache-dir", root, "cache", "clear", "--yes")
    assert code == 0
    assert f"Removed 2 folder(s), 0.0 MiB, from {root}" in out
    assert Cache(root).entries() == []
    assert (root / "openvino-float" / "interrupted-0123456789abcdef").is_dir()  # left alone

    code, out, _ = run(capsys, "--cache-dir", root, "cache", "list")
    assert "0 entries" in out


def test_models_lists_bundled_and_cached(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_cache: Path, int4_model: OVModel
) -> None:
    code, out, _ = run(capsys, "--cache-dir", tmp_path / "empty", "models")
    assert code == 0
    assert "Bundled models" in out and "smollm2-135m-instruct" in out
    assert "Nothing in the cache yet" in out

    code, out, _ = run(capsys, "--cache-dir", shared_cache, "models")
    assert code == 0
    assert "In the cache:" in out
    assert str(int4_model.path) in out and "int4_sym-g32-r1" in out


def test_devices_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "devices")
    assert code == 0
    assert re.search(r"^CPU\s+\S", out, re.MULTILINE), out
    assert "AUTO" in out

    code, out, _ = run(capsys, "devices", "--json")
    assert code == 0
    devices = json.loads(out)
    cpu = next(d for d in devices if d["name"] == "CPU")
    assert cpu["full_name"] and isinstance(cpu["properties"], dict)


def test_doctor_passes_in_this_environment(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "--cache-dir", tmp_path, "doctor")
    assert code == 0, out + err
    assert "MISSING" not in out
    assert "devices: CPU" in out
    assert f"cache: {tmp_path}" in out


def test_doctor_warns_when_the_cache_disk_is_nearly_full(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbkit.infra import disk

    monkeypatch.setattr(disk, "free_bytes", lambda folder: 300 * 2**20)
    code, out, err = run(capsys, "--cache-dir", tmp_path, "doctor")
    assert code == 0, out + err  # a warning, not a broken installation
    assert f"cache: {tmp_path} (300.0 MiB free)" in out
    assert "warning: the quickstart on the bundled model writes about 1.1 GiB" in err
    assert "NBKIT_CACHE_DIR" in err


def test_doctor_is_quiet_about_a_roomy_disk(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbkit.infra import disk

    monkeypatch.setattr(disk, "free_bytes", lambda folder: 50 * 2**30)
    code, out, err = run(capsys, "--cache-dir", tmp_path, "doctor")
    assert code == 0 and "(50.0 GiB free)" in out and "warning" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import nbkit

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"nbkit {nbkit.__version__}"


def test_every_command_of_the_parser_has_a_handler() -> None:
    import argparse

    parser = cli_module.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(commands.choices) == sorted(cli_module.COMMANDS)
