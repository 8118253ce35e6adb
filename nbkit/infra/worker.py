"""Run a heavy step (GGUF conversion, export, compression) in a child process.

Why a process and not a thread: the libraries doing the work (optimum-intel, NNCF) offer no
cancel hook, so the only prompt and safe cancel is to end the process; and torch/NNCF
allocations made during export are returned to the system when the child exits instead of
staying in the notebook kernel for the rest of the session. The parent relays the child's
progress reports and log records, and raises the child's error as the same nbkit error.

Why not ``multiprocessing``: its ``spawn`` start method re-imports the parent's ``__main__``
in the child, so a plain script calling ``nbkit.compress()`` without an
``if __name__ == "__main__"`` guard ran itself again in the child and waited forever for the
cache lock its own parent held; and its queues keep both pipe ends in the child, which then
never notices that the parent died. A worker here is a fresh interpreter on a module entry
point (:mod:`nbkit.infra._worker_child`) that talks to the parent over its standard input and
output: it never imports the user's script, and it exits as soon as the parent is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from nbkit.errors import WorkerError
from nbkit.infra._worker_child import PARENT_GONE_EXIT, frame, read_frame
from nbkit.infra.progress import ProgressReporter

log = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_S = 0.1
_POSIX = os.name == "posix"
_TERMINATE_GRACE_S = 5.0
_EOF = ("eof", None)


class Worker:
    """A child process that runs tasks one after another (see :func:`run_isolated`).

    Reusing one worker for a series of tasks (a sweep's compressions) saves the process
    start and the imports of OpenVINO/NNCF/torch for every task after the first, and lets a
    task keep state between calls (e.g. the float model it read). A cancel ends the process;
    the next task starts a fresh one. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._messages: queue.Queue[tuple[str, Any]] = queue.Queue()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        # close_fds (the default) keeps this pipe's write end out of every other child, so
        # the child's standard input closes exactly when this process dies. Its own process
        # group lets a stop end whatever the libraries forked inside it too (a forked helper
        # holds the message pipe open and would keep the reader waiting for ever).
        process = subprocess.Popen(
            [sys.executable, "-m", "nbkit.infra._worker_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=_POSIX,
        )
        messages: queue.Queue[tuple[str, Any]] = queue.Queue()
        threading.Thread(
            target=_read_messages, args=(process.stdout, messages), name="nbkit-worker-reader", daemon=True
        ).start()
        self._process, self._messages = process, messages
        self._send({"sys_path": [p for p in sys.path if p]})

    def _send(self, message: Any) -> None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(frame(message))
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone; the relay reports how it ended

    def close(self) -> None:
        """Let the child finish and exit (or end it if it does not within a few seconds)."""
        if self._process is None:
            return
        if self.alive:
            self._send(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(_TERMINATE_GRACE_S)
        self._discard()

    def _discard(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        _stop(process)
        if process.stdin is not None:  # its output is closed by the reader thread at EOF
            with contextlib.suppress(OSError):
                process.stdin.close()

    def run(self, target: Callable[..., T], *args: Any, reporter: ProgressReporter, **kwargs: Any) -> T:
        """Call ``target(*args, reporter=<child reporter>, **kwargs)`` in the child process.

        ``target`` must be a module-level function of an importable module (not the
        script's ``__main__``) and its arguments and result picklable. Cancelling
        ``reporter``'s token ends the child and raises :class:`~nbkit.errors.Cancelled`.
        """
        reporter.check()
        if getattr(target, "__module__", None) == "__main__":
            raise WorkerError(
                f"{target.__name__} is defined in the script being run; a worker can only run "
                "functions of an importable module."
            )
        if not self.alive:
            self._discard()
            self._start()
        self._send((target, args, kwargs))
        try:
            outcome, payload = self._relay(reporter)
        except BaseException:
            self._discard()  # a cancelled or dead child is not reused
            raise
        if outcome == "error":
            raise payload  # the task failed; the child is healthy and stays up
        return payload  # type: ignore[no-any-return]

    def _relay(self, reporter: ProgressReporter) -> tuple[str, Any]:
        assert self._process is not None
        while True:
            try:
                kind, payload = self._messages.get(timeout=_POLL_S)
            except queue.Empty:
                reporter.check()
                continue
            if kind == "eof":
                try:
                    code = self._process.wait(_TERMINATE_GRACE_S)
                except subprocess.TimeoutExpired:
                    code = None
                raise WorkerError(_death_message(code))
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


def _read_messages(stream: Any, messages: queue.Queue[tuple[str, Any]]) -> None:
    """Move the child's messages into ``messages``; ``("eof", None)`` when its output closes."""
    while True:
        try:
            message = read_frame(stream)
        except (EOFError, OSError, ValueError):  # the child exited, or this end was closed
            with contextlib.suppress(OSError):
                stream.close()
            messages.put(_EOF)
            return
        except Exception as exc:  # a whole frame whose object does not unpickle here
            message = ("error", (None, f"{type(exc).__name__}: {exc}", ""))
        messages.put(message)


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


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the worker and every process in its group (what libraries forked inside it)."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(_TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    _signal_group(process, signal.SIGKILL)  # stragglers of a worker that exited by itself


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    if not _POSIX:  # pragma: no cover - Windows: no process groups, the worker alone
        if signum == signal.SIGTERM:
            process.terminate()
        elif process.poll() is None:
            process.kill()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)  # the worker leads its own group: its pgid is its pid


def _death_message(exit_code: int | None) -> str:
    if exit_code == PARENT_GONE_EXIT:
        return "The worker process stopped because it lost its connection to nbkit."
    if exit_code == -9:
        return "The worker process was killed (exit signal 9), most likely because the machine ran out of memory."
    return f"The worker process exited unexpectedly with code {exit_code}."


__all__ = ["Worker", "run_isolated"]
