"""nbkit's two engines side by side, and nbkit's OpenVINO model against two peers, on this CPU.

Two interleaved runs; every ratio comes from the run that holds both of its sides.

1. **The nbkit engines**, with :func:`nbkit.measure.compare.compare_models` (what notebook 07
   calls): size, quality against the float OpenVINO export (perplexity, mean KL, top-1 on the
   same token ids) and speed of

   * ``nbkit-openvino``: what ``nbkit quickstart`` builds: ``export_openvino`` + NNCF
     ``CompressionConfig(mode="int4_sym", group_size=64)``, run by nbkit's OpenVINO chat session
     with the engine's untuned runtime (``PERFORMANCE_HINT=LATENCY``, f32);
   * ``ort-genai-int4``: Olive's ModelBuilder INT4 (symmetric RTN, block size 64 to match NNCF's
     group size, accuracy level 4), run by nbkit's ONNX Runtime GenAI chat session.

   Speed is the sessions' own per-turn metrics (openvino-genai's definitions), each model in
   its own worker process, one warm-up, then ``--repeats`` rounds with the order rotated.
2. **The peers**, timed here against ``nbkit-openvino`` in a second interleaved run:

   * ``openvino-genai-defaults``: the same INT4 IR in ``openvino_genai.LLMPipeline(path, "CPU")``
     with no properties, as a tutorial would write it;
   * ``pytorch-eager-fp32``: ``transformers`` ``generate()`` on the float Hugging Face folder.

   No nbkit session runs PyTorch, so this run times every row (the baseline too) from outside,
   the same way: TTFT = from the call to the first streamed token, decode tokens/s =
   (new tokens - 1) / (end - first token). openvino-genai's own numbers are kept in the JSON.

Every model answers the same chat-templated prompt (:data:`nbkit.sources.texts.SPEED_PROMPT`)
with greedy decoding and exactly ``--new-tokens`` new tokens.

    python benchmarks/engines.py [--repeats 5] [--new-tokens 128] [--quality-tokens 512]
                                 [--cache-dir DIR] [--json PATH] [--engines a,b,...]

Needs Olive for the ORT engine (``pip install "nbkit[olive]"``); without it that row is
skipped with the reason. The machine is usually shared: read the numbers as rough.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "engines.json"
BASELINE = "nbkit-openvino"
ORT = "ort-genai-int4"
PEERS = ("openvino-genai-defaults", "pytorch-eager-fp32")
ENGINES = (BASELINE, ORT, *PEERS)
LIBRARIES = (
    "nbkit",
    "openvino",
    "openvino-genai",
    "nncf",
    "optimum-intel",
    "olive-ai",
    "onnxruntime",
    "onnxruntime-genai",
    "transformers",
    "torch",
)


# -- peer run, worker side: one engine per process --------------------------------------------


class _Clock:
    """Timestamps of the first and the last streamed token of one run."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now


def _load(engine: str, paths: dict[str, str], new_tokens: int, torch_threads: int | None) -> Any:
    """A function that runs one generation and returns its measurements."""
    from nbkit.sources.texts import SPEED_PROMPT

    if engine == BASELINE:
        from nbkit.config import GenerationSettings
        from nbkit.engines.registry import get_engine

        openvino = get_engine("openvino")
        settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        # The runtime compare_models is given for this model too (see main).
        session = openvino.open_chat(Path(paths["openvino_int4"]), openvino.base_runtime("CPU"), settings)

        def run_session() -> dict[str, Any]:
            session.reset()  # every run is the same single-turn conversation
            clock = _Clock()
            turn = session.send(SPEED_PROMPT, lambda _: clock.tick())
            end = time.perf_counter()
            metrics = turn.metrics
            return _measured(
                clock,
                end,
                metrics.generated_tokens,
                {"ttft_ms": metrics.ttft_ms, "tokens_per_s": metrics.tokens_per_s},
            )

        return run_session
    if engine == "openvino-genai-defaults":
        import openvino_genai

        pipeline = openvino_genai.LLMPipeline(paths["openvino_int4"], "CPU")
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = new_tokens
        config.do_sample = False

        def run_ov() -> dict[str, Any]:
            clock = _Clock()

            def stream(_: str) -> openvino_genai.StreamingStatus:
                clock.tick()
                return openvino_genai.StreamingStatus.RUNNING

            history = openvino_genai.ChatHistory([{"role": "user", "content": SPEED_PROMPT}])
            result = pipeline.generate(history, config, streamer=stream)
            end = time.perf_counter()
            perf = result.perf_metrics
            return _measured(
                clock,
                end,
                int(perf.get_num_generated_tokens()),
                {"ttft_ms": perf.get_ttft().mean, "tokens_per_s": perf.get_throughput().mean},
            )

        return run_ov
    if engine == "pytorch-eager-fp32":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        folder = paths["hf_folder"]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": SPEED_PROMPT}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )

        class Streamer:
            def __init__(self, clock: _Clock) -> None:
                self.clock = clock
                self.calls = 0

            def put(self, value: Any) -> None:
                self.calls += 1
                if self.calls > 1:  # the first call carries the prompt
                    self.clock.tick()

            def end(self) -> None:
                pass

        def run_torch() -> dict[str, Any]:
            clock = _Clock()
            with torch.inference_mode():
                out = model.generate(
                    **ids,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    streamer=Streamer(clock),
                    pad_token_id=tokenizer.eos_token_id,
                )
            end = time.perf_counter()
            new = int(out.shape[-1] - ids["input_ids"].shape[-1])
            return _measured(clock, end, new, {"torch_threads": torch.get_num_threads()})

        return run_torch
    raise ValueError(f"{engine} is not timed in the peer run; choose among {BASELINE}, {', '.join(PEERS)}")


def _measured(clock: _Clock, end: float, tokens: int, engine_reported: dict[str, float]) -> dict[str, Any]:
    first = clock.first if clock.first is not None else end
    decode_s = end - first
    return {
        "ttft_ms": (first - clock.started) * 1000,
        "decode_tokens_per_s": (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0,
        "total_s": end - clock.started,
        "new_tokens": tokens,
        "engine_reported": engine_reported,
    }


def worker_main(engine: str, paths_json: str, new_tokens: int, torch_threads: int | None) -> None:
    """Load ``engine``, then answer one line per ``run`` command on stdin with a JSON line."""
    started = time.perf_counter()
    run = _load(engine, json.loads(paths_json), new_tokens, torch_threads)
    print(json.dumps({"loaded_s": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps(run()), flush=True)


# -- parent side --------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Build (or find in the cache) every model; returns the models, their folders and skipped rows."""
    from nbkit import Cache, CompressionConfig, compress, export_openvino
    from nbkit.engines.ort.deps import olive_available, require_olive
    from nbkit.engines.ort.olive import export_olive
    from nbkit.engines.ort.olive_config import OliveExportConfig
    from nbkit.errors import NbkitError
    from nbkit.sources.models import resolve_source

    cache = Cache(args.cache_dir)
    source = resolve_source(args.model)
    float_ir = export_openvino(source, cache=cache)
    models: dict[str, Any] = {
        "openvino_float": float_ir,
        "openvino_int4": compress(float_ir, CompressionConfig(mode="int4_sym", group_size=64), cache=cache),
    }
    paths = {"hf_folder": str(source.hf_folder(cache))}
    skipped: dict[str, str] = {}
    if ORT in args.engines:
        if olive_available():
            config = OliveExportConfig("int4", args.ort_block_size, args.ort_accuracy_level)
            models["ort_int4"] = export_olive(source, config, cache=cache)
        else:
            try:
                require_olive()
            except NbkitError as exc:  # says what to install
                skipped[ORT] = str(exc)
    paths.update({name: str(model.path) for name, model in models.items()})
    return models, paths, skipped


class PeerWorker:
    """This script in a child process (``--worker ENGINE``), loaded once, one run per request."""

    def __init__(
        self, engine: str, paths: dict[str, str], new_tokens: int, torch_threads: int | None
    ) -> None:
        self.engine = engine
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                engine,
                "--paths",
                json.dumps(paths),
                "--new-tokens",
                str(new_tokens),
                *(["--torch-threads", str(torch_threads)] if torch_threads else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.loaded_s = float(self._read()["loaded_s"])

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.engine} worker exited with {self.process.wait()}")
        return json.loads(line)

    def run(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def run_peers(
    engines: list[str], paths: dict[str, str], args: argparse.Namespace
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """Load every engine in its own process, one discarded warm-up each, then interleaved rounds."""
    workers: dict[str, PeerWorker] = {}
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
    try:
        for engine in engines:
            print(f"Loading {engine}...", file=sys.stderr)
            workers[engine] = PeerWorker(engine, paths, args.new_tokens, args.torch_threads)
        for engine in engines:  # warm-up, discarded: first runs compile kernels and fill caches
            workers[engine].run()
        for round_index in range(args.repeats):
            shift = round_index % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                time.sleep(args.pause)
                result = workers[engine].run()
                result["round"] = round_index
                runs[engine].append(result)
                print(
                    f"peer round {round_index + 1}/{args.repeats} {engine:26} "
                    f"{result['decode_tokens_per_s']:6.1f} tok/s TTFT {result['ttft_ms']:6.0f} ms",
                    file=sys.stderr,
                )
    finally:
        for worker in workers.values():
            worker.close()
    return {engine: worker.loaded_s for engine, worker in workers.items()}, runs


def peer_summary(
    loaded_s: dict[str, float], runs: dict[str, list[dict[str, Any]]], models: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Medians per engine of the peer run, and ratios to the baseline measured in that same run."""
    weights = {
        BASELINE: models["openvino_int4"].weights_bytes / 2**20,
        "openvino-genai-defaults": models["openvino_int4"].weights_bytes / 2**20,
        "pytorch-eager-fp32": None,  # safetensors of the Hugging Face folder, not an nbkit model
    }
    labels = {
        BASELINE: models["openvino_int4"].label,
        "openvino-genai-defaults": models["openvino_int4"].label,
        "pytorch-eager-fp32": "fp32",
    }
    summary: dict[str, dict[str, Any]] = {}
    for engine, engine_runs in runs.items():
        tokens = [r["decode_tokens_per_s"] for r in engine_runs]
        ttfts = [r["ttft_ms"] for r in engine_runs]
        summary[engine] = {
            "model": labels[engine],
            "weights_mib": weights[engine],
            "load_s": loaded_s[engine],
            "median_decode_tokens_per_s": statistics.median(tokens),
            "median_ttft_ms": statistics.median(ttfts),
            "min_decode_tokens_per_s": min(tokens),
            "max_decode_tokens_per_s": max(tokens),
            "new_tokens": sorted({r["new_tokens"] for r in engine_runs}),
        }
    base = summary[BASELINE]
    for row in summary.values():
        row["tokens_per_s_ratio"] = row["median_decode_tokens_per_s"] / base["median_decode_tokens_per_s"]
        row["ttft_ms_ratio"] = row["median_ttft_ms"] / base["median_ttft_ms"]
    return summary


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds of each run")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--quality-tokens",
        type=int,
        default=512,
        help="tokens of text the quality of the nbkit engines is scored on",
    )
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--ort-block-size", type=int, default=64)
    parser.add_argument("--ort-accuracy-level", type=int, default=4)
    parser.add_argument(
        "--pause",
        type=float,
        default=0.5,
        help="seconds between the peer run's turns (lets thread pools idle)",
    )
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated subset of {', '.join(ENGINES)}; {BASELINE}, the baseline, is always measured",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the PyTorch row (default: torch's own, one per core; on a shared, "
        "oversubscribed machine its OpenMP threads spin and 1 thread can be several times faster)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.paths, args.new_tokens, args.torch_threads)
        return 0
    chosen = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(chosen) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {', '.join(unknown)}; choose among {', '.join(ENGINES)}")
    args.engines = [e for e in ENGINES if e == BASELINE or e in chosen]

    from nbkit.engines.registry import get_engine
    from nbkit.infra.versions import machine_summary, versions
    from nbkit.measure.compare import compare_models
    from nbkit.sources.texts import SPEED_PROMPT

    load_before = os.getloadavg()
    print("Preparing models (cached after the first run)...", file=sys.stderr)
    models, paths, skipped = prepare(args)

    # Run 1: the nbkit engines. Both get their engine's untuned runtime (what the peer run gives
    # the baseline too), not what `nbkit tune-device` may have stored in the cache.
    nbkit_models = {BASELINE: models["openvino_int4"]}
    if "ort_int4" in models:
        nbkit_models[ORT] = models["ort_int4"]
    runtimes = {BASELINE: get_engine("openvino").base_runtime("CPU")}
    if ORT in nbkit_models:
        runtimes[ORT] = get_engine("ort").base_runtime("CPU")
    print(f"Comparing {', '.join(nbkit_models)} (quality, then interleaved speed)...", file=sys.stderr)
    comparison = compare_models(
        nbkit_models,
        models["openvino_float"],
        rounds=args.repeats,
        new_tokens=args.new_tokens,
        quality_tokens=args.quality_tokens,
        runtimes=runtimes,
    )

    # Run 2: the peers against the baseline, every row timed by this script.
    peers = [e for e in PEERS if e in args.engines]
    peer_rows: dict[str, dict[str, Any]] = {}
    peer_runs: dict[str, list[dict[str, Any]]] = {}
    if peers:
        loaded_s, peer_runs = run_peers([BASELINE, *peers], paths, args)
        peer_rows = peer_summary(loaded_s, peer_runs, models)
    load_after = os.getloadavg()

    # Every ratio to the baseline, from the run that measured both sides.
    compared = comparison.ratios(BASELINE)
    ratios: dict[str, dict[str, Any]] = {
        name: {"run": "compare_models", "tokens_per_s": r["tokens_per_s"], "ttft_ms": r["ttft_ms"]}
        for name, r in compared.items()
        if name != BASELINE
    }
    for engine in peers:
        row = peer_rows[engine]
        ratios[engine] = {
            "run": "peers",
            "tokens_per_s": row["tokens_per_s_ratio"],
            "ttft_ms": row["ttft_ms_ratio"],
        }

    print(
        f"\n{args.model}: {args.new_tokens} new tokens, greedy, medians of {args.repeats} interleaved rounds; "
        f"x = ratio to {BASELINE} in the same run"
    )
    print(
        f"\n1. nbkit engines (compare_models; quality against the float IR over {args.quality_tokens} tokens)"
    )
    print(comparison.table(BASELINE))
    if peers:
        print("\n2. peers, timed from outside next to the baseline")
        header = ["engine", "model", "weights MiB", "load s", "TTFT ms", "x", "decode tok/s", "min-max", "x"]
        rows = [
            [
                engine,
                row["model"],
                f"{row['weights_mib']:.0f}" if row["weights_mib"] else "-",
                f"{row['load_s']:.1f}",
                f"{row['median_ttft_ms']:.0f}",
                f"{row['ttft_ms_ratio']:.2f}",
                f"{row['median_decode_tokens_per_s']:.1f}",
                f"{row['min_decode_tokens_per_s']:.0f}-{row['max_decode_tokens_per_s']:.0f}",
                f"{row['tokens_per_s_ratio']:.2f}",
            ]
            for engine, row in peer_rows.items()
        ]
        print(format_table(header, rows))
    if ratios:
        print(f"\nratios to {BASELINE}")
        print(
            format_table(
                ["engine", "run", "decode speed x", "TTFT x"],
                [[e, r["run"], f"{r['tokens_per_s']:.2f}", f"{r['ttft_ms']:.2f}"] for e, r in ratios.items()],
            )
        )
    for engine, reason in skipped.items():
        print(f"skipped {engine}: {reason}")
    print(
        f"{os.cpu_count()} CPUs; 1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(above the CPU count, other processes share the cores: expect noisy numbers)"
    )

    report = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "prompt": SPEED_PROMPT,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "quality_tokens": args.quality_tokens,
        "model": args.model,
        "baseline": BASELINE,
        "ort_config": {
            "int4_block_size": args.ort_block_size,
            "int4_accuracy_level": args.ort_accuracy_level,
        },
        "runtimes": {name: runtime.to_dict() for name, runtime in runtimes.items()},
        "machine": {
            **machine_summary(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "torch_threads": args.torch_threads,
        "versions": versions(LIBRARIES),
        "paths": paths,
        "compare_models": comparison.to_dict(),
        "peers": {"summary": peer_rows, "runs": peer_runs},
        "ratios": ratios,
        "skipped": skipped,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
