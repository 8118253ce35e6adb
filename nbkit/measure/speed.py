"""Speed of a model on its engine: load time, time to first token, time per output token, memory.

:func:`measure_speed` times greedy generation, by default in a fresh process so its memory
belongs to the measured model alone. It lives apart from :mod:`nbkit.measure.evaluation` to keep
modules small; that module re-exports :func:`measure_speed` and :class:`SpeedReport`.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbkit.config import AssistedDecoding, GenerationSettings, RuntimeConfig
from nbkit.engines.registry import require_engine_for_folder
from nbkit.errors import ConfigError
from nbkit.infra.cache import hold_entry
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.worker import run_isolated
from nbkit.measure.common import ModelLike, _model_dir
from nbkit.sources.texts import SPEED_PROMPT

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class SpeedReport:
    """Medians over ``repeats`` timed generations of ``new_tokens`` tokens each (after one warm-up).

    ``peak_rss_mb`` (MiB): in an isolated run, the measuring process's resident-memory high-water
    mark, i.e. what loading and running this model needs; otherwise the resident memory of the
    calling process after the runs, which includes whatever else it holds.
    """

    load_s: float
    ttft_ms: float
    tpot_ms: float
    tokens_per_s: float
    new_tokens: int
    repeats: int
    peak_rss_mb: float
    # Median tokens per step of the model: 1.0 in plain decoding, more when assisted decoding
    # (``assisted``) accepted guesses; 0.0 when the engine does not count steps.
    tokens_per_step: float = 0.0
    assisted: str = ""  # the assisted decoding's label, "" for plain decoding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedReport:
        return cls(
            load_s=float(data["load_s"]),
            ttft_ms=float(data["ttft_ms"]),
            tpot_ms=float(data["tpot_ms"]),
            tokens_per_s=float(data["tokens_per_s"]),
            new_tokens=int(data["new_tokens"]),
            repeats=int(data["repeats"]),
            peak_rss_mb=float(data["peak_rss_mb"]),
            tokens_per_step=float(data.get("tokens_per_step", 0.0)),
            assisted=str(data.get("assisted", "")),
        )


# -- speed ---------------------------------------------------------------------------------


def measure_speed(
    model: ModelLike,
    runtime: RuntimeConfig | None = None,
    *,
    new_tokens: int = 64,
    repeats: int = 3,
    prompt: str = SPEED_PROMPT,
    isolated: bool = True,
    assisted: AssistedDecoding | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> SpeedReport:
    """Load time and median greedy generation speed of ``model`` with its engine's runtime.

    ``assisted``: time prompt-lookup or speculative decoding instead of plain decoding (the
    report then says how many tokens each step of the model yielded).

    ``runtime``: None uses what ``nbkit tune-device`` found for the model, else the engine's
    default; both engines time the same prompt the same way (one chat session, greedy).

    Every run generates exactly ``new_tokens`` tokens (min = max new tokens), so runs and
    models compare like for like. One untimed warm-up run comes first. With ``isolated``
    (default) the measurement runs in a fresh process: its memory belongs to this model
    alone and nothing a notebook holds slows it down.

    The models' cache entries are held in use meanwhile: ``nbkit cache clear`` skips them.
    """
    with hold_entry(_model_dir(model)):
        return _measure_speed(
            model,
            runtime,
            new_tokens=new_tokens,
            repeats=repeats,
            prompt=prompt,
            isolated=isolated,
            assisted=assisted,
            progress=progress,
            reporter=reporter,
        )


def _measure_speed(
    model: ModelLike,
    runtime: RuntimeConfig | None = None,
    *,
    new_tokens: int = 64,
    repeats: int = 3,
    prompt: str = SPEED_PROMPT,
    isolated: bool = True,
    assisted: AssistedDecoding | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> SpeedReport:
    """The body of :func:`measure_speed`."""
    folder = _model_dir(model)
    for name, value in (("new_tokens", new_tokens), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, not {value!r}.")
    if not prompt.strip():
        raise ConfigError("The speed prompt is empty; pass a prompt with some text.")
    engine = require_engine_for_folder(folder)
    runtime = engine.check_runtime(runtime) if runtime is not None else engine.default_runtime(model)
    reporter = reporter or ProgressReporter(progress)
    if isolated:
        return run_isolated(
            speed_in_this_process,
            folder,
            runtime,
            new_tokens,
            repeats,
            prompt,
            True,
            assisted=assisted,
            reporter=reporter,
        )
    return speed_in_this_process(
        folder, runtime, new_tokens, repeats, prompt, False, assisted=assisted, reporter=reporter
    )


def speed_in_this_process(
    folder: Path,
    runtime: RuntimeConfig,
    new_tokens: int,
    repeats: int,
    prompt: str,
    own_process: bool,
    *,
    assisted: AssistedDecoding | None = None,
    reporter: ProgressReporter,
) -> SpeedReport:
    """The body of :func:`measure_speed` (module level so :func:`run_isolated` can start it)."""
    import psutil

    reporter.report(0.0, f"Loading {folder.name}")
    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    session = require_engine_for_folder(folder).open_chat(
        folder, runtime, settings, assisted=assisted, warm_up=False
    )
    turns = []
    for run in range(repeats + 1):  # run 0 warms up caches and kernels and is not counted
        reporter.report((run + 1) / (repeats + 2), "Warming up" if run == 0 else f"Run {run} of {repeats}")
        session.reset()  # a fresh conversation: every run sees the same prompt
        turn = session.send(prompt)
        if run > 0:
            turns.append(turn.metrics)
    session.close()  # releases the model's cache entry; the pipeline goes with the process
    generated = [m.generated_tokens for m in turns]
    if any(count != new_tokens for count in generated):
        log.warning("Asked for %d new tokens per run, got %s", new_tokens, generated)
    rss_mb = psutil.Process().memory_info().rss / MIB
    if own_process:  # the high-water mark includes loading, which needs more than decoding
        rss_mb = max(rss_mb, high_water_rss_mb() or 0.0)
    reporter.report(1.0, "Speed measured")
    return SpeedReport(
        load_s=session.load_s,
        ttft_ms=statistics.median(m.ttft_ms for m in turns),
        tpot_ms=statistics.median(m.tpot_ms for m in turns),
        tokens_per_s=statistics.median(m.tokens_per_s for m in turns),
        new_tokens=int(statistics.median(generated)),
        repeats=repeats,
        peak_rss_mb=rss_mb,
        tokens_per_step=statistics.median(m.tokens_per_step or 0.0 for m in turns),
        assisted=assisted.label if assisted is not None else "",
    )


def high_water_rss_mb() -> float | None:
    """This process's peak resident memory (Linux ``VmHWM``); None where the kernel has no such file."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB  # reported in kB
    return None


__all__ = ["SpeedReport", "high_water_rss_mb", "measure_speed", "speed_in_this_process"]
