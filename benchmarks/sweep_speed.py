"""How much faster an nbkit sweep compresses a grid than running optimum-cli once per config.

nbkit exports the float IR once and compresses every config from it (in one worker
process, cached); the reference runs ``optimum-cli export openvino`` with the same NNCF
flags once per config, each re-exporting the model from PyTorch. Both start from the same
Hugging Face folder (the bundled model, converted once beforehand and not timed), both
with empty output folders, in the same run. Measurements of quality and speed are not
part of either side: this is about producing the compressed models.

nbkit runs twice: as it is (NNCF's kernels chosen by :mod:`nbkit.compression.nncf_kernels`, NumPy for
this model) and with NNCF's default OpenVINO kernels, the ones optimum-cli uses, so the table
shows how much of the speed-up is exporting once and how much the kernel choice.

    python benchmarks/sweep_speed.py [--configs 6] [--json benchmarks/results/sweep_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbkit
from nbkit import Cache, CompressionConfig, read_architecture
from nbkit.compression.nncf_kernels import KERNELS_ENV, choose_kernels
from nbkit.infra.versions import versions
from nbkit.infra.worker import Worker
from nbkit.sources.models import resolve_source

GRID = [
    CompressionConfig(mode="int4_sym", group_size=64, ratio=1.0),
    CompressionConfig(mode="int4_sym", group_size=64, ratio=0.8),
    CompressionConfig(mode="int4_sym", group_size=32, ratio=1.0),
    CompressionConfig(mode="int4_asym", group_size=64, ratio=1.0),
    CompressionConfig(mode="int4_asym", group_size=32, ratio=0.8),
    CompressionConfig(mode="int8_asym"),
    CompressionConfig(mode="int4_sym", group_size=64, ratio=0.6),
    CompressionConfig(mode="int8_sym"),
]


def optimum_cli_flags(config: CompressionConfig) -> list[str]:
    """The optimum-cli flags equal to ``config`` (int8 modes are per-channel over every layer)."""
    sym = config.mode.value.endswith("_sym")
    if config.mode.is_int8:
        return ["--weight-format", "int8", *(["--sym"] if sym else [])]
    return [
        "--weight-format",
        "int4",
        *(["--sym"] if sym else []),
        "--group-size",
        str(config.group_size),
        "--ratio",
        str(config.ratio),
    ]


def time_nbkit(source: str, configs: list[CompressionConfig], cache_dir: Path, kernels: str) -> float:
    cache = Cache(cache_dir)
    previous = os.environ.get(KERNELS_ENV)
    os.environ[KERNELS_ENV] = kernels
    try:
        started = time.perf_counter()
        float_model = nbkit.export_openvino(source, cache=cache)
        with Worker() as worker:  # as run_sweep does: one process compresses every config
            for config in configs:
                nbkit.compress(float_model, config, cache=cache, worker=worker)
        return time.perf_counter() - started
    finally:
        os.environ.pop(KERNELS_ENV, None)
        if previous is not None:
            os.environ[KERNELS_ENV] = previous


def time_optimum_cli(hf_folder: Path, configs: list[CompressionConfig], out_dir: Path) -> list[float]:
    cli = Path(sys.executable).parent / "optimum-cli"
    times = []
    for index, config in enumerate(configs):
        target = out_dir / f"config-{index}"
        command = [
            str(cli), "export", "openvino", "-m", str(hf_folder), "--task", "text-generation-with-past",
            *optimum_cli_flags(config), str(target),
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if not (target / "openvino_model.xml").is_file():
            raise RuntimeError(f"optimum-cli wrote no model for {config.label}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=nbkit.DEFAULT_MODEL)
    parser.add_argument("--configs", type=int, default=6, help=f"grid size, 1..{len(GRID)}")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "sweep_speed.json")
    args = parser.parse_args()
    configs = GRID[: max(1, min(args.configs, len(GRID)))]

    work = Path(tempfile.mkdtemp(prefix="nbkit-sweep-speed-"))
    try:
        # The float Hugging Face folder both sides start from (GGUF conversion, not timed).
        source = resolve_source(args.model)
        hf_folder = source.hf_folder(Cache(work / "source-cache"))
        local = work / "hf"
        shutil.copytree(hf_folder, local, ignore=shutil.ignore_patterns("nbkit-*"))

        kernels = choose_kernels(read_architecture(local))
        nbkit_s = time_nbkit(str(local), configs, work / "nbkit-cache", kernels)
        nbkit_openvino_s = time_nbkit(str(local), configs, work / "nbkit-cache-openvino", "openvino")
        cli_times = time_optimum_cli(local, configs, work / "optimum-cli")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cli_s = sum(cli_times)
    ratio = cli_s / nbkit_s
    rows = [
        ("configs", str(len(configs))),
        (f"nbkit sweep (export once + compress each, {kernels} kernels)", f"{nbkit_s:.1f} s"),
        ("nbkit sweep with NNCF's OpenVINO kernels", f"{nbkit_openvino_s:.1f} s"),
        ("optimum-cli once per config", f"{cli_s:.1f} s  ({', '.join(f'{t:.0f}' for t in cli_times)} s)"),
        ("speed-up", f"{ratio:.2f}x  (goal >= 3x for 6 configs: {'PASS' if ratio >= 3 else 'MISS'})"),
        ("speed-up from exporting once (OpenVINO kernels)", f"{cli_s / nbkit_openvino_s:.2f}x"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    result = {
        "configs": [c.label for c in configs],
        "nbkit_s": nbkit_s,
        "nbkit_kernels": kernels,
        "nbkit_openvino_kernels_s": nbkit_openvino_s,
        "optimum_cli_s": cli_times,
        "speedup": ratio,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "versions": versions(("openvino", "nncf", "optimum-intel", "transformers", "torch")),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
