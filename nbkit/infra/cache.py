"""A content-addressed cache of models nbkit builds.

An entry is a folder ``<root>/<kind>/<name>-<key16>`` whose key hashes everything that
decides its content: the source identity, the frozen config and the library versions
that matter. Entries are built in ``<root>/.tmp``, get ``nbkit-manifest.json`` written
last, and are renamed into place while holding a per-key file lock, so readers never see
a half-built entry and concurrent writers build an entry once. A folder without its
manifest (a crash, a copy interrupted by hand) is never used.

nbkit deletes only what it provably wrote (as ``huggingface-cli delete-cache`` does):

- the root carries a marker file (:data:`ROOT_MARKER`) written when nbkit created it; a
  folder without it is not a cache, and nothing in it is ever removed;
- entries are folders with nbkit's manifest under one of nbkit's kind folders; build
  folders in ``.tmp`` carry a build marker (:data:`BUILD_MARKER`) naming their process;
- symbolic links are never followed out of the root: a linked kind folder, entry or
  ``.tmp`` is left alone and reported;
- an entry that is being built, or read by a build or a chat session (a shared lock on
  ``.locks/<key>.use``), is skipped and reported;
- a build leftover is reclaimed only when the process that made it is gone and its lock is
  free: at the next build, or by ``nbkit cache clear --incomplete``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import platformdirs
import psutil
from filelock import FileLock, Timeout

from nbkit.errors import CacheError, ConfigError, DiskSpaceError
from nbkit.infra.disk import FREE_SPACE_ADVICE, free_bytes, is_disk_full, require_free_space

try:  # shared locks for entries in use; Windows has none, and there nothing is marked in use
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_ENV_VAR = "NBKIT_CACHE_DIR"
MANIFEST_NAME = "nbkit-manifest.json"
ROOT_MARKER = ".nbkit-cache"
BUILD_MARKER = "nbkit-build.json"
TMP_DIR = ".tmp"
LOCKS_DIR = ".locks"
LOCK_TIMEOUT_S = 3600.0  # a compression of a large model can hold a lock for many minutes
LOCK_NOTICE_S = 5.0  # after this long waiting for a lock, say who holds it
# Below this much free space right after a write failed, the failure was the full disk even
# when the library's message does not say so (OpenVINO: "basic_ios::clear: iostream error").
NEARLY_FULL_BYTES = 64 * 2**20

# Every kind of entry nbkit writes, with what it holds. `nbkit cache clear --kind` accepts
# these names only.
# The kinds of entries nbkit builds, named once here: the modules that build them import these.
HF_KIND = "hf"
OPENVINO_FLOAT_KIND = "openvino-float"
OPENVINO_COMPRESSED_KIND = "openvino-compressed"
OPENVINO_QUANTIZED_KIND = "openvino-quantized"
NNCF_STATISTICS_KIND = "nncf-statistics"
ORT_GENAI_KIND = "ort-genai"
GGUF_NATIVE_KIND = "openvino-gguf-native"
FINETUNED_KIND = "finetuned"
CACHE_KINDS: dict[str, str] = {
    HF_KIND: "Hugging Face folders converted from GGUF files",
    OPENVINO_FLOAT_KIND: "float OpenVINO IR exports",
    OPENVINO_COMPRESSED_KIND: "weight-compressed OpenVINO models (NNCF)",
    OPENVINO_QUANTIZED_KIND: "INT8 post-training-quantized OpenVINO models (NNCF)",
    NNCF_STATISTICS_KIND: "NNCF activation statistics for data-aware compression",
    ORT_GENAI_KIND: "ONNX Runtime GenAI models built by Olive",
    GGUF_NATIVE_KIND: "OpenVINO models openvino-genai read from a GGUF, its own quantization kept",
    FINETUNED_KIND: "LoRA fine-tuned models merged into Hugging Face folders (Olive)",
}
# What the root of a cache made by nbkit 0.1.0 (before the marker) may hold besides kinds.
_ROOT_FILES = {TMP_DIR, LOCKS_DIR, ROOT_MARKER, "ledger.jsonl", "ledger.jsonl.lock"}
_KIND_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


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
    """A folder in the cache that is not a usable entry, and what nbkit will do with it.

    ``state`` is ``"leftover"`` (nbkit's own build folder whose process is gone: removable),
    ``"building"`` (a live process builds into it: left alone) or ``"foreign"`` (nothing
    proves nbkit wrote it: never removed).
    """

    path: Path
    reason: str
    state: str = "foreign"
    size_bytes: int = 0

    @property
    def removable(self) -> bool:
        return self.state == "leftover"


@dataclass(frozen=True)
class ClearItem:
    """One folder ``nbkit cache clear`` removes, or skips with ``reason``."""

    path: Path
    size_bytes: int
    description: str
    reason: str = ""


@dataclass
class ClearReport:
    """What :meth:`Cache.clear` removed, what it skipped (in use) and what is not nbkit's."""

    removed: list[ClearItem] = field(default_factory=list)
    skipped: list[ClearItem] = field(default_factory=list)
    foreign: list[ClearItem] = field(default_factory=list)

    @property
    def removed_bytes(self) -> int:
        return sum(item.size_bytes for item in self.removed)

    def __len__(self) -> int:
        return len(self.removed)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "entry"


def folder_size(path: Path) -> int:
    """Bytes of the regular files below ``path``, never following a symbolic link."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(folder, name))
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def _is_real_dir(path: Path) -> bool:
    """A folder that is not a symbolic link (``Path.is_dir`` follows links)."""
    return path.is_dir() and not path.is_symlink()


def _this_process() -> dict[str, Any]:
    """Who is building: enough to tell later whether that process still runs, and to name it."""
    me = psutil.Process()
    return {
        "pid": me.pid,
        "started": me.create_time(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:200] or sys.executable,
        "since": time.time(),
    }


def process_alive(owner: Mapping[str, Any]) -> bool:
    """Whether the process an owner record names still runs (same pid *and* start time)."""
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process on a shared disk: assume it runs
    try:
        process = psutil.Process(int(owner["pid"]))
        return abs(process.create_time() - float(owner.get("started", process.create_time()))) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return False


def describe_owner(owner: Mapping[str, Any] | None) -> str:
    if not owner:
        return "another process"
    host = f" on {owner['host']}" if owner.get("host") not in (None, socket.gethostname()) else ""
    return f"process {owner.get('pid')}{host} (`{owner.get('command', '?')}`)"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Cache:
    """The cache rooted at ``root`` (default: :func:`default_cache_dir`)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # -- paths -----------------------------------------------------------------------------

    def entry_path(self, kind: str, key: str, name: str) -> Path:
        if not _KIND_NAME.match(kind):
            raise ValueError(f"{kind!r} is not a cache kind name")
        return self.root / kind / f"{_slug(name)}-{key[:16]}"

    def _own_dir(self, name: str) -> Path:
        """``.tmp`` or ``.locks``, created if missing; refused if it is a link out of the root."""
        path = self.root / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise CacheError(
                f"{path} is a symbolic link or a file, not nbkit's own folder; remove it, then run again."
            )
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _lock(self, key: str) -> FileLock:
        return FileLock(str(self._own_dir(LOCKS_DIR) / f"{key[:32]}.lock"), timeout=LOCK_TIMEOUT_S)

    def _owner_path(self, key: str) -> Path:
        return self.root / LOCKS_DIR / f"{key[:32]}.owner"

    # -- the root and its marker -----------------------------------------------------------

    @property
    def is_nbkit_cache(self) -> bool:
        """Whether the root carries nbkit's marker (a regular file, not a link)."""
        marker = self.root / ROOT_MARKER
        return marker.is_file() and not marker.is_symlink()

    def _ensure_root(self) -> None:
        """Create the root with its marker, or check that an existing folder is an nbkit cache."""
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
        if self.is_nbkit_cache:
            return
        others = sorted(
            p.name for p in self.root.iterdir() if p.name not in _ROOT_FILES and p.name not in CACHE_KINDS
        )
        if others:
            raise CacheError(
                f"{self.root} holds files that are not nbkit's (e.g. {others[0]}), so nbkit will not use it "
                f"as its cache; set {CACHE_ENV_VAR} to an empty or new folder."
            )
        # Empty, or a cache of nbkit 0.1.0 (only nbkit's own names): mark it as nbkit's.
        marker = {"created_by": "nbkit", "format": 1, "created": time.time()}
        (self.root / ROOT_MARKER).write_text(json.dumps(marker) + "\n")

    def _require_marked_root(self) -> None:
        if self.root.exists() and not self.is_nbkit_cache:
            raise CacheError(
                f"{self.root} is not an nbkit cache (it has no {ROOT_MARKER} marker), so nbkit removes "
                "nothing from it; check --cache-dir or NBKIT_CACHE_DIR."
            )

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def read_entry(path: Path) -> CacheEntry | None:
        """The entry at ``path`` if its manifest exists and parses, else ``None``."""
        if path.is_symlink():
            return None
        manifest = _read_json(path / MANIFEST_NAME)
        if manifest is None or "key" not in manifest or "kind" not in manifest:
            return None
        return CacheEntry(path=path, manifest=manifest)

    def lookup(self, kind: str, key: str, name: str) -> CacheEntry | None:
        entry = self.read_entry(self.entry_path(kind, key, name))
        if entry is not None and entry.key == key:
            return entry
        return None

    def entries(self, kind: str | None = None) -> list[CacheEntry]:
        """Every complete entry, newest first."""
        found = [entry for entry in map(self.read_entry, self._entry_folders(kind)) if entry is not None]
        found.sort(key=lambda e: float(e.manifest.get("created", 0)), reverse=True)
        return found

    def _proven_entry(self, folder: Path) -> CacheEntry | None:
        """The entry at ``folder`` if its manifest proves nbkit wrote it there."""
        entry = self.read_entry(folder)
        if entry is None or entry.kind != folder.parent.name or not folder.name.endswith(entry.key[:16]):
            return None
        return entry

    def kinds(self) -> list[str]:
        """nbkit's kinds, and any other kind folder in this cache that holds nbkit entries."""
        present = {
            kind_dir.name
            for kind_dir in self._kind_dirs(None)
            if any(self._proven_entry(p) for p in kind_dir.iterdir() if _is_real_dir(p))
        }
        return sorted(set(CACHE_KINDS) | present)

    def check_kind(self, kind: str | None) -> None:
        if kind is not None and kind not in self.kinds():
            raise ConfigError(
                f"{kind!r} is not a kind of cache entry; use one of: {', '.join(self.kinds())}."
            )

    def incomplete(self) -> list[IncompleteFolder]:
        """Folders that are not usable entries, each with what nbkit will do with it."""
        found: list[IncompleteFolder] = []
        if not _is_real_dir(self.root):
            return found
        for path in sorted(self.root.iterdir()):
            if path.name in (TMP_DIR, LOCKS_DIR) and path.is_symlink():
                found.append(
                    IncompleteFolder(path, "a symbolic link where nbkit keeps its own files; left alone")
                )
            elif path.name not in _ROOT_FILES and path.is_symlink():
                found.append(IncompleteFolder(path, "a symbolic link, not nbkit's; left alone"))
            elif path.name not in _ROOT_FILES and not path.is_dir():
                found.append(IncompleteFolder(path, "a file nbkit did not write; left alone"))
        for kind_dir in self._kind_dirs(None):
            for folder in sorted(kind_dir.iterdir()):
                if folder.is_symlink():
                    found.append(IncompleteFolder(folder, "a symbolic link, not nbkit's; left alone"))
                elif folder.is_dir() and self._proven_entry(folder) is None:
                    found.append(IncompleteFolder(folder, "no nbkit manifest: not nbkit's; left alone"))
        found += self._tmp_folders()
        return found

    def _tmp_folders(self) -> list[IncompleteFolder]:
        tmp = self.root / TMP_DIR
        if not _is_real_dir(tmp):
            return []
        return [self._classify_tmp(path) for path in sorted(tmp.iterdir())]

    def _classify_tmp(self, path: Path) -> IncompleteFolder:
        if path.is_symlink() or not path.is_dir():
            return IncompleteFolder(path, "not a build folder of nbkit's; left alone")
        marker = _read_json(path / BUILD_MARKER)
        if marker is None:
            if self.read_entry(path) is None:
                return IncompleteFolder(path, "no nbkit build marker: not nbkit's; left alone")
            marker = {"pid": _pid_in_name(path.name)}  # an entry being discarded
        size = folder_size(path)
        if process_alive(marker):
            return IncompleteFolder(path, f"being built by {describe_owner(marker)}", "building", size)
        key = marker.get("key")
        if key and self._locked(str(key)):
            return IncompleteFolder(path, "its entry is being built by another process", "building", size)
        return IncompleteFolder(
            path, f"left by an interrupted build (process {marker.get('pid')} is gone)", "leftover", size
        )

    def _kind_dirs(self, kind: str | None) -> Iterator[Path]:
        if not _is_real_dir(self.root):
            return
        names = [kind] if kind else sorted(p.name for p in self.root.iterdir())
        for name in names:
            path = self.root / name
            if name not in _ROOT_FILES and _KIND_NAME.match(name) and _is_real_dir(path):
                yield path

    def _entry_folders(self, kind: str | None) -> Iterator[Path]:
        for kind_dir in self._kind_dirs(kind):
            yield from (p for p in sorted(kind_dir.iterdir()) if _is_real_dir(p))

    # -- entries in use --------------------------------------------------------------------

    @contextlib.contextmanager
    def holding(self, paths: Iterable[Path | None]) -> Iterator[None]:
        """Mark the cache entries among ``paths`` as in use: ``clear`` skips them meanwhile.

        Paths that are not entries of this cache (a user's own folder) are ignored. Raises
        :class:`~nbkit.errors.CacheError` if an entry was removed just before it was held.
        """
        with contextlib.ExitStack() as stack:
            for path in paths:
                entry = self.read_entry(Path(path)) if path is not None else None
                if entry is None or Path(path).parent.parent.resolve() != self.root.resolve():
                    continue
                stack.enter_context(self._shared_use(entry.key))
                if self.read_entry(entry.path) is None:
                    raise CacheError(
                        f"{entry.path} was removed from the cache just now; run again to rebuild it."
                    )
            yield

    @contextlib.contextmanager
    def _shared_use(self, key: str) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        fd = os.open(self._own_dir(LOCKS_DIR) / f"{key[:32]}.use", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _in_use(self, key: str) -> bool:
        """Whether some process holds the entry ``key`` (see :meth:`holding`)."""
        if fcntl is None:  # pragma: no cover - Windows
            return False
        if not (self.root / LOCKS_DIR / f"{key[:32]}.use").is_file():
            return False  # never held: nothing to ask, and nothing is created
        with self._exclusive_use(key) as free:
            return not free

    def _locked(self, key: str) -> bool:
        if not (self.root / LOCKS_DIR / f"{key[:32]}.lock").exists():
            return False
        try:
            with self._lock(key).acquire(timeout=0):
                return False
        except Timeout:
            return True

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
        inputs: Iterable[Path | None] = (),
    ) -> CacheEntry:
        """Return the entry for ``key``, building it with ``build(tmp_folder)`` if absent.

        ``build`` writes the entry's files into the folder it is given and may return
        metadata for the manifest. If it raises (including :class:`~nbkit.errors.Cancelled`)
        the temporary folder is removed and nothing in the cache changes.

        ``needs_bytes`` is an estimate of what the build writes (or a function computing it,
        called only when the entry is missing): with less free space than that, plus a
        margin, the build is refused before it starts. A build that runs out of space anyway
        raises :class:`~nbkit.errors.DiskSpaceError` as well.

        ``inputs``: the cache entries the build reads, held in use while it runs so that
        ``nbkit cache clear`` cannot remove them from under it.
        """
        entry = self.lookup(kind, key, name)
        if entry is not None:
            return entry
        self._ensure_root()
        require_free_space(self.root, needs_bytes() if callable(needs_bytes) else needs_bytes, name)
        final = self.entry_path(kind, key, name)
        with self._build_lock(key, final.name):
            # Another writer may have finished while we waited for the lock.
            entry = self.lookup(kind, key, name)
            if entry is not None:
                return entry
            self.reclaim_leftovers()
            with self.holding(inputs):
                self._build_into(final, kind, key, name, build, description)
        built = self.read_entry(final)
        if built is None:  # pragma: no cover - only if the disk lies to us
            raise CacheError(f"The cache entry {final} vanished right after it was written.")
        return built

    @contextlib.contextmanager
    def _build_lock(self, key: str, what: str) -> Iterator[None]:
        lock = self._lock(key)
        owner_path = self._owner_path(key)
        try:
            lock.acquire(timeout=min(LOCK_NOTICE_S, LOCK_TIMEOUT_S))
        except Timeout:
            owner = _read_json(owner_path)
            log.warning("Waiting for %s, which is building %s.", describe_owner(owner), what)
            try:
                lock.acquire(timeout=max(LOCK_TIMEOUT_S - LOCK_NOTICE_S, 0))
            except Timeout as exc:
                raise CacheError(
                    f"{describe_owner(_read_json(owner_path))} has been building {what} for over "
                    f"{LOCK_TIMEOUT_S:.0f} s; wait for it or stop it, then run again (lock: {lock.lock_file})."
                ) from exc
        try:
            owner_path.write_text(json.dumps({**_this_process(), "what": what}))
            yield
        finally:
            with contextlib.suppress(OSError):
                owner_path.unlink()
            lock.release()

    def _build_into(
        self,
        final: Path,
        kind: str,
        key: str,
        name: str,
        build: Callable[[Path], Mapping[str, Any] | None],
        description: Mapping[str, Any] | None,
    ) -> None:
        tmp = self._own_dir(TMP_DIR) / f"{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        # Written first: it proves the folder is nbkit's, and names the process, so a leftover
        # of a killed run can be told from a build in progress.
        (tmp / BUILD_MARKER).write_text(json.dumps({**_this_process(), "key": key, "kind": kind}))
        try:
            metadata = build(tmp) or {}
            (tmp / BUILD_MARKER).unlink(missing_ok=True)
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
            if final.is_symlink() or final.exists():
                if self._proven_entry(final) is None:
                    raise CacheError(
                        f"{final} exists and is not an nbkit cache entry; move it out of the cache, then run again."
                    )
                log.warning("Replacing %s: it holds another key's entry.", final)
                self._discard(final)
            os.replace(tmp, final)
        except BaseException as exc:
            # Measured before the partial build is removed: that removal frees the space again.
            free = _free_or_none(self.root)
            nearly_full = free is not None and free < NEARLY_FULL_BYTES
            _remove_tree(tmp)
            if is_disk_full(exc) or (nearly_full and not isinstance(exc, KeyboardInterrupt)):
                raise DiskSpaceError(
                    f"The disk holding the cache {self.root} ran out of space while building "
                    f"{name}; the partial build was removed and the cache is unchanged. "
                    f"{FREE_SPACE_ADVICE}"
                ) from exc
            raise

    def reclaim_leftovers(self) -> list[IncompleteFolder]:
        """Remove nbkit's build folders whose process is gone and whose lock is free."""
        reclaimed = []
        for leftover in self._tmp_folders():
            if leftover.removable:
                _remove_tree(leftover.path)
                if not leftover.path.exists():
                    reclaimed.append(leftover)
                    log.info("Removed %s (%s).", leftover.path, leftover.reason)
        return reclaimed

    def _discard(self, path: Path) -> None:
        # Rename first so a crash mid-delete never leaves a half-deleted folder under a live
        # name; the manifest travels with it and proves the folder is nbkit's until the end.
        trash = self._own_dir(TMP_DIR) / f"discard.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        os.replace(path, trash)
        _remove_tree(trash, last=MANIFEST_NAME)

    def remove(self, entry: CacheEntry) -> None:
        with self._lock(entry.key):
            if self._proven_entry(entry.path) is not None:
                self._discard(entry.path)

    # -- clearing --------------------------------------------------------------------------

    def plan_clear(self, kind: str | None = None, *, incomplete_only: bool = False) -> ClearReport:
        """What :meth:`clear` would remove, skip and leave alone, changing nothing."""
        return self._clear(kind, incomplete_only=incomplete_only, dry_run=True)

    def clear(self, kind: str | None = None, *, incomplete_only: bool = False) -> ClearReport:
        """Remove nbkit's entries (of ``kind``) and the leftovers of interrupted builds.

        Entries being built or in use are skipped; folders nbkit did not provably write are
        never touched. Refuses (:class:`~nbkit.errors.CacheError`) a folder without nbkit's
        marker, and an unknown ``kind`` (:class:`~nbkit.errors.ConfigError`).
        """
        return self._clear(kind, incomplete_only=incomplete_only, dry_run=False)

    def _clear(self, kind: str | None, *, incomplete_only: bool, dry_run: bool) -> ClearReport:
        report = ClearReport()
        if not self.root.exists():
            return report
        self._require_marked_root()
        self.check_kind(kind)
        for folder in self.incomplete():
            if folder.state == "foreign":
                report.foreign.append(ClearItem(folder.path, 0, "not nbkit's", folder.reason))
        if not dry_run:
            for name in (TMP_DIR, LOCKS_DIR):
                if (self.root / name).is_symlink():
                    raise CacheError(
                        f"{self.root / name} is a symbolic link where nbkit keeps its own files; "
                        "remove the link, then run again."
                    )
        if not incomplete_only:
            for entry in self.entries(kind):
                if self._proven_entry(entry.path) is None:
                    continue
                item = ClearItem(entry.path, entry.size_bytes or folder_size(entry.path), _describe(entry))
                self._clear_entry(entry, item, report, dry_run)
        if kind is None or incomplete_only:
            for leftover in self._tmp_folders():
                item = ClearItem(leftover.path, leftover.size_bytes, "build leftover", leftover.reason)
                if leftover.state == "building":
                    report.skipped.append(item)
                elif leftover.removable:
                    if not dry_run:
                        _remove_tree(leftover.path)
                    if dry_run or not leftover.path.exists():
                        report.removed.append(item)
        return report

    def _clear_entry(self, entry: CacheEntry, item: ClearItem, report: ClearReport, dry_run: bool) -> None:
        lock = self._lock(entry.key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            owner = _read_json(self._owner_path(entry.key))
            report.skipped.append(
                ClearItem(item.path, item.size_bytes, item.description, f"locked by {describe_owner(owner)}")
            )
            return
        try:
            if self._in_use(entry.key):
                report.skipped.append(ClearItem(item.path, item.size_bytes, item.description, "in use"))
                return
            if dry_run:
                report.removed.append(item)
                return
            # Hold the use lock exclusively while removing: a reader arriving now waits, then
            # finds the entry gone (see holding()).
            with self._exclusive_use(entry.key) as free:
                if not free:
                    report.skipped.append(ClearItem(item.path, item.size_bytes, item.description, "in use"))
                    return
                self._discard(entry.path)
            if not entry.path.exists():
                report.removed.append(item)
        finally:
            lock.release()

    @contextlib.contextmanager
    def _exclusive_use(self, key: str) -> Iterator[bool]:
        if fcntl is None:  # pragma: no cover - Windows
            yield True
            return
        fd = os.open(self._own_dir(LOCKS_DIR) / f"{key[:32]}.use", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


class NotBuilt(Exception):
    """Raised by a :class:`LookupOnlyCache` where a build would start (never shown to a user)."""


class LookupOnlyCache(Cache):
    """The same cache folder, read only: :meth:`get_or_build` finds an entry but never builds one.

    Builders compute their keys and call ``get_or_build`` as usual; here a missing entry
    raises :class:`NotBuilt` instead of building, and nothing is written (not even the root's
    marker). See :func:`find_built`.
    """

    def get_or_build(
        self,
        kind: str,
        key: str,
        name: str,
        build: Callable[[Path], Mapping[str, Any] | None],
        **options: Any,
    ) -> CacheEntry:
        entry = self.lookup(kind, key, name)
        if entry is None:
            raise NotBuilt(f"No {kind} entry {name!r} in {self.root}.")
        return entry


def find_built(make: Callable[[Cache], T], cache: Cache) -> T | None:
    """What ``make(cache)`` returns when every entry it needs is already in ``cache``, else None.

    ``make`` runs against a :class:`LookupOnlyCache` on the same folder, so the entries are
    found with the builder's own keys and nothing is built, e.g.
    ``find_built(lambda c: export_openvino(source, cache=c), cache)``. ``make`` must reach the
    cache only through the cache it is given, and do nothing costly before its lookups.
    """
    try:
        return make(LookupOnlyCache(cache.root))
    except NotBuilt as missing:
        log.debug("Not in the cache yet: %s", missing)
        return None


def hold_entry(path: Path | str) -> contextlib.ExitStack:
    """Hold the cache entry at ``path`` in use until ``.close()`` (a no-op for other folders).

    For objects that keep a model open longer than one call, such as chat sessions: while
    held, ``nbkit cache clear`` skips the entry instead of deleting files a session reads.
    """
    stack = contextlib.ExitStack()
    folder = Path(path)
    root = folder.parent.parent
    if (root / ROOT_MARKER).is_file() and not (root / ROOT_MARKER).is_symlink():
        stack.enter_context(Cache(root).holding([folder]))
    return stack


def _describe(entry: CacheEntry) -> str:
    model = entry.metadata.get("source_name") or entry.manifest.get("name", "")
    label = entry.metadata.get("label", "")
    return " ".join(part for part in (entry.kind, str(model), str(label)) if part)


def _free_or_none(path: Path) -> int | None:
    try:
        return free_bytes(path)
    except OSError:
        return None


def _remove_tree(path: Path, last: str = BUILD_MARKER) -> None:
    """Delete ``path`` (never following links), its marker file ``last`` at the very end.

    Until the folder is gone, the marker proves it is nbkit's, so an interrupted removal
    leaves a folder the next clear still recognises and finishes.
    """
    if path.is_symlink():
        path.unlink()
        return
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.name == last:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
    with contextlib.suppress(OSError):
        (path / last).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def _pid_in_name(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.[0-9a-f]{8}$", name)
    return int(match.group(1)) if match else None
