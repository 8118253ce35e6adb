"""Sweeps: build a model in many configurations of one or more engines, measure each, find the Pareto front.

The float model is exported once by the reference engine (OpenVINO); each configuration is
built by its own engine (NNCF compresses that float IR, Olive's ModelBuilder builds an ONNX
Runtime GenAI model) and measured on the same fixed text and prompts against that same float
reference (:mod:`nbkit.measure.evaluation`). Every measurement is appended to the run
ledger; a re-run reuses a record whose key (built model, measurement settings, runtime,
library versions, machine) still matches instead of measuring again.

Size and quality do not depend on the machine (the same weights, the same text, the same
float reference): a record measured on one machine lends them to the same build measured on
another (:func:`quality_key`), and only the speed is measured again. Speed is measured alone
on its machine (:class:`nbkit.infra.machine.MachineWork`). With a Dask ``client``,
:func:`run_sweep` runs each configuration as a task on the cluster's workers
(:mod:`nbkit.measure.cluster`), and records come home as they finish.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nbkit.config import ExportConfig, RuntimeConfig, _Fingerprinted
from nbkit.engines.protocol import BuiltModel, Engine, GridOptions
from nbkit.engines.registry import (
    REFERENCE_ENGINE,
    engine_for_config,
    engine_of_model,
    parse_engines,
)
from nbkit.errors import ConfigError, MissingDependencyError, ModelSourceError
from nbkit.infra.cache import Cache, cache_key
from nbkit.infra.ledger import Ledger
from nbkit.infra.machine import MachineWork, measured_on
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import machine_summary
from nbkit.infra.worker import Worker
from nbkit.measure import evaluation, quality, speed
from nbkit.measure.pick import (
    PICK_GROUP_SIZES,
    PICK_MODES,
    PICK_RATIOS,
    Candidate,
    PickResult,
    PickStep,
    Target,
    candidates_of,
    guided_search,
    option_variants,
    parse_optimize,
)
from nbkit.sources import texts
from nbkit.sources.architecture import ArchitectureFacts
from nbkit.sources.models import ModelSource, resolve_source

log = logging.getLogger(__name__)

MEASUREMENT_KIND = "measurement"


@dataclass(frozen=True)
class MeasureSettings(_Fingerprinted):
    """What a measurement runs: the same for every config of a sweep, so figures compare."""

    quality_tokens: int = 512
    quality_window: int = 128
    speed_new_tokens: int = 64
    speed_repeats: int = 3
    answers: bool = True
    answer_tokens: int = 32
    # None: for each model what tune-device found, else its engine's default. A runtime given
    # here applies to every engine that can run it (the ORT engine keeps its own options only).
    runtime: RuntimeConfig | None = None


@dataclass(frozen=True)
class SweepRecord:
    """One measured configuration (a line of the ledger)."""

    key: str
    model: str
    engine: str
    label: str
    config: dict[str, Any]
    model_path: str
    size: evaluation.SizeReport
    quality: quality.QualityReport
    speed: speed.SpeedReport
    answers: evaluation.AnswerReport | None
    versions: dict[str, Any]
    machine: dict[str, Any]
    created: float
    runtime: dict[str, Any] = dataclasses.field(default_factory=dict)  # device and properties speed ran with
    # Where speed was measured: the host, and the Dask worker when a cluster measured it.
    measured_on: dict[str, str] = dataclasses.field(default_factory=dict)
    # The machine-independent part of the key: records sharing it share size and quality.
    quality_key: str = ""

    @property
    def place(self) -> str:
        """Where the speed was measured, in words: ``host`` or ``host (worker 1)``, and the device."""
        host = self.measured_on.get("host") or self.machine.get("host") or "this machine"
        worker = self.measured_on.get("worker")
        device = self.runtime.get("device") or "CPU"
        return f"{host} (worker {worker}), {device}" if worker else f"{host}, {device}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": MEASUREMENT_KIND,
            "key": self.key,
            "model": self.model,
            "engine": self.engine,
            "label": self.label,
            "config": self.config,
            "model_path": self.model_path,
            "size": self.size.to_dict(),
            "quality": self.quality.to_dict(),
            "speed": self.speed.to_dict(),
            "answers": self.answers.to_dict() if self.answers else None,
            "versions": self.versions,
            "machine": self.machine,
            "created": self.created,
            "runtime": self.runtime,
            "measured_on": self.measured_on,
            "quality_key": self.quality_key,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepRecord:
        answers = data.get("answers")
        return cls(
            key=data["key"],
            model=data["model"],
            engine=data["engine"],
            label=data["label"],
            config=data["config"],
            model_path=data["model_path"],
            size=evaluation.SizeReport.from_dict(data["size"]),
            quality=quality.QualityReport.from_dict(data["quality"]),
            speed=speed.SpeedReport.from_dict(data["speed"]),
            answers=evaluation.AnswerReport.from_dict(answers) if answers else None,
            versions=data.get("versions", {}),
            machine=data.get("machine", {}),
            created=float(data.get("created", 0.0)),
            runtime=dict(data.get("runtime", {})),
            measured_on=dict(data.get("measured_on") or {}),
            quality_key=str(data.get("quality_key") or ""),
        )

    # The three objectives of the front: smaller, closer to float, faster.
    @property
    def weights_mib(self) -> float:
        return self.size.weights_bytes / 1024 / 1024

    @property
    def mean_kl(self) -> float:
        return self.quality.mean_kl

    @property
    def tokens_per_s(self) -> float:
        return self.speed.tokens_per_s


@dataclass(frozen=True)
class SweepResult:
    reference: SweepRecord
    records: tuple[SweepRecord, ...]
    skipped: tuple[tuple[str, str], ...]  # (config label, why)
    pick: PickResult | None = None  # the guided search's path and winner, when it ran one
    retried: tuple[tuple[str, int], ...] = ()  # (config label, retries) of tasks a cluster ran again

    @property
    def all_records(self) -> list[SweepRecord]:
        return [self.reference, *self.records]

    @property
    def front(self) -> list[SweepRecord]:
        return pareto_front(self.all_records)


def grid(
    facts: ArchitectureFacts,
    *,
    engines: Sequence[str] | str = ("openvino",),
    modes: Iterable[str] = ("int4_sym",),
    group_sizes: Iterable[int | str | None] = ("auto",),
    ratios: Iterable[float] = (1.0,),
    accuracy_levels: Iterable[int] = (4,),
    **options: Any,
) -> tuple[list[Any], list[tuple[str, str]]]:
    """The configs of every engine for the grid, and the (label, reason) of those left out.

    Each engine maps the grid onto what it builds (see :meth:`~nbkit.engines.protocol.Engine.grid`):
    NNCF's INT8 modes ignore group sizes and ratios; ModelBuilder has no ratio below 1 and
    takes ``accuracy_levels``. What cannot apply, or does not fit the model, is left out with
    the reason, never run. ``options`` are the other ``CompressionConfig`` fields.
    """
    spec = GridOptions(
        modes=tuple(modes),
        group_sizes=tuple(group_sizes),
        ratios=tuple(ratios),
        accuracy_levels=tuple(accuracy_levels),
        options=options,
    )
    configs: list[Any] = []
    skipped: list[tuple[str, str]] = []
    for engine in parse_engines(engines):
        engine_configs, engine_skipped = engine.grid(facts, spec)
        configs += engine_configs
        skipped += engine_skipped
    return configs, skipped


# What a measurement record holds; part of its key, so a record written before a statistic
# existed is measured again instead of being reused without it. 2: KL percentiles, Δp RMS,
# standard errors, and the answers' first divergent tokens.
MEASUREMENT_STATISTICS = 2


def _record_key(
    model: BuiltModel,
    reference: BuiltModel,
    settings: MeasureSettings,
    runtime: RuntimeConfig,
    engine: Engine,
) -> str:
    return cache_key(
        {
            "statistics": MEASUREMENT_STATISTICS,
            "model": model.entry.key,
            "reference": reference.entry.key,
            "settings": settings.fingerprint(),
            "runtime": runtime.fingerprint(),
            "text": texts.evaluation_text_id(),  # pydoc topics change between Python versions
            "versions": engine.versions(),
            "machine": machine_summary(),
        }
    )


def measurement_runtime(model: BuiltModel, settings: MeasureSettings) -> RuntimeConfig:
    """The runtime ``model``'s speed is measured with: the settings' (as its engine takes it), else
    what tune-device found for it, else its engine's default. The panels and the CLI both call
    this, so one config gets one runtime and one ledger record whoever asks."""
    engine = engine_of_model(model)
    if settings.runtime is not None:
        return engine.check_runtime(settings.runtime)
    return engine.default_runtime(model)


def quality_key(model: BuiltModel, reference: BuiltModel, settings: MeasureSettings, engine: Engine) -> str:
    """The key of what does not depend on the machine: size, quality and answers of ``model``.

    The same build (content-addressed, so the same key on every machine), the same float
    reference, text and quality settings, and the same library versions give the same figures
    wherever they are measured; the runtime and the machine are left out on purpose.
    """
    return cache_key(
        {
            "statistics": MEASUREMENT_STATISTICS,
            "model": model.entry.key,
            "reference": reference.entry.key,
            "quality": [
                settings.quality_tokens,
                settings.quality_window,
                settings.answers,
                settings.answer_tokens,
            ],
            "text": texts.evaluation_text_id(),
            "versions": engine.versions(),
        }
    )


class KnownRecords:
    """Earlier measurements a new one may reuse: whole by its key, or size and quality by :func:`quality_key`."""

    def __init__(self, records: Iterable[Mapping[str, Any]] = ()) -> None:
        self.by_key: dict[str, dict[str, Any]] = {}
        self.by_quality: dict[str, dict[str, Any]] = {}
        for data in records:  # oldest first: a newer record replaces an older one
            if data.get("kind") != MEASUREMENT_KIND:
                continue
            self.by_key[str(data.get("key"))] = dict(data)
            if data.get("quality_key"):
                self.by_quality[str(data["quality_key"])] = dict(data)

    @classmethod
    def from_ledger(cls, ledger: Ledger | None) -> KnownRecords:
        return cls(ledger.records(MEASUREMENT_KIND)) if ledger is not None else cls()

    def record(self, key: str) -> SweepRecord | None:
        data = self.by_key.get(key)
        return SweepRecord.from_dict(data) if data is not None else None

    def quality_of(self, key: str) -> SweepRecord | None:
        data = self.by_quality.get(key)
        return SweepRecord.from_dict(data) if data is not None else None


def measure(
    model: BuiltModel,
    reference: BuiltModel,
    settings: MeasureSettings | None = None,
    *,
    ledger: Ledger | None = None,
    reuse: bool = True,
    reporter: ProgressReporter | None = None,
    known: KnownRecords | None = None,
    machine: MachineWork | None = None,
) -> SweepRecord:
    """Measure ``model`` (any engine's) against the float ``reference``; reuse a valid ledger record if any.

    A record of the same build measured on another machine (same :func:`quality_key`) lends
    its size, quality and answers, and only the speed is measured here. ``known`` holds the
    records to reuse from (default: ``ledger``'s). Speed is measured with this machine's
    nbkit work lock held exclusive, everything else with it shared (see
    :class:`~nbkit.infra.machine.MachineWork`).
    """
    settings = settings or MeasureSettings()
    reporter = reporter or ProgressReporter()
    machine = machine or MachineWork(check=reporter.check)
    engine = engine_of_model(model)
    runtime = measurement_runtime(model, settings)
    key = _record_key(model, reference, settings, runtime, engine)
    same_quality = quality_key(model, reference, settings, engine)
    if reuse and known is None:
        known = KnownRecords.from_ledger(ledger)
    previous = known.record(key) if reuse and known is not None else None
    if previous is not None:
        log.info("Reusing the measurement of %s", model.label)
        return previous
    lent = known.quality_of(same_quality) if reuse and known is not None else None
    if lent is not None:
        log.info("Reusing the size and quality of %s measured on %s", model.label, lent.place)
        size, quality_report, answers = lent.size, lent.quality, lent.answers
    else:
        with machine.shared():
            reporter.report(0.0, f"Measuring size of {model.label}")
            size = evaluation.measure_size(model, reference)
            reporter.report(0.1, f"Measuring quality of {model.label}")
            quality_report = quality.measure_quality(
                model,
                reference,
                num_tokens=settings.quality_tokens,
                window=settings.quality_window,
                device="CPU",
                reporter=reporter.step(0.1, 0.5),
            )
            answers = None
            if settings.answers:
                reporter.report(0.5, f"Checking answers of {model.label}")
                answers = evaluation.measure_answers(model, reference, max_new_tokens=settings.answer_tokens)
    reporter.report(0.6, f"Waiting to measure the speed of {model.label} alone on this machine")
    with machine.exclusive():
        reporter.report(0.6, f"Measuring speed of {model.label}")
        speed_report = speed.measure_speed(
            model,
            runtime,
            new_tokens=settings.speed_new_tokens,
            repeats=settings.speed_repeats,
            reporter=reporter.step(0.6, 1.0),
        )
    record = SweepRecord(
        key=key,
        model=model.source_name,
        engine=engine.name,
        label=model.label,
        config=dict(model.entry.metadata.get("config", {})),
        model_path=str(model.path),
        size=size,
        quality=quality_report,
        speed=speed_report,
        answers=answers,
        versions=engine.versions(),
        machine=machine_summary(),
        created=time.time(),
        runtime={"device": runtime.device, "properties": runtime.property_dict},
        measured_on=measured_on(),
        quality_key=same_quality,
    )
    if ledger is not None:
        ledger.append(record.to_dict())
    reporter.report(1.0, f"Measured {model.label}")
    return record


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep or a guided search works on: the float model, its facts and the buildable configs."""

    source: ModelSource
    float_model: BuiltModel | None  # None when the float model lives on a Dask cluster's workers
    facts: ArchitectureFacts
    runnable: tuple[tuple[Engine, Any], ...]  # (engine, config resolved for the model)
    skipped: tuple[tuple[str, str], ...]  # (config label, why it cannot run)


def plan_sweep(
    source: ModelSource | str,
    configs: Sequence[Any] | None = None,
    *,
    engines: Sequence[str] | str | None = None,
    grid_options: GridOptions | None = None,
    option_variants: Sequence[dict[str, Any]] = ({},),
    settings: MeasureSettings | None = None,
    cache: Cache,
    export_config: ExportConfig | None = None,
    reporter: ProgressReporter,
) -> SweepPlan:
    """Check the engines, export the float model once, and resolve every config of the grid (or ``configs``).

    ``grid_options`` is the grid as :func:`run_sweep` takes it (default: ``int4_sym``, group
    size ``"auto"``, ratio 1). ``option_variants`` repeats the grid once per dict of extra ``CompressionConfig`` fields
    (``[{}, {"awq": True}]``: each config plain and with AWQ); a config two variants map to
    the same build (an engine that ignores the option) is kept once.
    """
    if configs is not None and engines is not None:
        raise ConfigError("Give configs or engines with a grid, not both: configs name their engine already.")
    settings = settings or MeasureSettings()
    source = resolve_source(source)
    involved = (
        parse_engines(engines or ("openvino",))
        if configs is None
        else tuple(dict.fromkeys(engine_for_config(c) for c in configs))
    )
    for engine in involved:  # before the export: a missing extra should not cost one
        reason = engine.missing()
        if reason is not None:
            raise MissingDependencyError(f"The {engine.name} engine cannot run here: {reason}")
    if settings.runtime is not None:
        for engine in involved:
            engine.check_runtime(settings.runtime)
    if isinstance(option_variants, dict) or not option_variants:
        raise ConfigError("option_variants is a list of option dicts, such as [{}, {'awq': True}].")

    float_model = REFERENCE_ENGINE.export_reference(source, export_config, cache=cache, reporter=reporter)
    facts = float_model.architecture  # type: ignore[attr-defined]
    skipped: list[tuple[str, str]] = []
    wanted: list[Any] = []
    if configs is None:
        spec = grid_options or GridOptions()
        for variant in option_variants:
            variant_configs, variant_skipped = grid(
                facts,
                engines=[e.name for e in involved],
                modes=spec.modes,
                group_sizes=spec.group_sizes,
                ratios=spec.ratios,
                accuracy_levels=spec.accuracy_levels,
                **{**dict(spec.options or {}), **variant},
            )
            wanted += variant_configs
            skipped += [s for s in variant_skipped if s not in skipped]
    else:
        wanted = list(configs)
    runnable: list[tuple[Engine, Any]] = []
    seen: set[tuple[str, str]] = set()
    for config in wanted:
        engine = engine_for_config(config)
        try:
            resolved = engine.resolve(config, facts)
        except ConfigError as exc:
            skipped.append((f"{engine.name} {engine.label(config)}", str(exc)))
            log.warning("Skipping %s %s: %s", engine.name, engine.label(config), exc)
            continue
        identity = (engine.name, resolved.fingerprint())
        if identity not in seen:
            seen.add(identity)
            runnable.append((engine, resolved))
    return SweepPlan(source, float_model, facts, tuple(runnable), tuple(skipped))


def run_sweep(
    source: ModelSource | str,
    configs: Sequence[Any] | None = None,
    *,
    engines: Sequence[str] | str | None = None,
    modes: Iterable[str] = ("int4_sym",),
    group_sizes: Iterable[int | str | None] = ("auto",),
    ratios: Iterable[float] = (1.0,),
    accuracy_levels: Iterable[int] = (4,),
    options: dict[str, Any] | None = None,
    option_variants: Sequence[dict[str, Any]] = ({},),
    settings: MeasureSettings | None = None,
    cache: Cache | None = None,
    ledger: Ledger | None = None,
    reuse: bool = True,
    export_config: ExportConfig | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
    on_record: Callable[[SweepRecord], None] | None = None,
    target: Any = None,
    optimize: str = "size",
    on_step: Callable[[Any], None] | None = None,
    gguf_native: bool = False,
    client: Any = None,
    worker_cache: str | None = None,
) -> SweepResult:
    """Export ``source`` once, build and measure every config of every engine, and return all records.

    ``gguf_native``: when ``source`` is a ``.gguf`` file (the bundled model is), also measure the
    source's own quantization as openvino-genai reads it
    (:func:`nbkit.engines.openvino.gguf_native.build_gguf_native`); for another source it is
    listed in ``skipped`` with the reason.

    Either ``configs`` (any engine's: a ``CompressionConfig`` is OpenVINO's, an
    ``OliveExportConfig`` ONNX Runtime GenAI's) or a grid: ``engines`` (default
    ``("openvino",)``) with ``modes``, ``group_sizes``, ``ratios``, ``accuracy_levels`` and the
    other ``CompressionConfig`` fields in ``options`` (repeated per ``option_variants``),
    mapped by each engine (see :func:`grid`).
    ``on_record`` is called as each record is ready (panels plot points as they arrive).
    Configs invalid for the model are skipped with their reason, never run.

    With a ``target`` (``"kl<=0.1"``, see :class:`nbkit.measure.pick.Target`) it runs the guided
    search of :func:`nbkit.measure.pick.pick` over the same configs instead of all of them:
    the result holds the configs it measured, and ``result.pick`` the path and the winner
    (the smallest, or with ``optimize="speed"`` the fastest, config meeting the target).

    With a Dask ``client`` (``dask.distributed.Client``) the float export, and each config's
    build and measurement, run as tasks on the cluster's workers, on workers that have the
    speed device (worker resources ``CPU``/``GPU``/``NPU``); records come home into ``ledger``
    and ``on_record`` as they finish, each naming the worker it was measured on. Each worker
    uses its own nbkit cache (the default cache of its machine), or ``worker_cache``: a folder
    on the worker, where ``{worker}`` is replaced by the worker's name. ``source`` must be a
    name or a path the workers can read. A task whose worker died is run again by Dask; the
    result lists it in ``retried``.
    """
    cache = cache or Cache()
    ledger = ledger if ledger is not None else Ledger(cache=cache)
    reporter = reporter or ProgressReporter(progress)
    settings = settings or MeasureSettings()
    if target is not None and gguf_native:
        raise ConfigError(
            "The guided search (target) does not consider the source's own quantization yet; "
            "run the sweep without a target to measure it next to the other configs."
        )
    if client is not None and gguf_native:
        raise ConfigError(
            "The source's own quantization (gguf_native) is measured in this process only; "
            "run it without a Dask client."
        )
    if worker_cache is not None and client is None:
        raise ConfigError("worker_cache names the cache folder of Dask workers; give it with a client.")
    if target is not None:  # a bad target fails before the export
        parsed_target = Target.parse(target)
        parsed_optimize = parse_optimize(optimize)
        parsed_target.check_answers(settings.answers)
    grid_options = GridOptions(
        modes=tuple(modes),
        group_sizes=tuple(group_sizes),
        ratios=tuple(ratios),
        accuracy_levels=tuple(accuracy_levels),
        options=options,
    )
    measurer: _Measurer
    if client is None:
        plan = plan_sweep(
            source,
            configs,
            engines=engines,
            grid_options=grid_options,
            option_variants=option_variants,
            settings=settings,
            cache=cache,
            export_config=export_config,
            reporter=reporter.step(0.0, 0.15),
        )
        measurer = _HereMeasurer(plan, settings=settings, cache=cache, ledger=ledger, reuse=reuse)
    else:
        cluster_measurer = _ClusterMeasurer(
            client,
            source=source,
            export_config=export_config,
            settings=settings,
            ledger=ledger,
            reuse=reuse,
            worker_cache=worker_cache,
            check=reporter.check,
        )
        plan = cluster_measurer.plan(
            PlanJob(
                source=source,
                configs=tuple(configs) if configs is not None else None,
                engines=engines,
                grid_options=grid_options,
                option_variants=tuple(option_variants)
                if not isinstance(option_variants, dict)
                else option_variants,  # type: ignore[arg-type]
                settings=settings,
                export_config=export_config,
                worker_cache=worker_cache,
                cancel_event="",
            ),
            reporter.step(0.0, 0.15),
        )
        if not plan.runnable:
            raise ConfigError(
                "No configuration of this grid can be built for the model: "
                + "; ".join(f"{label}: {why}" for label, why in plan.skipped[:3])
            )
        measurer = cluster_measurer
    with measurer:
        if target is not None:
            return _search(
                plan,
                parsed_target,
                parsed_optimize,
                measurer=measurer,
                reporter=reporter.step(0.15, 1.0),
                on_record=on_record,
                on_step=on_step,
            )
        steps = len(plan.runnable) + 1 + int(gguf_native)  # the reference, each config, the GGUF's own
        span = 0.85 / steps
        reference = measurer.reference(reporter.step(0.15, 0.15 + span))
        if on_record is not None:
            on_record(reference)
        by_index: dict[int, SweepRecord] = {}
        for index, record in measurer.measure_all(
            plan.runnable, reporter.step(0.15 + span, 1.0 - span * gguf_native)
        ):
            by_index[index] = record
            if on_record is not None:
                on_record(record)
        records = [by_index[i] for i in sorted(by_index)]  # the grid's order, whatever order they finished in
    skipped = plan.skipped
    if gguf_native:
        record, reason = _measure_gguf_native(
            plan,
            settings=settings,
            cache=cache,
            ledger=ledger,
            reuse=reuse,
            reporter=reporter.step(1.0 - span, 1.0),
        )
        if record is not None:
            records.append(record)
            if on_record is not None:
                on_record(record)
        else:
            skipped = (*skipped, ("openvino gguf-native", reason))
    reporter.report(1.0, f"Swept {len(records)} configs")
    return SweepResult(
        reference=reference, records=tuple(records), skipped=skipped, retried=tuple(measurer.retried)
    )


def _measure_gguf_native(
    plan: SweepPlan,
    *,
    settings: MeasureSettings,
    cache: Cache,
    ledger: Ledger,
    reuse: bool,
    reporter: ProgressReporter,
) -> tuple[SweepRecord | None, str]:
    """The record of the source's own quantization, or None and why there is none."""
    assert plan.float_model is not None
    try:
        built = REFERENCE_ENGINE.source_quantization(
            plan.float_model, cache=cache, reporter=reporter.step(0.0, 0.3)
        )
    except ModelSourceError as exc:
        log.warning("No GGUF-native configuration: %s", exc)
        return None, str(exc)
    record = measure(
        built, plan.float_model, settings, ledger=ledger, reuse=reuse, reporter=reporter.step(0.3, 1.0)
    )
    return record, ""


def build_and_measure(
    plan: SweepPlan,
    engine: Engine,
    config: Any,
    *,
    settings: MeasureSettings,
    cache: Cache,
    ledger: Ledger | None,
    reuse: bool,
    reporter: ProgressReporter,
    worker: Worker,
    known: KnownRecords | None = None,
    machine: MachineWork | None = None,
) -> SweepRecord:
    """Build one config of ``plan`` (or take it from the cache) and measure it against the float model."""
    assert plan.float_model is not None
    machine = machine or MachineWork(check=reporter.check)
    with machine.shared():  # a build never runs next to another process's speed measurement
        built = engine.build(
            plan.source,
            config,
            reference=plan.float_model,
            cache=cache,
            reporter=reporter.step(0.0, 0.5),
            worker=worker,
        )
    return measure(
        built,
        plan.float_model,
        settings,
        ledger=ledger,
        reuse=reuse,
        reporter=reporter.step(0.5, 1.0),
        known=known,
        machine=machine,
    )


class _Measurer:
    """Where a sweep's configs are built and measured: here (:class:`_HereMeasurer`) or on a Dask cluster."""

    retried: list[tuple[str, int]]

    def __enter__(self) -> _Measurer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def reference(self, reporter: ProgressReporter) -> SweepRecord:
        raise NotImplementedError

    def one(self, engine: Engine, config: Any, reporter: ProgressReporter) -> SweepRecord:
        raise NotImplementedError

    def measure_all(
        self, runnable: Sequence[tuple[Engine, Any]], reporter: ProgressReporter
    ) -> Iterator[tuple[int, SweepRecord]]:
        """(index in ``runnable``, record) for each config, as each is ready."""
        span = 1.0 / max(len(runnable), 1)
        for index, (engine, config) in enumerate(runnable):
            yield index, self.one(engine, config, reporter.step(index * span, (index + 1) * span))


class _HereMeasurer(_Measurer):
    """Builds and measures in this process; one worker process compresses every NNCF config
    (NNCF/OpenVINO are imported once, not per config)."""

    def __init__(
        self, plan: SweepPlan, *, settings: MeasureSettings, cache: Cache, ledger: Ledger, reuse: bool
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.cache = cache
        self.ledger = ledger
        self.reuse = reuse
        self.retried = []
        self._worker = Worker()

    def __exit__(self, *exc_info: object) -> None:
        self._worker.close()

    def reference(self, reporter: ProgressReporter) -> SweepRecord:
        assert self.plan.float_model is not None
        return measure(
            self.plan.float_model,
            self.plan.float_model,
            self.settings,
            ledger=self.ledger,
            reuse=self.reuse,
            reporter=reporter,
        )

    def one(self, engine: Engine, config: Any, reporter: ProgressReporter) -> SweepRecord:
        return build_and_measure(
            self.plan,
            engine,
            config,
            settings=self.settings,
            cache=self.cache,
            ledger=self.ledger,
            reuse=self.reuse,
            reporter=reporter,
            worker=self._worker,
        )


@dataclass(frozen=True)
class PlanJob:
    """What a worker needs to plan a sweep: the float export and the configs that fit the model."""

    source: Any
    configs: tuple[Any, ...] | None
    engines: Sequence[str] | str | None
    grid_options: GridOptions
    option_variants: Sequence[dict[str, Any]]
    settings: MeasureSettings
    export_config: ExportConfig | None
    worker_cache: str | None
    cancel_event: str


@dataclass(frozen=True)
class ClusterJob:
    """One task of a sweep on a cluster: export (cached), build ``config`` (None: the float model) and measure."""

    source: Any
    config: Any | None
    label: str
    settings: MeasureSettings
    export_config: ExportConfig | None
    reuse: bool
    worker_cache: str | None
    cancel_event: str


def _task_setup(cancel_event: str, worker_cache: str | None) -> tuple[ProgressReporter, Cache, MachineWork]:
    from nbkit.measure.cluster import ClusterCancelToken, worker_cache_root

    reporter = (
        ProgressReporter(cancel=ClusterCancelToken(cancel_event)) if cancel_event else ProgressReporter()
    )
    reporter.check()  # a task of a cancelled sweep ends as it starts
    cache = Cache(worker_cache_root(worker_cache))
    return reporter, cache, MachineWork(check=reporter.check)


def plan_cluster_job(job: PlanJob) -> tuple[ArchitectureFacts, tuple[Any, ...], tuple[tuple[str, str], ...]]:
    """On a worker: export the float model into the worker's cache and resolve the configs."""
    reporter, cache, machine = _task_setup(job.cancel_event, job.worker_cache)
    with machine.shared():
        plan = plan_sweep(
            job.source,
            list(job.configs) if job.configs is not None else None,
            engines=job.engines,
            grid_options=job.grid_options,
            option_variants=job.option_variants,
            settings=job.settings,
            cache=cache,
            export_config=job.export_config,
            reporter=reporter,
        )
    return plan.facts, tuple(config for _, config in plan.runnable), plan.skipped


_TASK_WORKERS = threading.local()


def _task_worker() -> Worker:
    # One compression process per Dask worker thread, kept between tasks like a serial sweep's.
    worker = getattr(_TASK_WORKERS, "worker", None)
    if worker is None:
        worker = _TASK_WORKERS.worker = Worker()
    return worker


def run_cluster_job(job: ClusterJob, known: KnownRecords) -> dict[str, Any]:
    """On a worker: the record of ``job`` as a dict (the float export and the build come from
    the worker's cache when they are there; a record in ``known`` is reused as :func:`measure` says)."""
    reporter, cache, machine = _task_setup(job.cancel_event, job.worker_cache)
    source = resolve_source(job.source)
    with machine.shared():
        float_model = REFERENCE_ENGINE.export_reference(
            source, job.export_config, cache=cache, reporter=reporter.step(0.0, 0.1)
        )
    if job.config is None:
        record = measure(
            float_model,
            float_model,
            job.settings,
            reuse=job.reuse,
            reporter=reporter.step(0.1, 1.0),
            known=known,
            machine=machine,
        )
    else:
        plan = SweepPlan(source, float_model, float_model.architecture, (), ())  # type: ignore[attr-defined]
        record = build_and_measure(
            plan,
            engine_for_config(job.config),
            job.config,
            settings=job.settings,
            cache=cache,
            ledger=None,
            reuse=job.reuse,
            reporter=reporter.step(0.1, 1.0),
            worker=_task_worker(),
            known=known,
            machine=machine,
        )
    return record.to_dict()


class _ClusterMeasurer(_Measurer):
    """Runs each config as a Dask task; records come home into the client's ledger as they finish."""

    def __init__(
        self,
        client: Any,
        *,
        source: Any,
        export_config: ExportConfig | None,
        settings: MeasureSettings,
        ledger: Ledger,
        reuse: bool,
        worker_cache: str | None,
        check: Callable[[], None],
    ) -> None:
        from nbkit.measure.cluster import ClusterRun, device_resources, require_distributed

        require_distributed()
        if isinstance(source, ModelSource):
            source_spec: Any = source
        else:
            source_spec = str(source)
        self.source = source_spec
        self.export_config = export_config
        self.settings = settings
        self.ledger = ledger
        self.reuse = reuse
        self.worker_cache = worker_cache
        self.retried = []
        device = settings.runtime.device if settings.runtime is not None else "CPU"
        self.run = ClusterRun(client, resources=device_resources(client, device), check=check)
        self._earlier = ledger.records(MEASUREMENT_KIND) if reuse else []  # what tasks may reuse
        self._model: str | None = None  # the model's name, once the float model's record is home

    def _task_known(self) -> KnownRecords:
        # What a task may reuse travels with it (not scattered: data kept only on workers is lost
        # with a killed worker, and Dask then cancels what depends on it). Once the model is
        # known, only its own records travel.
        return KnownRecords(r for r in self._earlier if self._model is None or r.get("model") == self._model)

    def plan(self, job: PlanJob, reporter: ProgressReporter) -> SweepPlan:
        reporter.report(0.0, "Exporting the float model on a worker of the cluster")
        job = dataclasses.replace(job, cancel_event=self.run.event_name)
        facts, configs, skipped = self.run.run_one(plan_cluster_job, job, label="the float export").result
        runnable = tuple((engine_for_config(config), config) for config in configs)
        reporter.report(1.0, f"Planned {len(runnable)} configurations")
        return SweepPlan(resolve_source_lazily(self.source), None, facts, runnable, skipped)

    def _job(self, config: Any, label: str) -> ClusterJob:
        return ClusterJob(
            source=self.source,
            config=config,
            label=label,
            settings=self.settings,
            export_config=self.export_config,
            reuse=self.reuse,
            worker_cache=self.worker_cache,
            cancel_event=self.run.event_name,
        )

    def _arrived(self, finished: Any) -> SweepRecord:
        record = SweepRecord.from_dict(finished.result)
        if finished.retries:
            self.retried.append((finished.label, finished.retries))
        reused = any(r.get("key") == record.key and r.get("created") == record.created for r in self._earlier)
        if not reused:  # a record the task reused is in the ledger already
            self.ledger.append(record.to_dict())
            self._earlier.append(record.to_dict())
        return record

    def reference(self, reporter: ProgressReporter) -> SweepRecord:
        reporter.report(0.0, "Measuring the float model on the cluster")
        record = self._arrived(
            self.run.run_one(run_cluster_job, self._job(None, "float"), self._task_known(), label="float")
        )
        self._model = record.model
        reporter.report(1.0, f"Measured the float model on {record.place}")
        return record

    def one(self, engine: Engine, config: Any, reporter: ProgressReporter) -> SweepRecord:
        label = f"{engine.name} {engine.label(config)}"
        reporter.report(0.0, f"Building and measuring {label} on the cluster")
        record = self._arrived(
            self.run.run_one(run_cluster_job, self._job(config, label), self._task_known(), label=label)
        )
        reporter.report(1.0, f"Measured {label} on {record.place}")
        return record

    def measure_all(
        self, runnable: Sequence[tuple[Engine, Any]], reporter: ProgressReporter
    ) -> Iterator[tuple[int, SweepRecord]]:
        reporter.check()  # cancelled meanwhile: send nothing
        index_of: dict[str, int] = {}
        futures = []
        known = self._task_known()
        for index, (engine, config) in enumerate(runnable):
            label = f"{engine.name} {engine.label(config)}"
            future = self.run.submit(run_cluster_job, self._job(config, label), known, label=label)
            index_of[future.key] = index
            futures.append(future)
        keys = {future.key: future for future in futures}
        reporter.report(0.0, f"{len(futures)} configurations sent to the cluster")
        for done, finished in enumerate(self.run.as_finished(keys.values()), start=1):
            record = self._arrived(finished)
            reporter.report(done / max(len(futures), 1), f"Measured {finished.label} on {record.place}")
            yield index_of[finished.key], record


def resolve_source_lazily(source: Any) -> Any:
    """The source as the client can name it: resolved when it resolves here, else as given
    (a path only the workers can read)."""
    try:
        return resolve_source(source)
    except Exception:  # the workers resolve it; the client only needs its name
        return source


def _search(
    plan: SweepPlan,
    target: Target,
    optimize: str,
    *,
    measurer: _Measurer,
    reporter: ProgressReporter,
    on_record: Callable[[SweepRecord], None] | None = None,
    on_step: Callable[[PickStep], None] | None = None,
) -> SweepResult:
    """Run the guided search over ``plan``'s configs; the records it measured, with ``.pick`` set."""
    candidates = candidates_of(plan.runnable, plan.facts)
    engines = {engine.name: engine for engine, _ in plan.runnable}
    if not candidates:
        raise ConfigError(
            "No configuration of this grid can be built for the model, so there is nothing to search: "
            + "; ".join(f"{label}: {why}" for label, why in plan.skipped[:3])
        )
    started = time.time()
    span = 1.0 / (len(candidates) + 1)  # the float model, then at most every candidate
    reference = measurer.reference(reporter.step(0.0, span))
    if on_record is not None:
        on_record(reference)
    evaluated = 0

    def evaluate(candidate: Candidate) -> tuple[SweepRecord, bool]:
        nonlocal evaluated
        evaluated += 1
        start = span * evaluated
        record = measurer.one(
            engines[candidate.engine], candidate.config, reporter.step(start, min(start + span, 1.0))
        )
        if on_record is not None:
            on_record(record)
        return record, record.created < started

    result = guided_search(candidates, target, optimize, evaluate, on_step=on_step)
    reporter.report(1.0, result.conclusion())
    log.info("%s", result.conclusion())
    records = tuple(step.record for step in result.steps if isinstance(step.record, SweepRecord))
    return SweepResult(
        reference=reference,
        records=records,
        skipped=plan.skipped,
        pick=result,
        retried=tuple(measurer.retried),
    )


def pick(
    source: ModelSource | str,
    target: str | Target | Sequence[str],
    *,
    optimize: str = "size",
    engines: Sequence[str] | str | None = None,
    modes: Iterable[str] = PICK_MODES,
    group_sizes: Iterable[int | str | None] = PICK_GROUP_SIZES,
    ratios: Iterable[float] = PICK_RATIOS,
    accuracy_levels: Iterable[int] = (4,),
    data_aware: Sequence[str] | str = (),
    options: dict[str, Any] | None = None,
    **sweep_options: Any,
) -> PickResult:
    """The smallest (``optimize="size"``) or fastest (``"speed"``) config of a grid meeting ``target``.

    ``target`` is text such as ``"kl<=0.1"`` or ``"kl<=0.1,top1>=90%"`` (metrics: ``kl``,
    ``top1``, ``ppl_ratio``, ``answers``; see :class:`~nbkit.measure.pick.Target`). The grid
    is a sweep's (``engines``, ``modes``, ``group_sizes``, ``ratios``, ``accuracy_levels``,
    ``options``); group sizes that do not fit the model are left out with the reason.
    ``data_aware`` names ``CompressionConfig`` flags (``"awq"``, ``"scale_estimation"``,
    ``"gptq"``, ``"lora_correction"``) each tried as an alternative to plain rounding. Other
    keyword arguments go to :func:`run_sweep` (``settings``, ``cache``, ``ledger``,
    ``progress``, ``on_record``, ``on_step``…). Read ``.winner``, ``.conclusion()``, ``.steps``.
    """
    result = run_sweep(
        source,
        engines=engines,
        modes=modes,
        group_sizes=group_sizes,
        ratios=ratios,
        accuracy_levels=accuracy_levels,
        options=options,
        option_variants=option_variants(data_aware),
        target=target,
        optimize=optimize,
        **sweep_options,
    )
    assert result.pick is not None
    return result.pick


def dominates(a: SweepRecord, b: SweepRecord) -> bool:
    """``a`` is no worse than ``b`` on size, KL and speed, and strictly better on one."""
    no_worse = a.weights_mib <= b.weights_mib and a.mean_kl <= b.mean_kl and a.tokens_per_s >= b.tokens_per_s
    better = a.weights_mib < b.weights_mib or a.mean_kl < b.mean_kl or a.tokens_per_s > b.tokens_per_s
    return no_worse and better


def pareto_front(records: Sequence[SweepRecord]) -> list[SweepRecord]:
    """The records no other record dominates, smallest first."""
    front = [r for r in records if not any(dominates(other, r) for other in records if other is not r)]
    return sorted(front, key=lambda r: r.weights_mib)


TABLE_HEADER = (
    "engine",
    "config",
    "front",
    "MiB",
    "x smaller",
    "ppl ratio",
    "mean KL",
    "KL p99",
    "top-1",
    "tokens/s",
    "TTFT ms",
    "peak RSS MiB",
    "answers",
)
# What the compact quality cells mean; the ledger and record_summary() have every statistic.
TABLE_NOTE = (
    "ppl ratio: perplexity over the float model's; ± one standard error; "
    "KL p99: 99th percentile of the per-token KL (nats). "
    "Size and quality do not depend on the machine (one measurement serves every machine); "
    "tokens/s, TTFT and peak RSS hold for the machine they were measured on."
)
# The extra column when the records' speed was measured in more than one place (a cluster).
PLACE_COLUMN = "speed measured on"


def speed_places(records: Sequence[SweepRecord]) -> list[str]:
    """The distinct places (host, Dask worker, device) the records' speed was measured on."""
    return list(dict.fromkeys(record.place for record in records))


def table_header(records: Sequence[SweepRecord]) -> tuple[str, ...]:
    """:data:`TABLE_HEADER`, with :data:`PLACE_COLUMN` when speed was measured in several places."""
    return (*TABLE_HEADER, PLACE_COLUMN) if len(speed_places(records)) > 1 else TABLE_HEADER


def _with_error(value: float, error: float | None, digits: int, scale: float = 1.0) -> str:
    text = f"{value * scale:.{digits}f}"
    # No error (a record from before it was measured) or an exact zero (the float model itself).
    return text if not error else f"{text} ± {error * scale:.{digits}f}"


def table_rows(records: Sequence[SweepRecord]) -> list[tuple[str, ...]]:
    """Rows for :data:`TABLE_HEADER`: the Pareto front first (smallest first), then the rest.

    Quality is compact: perplexity ratio, mean KL and top-1 with their standard errors and the
    KL's 99th percentile (records from before those were measured show the bare value, or "-").
    """
    front = pareto_front(records)
    rest = sorted((r for r in records if r not in front), key=lambda r: r.weights_mib)
    with_place = len(speed_places(records)) > 1
    rows = []
    for record in [*front, *rest]:
        ratio = record.size.compression_ratio
        answers = f"{record.answers.identical}/{record.answers.total}" if record.answers else "-"
        measured = record.quality
        rows.append(
            (
                record.engine,
                record.label,
                "*" if record in front else "",
                f"{record.weights_mib:.1f}",
                f"{ratio:.1f}" if ratio else "-",
                _with_error(measured.perplexity_ratio, measured.perplexity_ratio_stderr, 3),
                _with_error(measured.mean_kl, measured.mean_kl_stderr, 4),
                f"{measured.kl_p99:.4f}" if measured.kl_p99 is not None else "-",
                _with_error(measured.top1_agreement, measured.top1_stderr, 1, 100) + "%",
                f"{record.tokens_per_s:.1f}",
                f"{record.speed.ttft_ms:.0f}",
                f"{record.speed.peak_rss_mb:.0f}" if record.speed.peak_rss_mb > 0 else "-",
                answers,
            )
            + ((record.place,) if with_place else ())
        )
    return rows


def format_table(records: Sequence[SweepRecord]) -> str:
    """The table of :func:`table_rows` as aligned text, with :data:`TABLE_NOTE` below it."""
    header = table_header(records)
    rows = [header, *table_rows(records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, TABLE_NOTE])


@dataclass(frozen=True)
class Recommendation:
    """What decodes fastest and what answers first, among records measured on one machine."""

    fastest_decode: SweepRecord
    first_answer: SweepRecord
    machine: dict[str, Any]
    considered: int  # records of this machine that were compared

    def text(self) -> str:
        """Two sentences with the measured figures and the machine they hold for."""
        fast, first = self.fastest_decode, self.first_answer
        processor = self.machine.get("processor") or "this machine"
        host = self.machine.get("host")
        where = f"{host} ({processor})" if host else processor
        return (
            f"On {where}, of {self.considered} measured configurations, {fast.engine} {fast.label} "
            f"decodes fastest ({fast.tokens_per_s:.1f} tokens/s, mean KL {fast.mean_kl:.3f}) and "
            f"{first.engine} {first.label} answers first (time to first token {first.speed.ttft_ms:.0f} ms, "
            f"mean KL {first.mean_kl:.3f})."
        )


def recommend(records: Sequence[SweepRecord], machine: dict[str, Any] | None = None) -> Recommendation | None:
    """The fastest decoder and the first answerer among ``records`` measured on ``machine``
    (default: this one); None when none was. Speed is only compared where it was measured."""
    machine = machine if machine is not None else machine_summary()
    here = [r for r in records if r.machine == machine and r.tokens_per_s > 0]
    if not here:
        return None
    return Recommendation(
        fastest_decode=max(here, key=lambda r: r.tokens_per_s),
        first_answer=min(here, key=lambda r: r.speed.ttft_ms),
        machine=machine,
        considered=len(here),
    )


def recommend_per_machine(records: Sequence[SweepRecord]) -> list[Recommendation]:
    """One :class:`Recommendation` per machine the records' speed was measured on (a cluster's)."""
    machines: dict[str, dict[str, Any]] = {}
    for record in records:
        machines.setdefault(repr(sorted(record.machine.items())), record.machine)
    found = (recommend(records, machine) for machine in machines.values())
    return [recommendation for recommendation in found if recommendation is not None]


def ledger_records(ledger: Ledger, model: str | None = None) -> list[SweepRecord]:
    """The newest measurement of every configuration in ``ledger`` (of ``model`` when given)."""
    newest: dict[tuple[str, str, str], SweepRecord] = {}
    for data in ledger.records(MEASUREMENT_KIND):
        try:
            record = SweepRecord.from_dict(data)
        except (KeyError, TypeError, ValueError):
            continue  # a line from an older nbkit: skipped, not fatal
        if model is None or record.model == model:
            newest[(record.model, record.engine, record.model_path)] = record
    return list(newest.values())


def record_summary(record: SweepRecord) -> str:
    """Every quality statistic of one record as a few lines (the detail view of a table row)."""
    parts = [f"{record.engine} {record.label}", quality.quality_summary(record.quality)]
    if record.answers is not None:
        parts.append(evaluation.answers_summary(record.answers))
    parts.append(f"speed measured on {record.place}")
    return "\n".join(parts)


def replace_runtime(settings: MeasureSettings, runtime: RuntimeConfig) -> MeasureSettings:
    return dataclasses.replace(settings, runtime=runtime)
