"""Both engines in the panels: the tuner's engine switch and ORT form, one chart, a click to an ORT chat.

Without Olive: the ORT form's disabled options and their reasons (the core's rules), its
code, and an engine whose extra is missing shown disabled with the reason. With Olive: the
dashboard drives the tiny model through the ORT engine (one config, then a sweep of both
engines on one chart), a click on the ORT point opens the chat on that ONNX Runtime GenAI
model, and the chat streams a measured answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import traitlets
from plotly.callbacks import InputDeviceState, Points

from nbkit import Cache, GenerationSettings
from nbkit import widgets as panels
from nbkit.engines.openvino.devices import DeviceInfo, list_devices
from nbkit.engines.ort.deps import olive_available
from nbkit.engines.ort.olive_config import OliveExportConfig
from nbkit.engines.registry import get_engine
from nbkit.infra.ledger import Ledger
from nbkit.measure.sweep import MeasureSettings
from nbkit.sources.architecture import ArchitectureFacts, read_architecture

TIMEOUT_S = 600
# Short measurements: the tiny model is random, only the plumbing is under test.
TINY_PRESET = {"tiny": MeasureSettings(quality_tokens=64, speed_new_tokens=4, speed_repeats=1, answers=False)}
GPU = DeviceInfo("GPU.0", "Example Arc (dGPU)", ("FP16",), ("PERFORMANCE_HINT",))
needs_olive = pytest.mark.skipif(
    not olive_available(), reason='Olive is not installed (pip install "nbkit[olive]")'
)


@pytest.fixture(scope="module")
def facts(tiny_hf_model: Path) -> ArchitectureFacts:
    return read_architecture(tiny_hf_model)  # input channels 64 and 96: blocks of 16 and 32 fit


def test_ort_form_disables_block_sizes_that_do_not_fit_the_model(facts: ArchitectureFacts) -> None:
    form = panels.OliveForm(facts, model_spec="tiny")
    assert form.config == OliveExportConfig(int4_block_size=32) and form.problem == ""
    for size in ("16", "32"):
        assert not form.block_size.buttons[size].disabled
    for size in ("64", "128", "256"):
        button = form.block_size.buttons[size]
        assert button.disabled
        assert f"int4_block_size {size} does not divide the input channels" in button.tooltip
        assert "valid block sizes for this model: 16, 32" in button.tooltip
        with pytest.raises(traitlets.TraitError, match="does not divide"):
            form.block_size.value = size
    form.block_size.value = "16"
    form.accuracy_level.value = 1
    form.symmetric.value = False
    assert form.config == OliveExportConfig(int4_block_size=16, int4_accuracy_level=1, int4_symmetric=False)
    form.close()


@pytest.mark.parametrize("precision", ["int8", "fp16", "fp32"])
def test_ort_form_disables_the_int4_knobs_of_other_precisions_with_the_reason(
    facts: ArchitectureFacts, precision: str
) -> None:
    form = panels.OliveForm(facts)
    form.precision.value = precision
    reason = f"{precision} has no int4 blocks"  # the engine's unavailable_options
    assert form.reasons == get_engine("ort").unavailable_options(OliveExportConfig(precision))
    assert form.accuracy_level.disabled and form.accuracy_level.tooltip == reason
    assert form.symmetric.disabled and form.symmetric.tooltip == reason
    assert all(b.disabled and b.tooltip == reason for b in form.block_size.buttons.values())
    assert form.config == OliveExportConfig(precision)  # the disabled knobs contribute nothing
    form.precision.value = "int4"  # and come back, with the model's own limits
    assert not form.accuracy_level.disabled and not form.block_size.buttons["32"].disabled
    assert form.block_size.buttons["64"].disabled
    form.close()


def test_ort_form_shows_nbkit_olive_cli_and_olive_json(facts: ArchitectureFacts) -> None:
    form = panels.OliveForm(facts, model_spec="tiny-llama")
    assert form.code.layout.display == "none"
    form.code_toggle.value = True
    code = form.code.value
    assert "export_olive(&#x27;tiny-llama&#x27;" in code  # nbkit Python
    assert "nbkit export tiny-llama --engine olive --precision int4 --int4-block-size 32" in code
    assert "olive capture-onnx-graph" in code and "--int4_block_size 32" in code  # Olive CLI
    assert "&quot;type&quot;: &quot;ModelBuilder&quot;" in code  # Olive JSON
    assert list(form.code_blocks()) == list(get_engine("ort").code(form.config, "tiny-llama"))
    form.close()


def test_an_engine_that_cannot_run_is_disabled_in_the_switch_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ort = get_engine("ort")
    reason = 'Olive and onnxruntime-genai are not installed: pip install "nbkit[olive]".'
    monkeypatch.setattr(ort, "missing", lambda: reason)
    tuner = panels.QuantizationTuner()
    button = tuner.engine_buttons.buttons["ort"]
    assert button.disabled and button.tooltip == reason
    assert tuner.engine_toggles["ort"].disabled and tuner.engine_toggles["ort"].tooltip == reason
    with pytest.raises(traitlets.TraitError, match="unavailable: Olive and onnxruntime-genai"):
        tuner.engine = "ort"
    assert tuner.engine == "openvino" and not tuner.engine_buttons.buttons["openvino"].disabled
    tuner.close()


@needs_olive
def test_dashboard_tunes_with_ort_charts_both_engines_and_chats_with_the_clicked_ort_model(
    tiny_hf_model: Path, cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # Olive's child process inherits it
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # nothing lands in the real HF cache
    cpu = next(d for d in list_devices() if d.name == "CPU")
    app = panels.Dashboard(
        str(tiny_hf_model),
        cache=cache,
        ledger=Ledger(tmp_path / "ledger.jsonl"),
        devices=[cpu],
        hub_check=lambda: None,
        export_dir=tmp_path,
        presets=TINY_PRESET,
    )
    tuner = app.tuner
    assert tuner.preset.value == "tiny"
    assert app.picker.prepare() and app.picker.wait(TIMEOUT_S) == "finished"

    # The switch shows ORT's form; Compress & measure builds and measures its config.
    tuner.engine = "olive"  # the registry's alias
    assert tuner.engine == "ort" and isinstance(tuner.form, panels.OliveForm)
    assert tuner.forms["ort"].layout.display == "flex" and tuner.forms["openvino"].layout.display == "none"
    assert tuner.config == OliveExportConfig(int4_block_size=32, int4_accuracy_level=4)
    assert tuner.run() and tuner.wait(TIMEOUT_S) == "finished", tuner.task.error
    assert [(r.engine, r.label) for r in tuner.records] == [
        ("openvino", "float-fp32"),
        ("ort", "int4-b32-acc4"),
    ]
    ort_model = tuner.latest_model  # offered, not imposed: the chat keeps the float model
    assert ort_model is not None and ort_model.engine == "ort" and tuner.compressed_model is None
    assert app.chat.engine == "openvino" and app.tabs.selected_index == 1

    # A sweep of both engines: ORT skips what ModelBuilder cannot build, with the reason.
    tuner.engine_toggles["ort"].value = True
    tuner.mode_buttons["nf4"].value = True
    assert ("ort nf4", "Olive's ModelBuilder has no NF4; its 4-bit format is int4 (MatMulNBits)") in (
        tuner.skipped
    )
    assert "Skipped ort nf4" in tuner.plan.value
    tuner.mode_buttons["nf4"].value = False
    assert [(type(c).__name__, c.label) for c in tuner.configs] == [
        ("CompressionConfig", "int4_sym-g32-r1"),
        ("OliveExportConfig", "int4-b32-acc4"),
    ]
    assert tuner.sweep() and tuner.wait(TIMEOUT_S) == "finished", tuner.task.error
    assert sorted((r.engine, r.label) for r in tuner.records) == [
        ("openvino", "float-fp32"),
        ("openvino", "int4_sym-g32-r1"),
        ("ort", "int4-b32-acc4"),
    ]

    # One chart: a trace per engine, both with points; every trace answers clicks.
    traces = {t.name: t for t in tuner.figure.data}
    openvino_trace, ort_trace = traces[get_engine("openvino").title], traces[get_engine("ort").title]
    assert sorted(openvino_trace.text) == ["int4_sym-g32-r1"]  # the float model is the reference line
    assert list(ort_trace.text) == ["int4-b32-acc4"]
    assert all(t._click_callbacks for t in tuner.figure.data)

    # Chat with the OpenVINO model first, then click the ORT point: the chat follows.
    openvino_record = next(r for r in tuner.records if r.label == "int4_sym-g32-r1")
    assert tuner.choose(openvino_record).engine == "openvino" and app.chat.engine == "openvino"
    assert tuner.engine == "openvino"  # the OpenVINO form shows the chosen config
    ort_trace._dispatch_on_click(Points(point_inds=[0], trace_name=ort_trace.name), InputDeviceState())
    chosen = tuner.compressed_model
    assert chosen is not None and chosen.engine == "ort" and chosen.path == ort_model.path
    assert tuner.engine == "ort" and tuner.config == OliveExportConfig(int4_block_size=32)
    assert tuner.choice.value == str(ort_model.path)
    assert app.chat.engine == "ort" and app.chat.model_path == str(ort_model.path)
    assert app.tabs.selected_index == 2 and "(Olive + ONNX Runtime GenAI)" in app.summary.value
    assert "Olive + ONNX Runtime GenAI" in app.chat.header.value

    # The chat streams a measured answer from the ONNX Runtime GenAI model.
    pieces: list[str] = []
    app.chat.observe(lambda change: pieces.append(change["new"]), "current_text")
    app.chat.max_new_tokens.value = 6
    assert app.chat.settings == GenerationSettings(max_new_tokens=6)
    assert app.chat.send("Hello") and app.chat.wait(120) == "finished", app.chat.task.error
    turn = app.chat.turns[0]
    assert app.chat.session is not None and app.chat.session.engine == "onnxruntime-genai"
    assert turn.metrics.generated_tokens > 0 and turn.metrics.ttft_ms > 0 and turn.metrics.tokens_per_s > 0
    assert turn.text and pieces and pieces[-1] == turn.text  # current_text grew as pieces arrived
    assert "TTFT" in app.chat.history.children[-1].value
    assert json.loads(app.chat.transcript_json())["engine"] == "onnxruntime-genai"

    # The ORT model runs on the CPU only: another device is offered disabled, with the engine's reason.
    assert "CPU only" in (panels.device_selector.engine_device_problem(GPU, chosen) or "")
    children = [w for w in panels._common.iter_widgets(app) if w is not app]
    app.close()
    app.close()
    assert all(w.comm is None for w in children)
    assert app.chat.session is None
