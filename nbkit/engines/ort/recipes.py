"""Olive recipes in the olive-recipes layout, offline: find, copy, adapt and run them.

nbkit ships its own recipes for the bundled model in the layout of the microsoft/olive-recipes
repository, ``<org>-<model>/<target>/``, one folder per target (``cpu``, ``cuda``, ``dml``),
each with an ``info.yml`` (``arch`` and a ``recipes:`` list naming every JSON config with its
``devices`` and ``eps``), a ``README.md``, a ``requirements.txt`` and the configs themselves.

The tutorial's two ways of using a recipe, both offline:

* method 1, a recipe as it is: :func:`run_recipe` on a shipped config with ``model=`` a local
  Hugging Face folder (what ``olive run --config olive_config.json -m <folder>`` does: the
  recipe names a hub id, and the hub is not reachable);
* method 2, a copy adapted to one's needs: :func:`copy_recipe` into a user folder, then
  :func:`adapt_recipe` (int4 -> int8, block size, symmetry, accuracy level, execution provider),
  which writes the adapted config next to the original and lists it in ``info.yml``.

Every config is checked with Olive's own parser and each pass's validation before it is
written or run (:func:`nbkit.engines.ort.olive_targets.validate_olive_config`), and a config
whose execution provider this machine lacks is refused by :func:`run_recipe` with the reason
(:func:`~nbkit.engines.ort.olive_targets.runnable_here`).

int8 is ModelBuilder fp32 followed by ``OnnxBlockWiseRtnQuantization`` bits 8 with the LM head
left in float: ModelBuilder's own ``precision: int8`` fails in onnxruntime-genai 0.14.1's
builder (``KeyError: <Precision.INT8: 'int8'>``, and Olive then reports no output model), and
quantizing the LM head renames the graph output to ``logits_Q8``, which onnxruntime-genai cannot
find.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nbkit.engines.ort.olive_config import BLOCK_SIZES
from nbkit.engines.ort.olive_runner import OUTPUT_DIR, OliveRun, run_olive_config
from nbkit.engines.ort.olive_targets import (
    PROVIDER_DEVICES,
    config_accelerators,
    load_config,
    runnable_here,
    validate_olive_config,
)
from nbkit.errors import ConfigError, ModelSourceError
from nbkit.infra.progress import ProgressCallback, ProgressReporter

log = logging.getLogger(__name__)

RECIPES_ROOT = Path(__file__).resolve().with_name("recipes")
INFO_FILE = "info.yml"
README_FILE = "README.md"
REQUIREMENTS_FILE = "requirements.txt"
GENAI_CONFIG = "genai_config.json"
RUN_RECORD = "recipe_run.json"  # in the run's work folder: what was run, for reuse
SCRATCH = ".olive-scratch"  # run_olive_config's folder for Olive's cache and temporary files
PRECISIONS = ("int4", "int8", "fp32")
INT8_PASS = "int8_rtn"
# ModelBuilder's name for the LM head's MatMul: left in float so the graph output stays "logits".
LM_HEAD_NODE = "/lm_head/MatMul"
_FILE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One entry of a recipe folder's ``info.yml``: a named config for some devices and providers."""

    name: str
    model: str  # the <org>-<model> folder
    target: str  # the target folder: cpu, cuda, dml, ...
    config_path: Path
    devices: tuple[str, ...]
    eps: tuple[str, ...]
    arch: str

    @property
    def folder(self) -> Path:
        return self.config_path.parent

    @property
    def key(self) -> str:
        """``<org>-<model>/<target>``: the recipe folder's name in the olive-recipes layout."""
        return f"{self.model}/{self.target}"


# -- reading the layout ---------------------------------------------------------------------------


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


def _read_info(folder: Path) -> dict[str, Any]:
    import yaml  # transformers' dependency, so always there

    path = folder / INFO_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a recipe folder: it has no {INFO_FILE}.")
    try:
        info = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("recipes", []), list):
        raise ConfigError(f"{path} needs a `recipes:` list of entries with name and file.")
    return info


def read_recipe_folder(folder: Path | str) -> tuple[Recipe, ...]:
    """The recipes a folder's ``info.yml`` lists (olive-recipes' ``devices``/``device`` and ``eps``/``ep`` both read)."""
    folder = Path(folder).expanduser()
    info = _read_info(folder)
    recipes = []
    for entry in info.get("recipes") or []:
        if not isinstance(entry, Mapping) or not entry.get("file"):
            raise ConfigError(f"{folder / INFO_FILE} has a recipe entry without `file`: {entry!r}.")
        recipes.append(
            Recipe(
                name=str(entry.get("name") or Path(str(entry["file"])).stem),
                model=folder.parent.name,
                target=folder.name,
                config_path=folder / str(entry["file"]),
                devices=_as_tuple(entry.get("devices", entry.get("device"))),
                eps=_as_tuple(entry.get("eps", entry.get("ep"))),
                arch=str(info.get("arch", "")),
            )
        )
    return tuple(recipes)


def shipped_recipe_folders() -> tuple[Path, ...]:
    """nbkit's recipe folders, ``recipes/<org>-<model>/<target>/``."""
    return tuple(sorted(p.parent for p in RECIPES_ROOT.glob(f"*/*/{INFO_FILE}")))


def shipped_recipes() -> tuple[Recipe, ...]:
    """Every recipe nbkit ships, from the ``info.yml`` of each recipe folder."""
    return tuple(recipe for folder in shipped_recipe_folders() for recipe in read_recipe_folder(folder))


def find_recipe(name: str) -> Recipe:
    """A shipped recipe by its name in ``info.yml`` or by its folder, ``<org>-<model>/<target>``."""
    recipes = shipped_recipes()
    for recipe in recipes:
        if name in (recipe.name, recipe.key):
            return recipe
    choices = sorted({r.key for r in recipes} | {r.name for r in recipes})
    raise ConfigError(f"No shipped recipe is called {name!r}; choose one of: {', '.join(choices)}.")


def _is_shipped(path: Path) -> bool:
    try:
        path.expanduser().resolve().relative_to(RECIPES_ROOT)
    except ValueError:
        return False
    return True


# -- method 2: copy and adapt --------------------------------------------------------------------


def copy_recipe(name: str | Recipe, dest: Path | str) -> Path:
    """Copy a shipped recipe folder into ``dest/<org>-<model>/<target>/`` and return that folder.

    Files already there with the same bytes are left as they are (copying twice is harmless);
    a file there with other content is never overwritten: ConfigError, and nothing is copied.
    """
    recipe = name if isinstance(name, Recipe) else find_recipe(name)
    target = Path(dest).expanduser() / recipe.model / recipe.target
    files = sorted(p for p in recipe.folder.iterdir() if p.is_file())
    for source in files:
        existing = target / source.name
        if existing.exists() and not (existing.is_file() and filecmp.cmp(source, existing, shallow=False)):
            raise ConfigError(
                f"{existing} already exists and differs from the shipped {recipe.key} recipe's; nbkit does "
                "not overwrite it: copy into another folder, or move that file away first."
            )
    target.mkdir(parents=True, exist_ok=True)
    for source in files:
        if not (target / source.name).exists():
            shutil.copyfile(source, target / source.name)
    log.info("Copied recipe %s into %s", recipe.key, target)
    return target


def today_syntax(config: Mapping[str, Any]) -> dict[str, Any]:
    """An Olive workflow in olive-ai 0.13's syntax: ``config`` wrappers unwrapped, ``engine`` keys lifted.

    Olive still parses the older form (the tutorial's and many recipes'), but editing it is easier
    in one form. ``PyTorchModel`` with ``hf_config`` has no such translation: Olive 0.13 rejects it.
    """
    data = json.loads(json.dumps(config))  # a deep copy of plain JSON values

    def unwrap(node: Any) -> Any:
        if isinstance(node, dict) and isinstance(node.get("config"), dict) and "type" in node:
            inner = node.pop("config")
            return {**node, **inner}
        return node

    if "input_model" in data:
        data["input_model"] = unwrap(data["input_model"])
    for section in ("systems", "passes", "evaluators", "data_configs"):
        if isinstance(data.get(section), dict):
            data[section] = {k: unwrap(v) for k, v in data[section].items()}
    engine = data.pop("engine", None)
    if isinstance(engine, dict):
        for key, value in engine.items():
            data.setdefault(key, value)
    return data


def _modelbuilder_pass(passes: Mapping[str, Any]) -> str:
    for name, settings in passes.items():
        if str(settings.get("type", "")).lower() == "modelbuilder":
            return name
    raise ConfigError(
        "This config has no ModelBuilder pass; adapt_recipe changes ModelBuilder recipes "
        "(edit other workflows by hand, then check them with validate_olive_config)."
    )


def _precision_of(passes: Mapping[str, Any]) -> str:
    if INT8_PASS in passes:
        return "int8"
    return str(passes.get(_modelbuilder_pass(passes), {}).get("precision", "fp32"))


def _adapted_passes(
    passes: Mapping[str, Any],
    precision: str,
    block_size: int | None,
    symmetric: bool | None,
    accuracy_level: int | None,
) -> dict[str, Any]:
    builder_name = _modelbuilder_pass(passes)
    builder = dict(passes[builder_name])
    old_int8 = dict(passes.get(INT8_PASS) or {})
    # Keep what the recipe chose unless the caller changes it (an int8 copy keeps its int8 choices).
    was_int4 = builder.get("precision") == "int4"
    block = block_size or (builder.get("int4_block_size") if was_int4 else old_int8.get("block_size")) or 32
    sym = (
        symmetric
        if symmetric is not None
        else builder.get("int4_is_symmetric", old_int8.get("is_symmetric", True))
    )
    accuracy = accuracy_level or builder.get("int4_accuracy_level") or old_int8.get("accuracy_level") or 4
    if block not in BLOCK_SIZES:
        raise ConfigError(f"block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, not {block!r}.")
    if accuracy not in (1, 2, 3, 4):
        raise ConfigError(
            f"accuracy_level must be 1, 2, 3 or 4 (fp32, fp16, bf16, int8 compute), not {accuracy!r}."
        )
    for key in [k for k in builder if k.startswith("int4_")]:
        builder.pop(key)
    adapted: dict[str, Any] = {}
    for name, settings in passes.items():
        if name == INT8_PASS:  # nbkit's own int8 pass: rebuilt below when still wanted
            continue
        if name != builder_name:
            adapted[name] = settings
            continue
        if precision == "int4":
            builder.update(
                precision="int4", int4_block_size=block, int4_accuracy_level=accuracy, int4_is_symmetric=sym
            )
            adapted[name] = builder
        elif precision == "int8":
            adapted[name] = {**builder, "precision": "fp32"}
            adapted[INT8_PASS] = {
                "type": "OnnxBlockWiseRtnQuantization",
                "bits": 8,
                "block_size": block,
                "is_symmetric": sym,
                "accuracy_level": accuracy,
                "nodes_to_exclude": [LM_HEAD_NODE],
            }
        else:
            adapted[name] = {**builder, "precision": "fp32"}
    return adapted


def _adapted_label(precision: str, passes: Mapping[str, Any], provider: str | None) -> str:
    settings = passes.get(INT8_PASS) or next(
        (p for p in passes.values() if str(p.get("type", "")).lower() == "modelbuilder"), {}
    )
    if precision == "fp32":
        label = "fp32"
    else:
        prefix = "int4_" if precision == "int4" else ""
        block = settings.get(f"{prefix}block_size")
        sym = settings.get(f"{prefix}is_symmetric", True)
        accuracy = settings.get(f"{prefix}accuracy_level")
        label = f"{precision}_b{block}{'' if sym else '_asym'}_acc{accuracy}"
    if provider:
        short = {
            "CPUExecutionProvider": "cpu",
            "CUDAExecutionProvider": "cuda",
            "DmlExecutionProvider": "dml",
        }
        label += "_" + short.get(provider, provider.removesuffix("ExecutionProvider").lower())
    return label


def adapt_recipe(
    config_path: Path | str,
    *,
    precision: str | None = None,
    block_size: int | None = None,
    symmetric: bool | None = None,
    accuracy_level: int | None = None,
    device: str | None = None,
    provider: str | None = None,
    name: str | None = None,
) -> Path:
    """Method 2: write an adapted copy of a ModelBuilder recipe next to it; return its path.

    ``precision`` (None keeps the recipe's): ``int4`` (ModelBuilder RTN blocks), ``int8``
    (ModelBuilder fp32, then 8-bit ``OnnxBlockWiseRtnQuantization`` with the LM head in float) or
    ``fp32`` (the float ONNX model, a baseline). ``block_size`` (16-256), ``symmetric`` and
    ``accuracy_level`` (1-4) keep the recipe's values when None. ``provider`` (with ``device``,
    default the provider's usual one) retargets the accelerator. ``name`` is the new recipe's
    name in ``info.yml`` and its file's stem (default: the original's stem, less an earlier
    adaptation's suffix, plus the settings, e.g. ``olive_config_int8_b32_acc4``).

    The adapted workflow is validated with Olive's parser and passes before it is written; an
    existing file of that name with other content is never overwritten. Shipped recipes are not
    changed: copy one first (:func:`copy_recipe`).
    """
    source = Path(config_path).expanduser()
    if _is_shipped(source):
        raise ConfigError(
            f"{source.name} is one of nbkit's shipped recipes; adapt a copy of it: "
            "copy_recipe(name, your_folder) first."
        )
    config = today_syntax(load_config(source))
    passes = config.get("passes") or {}
    precision = precision or _precision_of(passes)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if symmetric is not None and not isinstance(symmetric, bool):
        raise ConfigError(f"symmetric must be True or False, not {symmetric!r}.")
    for what, value in (("block_size", block_size), ("accuracy_level", accuracy_level)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{what} must be an integer or None, not {value!r}.")
    if precision == "fp32" and (block_size or symmetric is not None or accuracy_level):
        raise ConfigError("block_size, symmetric and accuracy_level apply to int4 and int8, not fp32.")
    config["passes"] = _adapted_passes(passes, precision, block_size, symmetric, accuracy_level)
    if provider is not None or device is not None:
        _retarget(config, device, provider)
    root = re.sub(r"_(int4|int8|fp32)(_.*)?$", "", source.stem) or source.stem
    stem = name or f"{root}_{_adapted_label(precision, config['passes'], provider)}"
    if not _FILE_STEM.fullmatch(stem) or stem.endswith(".json"):
        raise ConfigError(
            f"name {stem!r} must be a plain file stem (letters, digits, '.', '_', '-'), without .json."
        )
    if isinstance(config.get("output_dir"), str):
        config["output_dir"] = str(Path(config["output_dir"]).parent / stem)
    for warning in validate_olive_config(config):
        log.warning("%s: %s", stem, warning)
    target = source.with_name(f"{stem}.json")
    text = json.dumps(config, indent=2) + "\n"
    if target.exists():
        if target.read_text() != text:
            raise ConfigError(
                f"{target} already exists with other content; nbkit does not overwrite it: "
                "pass another name=, or move that file away first."
            )
    else:
        _write_atomically(target, text)
    _list_in_info(source.parent, stem, target.name, config)
    return target


def _retarget(config: dict[str, Any], device: str | None, provider: str | None) -> None:
    accelerators = config_accelerators(config)
    old_device, old_providers = accelerators[0]
    provider = provider or (old_providers[0] if old_providers else None)
    device = device or PROVIDER_DEVICES.get(provider or "", old_device)
    accelerator: dict[str, Any] = {"device": device}
    if provider:
        accelerator["execution_providers"] = [provider]
    systems = config.setdefault("systems", {})
    target = config.get("target")
    system_name = target if isinstance(target, str) else next(iter(systems), "local_system")
    system = systems.setdefault(system_name, {"type": "LocalSystem"})
    system["accelerators"] = [accelerator]
    config.setdefault("host", system_name)
    config["target"] = system_name


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _list_in_info(folder: Path, recipe_name: str, file_name: str, config: Mapping[str, Any]) -> None:
    import yaml

    if not (folder / INFO_FILE).is_file():
        log.info("No %s in %s: the adapted recipe is not listed anywhere", INFO_FILE, folder)
        return
    info = _read_info(folder)
    accelerators = config_accelerators(config)
    devices = sorted({device for device, _ in accelerators})
    eps = sorted({p for _, providers in accelerators for p in providers})
    entry = {
        "name": recipe_name,
        "file": file_name,
        "devices": devices[0] if len(devices) == 1 else devices,
        "eps": eps[0] if len(eps) == 1 else eps,
    }
    recipes = [
        r for r in info.get("recipes") or [] if not (isinstance(r, Mapping) and r.get("file") == file_name)
    ]
    if entry in (info.get("recipes") or []):
        return
    info["recipes"] = [*recipes, entry]
    _write_atomically(folder / INFO_FILE, yaml.safe_dump(info, sort_keys=False, default_flow_style=False))


# -- running a recipe ----------------------------------------------------------------------------


def _input_model(config: dict[str, Any], model: Path | str | None) -> None:
    input_model = config.get("input_model") or {}
    if model is not None:
        folder = Path(model).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ModelSourceError(
                f"{folder} is not a Hugging Face model folder (no config.json); give the local folder "
                "of the model the recipe builds."
            )
        kept = {k: v for k, v in input_model.items() if k in ("task", "load_kwargs", "trust_remote_code")}
        config["input_model"] = {"type": "HfModel", "model_path": str(folder), **kept}
        return
    path = input_model.get("model_path")
    if isinstance(path, str) and not Path(path).expanduser().exists():
        raise ModelSourceError(
            f"The recipe's input model is the hub id {path!r}, and nbkit runs Olive offline: pass model= "
            "a local Hugging Face folder of that model (what `olive run --config ... -m <folder>` does)."
        )


def run_recipe(
    config_path: Path | str,
    model: Path | str | None = None,
    work_dir: Path | str | None = None,
    *,
    allow_other_hardware: bool = False,
    keep_olive_cache: bool = False,
    reuse: bool = True,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> OliveRun:
    """Run a recipe offline and return Olive's run; its ``output_dir`` is an ONNX Runtime GenAI folder.

    ``model``: a local Hugging Face folder replacing the recipe's input model (``olive run -m``);
    None keeps the recipe's, which must then be a local folder. ``work_dir`` (default
    ``olive-runs/<config stem>`` next to the config, not allowed for shipped recipes) receives the
    model in ``output/`` and a record of the run; Olive's cache and temporary files go to a scratch
    folder inside it, removed at the end unless ``keep_olive_cache``. With ``reuse``, a finished
    run of the same workflow in ``work_dir`` is returned without running again; an ``output/`` with
    anything else in it is refused rather than overwritten.

    A config for a provider this machine lacks (CUDA, DirectML) is refused with the reason;
    ``allow_other_hardware=True`` builds it anyway (ModelBuilder needs no GPU), but the model
    will not load here.
    """
    source = Path(config_path).expanduser()
    config = today_syntax(load_config(source))
    if work_dir is None:
        if _is_shipped(source):
            raise ConfigError(
                f"{source.name} is a shipped recipe: give work_dir, the folder that receives its model."
            )
        work_dir = source.parent / "olive-runs" / source.stem
    work = Path(work_dir).expanduser().resolve()
    if _is_shipped(work):
        raise ConfigError("work_dir is inside nbkit's shipped recipes; give a folder of your own.")
    _input_model(config, model)
    for warning in validate_olive_config(config):
        log.warning("%s: %s", source.name, warning)
    runnable, reason = runnable_here(config)
    if not runnable and not allow_other_hardware:
        raise ConfigError(f"{reason} Pass allow_other_hardware=True to build it anyway for another machine.")
    # Olive writes into work_dir; these two are nbkit's choice, like `olive run -o`.
    config.pop("output_dir", None)
    config.pop("cache_dir", None)
    output = work / OUTPUT_DIR
    record_path = work / RUN_RECORD
    if reuse and record_path.is_file() and (output / GENAI_CONFIG).is_file():
        record = json.loads(record_path.read_text())
        if record.get("config") == config:
            log.info("Reusing the finished run of %s in %s", source.name, work)
            return OliveRun(output, float(record.get("seconds", 0.0)), tuple(record.get("errors", ())))
    if output.exists() and any(output.iterdir()):
        raise ConfigError(
            f"{output} already holds files from another run; nbkit does not overwrite them: give another "
            "work_dir, or move that folder away first."
        )
    created_output = not output.exists()
    reporter = reporter or ProgressReporter(progress)
    scratch_existed = (work / SCRATCH).exists()
    succeeded = False
    try:
        run = run_olive_config(
            config, work, reporter=reporter, produced=lambda out: (out / GENAI_CONFIG).is_file()
        )
        succeeded = True
    finally:
        if not keep_olive_cache and not scratch_existed:
            shutil.rmtree(work / SCRATCH, ignore_errors=True)
        if not succeeded and created_output:
            shutil.rmtree(output, ignore_errors=True)
    record = {
        "recipe": str(source),
        "model": str(model) if model is not None else None,
        "config": config,
        "seconds": run.seconds,
        "errors": list(run.errors),
        "runnable_here": runnable,
    }
    _write_atomically(record_path, json.dumps(record, indent=2) + "\n")
    return run


__all__ = [
    "RECIPES_ROOT",
    "Recipe",
    "adapt_recipe",
    "copy_recipe",
    "find_recipe",
    "read_recipe_folder",
    "run_recipe",
    "shipped_recipe_folders",
    "shipped_recipes",
    "today_syntax",
]
