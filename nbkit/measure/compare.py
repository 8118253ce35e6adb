"""Two (or more) built models side by side: size, quality against one float reference, and speed
timed in one interleaved run.

:func:`compare_models` is what notebook 07 and ``benchmarks/engines.py`` call to put an
OpenVINO model next to an ONNX Runtime GenAI one (or any two models of any engines):

* size and quality (perplexity, mean KL, top-1) against the same float ``reference``, on the
  same token ids (:func:`nbkit.measure.quality.measure_quality`);
* speed: every model is loaded once in its own worker process (so one runtime's thread pools
  never compete with another's), warmed up with one untimed turn, then timed round-robin
  for ``rounds`` rounds with the order rotated each round, so a noisy neighbour slows every
  model alike. Medians are reported, and ratios against a baseline.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.registry import require_engine_for_folder
from nbkit.errors import ConfigError
from nbkit.infra.cache import hold_entry
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.worker import Worker
from nbkit.measure.common import ModelLike, _model_dir
from nbkit.measure.evaluation import SizeReport, measure_size
from nbkit.measure.quality import QualityReport, measure_quality
from nbkit.measure.speed import MIB, high_water_rss_mb
from nbkit.sources.texts import SPEED_PROMPT


@dataclass(frozen=True)
class ComparedModel:
    """One model of a comparison: medians over the rounds, and every sample."""

    name: str
    engine: str
    model_path: str
    size: SizeReport
    quality: QualityReport
    load_s: float
    ttft_ms: float
    tokens_per_s: float
    ttft_samples: tuple[float, ...]
    tokens_per_s_samples: tuple[float, ...]
    peak_rss_mb: float

    @property
    def weights_mib(self) -> float:
        return self.size.weights_bytes / MIB


@dataclass(frozen=True)
class Comparison:
    models: tuple[ComparedModel, ...]
    rounds: int
    new_tokens: int
    prompt: str

    def __getitem__(self, name: str) -> ComparedModel:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def ratios(self, baseline: str | None = None) -> dict[str, dict[str, float]]:
        """Per model: its speed, TTFT and size over the baseline's (default: the first model)."""
        base = self[baseline] if baseline is not None else self.models[0]
        return {
            m.name: {
                "tokens_per_s": m.tokens_per_s / base.tokens_per_s if base.tokens_per_s else float("nan"),
                "ttft_ms": m.ttft_ms / base.ttft_ms if base.ttft_ms else float("nan"),
                "weights": m.size.weights_bytes / base.size.weights_bytes,
            }
            for m in self.models
        }

    def table(self, baseline: str | None = None) -> str:
        """A plain-text table: one row per model, ratios against ``baseline`` (default the first)."""
        ratios = self.ratios(baseline)
        header = (
            "model",
            "engine",
            "MiB",
            "perplexity",
            "mean KL",
            "top-1",
            "tokens/s",
            "x",
            "TTFT ms",
            "x",
            "load s",
        )
        rows = [header]
        for m in self.models:
            r = ratios[m.name]
            rows.append(
                (
                    m.name,
                    m.engine,
                    f"{m.weights_mib:.1f}",
                    f"{m.quality.perplexity:.2f}",
                    f"{m.quality.mean_kl:.4f}",
                    f"{m.quality.top1_agreement:.1%}",
                    f"{m.tokens_per_s:.1f}",
                    f"{r['tokens_per_s']:.2f}",
                    f"{m.ttft_ms:.0f}",
                    f"{r['ttft_ms']:.2f}",
                    f"{m.load_s:.2f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "new_tokens": self.new_tokens,
            "prompt": self.prompt,
            "models": [
                {
                    **{k: v for k, v in asdict(m).items() if k not in ("size", "quality")},
                    "size": m.size.to_dict(),
                    "quality": m.quality.to_dict(),
                }
                for m in self.models
            ],
            "ratios": self.ratios(),
        }


# -- worker side: one model per process ------------------------------------------------------------

_SESSION: dict[str, Any] = {}  # the child's loaded session, kept between rounds


def timed_turn(
    folder: str, runtime: RuntimeConfig | None, new_tokens: int, prompt: str, *, reporter: ProgressReporter
) -> dict[str, float]:
    """Child body: load ``folder`` once (first call, plus one untimed warm-up), then time one turn."""
    session = _SESSION.get(folder)
    load_s = 0.0
    if session is None:
        engine = require_engine_for_folder(Path(folder))
        settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        session = engine.open_chat(Path(folder), runtime, settings, warm_up=False)
        load_s = session.load_s
        session.send(prompt)  # warm-up: first runs compile kernels and fill caches
        _SESSION[folder] = session
    session.reset()  # every round is the same single-turn conversation
    metrics = session.send(prompt).metrics
    return {
        "load_s": load_s,
        "ttft_ms": metrics.ttft_ms,
        "tokens_per_s": metrics.tokens_per_s,
        "generated": metrics.generated_tokens,
        "peak_rss_mb": high_water_rss_mb() or 0.0,
    }


# -- parent side ----------------------------------------------------------------------------------


def compare_models(
    models: Mapping[str, ModelLike] | Sequence[ModelLike],
    reference: ModelLike,
    *,
    rounds: int = 5,
    new_tokens: int = 128,
    quality_tokens: int = 512,
    prompt: str = SPEED_PROMPT,
    runtimes: Mapping[str, RuntimeConfig] | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> Comparison:
    """Size, quality against ``reference`` and interleaved speed of ``models`` (any engines).

    ``models``: a mapping name -> model (an ``OVModel``, an ``OrtGenAIModel`` or a folder), or a
    sequence (named by their folders). ``runtimes``: name -> runtime; a model without one runs
    with what ``tune-device`` found for it, else its engine's default.
    """
    named = dict(models) if isinstance(models, Mapping) else {Path(_model_dir(m)).name: m for m in models}
    if len(named) < 1:
        raise ConfigError("Give at least one model to compare.")
    for what, value in (("rounds", rounds), ("new_tokens", new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{what} must be a positive integer, not {value!r}.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("The speed prompt is empty; pass a prompt with some text.")
    unknown = sorted(set(runtimes or {}) - set(named))
    if unknown:
        raise ConfigError(
            f"runtimes names {', '.join(unknown)}, which are not among the models ({', '.join(named)})."
        )
    reporter = reporter or ProgressReporter(progress)
    folders = {name: _model_dir(model) for name, model in named.items()}
    engines = {name: require_engine_for_folder(folder) for name, folder in folders.items()}
    chosen = {
        name: engines[name].check_runtime(runtimes[name])
        if runtimes and name in runtimes
        else engines[name].default_runtime(named[name])
        for name in named
    }

    sizes: dict[str, SizeReport] = {}
    qualities: dict[str, QualityReport] = {}
    for index, (name, folder) in enumerate(folders.items()):
        step = reporter.step(0.4 * index / len(folders), 0.4 * (index + 1) / len(folders))
        step.report(0.0, f"Measuring the quality of {name}")
        sizes[name] = measure_size(folder, reference)
        qualities[name] = measure_quality(folder, reference, num_tokens=quality_tokens, reporter=step)

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in named}
    names = list(named)
    workers = {name: Worker() for name in names}
    try:
        with contextlib.ExitStack() as holds:  # cache clear skips the entries while they are timed
            for folder in folders.values():
                holds.enter_context(hold_entry(folder))
            total = rounds * len(names)
            done = 0
            for round_index in range(rounds + 1):  # round 0 loads every model (timed apart)
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    reporter.report(
                        0.4 + 0.6 * done / (total + len(names)),
                        f"Speed: round {round_index} of {rounds}, {name}",
                    )
                    result = workers[name].run(
                        timed_turn,
                        str(folders[name]),
                        chosen[name],
                        new_tokens,
                        prompt,
                        reporter=ProgressReporter(cancel=reporter.cancel_token),
                    )
                    samples[name].append(result)
                    done += 1
    finally:
        for worker in workers.values():
            worker.close()

    compared = []
    for name in names:
        timed = samples[name][1:]  # round 0 is the one that loaded the model
        compared.append(
            ComparedModel(
                name=name,
                engine=engines[name].name,
                model_path=str(folders[name]),
                size=sizes[name],
                quality=qualities[name],
                load_s=samples[name][0]["load_s"],
                ttft_ms=statistics.median(s["ttft_ms"] for s in timed),
                tokens_per_s=statistics.median(s["tokens_per_s"] for s in timed),
                ttft_samples=tuple(s["ttft_ms"] for s in timed),
                tokens_per_s_samples=tuple(s["tokens_per_s"] for s in timed),
                peak_rss_mb=max(s["peak_rss_mb"] for s in samples[name]),
            )
        )
    reporter.report(1.0, "Compared")
    return Comparison(models=tuple(compared), rounds=rounds, new_tokens=new_tokens, prompt=prompt)
