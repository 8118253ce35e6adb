"""The worker process's entry point: ``python -m nbkit.infra._worker_child`` (see :mod:`nbkit.infra.worker`).

It is a fresh interpreter that imports only nbkit and the task's own module, never the
parent's ``__main__``: a plain script that calls ``nbkit.compress()`` at top level (no
``if __name__ == "__main__"`` guard), ``python -c`` and a script read from standard input
all start workers the same way a notebook does.

Protocol (both ways: an 8-byte length, then a pickle, see :mod:`nbkit.infra.worker`):

- standard input carries the setup (the parent's ``sys.path``), then tasks
  ``(target, args, kwargs)`` and finally ``None``;
- the file descriptor that was standard output carries ``(kind, payload)`` messages back:
  progress, log records, the result or the error.

The parent's death closes standard input. A thread reads it all the time, so the child
notices at once, even in the middle of a task, and exits: an orphaned worker never keeps
running (or holding memory) after the parent was killed, on Linux and macOS alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import struct
import sys
import threading
import traceback
from typing import Any, BinaryIO

_HEADER = struct.Struct("<Q")
# Exit code when the parent vanished: the parent is gone, so nobody reads it; it shows in ps.
PARENT_GONE_EXIT = 75  # EX_TEMPFAIL


def read_frame(stream: BinaryIO) -> Any:
    """The next object on ``stream``; raises ``EOFError`` when the other end closed it."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (length,) = _HEADER.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError
    return pickle.loads(data)


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class _Channel:
    """Messages to the parent, from any thread of the child, one whole frame at a time."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def put(self, message: Any) -> None:
        data = frame(message)
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]


class _ChannelLogHandler(logging.Handler):
    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # the parent is gone: nobody to tell
            self.channel.put(("log", (record.name, record.levelno, record.getMessage())))


def _watch_parent(stdin: BinaryIO, tasks: queue.Queue[Any]) -> None:
    """Move tasks from standard input to ``tasks``; exit the process when the parent is gone."""
    while True:
        try:
            task = read_frame(stdin)
        except (EOFError, OSError):
            # The parent died or closed our input without saying goodbye: stop now, whatever
            # runs, and take along what the libraries forked (this process leads its group).
            _exit_with_group(PARENT_GONE_EXIT)
        except Exception as exc:  # a task that cannot be unpickled here (its module is missing)
            tasks.put(exc)
            continue
        tasks.put(task)
        if task is None:
            return


def main() -> None:
    from nbkit.infra.progress import ProgressReporter

    # Ctrl-C in a terminal reaches the whole process group: the parent decides what an
    # interrupt means (it cancels, then ends this process), so the child ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    # Keep the real standard output for messages; libraries print tables and progress bars,
    # some straight to file descriptors 1 and 2, so both now point to /dev/null.
    channel = _Channel(os.dup(1))
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process

    setup = read_frame(stdin)
    for entry in reversed(setup["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)

    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [_ChannelLogHandler(channel)]
    root.setLevel(logging.INFO)
    reporter = ProgressReporter(lambda p: channel.put(("progress", (p.fraction, p.message))))

    tasks: queue.Queue[Any] = queue.Queue()
    threading.Thread(
        target=_watch_parent, args=(stdin, tasks), name="nbkit-parent-watch", daemon=True
    ).start()
    channel.put(("ready", os.getpid()))
    while True:
        task = tasks.get()
        if task is None:
            # Exit now: interpreter shutdown would wait for whatever a library forked (a
            # multiprocessing child stuck on a lock copied mid-use by fork waits for ever).
            _exit_with_group(0)
        if isinstance(task, Exception):
            channel.put(("error", (None, f"{type(task).__name__}: {task}", "")))
            continue
        target, args, kwargs = task
        try:
            result = target(*args, reporter=reporter, **kwargs)
        except BaseException as exc:
            error_type = type(exc) if _is_nbkit_error(exc) else None
            message = str(exc) if error_type else f"{type(exc).__name__}: {exc}"
            channel.put(("error", (error_type, message, traceback.format_exc())))
        else:
            channel.put(("result", result))


def _exit_with_group(code: int) -> None:
    """Exit at once, ending first the processes the libraries forked inside this worker."""
    with contextlib.suppress(Exception):  # nothing may keep this process from exiting
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    os._exit(code)


def _is_nbkit_error(exc: BaseException) -> bool:
    from nbkit.errors import NbkitError

    return isinstance(exc, NbkitError)


if __name__ == "__main__":
    main()
