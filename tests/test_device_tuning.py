"""Device tuning: candidate properties, timing them, the ledger record, and who uses the result.

Runs on the tiny random Llama. A tuning record changes what ``ChatSession(model)`` loads for
every later user of that cache, so every test here works on a private copy of the cache
test_pipeline.py shares (the models are copied, never re-exported) and never writes a tuning
record into the shared one.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import nbkit
import nbkit.engines.openvino.engine as openvino_engine
import nbkit.engines.openvino.runtime as runtime_module
import nbkit.engines.openvino.tuning as device_tuning
import nbkit.measure.evaluation as evaluation
import nbkit.measure.quality as quality_module
import nbkit.measure.speed as speed_module
import nbkit.measure.sweep as sweep
from nbkit import Cache, CompressionConfig, OVModel, compress, export_openvino
from nbkit.cli.main import main
from nbkit.config import RuntimeConfig
from nbkit.engines.openvino.runtime import DEFAULT_RUNTIME, tuned_runtime
from nbkit.engines.openvino.tuning import default_candidates, tune_device
from nbkit.engines.tuning_report import TUNING_KIND, CandidateTiming, DeviceTuning
from nbkit.errors import ConfigError, DeviceError, NbkitError
from nbkit.infra.ledger import LEDGER_NAME, Ledger
from nbkit.measure.evaluation import AnswerReport
from nbkit.measure.quality import QualityReport
from nbkit.measure.speed import SpeedReport

SHARED_CACHE = "nbkit-shared-tiny-cache"  # the folder test_pipeline.py exports the tiny model into
INT4_G32 = CompressionConfig(mode="int4_sym", group_size=32, ratio=1.0)  # what "auto" gives the tiny model

F32_LATENCY = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
LATENCY_ONE_STREAM = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
BOGUS = {"PERFORMANCE_HINT": "NOT_A_HINT"}
# Neither working candidate equals DEFAULT_RUNTIME, so using the tuned one is visible.
CANDIDATES: list[dict[str, Any]] = [{}, LATENCY_ONE_STREAM, BOGUS]


def private_cache(shared_root: Path, target: Path) -> Cache:
    """A copy of the shared cache's models without its ledger, locks or leftovers."""
    shutil.copytree(shared_root, target, ignore=shutil.ignore_patterns(".locks", ".tmp", "ledger.jsonl*"))
    return Cache(target)


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory, tiny_hf_model: Path) -> Path:
    cache = Cache(tmp_path_factory.getbasetemp() / SHARED_CACHE)
    compress(export_openvino(tiny_hf_model, cache=cache), INT4_G32, cache=cache)
    return cache.root


class Models(NamedTuple):
    cache: Cache
    float_model: OVModel
    int4_model: OVModel


def models_in(cache: Cache, tiny_hf_model: Path) -> Models:
    float_model = export_openvino(tiny_hf_model, cache=cache)  # cache hits in the copy
    int4_model = compress(float_model, INT4_G32, cache=cache)
    assert int4_model.cache_root == cache.root
    return Models(cache, float_model, int4_model)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, shared_root: Path, tiny_hf_model: Path) -> Models:
    return models_in(private_cache(shared_root, tmp_path_factory.mktemp("tuning") / "cache"), tiny_hf_model)


class Tuned(NamedTuple):
    tuning: DeviceTuning
    messages: list[str]


@pytest.fixture(scope="module")
def tuned(models: Models) -> Tuned:
    messages: list[str] = []
    tuning = tune_device(
        models.int4_model,
        "cpu",
        [dict(c) for c in CANDIDATES],
        new_tokens=4,
        repeats=2,
        progress=lambda p: messages.append(p.message),
    )
    return Tuned(tuning, messages)


# -- candidates ------------------------------------------------------------------------------------


def test_default_candidates_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_tuning.os, "cpu_count", lambda: 8)
    candidates = default_candidates("CPU")
    assert candidates[0] == {}  # the openvino-genai defaults: the baseline
    assert candidates[1] == F32_LATENCY  # nbkit's own CPU properties
    assert {**F32_LATENCY, "PERFORMANCE_HINT": "THROUGHPUT"} in candidates
    canonical = [json.dumps(c, sort_keys=True) for c in candidates]
    assert len(set(canonical)) == len(candidates)
    # Every other candidate keeps the f32 precision: tuning changes speed, never the answers.
    assert all(c["INFERENCE_PRECISION_HINT"] == "f32" for c in candidates[1:])
    variants = [c for c in candidates[1:] if len(c) > 2]
    assert variants and all(c["PERFORMANCE_HINT"] == "LATENCY" and len(c) == 3 for c in variants)
    threads = sorted(c["INFERENCE_NUM_THREADS"] for c in variants if "INFERENCE_NUM_THREADS" in c)
    assert threads == [1, 4, 8]
    for candidate in candidates:
        assert all(isinstance(k, str) and k.isupper() for k in candidate)
        assert all(isinstance(v, (str, int, float, bool)) for v in candidate.values())
    assert default_candidates("cpu") == candidates


def test_default_candidates_dedup_and_other_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_tuning.os, "cpu_count", lambda: 1)  # 1, 1//2 -> 1, 1: one thread variant
    cpu = default_candidates("CPU")
    assert [c for c in cpu if "INFERENCE_NUM_THREADS" in c] == [{**F32_LATENCY, "INFERENCE_NUM_THREADS": 1}]
    gpu = default_candidates("GPU")
    assert gpu[0] == {} and {"PERFORMANCE_HINT": "LATENCY"} in gpu
    assert not any("INFERENCE_PRECISION_HINT" in c for c in gpu)  # GPUs keep their own f16
    assert not any("INFERENCE_NUM_THREADS" in c or "NUM_STREAMS" in c for c in gpu)  # CPU-only properties
    assert len(gpu) < len(cpu)


# -- tune_device -----------------------------------------------------------------------------------


def test_tuning_times_every_candidate_with_medians(tuned: Tuned) -> None:
    tuning = tuned.tuning
    assert tuning.device == "CPU"
    assert [t.properties for t in tuning.timings] == CANDIDATES  # in the order given
    for timing in tuning.timings[:2]:
        assert timing.error is None
        assert len(timing.samples) == 2 and all(s > 0 for s in timing.samples)
        assert timing.tokens_per_s == statistics.median(timing.samples)
        assert timing.ttft_ms > 0
    assert any(m.startswith("Timing round 2/2") for m in tuned.messages)  # relayed from the child


def test_a_refused_candidate_is_reported_not_fatal(tuned: Tuned) -> None:
    bogus = tuned.tuning.timings[2]
    assert bogus.properties == BOGUS
    assert isinstance(bogus.error, str) and bogus.error
    assert bogus.samples == () and bogus.tokens_per_s == 0.0
    table = tuned.tuning.table()
    assert re.search(r"PERFORMANCE_HINT=NOT_A_HINT\s+failed: ", table)
    assert "(openvino-genai defaults)" in table
    assert table.splitlines()[0].split() == ["properties", "tokens/s", "TTFT", "ms"]
    assert len(table.splitlines()) == 1 + len(CANDIDATES)


def test_a_refused_candidate_says_why(tuned: Tuned) -> None:
    error = tuned.tuning.timings[2].error or ""
    # OpenVINO's message is "Exception from src/inference/src/cpp/core.cpp:117:\n...\nWrong value
    # NOT_A_HINTfor property key PERFORMANCE_HINT. ..."; the first line names no property.
    assert "NOT_A_HINT" in error or "PERFORMANCE_HINT" in error, error


def test_best_is_the_fastest_working_candidate(tuned: Tuned) -> None:
    tuning = tuned.tuning
    working = [t for t in tuning.timings if t.error is None]
    fastest = max(working, key=lambda t: t.tokens_per_s)
    assert tuning.best == RuntimeConfig.create("CPU", fastest.properties)
    assert tuning.best.property_dict != BOGUS
    assert tuning.best != DEFAULT_RUNTIME
    assert tuning.baseline is tuning.timings[0]
    assert tuning.speedup_over_defaults() == pytest.approx(
        fastest.tokens_per_s / tuning.timings[0].tokens_per_s
    )


def test_tuning_is_recorded_in_the_models_ledger(tuned: Tuned, models: Models) -> None:
    ledger = Ledger(cache=models.cache)
    records = ledger.records(TUNING_KIND)
    assert len(records) == 1
    record = records[0]
    assert record["model_key"] == models.int4_model.entry.key
    assert record["label"] == models.int4_model.label and record["device"] == "CPU"
    assert record["best"] == tuned.tuning.best.property_dict
    assert record["new_tokens"] == 4 and record["repeats"] == 2
    assert [t["properties"] for t in record["timings"]] == CANDIDATES
    assert record["timings"][2]["error"] and record["timings"][0]["error"] is None
    assert record["timings"][0]["samples"] == list(tuned.tuning.timings[0].samples)
    assert record["versions"]["openvino"] and record["machine"]


def test_tuned_runtime_finds_the_record(tuned: Tuned, models: Models) -> None:
    assert tuned_runtime(models.int4_model) == tuned.tuning.best
    assert tuned_runtime(models.int4_model, "cpu") == tuned.tuning.best
    assert tuned_runtime(models.float_model) is None  # tuned per model
    assert tuned_runtime(models.int4_model, "GPU") is None  # and per device
    # An explicit ledger without the record: nothing.
    assert tuned_runtime(models.int4_model, ledger=Ledger(models.cache.root / "other.jsonl")) is None


def test_chat_session_uses_the_tuned_properties(tuned: Tuned, models: Models) -> None:
    session = nbkit.ChatSession(models.int4_model)
    assert session.runtime == tuned.tuning.best
    assert runtime_module.default_runtime(models.int4_model) == tuned.tuning.best
    explicit = RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    assert nbkit.ChatSession(models.int4_model, explicit).runtime == explicit  # an explicit choice wins
    # No record for the float model, and a bare folder cannot be looked up: the default.
    assert nbkit.ChatSession(models.float_model).runtime == DEFAULT_RUNTIME
    assert nbkit.ChatSession(models.int4_model.path).runtime == DEFAULT_RUNTIME


def test_the_latest_tuning_wins(tuned: Tuned, models: Models, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / LEDGER_NAME)
    first = tune_device(models.int4_model, candidates=[{}], new_tokens=2, repeats=1, ledger=ledger)
    second = tune_device(
        models.int4_model, candidates=[LATENCY_ONE_STREAM], new_tokens=2, repeats=1, ledger=ledger
    )
    assert first.best == RuntimeConfig.create("CPU", {}) and second.best.property_dict == LATENCY_ONE_STREAM
    assert tuned_runtime(models.int4_model, ledger=ledger) == second.best
    assert first.speedup_over_defaults() == 1.0 and second.speedup_over_defaults() is None  # no baseline


def test_all_candidates_failing_raises_config_error(models: Models, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / LEDGER_NAME)
    with pytest.raises(ConfigError, match="No candidate property set could run"):
        tune_device(
            models.int4_model,
            candidates=[BOGUS, {"NOT_A_PROPERTY": 1}],
            new_tokens=2,
            repeats=1,
            ledger=ledger,
        )
    assert not ledger.path.exists()  # nothing recorded


def test_bad_arguments_fail_before_any_work(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no timing should start")

    monkeypatch.setattr(device_tuning, "run_isolated", refuse)
    ledger = Ledger(tmp_path / LEDGER_NAME)
    with pytest.raises(ConfigError, match="repeats and new_tokens must be at least 1"):
        tune_device(models.int4_model, repeats=0, ledger=ledger)
    with pytest.raises(ConfigError, match="repeats and new_tokens must be at least 1"):
        tune_device(models.int4_model, new_tokens=0, ledger=ledger)
    with pytest.raises(ConfigError, match="No property candidates"):
        tune_device(models.int4_model, candidates=[], ledger=ledger)
    with pytest.raises(DeviceError, match="Unknown device 'NOT_A_DEVICE'"):
        tune_device(models.int4_model, "not_a_device", ledger=ledger)
    assert not ledger.path.exists()


def test_device_tuning_table_and_speedup_by_hand() -> None:
    timings = (
        CandidateTiming({}, 40.0, 20.0, (40.0,)),
        CandidateTiming({"PERFORMANCE_HINT": "LATENCY"}, 80.0, 10.0, (80.0,)),
        CandidateTiming({"X": 1}, 0.0, 0.0, (), error="unsupported"),
    )
    tuning = DeviceTuning("CPU", RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "LATENCY"}), timings)
    assert tuning.speedup_over_defaults() == 2.0
    lines = tuning.table().splitlines()
    assert lines[1].startswith("PERFORMANCE_HINT=LATENCY") and "80.0" in lines[1]  # fastest first
    assert lines[2].startswith("(openvino-genai defaults)")
    assert lines[3].startswith("X=1") and lines[3].endswith("failed: unsupported")
    failed_baseline = DeviceTuning("CPU", tuning.best, (timings[1], CandidateTiming({}, 0, 0, (), "no")))
    assert failed_baseline.baseline is None and failed_baseline.speedup_over_defaults() is None


# -- the command line ------------------------------------------------------------------------------


def test_cli_tune_device_prints_a_table_and_the_best(
    capsys: pytest.CaptureFixture[str], shared_root: Path, tiny_hf_model: Path, tmp_path: Path
) -> None:
    cli_models = models_in(private_cache(shared_root, tmp_path / "cache"), tiny_hf_model)
    code = main(
        [
            "--cache-dir",
            str(cli_models.cache.root),
            "-q",
            "tune-device",
            str(tiny_hf_model),
            "--tokens",
            "4",
            "--repeats",
            "1",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["properties", "tokens/s", "TTFT", "ms"]
    assert "(openvino-genai defaults)" in out
    candidates = default_candidates("CPU")
    table = lines[1 : 1 + len(candidates)]
    assert all(line.strip() for line in table) and lines[1 + len(candidates)] == ""
    best = re.search(r"^best on CPU: (.+?)( \([\d.]+x the openvino-genai defaults\))?$", out, re.MULTILINE)
    assert best, out
    # What it printed is what it recorded for the model `tune-device` compressed ("auto" -> g32).
    recorded = tuned_runtime(cli_models.int4_model)
    assert recorded is not None
    printed = ", ".join(f"{k}={v}" for k, v in sorted(recorded.property_dict.items())) or "the defaults"
    assert best.group(1) == printed
    assert recorded.property_dict in candidates


# -- who uses the tuning ---------------------------------------------------------------------------


def test_cli_chat_uses_the_tuned_properties(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tuned: Tuned,
    models: Models,
    tiny_hf_model: Path,
) -> None:
    runtimes: list[RuntimeConfig] = []

    class SpySession:
        def __init__(self, model: Any, runtime: Any = None, settings: Any = None, **kwargs: Any) -> None:
            runtimes.append(runtime if runtime is not None else runtime_module.default_runtime(model))
            raise NbkitError("spy session: stop before loading")

    monkeypatch.setattr(openvino_engine, "ChatSession", SpySession)
    argv = ["--cache-dir", str(models.cache.root), "-q", "chat", str(tiny_hf_model), "--prompt", "hi"]
    code = main(argv)
    capsys.readouterr()
    assert code == 1 and len(runtimes) == 1
    assert runtimes[0] == tuned.tuning.best


def test_sweeps_measure_speed_with_the_tuned_properties(
    monkeypatch: pytest.MonkeyPatch, tuned: Tuned, models: Models, tiny_hf_model: Path, tmp_path: Path
) -> None:
    speeds: dict[str, Any] = {}

    def quality(model: Any, reference: Any, **kwargs: Any) -> QualityReport:
        return QualityReport(10.0, 10.0, 0.0, 1.0, kwargs["num_tokens"])

    def speed(model: Any, runtime: Any = None, **kwargs: Any) -> SpeedReport:
        speeds[model.label] = runtime
        return SpeedReport(0.1, 1.0, 1.0, 100.0, kwargs["new_tokens"], kwargs["repeats"], 1.0)

    def answers(model: Any, reference: Any, **kwargs: Any) -> AnswerReport:
        return AnswerReport(1, 1, ("a",))

    monkeypatch.setattr(quality_module, "measure_quality", quality)
    monkeypatch.setattr(speed_module, "measure_speed", speed)
    monkeypatch.setattr(evaluation, "measure_answers", answers)
    sweep.run_sweep(
        tiny_hf_model, [INT4_G32], cache=models.cache, ledger=Ledger(tmp_path / LEDGER_NAME)
    )  # settings=None: the defaults
    assert speeds[models.int4_model.label] == tuned.tuning.best
