"""``tune-device`` for ONNX Runtime GenAI: time session options (thread counts) and keep the fastest.

The CPU execution provider has no performance hints; what changes its decode speed is how
many threads a session uses. Each candidate is one ``onnxruntime_genai.Model`` loaded with
its options in a fresh process, timed round-robin with the others (the same rules as the
OpenVINO side: a noisy neighbour slows every candidate alike), and the best goes to the
ledger, where the ORT engine's ``default_runtime`` finds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.ort.chat import OrtChatSession, check_ort_runtime
from nbkit.engines.tuning_report import DeviceTuning, record_tuning, time_round_robin, timings_from_raw
from nbkit.errors import ConfigError
from nbkit.infra.cache import Cache
from nbkit.infra.ledger import Ledger
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import versions
from nbkit.infra.worker import run_isolated

TUNING_PROMPT = "Write a short paragraph about the sea."
ORT_LIBRARIES = ("onnxruntime-genai", "onnxruntime")


def default_candidates(device: str = "CPU") -> list[dict[str, Any]]:
    """onnxruntime's defaults first (the baseline), then 1, half and all the cores for the decoder."""
    cores = os.cpu_count() or 1
    threads = sorted({1, max(1, cores // 2), cores})
    return [{}, *({"intra_op_num_threads": n} for n in threads)]


def time_candidates(
    model_path: Path,
    candidates: list[dict[str, Any]],
    new_tokens: int,
    repeats: int,
    *,
    reporter: ProgressReporter,
) -> list[dict[str, Any]]:
    """Child-process body: load every candidate, warm up, then time them round-robin."""
    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def load(properties: dict[str, Any]) -> OrtChatSession:
        session = OrtChatSession(model_path, RuntimeConfig.create("CPU", properties), settings, warm_up=False)
        session.send(TUNING_PROMPT)  # warm-up
        return session

    def run(session: OrtChatSession) -> tuple[float, float]:
        session.reset()  # every round is the same one-question conversation
        metrics = session.send(TUNING_PROMPT).metrics
        return metrics.tokens_per_s, metrics.ttft_ms

    return time_round_robin(candidates, load, run, repeats, reporter=reporter)


def tune_ort(
    model: Any,
    device: str = "CPU",
    candidates: list[dict[str, Any]] | None = None,
    *,
    new_tokens: int = 32,
    repeats: int = 3,
    ledger: Ledger | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> DeviceTuning:
    """Time ``candidates`` (default :func:`default_candidates`) on ``model`` and record the fastest."""
    check_ort_runtime(RuntimeConfig.create(device))
    if repeats < 1 or new_tokens < 1:
        raise ConfigError(f"repeats and new_tokens must be at least 1 (got {repeats}, {new_tokens}).")
    candidates = candidates if candidates is not None else default_candidates(device)
    if not candidates:
        raise ConfigError("No session-option candidates to time.")
    for candidate in candidates:  # a bad option fails now, not in the child
        check_ort_runtime(RuntimeConfig.create("CPU", candidate))
    reporter = reporter or ProgressReporter(progress)
    raw = run_isolated(time_candidates, model.path, candidates, new_tokens, repeats, reporter=reporter)
    return record_tuning(
        engine="ort",
        model=model,
        device="CPU",
        timings=timings_from_raw(raw),
        eligible=None,
        ledger=ledger if ledger is not None else Ledger(cache=Cache(model.path.parent.parent)),
        new_tokens=new_tokens,
        repeats=repeats,
        runtime_name="onnxruntime-genai",
        library_versions=versions(ORT_LIBRARIES),
    )
