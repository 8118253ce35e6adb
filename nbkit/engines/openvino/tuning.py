"""Find the openvino-genai properties that decode fastest for one model on one device.

Decode speed depends a lot on pipeline properties (the same INT4 model measured ~40 to
~100 tokens/s on a 2-core CPU). :func:`tune_device` loads one pipeline per candidate in a
fresh process, times them interleaved round-robin with repeats (so a noisy neighbour slows
every candidate alike), reports medians, and records the best in the ledger, where
:func:`tuned_runtime` finds it: chat and sweeps then use it by default for that model and device.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.artifacts import OVModel
from nbkit.config import PropertyValue, RuntimeConfig
from nbkit.engines.openvino.devices import check_device
from nbkit.engines.openvino.runtime import TUNING_KIND, base_runtime
from nbkit.errors import ConfigError, error_summary
from nbkit.infra.cache import Cache
from nbkit.infra.ledger import Ledger
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import machine_summary, versions
from nbkit.infra.worker import run_isolated

log = logging.getLogger(__name__)

PRECISION_HINT = "INFERENCE_PRECISION_HINT"
TUNING_PROMPT = "Write a short paragraph about the sea."


def default_candidates(device: str = "CPU") -> list[dict[str, PropertyValue]]:
    """One-factor variations around nbkit's properties for ``device``, plus the plain defaults.

    The plain openvino-genai defaults (``{}``) are timed as the baseline of the speed-up; every
    other candidate keeps nbkit's inference precision (f32 on CPU, see
    :data:`nbkit.engines.openvino.runtime.DEFAULT_RUNTIME`), because tuning is about speed and must not
    change the answers.
    """
    latency: dict[str, PropertyValue] = dict(base_runtime(device).property_dict)
    candidates: list[dict[str, PropertyValue]] = [{}, latency, {**latency, "PERFORMANCE_HINT": "THROUGHPUT"}]
    candidates += [
        {**latency, "ATTENTION_BACKEND": "SDPA"},
        {**latency, "ATTENTION_BACKEND": "PA"},
    ]
    if device.upper().startswith("CPU"):
        cores = os.cpu_count() or 1
        threads = sorted({1, max(1, cores // 2), cores})
        candidates += [{**latency, "INFERENCE_NUM_THREADS": n} for n in threads]
        candidates += [
            {**latency, "NUM_STREAMS": 1},
            {**latency, "KV_CACHE_PRECISION": "f16"},
            {**latency, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
            {**latency, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 64},
        ]
    unique: list[dict[str, PropertyValue]] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


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
                ", ".join(f"{k}={v}" for k, v in sorted(t.properties.items())) or "(openvino-genai defaults)"
            )
            if t.error:
                lines.append(f"{props:60}  failed: {t.error}")
            else:
                lines.append(f"{props:60}  {t.tokens_per_s:9.1f}  {t.ttft_ms:8.0f}")
        return "\n".join(lines)


def time_candidates(
    model_path: Path,
    device: str,
    candidates: list[dict[str, PropertyValue]],
    new_tokens: int,
    repeats: int,
    *,
    reporter: ProgressReporter,
) -> list[dict[str, Any]]:
    """Child-process body: load every candidate, warm up, then time them round-robin."""
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = new_tokens
    config.min_new_tokens = new_tokens  # every run decodes exactly the same number of tokens
    pipelines: list[Any] = []
    results: list[dict[str, Any]] = []
    for index, properties in enumerate(candidates):
        reporter.report(0.4 * index / len(candidates), f"Loading candidate {index + 1}/{len(candidates)}")
        try:
            pipeline = openvino_genai.LLMPipeline(str(model_path), device, **properties)
            pipeline.generate([TUNING_PROMPT], config)  # warm-up: first run compiles kernels
            pipelines.append(pipeline)
            results.append({"properties": properties, "speed": [], "ttft": [], "error": None})
        except Exception as exc:  # a device may refuse a property; report it, keep tuning the rest
            pipelines.append(None)
            results.append({"properties": properties, "speed": [], "ttft": [], "error": error_summary(exc)})
    total = repeats * len(candidates)
    done = 0
    for round_index in range(repeats):
        # Rotate the order each round so no candidate always runs right after the same one.
        order = list(range(len(candidates)))
        order = order[round_index % len(order) :] + order[: round_index % len(order)]
        for index in order:
            done += 1
            reporter.report(0.4 + 0.6 * done / total, f"Timing round {round_index + 1}/{repeats}")
            if pipelines[index] is None:
                continue
            perf = pipelines[index].generate([TUNING_PROMPT], config).perf_metrics
            results[index]["speed"].append(float(perf.get_throughput().mean))
            results[index]["ttft"].append(float(perf.get_ttft().mean))
    return results


def tune_device(
    model: OVModel,
    device: str = "CPU",
    candidates: list[dict[str, PropertyValue]] | None = None,
    *,
    new_tokens: int = 32,
    repeats: int = 3,
    ledger: Ledger | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> DeviceTuning:
    """Time ``candidates`` (default :func:`default_candidates`) and record the fastest."""
    device = check_device(device)
    if repeats < 1 or new_tokens < 1:
        raise ConfigError(f"repeats and new_tokens must be at least 1 (got {repeats}, {new_tokens}).")
    default = candidates is None
    candidates = candidates if candidates is not None else default_candidates(device)
    if not candidates:
        raise ConfigError("No property candidates to time.")
    reporter = reporter or ProgressReporter(progress)
    raw = run_isolated(
        time_candidates, model.path, device, candidates, new_tokens, repeats, reporter=reporter
    )
    timings = tuple(
        CandidateTiming(
            properties=dict(r["properties"]),
            tokens_per_s=statistics.median(r["speed"]) if r["speed"] else 0.0,
            ttft_ms=statistics.median(r["ttft"]) if r["ttft"] else 0.0,
            samples=tuple(r["speed"]),
            error=r["error"],
        )
        for r in raw
    )
    working = [t for t in timings if t.error is None and t.samples]
    if not working:
        raise ConfigError(
            f"No candidate property set could run {model.label} on {device}: {timings[0].error}"
        )
    if default:  # the baseline only measures the speed-up unless it computes in nbkit's precision
        precision = base_runtime(device).property_dict.get(PRECISION_HINT)
        eligible = [t for t in working if t.properties.get(PRECISION_HINT) == precision] or working
    else:
        eligible = working
    best = max(eligible, key=lambda t: t.tokens_per_s)
    result = DeviceTuning(device=device, best=RuntimeConfig.create(device, best.properties), timings=timings)
    ledger = ledger if ledger is not None else Ledger(cache=Cache(model.cache_root))
    ledger.append(
        {
            "kind": TUNING_KIND,
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
            "versions": versions(("openvino", "openvino-genai")),
            "machine": machine_summary(),
            "created": time.time(),
        }
    )
    return result
