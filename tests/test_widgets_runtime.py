"""The panels and the CLI measure and chat with the same runtime, so they share ledger records.

Unless properties are picked in the device selector, the tuner passes no runtime
(``MeasureSettings.runtime=None``) and the chat asks ``engine.default_runtime(model, device)``,
exactly as ``nbkit sweep`` and ``nbkit chat`` do. On the tiny model, for the same configs
(OpenVINO, and ONNX Runtime GenAI when Olive is installed): the same runtime per model and the
same ledger record keys, before and after ``nbkit tune-device`` recorded a best runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nbkit import Cache, GenerationSettings, RuntimeConfig, export_openvino
from nbkit import widgets as panels
from nbkit.cli.main import main
from nbkit.engines.ort.deps import olive_available
from nbkit.engines.registry import engine_of_model, get_engine, model_at
from nbkit.engines.tuning_report import TUNING_KIND
from nbkit.infra.ledger import Ledger
from nbkit.measure import sweep
from nbkit.measure.sweep import MEASUREMENT_KIND, MeasureSettings
from nbkit.sources.models import resolve_source

TIMEOUT_S = 600
ENGINES = ("openvino", "ort") if olive_available() else ("openvino",)
# What `nbkit sweep --quality-tokens 64 --speed-tokens 4 --repeats 1 --no-answers` measures with.
CLI_SETTINGS = MeasureSettings(quality_tokens=64, speed_new_tokens=4, speed_repeats=1, answers=False)
# What a tune-device run could have found: something other than each engine's default.
TUNED = {
    "openvino": {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"},
    "ort": {"intra_op_num_threads": 1},
}


class RuntimeSpy:
    """Records the runtime of every measurement and every chat session, and who asked."""

    def __init__(self) -> None:
        self.who = ""
        self.measured: dict[str, dict[str, RuntimeConfig]] = {}
        self.chats: dict[str, dict[str, RuntimeConfig]] = {}

    def measurement_runtime(self, original: Any) -> Any:
        def spy(model: Any, settings: MeasureSettings) -> RuntimeConfig:
            runtime = original(model, settings)
            self.measured.setdefault(self.who, {})[str(model.path)] = runtime
            return runtime

        return spy

    def open_chat(self, original: Any) -> Any:
        def spy(folder: Path, runtime: RuntimeConfig | None = None, *args: Any, **kwargs: Any) -> Any:
            self.chats.setdefault(self.who, {})[str(folder)] = runtime  # type: ignore[assignment]
            return original(folder, runtime, *args, **kwargs)

        return spy


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> RuntimeSpy:
    recorder = RuntimeSpy()
    monkeypatch.setattr(sweep, "measurement_runtime", recorder.measurement_runtime(sweep.measurement_runtime))
    for name in ENGINES:
        engine = get_engine(name)
        monkeypatch.setattr(engine, "open_chat", recorder.open_chat(engine.open_chat))
    return recorder


def _cli_sweep(cache: Cache, model: Path, chart: Path) -> list[str]:
    return [
        "--cache-dir",
        str(cache.root),
        "-q",
        "sweep",
        str(model),
        "--engines",
        ",".join(ENGINES),
        "--modes",
        "int4_sym",
        "--group-sizes",
        "32",
        "--accuracy-levels",
        "4",
        "--quality-tokens",
        str(CLI_SETTINGS.quality_tokens),
        "--speed-tokens",
        str(CLI_SETTINGS.speed_new_tokens),
        "--repeats",
        str(CLI_SETTINGS.speed_repeats),
        "--no-answers",
        "--remeasure",  # measured again, so the CLI writes its own records to compare
        "--chart",
        str(chart),
    ]


def test_panel_and_cli_use_the_same_runtime_and_ledger_record_before_and_after_tuning(
    tiny_hf_model: Path,
    tmp_path: Path,
    spy: RuntimeSpy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    cache = Cache(tmp_path / "cache")
    ledger = Ledger(cache=cache)  # where `nbkit sweep` and tune-device write
    selector = panels.DeviceSelector()  # untouched: nothing picked, so no runtime is passed
    assert selector.measurement_runtime is None and selector.explicit_runtime is None
    float_model = export_openvino(tiny_hf_model, cache=cache)
    tuner = panels.QuantizationTuner(
        float_model,
        resolve_source(tiny_hf_model),
        cache=cache,
        ledger=ledger,
        runtime=selector.measurement_runtime,
        presets={"cli": CLI_SETTINGS},
    )
    assert tuner.measure_settings() == CLI_SETTINGS and tuner.measure_settings().runtime is None
    for name in ENGINES:
        tuner.engine_toggles[name].value = True
    assert len(tuner.configs) == len(ENGINES)

    def panel_round() -> dict[str, str]:
        spy.who = "panel"
        assert tuner.sweep() and tuner.wait(TIMEOUT_S) == "finished", tuner.task.error
        return {r.model_path: r.key for r in tuner.records}

    def cli_round() -> dict[str, str]:
        spy.who = "cli"
        before = len(ledger.records(MEASUREMENT_KIND))
        assert main(_cli_sweep(cache, tiny_hf_model, tmp_path / "chart.html")) == 0, capsys.readouterr().err
        return {r["model_path"]: r["key"] for r in ledger.records(MEASUREMENT_KIND)[before:]}

    # Untuned: each engine's default runtime, the same record key from both.
    panel_keys = panel_round()
    assert cli_round() == panel_keys and len(panel_keys) == len(ENGINES) + 1
    assert spy.measured["cli"] == spy.measured["panel"]
    for path, runtime in spy.measured["panel"].items():
        model = model_at(path)
        assert model is not None and runtime == engine_of_model(model).base_runtime("CPU")

    # tune-device recorded a best runtime for each built model: both pick it up, both key by it.
    built = [model_at(path) for path in panel_keys if path != str(float_model.path)]
    for model in built:
        assert model is not None
        ledger.append(
            {
                "kind": TUNING_KIND,
                "engine": model.engine,
                "model_key": model.entry.key,
                "model": model.source_name,
                "label": model.label,
                "device": "CPU",
                "best": TUNED[model.engine],
            }
        )
    spy.measured.clear()
    tuned_keys = panel_round()
    assert cli_round() == tuned_keys
    assert spy.measured["cli"] == spy.measured["panel"]
    for model in built:
        assert model is not None
        path = str(model.path)
        assert tuned_keys[path] != panel_keys[path]  # another runtime is another measurement
        expected = engine_of_model(model).check_runtime(RuntimeConfig.create("CPU", TUNED[model.engine]))
        assert spy.measured["panel"][path] == expected
    assert tuned_keys[str(float_model.path)] == panel_keys[str(float_model.path)]  # untuned: unchanged

    # The chat: the pane (nothing picked in the selector) and `nbkit chat` open the same runtime.
    for model in built:
        assert model is not None
        spy.who = "panel"
        pane = panels.ChatPane(
            model,
            runtime=selector.explicit_runtime,
            device=selector.device,
            settings=GenerationSettings(max_new_tokens=2),
        )
        assert pane.send("Hi") and pane.wait(120) == "finished", pane.task.error
        pane.close()
        spy.who = "cli"
        command = ["--cache-dir", str(cache.root), "-q", "chat", str(model.path), "--prompt", "Hi"]
        assert main([*command, "--max-new-tokens", "2"]) == 0, capsys.readouterr().err
        path = str(model.path)
        assert spy.chats["panel"][path] == spy.chats["cli"][path] == spy.measured["panel"][path]
    tuner.close()
    selector.close()
