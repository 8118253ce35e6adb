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


def _child_main(
    channel: Any, target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
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
    try:
        result = target(*args, reporter=reporter, **kwargs)
    except NbkitError as exc:
        channel.put(("error", (type(exc), str(exc), traceback.format_exc())))
    except BaseException as exc:
        channel.put(("error", (None, f"{type(exc).__name__}: {exc}", traceback.format_exc())))
    else:
        channel.put(("result", result))


def run_isolated(target: Callable[..., T], *args: Any, reporter: ProgressReporter, **kwargs: Any) -> T:
    """Call ``target(*args, reporter=<child reporter>, **kwargs)`` in a fresh Python process.

    ``target`` must be a module-level function and its arguments and result picklable.
    Cancelling ``reporter``'s token terminates the child and raises
    :class:`~nbkit.errors.Cancelled`.
    """
    reporter.check()
    context = multiprocessing.get_context("spawn")  # fork is unsafe with OpenVINO/torch threads
    channel = context.Queue()
    process = context.Process(target=_child_main, args=(channel, target, args, kwargs), daemon=True)
    process.start()
    try:
        while True:
            try:
                kind, payload = channel.get(timeout=_POLL_S)
            except queue.Empty:
                reporter.check()
                if not process.is_alive():
                    try:  # the final message may have landed just as the process exited
                        kind, payload = channel.get(timeout=1.0)
                    except queue.Empty:
                        raise WorkerError(_death_message(process.exitcode)) from None
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
                process.join()
                return payload  # type: ignore[no-any-return]
            elif kind == "error":
                error_type, message, child_traceback = payload
                process.join()
                log.debug("Child process traceback:\n%s", child_traceback)
                if error_type is not None:
                    raise error_type(message)
                raise WorkerError(
                    f"{message} (an unexpected error in nbkit's worker; details in the debug log)"
                )
    except BaseException:
        _stop(process)
        raise
    finally:
        channel.close()


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


__all__ = ["Cancelled", "Progress", "WorkerError", "run_isolated"]
