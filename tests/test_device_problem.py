"""The core rule that says why a device cannot run a model (shown by the device selector)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nbkit.engines.openvino.devices import DeviceInfo, device_problem


@dataclass
class _Entry:
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Model:
    entry: _Entry
    weights_bytes: int


def _model(mode: str | None, weights_bytes: int = 80 * 2**20) -> _Model:
    return _Model(_Entry({"config": {"mode": mode}} if mode else {}), weights_bytes)


def test_cpu_runs_everything() -> None:
    cpu = DeviceInfo("CPU", "Some CPU")
    for mode in (None, "int4_asym", "nf4", "int8_sym"):
        assert device_problem(cpu, _model(mode)) is None
    assert device_problem(cpu, None) is None


def test_npu_needs_symmetric_int4_or_int8_weights() -> None:
    npu = DeviceInfo("NPU", "Intel NPU")
    assert device_problem(npu, _model("int4_sym")) is None
    assert device_problem(npu, _model("int8_sym")) is None
    asym = device_problem(npu, _model("int4_asym"))
    assert asym is not None and "symmetric" in asym and "int4_asym" in asym
    assert "float model" in (device_problem(npu, _model(None)) or "")


def test_gpu_without_memory_for_the_weights_is_refused() -> None:
    small_gpu = DeviceInfo("GPU.0", "iGPU", properties={"GPU_DEVICE_TOTAL_MEM_SIZE": str(100 * 2**20)})
    big_gpu = DeviceInfo("GPU.1", "dGPU", properties={"GPU_DEVICE_TOTAL_MEM_SIZE": str(8 * 2**30)})
    reason = device_problem(small_gpu, _model("int8_asym", weights_bytes=130 * 2**20))
    assert reason is not None and "GPU.0" in reason and "GiB" in reason
    assert device_problem(big_gpu, _model("int8_asym", weights_bytes=130 * 2**20)) is None
