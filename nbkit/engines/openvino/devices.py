"""The inference devices OpenVINO sees, with the properties a device selector needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from nbkit.errors import DeviceError

log = logging.getLogger(__name__)

# Virtual devices that schedule onto the physical ones: always valid if any device is.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO")
_REPORTED_PROPERTIES = (
    "DEVICE_TYPE",
    "DEVICE_ARCHITECTURE",
    "OPTIMIZATION_CAPABILITIES",
    "RANGE_FOR_STREAMS",
    "INFERENCE_PRECISION_HINT",
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_NUM_THREADS",
    "KV_CACHE_PRECISION",
    "GPU_DEVICE_TOTAL_MEM_SIZE",
    "NPU_DEVICE_TOTAL_MEM_SIZE",
)


@dataclass(frozen=True)
class DeviceInfo:
    """One device: ``name`` as OpenVINO addresses it (``CPU``, ``GPU.0``), and what it offers."""

    name: str
    full_name: str
    capabilities: tuple[str, ...] = ()
    writable_properties: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def device_type(self) -> str:
        return self.name.split(".")[0]

    @property
    def supports_performance_hint(self) -> bool:
        return "PERFORMANCE_HINT" in self.writable_properties


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if hasattr(value, "get_type_name"):  # ov.Type: "bf16" rather than "<Type: 'bfloat16'>"
        return str(value.get_type_name())
    name = getattr(value, "name", None)  # enums such as PerformanceMode
    if isinstance(name, str) and not isinstance(value, str):
        return name
    return str(value)


def _describe(core: Any, name: str) -> DeviceInfo:
    supported = core.get_property(name, "SUPPORTED_PROPERTIES")
    writable = tuple(sorted(k for k, mode in supported.items() if str(mode) == "RW"))
    properties: dict[str, str] = {}
    for key in _REPORTED_PROPERTIES:
        if key in supported:
            try:
                properties[key] = _text(core.get_property(name, key))
            except Exception as exc:  # a driver may refuse a read-only query; skip that one
                log.debug("Cannot read %s of %s: %s", key, name, exc)
    capabilities = (
        tuple(properties.get("OPTIMIZATION_CAPABILITIES", "").split(", "))
        if properties.get("OPTIMIZATION_CAPABILITIES")
        else ()
    )
    return DeviceInfo(
        name=name,
        full_name=_text(core.get_property(name, "FULL_DEVICE_NAME")),
        capabilities=capabilities,
        writable_properties=writable,
        properties=properties,
    )


@cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def list_devices() -> list[DeviceInfo]:
    """Every physical device OpenVINO can use on this machine (``CPU`` at least)."""
    core = _core()
    return [_describe(core, name) for name in core.available_devices]


def available_device_names() -> list[str]:
    return list(_core().available_devices)


def check_device(device: str, available: list[str] | None = None) -> str:
    """Return ``device`` normalized (upper case) or raise :class:`DeviceError` naming the choices.

    Accepts physical devices (``CPU``, ``GPU``, ``GPU.1``) and virtual ones with their
    candidate lists (``AUTO``, ``AUTO:GPU,CPU``, ``HETERO:GPU,CPU``).
    """
    names = available if available is not None else available_device_names()
    requested = device.strip().upper()
    if not requested:
        raise DeviceError(f"No device given; choose one of: {', '.join([*names, 'AUTO'])}.")
    virtual, _, targets = requested.partition(":")
    if virtual in VIRTUAL_DEVICES:
        candidates = [t for t in targets.split(",") if t] if targets else []
    else:
        candidates = [requested]
    for candidate in candidates:
        if candidate not in names and not any(n.split(".")[0] == candidate for n in names):
            raise DeviceError(
                f"Unknown device {candidate!r}; OpenVINO sees {', '.join(names) or 'no device'} on this machine "
                "(use one of those, or AUTO to let OpenVINO choose)."
            )
    return requested


# NPUs run weight-compressed LLMs with symmetric INT4 / INT8 weights (OpenVINO's NPU guide);
# asymmetric and NF4 weights, and float models, are not what their LLM pipeline expects.
_NPU_WEIGHT_MODES = ("int4_sym", "int8_sym")


def device_problem(device: DeviceInfo, model: Any | None) -> str | None:
    """Why ``device`` cannot run ``model`` (an :class:`~nbkit.artifacts.OVModel`), or None.

    Rules that need no trial load: an NPU needs a symmetric INT4/INT8 compressed model, and a
    discrete accelerator needs memory for the weights plus room for activations and the KV cache.
    """
    if model is None:
        return None
    metadata = getattr(getattr(model, "entry", None), "metadata", {}) or {}
    if device.device_type == "NPU":
        mode = str((metadata.get("config") or {}).get("mode", ""))
        if mode not in _NPU_WEIGHT_MODES:
            what = f"{mode} weights" if mode else "a float model"
            return f"{device.name} runs LLMs with symmetric INT4 or INT8 weights; this is {what}."
    for key in ("GPU_DEVICE_TOTAL_MEM_SIZE", "NPU_DEVICE_TOTAL_MEM_SIZE"):
        total = device.properties.get(key, "")
        if total.isdigit():
            needed = int(getattr(model, "weights_bytes", 0) * 1.5)  # weights + activations/KV headroom
            if needed > int(total):
                return f"{device.name} has {int(total) / 2**30:.1f} GiB; this model needs about {needed / 2**30:.1f} GiB."
    return None
