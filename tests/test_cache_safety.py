"""nbkit's cache never touches what it did not provably write.

Each test builds a real sandbox: a user's own files, folders that only look like nbkit's,
symbolic links pointing out of the cache, entries in use by another process, leftovers of a
killed build. It then runs ``nbkit cache list/clear`` (the CLI, in-process) or the
:class:`~nbkit.infra.cache.Cache` API and proves that everything outside nbkit's own entries is
byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import nbkit.infra.cache as cache_module
from nbkit.cli.main import main
from nbkit.errors import CacheError, ConfigError, DiskSpaceError
from nbkit.infra.cache import BUILD_MARKER, CACHE_KINDS, MANIFEST_NAME, ROOT_MARKER, Cache, cache_key

KIND = "openvino-float"
PAYLOAD = b"weights" * 100


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file (content), link (target) and folder below ``root``, never following links."""
    found: dict[str, bytes | str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = f"-> {os.readlink(path)}"
            elif path.is_file():
                found[relative] = path.read_bytes()
            else:
                found[relative] = "<dir>"
    return found


def user_files(root: Path) -> Path:
    """A user's folder: a project and some documents, two levels deep and more."""
    (root / "projects" / "myproj" / "src").mkdir(parents=True)
    (root / "projects" / "myproj" / "src" / "main.py").write_text("print('mine')\n")
    (root / "Documents" / "tax").mkdir(parents=True)
    (root / "Documents" / "tax" / "2025.pdf").write_bytes(b"%PDF-1.7 mine")
    (root / "notes.txt").write_text("do not delete\n")
    return root


def build(cache: Cache, name: str, kind: str = KIND) -> Any:
    def write(folder: Path) -> dict[str, str]:
        (folder / "model.bin").write_bytes(PAYLOAD)
        return {"source_name": name, "label": "test"}

    return cache.get_or_build(kind, cache_key({"name": name}), name, write)


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence(text: str) -> None:
    line = text.strip()
    assert line and "\n" not in line and "Traceback" not in line, text


# -- a folder that is not an nbkit cache ------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["cache", "clear", "--yes"], ["cache", "clear", "--incomplete", "--yes"]]
)
def test_clear_refuses_a_users_folder_and_touches_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    home = user_files(tmp_path / "home")
    before = tree(home)
    code, out, err = cli(capsys, "--cache-dir", home, *command)
    assert code == 1 and out == ""
    one_sentence(err)
    assert "is not an nbkit cache" in err and "removes nothing" in err
    assert tree(home) == before


def test_clear_refuses_a_users_folder_set_through_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = user_files(tmp_path / "home")
    before = tree(home)
    monkeypatch.setenv("NBKIT_CACHE_DIR", str(home))
    code, _, err = cli(capsys, "cache", "clear", "--yes")
    assert code == 1 and "is not an nbkit cache" in err
    assert tree(home) == before


def test_list_never_calls_a_users_folder_an_interrupted_build(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home = user_files(tmp_path / "home")
    before = tree(home)
    code, out, _ = cli(capsys, "--cache-dir", home, "cache", "list")
    assert code == 0
    assert "interrupted" not in out and "clear" not in out.replace("nbkit removes nothing", "")
    assert "is not an nbkit cache" in out
    assert tree(home) == before


def test_building_into_a_users_folder_is_refused(tmp_path: Path) -> None:
    home = user_files(tmp_path / "home")
    before = tree(home)
    with pytest.raises(CacheError, match="not nbkit's") as caught:
        build(Cache(home), "model")
    one_sentence(str(caught.value))
    assert "NBKIT_CACHE_DIR" in str(caught.value)
    assert tree(home) == before


def test_an_empty_folder_becomes_a_marked_cache(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    build(Cache(root), "model")
    assert json.loads((root / ROOT_MARKER).read_text())["created_by"] == "nbkit"


def test_a_cache_of_nbkit_0_1_0_without_marker_is_adopted(tmp_path: Path) -> None:
    old = Cache(tmp_path / "old")
    entry = build(old, "model")
    (old.root / ROOT_MARKER).unlink()  # as nbkit 0.1.0 left it
    (old.root / "ledger.jsonl").write_text("{}\n")
    assert build(Cache(old.root), "other").path.parent == entry.path.parent
    assert Cache(old.root).is_nbkit_cache
    assert len(Cache(old.root).clear()) == 2


def test_user_files_inside_a_real_cache_are_left_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cache = Cache(tmp_path / "cache")
    kept = build(cache, "model")
    # The user dropped their own things into the cache: at the root, in a kind folder, in .tmp.
    user_files(cache.root / "my-stuff")
    (cache.root / KIND / "my-model").mkdir()
    (cache.root / KIND / "my-model" / "weights.bin").write_bytes(b"mine")
    (cache.root / ".tmp" / "scratch").mkdir(parents=True)
    (cache.root / ".tmp" / "scratch" / "data.csv").write_text("a,b\n")
    (cache.root / "readme.txt").write_text("mine")
    before = {k: v for k, v in tree(cache.root).items() if not k.startswith((".locks", KIND + "/model-"))}

    code, out, _ = cli(capsys, "--cache-dir", cache.root, "cache", "clear", "--yes")
    assert code == 0
    assert "Removed 1 folder(s)" in out and str(kept.path) in out
    for mine in ("my-stuff", "my-model", "scratch"):
        assert f"leave:  {cache.root}" in out and mine in out
    after = {k: v for k, v in tree(cache.root).items() if not k.startswith(".locks")}
    assert after == before
    assert not kept.path.exists()


# -- --kind ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["../outside", "{outside}", "bogus", ".tmp", ""])
def test_kind_accepts_only_nbkits_kinds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    cache = Cache(tmp_path / "cache")
    build(cache, "model")
    outside = user_files(tmp_path / "outside")
    before_outside, before_cache = tree(outside), tree(cache.root)
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "--cache-dir",
                str(cache.root),
                "cache",
                "clear",
                "--yes",
                "--kind",
                kind.format(outside=outside),
            ]
        )
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and all(name in err for name in CACHE_KINDS)
    assert tree(outside) == before_outside and tree(cache.root) == before_cache


@pytest.mark.parametrize("kind", ["../outside", "/etc", "bogus", ".tmp"])
def test_the_api_refuses_unknown_kinds_too(tmp_path: Path, kind: str) -> None:
    cache = Cache(tmp_path / "cache")
    build(cache, "model")
    before = tree(cache.root)
    with pytest.raises(ConfigError, match="is not a kind of cache entry; use one of:") as caught:
        cache.clear(kind)
    one_sentence(str(caught.value))
    assert tree(cache.root) == before


# -- symbolic links ----------------------------------------------------------------------------


def test_a_linked_kind_folder_is_never_followed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    build(cache, "model", kind="openvino-compressed")
    elsewhere = user_files(tmp_path / "elsewhere")
    (elsewhere / "looks-like-an-entry").mkdir()
    (elsewhere / "looks-like-an-entry" / MANIFEST_NAME).write_text(
        json.dumps({"kind": KIND, "key": "0" * 64})
    )
    (cache.root / KIND).symlink_to(elsewhere, target_is_directory=True)
    before = tree(elsewhere)

    assert [e.kind for e in cache.entries()] == ["openvino-compressed"]
    code, out, _ = cli(capsys, "--cache-dir", cache.root, "cache", "clear", "--yes")
    assert code == 0 and "Removed 1 folder(s)" in out
    assert f"leave:  {cache.root / KIND}" in out
    assert tree(elsewhere) == before
    assert (cache.root / KIND).is_symlink()


def test_a_linked_entry_is_never_followed_nor_counted(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    real = build(cache, "model")
    outside = tmp_path / "outside-entry"
    outside.mkdir()
    (outside / MANIFEST_NAME).write_text(real.path.joinpath(MANIFEST_NAME).read_text())
    (outside / "model.bin").write_bytes(b"mine")
    link = real.path.parent / "linked-entry"
    link.symlink_to(outside, target_is_directory=True)
    before = tree(outside)

    report = cache.clear()
    assert [item.path for item in report.removed] == [real.path]
    assert link in [item.path for item in report.foreign]
    assert link.is_symlink() and tree(outside) == before


def test_a_linked_tmp_folder_is_never_used(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    entry = build(cache, "model")
    elsewhere = user_files(tmp_path / "elsewhere")
    (cache.root / ".tmp").rmdir()
    (cache.root / ".tmp").symlink_to(elsewhere, target_is_directory=True)
    before = tree(elsewhere)

    code, _, err = cli(capsys, "--cache-dir", cache.root, "cache", "clear", "--yes")
    assert code == 1
    one_sentence(err)
    assert "symbolic link" in err
    assert tree(elsewhere) == before and entry.path.is_dir()
    with pytest.raises(CacheError, match="symbolic link"):
        build(cache, "another")
    assert tree(elsewhere) == before


# -- entries in use and builds in progress ----------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from nbkit.infra.cache import Cache
    cache = Cache(sys.argv[1])
    with cache.holding([Path(sys.argv[2])]):
        print("holding", flush=True)
        time.sleep(60)
    """
)

BUILDER = textwrap.dedent(
    """
    import sys, time
    from nbkit.infra.cache import Cache, cache_key
    def slow(folder):
        (folder / "part.bin").write_bytes(b"x" * 4096)
        print("building", flush=True)
        time.sleep(60)
    Cache(sys.argv[1]).get_or_build("openvino-compressed", cache_key({"name": "slow"}), "slow", slow)
    """
)


def start(script: str, *args: object) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.readline()  # "holding" / "building": the state under test is in place
    return process


def test_an_entry_in_use_by_another_process_is_skipped_and_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cache = Cache(tmp_path / "cache")
    used, free = build(cache, "used"), build(cache, "free")
    holder = start(HOLDER, cache.root, used.path)
    try:
        code, out, _ = cli(capsys, "--cache-dir", cache.root, "cache", "clear", "--yes")
    finally:
        holder.kill()
        holder.wait()
    assert code == 0
    assert f"skip:   {used.path}" in out and "in use" in out
    assert "Removed 1 folder(s)" in out
    assert used.path.is_dir() and not free.path.exists()
    assert cache.entries() == [used]
    # The holder is gone (its lock went with it): now the entry can go.
    assert [item.path for item in cache.clear().removed] == [used.path]


def test_a_build_reads_its_inputs_safely_while_clear_runs(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    float_model = build(cache, "float")
    seen: list[Any] = []

    def compress(folder: Path) -> None:
        seen.append(cache.clear())  # a user runs `nbkit cache clear` while this build reads its input
        (folder / "int4.bin").write_bytes((float_model.path / "model.bin").read_bytes()[:10])

    made = cache.get_or_build(
        "openvino-compressed", cache_key({"c": 1}), "int4", compress, inputs=[float_model.path]
    )
    skipped = {item.path: item.reason for item in seen[0].skipped}
    assert skipped[float_model.path] == "in use" and seen[0].removed == []
    assert len(skipped) == 2  # and the build folder of this very build, whose process runs
    assert (made.path / "int4.bin").read_bytes() == PAYLOAD[:10]
    assert float_model.path.is_dir()


def test_a_build_in_progress_is_skipped_and_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    build(cache, "done")
    builder = start(BUILDER, cache.root)
    try:
        code, out, _ = cli(capsys, "--cache-dir", cache.root, "cache", "clear", "--yes")
        listing = cli(capsys, "--cache-dir", cache.root, "cache", "list")[1]
    finally:
        builder.kill()
        builder.wait()
    assert code == 0 and "Removed 1 folder(s)" in out
    assert f"being built by process {builder.pid}" in out
    assert f"in progress: {cache.root / '.tmp'}" in listing


def test_the_leftover_of_a_killed_build_is_reclaimed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cache = Cache(tmp_path / "cache")
    kept = build(cache, "kept")
    builder = start(BUILDER, cache.root)
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    [leftover] = [p for p in (cache.root / ".tmp").iterdir()]
    assert json.loads((leftover / BUILD_MARKER).read_text())["pid"] == builder.pid

    listing = cli(capsys, "--cache-dir", cache.root, "cache", "list")[1]
    assert f"leftover: {leftover}" in listing and "clear --incomplete" in listing
    code, out, _ = cli(capsys, "--cache-dir", cache.root, "cache", "clear", "--incomplete", "--yes")
    assert code == 0 and "Removed 1 folder(s)" in out
    assert not leftover.exists() and kept.path.is_dir()  # --incomplete keeps the entries


def test_the_next_build_reclaims_leftovers(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    builder = start(BUILDER, cache.root)
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    assert len(list((cache.root / ".tmp").iterdir())) == 1
    build(cache, "next")
    assert list((cache.root / ".tmp").iterdir()) == []


def test_a_held_lock_names_its_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    cache = Cache(tmp_path / "cache")
    monkeypatch.setattr(cache_module, "LOCK_NOTICE_S", 0.2)
    monkeypatch.setattr(cache_module, "LOCK_TIMEOUT_S", 1.0)
    builder = start(BUILDER, cache.root)
    try:
        with pytest.raises(CacheError) as caught:
            cache.get_or_build("openvino-compressed", cache_key({"name": "slow"}), "slow", lambda f: None)
    finally:
        builder.kill()
        builder.wait()
    message = str(caught.value)
    one_sentence(message)
    assert f"process {builder.pid}" in message and "-c" in message and "wait for it or stop it" in message
    assert any(f"Waiting for process {builder.pid}" in r.getMessage() for r in caplog.records)


# -- asking before removing ---------------------------------------------------------------------


def test_clear_asks_on_a_terminal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path / "cache")
    entry = build(cache, "model")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    code, out, _ = cli(capsys, "--cache-dir", cache.root, "cache", "clear")
    assert code == 0 and "Nothing removed." in out and entry.path.is_dir()
    assert f"remove: {entry.path}" in out and "MiB" in out
    code, out, _ = cli(capsys, "--cache-dir", cache.root, "cache", "clear")
    assert code == 0 and "Removed 1 folder(s)" in out and not entry.path.exists()


# -- a full disk that the library does not name ------------------------------------------------


def test_a_failed_write_on_a_full_disk_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path / "cache")
    kept = build(cache, "kept")
    monkeypatch.setattr(cache_module, "free_bytes", lambda path: 1024)

    def fails(folder: Path) -> None:
        (folder / "partial.bin").write_bytes(b"x")
        raise RuntimeError("basic_ios::clear: iostream error")  # what OpenVINO says

    with pytest.raises(DiskSpaceError, match="ran out of space while building broken") as caught:
        cache.get_or_build(KIND, cache_key({"n": "broken"}), "broken", fails)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert cache.entries() == [kept] and list((cache.root / ".tmp").iterdir()) == []


def test_a_failed_write_with_room_left_stays_what_it_was(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")

    def fails(folder: Path) -> None:
        raise RuntimeError("basic_ios::clear: iostream error")

    with pytest.raises(RuntimeError, match="iostream"):
        cache.get_or_build(KIND, cache_key({"n": "broken"}), "broken", fails)


def test_no_process_of_the_sandbox_outlives_it() -> None:
    # Guard for the tests above: every helper process they started has been ended.
    me = psutil.Process()
    time.sleep(0.1)
    ours = [
        c
        for c in me.children()
        if c.status() != psutil.STATUS_ZOMBIE and "nbkit.infra.cache" in " ".join(c.cmdline())
    ]
    assert ours == []
