"""Unit tests for :mod:`nbkit.infra.cache` (no models, no OpenVINO)."""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import platformdirs
import psutil
import pytest

import nbkit.infra.cache as cache_module
from nbkit.errors import CacheError, Cancelled, DiskSpaceError, NbkitError
from nbkit.infra.cache import CACHE_ENV_VAR, MANIFEST_NAME, Cache, CacheEntry, cache_key, default_cache_dir
from nbkit.infra.progress import CancelToken, ProgressReporter

KIND = "ir"
NAME = "org/tiny-model"
KEY = cache_key({"source": "org/tiny-model", "config": "int4_sym-g64-r1"})
OTHER_KEY = cache_key({"source": "org/tiny-model", "config": "int8_asym"})
PAYLOAD = b"fake weights\n" * 10


class BuildFailed(Exception):
    """Raised by test builders to simulate a failing build."""


class CountingBuilder:
    """A builder that writes one file, returns metadata and counts how often it ran."""

    def __init__(self, metadata: Mapping[str, Any] | None = None) -> None:
        self.calls: list[Path] = []
        self.metadata = dict(metadata or {"precision": "int4"})

    def __call__(self, folder: Path) -> Mapping[str, Any]:
        self.calls.append(folder)
        (folder / "model.bin").write_bytes(PAYLOAD)
        return self.metadata


def failing_builder(folder: Path) -> None:
    (folder / "model.bin").write_bytes(PAYLOAD)
    (folder / "sub").mkdir()
    (folder / "sub" / "part.bin").write_bytes(b"partial")
    raise BuildFailed("conversion crashed half-way")


def listing(path: Path) -> list[str]:
    """Every file and folder below ``path``, relative, sorted; [] if ``path`` does not exist."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Content and mtime of every file under ``folder``."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def assert_nothing_left(cache: Cache, kind: str = KIND) -> None:
    assert listing(cache.root / kind) == []
    assert listing(cache.root / ".tmp") == []
    assert cache.entries() == []
    assert cache.incomplete() == []


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


# -- cache_key --------------------------------------------------------------------------------


def test_cache_key_is_a_stable_sha256() -> None:
    # Pinned: a change here silently invalidates every user's cache.
    expected = "721ef82f2d6c0997bffb7a8ab3f40f8fb45b0b52ce2af3afa6b0f05efbdc317f"
    assert hashlib.sha256(b'{"a":"x","b":[1,2]}').hexdigest() == expected
    assert cache_key({"b": [1, 2], "a": "x"}) == expected
    assert cache_key({"a": 1}) == cache_key({"a": 1})


def test_cache_key_ignores_dict_order_at_every_level() -> None:
    a = {"source": "m", "config": {"mode": "int4", "group": 64}, "versions": {"nncf": "3.4", "ov": "2026"}}
    b = {"versions": {"ov": "2026", "nncf": "3.4"}, "config": {"group": 64, "mode": "int4"}, "source": "m"}
    assert cache_key(a) == cache_key(b)


BASE_PARTS: dict[str, Any] = {"source": "m", "revision": "abc", "config": {"mode": "int4", "group": 64}}


@pytest.mark.parametrize(
    "changed",
    [
        {**BASE_PARTS, "source": "n"},
        {**BASE_PARTS, "revision": "abd"},
        {**BASE_PARTS, "config": {"mode": "int4", "group": 128}},
        {**BASE_PARTS, "config": {"mode": "int8", "group": 64}},
        {**BASE_PARTS, "config": {"mode": "int4", "group": "64"}},
        {**BASE_PARTS, "extra": None},
        {k: v for k, v in BASE_PARTS.items() if k != "revision"},
        {"Source": "m", "revision": "abc", "config": {"mode": "int4", "group": 64}},
    ],
    ids=["source", "revision", "nested-value", "nested-other", "value-type", "added", "removed", "key-name"],
)
def test_cache_key_changes_when_any_part_changes(changed: dict[str, Any]) -> None:
    assert cache_key(changed) != cache_key(BASE_PARTS)


def test_cache_key_accepts_non_json_values() -> None:
    assert cache_key({"path": Path("/models/a")}) != cache_key({"path": Path("/models/b")})


# -- default_cache_dir / Cache() --------------------------------------------------------------


def test_env_var_sets_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "from-env"))
    assert default_cache_dir() == tmp_path / "from-env"
    assert Cache().root == tmp_path / "from-env"


def test_env_var_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(CACHE_ENV_VAR, "~/nbkit-cache")
    assert default_cache_dir() == tmp_path / "nbkit-cache"


@pytest.mark.parametrize("value", [None, ""])
def test_without_env_var_the_platform_cache_dir_is_used(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(CACHE_ENV_VAR, value)
    assert default_cache_dir() == Path(platformdirs.user_cache_dir("nbkit", appauthor=False))


def test_default_cache_builds_under_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    entry = Cache().get_or_build(KIND, KEY, NAME, CountingBuilder())
    assert entry.path.parent.parent == tmp_path / "env-cache"


def test_root_under_a_regular_file_gives_cache_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv(CACHE_ENV_VAR, str(blocker / "cache"))
    builder = CountingBuilder()
    with pytest.raises(CacheError, match=CACHE_ENV_VAR) as info:
        Cache().get_or_build(KIND, KEY, NAME, builder)
    assert isinstance(info.value, NbkitError)
    assert str(blocker / "cache") in str(info.value)
    assert builder.calls == []
    assert blocker.read_text() == "a file"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_root_gives_cache_error(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(CacheError, match=CACHE_ENV_VAR):
            Cache(root).get_or_build(KIND, KEY, NAME, CountingBuilder())
    finally:
        root.chmod(0o700)


def test_reading_a_missing_root_creates_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "absent")
    assert cache.lookup(KIND, KEY, NAME) is None
    assert cache.entries() == []
    assert cache.incomplete() == []
    assert len(cache.clear()) == 0
    assert not cache.root.exists()


# -- get_or_build -----------------------------------------------------------------------------


def test_get_or_build_builds_once_and_returns_entry(cache: Cache) -> None:
    builder = CountingBuilder({"precision": "int4", "layers": 3})
    entry = cache.get_or_build(KIND, KEY, NAME, builder, description={"source": "hub"})

    assert len(builder.calls) == 1
    assert isinstance(entry, CacheEntry)
    assert entry.path == cache.entry_path(KIND, KEY, NAME)
    assert entry.path.parent == cache.root / KIND
    assert entry.path.name.endswith(KEY[:16])
    assert (entry.path / "model.bin").read_bytes() == PAYLOAD
    on_disk = json.loads((entry.path / MANIFEST_NAME).read_text())
    assert on_disk == entry.manifest
    assert entry.kind == KIND
    assert entry.key == KEY
    assert entry.manifest["name"] == NAME
    assert entry.manifest["description"] == {"source": "hub"}
    assert entry.metadata == {"precision": "int4", "layers": 3}
    assert entry.size_bytes == len(PAYLOAD)
    assert listing(cache.root / ".tmp") == []


def test_second_call_does_not_build_again(cache: Cache) -> None:
    builder = CountingBuilder()
    first = cache.get_or_build(KIND, KEY, NAME, builder)
    second = cache.get_or_build(KIND, KEY, NAME, builder)
    third = Cache(cache.root).get_or_build(KIND, KEY, NAME, builder)
    assert len(builder.calls) == 1
    assert first == second == third
    assert cache.lookup(KIND, KEY, NAME) == first


def test_different_keys_get_different_entries(cache: Cache) -> None:
    builder = CountingBuilder()
    a = cache.get_or_build(KIND, KEY, NAME, builder)
    b = cache.get_or_build(KIND, OTHER_KEY, NAME, builder)
    c = cache.get_or_build("gguf", KEY, NAME, builder)
    assert len(builder.calls) == 3
    assert len({a.path, b.path, c.path}) == 3


def test_builder_returning_none_gives_empty_metadata(cache: Cache) -> None:
    def build(folder: Path) -> None:
        (folder / "x.txt").write_text("x")

    entry = cache.get_or_build(KIND, KEY, NAME, build)
    assert entry.metadata == {}
    assert entry.size_bytes == 1


def test_name_is_slugged_into_the_folder_name(cache: Cache) -> None:
    path = cache.entry_path(KIND, KEY, "Org/Model Name: v2")
    assert path.parent == cache.root / KIND
    assert "/" not in path.name[: -len(KEY[:16])]
    assert " " not in path.name
    assert path.name.startswith("Org-Model-Name-v2-")


def test_builder_works_in_tmp_and_manifest_appears_only_after(cache: Cache) -> None:
    seen: dict[str, Any] = {}

    def build(folder: Path) -> None:
        seen["folder"] = folder
        seen["manifest_during_build"] = (folder / MANIFEST_NAME).exists()
        seen["final_during_build"] = cache.entry_path(KIND, KEY, NAME).exists()
        seen["lookup_during_build"] = cache.lookup(KIND, KEY, NAME)
        (folder / "model.bin").write_bytes(PAYLOAD)

    entry = cache.get_or_build(KIND, KEY, NAME, build)
    assert seen["folder"].parent == cache.root / ".tmp"
    assert seen["manifest_during_build"] is False
    assert seen["final_during_build"] is False
    assert seen["lookup_during_build"] is None
    assert not seen["folder"].exists()
    assert (entry.path / MANIFEST_NAME).is_file()


def test_failing_builder_leaves_nothing_and_propagates(cache: Cache) -> None:
    with pytest.raises(BuildFailed, match="half-way"):
        cache.get_or_build(KIND, KEY, NAME, failing_builder)
    assert_nothing_left(cache)
    assert cache.lookup(KIND, KEY, NAME) is None


def test_keyboard_interrupt_in_builder_leaves_nothing(cache: Cache) -> None:
    def build(folder: Path) -> None:
        (folder / "model.bin").write_bytes(PAYLOAD)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(KIND, KEY, NAME, build)
    assert_nothing_left(cache)


def test_failure_while_renaming_into_place_leaves_nothing(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == cache.entry_path(KIND, KEY, NAME):
            assert (Path(src) / MANIFEST_NAME).is_file()  # the manifest is complete before the rename
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", replace)
    with pytest.raises(DiskSpaceError, match="ran out of space while building") as caught:
        cache.get_or_build(KIND, KEY, NAME, CountingBuilder())
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == 28
    monkeypatch.undo()
    assert_nothing_left(cache)


def test_cancelled_builder_leaves_nothing(cache: Cache) -> None:
    token = CancelToken()
    reports: list[float] = []
    reporter = ProgressReporter(lambda p: reports.append(p.fraction), token)

    def build(folder: Path) -> None:
        for i in range(10):
            reporter.report(i / 10, "writing shard")
            (folder / f"shard-{i}.bin").write_bytes(PAYLOAD)
            if i == 3:
                token.cancel()  # as a UI would, between two steps

    with pytest.raises(Cancelled):
        cache.get_or_build(KIND, KEY, NAME, build)
    assert reports == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert_nothing_left(cache)

    # The same key builds fine afterwards.
    entry = cache.get_or_build(KIND, KEY, NAME, CountingBuilder())
    assert cache.lookup(KIND, KEY, NAME) == entry


def test_failed_build_does_not_touch_other_entries(cache: Cache) -> None:
    good = cache.get_or_build(KIND, KEY, NAME, CountingBuilder())
    before = snapshot(good.path)
    time.sleep(0.01)  # make a rewrite visible in the mtimes

    with pytest.raises(BuildFailed):
        cache.get_or_build(KIND, OTHER_KEY, NAME, failing_builder)
    with pytest.raises(Cancelled):
        cache.get_or_build(KIND, OTHER_KEY, NAME, cancelled_builder)

    assert snapshot(good.path) == before
    assert cache.lookup(KIND, KEY, NAME) == good
    assert cache.entries() == [good]
    assert cache.lookup(KIND, OTHER_KEY, NAME) is None
    assert listing(cache.root / ".tmp") == []


def cancelled_builder(folder: Path) -> None:
    token = CancelToken()
    (folder / "model.bin").write_bytes(PAYLOAD)
    token.cancel()
    token.raise_if_cancelled()


# -- half-written entries ---------------------------------------------------------------------


def _write_no_manifest(folder: Path) -> None:
    pass


def _write_truncated_manifest(folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text('{"kind": "ir", "key": ')


def _write_manifest_without_key(folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps({"kind": "ir", "name": NAME}))


def _write_manifest_list(folder: Path) -> None:
    (folder / MANIFEST_NAME).write_text("[]")


HALF_WRITTEN: list[Callable[[Path], None]] = [
    _write_no_manifest,
    _write_truncated_manifest,
    _write_manifest_without_key,
    _write_manifest_list,
]


@pytest.fixture(params=HALF_WRITTEN, ids=lambda f: f.__name__.removeprefix("_write_"))
def half_written(request: pytest.FixtureRequest, cache: Cache) -> Path:
    """The final folder of (KIND, KEY, NAME) with files but no valid manifest."""
    cache._ensure_root()  # nbkit made the cache; the folder came later, by other means
    folder = cache.entry_path(KIND, KEY, NAME)
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"truncated")
    (folder / "stale.txt").write_text("from an interrupted copy")
    request.param(folder)
    return folder


def test_half_written_folder_is_never_returned(cache: Cache, half_written: Path) -> None:
    assert cache.lookup(KIND, KEY, NAME) is None
    assert Cache.read_entry(half_written) is None
    assert cache.entries() == []
    assert cache.entries(KIND) == []


def test_half_written_folder_is_reported_incomplete(cache: Cache, half_written: Path) -> None:
    found = cache.incomplete()
    assert [f.path for f in found] == [half_written]
    assert "manifest" in found[0].reason


def test_half_written_folder_is_never_replaced_and_the_build_says_why(
    cache: Cache, half_written: Path
) -> None:
    # nbkit never wrote a folder without its manifest under an entry's name (it renames whole
    # builds into place), so such a folder is somebody else's: it is never used, never deleted.
    before = snapshot(half_written)
    builder = CountingBuilder()
    with pytest.raises(CacheError, match=r"is not an nbkit cache entry; move it out of the cache") as caught:
        cache.get_or_build(KIND, KEY, NAME, builder)
    assert str(half_written) in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(half_written) == before
    assert cache.lookup(KIND, KEY, NAME) is None
    assert listing(cache.root / ".tmp") == []


def test_failed_rebuild_of_half_written_folder_builds_nothing(cache: Cache, half_written: Path) -> None:
    before = snapshot(half_written)
    with pytest.raises(BuildFailed):
        cache.get_or_build(KIND, KEY, NAME, failing_builder)
    assert cache.lookup(KIND, KEY, NAME) is None
    assert snapshot(half_written) == before
    assert listing(cache.root / ".tmp") == []


def test_folder_with_another_keys_manifest_is_not_returned_and_is_rebuilt(cache: Cache) -> None:
    # Same 16-character prefix, different full key: e.g. a folder copied in by hand.
    impostor_key = KEY[:16] + "0" * (len(KEY) - 16)
    assert impostor_key != KEY
    cache._ensure_root()
    folder = cache.entry_path(KIND, KEY, NAME)
    assert folder == cache.entry_path(KIND, impostor_key, NAME)
    folder.mkdir(parents=True)
    (folder / MANIFEST_NAME).write_text(json.dumps({"kind": KIND, "key": impostor_key, "name": NAME}))

    assert cache.lookup(KIND, KEY, NAME) is None
    builder = CountingBuilder()
    entry = cache.get_or_build(KIND, KEY, NAME, builder)
    assert len(builder.calls) == 1
    assert entry.key == KEY
    assert cache.lookup(KIND, KEY, NAME) == entry


def test_tmp_leftovers_are_reported_incomplete(cache: Cache) -> None:
    leftover = cache.root / ".tmp" / "model-0123456789abcdef.999999.deadbeef"
    leftover.mkdir(parents=True)
    found = cache.incomplete()
    assert [f.path for f in found] == [leftover]
    assert cache.entries() == []


# -- entries() --------------------------------------------------------------------------------


def test_entries_are_sorted_newest_first(cache: Cache) -> None:
    # Names sort a < b < c, build order b, a, c; creation order is the only reason for c, a, b.
    b = cache.get_or_build(KIND, cache_key({"n": "b"}), "b", CountingBuilder())
    a = cache.get_or_build("gguf", cache_key({"n": "a"}), "a", CountingBuilder())
    c = cache.get_or_build(KIND, cache_key({"n": "c"}), "c", CountingBuilder())

    assert b.manifest["created"] < a.manifest["created"] < c.manifest["created"]
    assert cache.entries() == [c, a, b]
    assert cache.entries(KIND) == [c, b]
    assert cache.entries("gguf") == [a]
    assert cache.entries("unknown-kind") == []


def test_entries_ignore_internal_folders(cache: Cache) -> None:
    entry = cache.get_or_build(KIND, KEY, NAME, CountingBuilder())
    (cache.root / ".tmp" / "leftover.1.abcdef12").mkdir(parents=True)
    assert (cache.root / ".locks").is_dir()
    (cache.root / "stray-file.txt").write_text("not a kind")
    assert cache.entries() == [entry]


# -- clear() ----------------------------------------------------------------------------------


def _populate(cache: Cache) -> dict[str, Any]:
    """Two ``ir`` entries, one ``gguf`` entry, one half-written ``ir`` folder, one stale tmp build."""
    ir1 = cache.get_or_build(KIND, cache_key({"n": 1}), "one", CountingBuilder())
    ir2 = cache.get_or_build(KIND, cache_key({"n": 2}), "two", CountingBuilder())
    gguf = cache.get_or_build("gguf", cache_key({"n": 3}), "three", CountingBuilder())
    half = cache.entry_path(KIND, cache_key({"n": 4}), "four")
    half.mkdir()
    (half / "model.bin").write_bytes(b"x")
    stale = cache.root / ".tmp" / "discard.0badf00d"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("junk")
    return {"ir1": ir1, "ir2": ir2, "gguf": gguf, "half": half, "stale": stale}


def test_clear_removes_every_entry_and_leaves_what_is_not_nbkits(cache: Cache) -> None:
    made = _populate(cache)
    half_before, stale_before = snapshot(made["half"]), snapshot(made["stale"])
    report = cache.clear()
    assert len(report) == 3
    assert report.removed_bytes == sum(made[k].size_bytes for k in ("ir1", "ir2", "gguf")) > 0
    assert cache.entries() == []
    # The folder without a manifest and the tmp folder without a build marker are not provably
    # nbkit's: reported, never removed.
    assert sorted(item.path for item in report.foreign) == sorted([made["half"], made["stale"]])
    assert snapshot(made["half"]) == half_before and snapshot(made["stale"]) == stale_before
    assert [f.state for f in cache.incomplete()] == ["foreign", "foreign"]
    assert len(cache.clear()) == 0


def test_clear_kind_only_touches_that_kind(cache: Cache) -> None:
    made = _populate(cache)
    gguf_before = snapshot(made["gguf"].path)
    assert len(cache.clear(KIND)) == 2
    assert made["half"].is_dir()
    assert cache.entries() == [made["gguf"]]
    assert snapshot(made["gguf"].path) == gguf_before
    assert made["stale"].is_dir()  # leftovers of other builds are not a kind's business
    assert len(cache.clear("gguf")) == 1
    assert cache.entries() == []


def test_clear_then_rebuild(cache: Cache) -> None:
    builder = CountingBuilder()
    cache.get_or_build(KIND, KEY, NAME, builder)
    assert len(cache.clear()) == 1
    assert cache.lookup(KIND, KEY, NAME) is None
    entry = cache.get_or_build(KIND, KEY, NAME, builder)
    assert len(builder.calls) == 2
    assert cache.lookup(KIND, KEY, NAME) == entry


def test_clear_skips_entries_whose_lock_is_held(cache: Cache) -> None:
    locked = cache.get_or_build(KIND, KEY, NAME, CountingBuilder())
    free = cache.get_or_build(KIND, OTHER_KEY, NAME, CountingBuilder())
    with cache._lock(KEY):
        assert len(cache.clear()) == 1
    assert cache.entries() == [locked]
    assert not free.path.exists()


def _tmp_build(cache: Cache, name: str, owner: dict[str, Any]) -> Path:
    folder = cache.root / ".tmp" / name
    folder.mkdir(parents=True)
    (folder / cache_module.BUILD_MARKER).write_text(json.dumps({**owner, "key": KEY, "kind": KIND}))
    (folder / "model.bin").write_bytes(PAYLOAD)
    return folder


def test_clear_skips_tmp_builds_of_live_processes_and_removes_those_of_dead_ones(cache: Cache) -> None:
    cache._ensure_root()
    parent = psutil.Process(os.getppid())
    live = _tmp_build(cache, "live", {"pid": parent.pid, "started": parent.create_time()})
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = _tmp_build(cache, "dead", {"pid": int(finished.stdout), "started": 1.0})
    # Same pid as a live process, but another start time: the pid was reused, the owner is gone.
    reused = _tmp_build(cache, "reused", {"pid": parent.pid, "started": parent.create_time() - 1000})
    report = cache.clear()
    assert sorted(item.path for item in report.removed) == sorted([dead, reused])
    assert [item.path for item in report.skipped] == [live]
    assert "being built by process" in report.skipped[0].reason
    assert live.is_dir() and not dead.exists() and not reused.exists()


def test_remove_deletes_one_entry(cache: Cache) -> None:
    a = cache.get_or_build(KIND, KEY, NAME, CountingBuilder())
    b = cache.get_or_build(KIND, OTHER_KEY, NAME, CountingBuilder())
    cache.remove(a)
    assert cache.entries() == [b]
    assert not a.path.exists()
    assert listing(cache.root / ".tmp") == []


def test_clear_does_not_break_a_build_running_in_another_thread(cache: Cache) -> None:
    started, resume = threading.Event(), threading.Event()

    def build(folder: Path) -> None:
        (folder / "model.bin").write_bytes(PAYLOAD)
        started.set()
        assert resume.wait(10)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(cache.get_or_build, KIND, KEY, NAME, build)
        assert started.wait(10)
        cache.clear()
        resume.set()
        entry = future.result(timeout=10)
    assert (entry.path / "model.bin").read_bytes() == PAYLOAD


# -- locking and concurrency ------------------------------------------------------------------


def test_lock_timeout_gives_cache_error(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "LOCK_TIMEOUT_S", 0.2)
    builder = CountingBuilder()
    cache.root.mkdir(parents=True)
    with cache._lock(KEY), pytest.raises(CacheError, match=r"\.lock"):
        cache.get_or_build(KIND, KEY, NAME, builder)
    assert builder.calls == []
    assert_nothing_left(cache)


def slow_counting_build(counter: Path, folder: Path) -> dict[str, int]:
    """Builder used by concurrent workers: slow, and leaves one line per run in ``counter``."""
    time.sleep(0.3)
    with counter.open("a") as f:
        f.write(f"{os.getpid()} {threading.get_ident()}\n")
    (folder / "model.bin").write_bytes(PAYLOAD)
    return {"builder_pid": os.getpid()}


def process_worker(root: str, counter: str, barrier: Any, result: str) -> None:
    """Runs in a spawned process: wait for every worker, then ask for the same entry."""
    barrier.wait(60)
    entry = Cache(root).get_or_build(KIND, KEY, NAME, functools.partial(slow_counting_build, Path(counter)))
    Path(result).write_text(str(entry.path))


def _counter_lines(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = 4
    root, counter = tmp_path / "cache", tmp_path / "counter.txt"
    barrier = ctx.Barrier(workers)
    results = [tmp_path / f"result-{i}.txt" for i in range(workers)]
    procs = [
        ctx.Process(target=process_worker, args=(str(root), str(counter), barrier, str(r))) for r in results
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0] * workers
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()

    assert len(_counter_lines(counter)) == 1
    paths = {r.read_text() for r in results}
    assert paths == {str(Cache(root).entry_path(KIND, KEY, NAME))}
    entry = Cache(root).lookup(KIND, KEY, NAME)
    assert entry is not None
    assert entry.metadata["builder_pid"] in {p.pid for p in procs}
    assert listing(root / ".tmp") == []


def test_concurrent_threads_build_once(tmp_path: Path) -> None:
    workers = 6
    root, counter = tmp_path / "cache", tmp_path / "counter.txt"
    barrier = threading.Barrier(workers)

    def worker() -> CacheEntry:
        barrier.wait(30)
        return Cache(root).get_or_build(KIND, KEY, NAME, lambda folder: slow_counting_build(counter, folder))

    with ThreadPoolExecutor(workers) as pool:
        entries = list(pool.map(lambda _: worker(), range(workers)))

    assert len(_counter_lines(counter)) == 1
    assert {e.path for e in entries} == {Cache(root).entry_path(KIND, KEY, NAME)}
    assert all(e.manifest == entries[0].manifest for e in entries)
    assert listing(root / ".tmp") == []


def test_concurrent_threads_different_keys_all_build(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    keys = [cache_key({"n": i}) for i in range(4)]
    counters = [tmp_path / f"counter-{i}.txt" for i in range(4)]

    def worker(i: int) -> CacheEntry:
        return Cache(root).get_or_build(KIND, keys[i], NAME, lambda f: slow_counting_build(counters[i], f))

    with ThreadPoolExecutor(4) as pool:
        entries = list(pool.map(worker, range(4)))
    assert [len(_counter_lines(c)) for c in counters] == [1, 1, 1, 1]
    assert sorted(e.key for e in Cache(root).entries()) == sorted(keys)
    assert len({e.path for e in entries}) == 4
