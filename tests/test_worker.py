"""nbkit.infra.worker.run_isolated: results, progress, errors, crashes, cancel, logs and silenced output.

The targets live in ``tests/worker_targets.py`` because the worker process imports them by name.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import worker_targets

from nbkit.errors import Cancelled, ConfigError, NbkitError, WorkerError
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter
from nbkit.infra.worker import run_isolated


def _live_children() -> dict[int, str]:
    """This process's children (pid -> command line), leaving out multiprocessing's resource tracker."""
    found: dict[int, str] = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found[child.pid] = "<zombie>"
                continue
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "resource_tracker" not in command:
            found[child.pid] = command
    return found


def test_targets_module_is_importable_by_spawned_children() -> None:
    tests_dir = str(Path(__file__).resolve().parent)
    assert tests_dir in [str(Path(p).resolve()) for p in sys.path if p]
    assert Path(worker_targets.__file__).resolve().parent == Path(tests_dir)


def test_result_is_returned_from_another_process() -> None:
    result = run_isolated(worker_targets.add, 2, b=40, reporter=ProgressReporter())
    assert result["sum"] == 42
    assert result["pid"] != os.getpid()
    assert Path(str(result["module_file"])).resolve() == Path(worker_targets.__file__).resolve()


def test_progress_is_relayed_in_order_through_the_parent_reporter() -> None:
    seen: list[Progress] = []
    reporter = ProgressReporter(seen.append).step(0.5, 1.0)  # the child's 0..1 lands on 50..100 %
    assert run_isolated(worker_targets.report_steps, 4, reporter=reporter) == "done"
    assert [p.message for p in seen] == [f"step {i} of 4" for i in range(1, 5)]
    assert [p.fraction for p in seen] == pytest.approx([0.625, 0.75, 0.875, 1.0])


def test_nbkit_error_in_child_is_reraised_as_the_same_type_and_message() -> None:
    message = "group_size 64 does not divide 96; valid group sizes for this model: 16, 32."
    with pytest.raises(ConfigError) as caught:
        run_isolated(worker_targets.raise_config_error, message, reporter=ProgressReporter())
    assert type(caught.value) is ConfigError
    assert str(caught.value) == message


def test_unexpected_exception_becomes_worker_error() -> None:
    with pytest.raises(WorkerError, match="ZeroDivisionError: division by zero") as caught:
        run_isolated(worker_targets.divide_by_zero, reporter=ProgressReporter())
    assert isinstance(caught.value, NbkitError)
    assert not isinstance(caught.value, ZeroDivisionError)


def test_child_exiting_without_a_result_is_a_worker_error_with_its_code() -> None:
    started = time.monotonic()
    with pytest.raises(WorkerError, match=r"\bcode 3\b"):
        run_isolated(worker_targets.exit_with, 3, reporter=ProgressReporter())
    assert time.monotonic() - started < 30


def test_child_killed_by_sigkill_mentions_memory() -> None:
    with pytest.raises(WorkerError, match="memory"):
        run_isolated(worker_targets.kill_self, reporter=ProgressReporter())


def test_cancel_from_another_thread_ends_the_sleeping_child_promptly() -> None:
    before = set(_live_children())
    child_pids: list[int] = []
    sleeping = threading.Event()

    def on_progress(progress: Progress) -> None:
        if progress.message.startswith("sleeping pid="):
            child_pids.append(int(progress.message.split("=", 1)[1]))
            sleeping.set()

    token = CancelToken()
    reporter = ProgressReporter(on_progress, token)
    cancelled_at: list[float] = []

    def cancel_once_sleeping() -> None:
        if sleeping.wait(60):
            time.sleep(0.2)  # let the child settle into time.sleep
            cancelled_at.append(time.monotonic())
            token.cancel()

    canceller = threading.Thread(target=cancel_once_sleeping, daemon=True)
    canceller.start()
    with pytest.raises(Cancelled):
        run_isolated(worker_targets.sleep_long, 30.0, reporter=reporter)
    raised_at = time.monotonic()
    canceller.join(5)

    assert cancelled_at, "the child never reported that it was sleeping"
    assert raised_at - cancelled_at[0] < 5.0
    assert len(child_pids) == 1 and child_pids[0] != os.getpid()
    assert not psutil.pid_exists(child_pids[0]), "the cancelled child process is still there"
    assert set(_live_children()) - before == set()


def test_already_cancelled_token_starts_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbkit.infra.worker

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("run_isolated started a process although the token was cancelled")

    monkeypatch.setattr(nbkit.infra.worker.subprocess, "Popen", no_process)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run_isolated(worker_targets.add, 1, 2, reporter=ProgressReporter(cancel=token))


def test_child_log_records_reach_the_parent_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert run_isolated(worker_targets.log_and_print, reporter=ProgressReporter()) == "logged"
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert (worker_targets.CHILD_LOGGER, logging.WARNING, "warning from the child 42") in records
    assert (worker_targets.CHILD_LOGGER, logging.INFO, "info from the child") in records


def test_child_output_does_not_reach_the_parent_streams(capfd: pytest.CaptureFixture[str]) -> None:
    assert run_isolated(worker_targets.log_and_print, reporter=ProgressReporter()) == "logged"
    out, err = capfd.readouterr()
    for marker in ("PRINTED-BY-CHILD", "RAW-FD1-BY-CHILD", "STDERR-BY-CHILD", "RAW-FD2-BY-CHILD"):
        assert marker not in out
        assert marker not in err


def test_a_target_defined_in_the_script_is_refused_with_a_sentence() -> None:
    def local(*, reporter: ProgressReporter) -> None:
        return None

    local.__module__ = "__main__"  # as a function defined in the script being run
    with pytest.raises(WorkerError, match="defined in the script being run") as caught:
        run_isolated(local, reporter=ProgressReporter())
    assert "\n" not in str(caught.value)


def test_the_child_never_imports_the_parents_main(tmp_path: Path) -> None:
    # A script without a main guard that starts a worker: with multiprocessing's spawn the
    # child re-ran the script (here: it would write a second line and start another worker).
    script = tmp_path / "unguarded.py"
    marker = tmp_path / "runs.txt"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(worker_targets.__file__).parent)!r})\n"
        "import worker_targets\n"
        "from nbkit.infra.progress import ProgressReporter\n"
        "from nbkit.infra.worker import run_isolated\n"
        f"open({str(marker)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "print(run_isolated(worker_targets.add, 1, 2, reporter=ProgressReporter())['sum'])\n"
    )
    import subprocess

    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "3"
    assert len(marker.read_text().splitlines()) == 1


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_cancel_ends_what_the_task_forked_and_returns_promptly() -> None:
    # A forked helper keeps the worker's message pipe open: unless it is ended too, the
    # reader never sees the end of the pipe and closing the worker hung for ever.
    token = CancelToken()
    forked: list[int] = []

    def watch(progress: Progress) -> None:
        if progress.message.startswith("forked pid="):
            forked.append(int(progress.message.split("=")[1]))
            token.cancel()

    started = time.monotonic()
    with pytest.raises(Cancelled):
        run_isolated(worker_targets.fork_and_sleep, 60.0, reporter=ProgressReporter(watch, token))
    assert time.monotonic() - started < 20
    assert forked and _wait_gone(forked[0]), "the forked helper outlived the cancelled worker"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_helper_dies_with_the_parent(tmp_path: Path) -> None:
    import subprocess

    script = tmp_path / "fork_then_die.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(worker_targets.__file__).parent)!r})\n"
        "import worker_targets\n"
        "from nbkit.infra.progress import ProgressReporter\n"
        "from nbkit.infra.worker import run_isolated\n"
        "report = lambda p: print(p.message, flush=True)\n"
        "run_isolated(worker_targets.fork_and_sleep, 60.0, reporter=ProgressReporter(report))\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line.startswith("forked pid="), line
    helper = int(line.split("=")[1])
    worker = [
        c.pid for c in psutil.Process(parent.pid).children() if "_worker_child" in " ".join(c.cmdline())
    ]
    parent.kill()
    parent.wait()
    assert worker and _wait_gone(worker[0]) and _wait_gone(helper)
