"""A content-addressed cache of models nbkit builds.

An entry is a folder ``<root>/<kind>/<name>-<key16>`` whose key hashes everything that
decides its content: the source identity, the frozen config and the library versions
that matter. Entries are built in ``<root>/.tmp``, get ``nbkit-manifest.json`` written
last, and are renamed into place while holding a per-key file lock, so readers never see
a half-built entry and concurrent writers build an entry once. A folder without its
manifest (a crash, a copy interrupted by hand) is never used: it is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from filelock import FileLock, Timeout

from nbkit.disk import FREE_SPACE_ADVICE, is_disk_full, require_free_space
from nbkit.errors import CacheError, DiskSpaceError

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "NBKIT_CACHE_DIR"
MANIFEST_NAME = "nbkit-manifest.json"
LOCK_TIMEOUT_S = 3600.0  # a compression of a large model can hold a lock for many minutes


def default_cache_dir() -> Path:
    """``$NBKIT_CACHE_DIR`` if set, else the platform's user cache folder for nbkit."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("nbkit", appauthor=False))


def cache_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 over a JSON rendering of ``parts`` with sorted keys."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """A complete cache entry: its folder and the manifest written when it was built."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.manifest.get("metadata", {}))

    @property
    def size_bytes(self) -> int:
        return int(self.manifest.get("size_bytes", 0))


@dataclass(frozen=True)
class IncompleteFolder:
    """A folder in the cache that is not a usable entry (no manifest, or a leftover build)."""

    path: Path
    reason: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "entry"


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Cache:
    """The cache rooted at ``root`` (default: :func:`default_cache_dir`)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # -- paths -----------------------------------------------------------------------------

    def entry_path(self, kind: str, key: str, name: str) -> Path:
        return self.root / kind / f"{_slug(name)}-{key[:16]}"

    def _lock(self, key: str) -> FileLock:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key[:32]}.lock"), timeout=LOCK_TIMEOUT_S)

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"Cannot create the cache folder {self.root} ({exc.strerror}); "
                f"set {CACHE_ENV_VAR} to a writable folder."
            ) from exc
        if not os.access(self.root, os.W_OK):
            raise CacheError(
                f"The cache folder {self.root} is not writable; set {CACHE_ENV_VAR} to a writable folder."
            )

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def read_entry(path: Path) -> CacheEntry | None:
        """The entry at ``path`` if its manifest exists and parses, else ``None``."""
        manifest_path = path / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or "key" not in manifest or "kind" not in manifest:
            return None
        return CacheEntry(path=path, manifest=manifest)

    def lookup(self, kind: str, key: str, name: str) -> CacheEntry | None:
        entry = self.read_entry(self.entry_path(kind, key, name))
        if entry is not None and entry.key == key:
            return entry
        return None

    def entries(self, kind: str | None = None) -> list[CacheEntry]:
        """Every complete entry, newest first."""
        found: list[CacheEntry] = []
        for folder in self._entry_folders(kind):
            entry = self.read_entry(folder)
            if entry is not None:
                found.append(entry)
        found.sort(key=lambda e: float(e.manifest.get("created", 0)), reverse=True)
        return found

    def incomplete(self) -> list[IncompleteFolder]:
        """Folders that are not usable entries: leftovers of interrupted builds."""
        found = [
            IncompleteFolder(folder, "no manifest: an interrupted build or copy")
            for folder in self._entry_folders(None)
            if self.read_entry(folder) is None
        ]
        tmp = self.root / ".tmp"
        if tmp.is_dir():
            found += [
                IncompleteFolder(p, "unfinished build in progress or interrupted")
                for p in sorted(tmp.iterdir())
            ]
        return found

    def _entry_folders(self, kind: str | None) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        kinds = (
            [self.root / kind]
            if kind
            else [p for p in sorted(self.root.iterdir()) if not p.name.startswith(".")]
        )
        for kind_dir in kinds:
            if kind_dir.is_dir():
                yield from (p for p in sorted(kind_dir.iterdir()) if p.is_dir())

    # -- writing ---------------------------------------------------------------------------

    def get_or_build(
        self,
        kind: str,
        key: str,
        name: str,
        build: Callable[[Path], Mapping[str, Any] | None],
        *,
        description: Mapping[str, Any] | None = None,
        needs_bytes: int | Callable[[], int] = 0,
    ) -> CacheEntry:
        """Return the entry for ``key``, building it with ``build(tmp_folder)`` if absent.

        ``build`` writes the entry's files into the folder it is given and may return
        metadata for the manifest. If it raises (including :class:`~nbkit.errors.Cancelled`)
        the temporary folder is removed and nothing in the cache changes.

        ``needs_bytes`` is an estimate of what the build writes (or a function computing it,
        called only when the entry is missing): with less free space than that, plus a
        margin, the build is refused before it starts. A build that runs out of space anyway
        raises :class:`~nbkit.errors.DiskSpaceError` as well.
        """
        entry = self.lookup(kind, key, name)
        if entry is not None:
            return entry
        self._ensure_root()
        require_free_space(self.root, needs_bytes() if callable(needs_bytes) else needs_bytes, name)
        final = self.entry_path(kind, key, name)
        lock = self._lock(key)
        try:
            lock.acquire()
        except Timeout as exc:
            raise CacheError(
                f"Another process has been building {final.name} for over {LOCK_TIMEOUT_S:.0f} s; "
                f"if none is running, delete {lock.lock_file}."
            ) from exc
        try:
            # Another writer may have finished while we waited for the lock.
            entry = self.lookup(kind, key, name)
            if entry is not None:
                return entry
            tmp = self.root / ".tmp" / f"{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                metadata = build(tmp) or {}
                manifest = {
                    "kind": kind,
                    "key": key,
                    "name": name,
                    "created": time.time(),
                    "description": dict(description or {}),
                    "metadata": dict(metadata),
                    "size_bytes": folder_size(tmp),
                }
                # The manifest is written last: its presence is what makes the folder an entry.
                (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():
                    log.warning("Replacing %s: it had no valid manifest (an interrupted build).", final)
                    self._discard(final)
                os.replace(tmp, final)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if is_disk_full(exc):
                    raise DiskSpaceError(
                        f"The disk holding the cache {self.root} ran out of space while building "
                        f"{name}; the partial build was removed and the cache is unchanged. "
                        f"{FREE_SPACE_ADVICE}"
                    ) from exc
                raise
        finally:
            lock.release()
        built = self.read_entry(final)
        if built is None:  # pragma: no cover - only if the disk lies to us
            raise CacheError(f"The cache entry {final} vanished right after it was written.")
        return built

    def _discard(self, path: Path) -> None:
        # Rename first so a crash mid-delete never leaves a half-deleted folder under a live name.
        trash = self.root / ".tmp" / f"discard.{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def remove(self, entry: CacheEntry) -> None:
        with self._lock(entry.key):
            if entry.path.exists():
                self._discard(entry.path)

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry (of ``kind``) and every leftover of interrupted builds.

        Returns the number of folders removed. Entries being built right now are skipped:
        their lock is held.
        """
        removed = 0
        for folder in list(self._entry_folders(kind)):
            entry = self.read_entry(folder)
            key = entry.key if entry else None
            if key is None:
                self._discard(folder)
                removed += 1
                continue
            with contextlib.suppress(Timeout), self._lock(key).acquire(timeout=0):
                self._discard(folder)
                removed += 1
        if kind is None:
            removed += self._clear_tmp()
        return removed

    def _clear_tmp(self) -> int:
        tmp = self.root / ".tmp"
        if not tmp.is_dir():
            return 0
        removed = 0
        for folder in tmp.iterdir():
            pid = _pid_of(folder.name)
            if pid is not None and _alive(pid):
                continue  # a live process (maybe a thread of this one) is building into it
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        return removed


def _pid_of(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.[0-9a-f]{8}$", name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
