"""The ``nbkit`` command line: the same steps as the notebooks and panels, one command each."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nbkit.cli.info import cmd_cache, cmd_devices, cmd_doctor, cmd_models, mib
from nbkit.cli.parser import build_parser
from nbkit.config import (
    COMPRESSION_OPTIONS,
    AssistedDecoding,
    CompressionConfig,
    CompressionMode,
    ExportConfig,
    GenerationSettings,
    RuntimeConfig,
)
from nbkit.engines.protocol import Engine
from nbkit.engines.registry import engine_for_folder, get_engine, parse_engines
from nbkit.errors import Cancelled, ConfigError, MissingDependencyError, ModelSourceError, NbkitError
from nbkit.infra.cache import Cache
from nbkit.infra.progress import CancelToken, ProgressBar, ProgressReporter

log = logging.getLogger("nbkit")


# -- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(enabled: bool = True) -> Iterator[ProgressReporter]:
    # leave=False: the CLI prints its result where the bar was.
    bar = ProgressBar(leave=False, file=sys.stderr) if enabled and sys.stderr.isatty() else None
    reporter = ProgressReporter(bar, CancelToken())
    try:
        yield reporter
    except KeyboardInterrupt as exc:
        reporter.cancel_token.cancel()
        raise Cancelled("Interrupted; nothing partial was left in the cache.") from exc
    finally:
        if bar is not None:
            bar.close()


def _compression_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CompressionConfig fields besides mode, group size and ratio (shared by compress and sweep)."""
    return {name: getattr(args, name) for name in COMPRESSION_OPTIONS}


def _compression_config(args: argparse.Namespace) -> CompressionConfig:
    ratio = args.ratio if args.ratio is not None else 1.0
    return CompressionConfig(
        mode=CompressionMode.parse(args.mode),
        group_size=args.group_size,
        ratio=ratio,
        **_compression_options(args),
    )


def _engine(args: argparse.Namespace) -> Engine:
    """--engine, or when unset: the engine that loads the model folder given, else openvino."""
    if getattr(args, "engine", None):
        return get_engine(args.engine)
    return engine_for_folder(args.model) or get_engine("openvino")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Every build flag the command has, by its config field name (each engine picks its own)."""
    names = (
        "mode",
        "group_size",
        "ratio",
        "weight_format",
        "precision",
        "int4_block_size",
        "int4_accuracy_level",
        "int4_asym",
        *COMPRESSION_OPTIONS,
    )
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _runtime(args: argparse.Namespace, engine: Engine) -> RuntimeConfig:
    """The runtime the flags ask for; RuntimeConfig refuses impossible values before any work."""
    from nbkit.config import PERFORMANCE_HINTS

    # The engine's properties for the device (OpenVINO: LATENCY, and f32 on CPU); --hint replaces
    # the hint only, "DEFAULT" leaves it to the device.
    properties = dict(engine.base_runtime(args.device).property_dict)
    if args.hint is not None:
        hint = args.hint.strip().upper()
        if hint not in (*PERFORMANCE_HINTS, "DEFAULT"):
            raise ConfigError(
                f"--hint must be {', '.join(PERFORMANCE_HINTS)} or DEFAULT (the device's own), not {args.hint!r}."
            )
        properties.pop("PERFORMANCE_HINT", None)
        if hint != "DEFAULT":
            properties["PERFORMANCE_HINT"] = hint
    properties.update(dict(args.property or []))
    return RuntimeConfig.create(args.device, properties)


def _settings(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        # --temperature 0 means greedy, as in most chat tools.
        do_sample=bool(args.temperature),
        temperature=args.temperature or 0.7,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
    )


# -- commands ----------------------------------------------------------------------------------


def _export(args: argparse.Namespace, reporter: ProgressReporter) -> Any:
    from nbkit.engines.openvino.export import export_openvino

    return export_openvino(
        args.model,
        ExportConfig(weight_format=args.weight_format),
        cache=Cache(args.cache_dir),
        reporter=reporter,
    )


def cmd_export(args: argparse.Namespace) -> int:
    from nbkit.sources.models import resolve_source

    engine = _engine(args)
    options = _options(args)
    engine.config_from_options(options)  # invalid or foreign flags fail before any work
    reason = engine.missing()
    if reason is not None:
        raise MissingDependencyError(reason)
    with _progress(not args.quiet) as reporter:
        model = engine.export(
            resolve_source(args.model), options, cache=Cache(args.cache_dir), reporter=reporter
        )
    print("\n".join(engine.describe(model)))
    return 0


def _compressed(args: argparse.Namespace, reporter: ProgressReporter) -> Any:
    from nbkit.compression.weights import compress

    config = _compression_config(args)  # invalid flags fail before the export starts
    float_model = _export(args, reporter.step(0.0, 0.6))
    return float_model, compress(
        float_model, config, cache=Cache(args.cache_dir), reporter=reporter.step(0.6, 1.0)
    )


def cmd_compress(args: argparse.Namespace) -> int:
    with _progress(not args.quiet) as reporter:
        float_model, model = _compressed(args, reporter)
    ratio = float_model.weights_bytes / model.weights_bytes
    precisions = ", ".join(f"{k} {v:.0%}" for k, v in model.weight_precisions.items())
    print(
        f"{model.source_name} {model.label}: {mib(model.weights_bytes)} ({ratio:.1f}x smaller than {float_model.label}); weights {precisions}"
    )
    print(model.path)
    return 0


@contextlib.contextmanager
def _stop_on_interrupt(session: Any) -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, lambda *_: session.stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _answer(session: Any, prompt: str) -> Any:
    with _stop_on_interrupt(session):
        turn = session.send(prompt, lambda text: print(text, end="", flush=True))
    m = turn.metrics
    stopped = " (stopped)" if turn.stopped else ""
    per_step = m.tokens_per_step
    steps = (
        f", {m.decode_steps} steps: {per_step:.2f} tokens/step"
        if getattr(session, "assisted", None) is not None and per_step
        else ""
    )
    print(
        f"\n[{m.generated_tokens} tokens{stopped}, TTFT {m.ttft_ms:.0f} ms, {m.tokens_per_s:.1f} tokens/s{steps}]",
        file=sys.stderr,
    )
    if turn.reached_token_limit:
        print(
            f"(stopped at the token limit of {turn.max_new_tokens}: raise --max-new-tokens for longer answers)",
            file=sys.stderr,
        )
    return turn


def _chat_session(
    args: argparse.Namespace,
    engine: Engine,
    runtime: RuntimeConfig,
    settings: GenerationSettings,
    system: str | None,
    assisted: AssistedDecoding | None = None,
) -> Any:
    """A chat session on the model folder given, or on ``args.model`` built with the flags' config."""
    model = _model_folder(args, engine)
    if args.hint is None and not args.property:  # nothing asked for: what tune-device found, else the default
        runtime = engine.default_runtime(model, runtime.device)
    return engine.open_chat(
        Path(getattr(model, "path", model)), runtime, settings, system_prompt=system, assisted=assisted
    )


def _assisted(args: argparse.Namespace) -> AssistedDecoding | None:
    """--prompt-lookup or --draft FOLDER as an AssistedDecoding (None without either)."""
    if getattr(args, "prompt_lookup", False):
        return AssistedDecoding.prompt_lookup(args.candidates, args.max_ngram)
    if getattr(args, "draft", None):
        draft = Path(args.draft).expanduser()
        if not draft.is_dir():
            raise ModelSourceError(f"--draft {args.draft}: no such folder; pass a model folder nbkit built.")
        return AssistedDecoding.speculative(draft, args.candidates)
    return None


def _model_folder(args: argparse.Namespace, engine: Engine) -> Any:
    """The model folder given (a Path), or ``args.model`` built with the flags' config (a built model,
    from the cache when built before, whose tuned runtime ``default_runtime`` can find)."""
    from nbkit.sources.models import resolve_source

    folder = Path(args.model).expanduser()
    if engine.is_model_folder(folder):
        return folder
    other = engine_for_folder(folder)
    if other is not None:
        raise ModelSourceError(
            f"{folder} is a model folder of the {other.name} engine; use it with --engine {other.name}, "
            f"or pass the original model source to build one with the {engine.name} engine."
        )
    config = engine.config_from_options(_options(args))  # bad flags fail before any build
    with _progress(not args.quiet) as reporter:
        return engine.build_from_source(
            resolve_source(args.model),
            config,
            cache=Cache(args.cache_dir),
            reporter=reporter,
            export_config=ExportConfig(weight_format=args.weight_format),
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from nbkit.server.options import ServeOptions
    from nbkit.server.server import require_serve, run_foreground

    require_serve()
    # Every flag is checked before any build or load: limits, engine flags, device, properties.
    options = ServeOptions(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("NBKIT_API_KEY") or None,
        model_name=args.model_name,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        default_max_tokens=args.max_tokens,
        cors_origins=tuple(args.cors_origin or ()),
        shutdown_timeout=args.shutdown_timeout,
    )
    engine = _engine(args)
    reason = engine.missing()
    if reason is not None:
        raise MissingDependencyError(reason)
    runtime = engine.check_runtime(_runtime(args, engine))
    engine.config_from_options(_options(args))
    model = _model_folder(args, engine)
    if args.hint is None and not args.property:  # nothing asked for: what tune-device found, else the default
        runtime = engine.default_runtime(model, runtime.device)
    backend = engine.serving_backend(
        Path(getattr(model, "path", model)), runtime, max_batch=options.max_batch
    )

    def announce(root: str, state: Any) -> None:
        # The readiness line scripts wait for: printed once the port answers /health.
        print(
            f"nbkit: serving {state.model_name} ({engine.name}; {backend.scheduling}) at {root}/v3 "
            f"(OpenAI base URL; also {root}/v1). Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )

    signum = run_foreground(backend, engine, options, announce=announce)
    how = f" by {signal.Signals(signum).name}" if signum else ""
    print(f"nbkit: server stopped{how}; running answers were finished or cancelled.", file=sys.stderr)
    return 0


def _read_stdin_as_surrogates() -> None:
    # A line that is not UTF-8 reaches clean_message as surrogates (then U+FFFD and a warning)
    # instead of a UnicodeDecodeError out of input().
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors="surrogateescape")


def cmd_chat(args: argparse.Namespace) -> int:
    from nbkit.engines.base import clean_message, clean_system_prompt

    # Every flag is checked before any export, compression or model load: the message, the
    # settings, the engine's config flags, the device and each runtime property (asked of the
    # device itself).
    prompt = clean_message(args.prompt) if args.prompt is not None else None
    system = clean_system_prompt(args.system)
    engine = _engine(args)
    reason = engine.missing()
    if reason is not None:
        raise MissingDependencyError(reason)
    runtime, settings = _runtime(args, engine), _settings(args)
    engine.config_from_options(_options(args))
    runtime = engine.check_runtime(runtime)
    assisted = engine.check_assisted(_assisted(args))
    session = _chat_session(args, engine, runtime, settings, system, assisted)
    path = session.model_path
    if prompt is not None:
        _answer(session, prompt)
        return 0
    print(
        f"Chatting with {path.name} on {session.runtime.device}. /reset starts over, /save FILE writes the transcript, /exit quits; Ctrl-C stops an answer.",
        file=sys.stderr,
    )
    _read_stdin_as_surrogates()
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            session.reset()
            print("(new conversation)", file=sys.stderr)
            continue
        if line.startswith("/save"):
            target = Path(line.partition(" ")[2].strip() or "transcript.md")
            target.write_text(
                session.transcript_json() if target.suffix == ".json" else session.transcript_markdown()
            )
            print(f"(saved {target})", file=sys.stderr)
            continue
        try:
            _answer(session, line)
        except NbkitError as exc:
            print(f"nbkit: {exc}", file=sys.stderr)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from nbkit.cli.quickstart import quickstart
    from nbkit.engines.base import clean_message

    # Checked before the export: an empty question fails at once, and one that was not UTF-8
    # is printed (after "Q:") as the model gets it.
    question = clean_message(args.question, "question")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    answering = False

    def on_text(text: str) -> None:
        nonlocal answering
        if not answering:  # printed with the first token, so an error never follows a bare "A:"
            print(f"Q: {question}\nA: ", end="", flush=True)
            answering = True
        print(text, end="", flush=True)

    with _progress(not args.quiet) as reporter:
        report = quickstart(
            args.model,
            question=question,
            cache=Cache(args.cache_dir),
            reporter=reporter,
            settings=settings,
            on_text=on_text,
        )
    print("\n")
    print(report.table())
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from nbkit.measure.charts import check_chart_target
    from nbkit.measure.pick import PICK_GROUP_SIZES, PICK_RATIOS, Target, option_variants
    from nbkit.measure.sweep import (
        MeasureSettings,
        grid,
        run_sweep,
    )

    check_chart_target(args.chart)  # a file nbkit would not overwrite fails now, not after the sweep
    target = Target.parse(args.target) if args.target is not None else None
    if target is None and args.data_aware:
        raise ConfigError("--data-aware lists options for the guided search; give it with --target.")
    variants = option_variants(args.data_aware) if target is not None else [{}]
    group_sizes = args.group_sizes or (list(PICK_GROUP_SIZES) if target is not None else ["auto"])
    ratios = args.ratios or (list(PICK_RATIOS) if target is not None else [1.0])
    settings = MeasureSettings(
        quality_tokens=args.quality_tokens,
        speed_new_tokens=args.speed_tokens,
        speed_repeats=args.repeats,
        answers=not args.no_answers,
        # A device given applies to every engine of the sweep; each engine checks it (here, or on
        # the cluster's workers that have it) before any build.
        runtime=RuntimeConfig(device=args.device) if args.device else None,
    )
    if target is not None:
        target.check_answers(settings.answers)
    cache = Cache(args.cache_dir)
    engines = parse_engines(args.engines)
    on_cluster = args.cluster is not None or args.scheduler is not None
    if args.worker_cache is not None and not on_cluster:
        raise ConfigError(
            "--worker-cache names the Dask workers' cache; give it with --cluster or --scheduler."
        )
    if on_cluster and args.gguf_native:
        raise ConfigError(
            "--gguf-native is measured in this process only; run it without --cluster/--scheduler."
        )
    if on_cluster:
        from nbkit.measure.cluster import parse_local, require_distributed

        workers = parse_local(args.cluster) if args.cluster is not None else 0
        require_distributed()
    with _progress(not args.quiet) as reporter:
        options = _compression_options(args)
        for variant in variants:  # bad options fail once, before the export, not once per config
            CompressionConfig(**{**options, **variant})
        known = {mode for engine in engines for mode in engine.modes} | {"nf4"}
        for mode in args.modes:  # an unknown mode fails now, not after the export
            if mode.strip().lower().replace("-", "_") not in known:
                raise ConfigError(f"Unknown mode {mode!r}; choose among {', '.join(sorted(known))}.")
        for engine in engines:
            reason = engine.missing()
            if reason is not None:
                raise MissingDependencyError(f"The {engine.name} engine cannot run here: {reason}")
        if on_cluster:
            result = _sweep_on_cluster(
                args,
                workers,
                engines=[e.name for e in engines],
                group_sizes=group_sizes,
                ratios=ratios,
                options=options,
                variants=variants,
                settings=settings,
                cache=cache,
                target=target,
                reporter=reporter,
            )
            return _print_sweep(args, result, cache, on_cluster=True)
        if settings.runtime is not None:  # a device this machine lacks fails before the export
            for engine in engines:
                engine.check_runtime(settings.runtime)
        float_model = _export(args, reporter.step(0.0, 0.1))
        configs: list[Any] = []
        for variant in variants:
            variant_configs, skipped = grid(
                float_model.architecture,
                engines=[e.name for e in engines],
                modes=args.modes,
                group_sizes=group_sizes,
                ratios=ratios,
                accuracy_levels=args.accuracy_levels,
                **{**options, **variant},
            )
            configs += variant_configs
        for label, reason in skipped:
            print(f"skipped {label}: {reason}", file=sys.stderr)
        if not configs:
            raise ConfigError("No valid configuration in the grid; see the reasons above.")
        result = run_sweep(
            args.model,
            configs,
            settings=settings,
            cache=cache,
            reuse=not args.remeasure,
            export_config=ExportConfig(weight_format=args.weight_format),
            reporter=reporter.step(0.1, 1.0),
            target=target,
            optimize=args.optimize,
            gguf_native=args.gguf_native,
        )
    for label, reason in result.skipped if args.gguf_native else ():
        if label.endswith("gguf-native"):
            print(f"skipped {label}: {reason}", file=sys.stderr)
    return _print_sweep(args, result, cache, on_cluster=False)


def _sweep_on_cluster(
    args: argparse.Namespace,
    workers: int,
    *,
    engines: list[str],
    group_sizes: list[Any],
    ratios: list[float],
    options: dict[str, Any],
    variants: list[dict[str, Any]],
    settings: Any,
    cache: Cache,
    target: Any,
    reporter: ProgressReporter,
) -> Any:
    """The sweep as tasks of a Dask cluster: a LocalCluster of ``workers`` processes, or ``--scheduler``'s."""
    from nbkit.measure.cluster import LocalClusterProcess, connect, dashboard_link
    from nbkit.measure.sweep import run_sweep

    cluster = LocalClusterProcess(workers, dashboard_address=args.dashboard_address) if workers else None
    client = cluster.client if cluster is not None else connect(args.scheduler)
    try:
        count = len(client.scheduler_info(n_workers=-1)["workers"])
        print(
            f"Dask cluster {client.scheduler.address}: {count} worker(s); dashboard {dashboard_link(client)}",
            file=sys.stderr,
        )
        result = run_sweep(
            args.model,
            engines=engines,
            modes=args.modes,
            group_sizes=group_sizes,
            ratios=ratios,
            accuracy_levels=args.accuracy_levels,
            options=options,
            option_variants=variants,
            settings=settings,
            cache=cache,
            reuse=not args.remeasure,
            export_config=ExportConfig(weight_format=args.weight_format),
            reporter=reporter,
            target=target,
            optimize=args.optimize,
            client=client,
            # A local cluster shares this machine's filesystem: its workers use the sweep's cache.
            worker_cache=args.worker_cache or (str(cache.root) if cluster is not None else None),
        )
    finally:
        if cluster is not None:
            cluster.close()
        else:
            with contextlib.suppress(Exception):
                client.close()
    for label, reason in result.skipped:
        print(f"skipped {label}: {reason}", file=sys.stderr)
    for label, retries in result.retried:
        print(f"retried {label}: its worker died {retries} time(s); Dask ran it again", file=sys.stderr)
    return result


def _print_sweep(args: argparse.Namespace, result: Any, cache: Cache, *, on_cluster: bool) -> int:
    from nbkit.infra.ledger import Ledger
    from nbkit.measure.charts import write_chart
    from nbkit.measure.pick import format_path
    from nbkit.measure.sweep import (
        format_table,
        ledger_records,
        recommend,
        recommend_per_machine,
        record_summary,
    )

    if result.pick is not None:
        print(f"Path of the search for {result.pick.target} (optimize {result.pick.optimize}):\n")
        print(format_path(result.pick))
        print()
    print(format_table(result.all_records))
    if args.details:
        for record in result.records:
            print(f"\n{record_summary(record)}")
    chart = write_chart(
        result.all_records,
        args.chart,
        title=f"{result.reference.model}: size vs quality vs speed",
        chosen=result.pick.winner if result.pick is not None else None,
    )
    if result.pick is not None:
        if result.pick.winner is not None and not args.details:
            print(f"\n{record_summary(result.pick.winner)}")
        print(f"\n{result.pick.conclusion()}")
    ledger = Ledger(cache=cache)
    # Every configuration of this model measured here so far, this sweep's and earlier ones.
    measured = ledger_records(ledger, result.reference.model)
    # On a cluster, one recommendation per machine that measured speed; here, this machine's.
    recommendations = recommend_per_machine(measured) if on_cluster else [recommend(measured)]
    for recommendation in recommendations:
        if recommendation is not None:
            print(f"\n{recommendation.text()}")
    print(f"\nchart: {chart}\nledger: {ledger.path}")
    return 0 if result.pick is None or result.pick.winner is not None else 1


def cmd_tune_device(args: argparse.Namespace) -> int:
    from nbkit.sources.models import resolve_source

    engine = _engine(args)
    # Checked before the build: the device, the counts and the engine's config flags.
    engine.check_runtime(engine.base_runtime(args.device))
    for flag, value in (("--tokens", args.tokens), ("--repeats", args.repeats)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, not {value}.")
    config = engine.config_from_options(_options(args))
    reason = engine.missing()
    if reason is not None:
        raise MissingDependencyError(reason)
    with _progress(not args.quiet) as reporter:
        model = engine.build_from_source(
            resolve_source(args.model),
            config,
            cache=Cache(args.cache_dir),
            reporter=reporter.step(0.0, 0.3),
            export_config=ExportConfig(weight_format=args.weight_format),
        )
        tuning = engine.tune(
            model, args.device, new_tokens=args.tokens, repeats=args.repeats, reporter=reporter.step(0.3, 1.0)
        )
    print(tuning.table())
    speedup = tuning.speedup_over_defaults()
    best = ", ".join(f"{k}={v}" for k, v in sorted(tuning.best.property_dict.items())) or "the defaults"
    print(
        f"\nbest on {tuning.device}: {best}"
        + (f" ({speedup:.2f}x the {tuning.runtime_name} defaults)" if speedup else "")
    )
    print("nbkit chat, sweeps and the panels now use it by default for this model and device.")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import json

    from nbkit.finetuning.olive_lora import FinetuneConfig
    from nbkit.finetuning.run import describe, finetune
    from nbkit.finetuning.veloria import write_example_dataset

    if args.write_example_data is not None:
        written = write_example_dataset(args.write_example_data)
        print(f"train:    {written.train}\nheld out: {written.held_out}")
        return 0
    config = FinetuneConfig(
        steps=args.steps,
        learning_rate=args.learning_rate,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
    )
    with _progress(not args.quiet) as reporter:
        result = finetune(
            args.model,
            args.data,
            held_out=args.held_out,
            config=config,
            max_new_tokens=args.max_new_tokens,
            cache=Cache(args.cache_dir),
            reporter=reporter,
        )
    if args.json:
        print(json.dumps(describe(result), indent=2))
        return 0
    right_before, scored = result.correct("before")
    right_after, _ = result.correct("after")
    print(result.table())
    if scored:
        print(f"\nheld-out answers right: {right_before}/{scored} before, {right_after}/{scored} after")
    print(f"\nmerged model: {result.path}")
    print(
        f"next: nbkit export {result.path} --engine ort   |   nbkit chat {result.path}   |   nbkit sweep {result.path}"
    )
    return 0


def cmd_run_notebook(args: argparse.Namespace) -> int:
    from nbkit.cli.notebooks import notebook_names, run_notebook

    if args.name is None:
        print("\n".join(notebook_names()))
        return 0
    parameters = dict(args.parameter or [])
    executed, html = run_notebook(args.name, parameters, args.output_dir, progress_bar=not args.quiet)
    print(f"executed: {executed}\nhtml:     {html}")
    return 0


# -- parser ------------------------------------------------------------------------------------


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "models": cmd_models,
    "devices": cmd_devices,
    "export": cmd_export,
    "compress": cmd_compress,
    "chat": cmd_chat,
    "quickstart": cmd_quickstart,
    "serve": cmd_serve,
    "cache": cmd_cache,
    "sweep": cmd_sweep,
    "tune-device": cmd_tune_device,
    "finetune": cmd_finetune,
    "run-notebook": cmd_run_notebook,
    "doctor": cmd_doctor,
}


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbosity == 0:
        logging.getLogger("nncf").setLevel(logging.ERROR)


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, so workers are ended and partial builds removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise _Terminated(signum)


@contextlib.contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """Handle SIGTERM and SIGHUP as Ctrl-C for the duration of a command (main thread only)."""
    handled = [
        s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None
    ]
    previous: dict[int, Any] = {}
    try:
        for signum in handled:
            previous[signum] = signal.signal(signum, _raise_terminated)
    except ValueError:  # not the main thread (main() called from a thread): leave signals alone
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _terminated_by(exc: BaseException) -> int | None:
    """The signal number behind ``exc`` (possibly re-raised as Cancelled), if it was one."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, _Terminated):
            return current.signum
        current = current.__cause__ or current.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        with _terminate_like_interrupt():
            return int(COMMANDS[args.command](args) or 0)
    except (Cancelled, KeyboardInterrupt) as exc:
        signum = _terminated_by(exc)
        if signum is not None:
            name = signal.Signals(signum).name
            print(
                f"nbkit: stopped by {name}; its worker was ended and nothing partial was left in the cache.",
                file=sys.stderr,
            )
            return 128 + signum
        print(f"nbkit: {exc}" if isinstance(exc, Cancelled) else "nbkit: interrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"nbkit: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except NbkitError as exc:
        print(f"nbkit: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
