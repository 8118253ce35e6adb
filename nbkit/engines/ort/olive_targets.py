"""Where an Olive workflow can run: execution providers, GPU variants, and Olive's own validation.

* :func:`available_execution_providers` is what this machine's onnxruntime can run with, unlike
  ``onnxruntime.get_all_providers()``, which lists every provider the API knows of.
  :func:`genai_interfaces` gives onnxruntime-genai's own flags (``is_cuda_available()`` ...):
  whether the installed package was built with that interface, not whether the hardware is there.
* :func:`gpu_variant_configs` and :func:`gpu_commands` are the CUDA and DirectML forms of the
  tutorial's GPU commands that work with olive-ai 0.13 (``ModelBuilder`` in a config; for the
  command line, ``auto-opt`` with ``--use_model_builder``: without it the TorchScript export fails
  under transformers 5.5).
* :func:`validate_olive_config` checks a workflow without running it: Olive's own parser
  (``RunConfig.parse_file_or_obj``), the input model, and each pass's own parameter validation
  on every accelerator of the target system. :func:`runnable_here` says plainly whether the
  model a config builds can load on this machine.

A GPU workflow of ModelBuilder alone builds on a CPU machine (ModelBuilder needs no session),
but its model loads only where onnxruntime-genai has that provider: nbkit validates such a config
here and never presents a run of it as working.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbkit.engines.ort.deps import require_olive
from nbkit.engines.ort.olive_runner import run_olive_command
from nbkit.errors import ConfigError, OliveRunError, error_summary

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DML_PROVIDER = "DmlExecutionProvider"
# The device Olive's accelerator spec pairs with each provider (what `--device` takes).
PROVIDER_DEVICES = {
    CPU_PROVIDER: "cpu",
    CUDA_PROVIDER: "gpu",
    DML_PROVIDER: "gpu",
    "ROCMExecutionProvider": "gpu",
    "MIGraphXExecutionProvider": "gpu",
    "TensorrtExecutionProvider": "gpu",
    "NvTensorRTRTXExecutionProvider": "gpu",
    "WebGpuExecutionProvider": "gpu",
    "JsExecutionProvider": "gpu",
    "OpenVINOExecutionProvider": "cpu",
    "QNNExecutionProvider": "npu",
    "VitisAIExecutionProvider": "npu",
}
# The onnxruntime-genai interface each provider needs (the ``is_<name>_available()`` flag), what
# hardware it stands for, and the package that brings it.
GENAI_INTERFACES = {
    CUDA_PROVIDER: ("cuda", "an NVIDIA GPU with CUDA 12", "onnxruntime-genai-cuda==0.14.1"),
    DML_PROVIDER: ("dml", "Windows with a DirectX 12 GPU", "onnxruntime-genai-directml==0.14.1"),
    "ROCMExecutionProvider": ("rocm", "an AMD GPU with ROCm", "an onnxruntime-genai build with ROCm"),
    "OpenVINOExecutionProvider": ("openvino", "onnxruntime with OpenVINO", "onnxruntime-openvino"),
    "QNNExecutionProvider": ("qnn", "a Qualcomm NPU", "onnxruntime-qnn"),
    "WebGpuExecutionProvider": ("webgpu", "a WebGPU device", "an onnxruntime build with WebGPU"),
}
GPU_VARIANTS = {"cuda": CUDA_PROVIDER, "dml": DML_PROVIDER}
HUB_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# -- execution providers ---------------------------------------------------------------------------


def available_execution_providers() -> tuple[str, ...]:
    """The execution providers this machine's onnxruntime can run with (``get_available_providers``)."""
    require_olive()
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def known_execution_providers() -> tuple[str, ...]:
    """Every provider onnxruntime's API knows of (``get_all_providers``): not what is installed."""
    require_olive()
    import onnxruntime

    return tuple(onnxruntime.get_all_providers())


def genai_interfaces() -> dict[str, bool]:
    """onnxruntime-genai's ``is_<name>_available()`` flags: interfaces built into the package, not hardware."""
    require_olive()
    import onnxruntime_genai as og

    flags = {}
    for attribute in sorted(dir(og)):
        match = re.fullmatch(r"is_(\w+)_available", attribute)
        if match:
            flags[match.group(1)] = bool(getattr(og, attribute)())
    return flags


def execution_provider_table() -> list[dict[str, Any]]:
    """One row per provider onnxruntime knows: device, available here, onnxruntime-genai flag."""
    available = set(available_execution_providers())
    interfaces = genai_interfaces()
    rows = []
    for provider in known_execution_providers():
        interface = GENAI_INTERFACES.get(provider)
        rows.append(
            {
                "provider": provider,
                "device": PROVIDER_DEVICES.get(provider, ""),
                "available_in_onnxruntime": provider in available,
                # CPU needs no interface flag; None: onnxruntime-genai has no flag for this provider
                "onnxruntime_genai_interface": True
                if provider == CPU_PROVIDER
                else interfaces.get(interface[0])
                if interface
                else None,
            }
        )
    return rows


# -- what a config targets --------------------------------------------------------------------------


def load_config(config: Mapping[str, Any] | Path | str) -> dict[str, Any]:
    """A workflow config as a dict: a mapping (copied) or the path of a JSON file."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    path = Path(config).expanduser()
    if not path.is_file():
        raise ConfigError(f"No Olive config at {path}; give the path of a JSON workflow file.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path.name} is not valid JSON ({exc}); note that JSON has no // comments."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} holds a JSON {type(data).__name__}, not a workflow object.")
    return data


def _engine_value(config: Mapping[str, Any], key: str) -> Any:
    # Olive 0.13 takes engine settings at the top level; older configs nest them under "engine".
    if key in config:
        return config[key]
    engine = config.get("engine")
    return engine.get(key) if isinstance(engine, Mapping) else None


def config_accelerators(config: Mapping[str, Any] | Path | str) -> list[tuple[str, tuple[str, ...]]]:
    """(device, execution providers) of each accelerator of the config's target system.

    Reads today's syntax and the older one (``engine`` block, ``config`` wrappers). A workflow
    without systems runs on Olive's default local system: the CPU.
    """
    data = load_config(config)
    systems = data.get("systems") or {}
    target = _engine_value(data, "target")
    system: Any = systems.get(target) if isinstance(target, str) else target
    if system is None and len(systems) == 1:
        system = next(iter(systems.values()))
    if not isinstance(system, Mapping):
        return [("cpu", (CPU_PROVIDER,))]
    inner = system.get("config") if isinstance(system.get("config"), Mapping) else system
    accelerators = inner.get("accelerators") or []
    found = []
    for accelerator in accelerators:
        device = str(accelerator.get("device") or "cpu").lower()
        providers = tuple(accelerator.get("execution_providers") or ())
        if not providers and device == "cpu":  # Olive fills in the CPU provider itself
            providers = (CPU_PROVIDER,)
        found.append((device, providers))
    return found or [("cpu", (CPU_PROVIDER,))]


def runnable_here(config: Mapping[str, Any] | Path | str) -> tuple[bool, str]:
    """Whether the model ``config`` builds can load on this machine, and the reason in one sentence.

    The test is onnxruntime's available providers plus onnxruntime-genai's interface flag for the
    provider: a CUDA or DirectML build needs both, whatever Olive itself manages to build here.
    """
    available = available_execution_providers()
    interfaces = genai_interfaces()
    for device, providers in config_accelerators(config):
        if not providers:
            return False, (
                f"The accelerator with device {device!r} names no execution provider; "
                "add execution_providers (e.g. CPUExecutionProvider) so it is clear what it needs."
            )
        for provider in providers:
            interface = GENAI_INTERFACES.get(provider)
            missing_genai = interface is not None and not interfaces.get(interface[0], False)
            if provider in available and not missing_genai:
                continue
            needs = f" It needs {interface[1]} and {interface[2]}." if interface else ""
            genai = (
                f" onnxruntime-genai here has no {interface[0]} interface (is_{interface[0]}_available() is False)."
                if missing_genai
                else ""
            )
            where = (
                "is not among this machine's onnxruntime providers"
                if provider not in available
                else "is in onnxruntime here but onnxruntime-genai cannot use it"
            )
            return False, (
                f"{provider} {where} ({', '.join(available)}), so a model built for it cannot load here."
                f"{genai}{needs}"
            )
    names = sorted({p for _, providers in config_accelerators(config) for p in providers})
    return True, f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} available here."


# -- GPU variants of the tutorial's commands --------------------------------------------------------


def modelbuilder_config(
    model: Path | str,
    provider: str = CPU_PROVIDER,
    *,
    device: str | None = None,
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = True,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """An Olive 0.13 workflow: ``HfModel`` ``model`` (folder or hub id) -> ModelBuilder int4 for ``provider``."""
    device = device or PROVIDER_DEVICES.get(provider, "gpu")
    short = {CPU_PROVIDER: "cpu", CUDA_PROVIDER: "cuda", DML_PROVIDER: "dml"}.get(provider, device)
    return {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": device, "execution_providers": [provider]}],
            }
        },
        "passes": {
            "model_builder": {
                "type": "ModelBuilder",
                "precision": "int4",
                "int4_block_size": block_size,
                "int4_accuracy_level": accuracy_level,
                "int4_is_symmetric": symmetric,
            }
        },
        "host": "local_system",
        "target": "local_system",
        "log_severity_level": 1,
        "output_dir": output_dir or f"models/{Path(str(model)).name}-{short}-int4",
    }


def gpu_variant_configs(model: Path | str = HUB_MODEL) -> dict[str, dict[str, Any]]:
    """The tutorial's CUDA and DirectML int4 builds as Olive 0.13 workflows: ``{"cuda": ..., "dml": ...}``.

    ``model`` is a local Hugging Face folder or a hub id. The tutorial's ``--use_ort_genai``
    TorchScript path fails under transformers 5.5; ModelBuilder is what works.
    """
    return {name: modelbuilder_config(model, provider) for name, provider in GPU_VARIANTS.items()}


def gpu_commands(model: Path | str, output_root: Path | str = "models") -> dict[str, list[str]]:
    """The tutorial's GPU ``olive auto-opt`` commands in the form that works with olive-ai 0.13.

    The arguments after ``olive`` (for :func:`~nbkit.engines.ort.olive_runner.run_olive_command`):
    the tutorial's, plus ``--use_model_builder``. ``auto-opt`` is deprecated in favour of
    ``optimize``, but ``optimize --precision int4`` schedules GPTQ, which downloads a data set.
    """
    commands = {}
    for name, provider in GPU_VARIANTS.items():
        commands[name] = [
            "auto-opt",
            "--model_name_or_path",
            str(model),
            "--output_path",
            str(Path(output_root) / f"{Path(str(model)).name}-{name}-int4"),
            "--device",
            "gpu",
            "--provider",
            provider,
            "--use_model_builder",
            "--use_ort_genai",
            "--precision",
            "int4",
            "--log_level",
            "1",
        ]
    return commands


def dry_run_command(args: Sequence[str], cwd: Path | str) -> dict[str, Any]:
    """The workflow config an ``olive`` command would run, from ``--dry_run --save_config_file``.

    Runs offline in ``cwd`` and builds nothing; the config Olive saved (``<output_path>/config.json``)
    can then go through :func:`validate_olive_config` and :func:`runnable_here`.
    """
    cwd = Path(cwd).expanduser()
    cwd.mkdir(parents=True, exist_ok=True)
    command = run_olive_command([*args, "--dry_run", "--save_config_file"], cwd)
    match = re.search(r"^Config file saved at (.+?)\s*$", command.output, re.MULTILINE)
    if command.returncode != 0 or not match:
        raise OliveRunError(f"`{command.shell}` saved no config: {command.error_line}")
    return load_config(Path(cwd, match.group(1)))


# -- validation -----------------------------------------------------------------------------------


class _Warnings(logging.Handler):
    """Collects Olive's warnings (e.g. "Keys {...} are not part of ModelBuilderConfig. Ignoring them.")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


def _pydantic_errors(exc: Exception) -> str:
    """The root causes of a pydantic ValidationError, without the "Invalid engine" follow-ups."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return error_summary(exc)
    parts: dict[str, str] = {}
    for error in errors():
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if re.fullmatch(r"Invalid \w+", message):  # a section failed because another one did
            continue
        # A union type reports one error per alternative ("int-enum[...]", "is-instance[...]"):
        # the first one says what the field takes.
        where = ".".join(str(p) for p in error.get("loc", ()) if "[" not in str(p))
        parts.setdefault(where, f"{where}: {message}" if where else message)
    return "; ".join(parts.values()) or error_summary(exc)


def _local_model(input_model: Mapping[str, Any]) -> bool:
    inner = input_model.get("config") if isinstance(input_model.get("config"), Mapping) else input_model
    path = inner.get("model_path")
    return not isinstance(path, str) or Path(path).expanduser().exists()


def validate_olive_config(config: Mapping[str, Any] | Path | str) -> list[str]:
    """Check an Olive workflow without running it; return Olive's warnings, raise ConfigError if invalid.

    Three levels: Olive's parser (structure, systems, provider names, search strategy), the input
    model (created when it is a local folder; a hub id is not fetched), and every pass's own
    parameters for every accelerator of the target (what Olive would reject at run time, after
    loading the model). Keys a pass does not know are ignored by Olive: they come back as warnings.
    """
    require_olive()
    data = load_config(config)
    handler = _Warnings()
    olive_logger = logging.getLogger("olive")
    olive_logger.addHandler(handler)
    warnings: list[str] = []
    try:
        from olive.hardware.accelerator import AcceleratorSpec
        from olive.package_config import OlivePackageConfig
        from olive.workflows.run.config import RunConfig

        try:
            run_config = RunConfig.parse_file_or_obj(copy.deepcopy(data))
        except Exception as exc:
            raise ConfigError(f"Olive rejects this config: {_pydantic_errors(exc)}.") from None
        input_model = data.get("input_model") or {}
        if _local_model(input_model):
            try:
                run_config.input_model.create_model()
            except Exception as exc:
                raise ConfigError(
                    f"Olive cannot create the input model ({input_model.get('type')}): "
                    f"{type(exc).__name__}: {error_summary(exc)}."
                ) from None
        else:
            warnings.append(
                f"The input model {input_model.get('model_path')!r} is a hub id: not loaded here "
                "(offline, give a local folder as `olive run -m` does)."
            )
        package = OlivePackageConfig.load_default_config()
        for device, providers in config_accelerators(data):
            for provider in providers:
                try:
                    spec = AcceleratorSpec(accelerator_type=device, execution_provider=provider)
                except Exception as exc:
                    raise ConfigError(
                        f"Olive rejects the accelerator {device}/{provider}: {error_summary(exc)}."
                    ) from None
                for name, pass_configs in run_config.passes.items():
                    for pass_config in pass_configs:
                        warnings.extend(_check_pass(package, spec, name, pass_config, provider))
    finally:
        olive_logger.removeHandler(handler)
    return [*warnings, *(m for m in handler.messages if m not in warnings)]


def _check_pass(package: Any, spec: Any, name: str, pass_config: Any, provider: str) -> list[str]:
    try:
        pass_class = package.import_pass_module(pass_config.type)
    except Exception as exc:  # Olive raises a bare KeyError or ValueError for an unknown pass
        raise ConfigError(
            f"Olive has no pass {pass_config.type!r} (pass {name!r}): {error_summary(exc)}."
        ) from None
    try:
        checked = pass_class.generate_config(spec, pass_config.config, disable_search=True)
    except Exception as exc:
        raise ConfigError(
            f"Pass {name!r} ({pass_class.__name__}) rejects its settings on {spec}: {_pydantic_errors(exc)}."
        ) from None
    if not pass_class.validate_config(checked, spec):
        raise ConfigError(
            f"Pass {name!r} ({pass_class.__name__}) says its settings are invalid on {spec}; "
            "Olive would skip it and produce no model."
        )
    supported = getattr(pass_class, "supported_providers", None)
    if supported and provider not in supported:
        return [f"Pass {name!r} ({pass_class.__name__}) does not list {provider} among its providers."]
    return []


__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "DML_PROVIDER",
    "GENAI_INTERFACES",
    "PROVIDER_DEVICES",
    "available_execution_providers",
    "config_accelerators",
    "dry_run_command",
    "execution_provider_table",
    "genai_interfaces",
    "gpu_commands",
    "gpu_variant_configs",
    "known_execution_providers",
    "load_config",
    "modelbuilder_config",
    "runnable_here",
    "validate_olive_config",
]
