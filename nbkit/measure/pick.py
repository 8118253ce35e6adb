"""Pick for me: the smallest (or fastest) configuration that meets a quality target, by a guided search.

A full sweep measures every configuration of a grid and leaves the choice to whoever reads
the chart. :func:`pick` answers "which group size and ratio should I use?" directly: given a
target such as ``"kl<=0.1"`` it measures configurations in the order of what they cost,
and stops once one meets the target and no untried one can beat it.

How it orders and prunes, over the same configs a sweep of the grid would build:

- **Cost first.** With ``optimize="size"`` the next config is the untried one with the
  smallest predicted size (each engine predicts its configs' size from the model's layer
  shapes, see :class:`~nbkit.engines.protocol.SearchTraits`, and the search calibrates those
  predictions on the sizes it measures). Among configs of equal size, plain rounding comes
  before the data-aware algorithms, the slowest to build last. In practice this walks
  ratio and group size from the coarsest setting towards finer ones, and tries AWQ, scale
  estimation, GPTQ or LoRA correction at a size before paying for a larger one.
- **Quality is monotone within a family.** Configs that differ only in ratio and group size
  form a family; one at least as coarse as a config that missed the target is assumed to
  miss it too, and is skipped without building. When a family's first config misses, its
  finest config is measured next: if even that misses, the whole family is out at once.
- **Stop when nothing can win.** A config whose calibrated size (less the largest
  prediction error seen) is no smaller than the best winner's cannot beat it. With
  ``optimize="speed"`` a config is assumed no faster than a coarser config of the same
  runtime layout already measured, and is skipped when that config was no faster than the
  best (up to :data:`SPEED_NOISE`, the noise of a decode-speed measurement).

Every measurement goes through :func:`nbkit.measure.sweep.measure`, so records land in the
ledger: a re-run, or a later full sweep, reuses them.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nbkit.engines.protocol import Engine, SearchTraits
from nbkit.errors import ConfigError
from nbkit.sources.architecture import ArchitectureFacts


class Measurement(Protocol):
    """What the search reads of a measured config (a :class:`nbkit.measure.sweep.SweepRecord`)."""

    engine: str
    label: str
    size: Any
    quality: Any
    answers: Any

    @property
    def weights_mib(self) -> float: ...

    @property
    def tokens_per_s(self) -> float: ...


log = logging.getLogger(__name__)

OPTIMIZE_CHOICES = ("size", "speed")
# The grid a search covers unless told otherwise: every group size a 4-bit config commonly
# uses (those that do not fit the model are left out with the reason) and ratios from all
# 4-bit down to 40 % of the layers kept in the backup precision.
PICK_MODES = ("int4_sym", "int4_asym")
PICK_GROUP_SIZES = (128, 64, 32)
PICK_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6)
# Before an engine's first measured size, its predictions may be off by this much.
UNCALIBRATED_SIZE_ERROR = 0.25
# Decode speed repeats within a few percent on a quiet machine, so a speed search skips a
# config by a bound that noise can beat by about this much (tests allow the winner this slack).
SPEED_NOISE = 0.10


# -- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    lower_is_better: bool
    read: Callable[[Measurement], float | None]
    percent: bool = False  # shown and accepted as a percentage

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.1%}" if self.percent else f"{value:.4g}"


def _answers_share(record: Measurement) -> float | None:
    if record.answers is None or not record.answers.total:
        return None
    return record.answers.identical / record.answers.total


def _perplexity_ratio(record: Measurement) -> float | None:
    reference = record.quality.reference_perplexity
    return record.quality.perplexity / reference if reference else None


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("kl", "mean KL", True, lambda r: r.quality.mean_kl),
        Metric("top1", "top-1 agreement", False, lambda r: r.quality.top1_agreement, percent=True),
        Metric("ppl_ratio", "perplexity / float perplexity", True, _perplexity_ratio),
        Metric("answers", "answers identical to the float model's", False, _answers_share, percent=True),
    )
}

_BOUND = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*(%?)\s*$")


@dataclass(frozen=True)
class Bound:
    """One clause of a target: ``metric op value``, such as ``kl <= 0.1``."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Bound:
        names = ", ".join(METRICS)
        match = _BOUND.match(text.lower())
        if match is None:
            raise ConfigError(
                f"Cannot read the target {text.strip()!r}; write a metric, <= or >=, and a number, "
                f"such as 'kl<=0.1' or 'top1>=90%' (metrics: {names})."
            )
        name, op, number, percent = match.groups()
        metric = METRICS.get(name)
        if metric is None:
            raise ConfigError(f"Unknown target metric {name!r} in {text.strip()!r}; choose one of: {names}.")
        try:
            value = float(number) / (100 if percent else 1)
        except ValueError:
            raise ConfigError(f"{number!r} in the target {text.strip()!r} is not a number.") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"The target {text.strip()!r} needs a finite number of at least 0.")
        wanted = "<" if metric.lower_is_better else ">"
        if not op.startswith(wanted):
            better = "lower" if metric.lower_is_better else "higher"
            raise ConfigError(
                f"{name} is better {better}, so a target on it is written {name}{wanted}=…, "
                f"such as '{name}{wanted}={value:g}'; {text.strip()!r} asks for the opposite."
            )
        if metric.percent and value > 1:
            raise ConfigError(
                f"{name} is a share: write it as 0.9 or 90%, at most 1 (100%), not {number}{percent}."
            )
        return cls(name, op, value)

    @property
    def spec(self) -> Metric:
        return METRICS[self.metric]

    def measured(self, record: Measurement) -> float | None:
        value = self.spec.read(record)
        return None if value is None or math.isnan(value) else float(value)

    def met(self, record: Measurement) -> bool:
        value = self.measured(record)
        if value is None:
            return False
        return {
            "<=": value <= self.value,
            "<": value < self.value,
            ">=": value >= self.value,
            ">": value > self.value,
        }[self.op]

    def shortfall(self, record: Measurement) -> float:
        """How far ``record`` is from this bound, relative to the bound (0 when met)."""
        value = self.measured(record)
        if value is None:
            return math.inf
        if self.met(record):
            return 0.0
        if self.spec.lower_is_better:
            return (value - self.value) / self.value if self.value > 0 else value
        return (self.value - value) / self.value if self.value > 0 else 0.0

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Target:
    """Bounds every one of which a winner must meet: ``Target.parse("kl<=0.1,top1>=0.9")``."""

    bounds: tuple[Bound, ...]

    @classmethod
    def parse(cls, value: str | Target | Sequence[str]) -> Target:
        if isinstance(value, Target):
            return value
        if isinstance(value, str):
            parts = [part for part in value.split(",") if part.strip()]
        elif isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
            parts = [part for part in value if part.strip()]
        else:
            raise ConfigError(f"A target is text such as 'kl<=0.1' (commas join several), not {value!r}.")
        if not parts:
            raise ConfigError("The target is empty; write one such as 'kl<=0.1' or 'kl<=0.1,top1>=0.9'.")
        bounds = tuple(Bound.parse(part) for part in parts)
        metrics = [bound.metric for bound in bounds]
        twice = sorted({name for name in metrics if metrics.count(name) > 1})
        if twice:
            raise ConfigError(f"The target bounds {', '.join(twice)} twice; give each metric once.")
        return cls(bounds)

    def check_answers(self, answers_checked: bool) -> None:
        """A target on answers needs the answer check; say so before anything runs."""
        if any(bound.metric == "answers" for bound in self.bounds) and not answers_checked:
            raise ConfigError(
                "The target names 'answers' but the answer check is off; drop --no-answers or the answers bound."
            )

    def met(self, record: Measurement) -> bool:
        return all(bound.met(record) for bound in self.bounds)

    def shortfall(self, record: Measurement) -> float:
        return max(bound.shortfall(record) for bound in self.bounds)

    def describe(self, record: Measurement) -> str:
        """``record``'s figure for every bound, each with whether it holds: ``KL 0.24 <= 0.25``."""
        parts = []
        for bound in self.bounds:
            value = bound.spec.format(bound.measured(record))
            limit = bound.spec.format(bound.value)
            verdict = (
                bound.op if bound.met(record) else {"<=": ">", "<": ">=", ">=": "<", ">": "<="}[bound.op]
            )
            parts.append(f"{bound.spec.title} {value} {verdict} {limit}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return ",".join(str(bound) for bound in self.bounds)


def parse_optimize(value: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in OPTIMIZE_CHOICES:
        raise ConfigError(
            f"optimize must be one of {', '.join(OPTIMIZE_CHOICES)} (what the winner is best at), not {value!r}."
        )
    return value.strip().lower()


# -- the search ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A config of the search space, with what its engine lets the search assume before building it."""

    index: int
    engine: str
    label: str
    config: Any
    traits: SearchTraits


@dataclass(frozen=True)
class PickStep:
    """One line of the path: a config measured (or reused from the ledger), or skipped, and why."""

    candidate: Candidate
    action: str  # "measured", "reused" or "skipped"
    why: str
    record: Measurement | None = None
    met: bool | None = None


@dataclass(frozen=True)
class PickResult:
    """The path of a guided search and what it found."""

    target: Target
    optimize: str
    steps: tuple[PickStep, ...]
    winner: Measurement | None
    closest: Measurement | None  # when nothing meets the target: the nearest miss
    candidates: int  # configs in the search space

    @property
    def records(self) -> list[Measurement]:
        return [step.record for step in self.steps if step.record is not None]

    @property
    def measured_count(self) -> int:
        return len(self.records)

    def conclusion(self) -> str:
        """One sentence: the winner with its figures, or that nothing meets the target and the closest."""
        if self.winner is not None:
            best = "smallest" if self.optimize == "size" else "fastest"
            return (
                f"The {best} configuration meeting {self.target} is {self.winner.engine} {self.winner.label}: "
                f"{self.winner.weights_mib:.1f} MiB, {self.winner.tokens_per_s:.1f} tokens/s, "
                f"{self.target.describe(self.winner)} "
                f"({self.measured_count} of {self.candidates} configurations measured)."
            )
        if self.closest is None:
            return f"No configuration meets {self.target}: none could be measured."
        return (
            f"No configuration meets {self.target}; the closest is {self.closest.engine} {self.closest.label} "
            f"({self.target.describe(self.closest)}). Loosen the target, or search finer settings "
            "(smaller ratios or group sizes, int8 modes, data-aware options)."
        )


@dataclass
class _SearchState:
    target: Target
    optimize: str
    candidates: list[Candidate]
    outcomes: dict[int, PickStep] = field(default_factory=dict)
    size_ratios: dict[str, list[float]] = field(default_factory=dict)  # engine -> measured / predicted
    probed_families: set[str] = field(default_factory=set)

    def records(self) -> list[tuple[Candidate, Measurement]]:
        return [(self._by_index(i), s.record) for i, s in self.outcomes.items() if s.record is not None]

    def _by_index(self, index: int) -> Candidate:
        return next(c for c in self.candidates if c.index == index)

    def winners(self) -> list[Measurement]:
        return [record for _, record in self.records() if self.target.met(record)]

    def best(self) -> Measurement | None:
        winners = self.winners()
        if not winners:
            return None
        if self.optimize == "size":
            return min(winners, key=lambda r: (r.weights_mib, -r.tokens_per_s))
        return max(winners, key=lambda r: (r.tokens_per_s, -r.weights_mib))

    def predicted_mib(self, candidate: Candidate) -> tuple[float, float]:
        """Calibrated size prediction and its relative error bound."""
        ratios = self.size_ratios.get(candidate.engine, [])
        raw = candidate.traits.estimated_bytes / 1024 / 1024
        if not ratios:
            return raw, UNCALIBRATED_SIZE_ERROR
        scale = statistics.median(ratios)
        error = max(abs(r / scale - 1) for r in ratios) + 0.01
        return raw * scale, error

    def order_key(self, candidate: Candidate) -> tuple[float, int, int]:
        predicted, _ = self.predicted_mib(candidate)
        return (predicted, candidate.traits.build_cost, candidate.index)

    def undecided(self) -> list[Candidate]:
        return [c for c in self.candidates if c.index not in self.outcomes]

    def prune_reason(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` need not be measured, or None."""
        for other, record in self.records():
            if not self.target.met(record) and candidate.traits.at_least_as_coarse_as(other.traits):
                return f"at least as coarse as {other.label}, which missed the target"
        best = self.best()
        if best is None:
            return None
        if self.optimize == "size":
            predicted, error = self.predicted_mib(candidate)
            if predicted * (1 - error) >= best.weights_mib:
                return (
                    f"predicted {predicted:.1f} MiB (±{error:.0%}): cannot be smaller than "
                    f"{best.label} at {best.weights_mib:.1f} MiB"
                )
            return None
        bound = self.speed_bound(candidate)
        if bound is not None and bound[0] <= best.tokens_per_s:
            return (
                f"cannot be faster than {best.label} ({best.tokens_per_s:.1f} tokens/s): {bound[1]}, of the "
                f"same runtime layout and at least as coarse, ran at {bound[0]:.1f}"
            )
        return None

    def speed_bound(self, candidate: Candidate) -> tuple[float, str] | None:
        """The slowest measured config of ``candidate``'s layout that is at least as coarse (so no slower)."""
        bounds = [
            (record.tokens_per_s, record.label)
            for other, record in self.records()
            if other.traits.layout == candidate.traits.layout
            and all(
                mine >= theirs
                for mine, theirs in zip(other.traits.coarseness, candidate.traits.coarseness, strict=True)
            )
        ]
        return min(bounds) if bounds else None

    def finest_of_family(self, family: str) -> Candidate | None:
        members = [c for c in self.candidates if c.traits.family == family]
        finest = [
            c
            for c in members
            if not any(o is not c and c.traits.at_least_as_coarse_as(o.traits) for o in members)
        ]
        if not finest:
            return None
        return max(finest, key=lambda c: (c.traits.estimated_bytes, -c.index))


def guided_search(
    candidates: Sequence[Candidate],
    target: Target,
    optimize: str,
    evaluate: Callable[[Candidate], tuple[Measurement, bool]],
    *,
    on_step: Callable[[PickStep], None] | None = None,
) -> PickResult:
    """Search ``candidates`` for the best config meeting ``target`` (see the module docstring).

    ``evaluate`` builds and measures one candidate and returns its record and whether it was
    reused from the ledger; it is the only costly call. ``on_step`` sees every step as it is taken.
    """
    optimize = parse_optimize(optimize)
    state = _SearchState(target, optimize, list(candidates))
    steps: list[PickStep] = []

    def take(step: PickStep) -> None:
        state.outcomes[step.candidate.index] = step
        steps.append(step)
        if on_step is not None:
            on_step(step)

    def run(candidate: Candidate, why: str) -> Measurement:
        record, reused = evaluate(candidate)
        state.size_ratios.setdefault(candidate.engine, []).append(
            record.size.weights_bytes / candidate.traits.estimated_bytes
        )
        met = target.met(record)
        verdict = "meets the target" if met else "misses the target"
        take(
            PickStep(
                candidate,
                "reused" if reused else "measured",
                f"{why}; {verdict}: {target.describe(record)}",
                record,
                met,
            )
        )
        return record

    queued_probe: tuple[Candidate, str] | None = None
    while True:
        if queued_probe is not None and queued_probe[0].index not in state.outcomes:
            candidate, why = queued_probe
            queued_probe = None
        else:
            queued_probe = None
            pending = state.undecided()
            if not pending:
                break
            candidate = min(pending, key=state.order_key)
            predicted, _ = state.predicted_mib(candidate)
            why = (
                f"smallest untried (predicted {predicted:.1f} MiB)"
                if optimize == "size"
                else f"smallest untried, so likely the fastest (predicted {predicted:.1f} MiB)"
            )
        reason = state.prune_reason(candidate)
        if reason is not None:
            take(PickStep(candidate, "skipped", reason))
            continue
        record = run(candidate, why)
        family = candidate.traits.family
        if not target.met(record) and family not in state.probed_families:
            state.probed_families.add(family)
            finest = state.finest_of_family(family)
            if finest is not None and finest.index not in state.outcomes:
                queued_probe = (
                    finest,
                    f"{candidate.label} missed, so first the finest config of its family, "
                    "to learn whether any of them can meet the target",
                )
    winner = state.best()
    closest = None
    if winner is None:
        measured = [record for _, record in state.records()]
        closest = min(measured, key=target.shortfall) if measured else None
    return PickResult(
        target=target,
        optimize=optimize,
        steps=tuple(steps),
        winner=winner,
        closest=closest,
        candidates=len(state.candidates),
    )


def candidates_of(runnable: Sequence[tuple[Engine, Any]], facts: ArchitectureFacts) -> list[Candidate]:
    """The search space: every buildable (engine, resolved config), with its engine's search traits."""
    return [
        Candidate(index, engine.name, engine.label(config), config, engine.search_traits(config, facts))
        for index, (engine, config) in enumerate(runnable)
    ]


DATA_AWARE_FLAGS = ("awq", "scale_estimation", "gptq", "lora_correction")


def option_variants(data_aware: Sequence[str] | str) -> list[dict[str, Any]]:
    """``[{}, {"awq": True}, …]``: plain rounding, then each named data-aware option alone."""
    names = (
        [n.strip().lower() for n in data_aware.split(",")]
        if isinstance(data_aware, str)
        else list(data_aware)
    )
    names = [n for n in names if n]
    unknown = [n for n in names if n not in DATA_AWARE_FLAGS]
    if unknown:
        raise ConfigError(
            f"Unknown data-aware option {unknown[0]!r}; choose from: {', '.join(DATA_AWARE_FLAGS)}."
        )
    return [{}, *({name: True} for name in dict.fromkeys(names))]


PATH_HEADER = ("#", "engine", "config", "MiB", "tokens/s", "outcome", "why")


def path_rows(steps: Sequence[PickStep]) -> list[tuple[str, ...]]:
    """Rows for :data:`PATH_HEADER`: each config in the order the search considered it."""
    rows = []
    for number, step in enumerate(steps, start=1):
        record = step.record
        outcome = step.action if step.met is None else f"{step.action}, {'met' if step.met else 'missed'}"
        rows.append(
            (
                str(number),
                step.candidate.engine,
                step.candidate.label,
                f"{record.weights_mib:.1f}" if record else "-",
                f"{record.tokens_per_s:.1f}" if record else "-",
                outcome,
                step.why,
            )
        )
    return rows


def format_path(result: PickResult) -> str:
    """The path as a text table (the last column, why, is left unpadded)."""
    rows = [PATH_HEADER, *path_rows(result.steps)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(PATH_HEADER) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 3)
    return "\n".join(lines)


__all__ = [
    "METRICS",
    "OPTIMIZE_CHOICES",
    "PATH_HEADER",
    "PICK_GROUP_SIZES",
    "PICK_MODES",
    "PICK_RATIOS",
    "Bound",
    "Candidate",
    "PickResult",
    "PickStep",
    "Target",
    "candidates_of",
    "format_path",
    "guided_search",
    "option_variants",
    "parse_optimize",
    "path_rows",
]
