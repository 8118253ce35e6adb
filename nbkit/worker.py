"""Run a heavy step (GGUF conversion, export, compression) in a child process.

Why a process and not a thread: the libraries doing the work (optimum-intel, NNCF) offer no
cancel hook, so the only prompt and safe cancel is to end the process; and torch/NNCF
allocations made during export are returned to the system when the child exits instead of
staying in the notebook kernel for the rest of the session. The parent relays the child's
progress reports and log records, and raises the child's error as the same nbkit error.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from nbkit.errors import Cancelled, NbkitError
from nbkit.progress import Progress, ProgressReporter

log = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_S = 0.1
_TERMINATE_GRACE_S = 5.0


class WorkerError(NbkitError):
    """The child process failed with an unexpected error (a bug, or it was killed)."""


class _QueueLogHandler(logging.Handler):
    def __init__(self, channel: Any) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # the parent is gone: nobody to tell
            self.channel.put(("log", (record.name, record.levelno, record.getMessage())))


def _child_main(tasks: Any, channel: Any) -> None:
    # Libraries print tables and rich progress bars, some straight to the inherited file
    # descriptors: silence fds 1 and 2. The parent shows nbkit's own progress; log records and
    # errors (with their tracebacks) travel through the channel.
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [_QueueLogHandler(channel)]
    root.setLevel(logging.INFO)
    reporter = ProgressReporter(lambda p: channel.put(("progress", (p.fraction, p.message))))
    while True:
        task = tasks.get()
        if task is None:
            return
        target, args, kwargs = task
        try:
            result = target(*args, reporter=reporter, **kwargs)
        except NbkitError as exc:
            channel.put(("error", (type(exc), str(exc), traceback.format_exc())))
        except BaseException as exc:
            channel.put(("error", (None, f"{type(exc).__name__}: {exc}", traceback.format_exc())))
        else:
            channel.put(("result", result))


class Worker:
    """A child process that runs tasks one after another (see :func:`run_isolated`).

    Reusing one worker for a series of tasks (a sweep's compressions) saves the process
    start and the imports of OpenVINO/NNCF/torch for every task after the first, and lets a
    task keep state between calls (e.g. the float model it read). A cancel ends the process;
    the next task starts a fresh one. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._process: Any = None
        self._tasks: Any = None
        self._channel: Any = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # fork is unsafe with OpenVINO/torch threads
        self._tasks = context.Queue()
        self._channel = context.Queue()
        self._process = context.Process(target=_child_main, args=(self._tasks, self._channel), daemon=True)
        self._process.start()

    def close(self) -> None:
        """Let the child finish and exit (or end it if it does not within a few seconds)."""
        if self._process is None:
            return
        if self._process.is_alive():
            self._tasks.put(None)
            self._process.join(_TERMINATE_GRACE_S)
        self._discard()

    def _discard(self) -> None:
        if self._process is not None:
            _stop(self._process)
        for channel in (self._tasks, self._channel):
            if channel is not None:
                channel.close()
        self._process = self._tasks = self._channel = None

    def run(self, target: Callable[..., T], *args: Any, reporter: ProgressReporter, **kwargs: Any) -> T:
        """Call ``target(*args, reporter=<child reporter>, **kwargs)`` in the child process.

        ``target`` must be a module-level function and its arguments and result picklable.
        Cancelling ``reporter``'s token ends the child and raises :class:`~nbkit.errors.Cancelled`.
        """
        reporter.check()
        if not self.alive:
            self._discard()
            self._start()
        self._tasks.put((target, args, kwargs))
        try:
            outcome, payload = self._relay(reporter)
        except BaseException:
            self._discard()  # a cancelled or dead child is not reused
            raise
        if outcome == "error":
            raise payload  # the task failed; the child is healthy and stays up
        return payload  # type: ignore[no-any-return]

    def _relay(self, reporter: ProgressReporter) -> tuple[str, Any]:
        while True:
            try:
                kind, payload = self._channel.get(timeout=_POLL_S)
            except queue.Empty:
                reporter.check()
                if not self._process.is_alive():
                    try:  # the final message may have landed just as the process exited
                        kind, payload = self._channel.get(timeout=1.0)
                    except queue.Empty:
                        raise WorkerError(_death_message(self._process.exitcode)) from None
                else:
                    continue
            if kind == "progress":
                fraction, message = payload
                reporter.report(fraction, message)
            elif kind == "log":
                name, level, message = payload
                # Library warnings (tracer notes, deprecations) are noise for a user: debug only.
                level = logging.DEBUG if name == "py.warnings" else level
                logging.getLogger(name).log(level, "%s", message)
            elif kind == "result":
                return "result", payload
            elif kind == "error":
                error_type, message, child_traceback = payload
                log.debug("Child process traceback:\n%s", child_traceback)
                if error_type is not None:
                    return "error", error_type(message)
                return "error", WorkerError(
                    f"{message} (an unexpected error in nbkit's worker; details in the debug log)"
                )


def run_isolated(
    target: Callable[..., T],
    *args: Any,
    reporter: ProgressReporter,
    worker: Worker | None = None,
    **kwargs: Any,
) -> T:
    """Call ``target(*args, reporter=<child reporter>, **kwargs)`` in a child process.

    In a fresh process that exits afterwards, or in ``worker`` when one is given (it stays up
    for the next task). Cancelling ``reporter``'s token ends the child and raises
    :class:`~nbkit.errors.Cancelled`.
    """
    if worker is not None:
        return worker.run(target, *args, reporter=reporter, **kwargs)
    with Worker() as fresh:
        return fresh.run(target, *args, reporter=reporter, **kwargs)


def _stop(process: Any) -> None:
    if process.is_alive():
        process.terminate()
        process.join(_TERMINATE_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()


def _death_message(exit_code: int | None) -> str:
    if exit_code == -9:
        return "The worker process was killed (exit signal 9), most likely because the machine ran out of memory."
    return f"The worker process exited unexpectedly with code {exit_code}."


__all__ = ["Cancelled", "Progress", "Worker", "WorkerError", "run_isolated"]
