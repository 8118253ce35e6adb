"""The ``nbkit`` command line's arguments: :func:`build_parser` and the argument types.

The commands themselves live in :mod:`nbkit.cli.main`, which dispatches on ``args.command``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nbkit.config import NOT_OFFERED_FORMATS, CompressionMode
from nbkit.infra.cache import CACHE_KINDS
from nbkit.infra.versions import version_of
from nbkit.sources.models import DEFAULT_MODEL


def _group_size(text: str) -> int | str | None:
    if text.lower() in ("none", "-1", "per-channel"):
        return None
    if text.lower() == "auto":
        return "auto"  # resolved against the model's channel sizes by compress()
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"group size must be an integer, 'auto' or 'none', not {text!r}"
        ) from None


def _property(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"properties are KEY=VALUE, not {text!r}")
    parsed: Any = value
    if value.isdigit():
        parsed = int(value)
    elif value.lower() in ("true", "false"):
        parsed = value.lower() == "true"
    return key.strip().upper(), parsed


def _list_of(parse: Any) -> Any:
    def parse_list(text: str) -> list[Any]:
        return [parse(item.strip()) for item in text.split(",") if item.strip()]

    return parse_list


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios are numbers in [0, 1], not {text!r}") from None


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"bundled name, folder, .gguf file or hub id (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--weight-format", choices=["fp32", "fp16"], default="fp32", help="float format of the exported IR"
    )


def _layer_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _mode_list() -> str:
    return ", ".join(mode.value for mode in CompressionMode)


def _add_compression(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        default="int4_sym",
        help=f"{_mode_list()} (default int4_sym; not offered, with the reason if asked: "
        f"{', '.join(NOT_OFFERED_FORMATS)})",
    )
    parser.add_argument(
        "--group-size",
        type=_group_size,
        default="auto",
        help="4-bit group size, 'none' for per-channel; default 'auto': the largest valid one",
    )
    parser.add_argument(
        "--ratio", type=float, default=None, help="share of layers in the 4-bit mode, 0..1 (default 1)"
    )
    _add_compression_options(parser)


def _add_compression_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all-layers", action="store_true", help="also compress embeddings and the last layer to 4 bits"
    )
    parser.add_argument(
        "--backup-mode",
        default="int8_asym",
        help="precision of layers left out of 4-bit: int8_asym, int8_sym or none",
    )
    parser.add_argument(
        "--group-size-fallback",
        default="error",
        help="error, ignore or adjust when a layer does not fit the group size",
    )
    parser.add_argument(
        "--keep-float",
        type=_layer_list,
        default=(),
        metavar="LAYERS",
        help="comma-separated layers kept in float, by module name (lm_head, model.embed_tokens, "
        "model.layers.0.mlp.down_proj, ...)",
    )
    parser.add_argument(
        "--keep-int8",
        type=_layer_list,
        default=(),
        metavar="LAYERS",
        help="comma-separated layers compressed to INT8 instead of the 4-bit mode (a second NNCF pass)",
    )
    data = parser.add_argument_group(
        "data-aware compression (4-bit modes; calibrates on text that ships with Python, no download)"
    )
    data.add_argument("--awq", action="store_true", help="activation-aware weight quantization")
    data.add_argument(
        "--scale-estimation", action="store_true", help="fit the 4-bit scales to the calibration activations"
    )
    data.add_argument("--gptq", action="store_true", help="GPTQ (not with --awq or --lora-correction)")
    data.add_argument(
        "--lora-correction",
        action="store_true",
        help="low-rank INT8 adapters that cancel part of the 4-bit error (int4/nf4; not with --gptq)",
    )
    data.add_argument(
        "--sensitivity-metric",
        default=None,
        help="how layers are ranked for the backup precision when --ratio < 1: weight_quantization_error "
        "(data-free), hessian_input_activation, mean_activation_variance, max_activation_variance, "
        "mean_activation_magnitude",
    )
    data.add_argument(
        "--calibration-samples", type=int, default=32, help="calibration sequences (default 32)"
    )
    data.add_argument(
        "--calibration-tokens", type=int, default=128, help="tokens per calibration sequence (default 128)"
    )


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=["openvino", "ort", "olive"],
        default=None,
        help="openvino (default; OpenVINO IR + NNCF) or ort (Microsoft Olive -> ONNX Runtime GenAI; "
        '"olive" names it too; needs pip install "nbkit[olive]")',
    )
    parser.add_argument(
        "--precision",
        choices=["int4", "int8", "fp16", "fp32"],
        default=None,
        help="ort: precision (default int4)",
    )
    parser.add_argument(
        "--int4-block-size", type=int, default=None, help="ort int4: 16, 32, 64, 128 or 256 (default 32)"
    )
    parser.add_argument(
        "--int4-accuracy-level",
        type=int,
        default=None,
        help="ort int4: MatMul compute type, 1 fp32, 2 fp16, 3 bf16, 4 int8 (default 4)",
    )
    parser.add_argument(
        "--int4-asym",
        action="store_true",
        help="ort int4: asymmetric blocks with zero points (default symmetric)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbkit", description="Export, compress, measure and chat with small language models."
    )
    parser.add_argument("--version", action="version", version=f"nbkit {version_of('nbkit')}")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache folder (default: $NBKIT_CACHE_DIR or the user cache folder)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("models", help="list bundled and cached models")
    devices = commands.add_parser("devices", help="list the devices OpenVINO sees")
    devices.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="export a model to a float OpenVINO IR")
    _add_model(export)
    _add_engine(export)

    compress = commands.add_parser("compress", help="compress a model's weights with NNCF")
    _add_model(compress)
    _add_compression(compress)

    chat = commands.add_parser(
        "chat", help="chat with a model (an OpenVINO folder, or any model source compressed first)"
    )
    _add_model(chat)
    _add_compression(chat)
    _add_engine(chat)
    chat.add_argument("--prompt", help="answer this one message and exit")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--device", default="CPU", help="CPU, GPU, NPU, AUTO, ... (see `nbkit devices`)")
    chat.add_argument(
        "--hint", default=None, help="PERFORMANCE_HINT: LATENCY (default), THROUGHPUT or DEFAULT"
    )
    chat.add_argument(
        "-p", "--property", type=_property, action="append", help="extra OpenVINO property KEY=VALUE"
    )
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument(
        "--temperature", type=float, default=None, help="sample at this temperature (default: greedy)"
    )
    chat.add_argument("--top-p", type=float, default=0.9)
    chat.add_argument("--repetition-penalty", type=float, default=1.0)
    assisted = chat.add_mutually_exclusive_group()
    assisted.add_argument(
        "--prompt-lookup",
        action="store_true",
        help="prompt-lookup decoding: guess the next tokens from the prompt (OpenVINO engine)",
    )
    assisted.add_argument(
        "--draft",
        metavar="FOLDER",
        help="speculative decoding with this draft model folder (same tokenizer, e.g. the INT4 build)",
    )
    chat.add_argument(
        "--candidates", type=int, default=5, help="guesses per step with --prompt-lookup/--draft"
    )
    chat.add_argument("--max-ngram", type=int, default=3, help="--prompt-lookup: longest n-gram matched")

    serve = commands.add_parser(
        "serve",
        help="serve a model over HTTP: OpenAI-compatible, OpenVINO Model Server's /v3 paths",
        description="Serves chat and text completions (streaming or not) on OVMS's /v3 paths and "
        "OpenAI's /v1 paths, with /health, /v2/health/ready and /metrics. OpenVINO models use "
        "continuous batching; ONNX Runtime GenAI models answer one request at a time, the rest wait in "
        "order. Listens on 127.0.0.1 unless --host says otherwise. SIGINT, SIGTERM or SIGHUP stop it.",
    )
    _add_model(serve)
    _add_compression(serve)
    _add_engine(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 takes a free one)")
    serve.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: $NBKIT_API_KEY; none when unset)",
    )
    serve.add_argument("--model-name", default=None, help="the model id clients send (default: the folder's name)")
    serve.add_argument("--max-batch", type=int, default=8, help="requests decoded together (OpenVINO; default 8)")
    serve.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503 (default 64)")
    serve.add_argument(
        "--max-tokens", type=int, default=256, help="answer length when a request gives no max_tokens (default 256)"
    )
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    serve.add_argument(
        "--cors-origin", action="append", default=None, help="allow browser pages of this origin (repeatable; default none)"
    )
    serve.add_argument(
        "--shutdown-timeout", type=float, default=10.0, help="seconds running answers get to finish on stop (default 10)"
    )
    serve.add_argument("--device", default="CPU", help="CPU, GPU, NPU, ... (see `nbkit devices`)")
    serve.add_argument("--hint", default=None, help="PERFORMANCE_HINT: LATENCY (default), THROUGHPUT or DEFAULT")
    serve.add_argument("-p", "--property", type=_property, action="append", help="extra OpenVINO property KEY=VALUE")

    quick = commands.add_parser(
        "quickstart", help="the main job: export, INT4-compress and ask the model a question"
    )
    quick.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    quick.add_argument("--question", default="What is the capital of France?")
    quick.add_argument("--max-new-tokens", type=int, default=64)

    cache = commands.add_parser(
        "cache",
        help="list or clear the model cache",
        description="clear removes only nbkit's own entries and build leftovers; it lists what it will "
        "remove, with sizes, and asks first (--yes to skip the question; without a terminal it only lists)",
    )
    cache.add_argument("action", choices=["list", "clear", "path"])
    cache.add_argument("--kind", default=None, choices=sorted(CACHE_KINDS), help="only entries of this kind")
    cache.add_argument(
        "--incomplete", action="store_true", help="clear: only leftovers of interrupted builds, no entries"
    )
    cache.add_argument("--yes", "-y", action="store_true", help="clear: remove without asking")

    sweep = commands.add_parser(
        "sweep",
        help="build and measure a grid of configs on one or both engines; table, ledger and Pareto chart",
    )
    _add_model(sweep)
    sweep.add_argument(
        "--engines",
        type=_list_of(str),
        default="openvino",
        help="comma-separated engines: openvino, ort (default openvino); each maps the grid onto what it "
        "builds and skips the rest with the reason",
    )
    sweep.add_argument(
        "--gguf-native",
        action="store_true",
        help="also measure a .gguf source's own quantization as openvino-genai reads it (the bundled model "
        "is a Q4_1 GGUF); another source is listed as skipped with the reason",
    )
    sweep.add_argument(
        "--modes",
        type=_list_of(str),
        default="int4_sym,int4_asym",
        help=f"comma-separated modes: {_mode_list()} (openvino), fp16, fp32 (ort)",
    )
    sweep.add_argument(
        "--accuracy-levels",
        type=_list_of(int),
        default="4",
        help="ort int4: comma-separated MatMulNBits compute types, 1 fp32, 2 fp16, 3 bf16, 4 int8 (default 4)",
    )
    sweep.add_argument(
        "--group-sizes",
        type=_list_of(_group_size),
        default=None,
        help="comma-separated group sizes ('auto', or 'none' for per-channel; default auto, "
        "with --target 128,64,32)",
    )
    sweep.add_argument(
        "--ratios",
        type=_list_of(_ratio),
        default=None,
        help="comma-separated ratios in [0, 1] (default 1.0, with --target 1,0.9,0.8,0.7,0.6)",
    )
    sweep.add_argument(
        "--quality-tokens", type=int, default=512, help="tokens of fixed text for perplexity/KL"
    )
    _add_compression_options(sweep)
    sweep.add_argument("--speed-tokens", type=int, default=64, help="tokens decoded per speed run")
    sweep.add_argument("--repeats", type=int, default=3, help="timed speed runs per config (median)")
    sweep.add_argument("--no-answers", action="store_true", help="skip the fixed-prompt answer check")
    sweep.add_argument(
        "--device",
        default=None,
        help="measure speed on this device (CPU, GPU, NPU, ...; default: what tune-device found, else CPU); "
        "on a Dask cluster, on workers started with --resources DEVICE=1",
    )
    sweep.add_argument("--remeasure", action="store_true", help="ignore matching records in the ledger")
    sweep.add_argument(
        "--details",
        action="store_true",
        help="after the table, every statistic of each config: KL percentiles, Δp RMS, standard errors, "
        "and where each answer departs from the float model's",
    )
    pick = sweep.add_argument_group(
        "pick for me (a guided search instead of the whole grid)",
    )
    pick.add_argument(
        "--target",
        default=None,
        help="quality the winner must meet, e.g. 'kl<=0.1' or 'kl<=0.1,top1>=90%%' "
        "(metrics: kl, top1, ppl_ratio, answers); measures configs cheapest first and stops "
        "once none left can beat the best; exits 1 when none meets it",
    )
    pick.add_argument(
        "--optimize",
        choices=["size", "speed"],
        default="size",
        help="with --target: find the smallest (default) or the fastest config meeting it",
    )
    pick.add_argument(
        "--data-aware",
        type=_list_of(str),
        default="",
        help="with --target: data-aware options to try besides plain rounding, comma-separated: "
        "awq, scale_estimation, gptq, lora_correction",
    )
    sweep.add_argument(
        "--chart", type=Path, default=Path("nbkit-sweep.html"), help="where to write the HTML chart"
    )
    dask = sweep.add_argument_group(
        "on a Dask cluster (pip install 'nbkit[dask]'): each config is a task; speed is measured on "
        "workers with the device (dask worker ... --resources CPU=1, GPU=1 or NPU=1)",
    )
    where = dask.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        default=None,
        metavar="local:N",
        help="start a Dask LocalCluster of N worker processes on this machine for the sweep",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on the existing Dask cluster whose scheduler is at ADDRESS (tcp://host:8786)",
    )
    dask.add_argument(
        "--worker-cache",
        default=None,
        metavar="DIR",
        help="each worker's nbkit cache, a folder on the worker; {worker} is replaced by the worker's name "
        "(default: the worker machine's own nbkit cache, shared by the workers of one machine)",
    )
    dask.add_argument(
        "--dashboard-address",
        default=":8787",
        help="with --cluster: where the Dask dashboard listens (default :8787; ':0' picks a free port)",
    )

    tune = commands.add_parser(
        "tune-device",
        help="time an engine's runtime options (OpenVINO properties, ORT thread counts) and keep the fastest",
    )
    _add_model(tune)
    _add_compression(tune)
    _add_engine(tune)
    tune.add_argument("--device", default="CPU")
    tune.add_argument("--tokens", type=int, default=32, help="tokens decoded per timing")
    tune.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")

    finetune = commands.add_parser(
        "finetune",
        help="teach a model from a JSONL file with Olive's LoRA pass (CPU, float32); merged, scored, cached",
        description="Fine-tunes MODEL on --data (default: nbkit's example facts about Veloria, an invented "
        "country), merges the adapter into a float model folder and prints the held-out answers and eval "
        "loss before and after. The folder is a model source: export, compress, sweep or chat with it.",
    )
    finetune.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    finetune.add_argument(
        "--data",
        type=Path,
        default=None,
        help='JSONL: {"messages": [...]} or {"prompt", "response"} per line',
    )
    finetune.add_argument(
        "--held-out",
        type=Path,
        default=None,
        help="JSONL of questions kept out of training (default: 10%% of --data)",
    )
    finetune.add_argument("--steps", type=int, default=30, help="training steps (batches)")
    finetune.add_argument("--learning-rate", type=float, default=1e-3)
    finetune.add_argument("--lora-r", type=int, default=16, help="adapter rank")
    finetune.add_argument("--lora-alpha", type=int, default=32)
    finetune.add_argument("--batch-size", type=int, default=8)
    finetune.add_argument(
        "--max-seq-len", type=int, default=None, help="tokens per example (default: the longest example)"
    )
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--max-new-tokens", type=int, default=32, help="tokens per held-out answer")
    finetune.add_argument(
        "--write-example-data",
        type=Path,
        metavar="DIR",
        default=None,
        help="write the example dataset (train and held-out JSONL) into DIR and exit",
    )
    finetune.add_argument("--json", action="store_true", help="print the result as JSON")

    run_nb = commands.add_parser(
        "run-notebook", help="run a tutorial notebook with papermill (no NAME: list them)"
    )
    run_nb.add_argument("name", nargs="?", help="e.g. 01_quickstart, quickstart or 01")
    run_nb.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), help="override a parameter"
    )
    run_nb.add_argument("--output-dir", type=Path, default=None, help="default: artifacts/notebooks")

    commands.add_parser("doctor", help="check the installation")
    return parser
