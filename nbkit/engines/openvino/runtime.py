"""Which OpenVINO runtime properties a model runs with: the tuned ones, else nbkit's defaults.

The policy lives here, below both the chat session (which needs a runtime when none is
given) and device tuning (which times candidates with chat sessions and records the best),
so neither imports the other to decide.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nbkit.artifacts import OVModel
from nbkit.config import RuntimeConfig
from nbkit.engines.openvino.devices import check_device
from nbkit.engines.tuning_report import tuned_properties
from nbkit.errors import ConfigError, error_summary
from nbkit.infra.cache import Cache
from nbkit.infra.ledger import Ledger

log = logging.getLogger(__name__)

# LATENCY: a chat is one request at a time (on a loaded 2-core CPU it decoded up to twice as fast
# as the defaults; on a quiet one the two were equal within noise).
# f32: on CPUs with bf16 units (AVX512-BF16, AMX) OpenVINO computes in bf16 by default, which on
# SmolLM2-135M turned INT8's "The capital of France is Paris." into "L'Étoile, la Marseillaise..."
# (1 of 8 fixed answers equal to float's, against 4 of 8 in f32), while INT4 decoded at the same
# speed within noise (interleaved medians 86 tokens/s both). CPUs without bf16 compute in f32 anyway.
DEFAULT_RUNTIME = RuntimeConfig.create(
    "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
)


def default_runtime(model: OVModel | Path | str, device: str = "CPU") -> RuntimeConfig:
    """What `nbkit tune-device` found best for this model and device, else :data:`DEFAULT_RUNTIME`."""
    if isinstance(model, OVModel):
        tuned = tuned_runtime(model, device)
        if tuned is not None:
            log.info("Using the tuned properties %s for %s on %s", tuned.property_dict, model.label, device)
            return tuned
    return base_runtime(device)


def base_runtime(device: str = "CPU") -> RuntimeConfig:
    """nbkit's untuned properties for ``device``: :data:`DEFAULT_RUNTIME` on CPU, LATENCY elsewhere.

    Only the CPU gets the f32 precision hint: GPUs and NPUs run f16 by design.
    """
    if device.upper() == "CPU":
        return DEFAULT_RUNTIME
    return RuntimeConfig.create(device, {"PERFORMANCE_HINT": "LATENCY"})


# Properties openvino-genai's LLMPipeline or the OpenVINO Core read themselves: a device plugin
# does not know them, so check_runtime passes them on unchecked (tune-device times
# ATTENTION_BACKEND, the device selector sets CACHE_DIR).
PIPELINE_PROPERTIES = frozenset(
    {
        "ATTENTION_BACKEND",
        "CACHE_DIR",
        "CACHE_MODE",
        "ENABLE_MMAP",
        "MODEL_PROPERTIES",
        "DEVICE_PROPERTIES",
        "scheduler_config",
        "draft_model",
        "adapters",
        "generation_config",
        "prompt_lookup",
    }
)
# Devices whose LLM pipeline hands the properties to the device plugin as they are, so asking
# the plugin beforehand gives its verdict. The NPU pipeline and the virtual devices (AUTO,
# HETERO, MULTI) take options of their own; for them RuntimeConfig's checks are all there is.
_PLUGIN_CHECKED_DEVICES = ("CPU", "GPU")


def check_runtime(runtime: RuntimeConfig) -> str:
    """``runtime``'s device, normalized, once it and every property are known to work.

    Cheap (no model is read) so commands call it before any export or compression: the
    device must exist (:func:`~nbkit.engines.openvino.devices.check_device`) and, on CPU and GPU, the device
    plugin must take every property name and value. RuntimeConfig itself has already checked
    what needs no device. Raises :class:`DeviceError` or :class:`ConfigError`, one sentence.
    """
    device = check_device(runtime.device)
    properties = {k: v for k, v in runtime.properties if k not in PIPELINE_PROPERTIES}
    if device.split(".")[0] not in _PLUGIN_CHECKED_DEVICES or not properties:
        return device
    import openvino as ov

    core = ov.Core()  # a throwaway Core: set_property changes the defaults of the Core it is called on
    try:
        supported = core.get_property(device, "SUPPORTED_PROPERTIES")  # also loads the plugin, so
    except RuntimeError as exc:  # a driver that cannot answer: loading the model will say why
        log.debug("Cannot ask %s for its properties (%s); not checking them now", device, error_summary(exc))
        return device
    settable = sorted(name for name, mode in supported.items() if str(mode) in ("RW", "WO"))
    for key, value in properties.items():  # ...set_property below is judged at once, not lazily
        if key not in supported:
            raise ConfigError(
                f"{device} has no OpenVINO property {key!r}; the ones it takes are {', '.join(settable)}."
            )
        try:
            core.set_property(device, {key: value})
        except Exception as exc:  # the plugin's RuntimeError: a wrong value or a read-only property
            reason = error_summary(exc).rstrip(".").replace(". ", "; ")
            raise ConfigError(f"{device} does not accept {key}={value!r} ({reason}).") from exc
    return device


def tuned_runtime(model: OVModel, device: str = "CPU", ledger: Ledger | None = None) -> RuntimeConfig | None:
    """The best properties :func:`tune_device` recorded for this model and device, if any."""
    ledger = ledger if ledger is not None else Ledger(cache=Cache(model.cache_root))
    best = tuned_properties(ledger, model.entry.key, device)
    return None if best is None else RuntimeConfig.create(device.upper(), best)
