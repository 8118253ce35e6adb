"""Bad input gives one nbkit error sentence, never a traceback, and changes nothing on disk (issue #10).

One section per probe of the review: malformed ``config.json`` files, text that is not UTF-8,
an empty ``--prompt``, impossible generation settings and chat messages, runtime options
refused before any work, missing paths that look like hub ids, and answers cut in the middle
of a character. Everything runs on the tiny random Llama of ``conftest`` or on fakes.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nbkit import Cache, ChatSession, CompressionConfig, GenerationSettings, OVModel, RuntimeConfig, compress
from nbkit.cli.main import main
from nbkit.engines.base import CutCharacterGuard, clean_message
from nbkit.engines.openvino.chat import generation_config
from nbkit.engines.openvino.runtime import check_runtime
from nbkit.errors import ConfigError, DeviceError, ModelSourceError, NbkitError, OfflineError
from nbkit.sources.architecture import read_architecture
from nbkit.sources.models import HubModel, LocalFolder, resolve_source

cli_module = importlib.import_module("nbkit.cli.main")
export_module = importlib.import_module("nbkit.engines.openvino.export")
olive_module = importlib.import_module("nbkit.engines.ort.olive")

NOT_UTF8 = b"caf\xe9 \xff"
AS_PYTHON_SEES_IT = NOT_UTF8.decode("utf-8", "surrogateescape")  # how sys.argv holds it
REPLACED = "caf\ufffd \ufffd"


# -- helpers ---------------------------------------------------------------------------------


def assert_one_sentence(message: str) -> str:
    """``message`` is a single line, no traceback, one sentence ending with a full stop."""
    text = message.strip()
    assert "\n" not in text, message
    assert "Traceback" not in text
    assert text.endswith("."), text
    # a second sentence would start after ". " with a capital letter
    assert not re.search(r"[.!?] +[A-Z]", text), text
    return text


def cli_error(stderr: str) -> str:
    """The one line the CLI printed on stderr for an error."""
    line = assert_one_sentence(stderr)
    assert line.startswith("nbkit: "), line
    return line


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: compare before and after to see a change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def no_call(what: str) -> Callable[..., Any]:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{what} ran although the command should have stopped before")

    return fail


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any export, compression, Olive build or model load fails the test."""
    monkeypatch.setattr(cli_module, "_export", no_call("the export"))
    monkeypatch.setattr(cli_module, "_compressed", no_call("the compression"))
    monkeypatch.setattr(export_module, "export_openvino", no_call("export_openvino"))
    monkeypatch.setattr(olive_module, "export_olive", no_call("the Olive export"))
    monkeypatch.setattr(olive_module, "open_chat", no_call("the ONNX Runtime GenAI session"))
    monkeypatch.setattr(
        importlib.import_module("nbkit.engines.openvino.chat"), "ChatSession", no_call("the model load")
    )


@pytest.fixture(scope="module")
def int4_model(cache: Cache, float_model: OVModel) -> OVModel:
    return compress(float_model, CompressionConfig(mode="int4_sym", group_size=32), cache=cache)


@pytest.fixture(scope="module")
def session(int4_model: OVModel) -> ChatSession:
    return ChatSession(int4_model, settings=GenerationSettings(max_new_tokens=4, min_new_tokens=4))


@pytest.fixture
def chat(session: ChatSession) -> Iterator[ChatSession]:
    session.reset()
    session.system_prompt = None
    yield session
    session.reset()
    session.system_prompt = None


# -- 1, 2: a malformed config.json -----------------------------------------------------------

BAD_CONFIGS: dict[str, tuple[str, str]] = {
    # id: (what replaces config.json, what the message must name)
    "list": ("[]", r"holds a JSON list"),
    "string": ('"llama"', r"holds a JSON string"),
    "not-json": ("model_type = llama", r"is not valid JSON"),
    "truncated": ('{"model_type": "llama", "hidden_size": 6', r"is not valid JSON"),
    "hidden-size-text": ('hidden_size="abc"', r"hidden_size must be a positive whole number, not 'abc'"),
    "hidden-size-negative": ("hidden_size=-64", r"hidden_size must be a positive whole number, not -64"),
    "layers-zero": ("num_hidden_layers=0", r"num_hidden_layers must be a positive whole number, not 0"),
    "layers-bool": ("num_hidden_layers=true", r"num_hidden_layers must be a positive whole number, not True"),
    "context-fraction": (
        "max_position_embeddings=256.5",
        r"max_position_embeddings must be a positive whole number, not 256\.5",
    ),
    "tie-text": ('tie_word_embeddings="yes"', r"tie_word_embeddings must be true or false, not 'yes'"),
    "no-model-type": ("model_type=null", r"has no model_type"),
    "model-type-number": ("model_type=7", r"has model_type 7"),
    "text-config-list": ("text_config=[]", r"text_config that is a JSON list"),
}


def write_bad_config(folder: Path, change: str) -> None:
    """Replace ``config.json``: as given, or with one ``field=json`` changed in the tiny model's."""
    path = folder / "config.json"
    field, sep, value = change.partition("=")
    if not sep or " " in field:
        path.write_text(change)
        return
    config = json.loads(path.read_text())
    config[field] = json.loads(value)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("case", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_config_json_is_one_model_source_sentence(tiny_hf_model_copy: Path, case: str) -> None:
    change, expected = BAD_CONFIGS[case]
    write_bad_config(tiny_hf_model_copy, change)
    before = files_of(tiny_hf_model_copy)
    with pytest.raises(ModelSourceError) as info:
        read_architecture(tiny_hf_model_copy)
    message = assert_one_sentence(str(info.value))
    assert str(tiny_hf_model_copy / "config.json") in message
    assert re.search(expected, message), message
    assert files_of(tiny_hf_model_copy) == before


@pytest.mark.parametrize("case", ["list", "hidden-size-text", "not-json"])
def test_cli_export_of_a_bad_config_exits_1_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_hf_model_copy: Path, case: str
) -> None:
    change, expected = BAD_CONFIGS[case]
    write_bad_config(tiny_hf_model_copy, change)
    before = files_of(tiny_hf_model_copy)
    code, out, err = run(capsys, "--cache-dir", tmp_path / "cache", "-q", "export", tiny_hf_model_copy)
    assert code == 1 and out == ""
    line = cli_error(err)
    assert line.startswith("nbkit: error: ") and "config.json" in line
    assert re.search(expected, line), line
    assert files_of(tiny_hf_model_copy) == before
    assert Cache(tmp_path / "cache").entries() == []


def test_well_formed_variants_still_read(tiny_hf_model_copy: Path) -> None:
    # Whole floats (some converters write 2048.0) and a nested text_config that leaves
    # model_type to the outer config are valid, not refused by the new checks.
    config = json.loads((tiny_hf_model_copy / "config.json").read_text())
    model_type = config.pop("model_type")
    config["max_position_embeddings"] = 256.0
    (tiny_hf_model_copy / "config.json").write_text(
        json.dumps({"model_type": model_type, "text_config": config})
    )
    facts = read_architecture(tiny_hf_model_copy)
    assert (facts.model_type, facts.context_length, facts.hidden_size) == (model_type, 256, 64)


def test_chat_on_a_folder_with_a_bad_config_is_a_model_source_error(
    tmp_path: Path, int4_model: OVModel
) -> None:
    folder = shutil.copytree(int4_model.path, tmp_path / "model")
    (folder / "config.json").write_text("[]")
    before = files_of(folder)
    with pytest.raises(ModelSourceError) as info:
        ChatSession(folder)
    assert "config.json holds a JSON list" in assert_one_sentence(str(info.value))
    assert files_of(folder) == before


# -- 3: text that is not UTF-8 -----------------------------------------------------------------


def test_clean_message_replaces_undecodable_bytes_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nbkit"):
        assert clean_message(AS_PYTHON_SEES_IT) == REPLACED
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "not valid UTF-8" in record.getMessage() and "U+FFFD" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nbkit"):
        # a lone surrogate that stands for no byte (from JSON or a widget) is replaced too
        assert clean_message("a\ud83d b") == "a\ufffd b"
        assert clean_message("plain café") == "plain café"
    assert len(caplog.records) == 1  # valid text passes without a warning


def test_openvino_session_takes_bytes_that_are_not_utf8(
    chat: ChatSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="nbkit"):
        turn = chat.send(AS_PYTHON_SEES_IT)
    assert turn.prompt == REPLACED and chat.messages[0] == {"role": "user", "content": REPLACED}
    assert any("not valid UTF-8" in r.getMessage() for r in caplog.records)
    # the system prompt passes the same place
    chat.system_prompt = AS_PYTHON_SEES_IT
    assert chat.system_prompt == REPLACED
    assert chat.count_prompt_tokens(AS_PYTHON_SEES_IT) > 0


def test_cli_chat_with_a_prompt_that_is_not_utf8(tmp_path: Path, int4_model: OVModel) -> None:
    before = files_of(int4_model.path)
    # bytes in argv, as a shell passes $'caf\xe9 \xff'
    result = subprocess.run(
        [
            sys.executable.encode(),
            b"-m",
            b"nbkit",
            b"-q",
            b"chat",
            bytes(int4_model.path),
            b"--prompt",
            NOT_UTF8,
            b"--max-new-tokens",
            b"3",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr
    warnings = [line for line in stderr.splitlines() if "UTF-8" in line]
    assert len(warnings) == 1, stderr  # said once, although the CLI and send() both check
    assert warnings[0].startswith("WARNING nbkit") and "replaced by U+FFFD" in warnings[0], stderr
    assert files_of(int4_model.path) == before


def test_cli_interactive_chat_with_a_line_that_is_not_utf8(tmp_path: Path, int4_model: OVModel) -> None:
    # Strict stdin, as Python reads it under a locale such as en_US.UTF-8: a stray byte used to
    # end the chat with a UnicodeDecodeError traceback out of input().
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    result = subprocess.run(
        [sys.executable, "-m", "nbkit", "-q", "chat", str(int4_model.path), "--max-new-tokens", "3"],
        cwd=tmp_path,
        env=env,
        input=NOT_UTF8 + b"\n/exit\n",
        capture_output=True,
        timeout=300,
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr and "not valid UTF-8" in stderr
    assert re.search(r"\[3 tokens, TTFT", stderr), stderr  # the line was answered


# -- 4: an empty --prompt ----------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   "], ids=["empty", "blank"])
def test_cli_empty_prompt_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_hf_model: Path,
    no_work: None,
    prompt: str,
) -> None:
    code, out, err = run(
        capsys, "--cache-dir", tmp_path / "cache", "-q", "chat", tiny_hf_model, "--prompt", prompt
    )
    assert code == 2 and out == ""
    assert cli_error(err) == "nbkit: invalid configuration: The message is empty; type a question first."
    assert not (tmp_path / "cache").exists()


def test_cli_empty_quickstart_question_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        importlib.import_module("nbkit.cli.quickstart"), "quickstart", no_call("the quickstart")
    )
    code, _, err = run(capsys, "--cache-dir", tmp_path / "cache", "-q", "quickstart", "--question", "")
    assert code == 2
    assert "The question is empty" in cli_error(err)


# -- 5: generation settings and messages from Python -------------------------------------------

BAD_SETTINGS: list[tuple[str, Any, str]] = [
    # field, value, what the message must say
    ("max_new_tokens", math.nan, r"must be a whole number \(int\), not nan"),
    ("max_new_tokens", math.inf, r"must be a whole number \(int\), not inf"),
    ("max_new_tokens", "5", r"must be a whole number \(int\), not the string '5'"),
    ("max_new_tokens", 5.0, r"must be a whole number \(int\), not 5\.0"),
    ("max_new_tokens", True, r"must be a whole number \(int\), not True"),
    ("max_new_tokens", None, r"must be a whole number \(int\), not None"),
    ("max_new_tokens", 0, r"must be at least 1, not 0"),
    ("min_new_tokens", "0", r"must be a whole number \(int\), not the string '0'"),
    ("min_new_tokens", -1, r"must be between 0 and max_new_tokens \(128\), not -1"),
    ("min_new_tokens", False, r"not False"),
    ("do_sample", "no", r"must be True or False, not the string 'no'"),
    ("do_sample", 1, r"must be True or False, not 1"),
    ("do_sample", None, r"must be True or False, not None"),
    ("temperature", "0.7", r"must be a finite number \(float\), not the string '0\.7'"),
    ("temperature", math.nan, r"must be a finite number \(float\), not nan"),
    ("temperature", math.inf, r"not inf"),
    ("temperature", True, r"not True"),
    ("top_p", "0.9", r"must be a finite number \(float\), not the string '0\.9'"),
    ("top_p", -math.inf, r"not -inf"),
    ("top_p", 2, r"must be in \(0, 1\], not 2\.0"),
    ("top_k", 1.5, r"must be a whole number \(int\), not 1\.5"),
    ("top_k", "50", r"not the string '50'"),
    ("top_k", True, r"not True"),
    ("repetition_penalty", "1", r"must be a finite number \(float\), not the string '1'"),
    ("repetition_penalty", math.nan, r"not nan"),
    ("repetition_penalty", 0, r"must be > 0"),
    ("seed", "7", r"must be a whole number \(int\) or None, not the string '7'"),
    ("seed", -1, r"must be between 0 and 2147483647 \(or None\), not -1"),
    ("seed", 1.5, r"not 1\.5"),
    ("seed", True, r"not True"),
    ("seed", 2**40, r"must be between 0 and 2147483647 \(or None\), not 1099511627776"),
]


@pytest.mark.parametrize(
    ("field", "value", "expected"), BAD_SETTINGS, ids=[f"{f}={v!r}" for f, v, _ in BAD_SETTINGS]
)
def test_every_generation_field_is_checked(field: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        GenerationSettings(**{field: value})
    message = assert_one_sentence(str(info.value))
    assert message.startswith(field), message
    assert re.search(expected, message), message


def test_numpy_numbers_are_plain_settings() -> None:
    # Widgets and notebooks hand numpy scalars; they are numbers, stored as Python ones.
    settings = GenerationSettings(
        max_new_tokens=np.int64(8), top_k=np.int32(5), temperature=np.float32(0.5), do_sample=np.bool_(True)
    )
    assert settings == GenerationSettings(max_new_tokens=8, top_k=5, temperature=0.5, do_sample=True)
    assert type(settings.max_new_tokens) is int and type(settings.do_sample) is bool


BAD_MESSAGES = [None, 123, b"hi", ["hi"], "", " \n\t"]
BAD_MESSAGE_IDS = ["None", "int", "bytes", "list", "empty", "blank"]


def assert_bad_message_refused(session: Any, message: Any) -> None:
    with pytest.raises(ConfigError) as info:
        session.send(message)
    text = assert_one_sentence(str(info.value))
    assert text.startswith("The message "), text
    assert ("empty" in text) if isinstance(message, str) else ("must be text (a str)" in text)
    assert session.turns == [] and session.messages == [] and not session.busy


@pytest.mark.parametrize("message", BAD_MESSAGES, ids=BAD_MESSAGE_IDS)
def test_openvino_send_refuses_what_is_not_a_message(chat: ChatSession, message: Any) -> None:
    assert_bad_message_refused(chat, message)


def test_send_refuses_settings_of_the_wrong_type(chat: ChatSession) -> None:
    with pytest.raises(ConfigError, match=r"settings must be a GenerationSettings, not a dict\."):
        chat.send("Hi", settings={"max_new_tokens": 4})  # type: ignore[arg-type]
    assert chat.turns == [] and not chat.busy


# -- 6: runtime options are refused before any work --------------------------------------------

BAD_RUNTIME_FLAGS: dict[str, tuple[list[str], int, str]] = {
    # id: (flags, exit code, what the message must name)
    "hint": (["--hint", "FAST"], 2, r"--hint must be .*DEFAULT.*not 'FAST'"),
    "hint-property": (
        ["-p", "PERFORMANCE_HINT=FAST"],
        2,
        r"PERFORMANCE_HINT must be .*not the string 'FAST'",
    ),
    "precision": (["-p", "INFERENCE_PRECISION_HINT=f64"], 2, r"INFERENCE_PRECISION_HINT must be one of"),
    "threads": (["-p", "INFERENCE_NUM_THREADS=-1"], 2, r"INFERENCE_NUM_THREADS must be .* not -1"),
    "streams": (["-p", "NUM_STREAMS=lots"], 2, r"NUM_STREAMS must be .*AUTO or NUMA, not the string 'lots'"),
    "switch": (["-p", "ENABLE_HYPER_THREADING=maybe"], 2, r"ENABLE_HYPER_THREADING must be true or false"),
    "unknown-property": (
        ["-p", "FOO=1"],
        2,
        r"CPU has no OpenVINO property 'FOO'; the ones it takes are .*NUM_STREAMS",
    ),
    "value-the-device-refuses": (
        ["-p", "KV_CACHE_PRECISION=i8"],
        2,
        r"CPU does not accept KV_CACHE_PRECISION='i8' \(.*Supported values",
    ),
    "device": (["--device", "GPU.7"], 1, r"Unknown device 'GPU\.7'"),
    "olive-device": (["--engine", "olive", "--device", "GPU"], 1, r"CPU only.*not 'GPU'"),
    "tokens": (["--max-new-tokens", "0"], 2, r"max_new_tokens must be .* not 0"),
}


@pytest.mark.parametrize("case", list(BAD_RUNTIME_FLAGS), ids=list(BAD_RUNTIME_FLAGS))
def test_cli_chat_refuses_runtime_options_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_hf_model: Path, no_work: None, case: str
) -> None:
    flags, exit_code, expected = BAD_RUNTIME_FLAGS[case]
    before = files_of(tiny_hf_model)
    code, out, err = run(
        capsys, "--cache-dir", tmp_path / "cache", "-q", "chat", tiny_hf_model, "--prompt", "hi", *flags
    )
    assert (code, out) == (exit_code, "")
    line = cli_error(err)
    assert re.search(expected, line), line
    assert not (tmp_path / "cache").exists()
    assert files_of(tiny_hf_model) == before


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--device", "TPU"], r"Unknown device 'TPU'"), (["--tokens", "0"], r"--tokens must be at least 1")],
    ids=["device", "tokens"],
)
def test_cli_tune_device_refuses_its_options_before_compressing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_hf_model: Path,
    no_work: None,
    flags: list[str],
    expected: str,
) -> None:
    code, _, err = run(capsys, "--cache-dir", tmp_path / "cache", "-q", "tune-device", tiny_hf_model, *flags)
    assert code in (1, 2)
    assert re.search(expected, cli_error(err))
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        (
            {"PERFORMANCE_HINT": "FAST"},
            r"PERFORMANCE_HINT must be LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT",
        ),
        ({"INFERENCE_NUM_THREADS": 2.5}, r"INFERENCE_NUM_THREADS must be a whole number"),
        ({"NUM_STREAMS": True}, r"NUM_STREAMS must be"),
        ({"INFERENCE_PRECISION_HINT": "f8"}, r"INFERENCE_PRECISION_HINT must be one of f32, f16, bf16, i8"),
        ({"KV_CACHE_PRECISION": 8}, r"KV_CACHE_PRECISION must be a precision name"),
        ({"CACHE_DIR": ["a"]}, r"must be a string, number or boolean"),
        ({"NUM_STREAMS": math.nan}, r"must be a finite value"),
        ({"bad key": 1}, r"property names are words"),
    ],
)
def test_runtime_config_checks_what_needs_no_device(properties: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeConfig.create("CPU", properties)
    assert re.search(expected, assert_one_sentence(str(info.value)))


def test_runtime_config_spells_values_the_way_openvino_takes_them() -> None:
    runtime = RuntimeConfig.create(
        "CPU",
        {"PERFORMANCE_HINT": "latency", "INFERENCE_PRECISION_HINT": "FP32", "INFERENCE_NUM_THREADS": "2"},
    )
    assert runtime.property_dict == {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": 2,
    }
    assert check_runtime(runtime) == "CPU"  # and the CPU plugin takes them


@pytest.mark.parametrize(
    ("properties", "error", "expected"),
    [
        ({"FOO": 1}, ConfigError, r"CPU has no OpenVINO property 'FOO'"),
        ({"FULL_DEVICE_NAME": "x"}, ConfigError, r"CPU does not accept FULL_DEVICE_NAME='x'"),
        ({"SCHEDULING_CORE_TYPE": "bogus"}, ConfigError, r"CPU does not accept SCHEDULING_CORE_TYPE='bogus'"),
    ],
)
def test_check_runtime_asks_the_device(
    properties: dict[str, Any], error: type[NbkitError], expected: str
) -> None:
    with pytest.raises(error) as info:
        check_runtime(RuntimeConfig.create("CPU", properties))
    assert re.search(expected, assert_one_sentence(str(info.value)))


def test_check_runtime_passes_pipeline_properties_and_unknown_devices_fail() -> None:
    # openvino-genai reads these itself (tune-device times ATTENTION_BACKEND): not the plugin's to judge
    assert (
        check_runtime(RuntimeConfig.create("CPU", {"ATTENTION_BACKEND": "SDPA", "CACHE_DIR": "x"})) == "CPU"
    )
    with pytest.raises(DeviceError, match=r"Unknown device 'GPU\.7'"):
        check_runtime(RuntimeConfig.create("GPU.7"))


def test_chat_session_checks_its_runtime_before_loading(int4_model: OVModel) -> None:
    with pytest.raises(ConfigError, match="CPU has no OpenVINO property 'FOO'"):
        ChatSession(int4_model, RuntimeConfig.create("CPU", {"FOO": 1}))
    with pytest.raises(ConfigError, match="runtime must be a RuntimeConfig, not a str"):
        ChatSession(int4_model, "CPU")  # type: ignore[arg-type]


# -- 7: paths that do not exist are not hub ids ------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current folder holding only ``fx/`` (as a fixtures folder would be)."""
    (tmp_path / "fx").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("fx/nothere", r"as the hub id 'fx/nothere' it would need the network .*because fx exists here"),
        ("./nothere/model", r"a hub id like 'organization/model' would need the network"),
        ("../nothere/model", r"a hub id like 'organization/model' would need the network"),
        ("a/b/c", r"a hub id like 'organization/model' would need the network"),
        ("org/model.gguf", r"because it ends in \.gguf"),
        ("model.gguf", r"a hub id like 'organization/model' would need the network"),
    ],
)
def test_missing_path_says_it_does_not_exist(workdir: Path, spec: str, why: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_source(spec)
    assert not isinstance(info.value, OfflineError)
    message = assert_one_sentence(str(info.value))
    assert message.startswith(
        f"The path {spec!r} does not exist (it resolves to {(workdir / spec).resolve()})"
    )
    assert re.search(why, message), message
    assert sorted(p.name for p in workdir.iterdir()) == ["fx"]


def test_cli_missing_relative_path_is_not_an_unreachable_hub_id(
    capsys: pytest.CaptureFixture[str], workdir: Path
) -> None:
    code, out, err = run(capsys, "--cache-dir", workdir / "cache", "-q", "export", "fx/nothere")
    assert (code, out) == (1, "")
    line = cli_error(err)
    assert f"does not exist (it resolves to {workdir / 'fx' / 'nothere'})" in line and "network" in line
    assert "Cannot download" not in line
    assert sorted(p.name for p in workdir.iterdir()) == ["fx"]


def test_plain_hub_id_offline_keeps_the_offline_message_and_says_no_folder_exists(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(workdir / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_source("nbkit-tests/bad-input")
    assert isinstance(source, HubModel)
    with pytest.raises(OfflineError) as info:
        source.hf_folder(Cache(workdir / "cache"))
    message = assert_one_sentence(str(info.value))
    assert message.startswith(
        "Cannot download 'nbkit-tests/bad-input': the hub is switched off (HF_HUB_OFFLINE"
    )
    assert f"there is no local folder {workdir / 'nbkit-tests' / 'bad-input'} either" in message
    assert "use a model that works offline instead" in message


def test_an_existing_folder_still_wins(workdir: Path, tiny_hf_model: Path) -> None:
    shutil.copytree(tiny_hf_model, workdir / "fx" / "model")
    assert isinstance(resolve_source("fx/model"), LocalFolder)


# -- 8: an answer cut in the middle of a character ---------------------------------------------


def test_guard_holds_back_only_a_trailing_replacement_character() -> None:
    guard = CutCharacterGuard()
    assert guard.feed("caf") == "caf"
    assert guard.feed("\ufffd") == ""  # maybe the first byte of "é": wait for more
    assert guard.feed("\ufffdx") == "\ufffd\ufffdx"  # text followed: it was no cut, show all of it
    assert guard.feed("y\ufffd") == "y"
    guard.finish()  # the stream ended: the held half character is dropped
    assert guard.feed("z") == "z"


class _FakePerf:
    """The perf_metrics of an openvino-genai result, with fixed numbers."""

    def __getattr__(self, name: str) -> Callable[[], Any]:
        if name in ("get_num_input_tokens", "get_num_generated_tokens"):
            return lambda: 4
        return lambda: types.SimpleNamespace(mean=1.0)


class _CuttingPipeline:
    """Streams ``pieces`` and returns their sum as the answer, as LLMPipeline does."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def generate(self, history: Any, config: Any, streamer: Callable[[str], Any]) -> Any:
        for piece in self.pieces:
            streamer(piece)
        return types.SimpleNamespace(texts=["".join(self.pieces)], perf_metrics=_FakePerf())


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["caf", "\ufffd"], "caf"),  # the streamer flushes the cut byte at the end
        (["Pa", "ris\ufffd\ufffd"], "Paris"),  # two bytes of a 3-byte character
        (["a\ufffdb", "c\ufffd"], "a\ufffdbc"),  # an invalid byte mid-answer is the model's, kept
    ],
)
def test_openvino_session_never_shows_half_a_character(
    chat: ChatSession, monkeypatch: pytest.MonkeyPatch, pieces: list[str], expected: str
) -> None:
    monkeypatch.setattr(chat, "pipeline", _CuttingPipeline(pieces))
    streamed: list[str] = []
    turn = chat.send("Hi", streamed.append)
    assert turn.text == expected == "".join(streamed)
    assert all(not piece.endswith("\ufffd") for piece in streamed)
    assert chat.messages[-1] == {"role": "assistant", "content": expected}


def test_real_pipeline_cuts_are_held_back(chat: ChatSession) -> None:
    """The tiny model, sampled hot, ends some answers in a cut character: nbkit never shows it."""
    import openvino_genai

    cut_seeds = []
    for seed in range(60):
        settings = GenerationSettings(
            max_new_tokens=6, min_new_tokens=6, do_sample=True, temperature=2.0, top_k=0, top_p=1.0, seed=seed
        )
        raw = chat.pipeline.generate(
            openvino_genai.ChatHistory([{"role": "user", "content": "Hi"}]), generation_config(settings)
        ).texts[0]
        if not raw.endswith("\ufffd"):
            continue
        cut_seeds.append(seed)
        chat.reset()
        streamed: list[str] = []
        turn = chat.send("Hi", streamed.append, settings=settings)
        assert turn.text == raw.rstrip("\ufffd") == "".join(streamed), (seed, raw)
        if len(cut_seeds) == 3:
            break
    # Without a cut answer among these seeds this test would prove nothing: say so.
    assert cut_seeds, "no seed made the tiny model end in a cut character; pick other sampling settings"


class _FakeOg:
    """Just enough of onnxruntime_genai for OrtChatSession: characters are tokens, 0 ends."""

    def __init__(self, answer: str) -> None:
        self.module = types.ModuleType("onnxruntime_genai")
        self.module.__spec__ = importlib.machinery.ModuleSpec("onnxruntime_genai", None)
        self.messages: list[list[dict[str, str]]] = []
        fake = self

        class Model:
            def __init__(self, path: str) -> None:
                pass

        class Tokenizer:
            def __init__(self, model: Model) -> None:
                pass

            def apply_chat_template(self, messages: str, **options: Any) -> str:
                fake.messages.append(json.loads(messages))
                return "".join(m["content"] for m in json.loads(messages))

            def encode(self, text: str) -> list[int]:
                return [ord(c) for c in text]

            def create_stream(self) -> Any:
                return types.SimpleNamespace(decode=lambda token: chr(token) if token else "")

        class GeneratorParams:
            def __init__(self, model: Model) -> None:
                pass

            def set_search_options(self, **options: Any) -> None:
                pass

        class Generator:
            def __init__(self, model: Model, params: GeneratorParams) -> None:
                self.queue = [ord(c) for c in answer] + [0]

            def append_tokens(self, ids: list[int]) -> None:
                pass

            def is_done(self) -> bool:
                return not self.queue

            def generate_next_token(self) -> None:
                self.current = self.queue.pop(0)

            def get_next_tokens(self) -> list[int]:
                return [self.current]

        for cls in (Model, Tokenizer, GeneratorParams, Generator):
            setattr(self.module, cls.__name__, cls)


@pytest.fixture
def ort_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ort-model"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 256}))
    return folder


def ort_session(monkeypatch: pytest.MonkeyPatch, folder: Path, answer: str) -> tuple[Any, _FakeOg]:
    from nbkit.engines.ort.chat import OrtChatSession

    fake = _FakeOg(answer)
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", fake.module)
    return OrtChatSession(folder, settings=GenerationSettings(max_new_tokens=20)), fake


def test_ort_session_never_shows_half_a_character(monkeypatch: pytest.MonkeyPatch, ort_folder: Path) -> None:
    session, _ = ort_session(monkeypatch, ort_folder, "Pari\ufffd")
    streamed: list[str] = []
    turn = session.send("Capital of France?", streamed.append)
    assert turn.text == "Pari" == "".join(streamed)
    assert session.messages[-1] == {"role": "assistant", "content": "Pari"}


def test_ort_session_cleans_and_checks_messages(
    monkeypatch: pytest.MonkeyPatch, ort_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session, fake = ort_session(monkeypatch, ort_folder, "ok")
    before = files_of(ort_folder)
    with caplog.at_level(logging.WARNING, logger="nbkit"):
        session.send(AS_PYTHON_SEES_IT)
    assert fake.messages[-1][-1] == {"role": "user", "content": REPLACED}
    assert any("not valid UTF-8" in r.getMessage() for r in caplog.records)
    session.reset()
    for message in BAD_MESSAGES:
        assert_bad_message_refused(session, message)
    assert files_of(ort_folder) == before
