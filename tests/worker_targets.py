"""Module-level targets for :func:`nbkit.infra.worker.run_isolated` tests.

A worker is a fresh interpreter (``python -m nbkit.infra._worker_child``), so a target is pickled
by reference and must be importable in the child: this module lives in ``tests/``, which
pytest puts on ``sys.path`` (rootdir conftest, no ``__init__.py``), and the worker passes the
parent's ``sys.path`` on to the child. Every target takes the child's ``reporter`` keyword, as ``run_isolated``
requires.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from nbkit.errors import ConfigError
from nbkit.infra.progress import ProgressReporter

CHILD_LOGGER = "tests.worker_targets"


def add(a: int, b: int, *, reporter: ProgressReporter) -> dict[str, object]:
    """Return the sum and where the child ran (to prove it was another process)."""
    return {"sum": a + b, "pid": os.getpid(), "module_file": __file__}


def report_steps(count: int, *, reporter: ProgressReporter) -> str:
    for index in range(1, count + 1):
        reporter.report(index / count, f"step {index} of {count}")
    return "done"


def raise_config_error(message: str, *, reporter: ProgressReporter) -> None:
    raise ConfigError(message)


def divide_by_zero(*, reporter: ProgressReporter) -> float:
    return 1 / 0


def exit_with(code: int, *, reporter: ProgressReporter) -> None:
    os._exit(code)


def kill_self(*, reporter: ProgressReporter) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)  # never reached: SIGKILL cannot be handled


def sleep_long(seconds: float, *, reporter: ProgressReporter) -> str:
    reporter.report(0.0, f"sleeping pid={os.getpid()}")
    time.sleep(seconds)
    return "woke up"


def log_and_print(*, reporter: ProgressReporter) -> str:
    logging.getLogger(CHILD_LOGGER).warning("warning from the child %d", 42)
    logging.getLogger(CHILD_LOGGER).info("info from the child")
    print("PRINTED-BY-CHILD")
    print("STDERR-BY-CHILD", file=sys.stderr)
    sys.stdout.flush()
    os.write(1, b"RAW-FD1-BY-CHILD\n")
    os.write(2, b"RAW-FD2-BY-CHILD\n")
    return "logged"


def write_to_full_disk(folder: str, *, reporter: ProgressReporter) -> None:
    """Write a file into ``folder``, then to ``/dev/full``: a real ENOSPC from the kernel."""
    with open(os.path.join(folder, "partial.bin"), "wb") as handle:
        handle.write(b"\0" * 4096)
    with open("/dev/full", "wb") as handle:
        handle.write(b"\0" * 4096)
        handle.flush()


def fork_and_sleep(seconds: float, *, reporter: ProgressReporter) -> str:
    """Fork a helper that sleeps holding every inherited pipe, as libraries' forked helpers do."""
    pid = os.fork()
    if pid == 0:  # the forked helper: one thread, the worker's pipes, never returns
        time.sleep(seconds)
        os._exit(0)
    reporter.report(0.0, f"forked pid={pid}")
    time.sleep(seconds)
    return "woke up"
