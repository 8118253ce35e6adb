"""Work that shares one machine: speed is measured alone, everything else may run side by side.

A tokens/s figure taken while another process compresses a model on the same cores measures
the contention, not the model. Every nbkit process on a machine (the CLI, a notebook, each
Dask worker) therefore takes this machine-wide lock: builds and quality measurements hold it
shared, a speed measurement holds it exclusive, so at most one speed measurement runs per
machine and never next to other nbkit work.

The lock lives in a machine-local folder (``/tmp/nbkit-<user>/machine``), never in the cache:
a cache may sit on a filesystem several machines share, and machines on it must not wait
for each other. A turnstile file keeps a waiting speed measurement from being starved by a
stream of shared holders. On POSIX the locks are ``flock`` locks, which the kernel releases
when a process dies, so a killed worker never leaves the machine locked.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_POLL_S = 0.05
LOCK_DIR_VARIABLE = "NBKIT_MACHINE_LOCK_DIR"


def machine_lock_dir() -> Path:
    """Where the machine-wide lock files live (``$NBKIT_MACHINE_LOCK_DIR`` overrides it)."""
    configured = os.environ.get(LOCK_DIR_VARIABLE)
    if configured:
        return Path(configured)
    try:
        user = getpass.getuser()
    except Exception:  # no user name (a container without /etc/passwd entry): the uid will do
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"nbkit-{user}" / "machine"


class MachineWork:
    """The machine-wide reader/writer lock: ``with work.shared():`` / ``with work.exclusive():``.

    ``check`` is called while waiting (a cancel token's ``raise_if_cancelled``), so a cancelled
    sweep never hangs behind another process's speed measurement.
    """

    def __init__(self, folder: Path | None = None, *, check: Callable[[], None] | None = None) -> None:
        self.folder = folder or machine_lock_dir()
        self._check = check or (lambda: None)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """Held by builds and quality measurements: any number at once, never during a speed run."""
        return self._work(exclusive=False)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Held by a speed measurement: alone on the machine."""
        return self._work(exclusive=True)

    @contextlib.contextmanager
    def _work(self, *, exclusive: bool) -> Iterator[None]:
        # Everyone passes the turnstile; an exclusive holder keeps it until the work lock is its
        # own, so no new shared holder gets in while a speed measurement waits.
        turnstile = self._acquire("turnstile", exclusive=True)
        try:
            handle = self._acquire("work", exclusive=exclusive)
        finally:
            _release(turnstile)
        try:
            yield
        finally:
            _release(handle)

    def _acquire(self, name: str, *, exclusive: bool) -> Any:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.lock"
        if sys.platform == "win32":  # no flock: an exclusive FileLock for both kinds (correct, less parallel)
            from filelock import FileLock, Timeout

            lock = FileLock(str(path))
            while True:
                self._check()
                try:
                    lock.acquire(timeout=_POLL_S)
                    return lock
                except Timeout:
                    continue
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        try:
            while True:
                try:
                    fcntl.flock(fd, mode)
                    return fd
                except BlockingIOError:
                    self._check()
                    time.sleep(_POLL_S)
        except BaseException:
            os.close(fd)
            raise


def _release(handle: Any) -> None:
    if isinstance(handle, int):
        os.close(handle)  # closing the descriptor releases its flock
    else:
        handle.release()


def measured_on() -> dict[str, str]:
    """Where this process measures: the host, and the Dask worker when it runs inside one."""
    place = {"host": socket.gethostname()}
    # Only when distributed is already loaded (we run in a Dask task): infra never imports it.
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            worker = distributed.get_worker()
        except ValueError:  # not inside a worker
            pass
        else:
            place["worker"] = str(worker.name)
            place["worker_address"] = str(worker.address)
    return place
