"""Dask distributed glue for sweeps: where the cluster comes from, and how tasks run on it.

nbkit does not schedule anything itself. A sweep on a cluster (``run_sweep(client=...)``,
``nbkit sweep --cluster local:N | --scheduler ADDR``) is a set of Dask tasks, one per
configuration, sent to workers that have the requested device (Dask worker resources); Dask
reschedules the task of a worker that dies. This module only:

- starts a ``LocalCluster`` in a process of its own (:class:`LocalClusterProcess`), so a
  plain script needs no ``if __name__ == "__main__"`` guard and the cluster ends with the
  process that started it, whatever signal ended that one;
- connects to an existing scheduler with one clear sentence when it cannot;
- picks the worker resources for a device, refusing a device no worker declares;
- carries a cancel across the cluster (a Dask ``Event`` the tasks poll) and reports what Dask
  retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.errors import Cancelled, ConfigError, MissingDependencyError, WorkerError
from nbkit.infra.progress import CancelToken

log = logging.getLogger(__name__)

LOCAL_PREFIX = "local:"
DEVICES = ("CPU", "GPU", "NPU")
_CANCEL_POLL_S = 0.5
_WAIT_S = 0.25
_STOP_GRACE_S = 30.0


def require_distributed() -> None:
    """Raise the sentence that says how to install Dask distributed, when it is missing."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "Sweeps on a Dask cluster need Dask distributed: pip install 'nbkit[dask]'."
        ) from exc


def parse_local(spec: str) -> int:
    """The worker count of ``local:N`` (N from 1 to the number of CPUs)."""
    text = spec.strip()
    if not text.lower().startswith(LOCAL_PREFIX):
        raise ConfigError(f"--cluster takes local:N (N worker processes on this machine), not {spec!r}.")
    count = text[len(LOCAL_PREFIX) :]
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(
            f"The worker count of {spec!r} must be a whole number of at least 1, as in local:2."
        )
    workers = int(count)
    cpus = os.cpu_count() or 1
    if workers > cpus:
        raise ConfigError(
            f"local:{workers} asks for more workers than this machine has CPUs ({cpus}); "
            f"use local:{cpus} or fewer, or a real cluster (--scheduler)."
        )
    return workers


class LocalClusterProcess:
    """A Dask ``LocalCluster`` hosted by a child process, and a ``client`` connected to it.

    The child (:mod:`nbkit.measure._local_cluster`) runs in a session of its own, so Ctrl-C in
    a terminal reaches only this process, which then closes the cluster. It also closes the
    cluster when its standard input closes, which the kernel does when this process dies for
    any reason, SIGKILL included: no worker outlives the sweep that started it.
    """

    def __init__(self, workers: int, *, dashboard_address: str = ":8787", timeout: float = 120.0) -> None:
        require_distributed()
        from distributed import Client

        if workers < 1:
            raise ConfigError(f"A local cluster needs at least 1 worker, not {workers}.")
        self.workers = workers
        handle, log_path = tempfile.mkstemp(prefix="nbkit-local-cluster-", suffix=".log")
        self.log_path = Path(log_path)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "nbkit.measure._local_cluster", str(workers), dashboard_address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=handle,
            start_new_session=os.name == "posix",
        )
        os.close(handle)
        try:
            info = self._read_address(timeout)
            self.address: str = info["address"]
            self.dashboard_link: str | None = info.get("dashboard")
            self.client = Client(self.address, timeout=timeout)
        except BaseException:
            self.close()
            raise

    def _read_address(self, timeout: float) -> dict[str, Any]:
        assert self._process.stdout is not None
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self._process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not line or not line[0].strip():
            raise WorkerError(
                f"The local Dask cluster did not start within {timeout:.0f} s; its log is {self.log_path}."
            )
        return json.loads(line[0])

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        """Close the client and the cluster (idempotent)."""
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
        process = self._process
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("The local Dask cluster did not close within 30 s; killing it.")
            if os.name == "posix":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> LocalClusterProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalClusterProcess(workers={self.workers}, address={getattr(self, 'address', None)!r})"


def connect(address: str, *, timeout: float = 10.0) -> Any:
    """A Dask ``Client`` of the scheduler at ``address``, or one sentence saying why not."""
    require_distributed()
    from distributed import Client

    if "://" not in address:
        raise ConfigError(f"--scheduler takes a scheduler address such as tcp://host:8786, not {address!r}.")
    try:
        return Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"No Dask scheduler answered at {address} within {timeout:.0f} s; start one with "
            "`dask scheduler` and give the address it prints."
        ) from exc


def worker_resources(client: Any) -> dict[str, dict[str, float]]:
    """Each worker's declared resources (``dask worker ... --resources GPU=1``), by address."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {address: dict(info.get("resources") or {}) for address, info in workers.items()}


def device_resources(client: Any, device: str) -> dict[str, float] | None:
    """The resources a speed measurement on ``device`` asks of a worker, or None for any worker.

    A worker with ``--resources GPU=1`` is where GPU speed is measured. CPU may run on any
    worker when no worker declares resources at all (a plain ``dask worker``). A GPU or NPU no
    worker declares is refused here, before any work: nbkit never measures a device it does
    not have.
    """
    kind = device.split(".")[0].upper()
    if kind not in DEVICES:  # HETERO:/AUTO: and the like: the engine checks the name itself
        kind = "CPU"
    resources = worker_resources(client)
    if not resources:
        raise ConfigError(
            "The Dask cluster has no worker yet; start one with `dask worker SCHEDULER_ADDRESS`."
        )
    if any(kind in declared for declared in resources.values()):
        return {kind: 1}
    if kind == "CPU" and not any(resources.values()):
        return None
    raise ConfigError(
        f"No worker of the Dask cluster declares the {kind} resource, so no {kind} speed can be measured on it; "
        f"start a worker on a machine with that device: dask worker SCHEDULER_ADDRESS --resources {kind}=1"
    )


def worker_cache_root(template: str | None) -> str | None:
    """The cache folder of the worker this runs in: ``template`` with ``{worker}`` filled in."""
    if template is None:
        return None
    if "{worker}" not in template:
        return template
    from distributed import get_worker

    name = str(get_worker().name).replace(os.sep, "_")
    return template.replace("{worker}", name)


def dashboard_link(client: Any) -> str | None:
    with contextlib.suppress(Exception):
        return str(client.dashboard_link)
    return None


class ClusterCancelToken(CancelToken):
    """A cancel token a task on a worker polls: set locally, or through the sweep's Dask ``Event``.

    The event is asked at most every half second, so a progress report costs no round trip.
    """

    def __init__(self, event_name: str) -> None:
        super().__init__()
        self._event_name = event_name
        self._remote: Any = None
        self._asked = 0.0

    @property
    def cancelled(self) -> bool:
        if super().cancelled:
            return True
        now = time.monotonic()
        if now - self._asked >= _CANCEL_POLL_S:
            self._asked = now
            if self._remote is None:
                from distributed import Event

                self._remote = Event(self._event_name)
            with contextlib.suppress(Exception):  # a scheduler hiccup is not a cancel
                if self._remote.is_set():
                    super().cancel()
        return super().cancelled

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled("The sweep was cancelled; nothing partial was written to the cache.")


@dataclass(frozen=True)
class Finished:
    """A task's result as it came home, with how many times Dask had to retry it."""

    key: str
    label: str
    result: Any
    retries: int


class ClusterRun:
    """The tasks of one sweep on a Dask cluster: submit, collect as they finish, cancel.

    ``check`` is called while waiting (the caller's cancel token): a cancel sets the sweep's
    Dask ``Event`` (running tasks stop at their next progress report) and cancels the tasks
    that have not run yet.
    """

    def __init__(
        self,
        client: Any,
        *,
        resources: dict[str, float] | None,
        check: Callable[[], None] | None = None,
    ) -> None:
        from distributed import Event

        self.client = client
        self.resources = resources
        self.event_name = f"nbkit-cancel-{uuid.uuid4().hex}"
        self._event = Event(self.event_name, client=client)
        self._check = check or (lambda: None)
        self._labels: dict[str, str] = {}

    def submit(self, function: Callable[..., Any], *args: Any, label: str) -> Any:
        future = self.client.submit(
            function,
            *args,
            key=f"nbkit-{uuid.uuid4().hex[:12]}",
            pure=False,
            resources=self.resources,
        )
        self._labels[future.key] = label
        return future

    def run_one(self, function: Callable[..., Any], *args: Any, label: str) -> Finished:
        future = self.submit(function, *args, label=label)
        (finished,) = self.as_finished([future])
        return finished

    def as_finished(self, futures: Iterable[Any]) -> Iterator[Finished]:
        """Each task's result as it finishes; on an error or a cancel the rest are cancelled."""
        from distributed import wait

        pending = set(futures)
        try:
            while pending:
                self._check()
                try:
                    done, _ = wait(list(pending), timeout=_WAIT_S, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for future in done:
                    pending.discard(future)
                    yield self._finished(future)
        except BaseException:
            if pending:  # an error, a cancel, or a caller that stopped reading: the rest must not run
                self.cancel(pending)
            raise

    def _finished(self, future: Any) -> Finished:
        from distributed import KilledWorker

        label = self._labels.pop(future.key, future.key)
        retries = self._retries(future.key)
        try:
            result = future.result()
        except KilledWorker as exc:
            raise WorkerError(
                f"Dask gave up on {label}: the workers running it died {retries or 'several'} times "
                "(out of memory, or killed); see the workers' logs."
            ) from exc
        finally:
            future.release()
        return Finished(key=future.key, label=label, result=result, retries=retries)

    def _retries(self, key: str) -> int:
        # How often the scheduler saw a worker die with this task running (TaskState.suspicious).
        # A function defined here is pickled by value: the scheduler needs no nbkit to run it.
        def suspicious(dask_scheduler: Any, key: str = key) -> int:
            task = dask_scheduler.tasks.get(key)
            return int(getattr(task, "suspicious", 0)) if task is not None else 0

        try:
            return int(self.client.run_on_scheduler(suspicious))
        except Exception:  # an old scheduler without TaskState.suspicious: unknown, not fatal
            return 0

    def cancel(self, futures: Iterable[Any] = (), *, grace: float = _STOP_GRACE_S) -> None:
        """Stop the sweep's tasks through its Dask ``Event``, and wait up to ``grace`` seconds for them.

        Every task checks the event as it starts and at each progress report, so a waiting task
        ends as soon as it starts and a running one at its next report, removing its partial
        build itself. Futures are not cancelled first: the scheduler would forget a running
        task while its thread goes on building, and the cache would see a build nobody waits
        for. Only tasks still running after ``grace`` are cancelled that way.
        """
        with contextlib.suppress(Exception):
            self._event.set()
        remaining = [future for future in futures if not future.done()]
        deadline = time.monotonic() + grace
        while remaining and time.monotonic() < deadline:
            time.sleep(_WAIT_S)
            remaining = [future for future in remaining if not future.done()]
        if remaining:
            log.warning("%d task(s) of the cancelled sweep still ran after %.0f s.", len(remaining), grace)
            with contextlib.suppress(Exception):
                self.client.cancel(remaining)
