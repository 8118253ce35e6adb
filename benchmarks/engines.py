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
   * ``pytorch-eager-fp32``: ``transformers`` ``generate()`` on the float Hugging Face folder;
   * ``ort-genai-int4`` again (when Olive is installed), through nbkit's ORT chat session, so
     that every engine stands in one table timed one way;
   * ``llama.cpp-q4_1``: llama.cpp through llama-cpp-python (``pip install "nbkit[bench]"``,
     which compiles llama.cpp) on the bundled GGUF file itself, the Q4_1 weights nbkit's float
     model was dequantized from; ``Llama(path, n_ctx, n_threads=<physical cores>)``;
   * ``llama.cpp-q8_0`` and ``llama.cpp-q4_0``: that GGUF requantized by
     ``llama_cpp.llama_model_quantize`` (``allow_requantize``) into ``benchmarks/.cache/engines/``.
     They are requantized from Q4_1, not quantized from the original float weights: their
     quality is at best that of the Q4_1 file, and "Q8_0" here is not the usual Q8_0 model.

   No nbkit session runs PyTorch or llama.cpp, so this run times every row (the baseline too)
   from outside, the same way: TTFT = from the call to the first streamed token, decode
   tokens/s = (new tokens - 1) / (end - first token). openvino-genai's own numbers are kept in
   the JSON. Each worker also reports its load time (imports and model load, no warm-up) and its
   peak resident memory (Linux's ``VmHWM``, so the interpreter and the libraries it imported
   count too), and the table names the best engine per metric (decode, TTFT, load, memory, weights).

   llama.cpp is fed the very prompt token ids the PyTorch row gets (the Hugging Face
   tokenizer's chat template); each worker reports the ids its engine builds for the prompt
   (llama.cpp's own tokenizer too), and the table prints their count and whether they match.
   It decodes greedily (``temp=0``: llama.cpp's greedy sampler) with ``Llama.generate()``,
   which yields tokens without looking for EOS (the EOS check lives in ``create_completion``):
   taking exactly ``--new-tokens`` tokens from it ignores EOS, as ``min_new_tokens`` does for
   the others. ``Llama.reset()`` before each run stops llama-cpp-python from reusing the
   previous run's KV cache for the same prompt, so every run prefills the whole prompt.

Every model answers the same chat-templated prompt (:data:`nbkit.sources.texts.SPEED_PROMPT`)
with greedy decoding and exactly ``--new-tokens`` new tokens.

    python benchmarks/engines.py [--repeats 5] [--new-tokens 128] [--quality-tokens 512]
                                 [--cache-dir DIR] [--json PATH] [--engines a,b,...]

Needs Olive for the ORT engine (``pip install "nbkit[olive]"``) and llama-cpp-python for the
llama.cpp rows (``pip install "nbkit[bench]"``); without them those rows are skipped with the
reason. The machine is usually shared: read the numbers as rough.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "engines.json"
BASELINE = "nbkit-openvino"
ORT = "ort-genai-int4"
LLAMA_CPP = {"llama.cpp-q4_1": "", "llama.cpp-q8_0": "Q8_0", "llama.cpp-q4_0": "Q4_0"}  # "": the file itself
PEERS = ("openvino-genai-defaults", "pytorch-eager-fp32", *LLAMA_CPP)
ENGINES = (BASELINE, ORT, *PEERS)
NBKIT_SESSIONS = {BASELINE: ("openvino", "openvino_int4"), ORT: ("ort", "ort_int4")}  # engine, model
# The requantized GGUF files: this benchmark's own cache, not nbkit's.
LLAMA_CPP_CACHE = Path(__file__).resolve().parent / ".cache" / "engines" / "llama.cpp"
INSTALL_BENCH = (
    'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install "nbkit[bench]" (llama-cpp-python; compiles llama.cpp, minutes)'
)
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
    "llama-cpp-python",
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


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    Linux's ``VmHWM``: ``ru_maxrss`` will not do, Linux keeps it across ``exec``, so a worker
    would report the parent's peak when that is higher.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB elsewhere (not macOS)


def _physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _load(
    engine: str, paths: dict[str, str], new_tokens: int, torch_threads: int | None
) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]:
    """A function that runs one generation and returns its measurements, and the prompt's token
    ids as this engine builds them (``prompt_ids``; more lists when it was checked several ways)."""
    from nbkit.sources.texts import SPEED_PROMPT

    if engine in NBKIT_SESSIONS:
        from nbkit.config import GenerationSettings
        from nbkit.engines.registry import get_engine

        name, model = NBKIT_SESSIONS[engine]
        nbkit_engine = get_engine(name)
        settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        # The runtime compare_models is given for this model too (see main). No warm-up at load:
        # the peer run warms every engine up the same way, and load times stay comparable.
        session = nbkit_engine.open_chat(
            Path(paths[model]), nbkit_engine.base_runtime("CPU"), settings, warm_up=False
        )
        conversation = [{"role": "user", "content": SPEED_PROMPT}]
        if engine == BASELINE:
            import openvino_genai

            text = session.tokenizer.apply_chat_template(
                openvino_genai.ChatHistory(conversation), add_generation_prompt=True
            )
            ids = session.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0].tolist()
        else:  # what the ORT session encodes for a turn
            ids = [int(i) for i in session._encode(conversation)]

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
                {
                    "ttft_ms": metrics.ttft_ms,
                    "tokens_per_s": metrics.tokens_per_s,
                    "input_tokens": metrics.input_tokens,
                },
                turn.text,
            )

        return run_session, {"prompt_ids": ids}
    if engine == "openvino-genai-defaults":
        import openvino_genai

        pipeline = openvino_genai.LLMPipeline(paths["openvino_int4"], "CPU")
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = new_tokens
        config.do_sample = False
        tokenizer = pipeline.get_tokenizer()
        history = openvino_genai.ChatHistory([{"role": "user", "content": SPEED_PROMPT}])
        text = tokenizer.apply_chat_template(history, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False).input_ids.data[0].tolist()

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
                {
                    "ttft_ms": perf.get_ttft().mean,
                    "tokens_per_s": perf.get_throughput().mean,
                    "input_tokens": int(perf.get_num_input_tokens()),
                },
                result.texts[0] if result.texts else "",
            )

        return run_ov, {"prompt_ids": ids}
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
        prompt_length = int(ids["input_ids"].shape[-1])

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
            new = int(out.shape[-1] - prompt_length)
            text = tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)
            return _measured(clock, end, new, {"torch_threads": torch.get_num_threads()}, text)

        return run_torch, {"prompt_ids": ids["input_ids"][0].tolist()}
    if engine in LLAMA_CPP:
        import llama_cpp

        ids = json.loads(paths["prompt_ids"])  # the Hugging Face tokenizer's, as the PyTorch row's
        threads = _physical_cores()
        llm = llama_cpp.Llama(
            model_path=paths[engine],
            n_ctx=-(-(len(ids) + new_tokens) // 256) * 256,  # room for the prompt and the answer
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        # llama.cpp's own tokenizer on the same templated text: a check, not what it is fed.
        own_ids = llm.tokenize(paths["prompt_text"].encode(), add_bos=False, special=True)

        def run_llama() -> dict[str, Any]:
            llm.reset()  # else the previous run's KV cache of this prompt is reused (no prefill)
            clock = _Clock()
            tokens: list[int] = []
            pieces: list[bytes] = []
            # greedy; generate() yields tokens until told to stop and never checks for EOS
            for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
                pieces.append(llm.detokenize([token], prev_tokens=tokens))  # stream text as the others do
                clock.tick()
                tokens.append(token)
                if len(tokens) == new_tokens:
                    break
            end = time.perf_counter()
            text = b"".join(pieces).decode("utf-8", errors="replace")
            return _measured(clock, end, len(tokens), {"n_threads": threads}, text)

        return run_llama, {"prompt_ids": ids, "llama_cpp_tokenizer_ids": own_ids, "n_threads": threads}
    raise ValueError(
        f"{engine} is not timed in the peer run; choose among {BASELINE}, {ORT}, {', '.join(PEERS)}"
    )


def _measured(
    clock: _Clock, end: float, tokens: int, engine_reported: dict[str, float], text: str
) -> dict[str, Any]:
    first = clock.first if clock.first is not None else end
    decode_s = end - first
    return {
        "ttft_ms": (first - clock.started) * 1000,
        "decode_tokens_per_s": (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0,
        "total_s": end - clock.started,
        "new_tokens": tokens,
        "peak_rss_mib": _peak_rss_mib(),
        "engine_reported": engine_reported,
        "text": text,
    }


def worker_main(engine: str, paths_json: str, new_tokens: int, torch_threads: int | None) -> None:
    """Load ``engine``, then answer one line per ``run`` command on stdin with a JSON line."""
    started = time.perf_counter()
    run, prompt = _load(engine, json.loads(paths_json), new_tokens, torch_threads)
    loaded = {"loaded_s": time.perf_counter() - started, "peak_rss_after_load_mib": _peak_rss_mib()}
    print(json.dumps({**loaded, **prompt}), flush=True)
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
    paths.update(_prompt_ids(paths["hf_folder"]))  # the prompt every row's ids are checked against
    llama_rows = [e for e in LLAMA_CPP if e in args.engines]
    if llama_rows:
        gguf_files, why_not = llama_cpp_models(source, llama_rows)
        paths.update({engine: str(path) for engine, path in gguf_files.items()})
        skipped.update(why_not)
    return models, paths, skipped


def _prompt_ids(hf_folder: str) -> dict[str, str]:
    """The chat-templated speed prompt (text, and token ids as JSON) of the Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    from nbkit.sources.texts import SPEED_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    messages = [{"role": "user", "content": SPEED_PROMPT}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    return {"prompt_text": text, "prompt_ids": json.dumps([int(i) for i in ids])}


def llama_cpp_models(source: Any, engines: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """The GGUF file of each llama.cpp row (requantized into LLAMA_CPP_CACHE once), and why a row is skipped."""
    from importlib.metadata import version

    from nbkit.infra.cache import cache_key
    from nbkit.sources.models import GGUFFile

    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        reason = f"llama_cpp is not importable ({exc}); install it with {INSTALL_BENCH}"
        return {}, dict.fromkeys(engines, reason)
    if not isinstance(source, GGUFFile):
        reason = (
            f"llama.cpp runs GGUF files; {source.name} is a {source.kind or type(source).__name__}, not one"
        )
        return {}, dict.fromkeys(engines, reason)
    files: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    # The source's identity (a wheel's version, else the file's fingerprint) and llama.cpp's version name the file.
    tag = f"llama-cpp-{version('llama-cpp-python')}-{cache_key(source.identity())[:12]}"
    for engine in engines:
        ftype = LLAMA_CPP[engine]
        if not ftype:
            files[engine] = source.path
            continue
        out = LLAMA_CPP_CACHE / f"{source.path.stem}.requantized-{ftype}.{tag}.gguf"
        if not out.is_file():
            print(f"Requantizing {source.path.name} to {ftype} (llama_model_quantize)...", file=sys.stderr)
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            # In a child process: llama.cpp logs every tensor, and a crash stays there.
            done = subprocess.run(
                [sys.executable, __file__, "--requantize", str(source.path), str(partial), ftype],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0 or not partial.is_file():
                partial.unlink(missing_ok=True)
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                skipped[engine] = (
                    f"llama_model_quantize to {ftype} failed ({done.returncode}): {' | '.join(tail)}"
                )
                continue
            partial.rename(out)
        files[engine] = out
    return files, skipped


def requantize_main(source: str, out: str, ftype: str) -> int:
    """``--requantize SRC OUT FTYPE``: llama.cpp's quantizer, allowed to requantize quantized tensors."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True  # the source is Q4_1 already: dequantized, then quantized again
    params.nthread = _physical_cores()
    return int(llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params)))


def gguf_tensor_types(path: str) -> dict[str, int]:
    """How many tensors of each type a GGUF file holds (what a requantized file really is)."""
    import collections

    import gguf

    reader = gguf.GGUFReader(path)
    return dict(collections.Counter(tensor.tensor_type.name for tensor in reader.tensors))


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
        self.loaded = self._read()  # loaded_s, peak_rss_after_load_mib, prompt_ids (...)
        self.loaded_s = float(self.loaded["loaded_s"])

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
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Load every engine in its own process, one discarded warm-up each, then interleaved rounds.

    Returns what each worker reported once loaded (load time, memory, prompt ids) and its runs."""
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
    return {engine: worker.loaded for engine, worker in workers.items()}, runs


def _model_row(engine: str, models: dict[str, Any], paths: dict[str, str]) -> tuple[str, float | None]:
    """The model label and weights (MiB) of a peer-run row."""
    if engine in (BASELINE, "openvino-genai-defaults"):
        return models["openvino_int4"].label, models["openvino_int4"].weights_bytes / 2**20
    if engine == ORT:
        return models["ort_int4"].label, models["ort_int4"].weights_bytes / 2**20
    if engine in LLAMA_CPP:
        path = Path(paths[engine])
        ftype = LLAMA_CPP[engine]
        return (f"gguf {ftype} from Q4_1" if ftype else "gguf Q4_1"), path.stat().st_size / 2**20
    return "fp32", None  # safetensors of the Hugging Face folder, not an nbkit model


# (label, summary field, True when higher is better): what "where each wins" ranks.
WIN_METRICS = (
    ("decode tok/s", "median_decode_tokens_per_s", True),
    ("TTFT ms", "median_ttft_ms", False),
    ("load s", "load_s", False),
    ("peak RSS MiB", "peak_rss_mib", False),
    ("weights MiB", "weights_mib", False),
)


def peer_summary(
    loaded: dict[str, dict[str, Any]],
    runs: dict[str, list[dict[str, Any]]],
    models: dict[str, Any],
    paths: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Medians per engine of the peer run, and ratios to the baseline measured in that same run."""
    reference_ids = json.loads(paths["prompt_ids"])
    summary: dict[str, dict[str, Any]] = {}
    for engine, engine_runs in runs.items():
        tokens = [r["decode_tokens_per_s"] for r in engine_runs]
        ttfts = [r["ttft_ms"] for r in engine_runs]
        label, weights = _model_row(engine, models, paths)
        info = loaded[engine]
        summary[engine] = {
            "model": label,
            "weights_mib": weights,
            "load_s": info["loaded_s"],
            "peak_rss_after_load_mib": info["peak_rss_after_load_mib"],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in engine_runs),
            "median_decode_tokens_per_s": statistics.median(tokens),
            "median_ttft_ms": statistics.median(ttfts),
            "min_decode_tokens_per_s": min(tokens),
            "max_decode_tokens_per_s": max(tokens),
            "new_tokens": sorted({r["new_tokens"] for r in engine_runs}),
            # the prompt as this engine tokenizes it, against the Hugging Face tokenizer's ids
            "prompt_tokens": len(info["prompt_ids"]),
            "prompt_ids_match": info["prompt_ids"] == reference_ids,
            # what the engine itself counted during the runs, where it says
            "engine_input_tokens": sorted(
                {
                    r["engine_reported"]["input_tokens"]
                    for r in engine_runs
                    if "input_tokens" in r["engine_reported"]
                }
            ),
        }
        if "llama_cpp_tokenizer_ids" in info:
            summary[engine]["llama_cpp_tokenizer_ids_match"] = (
                info["llama_cpp_tokenizer_ids"] == reference_ids
            )
            summary[engine]["n_threads"] = info["n_threads"]
            summary[engine]["tensor_types"] = gguf_tensor_types(paths[engine])
    base = summary[BASELINE]
    for row in summary.values():
        row["tokens_per_s_ratio"] = row["median_decode_tokens_per_s"] / base["median_decode_tokens_per_s"]
        row["ttft_ms_ratio"] = row["median_ttft_ms"] / base["median_ttft_ms"]
        row["load_s_ratio"] = row["load_s"] / base["load_s"]
        row["peak_rss_ratio"] = row["peak_rss_mib"] / base["peak_rss_mib"]
    return summary


def where_each_wins(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The best engine of the peer run per metric, the next best, and by how much it leads."""
    wins: dict[str, dict[str, Any]] = {}
    for label, field, higher_is_better in WIN_METRICS:
        ranked = sorted(
            ((row[field], engine) for engine, row in summary.items() if row.get(field)),
            reverse=higher_is_better,
        )
        if not ranked:
            continue
        (best, engine), (next_value, next_engine) = ranked[0], ranked[1] if len(ranked) > 1 else ranked[0]
        wins[label] = {
            "field": field,
            "higher_is_better": higher_is_better,
            "engine": engine,
            "value": best,
            "next_engine": next_engine,
            "next_value": next_value,
            # how many times better than the next best (>= 1)
            "lead": (best / next_value if higher_is_better else next_value / best)
            if best and next_value
            else None,
            "baseline_value": summary[BASELINE].get(field),
        }
    return wins


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
    parser.add_argument("--requantize", nargs=3, metavar=("SRC", "OUT", "FTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.paths, args.new_tokens, args.torch_threads)
        return 0
    if args.requantize:
        return requantize_main(*args.requantize)
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

    # Run 2: the peers against the baseline, every row timed by this script; the ORT model too, so
    # that one table holds every engine measured one way.
    peers = [e for e in PEERS if e in args.engines and e not in skipped]
    peer_rows: dict[str, dict[str, Any]] = {}
    peer_runs: dict[str, list[dict[str, Any]]] = {}
    peer_loaded: dict[str, dict[str, Any]] = {}
    wins: dict[str, dict[str, Any]] = {}
    if peers:
        ort_peer = [ORT] if ORT in nbkit_models else []
        peer_loaded, peer_runs = run_peers([BASELINE, *ort_peer, *peers], paths, args)
        peer_rows = peer_summary(peer_loaded, peer_runs, models, paths)
        wins = where_each_wins(peer_rows)
    load_after = os.getloadavg()

    # Every ratio to the baseline, from the run that measured both sides.
    compared = comparison.ratios(BASELINE)
    ratios: dict[str, dict[str, Any]] = {
        name: {"run": "compare_models", "tokens_per_s": r["tokens_per_s"], "ttft_ms": r["ttft_ms"]}
        for name, r in compared.items()
        if name != BASELINE
    }
    for engine, row in peer_rows.items():
        if engine == BASELINE:
            continue
        ratios[engine if engine != ORT else f"{ORT} (peers)"] = {
            "run": "peers",
            "tokens_per_s": row["tokens_per_s_ratio"],
            "ttft_ms": row["ttft_ms_ratio"],
            "load_s": row["load_s_ratio"],
            "peak_rss": row["peak_rss_ratio"],
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
        header = [
            "engine",
            "model",
            "weights MiB",
            "prompt tok",
            "load s",
            "x",
            "peak RSS MiB",
            "x",
            "TTFT ms",
            "x",
            "decode tok/s",
            "min-max",
            "x",
        ]
        rows = [
            [
                engine,
                row["model"],
                _number(row["weights_mib"]),
                f"{row['prompt_tokens']}{'' if row['prompt_ids_match'] else ' (other ids!)'}",
                f"{row['load_s']:.1f}",
                f"{row['load_s_ratio']:.2f}",
                f"{row['peak_rss_mib']:.0f}",
                f"{row['peak_rss_ratio']:.2f}",
                f"{row['median_ttft_ms']:.0f}",
                f"{row['ttft_ms_ratio']:.2f}",
                f"{row['median_decode_tokens_per_s']:.1f}",
                f"{row['min_decode_tokens_per_s']:.0f}-{row['max_decode_tokens_per_s']:.0f}",
                f"{row['tokens_per_s_ratio']:.2f}",
            ]
            for engine, row in peer_rows.items()
        ]
        print(format_table(header, rows))
        reference = json.loads(paths["prompt_ids"])
        matching = [e for e, row in peer_rows.items() if row["prompt_ids_match"]]
        own = {
            row["llama_cpp_tokenizer_ids_match"]
            for row in peer_rows.values()
            if "llama_cpp_tokenizer_ids_match" in row
        }
        print(
            f"prompt: {len(reference)} token ids from the Hugging Face tokenizer's chat template; "
            f"{len(matching)} of {len(peer_rows)} engines build the same ids"
            + (f"; llama.cpp's own tokenizer {'agrees' if own == {True} else 'differs'}" if own else "")
        )
        print("\nwhere each wins (peer run; lead = times better than the next best)")
        print(
            format_table(
                ["metric", "best", "value", "next best", "value", "lead", f"{BASELINE}"],
                [
                    [
                        label,
                        w["engine"],
                        _number(w["value"], 1),
                        w["next_engine"],
                        _number(w["next_value"], 1),
                        _number(w["lead"], 2),
                        _number(w["baseline_value"], 1),
                    ]
                    for label, w in wins.items()
                ],
            )
        )
    if ratios:
        print(f"\nratios to {BASELINE}")

        def cell(r: dict[str, Any], key: str) -> str:
            return _number(r.get(key), 2)

        print(
            format_table(
                ["engine", "run", "decode speed x", "TTFT x", "load x", "peak RSS x"],
                [
                    [
                        e,
                        r["run"],
                        cell(r, "tokens_per_s"),
                        cell(r, "ttft_ms"),
                        cell(r, "load_s"),
                        cell(r, "peak_rss"),
                    ]
                    for e, r in ratios.items()
                ],
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
        "prompt_ids": json.loads(paths["prompt_ids"]),
        "peers": {"summary": peer_rows, "loaded": peer_loaded, "runs": peer_runs},
        "where_each_wins": wins,
        "ratios": ratios,
        "skipped": skipped,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
