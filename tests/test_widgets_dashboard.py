"""The dashboard wired end to end on the tiny model, without a browser."""

from __future__ import annotations

from pathlib import Path

import ipywidgets as widgets
import pytest

from nbkit import Cache, GenerationSettings, OVModel
from nbkit import widgets as panels
from nbkit.engines.openvino.devices import DeviceInfo

SHARED_CACHE = "nbkit-shared-tiny-cache"
TIMEOUT_S = 600
CONTROLS = (
    widgets.Button,
    widgets.Text,
    widgets.Textarea,
    widgets.Dropdown,
    widgets.Select,
    widgets.ToggleButtons,
    widgets.Checkbox,
    widgets.FloatSlider,
    widgets.BoundedIntText,
    widgets.FloatProgress,
)
GPU = DeviceInfo("GPU.0", "Intel(R) Arc(TM) A750 Graphics (dGPU)", ("FP16",), ("PERFORMANCE_HINT",))


def _gpu_needs_compressed(device: DeviceInfo, model: OVModel | None) -> str | None:
    if device.name.startswith("GPU") and model is not None and not model.is_compressed:
        return "this example GPU takes compressed models only"
    return None


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return Cache(tmp_path_factory.getbasetemp() / SHARED_CACHE)


def test_every_control_has_a_tooltip(tmp_path: Path) -> None:
    app = panels.dashboard(cache=Cache(tmp_path), hub_check=lambda: "offline in this test")
    missing = [
        f"{type(w).__name__}({getattr(w, 'description', '')!r})"
        for w in panels._common.iter_widgets(app)
        if isinstance(w, CONTROLS) and not (w.tooltip or "").strip()
    ]
    assert not missing, f"controls without a tooltip: {missing}"
    toggles = [w for w in panels._common.iter_widgets(app) if isinstance(w, widgets.ToggleButtons)]
    assert all(len(w.tooltips) == len(w.options) for w in toggles)
    app.close()


def test_model_to_compression_to_chat_with_one_device_choice(
    tiny_hf_model: Path, shared_cache: Cache, tmp_path: Path
) -> None:
    cpu = next(d for d in panels.device_selector.list_devices() if d.name == "CPU")
    app = panels.Dashboard(
        str(tiny_hf_model),
        cache=shared_cache,
        devices=[cpu, GPU],
        device_check=_gpu_needs_compressed,
        hub_check=lambda: None,
        export_dir=tmp_path,
    )
    assert app.tabs.selected_index == 0
    if app.picker.float_model is None:  # else an earlier test's export is in this cache: adopted
        assert "not prepared yet" in app.summary.value

    # Model -> the compression form and the chat get the float IR; the GPU refuses it.
    assert app.picker.prepare()
    assert app.picker.wait(TIMEOUT_S) == "finished"
    float_model = app.picker.float_model
    assert app.tuner.model == float_model and app.tabs.selected_index == 1
    assert app.chat.model_path == str(float_model.path)  # type: ignore[union-attr]
    assert "GPU.0" in app.devices.unavailable()

    # Compression: no tab changes by itself, the chat keeps the float model and may have it chosen.
    tabs: list[int] = []
    app.tabs.observe(lambda change: tabs.append(change["new"]), "selected_index")
    assert app.tuner.run()
    assert app.tuner.wait(TIMEOUT_S) == "finished"
    compressed = app.tuner.latest_model
    assert compressed is not None and app.tuner.compressed_model is None
    assert tabs == [] and app.tabs.selected_index == 1
    assert app.chat.model_path == str(float_model.path) and app.chat_model == float_model
    offered = [value for _, value in app.tuner.choice.options]
    # The float model first, then every measured model of this cache (other test modules measure
    # the same tiny model in the shared cache: the dashboard shows what the ledger holds).
    assert offered[0] == str(float_model.path) and str(compressed.path) in offered
    if hasattr(app.chat, "available_models"):
        assert [str(m.path) for m in app.chat.available_models] == offered
    # Choosing it (here the "Chat with this" button) is the user's action: the chat and the tab follow.
    app.tuner.chat_latest_button.click()
    assert app.chat.model_path == str(compressed.path) and app.chat_model == app.tuner.compressed_model
    assert tabs == [2] and compressed.label.split("-")[0].split("_")[0].upper() in app.summary.value
    assert "(OpenVINO" in app.summary.value
    assert app.devices.unavailable() == {}
    compressed = app.tuner.compressed_model

    # A sweep (the INT4 point again, plus INT8) changes neither the tab nor the chat's model.
    app.tabs.selected_index = 1
    tabs.clear()
    app.tuner.mode_buttons["int8_asym"].value = True
    assert app.tuner.sweep()
    assert app.tuner.wait(TIMEOUT_S) == "finished"
    assert tabs == [] and app.chat.model_path == str(compressed.path)
    # The sweep's INT8 point is on the chart (where in the list depends on what the shared ledger
    # held before: a record of a model measured earlier keeps its place).
    assert "int8_asym" in [r.label for r in app.tuner.records]

    # Pick for me loads its winner into the chat, and the tab stays on the search's path.
    app.tuner.pick_controls.target_input.value = "kl<=1000"
    assert app.tuner.pick()
    assert app.tuner.wait(TIMEOUT_S) == "finished"
    winner = app.tuner.pick_result.winner
    assert winner is not None and app.chat.model_path == winner.model_path
    assert tabs == [] and app.tuner.bring_chat_forward
    compressed = app.tuner.compressed_model
    app.tabs.selected_index = 2

    # Preparing the same model again keeps every measured point and the chat's model.
    measured = [r.model_path for r in app.tuner.records]
    assert len(measured) >= 3  # the float reference, the INT4 and the INT8 model at least
    app.picker.float_model = None
    app.picker.float_model = float_model
    # Every point again (in the ledger's order, which other modules' records sharing the cache set).
    assert sorted(r.model_path for r in app.tuner.records) == sorted(measured)
    assert app.chat.model_path == str(compressed.path)

    # A dashboard opened later (JupyterLab, below the cells that built these) shows them at once.
    later = panels.Dashboard(
        str(tiny_hf_model), cache=shared_cache, devices=[cpu], hub_check=lambda: None, export_dir=tmp_path
    )
    try:
        assert later.picker.float_model == float_model and later.tuner.model == float_model
        assert {r.model_path for r in app.tuner.records} <= {r.model_path for r in later.tuner.records}
        assert later.tuner.choice.options[0][1] == str(float_model.path)
        assert later.chat.model_path == str(float_model.path) and later.tabs.selected_index == 0
    finally:
        later.close()

    # The device choice reaches the chat.
    app.devices.hint.value = "THROUGHPUT"
    assert app.chat.runtime.property_dict["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert "throughput" in app.summary.value
    app.devices.hint.value = "LATENCY"

    # A real streamed answer from the compressed tiny model.
    app.chat.max_new_tokens.value = 8
    assert app.chat.settings == GenerationSettings(max_new_tokens=8)
    assert app.chat.send("Hello")
    assert app.chat.wait(120) == "finished"
    assert app.chat.turns[0].metrics.generated_tokens > 0
    assert compressed.path.name in app.chat.transcript_markdown()

    children = [w for w in panels._common.iter_widgets(app) if w is not app]
    app.close()
    assert all(w.comm is None for w in children)
    assert not app.picker._trait_notifiers.get("float_model", {}).get("change")
