"""The engines nbkit knows, by name: the one place that lists them.

Everything above the engines (sweeps, measurements, panels, the CLI) finds an engine here,
by name, by config type, by cache entry or by folder, and then talks to it through
:class:`~nbkit.engines.protocol.Engine`. A third engine is a subpackage exposing ``ENGINE``
and one line in :data:`_ENGINES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nbkit.engines.openvino.engine import ENGINE as OPENVINO
from nbkit.engines.ort.engine import ENGINE as ORT
from nbkit.engines.protocol import BuiltModel, Engine, ReferenceEngine
from nbkit.errors import ConfigError, ModelSourceError
from nbkit.infra.cache import Cache

_ENGINES: dict[str, Engine] = {OPENVINO.name: OPENVINO, ORT.name: ORT}
# Other names people use for them (the CLI's --engine took "olive" before "ort").
ALIASES = {"ov": "openvino", "olive": "ort", "onnxruntime-genai": "ort"}
# The engine whose float export is the reference every model is measured against.
REFERENCE_ENGINE: ReferenceEngine = OPENVINO


def engine_names() -> tuple[str, ...]:
    return tuple(_ENGINES)


def engines() -> tuple[Engine, ...]:
    return tuple(_ENGINES.values())


def get_engine(name: str | Engine) -> Engine:
    """The engine called ``name`` (or an alias such as ``olive``); ConfigError naming the choices."""
    if not isinstance(name, str):
        if isinstance(name, Engine):
            return name
        raise ConfigError(f"An engine is named by a string: {', '.join(_ENGINES)}; not {name!r}.")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _ENGINES:
        choices = ", ".join(_ENGINES)
        raise ConfigError(f"Unknown engine {name!r}; choose one of: {choices} ('olive' also names ort).")
    return _ENGINES[key]


def parse_engines(names: str | Any) -> tuple[Engine, ...]:
    """Engines from ``"openvino,ort"`` or a sequence of names, each once, in the order given."""
    items = names.split(",") if isinstance(names, str) else list(names)
    found: list[Engine] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        engine = get_engine(item)
        if engine not in found:
            found.append(engine)
    if not found:
        raise ConfigError(f"Name at least one engine: {', '.join(_ENGINES)}.")
    return tuple(found)


def engine_for_config(config: Any) -> Engine:
    """The engine whose builds ``config`` describes (by its type)."""
    for engine in _ENGINES.values():
        if isinstance(config, engine.config_type):
            return engine
    raise ConfigError(
        f"{type(config).__name__} is no engine's config; use "
        + " or ".join(e.config_type.__name__ for e in _ENGINES.values())
        + "."
    )


def engine_for_folder(path: Path | str) -> Engine | None:
    """The engine that loads the model folder ``path``, or None when none does."""
    folder = Path(path).expanduser()
    return next((e for e in _ENGINES.values() if e.is_model_folder(folder)), None)


def require_engine_for_folder(path: Path | str) -> Engine:
    engine = engine_for_folder(path)
    if engine is None:
        raise ModelSourceError(
            f"{path} is not a model folder nbkit can load (no openvino_model.xml, no genai_config.json); "
            "build one with `nbkit export` (OpenVINO) or `nbkit export --engine ort` (Olive)."
        )
    return engine


def model_at(path: Path | str) -> BuiltModel | None:
    """The built model a cache entry folder holds (an OVModel or an OrtGenAIModel), else None."""
    entry = Cache.read_entry(Path(path).expanduser())
    if entry is None:
        return None
    for engine in _ENGINES.values():
        if entry.kind in engine.cache_kinds:
            return engine.model_from_entry(entry)
    return None


def engine_of_model(model: Any) -> Engine:
    """The engine of a built model (its ``engine`` attribute) or of a model folder."""
    name = getattr(model, "engine", None)
    if isinstance(name, str):
        return get_engine(name)
    return require_engine_for_folder(getattr(model, "path", model))
