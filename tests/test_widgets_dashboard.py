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
    assert app.tabs.selected_index == 0 and "not prepared yet" in app.summary.value

    # Model -> the compression form and the chat get the float IR; the GPU refuses it.
    assert app.picker.prepare()
    assert app.picker.wait(TIMEOUT_S) == "finished"
    float_model = app.picker.float_model
    assert app.tuner.model == float_model and app.tabs.selected_index == 1
    assert app.chat.model_path == str(float_model.path)  # type: ignore[union-attr]
    assert "GPU.0" in app.devices.unavailable()

    # Compression -> the chat switches to the compressed model; the GPU accepts it now.
    assert app.tuner.run()
    assert app.tuner.wait(TIMEOUT_S) == "finished"
    compressed = app.tuner.compressed_model
    assert compressed is not None and app.chat.model_path == str(compressed.path)
    assert app.tabs.selected_index == 2 and app.chat_model == compressed
    assert compressed.label in app.summary.value
    assert app.devices.unavailable() == {}

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
