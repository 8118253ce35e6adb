"""For the browser tests: Debian's chromium and its flags, and a Jupyter server (Voila or
JupyterLab) started on a free port and ended with its kernels."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SERVER_START_S = 90
# Debian's chromium, headless as root, without the background connections this closed network refuses.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def jupyter_server(command: list[str], port: int, cwd: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """Run ``command`` (listening on ``port``) in a session of its own; yield its base URL.

    Ready means the port accepts a TCP connection: a GET would start a kernel. On exit the
    server gets SIGTERM (Voila and JupyterLab shut their kernels down on it), then whatever is
    left of its session gets SIGKILL.
    """
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{command[:3]} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no server on port {port} after {SERVER_START_S} s:\n{log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of that session is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
