"""``nbkit serve`` under load: continuous batching against one request at a time, over real HTTP.

Two servers of the bundled model (what ``nbkit.serve()`` builds with no model: the OpenVINO INT4
default), both started at once in this process on free ports:

* ``continuous-batching``: ``max_batch=16``, up to 16 requests decode together in openvino-genai's
  ``ContinuousBatchingPipeline``, each joining and leaving the batch between steps;
* ``one-at-a-time``: ``max_batch=1``, the same pipeline with one sequence; the server queues the
  other requests first come, first served.

At each concurrency level (``--concurrency``), that many clients (the official ``openai`` package,
``AsyncOpenAI``, one asyncio task each) each send ``--requests-per-client`` streaming chat
requests one after the other (greedy, ``max_tokens`` = ``--max-tokens``, prompts that ask for long
answers). The two configurations run alternately, for ``--rounds`` rounds, after a warm-up on
each server; the table shows medians over rounds and the ratio of the two throughputs.

    python benchmarks/serve.py [--concurrency 1,4,16] [--rounds 3] [--requests-per-client 2]
                               [--max-tokens 128] [--json PATH]

The clients run in this process too (one event loop), next to the servers' threads; the machine
is usually shared: read the numbers as rough and check the load average printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this folder is on sys.path: the sibling benchmarks' helpers are shared, not copied.
from engines import format_table
from quickstart import git_revision

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "serve.json"
CONFIGS = {"continuous-batching": 16, "one-at-a-time": 1}  # name -> max_batch
BATCHING, BASELINE = "continuous-batching", "one-at-a-time"
TARGET_RATIO = 2.0  # the bar: continuous batching >= 2x one-at-a-time at concurrency 16
TARGET_CONCURRENCY = 16
LIBRARIES = ("nbkit", "openvino", "openvino-genai", "openvino-tokenizers", "openai", "fastapi", "uvicorn")
METRICS_INTERVAL_S = 0.25

# Short prompts that ask for long answers, so every request runs to (or near) --max-tokens.
PROMPTS = (
    "Write a long story about a dragon who learns to cook.",
    "Explain in detail how a bicycle works.",
    "Describe the history of the Roman Empire.",
    "List twenty fun facts about the ocean.",
    "Write a detailed recipe for chocolate cake.",
    "Explain how computers store numbers, step by step.",
    "Write a letter to a friend about your summer holiday.",
    "Describe a day in the life of a farmer.",
)


# -- statistics ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- one request, one batch of clients -----------------------------------------------------------


async def one_request(client: Any, model: str, prompt: str, max_tokens: int, t0: float) -> dict[str, Any]:
    """Stream one chat answer; times are seconds from ``t0`` (the batch's first send)."""
    sent = time.perf_counter()
    first: float | None = None
    last: float | None = None
    usage: Any = None
    pieces: list[str] = []
    error: str | None = None
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.perf_counter()
                if first is None:
                    first = now
                last = now
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    except Exception as exc:  # recorded and reported; the run goes on
        error = f"{type(exc).__name__}: {exc}"
    done = time.perf_counter()
    text = "".join(pieces)
    return {
        "sent_s": sent - t0,
        "ttft_s": None if first is None else first - sent,
        "last_token_s": None if last is None else last - t0,
        "latency_s": done - sent,
        "completion_tokens": None if usage is None else usage.completion_tokens,
        "prompt_tokens": None if usage is None else usage.prompt_tokens,
        "text_sha1": hashlib.sha1(text.encode()).hexdigest()[:12],
        "chars": len(text),
        "error": error,
    }


async def sample_metrics(root: str, peaks: dict[str, float], stop: asyncio.Event) -> None:
    """Poll ``/metrics`` for the highest running and waiting counts seen during a batch."""
    import httpx

    async with httpx.AsyncClient(timeout=2) as http:
        while not stop.is_set():
            try:
                page = (await http.get(f"{root}/metrics")).text
            except httpx.HTTPError:
                page = ""
            for name in ("nbkit_requests_running", "nbkit_requests_waiting"):
                match = re.search(rf"^{name} ([0-9.e+-]+)$", page, re.MULTILINE)
                if match:
                    peaks[name] = max(peaks.get(name, 0.0), float(match.group(1)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), METRICS_INTERVAL_S)


async def run_batch(
    url: str, root: str, model: str, concurrency: int, requests_per_client: int, max_tokens: int
) -> dict[str, Any]:
    """``concurrency`` clients at once, each sending its requests one after the other."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=url,
        api_key="unused",
        max_retries=0,
        timeout=600,
    )
    peaks: dict[str, float] = {}
    stop = asyncio.Event()

    async def one_client(index: int) -> list[dict[str, Any]]:
        results = []
        for j in range(requests_per_client):
            prompt = PROMPTS[(index * requests_per_client + j) % len(PROMPTS)]
            result = await one_request(client, model, prompt, max_tokens, t0)
            results.append({"client": index, "request": j, "prompt": prompt, **result})
        return results

    sampler = asyncio.create_task(sample_metrics(root, peaks, stop))
    await asyncio.sleep(0)  # let the sampler open its connection before the clock starts
    t0 = time.perf_counter()
    per_client = await asyncio.gather(*(one_client(i) for i in range(concurrency)))
    stop.set()
    await sampler
    await client.close()
    requests = [r for rs in per_client for r in rs]
    return summarize(requests, peaks)


def summarize(requests: list[dict[str, Any]], peaks: dict[str, float]) -> dict[str, Any]:
    ok = [r for r in requests if r["error"] is None and r["completion_tokens"] is not None]
    tokens = [r["completion_tokens"] for r in ok]
    ends = [r["last_token_s"] for r in ok if r["last_token_s"] is not None]
    wall = max(ends) if ends else math.nan  # from the first send (0) to the last token
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    latencies = [r["latency_s"] for r in ok]
    return {
        "requests": len(requests),
        "errors": len(requests) - len(ok),
        "wall_s": wall,
        "completion_tokens": sum(tokens),
        "mean_completion_tokens": statistics.mean(tokens) if tokens else math.nan,
        "min_completion_tokens": min(tokens) if tokens else None,
        "tokens_per_s": sum(tokens) / wall if ends and wall > 0 else math.nan,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "peak_running": peaks.get("nbkit_requests_running"),
        "peak_waiting": peaks.get("nbkit_requests_waiting"),
        "raw": requests,
    }


# -- environment -----------------------------------------------------------------------------------


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--concurrency", default="1,4,16", help="comma-separated numbers of clients at once (default 1,4,16)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument(
        "--requests-per-client", type=int, default=2, help="requests each client sends one after the other"
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every request")
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds between measurements (lets thread pools idle)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--concurrency takes whole numbers separated by commas, not {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency needs at least one number, each >= 1")
    for name in ("rounds", "requests_per_client", "max_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import nbkit
    from nbkit.infra.versions import machine_summary, versions

    started = time.perf_counter()
    load_before = os.getloadavg()
    max_clients = max(args.concurrency)
    servers: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    warmups: dict[str, Any] = {}
    try:
        for name, max_batch in CONFIGS.items():
            print(f"Starting {name} (max_batch={max_batch})...", file=sys.stderr, flush=True)
            load_started = time.perf_counter()
            servers[name] = nbkit.serve(max_batch=max_batch, max_queue=max(64, max_clients))
            print(
                f"  {servers[name].url} in {time.perf_counter() - load_started:.1f} s: {servers[name].scheduling}",
                file=sys.stderr,
                flush=True,
            )
        model = next(iter(servers.values())).model
        for name, server in servers.items():  # warm-up, discarded: one full request, then a short burst
            single = asyncio.run(run_batch(server.url, server.root, server.model, 1, 1, args.max_tokens))
            burst = asyncio.run(run_batch(server.url, server.root, server.model, max_clients, 1, 16))
            warmups[name] = {"single": single, "burst": burst}
        names = list(CONFIGS)
        for round_index in range(args.rounds):
            for level_index, concurrency in enumerate(args.concurrency):
                order = names if (round_index + level_index) % 2 == 0 else names[::-1]
                for name in order:
                    time.sleep(args.pause)
                    server = servers[name]
                    result = asyncio.run(
                        run_batch(
                            server.url,
                            server.root,
                            server.model,
                            concurrency,
                            args.requests_per_client,
                            args.max_tokens,
                        )
                    )
                    runs.append({"round": round_index, "config": name, "concurrency": concurrency, **result})
                    print(
                        f"round {round_index + 1}/{args.rounds} c={concurrency:<3} {name:20} "
                        f"{result['tokens_per_s']:7.1f} tok/s  TTFT p50 {result['ttft_p50_s'] * 1000:6.0f} ms  "
                        f"latency p50 {result['latency_p50_s']:5.2f} s  "
                        f"mean tokens {result['mean_completion_tokens']:.0f}  errors {result['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started

    # Medians over rounds, per (config, concurrency).
    fields = (
        "tokens_per_s",
        "ttft_p50_s",
        "ttft_p95_s",
        "latency_p50_s",
        "latency_p95_s",
        "mean_completion_tokens",
    )
    medians: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in CONFIGS}
    for name in CONFIGS:
        for concurrency in args.concurrency:
            these = [r for r in runs if r["config"] == name and r["concurrency"] == concurrency]
            row: dict[str, Any] = {f: statistics.median(r[f] for r in these) for f in fields}
            row["rounds"] = len(these)
            row["errors"] = sum(r["errors"] for r in these)
            row["min_completion_tokens"] = min((r["min_completion_tokens"] or 0) for r in these)
            row["peak_running"] = max((r["peak_running"] or 0) for r in these)
            row["peak_waiting"] = max((r["peak_waiting"] or 0) for r in these)
            medians[name][str(concurrency)] = row

    # Ratios: of the medians, and per round (both sides measured in that round).
    ratios: dict[str, dict[str, Any]] = {}
    for concurrency in args.concurrency:
        key = str(concurrency)
        per_round = []
        for round_index in range(args.rounds):
            sides = {
                r["config"]: r["tokens_per_s"]
                for r in runs
                if r["round"] == round_index and r["concurrency"] == concurrency
            }
            per_round.append(sides[BATCHING] / sides[BASELINE])
        ratios[key] = {
            "tokens_per_s_ratio": medians[BATCHING][key]["tokens_per_s"]
            / medians[BASELINE][key]["tokens_per_s"],
            "per_round": per_round,
        }

    # Same greedy answers from both configurations? (batched kernels may differ in the last bits)
    same_text: dict[str, float] = {}
    for concurrency in args.concurrency:
        texts = {
            name: {
                (r["round"], q["client"], q["request"]): q["text_sha1"]
                for r in runs
                if r["config"] == name and r["concurrency"] == concurrency
                for q in r["raw"]
            }
            for name in CONFIGS
        }
        keys = texts[BATCHING].keys() & texts[BASELINE].keys()
        same_text[str(concurrency)] = sum(texts[BATCHING][k] == texts[BASELINE][k] for k in keys) / max(
            len(keys), 1
        )

    print(
        f"\nnbkit serve, {model}: {args.requests_per_client} streaming chat requests per client, "
        f"max_tokens {args.max_tokens}, greedy; medians of {args.rounds} interleaved rounds"
    )
    header = [
        "config",
        "max_batch",
        "clients",
        "tok/s",
        "TTFT p50 ms",
        "TTFT p95 ms",
        "latency p50 s",
        "latency p95 s",
        "mean tokens",
        "peak running/waiting",
        "errors",
    ]
    rows = []
    for name, max_batch in CONFIGS.items():
        for concurrency in args.concurrency:
            m = medians[name][str(concurrency)]
            rows.append(
                [
                    name,
                    str(max_batch),
                    str(concurrency),
                    f"{m['tokens_per_s']:.1f}",
                    f"{m['ttft_p50_s'] * 1000:.0f}",
                    f"{m['ttft_p95_s'] * 1000:.0f}",
                    f"{m['latency_p50_s']:.2f}",
                    f"{m['latency_p95_s']:.2f}",
                    f"{m['mean_completion_tokens']:.0f}",
                    f"{m['peak_running']:.0f}/{m['peak_waiting']:.0f}",
                    str(m["errors"]),
                ]
            )
    print(format_table(header, rows))
    print(f"\n{BATCHING} / {BASELINE} throughput (tok/s)")
    ratio_rows = [
        [
            str(concurrency),
            f"{ratios[str(concurrency)]['tokens_per_s_ratio']:.2f}",
            " ".join(f"{x:.2f}" for x in ratios[str(concurrency)]["per_round"]),
            f"{same_text[str(concurrency)]:.0%}",
        ]
        for concurrency in args.concurrency
    ]
    print(format_table(["clients", "ratio of medians", "per round", "same answers"], ratio_rows))
    verdict: dict[str, Any] = {"target_ratio": TARGET_RATIO, "concurrency": TARGET_CONCURRENCY}
    if str(TARGET_CONCURRENCY) in ratios:
        ratio = ratios[str(TARGET_CONCURRENCY)]["tokens_per_s_ratio"]
        verdict.update(ratio=ratio, passed=ratio >= TARGET_RATIO)
        print(
            f"\ntarget: continuous batching >= {TARGET_RATIO:.1f}x one-at-a-time at {TARGET_CONCURRENCY} clients: "
            f"{ratio:.2f}x {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}"
        )
    else:
        verdict.update(ratio=None, passed=None)
        print(f"\ntarget: not measured (add {TARGET_CONCURRENCY} to --concurrency)")
    total_errors = sum(r["errors"] for r in runs)
    print(
        f"{os.cpu_count()} CPUs; 1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"(above the CPU count, other processes share the cores: expect noisy numbers); {elapsed:.0f} s in all"
    )

    report = {
        "benchmark": "nbkit serve",
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "configs": CONFIGS,
        "settings": {
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "requests_per_client": args.requests_per_client,
            "max_tokens": args.max_tokens,
            "pause_s": args.pause,
            "prompts": PROMPTS,
            "endpoint": "/v3/chat/completions, stream=True, include_usage, temperature 0",
        },
        "definitions": {
            "tokens_per_s": "sum of completion_tokens / (last content chunk of the batch - first send)",
            "ttft_s": "client side, from sending a request to its first content chunk (queueing included)",
            "latency_s": "client side, from sending a request to the end of its stream",
        },
        "medians": medians,
        "ratios": ratios,
        "same_answers": same_text,
        "target": verdict,
        "errors": total_errors,
        "elapsed_s": elapsed,
        "machine": {
            **machine_summary(),
            "cpu_model": cpu_model(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "versions": versions(LIBRARIES),
        "git": git_revision(Path(__file__).resolve().parent.parent),
        "warmups": warmups,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {args.json}")
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
