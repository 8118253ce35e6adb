"""What the measurement modules share: model folders, their identity and a small in-process memo.

:mod:`nbkit.measure.evaluation`, :mod:`nbkit.measure.quality` and :mod:`nbkit.measure.speed` import these helpers
from here, and this module imports none of them, so splitting the measurements into small
modules leaves no import cycle.
"""

from __future__ import annotations

import filecmp
import threading
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from nbkit.engines.protocol import BuiltModel
from nbkit.engines.registry import engine_for_folder, require_engine_for_folder

ModelLike = BuiltModel | Path | str


# -- in-process memo -----------------------------------------------------------------------


class _LRU:
    """A small thread-safe least-recently-used map (panels measure from worker threads)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# -- model folders -------------------------------------------------------------------------


def _model_dir(model: ModelLike) -> Path:
    """The folder of ``model`` (a built model or a folder), once an engine recognizes it."""
    folder = model.path if isinstance(model, BuiltModel) else Path(model).expanduser()
    require_engine_for_folder(folder)
    return folder


def _model_files(folder: Path) -> tuple[Path, ...]:
    engine = engine_for_folder(folder)
    return engine.model_files(folder) if engine is not None else ()


def _stamp(folder: Path) -> tuple[Any, ...]:
    """Identity of a model folder's files for in-memory caches: a folder rewritten in place is new."""
    parts: list[Any] = [str(folder.resolve())]
    for path in _model_files(folder):
        if path.is_file():
            stat = path.stat()
            parts += [path.name, stat.st_size, stat.st_mtime_ns]
    return tuple(parts)


def _same_model(first: Path, second: Path) -> bool:
    """True when both folders hold byte-identical models (the same folder, or a copy)."""
    if first.resolve() == second.resolve():
        return True
    first_files, second_files = _model_files(first), _model_files(second)
    if not first_files or [p.name for p in first_files] != [p.name for p in second_files]:
        return False  # another engine's folder, or another layout
    for a, b in zip(first_files, second_files, strict=True):
        # Sizes first: different compressions almost always differ in size, so the byte
        # comparison (a second or so for a float 135M model) runs only for likely copies.
        if a.stat().st_size != b.stat().st_size or not filecmp.cmp(a, b, shallow=False):
            return False
    return True
