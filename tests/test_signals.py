"""Workers die with their parent, whatever ends it.

Each test starts a real export of the tiny model (the CLI, or the Python API from a plain
script), waits until its worker process runs, then ends the parent: SIGTERM, SIGHUP,
SIGINT or SIGKILL. Within 10 s no process of that tree may remain (checked with psutil), and
the cache holds no partial entry: nothing at all after a handled signal, and after SIGKILL
only a build leftover that the next build or ``nbkit cache clear --incomplete`` reclaims.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from nbkit.infra.cache import Cache

WORKER_MODULE = "nbkit.infra._worker_child"
GONE_WITHIN_S = 10.0


def _env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "NBKIT_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C
    # handler: give the parent the terminal's default, whatever started this pytest run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_worker(parent: subprocess.Popen[str], timeout: float = 120.0) -> list[psutil.Process]:
    """The parent's process tree once its worker runs (the worker included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert parent.poll() is None, (
            f"the parent ended early with {parent.returncode}: {parent.communicate()}"
        )
        try:
            tree = psutil.Process(parent.pid).children(recursive=True)
            if any(WORKER_MODULE in " ".join(child.cmdline()) for child in tree):
                time.sleep(1.0)  # let it start writing into its build folder
                return psutil.Process(parent.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.1)
    raise AssertionError("the worker process never started")


def _assert_all_gone(processes: list[psutil.Process]) -> None:
    deadline = time.monotonic() + GONE_WITHIN_S
    alive = processes
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.1)
    for process in alive:  # do not leave them behind for the rest of the suite
        process.kill()
    raise AssertionError(
        f"still running {GONE_WITHIN_S} s after the parent ended: {[p.cmdline() for p in alive]}"
    )


def _start_cli_export(model: Path, cache_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nbkit", "export", str(model)],
        env=_env(cache_dir),
        preexec_fn=_default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


SCRIPT = textwrap.dedent(
    """
    import sys
    import nbkit

    nbkit.export_openvino(sys.argv[1])
    """
)


def _start_script_export(model: Path, cache_dir: Path, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "export_script.py"  # a plain script: no `if __name__ == "__main__"` guard
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), str(model)],
        env=_env(cache_dir),
        preexec_fn=_default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _nothing_partial(cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    assert [e.kind for e in cache.entries()] == []
    assert [f.path for f in cache.incomplete()] == []


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
    ids=["TERM", "HUP", "INT"],
)
def test_a_handled_signal_ends_the_cli_cleanly(
    tiny_hf_model: Path, tmp_path: Path, signum: int, code: int
) -> None:
    cache_dir = tmp_path / "cache"
    parent = _start_cli_export(tiny_hf_model, cache_dir)
    tree = _wait_for_worker(parent)
    parent.send_signal(signum)
    _, err = parent.communicate(timeout=30)
    assert parent.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nbkit: "), err
    if signum != signal.SIGINT:
        assert signal.Signals(signum).name in lines[0] and "nothing partial" in lines[0]
    _assert_all_gone(tree)
    _nothing_partial(cache_dir)


def test_sigkill_of_the_cli_leaves_no_process_and_a_reclaimable_leftover(
    tiny_hf_model: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    parent = _start_cli_export(tiny_hf_model, cache_dir)
    tree = _wait_for_worker(parent)
    parent.kill()
    parent.communicate(timeout=30)
    _assert_all_gone(tree)
    cache = Cache(cache_dir)
    assert cache.entries() == []
    leftovers = [f for f in cache.incomplete() if f.path.parent.name == ".tmp"]
    assert leftovers and all(f.removable for f in leftovers), leftovers
    assert {f.path for f in cache.clear(incomplete_only=True).removed} == {f.path for f in leftovers}
    _nothing_partial(cache_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_a_plain_script_using_the_api_takes_its_worker_with_it(
    tiny_hf_model: Path, tmp_path: Path, signum: int
) -> None:
    cache_dir = tmp_path / "cache"
    parent = _start_script_export(tiny_hf_model, cache_dir, tmp_path)
    tree = _wait_for_worker(parent)
    parent.send_signal(signum)
    parent.communicate(timeout=30)
    assert parent.returncode == -signum  # Python's default: the script dies at once
    _assert_all_gone(tree)
    cache = Cache(cache_dir)
    assert cache.entries() == []
    assert all(f.removable for f in cache.incomplete()), cache.incomplete()


def test_a_plain_script_without_a_guard_completes(tiny_hf_model: Path, tmp_path: Path) -> None:
    parent = _start_script_export(tiny_hf_model, tmp_path / "cache", tmp_path)
    _, err = parent.communicate(timeout=300)
    assert parent.returncode == 0, err
    assert [e.kind for e in Cache(tmp_path / "cache").entries()] == ["openvino-float"]


PICK_SCRIPT = textwrap.dedent(
    """
    import sys
    import nbkit
    from nbkit.measure.sweep import MeasureSettings

    settings = MeasureSettings(quality_tokens=64, speed_new_tokens=4, speed_repeats=1, answers=False)
    result = nbkit.pick(sys.argv[1], "kl<=1000", group_sizes=[16], ratios=[1.0, 0.8], settings=settings)
    print(result.conclusion())
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_signal_during_a_pick_ends_it_cleanly_and_keeps_the_ledger(
    tiny_hf_model: Path, tmp_path: Path, signum: int
) -> None:
    """``nbkit sweep --target`` stopped while its search compresses: no process, no half-built model,
    and every ledger line written before it still reads."""
    from nbkit import export_openvino
    from nbkit.infra.ledger import Ledger

    cache_dir = tmp_path / "cache"
    export_openvino(str(tiny_hf_model), cache=Cache(cache_dir))  # so the first worker is the search's
    ledger = Ledger(cache=Cache(cache_dir))
    ledger.append({"kind": "note", "written": "before the search"})
    parent = subprocess.Popen(
        [
            sys.executable, "-m", "nbkit", "-q", "sweep", str(tiny_hf_model), "--target", "kl<=1000",
            "--modes", "int4_sym,int4_asym", "--group-sizes", "16", "--ratios", "1,0.8",
            "--quality-tokens", "64", "--speed-tokens", "4", "--repeats", "1", "--no-answers",
            "--chart", str(tmp_path / "pick.html"),
        ],
        env=_env(cache_dir),
        preexec_fn=_default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    tree = _wait_for_worker(parent)
    parent.send_signal(signum)
    _, err = parent.communicate(timeout=30)
    assert parent.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nbkit: ") and signal.Signals(signum).name in lines[0], err
    _assert_all_gone(tree)
    cache = Cache(cache_dir)
    assert [f.path for f in cache.incomplete() if not f.removable] == []
    assert [e.kind for e in cache.entries()] == ["openvino-float"]  # the search built nothing whole
    assert [r["written"] for r in ledger.records("note")] == ["before the search"]
    assert not (tmp_path / "pick.html").exists()


def test_a_plain_script_can_pick(tiny_hf_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "pick_script.py"  # no `if __name__ == "__main__"` guard
    script.write_text(PICK_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_hf_model)],
        env=_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("The smallest configuration meeting kl<=1000 is openvino int4_sym-g16-r1")
