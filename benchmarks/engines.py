"""Decode speed and time to first token of four ways to run the same small model on this CPU.

1. ``nbkit-openvino``: what ``nbkit quickstart`` runs: ``export_openvino`` + NNCF
   ``CompressionConfig(mode="int4_sym", group_size=64)`` + :class:`nbkit.engines.openvino.chat.ChatSession`
   with ``nbkit.engines.openvino.runtime.DEFAULT_RUNTIME`` (``PERFORMANCE_HINT=LATENCY``).
2. ``openvino-genai-defaults``: the same INT4 IR in ``openvino_genai.LLMPipeline(path, "CPU")``
   with no properties, as a tutorial would write it.
3. ``ort-genai-int4``: Olive's ModelBuilder INT4 (RTN, block size 64 to match NNCF's group
   size; accuracy level 4) in :class:`nbkit.engines.ort.chat.OrtChatSession` (onnxruntime-genai).
4. ``pytorch-eager-fp32``: ``transformers`` ``generate()`` on the float Hugging Face folder.

Every engine answers the same chat-templated prompt with greedy decoding and exactly
``--new-tokens`` new tokens (``min_new_tokens = max_new_tokens``). Each engine lives in its
own persistent worker process (loaded once, so thread pools of one runtime never compete
with another's), and the runs are interleaved round-robin (the order rotates every round)
after one discarded warm-up run each. Reported: medians over ``--repeats`` runs, and ratios
against ``nbkit-openvino``. TTFT and decode speed are measured the same way for every engine,
from outside: TTFT = from the call to the first streamed token, decode tokens/s =
(new tokens - 1) / (end - first token). The runtimes' own numbers (openvino-genai's perf
metrics) are kept in the JSON.

    python benchmarks/engines.py [--repeats 5] [--new-tokens 128] [--cache-dir DIR] [--json PATH]

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
PROMPT = "Write a short story about a robot who learns to paint."
BASELINE = "nbkit-openvino"
ENGINES = ("nbkit-openvino", "openvino-genai-defaults", "ort-genai-int4", "pytorch-eager-fp32")
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


# -- worker side: one engine per process ---------------------------------------------------------


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
    from nbkit import GenerationSettings

    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    if engine == "nbkit-openvino":
        from nbkit.engines.openvino.chat import ChatSession
        from nbkit.engines.openvino.runtime import DEFAULT_RUNTIME

        session = ChatSession(Path(paths["openvino_int4"]), DEFAULT_RUNTIME, settings)
        return lambda: _run_session(session)
    if engine == "ort-genai-int4":
        from nbkit.engines.ort.chat import OrtChatSession

        session = OrtChatSession(Path(paths["ort_int4"]), settings=settings)
        return lambda: _run_session(session)
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

            history = openvino_genai.ChatHistory([{"role": "user", "content": PROMPT}])
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
            [{"role": "user", "content": PROMPT}],
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
    raise ValueError(engine)


def _run_session(session: Any) -> dict[str, Any]:
    session.reset()  # every run is the same single-turn conversation
    clock = _Clock()
    turn = session.send(PROMPT, lambda _: clock.tick())
    end = time.perf_counter()
    m = turn.metrics
    return _measured(clock, end, m.generated_tokens, {"ttft_ms": m.ttft_ms, "tokens_per_s": m.tokens_per_s})


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


def prepare(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, Any], dict[str, str]]:
    """Build (or find in the cache) every model; returns paths, model facts and skipped engines."""
    from nbkit import Cache, CompressionConfig, compress, export_openvino
    from nbkit.engines.ort.deps import olive_available, require_olive
    from nbkit.engines.ort.olive import export_olive
    from nbkit.engines.ort.olive_config import OliveExportConfig
    from nbkit.sources.models import resolve_source

    cache = Cache(args.cache_dir)
    source = resolve_source(args.model)
    paths = {"hf_folder": str(source.hf_folder(cache))}
    float_ir = export_openvino(source, cache=cache)
    int4_ir = compress(float_ir, CompressionConfig(mode="int4_sym", group_size=64), cache=cache)
    paths["openvino_int4"] = str(int4_ir.path)
    facts: dict[str, Any] = {
        "openvino_int4": {"label": int4_ir.label, "weights_mib": int4_ir.weights_bytes / 2**20},
        "hf_folder": {
            "weights_mib": sum(p.stat().st_size for p in Path(paths["hf_folder"]).glob("*.safetensors"))
            / 2**20
        },
    }
    skipped: dict[str, str] = {}
    if olive_available():
        ort = export_olive(
            source, OliveExportConfig("int4", args.ort_block_size, args.ort_accuracy_level), cache=cache
        )
        paths["ort_int4"] = str(ort.path)
        facts["ort_int4"] = {"label": ort.label, "weights_mib": ort.weights_bytes / 2**20}
    else:
        try:
            require_olive()
        except Exception as exc:
            skipped["ort-genai-int4"] = str(exc)
    return paths, facts, skipped


MODEL_OF = {
    "nbkit-openvino": "openvino_int4",
    "openvino-genai-defaults": "openvino_int4",
    "ort-genai-int4": "ort_int4",
    "pytorch-eager-fp32": "hf_folder",
}


class Worker:
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


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--ort-block-size", type=int, default=64)
    parser.add_argument("--ort-accuracy-level", type=int, default=4)
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds between runs (lets thread pools idle)"
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset, in this order")
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

    from nbkit.infra.versions import machine_summary, versions

    load_before = os.getloadavg()
    print("Preparing models (cached after the first run)...", file=sys.stderr)
    paths, facts, skipped = prepare(args)
    engines = [e for e in args.engines.split(",") if e and e not in skipped]
    workers: dict[str, Worker] = {}
    try:
        for engine in engines:
            print(f"Loading {engine}...", file=sys.stderr)
            workers[engine] = Worker(engine, paths, args.new_tokens, args.torch_threads)
        for engine in engines:  # warm-up, discarded
            workers[engine].run()
        runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
        for round_index in range(args.repeats):
            order = engines[round_index % len(engines) :] + engines[: round_index % len(engines)]
            for engine in order:
                time.sleep(args.pause)
                result = workers[engine].run()
                result["round"] = round_index
                runs[engine].append(result)
                print(
                    f"round {round_index + 1}/{args.repeats} {engine:26} {result['decode_tokens_per_s']:6.1f} tok/s "
                    f"TTFT {result['ttft_ms']:6.0f} ms",
                    file=sys.stderr,
                )
    finally:
        for worker in workers.values():
            worker.close()

    summary: dict[str, dict[str, Any]] = {}
    for engine in engines:
        tokens = [r["decode_tokens_per_s"] for r in runs[engine]]
        ttfts = [r["ttft_ms"] for r in runs[engine]]
        model_facts = facts.get(MODEL_OF[engine], {})
        summary[engine] = {
            "model": model_facts.get("label", "fp32" if engine.startswith("pytorch") else ""),
            "weights_mib": model_facts.get("weights_mib"),
            "load_s": workers[engine].loaded_s,
            "median_decode_tokens_per_s": median(tokens),
            "median_ttft_ms": median(ttfts),
            "min_decode_tokens_per_s": min(tokens),
            "max_decode_tokens_per_s": max(tokens),
            "new_tokens": sorted({r["new_tokens"] for r in runs[engine]}),
        }
    base = summary.get(BASELINE)
    for row in summary.values():
        row["decode_speed_vs_nbkit_openvino"] = (
            row["median_decode_tokens_per_s"] / base["median_decode_tokens_per_s"] if base else None
        )
        row["ttft_vs_nbkit_openvino"] = row["median_ttft_ms"] / base["median_ttft_ms"] if base else None

    header = [
        "engine",
        "model",
        "weights MiB",
        "load s",
        "TTFT ms",
        "decode tok/s",
        "min-max",
        "speed x",
        "TTFT x",
    ]
    rows = [
        [
            engine,
            row["model"],
            f"{row['weights_mib']:.0f}" if row["weights_mib"] else "-",
            f"{row['load_s']:.1f}",
            f"{row['median_ttft_ms']:.0f}",
            f"{row['median_decode_tokens_per_s']:.1f}",
            f"{row['min_decode_tokens_per_s']:.0f}-{row['max_decode_tokens_per_s']:.0f}",
            f"{row['decode_speed_vs_nbkit_openvino']:.2f}" if base else "-",
            f"{row['ttft_vs_nbkit_openvino']:.2f}" if base else "-",
        ]
        for engine, row in summary.items()
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    print()
    print(
        f"{args.model}: {args.new_tokens} new tokens, greedy, medians of {args.repeats} interleaved runs; "
        f"x = ratio to {BASELINE}"
    )
    for index, row in enumerate([header, *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
    for engine, reason in skipped.items():
        print(f"skipped {engine}: {reason}")
    load_after = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs; 1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(above the CPU count, other processes share the cores: expect noisy numbers)"
    )

    report = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "prompt": PROMPT,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "model": args.model,
        "ort_config": {
            "int4_block_size": args.ort_block_size,
            "int4_accuracy_level": args.ort_accuracy_level,
        },
        "machine": {
            **machine_summary(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "torch_threads": args.torch_threads,
        "versions": versions(LIBRARIES),
        "paths": paths,
        "summary": summary,
        "skipped": skipped,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
