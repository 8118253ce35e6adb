"""Sweeps: compress a model in many configurations, measure each, and find the Pareto front.

The float model is exported once; each configuration is compressed from it (cached) and
measured on the same fixed text and prompts (:mod:`nbkit.measure.evaluation`). Every measurement is
appended to the run ledger; a re-run reuses a record whose key (compressed model,
measurement settings, library versions, machine) still matches instead of measuring again.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nbkit.artifacts import OVModel
from nbkit.compression.weights import compress, resolve_config
from nbkit.config import (
    FOUR_BIT_ONLY,
    CompressionConfig,
    CompressionMode,
    ExportConfig,
    RuntimeConfig,
    _Fingerprinted,
)
from nbkit.engines.openvino.export import export_openvino
from nbkit.engines.openvino.runtime import default_runtime
from nbkit.errors import ConfigError
from nbkit.infra.cache import Cache, cache_key
from nbkit.infra.ledger import Ledger
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import COMPRESSION_LIBRARIES, machine_summary, versions
from nbkit.infra.worker import Worker
from nbkit.measure import evaluation, quality, speed
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
    runtime: RuntimeConfig | None = None  # None: what tune-device found for the model, else the default


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

    @property
    def all_records(self) -> list[SweepRecord]:
        return [self.reference, *self.records]

    @property
    def front(self) -> list[SweepRecord]:
        return pareto_front(self.all_records)


def grid(
    facts: ArchitectureFacts,
    *,
    modes: Iterable[str | CompressionMode] = ("int4_sym",),
    group_sizes: Iterable[int | str | None] = ("auto",),
    ratios: Iterable[float] = (1.0,),
    **options: Any,
) -> tuple[list[CompressionConfig], list[tuple[str, str]]]:
    """Valid configs of the cartesian product, and the (label, reason) of those left out.

    INT8 modes ignore group sizes, ratios and the 4-bit-only ``options`` (they are
    per-channel, every layer), so they appear once; a group size that does not fit the model is left out with the reason, never run.
    """
    configs: list[CompressionConfig] = []
    skipped: list[tuple[str, str]] = []
    seen: set[CompressionConfig] = set()
    # The 4-bit options (all_layers, backup mode, data-aware algorithms and their calibration)
    # shape the 4-bit configs of the grid; INT8 configs are per-channel over every layer.
    int8_options = {
        name: value
        for name, value in options.items()
        if name not in (*FOUR_BIT_ONLY, "sensitivity_metric", "calibration_samples", "calibration_tokens")
    }
    for mode, group_size, ratio in itertools.product(modes, group_sizes, ratios):
        parsed = CompressionMode.parse(mode)
        try:
            if parsed.is_int8:
                config = CompressionConfig(mode=parsed, group_size=None, **int8_options)
            else:
                config = CompressionConfig(mode=parsed, group_size=group_size, ratio=ratio, **options)
            config = resolve_config(config, facts)
        except ConfigError as exc:
            skipped.append((f"{parsed.value} g{group_size} r{ratio:g}", str(exc)))
            continue
        if config not in seen:
            seen.add(config)
            configs.append(config)
    return configs, skipped


def _record_key(model: OVModel, reference: OVModel, settings: MeasureSettings, runtime: RuntimeConfig) -> str:
    return cache_key(
        {
            "model": model.entry.key,
            "reference": reference.entry.key,
            "settings": settings.fingerprint(),
            "runtime": runtime.fingerprint(),
            "text": texts.evaluation_text_id(),  # pydoc topics change between Python versions
            "versions": versions(("openvino", "openvino-genai", *COMPRESSION_LIBRARIES)),
            "machine": machine_summary(),
        }
    )


def measure(
    model: OVModel,
    reference: OVModel,
    settings: MeasureSettings | None = None,
    *,
    ledger: Ledger | None = None,
    reuse: bool = True,
    reporter: ProgressReporter | None = None,
) -> SweepRecord:
    """Measure ``model`` against the float ``reference``; reuse a valid ledger record if any."""
    settings = settings or MeasureSettings()
    reporter = reporter or ProgressReporter()
    runtime = settings.runtime or default_runtime(model)
    key = _record_key(model, reference, settings, runtime)
    if ledger is not None and reuse:
        previous = ledger.latest(MEASUREMENT_KIND, key=key)
        if previous is not None:
            log.info("Reusing the measurement of %s from %s", model.label, ledger.path)
            return SweepRecord.from_dict(previous)
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
    reporter.report(0.5, f"Measuring speed of {model.label}")
    speed_report = speed.measure_speed(
        model,
        runtime,
        new_tokens=settings.speed_new_tokens,
        repeats=settings.speed_repeats,
        reporter=reporter.step(0.5, 0.8),
    )
    answers = None
    if settings.answers:
        reporter.report(0.8, f"Checking answers of {model.label}")
        answers = evaluation.measure_answers(model, reference, max_new_tokens=settings.answer_tokens)
    record = SweepRecord(
        key=key,
        model=model.source_name,
        engine="openvino",
        label=model.label,
        config=dict(model.entry.metadata.get("config", {})),
        model_path=str(model.path),
        size=size,
        quality=quality_report,
        speed=speed_report,
        answers=answers,
        versions=versions(("openvino", "openvino-genai", *COMPRESSION_LIBRARIES)),
        machine=machine_summary(),
        created=time.time(),
    )
    if ledger is not None:
        ledger.append(record.to_dict())
    reporter.report(1.0, f"Measured {model.label}")
    return record


def run_sweep(
    source: ModelSource | str,
    configs: Sequence[CompressionConfig],
    *,
    settings: MeasureSettings | None = None,
    cache: Cache | None = None,
    ledger: Ledger | None = None,
    reuse: bool = True,
    export_config: ExportConfig | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
    on_record: Callable[[SweepRecord], None] | None = None,
) -> SweepResult:
    """Export ``source`` once, compress and measure every config, and return all records.

    ``on_record`` is called as each record is ready (panels plot points as they arrive).
    Configs invalid for the model are skipped with their reason, never run.
    """
    cache = cache or Cache()
    ledger = ledger if ledger is not None else Ledger(cache=cache)
    reporter = reporter or ProgressReporter(progress)
    settings = settings or MeasureSettings()
    source = resolve_source(source)

    float_model = export_openvino(source, export_config, cache=cache, reporter=reporter.step(0.0, 0.15))
    facts = float_model.architecture
    runnable: list[CompressionConfig] = []
    skipped: list[tuple[str, str]] = []
    for config in configs:
        try:
            runnable.append(resolve_config(config, facts))
        except ConfigError as exc:
            skipped.append((config.label, str(exc)))
            log.warning("Skipping %s: %s", config.label, exc)

    steps = len(runnable) + 1
    span = 0.85 / steps
    reference = measure(
        float_model,
        float_model,
        settings,
        ledger=ledger,
        reuse=reuse,
        reporter=reporter.step(0.15, 0.15 + span),
    )
    if on_record is not None:
        on_record(reference)
    records: list[SweepRecord] = []
    # One worker process compresses every config: NNCF/OpenVINO are imported once, not per config.
    with Worker() as worker:
        for index, config in enumerate(runnable, start=1):
            start = 0.15 + index * span
            step = reporter.step(start, start + span)
            compressed = compress(
                float_model, config, cache=cache, reporter=step.step(0.0, 0.5), worker=worker
            )
            record = measure(
                compressed, float_model, settings, ledger=ledger, reuse=reuse, reporter=step.step(0.5, 1.0)
            )
            records.append(record)
            if on_record is not None:
                on_record(record)
    reporter.report(1.0, f"Swept {len(records)} configs")
    return SweepResult(reference=reference, records=tuple(records), skipped=tuple(skipped))


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
    "config",
    "front",
    "MiB",
    "x smaller",
    "perplexity",
    "mean KL",
    "top-1",
    "tokens/s",
    "TTFT ms",
    "answers",
)


def table_rows(records: Sequence[SweepRecord]) -> list[tuple[str, ...]]:
    """Rows for :data:`TABLE_HEADER`: the Pareto front first (smallest first), then the rest."""
    front = pareto_front(records)
    rest = sorted((r for r in records if r not in front), key=lambda r: r.weights_mib)
    rows = []
    for record in [*front, *rest]:
        ratio = record.size.compression_ratio
        answers = f"{record.answers.identical}/{record.answers.total}" if record.answers else "-"
        rows.append(
            (
                record.label,
                "*" if record in front else "",
                f"{record.weights_mib:.1f}",
                f"{ratio:.1f}" if ratio else "-",
                f"{record.quality.perplexity:.2f}",
                f"{record.mean_kl:.4f}",
                f"{record.quality.top1_agreement:.1%}",
                f"{record.tokens_per_s:.1f}",
                f"{record.speed.ttft_ms:.0f}",
                answers,
            )
        )
    return rows


def format_table(records: Sequence[SweepRecord]) -> str:
    rows = [TABLE_HEADER, *table_rows(records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def replace_runtime(settings: MeasureSettings, runtime: RuntimeConfig) -> MeasureSettings:
    return dataclasses.replace(settings, runtime=runtime)
