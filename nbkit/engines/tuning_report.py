"""What ``tune-device`` reports, for every engine: timings per candidate and the best, in the ledger.

Each engine times its own candidates (its properties, its runtime) and hands the raw
samples to :func:`record_tuning`, which picks the fastest and appends one ledger record;
the engine's ``default_runtime`` reads it back with :func:`tuned_properties`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nbkit.config import PropertyValue, RuntimeConfig
from nbkit.errors import ConfigError, error_summary
from nbkit.infra.ledger import Ledger
from nbkit.infra.progress import ProgressReporter
from nbkit.infra.versions import machine_summary

TUNING_KIND = "device-tuning"  # the ledger records tune-device writes


@dataclass(frozen=True)
class CandidateTiming:
    properties: dict[str, PropertyValue]
    tokens_per_s: float  # median over repeats
    ttft_ms: float  # median over repeats
    samples: tuple[float, ...]
    error: str | None = None


@dataclass(frozen=True)
class DeviceTuning:
    device: str
    best: RuntimeConfig
    timings: tuple[CandidateTiming, ...]
    engine: str = "openvino"
    runtime_name: str = "openvino-genai"  # whose defaults the baseline (no properties) is

    @property
    def baseline(self) -> CandidateTiming | None:
        return next((t for t in self.timings if not t.properties and t.error is None), None)

    def speedup_over_defaults(self) -> float | None:
        base = self.baseline
        best = max((t for t in self.timings if t.error is None), key=lambda t: t.tokens_per_s)
        return best.tokens_per_s / base.tokens_per_s if base and base.tokens_per_s else None

    def table(self) -> str:
        rows = sorted(self.timings, key=lambda t: -t.tokens_per_s)
        lines = [f"{'properties':60}  {'tokens/s':>9}  {'TTFT ms':>8}"]
        for t in rows:
            props = (
                ", ".join(f"{k}={v}" for k, v in sorted(t.properties.items()))
                or f"({self.runtime_name} defaults)"
            )
            if t.error:
                lines.append(f"{props:60}  failed: {t.error}")
            else:
                lines.append(f"{props:60}  {t.tokens_per_s:9.1f}  {t.ttft_ms:8.0f}")
        return "\n".join(lines)


def time_round_robin(
    candidates: list[dict[str, Any]],
    load: Callable[[dict[str, Any]], Any],
    run: Callable[[Any], tuple[float, float]],
    repeats: int,
    *,
    reporter: ProgressReporter,
) -> list[dict[str, Any]]:
    """Child-process body both engines share: load and warm up every candidate, then time them.

    ``load(properties)`` returns a loaded, warmed-up runner (or raises: that candidate is
    reported with the error and the others are still timed); ``run(runner)`` times one turn and
    returns (tokens/s, TTFT ms). Rounds rotate the order, so no candidate always runs right after
    the same one and a noisy neighbour slows every candidate alike.
    """
    runners: list[Any] = []
    results: list[dict[str, Any]] = []
    for index, properties in enumerate(candidates):
        reporter.report(0.4 * index / len(candidates), f"Loading candidate {index + 1}/{len(candidates)}")
        try:
            runners.append(load(properties))
            results.append({"properties": properties, "speed": [], "ttft": [], "error": None})
        except Exception as exc:  # a device may refuse a property; report it, keep tuning the rest
            runners.append(None)
            results.append({"properties": properties, "speed": [], "ttft": [], "error": error_summary(exc)})
    total, done = repeats * len(candidates), 0
    for round_index in range(repeats):
        shift = round_index % len(candidates)
        for index in [*range(shift, len(candidates)), *range(shift)]:
            done += 1
            reporter.report(0.4 + 0.6 * done / total, f"Timing round {round_index + 1}/{repeats}")
            if runners[index] is None:
                continue
            tokens_per_s, ttft_ms = run(runners[index])
            results[index]["speed"].append(float(tokens_per_s))
            results[index]["ttft"].append(float(ttft_ms))
    return results


def timings_from_raw(raw: list[dict[str, Any]]) -> tuple[CandidateTiming, ...]:
    """Medians of the child's raw samples (``properties``, ``speed``, ``ttft``, ``error`` per candidate)."""
    return tuple(
        CandidateTiming(
            properties=dict(r["properties"]),
            tokens_per_s=statistics.median(r["speed"]) if r["speed"] else 0.0,
            ttft_ms=statistics.median(r["ttft"]) if r["ttft"] else 0.0,
            samples=tuple(r["speed"]),
            error=r["error"],
        )
        for r in raw
    )


def record_tuning(
    *,
    engine: str,
    model: Any,
    device: str,
    timings: tuple[CandidateTiming, ...],
    eligible: list[CandidateTiming] | None,
    ledger: Ledger,
    new_tokens: int,
    repeats: int,
    library_versions: dict[str, Any],
    runtime_name: str,
) -> DeviceTuning:
    """The fastest of ``eligible`` (default: every candidate that ran) as a DeviceTuning, recorded."""
    working = [t for t in timings if t.error is None and t.samples]
    if not working:
        raise ConfigError(
            f"No candidate property set could run {model.label} on {device}: {timings[0].error}"
        )
    best = max([t for t in (eligible or working) if t in working] or working, key=lambda t: t.tokens_per_s)
    ledger.append(
        {
            "kind": TUNING_KIND,
            "engine": engine,
            "model_key": model.entry.key,
            "model": model.source_name,
            "label": model.label,
            "device": device,
            "best": best.properties,
            "best_tokens_per_s": best.tokens_per_s,
            "new_tokens": new_tokens,
            "repeats": repeats,
            "timings": [
                {
                    "properties": t.properties,
                    "tokens_per_s": t.tokens_per_s,
                    "ttft_ms": t.ttft_ms,
                    "samples": list(t.samples),
                    "error": t.error,
                }
                for t in timings
            ],
            "versions": library_versions,
            "machine": machine_summary(),
            "created": time.time(),
        }
    )
    return DeviceTuning(
        device=device,
        best=RuntimeConfig.create(device, best.properties),
        timings=timings,
        engine=engine,
        runtime_name=runtime_name,
    )


def tuned_properties(ledger: Ledger, model_key: str, device: str) -> dict[str, PropertyValue] | None:
    """The best properties ``tune-device`` recorded for this model (by cache key) and device."""
    record = ledger.latest(TUNING_KIND, model_key=model_key, device=device.upper())
    return None if record is None else dict(record["best"])
