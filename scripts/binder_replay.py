"""Replay what Binder (repo2docker) builds from ``binder/``, then run the quickstart there under 2 GB.

    python3 scripts/binder_replay.py                        # in a temporary folder, removed at the end
    python3 scripts/binder_replay.py --work-dir /tmp/replay # there (must be empty or new); kept
    python3 scripts/binder_replay.py --json /tmp/replay.json

repo2docker, for a repository with a ``binder/`` folder, uses that folder alone:

1. ``binder/runtime.txt`` (``python-3.11``) picks the Python. Here: the machine's ``python3.11``,
   which makes a fresh virtual environment (no package of any other environment is visible).
2. ``pip install -r binder/requirements.txt`` in that environment.
3. ``binder/postBuild``, from the repository root, with the environment first on ``PATH``.

The repository is a copy of this checkout (tracked files plus untracked ones git does not
ignore, so uncommitted edits count, ``.venv`` and caches do not), as repo2docker copies the
repository into the image. Jupyter's and IPython's folders point into the work folder, so
nothing of this machine's Jupyter set-up leaks in.

Then ``notebooks/01_quickstart.ipynb`` runs in that environment with its own default parameters,
offline (``HF_HUB_OFFLINE=1``), on an empty ``NBKIT_CACHE_DIR``, through
``benchmarks/binder_memory.py`` (papermill, with the RSS of the whole process tree summed every
~50 ms), and the peak is checked against Binder's 2 GB. The check uses the tree's proportional set
size (PSS, from ``/proc/PID/smaps_rollup``, sampled here every ~0.2 s), not the RSS sum: libraries
fork inside nbkit's workers, and a forked child's RSS repeats every page it still shares with its
parent, while Binder's cgroup, like PSS summed over the tree, counts each page once. Both peaks
are printed and written to the JSON summary; the RSS sum is the upper bound.

Exit status: 0 when every step succeeded and the peak stayed under the limit; 1 when a step
failed or the limit was exceeded (the last lines say which); 2 for bad arguments. A summary
is written as JSON with ``--json``. Standard library only: it runs with any Python 3.10+.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BINDER_DIR = "binder"
# repo2docker's runtime.txt form for a plain Python: "python-X.Y".
RUNTIME_PATTERN = re.compile(r"^python-(\d+\.\d+)(?:\.\d+)?$")
MEMORY_LIMIT_BYTES = 2_000_000_000  # Binder's "2G"; benchmarks/binder_memory.py uses the same reading


PSS_SAMPLE_INTERVAL_S = 0.2
PROC = Path("/proc")


class ReplayError(RuntimeError):
    """A step of the replay failed; the message names the step."""


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents: dict[int, int] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while listed
        parents[int(stat.parent.name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parent_pids().items():
        children.setdefault(parent, []).append(pid)
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def pss_bytes(pid: int) -> int:
    """The proportional set size of ``pid`` (0 once it has exited)."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class PssSampler:
    """Samples the PSS summed over a process tree on a background thread; keeps the peak."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.started = time.perf_counter()
        self.peak_bytes = 0
        self.peak_at_s = 0.0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = process_tree(self.root)
            total = sum(pss_bytes(pid) for pid in tree)
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = total, len(tree)
                self.peak_at_s = time.perf_counter() - self.started
            self._stop.wait(PSS_SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def python_for_runtime(runtime_txt: Path) -> str:
    """The interpreter command for ``runtime.txt`` (``python-3.11`` -> ``python3.11``), found on PATH."""
    text = runtime_txt.read_text().strip()
    match = RUNTIME_PATTERN.match(text)
    if match is None:
        raise ReplayError(f"{runtime_txt} says {text!r}; expected repo2docker's form 'python-X.Y'.")
    command = f"python{match.group(1)}"
    if shutil.which(command) is None:
        raise ReplayError(f"{runtime_txt} asks for Python {match.group(1)}, but {command} is not on PATH.")
    return command


def repository_files(root: Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a push of this checkout would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def copy_repository(root: Path, destination: Path) -> int:
    files = repository_files(root)
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return len(files)


def replay_environment(work_dir: Path, venv: Path) -> dict[str, str]:
    """The environment of the Binder session: the venv first on PATH, Jupyter folders of its own, offline."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("JUPYTER", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    home = work_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),  # what postBuild writes to the user's home (consent files) stays in the replay
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        JUPYTER_DATA_DIR=str(home / ".local/share/jupyter"),
        JUPYTER_RUNTIME_DIR=str(home / ".local/share/jupyter/runtime"),
        IPYTHONDIR=str(home / ".ipython"),
        MPLCONFIGDIR=str(home / ".config/matplotlib"),
        HF_HUB_OFFLINE="1",
        NBKIT_CACHE_DIR=str(work_dir / "nbkit-cache"),
        PYTHONUNBUFFERED="1",
    )
    # pip retries an unreachable index (download.pytorch.org where there is no network) five times
    # with back-off before it moves on to the next index; one retry shows the same outcome sooner.
    env.setdefault("PIP_RETRIES", "1")
    return env


def run_step(
    name: str,
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    log: Path,
    sampled: list[PssSampler] | None = None,
) -> float:
    """Run one step with its output in ``log``; return its wall time in seconds.

    With ``sampled`` (a list), the step's process tree is sampled for PSS while it runs, and the
    stopped :class:`PssSampler` is appended to the list.
    """
    print(f"binder replay: {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stream, stderr=subprocess.STDOUT)
        sampler = PssSampler(process.pid) if sampled is not None else None
        returncode = process.wait()
    if sampler is not None and sampled is not None:
        sampler.stop()
        sampled.append(sampler)
    seconds = time.perf_counter() - started
    if returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise ReplayError(f"{name} failed with exit code {returncode} (log: {log}):\n{tail}")
    print(f"binder replay: {name}: done in {seconds:.0f} s", flush=True)
    return seconds


def replay(work_dir: Path) -> dict[str, Any]:
    repo = work_dir / "repo"
    venv = work_dir / "venv"
    logs = work_dir / "logs"
    logs.mkdir(parents=True)
    summary: dict[str, Any] = {"work_dir": str(work_dir), "steps": {}}
    steps = summary["steps"]

    summary["files_copied"] = copy_repository(ROOT, repo)
    python = python_for_runtime(repo / BINDER_DIR / "runtime.txt")
    env = replay_environment(work_dir, venv)
    steps["venv"] = run_step("venv", [python, "-m", "venv", str(venv)], repo, env, logs / "venv.log")
    venv_python = str(venv / "bin" / "python")
    steps["requirements"] = run_step(
        "requirements.txt",
        [venv_python, "-m", "pip", "install", "--no-cache-dir", "-r", f"{BINDER_DIR}/requirements.txt"],
        repo,
        env,
        logs / "requirements.log",
    )
    steps["postBuild"] = run_step(
        "postBuild", ["bash", f"{BINDER_DIR}/postBuild"], repo, env, logs / "postBuild.log"
    )
    result_json = work_dir / "binder_memory.json"
    sampled: list[PssSampler] = []
    steps["quickstart"] = run_step(
        "01_quickstart (benchmarks/binder_memory.py)",
        [
            venv_python,
            "benchmarks/binder_memory.py",
            "--cache-dir",
            env["NBKIT_CACHE_DIR"],
            "--json",
            str(result_json),
        ],
        repo,
        env,
        logs / "quickstart.log",
        sampled=sampled,
    )
    print((logs / "quickstart.log").read_text(errors="replace"), flush=True)
    measured = json.loads(result_json.read_text())
    summary.update(
        python=subprocess.run(
            [venv_python, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip(),
        versions=measured["versions"],
        peak_pss_bytes=sampled[0].peak_bytes,
        peak_pss_at_s=round(sampled[0].peak_at_s, 1),
        peak_pss_processes=sampled[0].peak_processes,
        peak_rss_sum_bytes=measured["peaks"]["tree_bytes"],
        notebook_wall_s=measured["outcome"]["wall_s"],
        limit_bytes=MEMORY_LIMIT_BYTES,
    )
    if summary["peak_pss_bytes"] == 0:
        raise ReplayError("no PSS could be read from /proc/PID/smaps_rollup (Linux 4.14 or newer needed)")
    summary["passed"] = (
        measured["outcome"]["returncode"] == 0 and summary["peak_pss_bytes"] < MEMORY_LIMIT_BYTES
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, help="an empty or new folder for the replay (kept)")
    parser.add_argument("--json", type=Path, help="write the summary here as JSON")
    args = parser.parse_args(argv)
    if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
        parser.error(f"--work-dir {args.work_dir} is not empty: the replay must start from nothing")

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="nbkit-binder-replay-"))
    started = time.perf_counter()
    try:
        summary = replay(work_dir.resolve())
    except (ReplayError, OSError, subprocess.CalledProcessError) as exc:
        print(f"binder replay: FAIL: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    verdict = "PASS" if summary["passed"] else "FAIL"
    print(
        f"binder replay: {verdict}: peak PSS of the notebook's process tree "
        f"{summary['peak_pss_bytes'] / 2**20:,.0f} MiB at {summary['peak_pss_at_s']:.0f} s "
        f"({summary['peak_pss_processes']} processes; limit {MEMORY_LIMIT_BYTES / 2**20:,.0f} MiB); "
        f"RSS sum, an upper bound: {summary['peak_rss_sum_bytes'] / 2**20:,.0f} MiB; "
        f"whole replay {summary['wall_s']:.0f} s",
        flush=True,
    )
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
