"""A persistent :class:`nbkit.infra.worker.Worker` runs many tasks in one process and recovers
from cancels and crashes by starting a fresh one."""

from __future__ import annotations

import threading

import psutil
import pytest
import worker_targets

from nbkit.errors import Cancelled, ConfigError, WorkerError
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter
from nbkit.infra.worker import Worker


def _pid(worker: Worker) -> int:
    return int(worker.run(worker_targets.add, 1, 2, reporter=ProgressReporter())["pid"])  # type: ignore[arg-type]


def test_tasks_share_one_process_until_closed() -> None:
    with Worker() as worker:
        first = _pid(worker)
        assert _pid(worker) == first
        with pytest.raises(ConfigError, match="bad group"):  # an error does not kill the worker
            worker.run(worker_targets.raise_config_error, "bad group", reporter=ProgressReporter())
        assert _pid(worker) == first
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE


def test_cancel_ends_the_process_and_the_next_task_gets_a_fresh_one() -> None:
    with Worker() as worker:
        first = _pid(worker)
        token = CancelToken()

        def cancel_when_sleeping(progress: Progress) -> None:
            if "sleep" in progress.message.lower():
                threading.Timer(0.2, token.cancel).start()

        with pytest.raises(Cancelled):
            worker.run(
                worker_targets.sleep_long, 30.0, reporter=ProgressReporter(cancel_when_sleeping, token)
            )
        assert not worker.alive
        second = _pid(worker)
        assert second != first


def test_a_crashed_worker_is_replaced() -> None:
    with Worker() as worker:
        with pytest.raises(WorkerError, match="code 3"):
            worker.run(worker_targets.exit_with, 3, reporter=ProgressReporter())
        assert worker.run(worker_targets.add, 2, 3, reporter=ProgressReporter())["sum"] == 5
