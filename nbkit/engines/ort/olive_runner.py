"""Running Olive: a workflow config in a worker process, or the ``olive`` command line.

Both report failure the same way, because Olive does not: a pass that fails is logged and the
workflow ends with "No output model produced" and exit code 0. :func:`run_olive_config` and
:func:`run_olive_command` look for the output instead and raise
:class:`~nbkit.errors.OliveRunError` with the pass's own logged error.

:func:`run_olive_config` runs in a child process (:func:`nbkit.infra.worker.run_isolated`), so
Cancel ends it at once and its memory goes back when it ends. Everything Olive writes (its cache,
temporary files, the hub cache ModelBuilder uses for scratch files) stays inside the given work
folder.

:func:`run_olive_command` runs ``python -m olive`` (or the patched launcher,
:mod:`nbkit.engines.ort.olive_patches`) offline with this Python, the way a tutorial shows a
command: the exit code, the time, the whole output, and the error line when it failed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nbkit.engines.ort.deps import require_olive
from nbkit.errors import OliveRunError, error_summary
from nbkit.infra.progress import ProgressReporter
from nbkit.infra.worker import Worker, run_isolated

log = logging.getLogger(__name__)

NO_OUTPUT = "No output model produced"
OUTPUT_DIR = "output"
# Offline: no hub, no telemetry. A command that would download says so instead of hanging.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OLIVE_DISABLE_TELEMETRY": "1",
}


def last_error(errors: Sequence[str]) -> str:
    """The first line of the last error Olive logged: why it produced no model."""
    return errors[-1].splitlines()[0] if errors else "no error was logged"


class OliveLog(logging.Handler):
    """Turns Olive's log into progress messages and keeps its errors (Olive logs a failed pass
    and returns without an output model instead of raising)."""

    def __init__(self, reporter: ProgressReporter, passes: Sequence[str], runs: int | None = None) -> None:
        super().__init__(logging.INFO)
        self.reporter = reporter
        self.passes = list(passes)
        # How many pass runs to expect: one per pass, or one per candidate of a search.
        self.runs = runs or len(self.passes) or 1
        self.started = 0
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            detail = message
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                detail = f"{message} {type(exc).__name__}: {exc}"
            self.errors.append(detail)
            return
        if message.startswith("Running pass"):
            name = next(
                (n for n in self.passes if n in message), message.removeprefix("Running pass").strip()
            )
            done = min(self.started, self.runs)
            self.started += 1
            counter = f" ({self.started} of {self.runs})" if self.runs > len(self.passes) else ""
            self.reporter.report(0.1 + 0.8 * done / self.runs, f"Olive: running pass {name}{counter}")

    def reason(self) -> str:
        return last_error(self.errors)


@dataclasses.dataclass(frozen=True)
class OliveRun:
    """What one :func:`run_olive_config` wrote: ``output_dir`` with Olive's output model and reports."""

    output_dir: Path
    seconds: float
    errors: tuple[str, ...]

    @property
    def footprint(self) -> dict[str, Any]:
        """Olive's ``footprint.json``: every evaluated model with its metrics and Pareto flag."""
        path = self.output_dir / "footprint.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def run_history(self) -> str:
        path = self.output_dir / "run_history.txt"
        return path.read_text() if path.is_file() else ""


def run_olive_config(
    user_config: Mapping[str, Any],
    work_dir: Path,
    *,
    reporter: ProgressReporter,
    produced: Callable[[Path], bool] | None = None,
    patched: bool = False,
    pass_runs: int | None = None,
    worker: Worker | None = None,
) -> OliveRun:
    """Run the Olive workflow ``user_config`` in a child process, writing into ``work_dir/output``.

    ``produced(output_dir)`` says whether the expected model is there (default: Olive wrote a
    ``model_config.json`` or a ``model`` folder); when it is not, :class:`OliveRunError` carries
    the error Olive logged. ``patched`` applies :func:`~nbkit.engines.ort.olive_patches.apply_olive_patches`
    first (workflows with a ``custom`` metric need it on olive-ai 0.13.0). ``pass_runs``: how many
    pass runs the progress bar counts to (a search runs its pass once per candidate).
    """
    require_olive()
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    errors = run_isolated(
        run_olive_here,
        dict(user_config),
        work_dir,
        patched,
        reporter=reporter,
        worker=worker,
        pass_runs=pass_runs,
    )
    output = work_dir / OUTPUT_DIR
    check = produced or _default_produced
    if not check(output):
        reason = last_error(errors)
        raise OliveRunError(f"Olive finished without writing its output model into {output} ({reason}).")
    return OliveRun(output, time.perf_counter() - started, tuple(errors))


def _default_produced(output: Path) -> bool:
    return (output / "model_config.json").is_file() or (output / "model").is_dir()


def run_olive_here(
    user_config: dict[str, Any],
    work_dir: Path,
    patched: bool,
    *,
    reporter: ProgressReporter,
    pass_runs: int | None = None,
) -> list[str]:
    """Run the workflow in this process (a worker's body): returns the errors Olive logged.

    Sets offline and scratch environment variables for the rest of the process, so call it only
    in a child process that ends afterwards.
    """
    scratch = work_dir / ".olive-scratch"
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    # Set before olive/huggingface_hub are imported: ModelBuilder keeps intermediate files in the
    # Hugging Face hub cache folder, and nothing here may reach the network.
    os.environ["HF_HUB_CACHE"] = str(scratch / "hf-hub")
    os.environ["HF_DATASETS_CACHE"] = str(scratch / "hf-datasets")  # datasets' Arrow copies of data files
    os.environ.update(OFFLINE_ENV)
    # Olive turns every config string that names an existing path relative to the working folder
    # into an absolute path, metric names included: run it where no such names are lying around.
    previous_dir = os.getcwd()
    os.chdir(work_dir)
    reporter.report(0.02, "Loading Olive")
    if patched:
        from nbkit.engines.ort.olive_patches import apply_olive_patches

        apply_olive_patches()
    from olive.workflows import run as olive_run

    config = dict(user_config)
    config["output_dir"] = str(work_dir / OUTPUT_DIR)
    config["cache_dir"] = str(scratch / "cache")
    handler = OliveLog(reporter, list(config.get("passes", {})), pass_runs)
    olive_logger = logging.getLogger("olive")
    olive_logger.addHandler(handler)
    try:
        olive_run(config, tempdir=str(scratch / "tmp"))
    except Exception as exc:
        raise OliveRunError(f"Olive failed: {type(exc).__name__}: {error_summary(exc)}") from exc
    finally:
        olive_logger.removeHandler(handler)
        os.chdir(previous_dir)
    reporter.report(1.0, "Olive finished")
    return handler.errors


@dataclasses.dataclass(frozen=True)
class OliveCommand:
    """One ``olive ...`` command as it ran: arguments, exit code, time and output."""

    args: tuple[str, ...]
    returncode: int
    seconds: float
    output: str

    @property
    def produced_output(self) -> bool:
        """False when Olive said it produced no model, whatever its exit code."""
        return self.returncode == 0 and NO_OUTPUT not in self.output

    @property
    def error_line(self) -> str:
        """The line that says why it failed (the last exception line), or "" when it worked."""
        if self.produced_output:
            return ""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        for line in reversed(lines):
            head = line.split(":", 1)[0]
            if head.endswith(("Error", "Exception", "Exit")) or "Error: " in line:
                return line
        return lines[-1] if lines else f"exit code {self.returncode}"

    @property
    def shell(self) -> str:
        """The command as you would type it."""
        import shlex

        return "olive " + " ".join(shlex.quote(a) for a in self.args)


def run_olive_command(
    args: Sequence[str | os.PathLike[str]],
    cwd: Path,
    *,
    patched: bool = False,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> OliveCommand:
    """Run ``olive <args>`` with this Python, offline, in ``cwd``; never raises on Olive's failure.

    The caller decides what a failure means (a tutorial shows it; :func:`check_command` raises).
    """
    require_olive()
    module = "nbkit.engines.ort.olive_patches" if patched else "olive"
    words = tuple(str(a) for a in args)
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", module, *words],
        cwd=cwd,
        env={**os.environ, **OFFLINE_ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return OliveCommand(words, completed.returncode, time.perf_counter() - started, completed.stdout)


def check_command(command: OliveCommand) -> OliveCommand:
    """``command`` when it produced its output, else :class:`OliveRunError` with its error line."""
    if not command.produced_output:
        raise OliveRunError(f"`{command.shell}` produced no model: {command.error_line}")
    return command


__all__ = [
    "NO_OUTPUT",
    "OFFLINE_ENV",
    "OliveCommand",
    "OliveLog",
    "OliveRun",
    "check_command",
    "last_error",
    "run_olive_command",
    "run_olive_config",
    "run_olive_here",
]
