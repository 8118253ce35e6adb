"""Host a Dask LocalCluster for :class:`nbkit.measure.cluster.LocalClusterProcess`.

Run as ``python -m nbkit.measure._local_cluster WORKERS DASHBOARD_ADDRESS``. It prints one JSON
line (the scheduler address and the dashboard link) and keeps the cluster until its standard
input closes: the parent closed it, or the parent died. SIGTERM, SIGHUP and SIGINT close the
cluster too, so its worker processes never outlive it.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any


def _stop(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    workers, dashboard_address = int(argv[0]), argv[1]
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, _stop)
    from distributed import LocalCluster

    # One thread per worker: one configuration at a time each, and a speed measurement that
    # does not share its worker with another task. No memory limit: Dask's nanny would kill a
    # worker compressing a model that briefly needs more than its share of the machine.
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=0,
        dashboard_address=dashboard_address,
        resources={"CPU": 1},
    )
    try:
        # The one line the parent (LocalClusterProcess) reads: where the cluster is.
        info = {"address": cluster.scheduler_address, "dashboard": cluster.dashboard_link}
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # returns at end of input: the parent closed the pipe or died
    finally:
        cluster.close(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
