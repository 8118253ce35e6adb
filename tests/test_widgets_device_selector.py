"""DeviceSelector with this machine's devices and with injected lists of one and of several."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
import traitlets

from nbkit import CacheEntry, OVModel, RuntimeConfig
from nbkit import widgets as panels
from nbkit.config import PERFORMANCE_HINTS
from nbkit.engines.openvino.devices import DeviceInfo
from nbkit.engines.ort.olive import OrtGenAIModel
from nbkit.engines.registry import REFERENCE_ENGINE, get_engine
from nbkit.engines.tuning_report import TUNING_KIND
from nbkit.infra.ledger import Ledger

CPU = DeviceInfo(
    name="CPU",
    full_name="Example Core i7-1185G7 @ 3.00GHz",
    capabilities=("FP32", "BF16", "INT8"),
    writable_properties=("INFERENCE_NUM_THREADS", "KV_CACHE_PRECISION", "NUM_STREAMS", "PERFORMANCE_HINT"),
    properties={"RANGE_FOR_STREAMS": "1, 8"},
)
GPU = DeviceInfo(
    name="GPU.0",
    full_name="Intel(R) Iris(R) Xe Graphics (iGPU)",
    capabilities=("FP32", "FP16", "INT8"),
    writable_properties=("KV_CACHE_PRECISION", "NUM_STREAMS", "PERFORMANCE_HINT"),
    properties={"RANGE_FOR_STREAMS": "1, 2"},
)
NPU = DeviceInfo(name="NPU", full_name="Intel(R) AI Boost", writable_properties=("PERFORMANCE_HINT",))
CORES = panels.device_selector.max_threads()  # the most threads the selector takes on this machine


def _npu_needs_compressed(device: DeviceInfo, model: OVModel | None) -> str | None:
    if device.name == "NPU" and (model is None or not model.is_compressed):
        return "the NPU runs weight-compressed models only; compress first"
    return None


def test_this_machine_lists_at_least_the_cpu_with_its_full_name() -> None:
    selector = panels.DeviceSelector()
    assert "CPU" in selector.device_buttons.choices
    assert selector.runtime.device == selector.device
    cpu = selector.device_buttons.choices["CPU"]
    assert cpu.detail and cpu.tooltip.endswith("(CPU)")
    selector.close()


def test_a_single_device_is_selected_and_auto_is_not_offered() -> None:
    selector = panels.DeviceSelector([CPU])
    assert list(selector.device_buttons.choices) == ["CPU"]
    assert selector.device == "CPU"
    assert selector.runtime == RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "LATENCY"})
    assert "Example Core i7" in selector.device_buttons.children[0].children[1].value
    selector.close()


def test_several_devices_offer_auto_and_switch_the_runtime() -> None:
    selector = panels.DeviceSelector([CPU, GPU, NPU])
    assert list(selector.device_buttons.choices) == ["CPU", "GPU.0", "NPU", "AUTO"]
    selector.device_buttons.buttons["GPU.0"].click()
    assert selector.device == "GPU.0"
    assert selector.runtime.device == "GPU.0"
    assert selector.threads.disabled and "not offered by GPU.0" in selector.threads.tooltip
    assert [v for _, v in selector.streams.options] == ["", "AUTO", "1", "2"]
    selector.device = "AUTO"
    assert selector.runtime == RuntimeConfig.create("AUTO", {"PERFORMANCE_HINT": "LATENCY"})
    selector.close()


def test_properties_build_the_runtime_and_unsupported_ones_are_left_out() -> None:
    selector = panels.DeviceSelector([CPU, GPU])
    selector.hint.buttons["THROUGHPUT"].click()
    assert selector.hint.buttons["THROUGHPUT"].icon == "check" and selector.hint.buttons["LATENCY"].icon == ""
    selector.streams.value = "2"
    selector.threads.value = CORES
    selector.kv_precision.value = "u8"
    selector.cache_dir.value = "/tmp/ov-blobs"
    assert selector.runtime.property_dict == {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "NUM_STREAMS": 2,
        "INFERENCE_NUM_THREADS": CORES,
        "KV_CACHE_PRECISION": "u8",
        "CACHE_DIR": "/tmp/ov-blobs",
    }
    assert "RuntimeConfig.create(&#x27;CPU&#x27;, {\n    &#x27;" in selector.code.value
    selector.device = "GPU.0"  # no INFERENCE_NUM_THREADS on this GPU: dropped, not sent
    assert "INFERENCE_NUM_THREADS" not in selector.runtime.property_dict
    assert selector.runtime.property_dict["NUM_STREAMS"] == 2
    selector.close()


def test_device_that_cannot_run_the_model_is_disabled_with_its_reason() -> None:
    selector = panels.DeviceSelector([CPU, GPU, NPU], check=_npu_needs_compressed)
    assert selector.unavailable() == {"NPU": "the NPU runs weight-compressed models only; compress first"}
    npu = selector.device_buttons.buttons["NPU"]
    assert npu.disabled and "compress first" in npu.tooltip
    assert "unavailable: the NPU runs" in selector.device_buttons.children[2].children[1].value
    npu.click()
    assert selector.device == "CPU"
    with pytest.raises(traitlets.TraitError, match="compress first"):
        selector.device = "NPU"
    selector.close()


def test_a_new_model_rechecks_the_devices(tmp_path: Path) -> None:
    manifest = {"kind": "openvino-compressed", "key": "0" * 64, "metadata": {"label": "int4_sym-g32-r1"}}
    compressed = OVModel(CacheEntry(tmp_path, manifest))
    selector = panels.DeviceSelector([CPU, NPU], check=_npu_needs_compressed)
    assert "NPU" in selector.unavailable()
    selector.set_trait("model", compressed)
    assert selector.unavailable() == {}
    selector.device = "NPU"
    assert selector.runtime.device == "NPU"
    selector.close()


def test_selected_device_that_becomes_unavailable_falls_back_to_one_that_works() -> None:
    selector = panels.DeviceSelector([CPU, NPU])
    assert selector.device == "CPU"
    selector.check = lambda d, m: "broken today" if d.name == "CPU" else None
    selector.set_devices([CPU, NPU])
    assert selector.device == "NPU" and selector.runtime.device == "NPU"
    selector.close()


def test_precision_follows_nbkit_per_device_unless_chosen() -> None:
    cpu = DeviceInfo(
        name="CPU",
        full_name="Example Xeon",
        writable_properties=("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT"),
    )
    gpu = DeviceInfo(
        name="GPU",
        full_name="Example Arc",
        writable_properties=("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT"),
    )
    selector = panels.DeviceSelector([cpu, gpu])
    assert selector.precision.value == "nbkit"
    assert selector.runtime.property_dict == {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    selector.device = "GPU"  # nbkit's default leaves a GPU at its own (f16) precision
    assert selector.runtime.property_dict == {"PERFORMANCE_HINT": "LATENCY"}
    selector.precision.value = "f16"
    assert selector.runtime.property_dict["INFERENCE_PRECISION_HINT"] == "f16"
    selector.device = "CPU"
    selector.precision.value = "bf16"
    assert selector.runtime.property_dict["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "INFERENCE_PRECISION_HINT&#x27;: &#x27;bf16" in selector.code.value
    selector.precision.value = ""
    assert "INFERENCE_PRECISION_HINT" not in selector.runtime.property_dict
    selector.close()


def test_a_device_without_the_precision_property_gets_none() -> None:
    selector = panels.DeviceSelector([CPU])  # CPU here does not list INFERENCE_PRECISION_HINT as writable
    assert "INFERENCE_PRECISION_HINT" not in selector.runtime.property_dict
    assert selector.precision.disabled and "not offered by CPU" in selector.precision.tooltip
    selector.close()


def test_untouched_selector_passes_no_runtime_so_the_engines_decide() -> None:
    selector = panels.DeviceSelector([CPU, GPU])
    assert not selector.custom and selector.explicit_runtime is None
    assert selector.measurement_runtime is None  # MeasureSettings.runtime=None, as `nbkit sweep`
    assert "nbkit tune-device" in selector.code.value and selector.defaults_button.disabled
    selector.device = "GPU.0"  # a device is no property: the chat still asks the engine, per model...
    assert not selector.custom and selector.explicit_runtime is None
    assert selector.measurement_runtime == selector.runtime  # ...a measurement can only carry it as a runtime
    selector.device = "CPU"
    selector.threads.value = 1  # a picked property: from now on every panel passes the runtime as it is
    assert selector.custom and selector.explicit_runtime == selector.runtime
    assert selector.measurement_runtime == selector.runtime
    assert selector.runtime.property_dict["INFERENCE_NUM_THREADS"] == 1
    assert not selector.defaults_button.disabled
    selector.defaults_button.click()
    assert not selector.custom and selector.measurement_runtime is None
    assert "INFERENCE_NUM_THREADS" not in selector.runtime.property_dict
    selector.close()


def test_a_runtime_handed_in_is_an_explicit_choice() -> None:
    runtime = RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    selector = panels.DeviceSelector([CPU], runtime=runtime)
    assert selector.custom and selector.explicit_runtime == runtime
    selector.close()


def test_the_selector_shows_the_runtime_a_model_gets_from_its_tuning(tmp_path: Path) -> None:
    cache_root = tmp_path / "cache"
    folder = cache_root / "openvino-compressed" / "some-model"
    folder.mkdir(parents=True)
    manifest = {"kind": "openvino-compressed", "key": "1" * 64, "metadata": {"label": "int4_sym-g32-r1"}}
    model = OVModel(CacheEntry(folder, manifest))
    Ledger(cache_root / "ledger.jsonl").append(
        {"kind": TUNING_KIND, "model_key": "1" * 64, "device": "CPU", "best": {"NUM_STREAMS": 1}}
    )
    selector = panels.DeviceSelector([CPU], check=panels.device_selector.no_device_problem)
    selector.set_trait("model", model)
    assert selector.runtime_for(model) == RuntimeConfig.create("CPU", {"NUM_STREAMS": 1})
    assert "NUM_STREAMS" in selector.code.value and "int4_sym-g32-r1 runs with" in selector.code.value
    selector.close()


def test_devices_an_engine_cannot_use_are_disabled_with_its_reason(tmp_path: Path) -> None:
    manifest = {"kind": "ort-genai", "key": "2" * 64, "metadata": {"label": "int4-b32-acc4"}}
    ort_model = OrtGenAIModel(CacheEntry(tmp_path, manifest))
    reason = panels.device_selector.engine_device_problem(GPU, ort_model)
    assert reason is not None and "CPU only" in reason
    assert panels.device_selector.engine_device_problem(CPU, ort_model) is None
    assert panels.device_selector.engine_device_problem(GPU, None) is None
    selector = panels.DeviceSelector([CPU, GPU])
    selector.device = "GPU.0"
    selector.set_trait("model", ort_model)  # the default check asks the model's engine
    assert set(selector.unavailable()) == {"GPU.0", "AUTO"}
    assert all("CPU only" in why for why in selector.unavailable().values())
    assert selector.device == "CPU" and selector.runtime.device == "CPU"  # fell back to what works
    selector.close()


def _ort_model(cache_root: Path, key: str = "3" * 64) -> OrtGenAIModel:
    folder = cache_root / "ort-genai" / "some-model"
    folder.mkdir(parents=True)
    (folder / "genai_config.json").write_text("{}")
    return OrtGenAIModel(CacheEntry(folder, {"kind": "ort-genai", "key": key, "metadata": {"label": "int4"}}))


def _ov_model(cache_root: Path) -> OVModel:
    folder = cache_root / "openvino-compressed" / "some-model"
    folder.mkdir(parents=True)
    manifest = {"kind": "openvino-compressed", "key": "4" * 64, "metadata": {"label": "int4_sym-g32-r1"}}
    return OVModel(CacheEntry(folder, manifest))


def test_without_a_model_the_controls_are_the_reference_engines(tmp_path: Path) -> None:
    selector = panels.DeviceSelector([CPU])
    assert selector.engine is REFERENCE_ENGINE
    assert REFERENCE_ENGINE.title in selector.engine_note.value
    assert selector.knob_properties == {
        "hint": "PERFORMANCE_HINT",
        "streams": "NUM_STREAMS",
        "threads": "INFERENCE_NUM_THREADS",
        "kv_cache_precision": "KV_CACHE_PRECISION",
        "compiled_cache": "CACHE_DIR",
    }  # and precision, which this CPU does not list as writable, is the device's to refuse
    assert selector.unavailable_knobs == {"precision": "not offered by CPU"}
    assert selector.threads.tooltip.startswith("INFERENCE_NUM_THREADS: ")
    selector.close()


def test_an_ort_model_enables_only_threads_which_set_its_session_option(tmp_path: Path) -> None:
    ort = get_engine("ort")
    selector = panels.DeviceSelector([CPU, GPU])
    selector.hint.value = "THROUGHPUT"  # picked for OpenVINO, before the ORT model arrives
    selector.set_trait("model", _ort_model(tmp_path / "cache"))
    assert selector.engine is ort and ort.title in selector.engine_note.value
    enabled = [knob for knob, control in selector.knob_controls.items() if not control.disabled]
    assert enabled == ["threads"]
    assert selector.knob_properties == {"threads": "intra_op_num_threads"}
    assert selector.threads.tooltip.startswith("intra_op_num_threads: ")
    for knob, control in selector.knob_controls.items():
        if knob == "threads":
            continue
        reason = selector.unavailable_knobs[knob]
        assert reason.startswith(f"{ort.title} has no {panels.device_selector.KNOB_NAMES[knob]}: ")
        assert reason.endswith("it takes only a thread count (intra_op_num_threads).")
        assert control.tooltip == reason
        assert html.escape(reason) in selector.knob_labels[knob].value  # the label shows it on hover too
    assert selector.hint.tooltips == [selector.unavailable_knobs["hint"]] * len(PERFORMANCE_HINTS)
    assert all(button.disabled for button in selector.hint.buttons.values())
    # The hint picked earlier is not sent: ORT would drop it; the threads are its own option.
    assert selector.custom and selector.runtime == RuntimeConfig.create("CPU")
    selector.threads.value = 1
    assert selector.runtime == RuntimeConfig.create("CPU", {"intra_op_num_threads": 1})
    assert selector.explicit_runtime == selector.runtime
    assert ort.check_runtime(selector.runtime) == selector.runtime  # nothing the user set is dropped
    assert "intra_op_num_threads" in selector.code.value
    selector.close()


def test_switching_back_to_an_openvino_model_reenables_its_controls(tmp_path: Path) -> None:
    # This machine has no GPU.0 for OpenVINO's own check to find: let every device run any model.
    selector = panels.DeviceSelector([CPU, GPU], check=panels.device_selector.no_device_problem)
    selector.set_trait("model", _ort_model(tmp_path / "cache"))
    selector.threads.value = 1
    assert selector.runtime.property_dict == {"intra_op_num_threads": 1}
    selector.set_trait("model", _ov_model(tmp_path / "cache"))
    assert selector.engine is get_engine("openvino")
    assert REFERENCE_ENGINE.title in selector.engine_note.value
    for knob in ("hint", "streams", "threads", "kv_cache_precision", "compiled_cache"):
        assert not selector.knob_controls[knob].disabled, knob
    assert selector.hint.tooltips[0].startswith("One request at a time")
    # The same choices, now as OpenVINO's properties.
    assert selector.runtime == RuntimeConfig.create(
        "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}
    )
    selector.device = "GPU.0"  # and the device decides again what it takes
    assert selector.threads.disabled and "not offered by GPU.0" in selector.threads.tooltip
    selector.close()


def test_use_defaults_with_an_ort_model_forgets_the_threads(tmp_path: Path) -> None:
    selector = panels.DeviceSelector([CPU])
    model = _ort_model(tmp_path / "cache")
    selector.set_trait("model", model)
    selector.threads.value = 1
    assert selector.custom
    selector.defaults_button.click()
    assert not selector.custom and selector.explicit_runtime is None and selector.measurement_runtime is None
    assert selector.runtime_for(model) == get_engine("ort").default_runtime(model, "CPU")
    selector.close()


def test_a_thread_count_out_of_range_is_refused_with_the_range_not_clamped() -> None:
    selector = panels.DeviceSelector([CPU])
    before = selector.runtime
    selector.threads.value = 999
    assert selector.threads.value == 999  # what the user typed stays, with why it is refused
    expected = f"Threads must be a whole number from 0 (the runtime decides) to {CORES}, the CPU cores of "
    assert selector.problem.startswith(expected) and selector.problem.endswith("not 999.")
    assert html.escape(selector.problem) in selector.problem_view.value
    assert selector.runtime == before and "999" not in selector.code.value
    selector.threads.value = -1  # what the core refuses is the core's sentence
    assert selector.problem == (
        "INFERENCE_NUM_THREADS must be a whole number >= 0 (0 lets the device choose), not -1."
    )
    assert selector.runtime == before
    selector.threads.value = CORES
    assert selector.problem == "" and selector.problem_view.value == ""
    assert selector.runtime.property_dict["INFERENCE_NUM_THREADS"] == CORES
    selector.close()


def test_the_runtime_snippet_keeps_each_property_on_one_line() -> None:
    selector = panels.DeviceSelector([CPU])
    selector.kv_precision.value = "u8"
    code = selector.code.value
    assert "white-space:pre;" in code and "monospace" in code and "overflow-x:auto" in code
    assert "\n    &#x27;KV_CACHE_PRECISION&#x27;: &#x27;u8&#x27;,\n" in code
    assert panels.device_selector.runtime_code(RuntimeConfig.create("CPU")) == "RuntimeConfig.create('CPU')"
    selector.close()


def test_the_performance_hint_shows_its_choice_as_the_other_choice_buttons_do() -> None:
    selector = panels.DeviceSelector([CPU])
    assert isinstance(selector.hint, panels._common.ChoiceButtons)
    picked = selector.hint.buttons[selector.hint.value]
    assert picked.button_style == "info" and picked.icon == "check"
    assert selector.hint.children[0].layout.flex_flow == "row wrap"  # a narrow card wraps, never cuts
    selector.hint.value = "THROUGHPUT"
    assert selector.runtime.property_dict["PERFORMANCE_HINT"] == "THROUGHPUT" and selector.custom
    selector.close()
