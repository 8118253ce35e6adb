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
from pathlib import Path
from typing import Any

from nbkit.artifacts import OVModel
from nbkit.config import PropertyValue
from nbkit.engines.openvino.devices import check_device
from nbkit.engines.openvino.runtime import base_runtime
from nbkit.engines.tuning_report import DeviceTuning, record_tuning, time_round_robin, timings_from_raw
from nbkit.errors import ConfigError
from nbkit.infra.cache import Cache
from nbkit.infra.ledger import Ledger
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import versions
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

    def load(properties: dict[str, Any]) -> Any:
        pipeline = openvino_genai.LLMPipeline(str(model_path), device, **properties)
        pipeline.generate([TUNING_PROMPT], config)  # warm-up: first run compiles kernels
        return pipeline

    def run(pipeline: Any) -> tuple[float, float]:
        perf = pipeline.generate([TUNING_PROMPT], config).perf_metrics
        return perf.get_throughput().mean, perf.get_ttft().mean

    return time_round_robin(candidates, load, run, repeats, reporter=reporter)


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
    timings = timings_from_raw(raw)
    working = [t for t in timings if t.error is None and t.samples]
    eligible = None
    if default and working:  # the baseline only measures the speed-up unless it computes in nbkit's precision
        precision = base_runtime(device).property_dict.get(PRECISION_HINT)
        eligible = [t for t in working if t.properties.get(PRECISION_HINT) == precision] or None
    return record_tuning(
        engine="openvino",
        model=model,
        device=device,
        timings=timings,
        eligible=eligible,
        ledger=ledger if ledger is not None else Ledger(cache=Cache(model.cache_root)),
        new_tokens=new_tokens,
        repeats=repeats,
        runtime_name="openvino-genai",
        library_versions=versions(("openvino", "openvino-genai")),
    )
