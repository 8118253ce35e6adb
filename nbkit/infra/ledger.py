"""The run ledger: one JSON line per measured configuration or device tuning, next to the cache.

Records carry the config, the library versions, the machine and the figures, so a sweep
can reuse a measurement that is still valid (same key) instead of recomputing it, and
anyone can compare runs later. Appends happen under a file lock; a damaged line (a crash
mid-write) is skipped with a warning, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from nbkit.infra.cache import Cache

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.jsonl"


class Ledger:
    """Append-only JSON-lines file, by default ``<cache root>/ledger.jsonl``."""

    def __init__(self, path: Path | str | None = None, *, cache: Cache | None = None) -> None:
        if path is None:
            path = (cache or Cache()).root / LEDGER_NAME
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def _lock(self) -> FileLock:
        return FileLock(str(self.path) + ".lock", timeout=60)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=str)
        with self._lock(), self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    log.warning("Skipping damaged line %d of %s.", number, self.path)
                    continue
                if isinstance(record, dict):
                    yield record

    def records(self, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Records of ``kind`` whose top-level fields equal ``match``, oldest first."""
        return [
            r
            for r in self
            if (kind is None or r.get("kind") == kind) and all(r.get(k) == v for k, v in match.items())
        ]

    def latest(self, kind: str, **match: Any) -> dict[str, Any] | None:
        found = self.records(kind, **match)
        return found[-1] if found else None
