"""Olive's search next to nbkit's sweep: do both find the same Pareto front?

:func:`run_matching_sweep` sweeps the configs an :class:`~nbkit.measure.olive_search.OliveSearchResult`
evaluated (or a whole search space) with nbkit's own builds and measurements, using the same
measurement settings as Olive's metric; :func:`compare_with_sweep` matches each Olive candidate
to the sweep record of the same ModelBuilder build and says which objectives' fronts agree.
ModelBuilder is deterministic, so size and KL must agree exactly; tokens/s is timed twice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

from nbkit.engines.registry import engine_for_config
from nbkit.infra.cache import Cache
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.measure.olive_search import OliveCandidate, OliveSearchResult, OliveSearchSpace, format_rows
from nbkit.measure.sweep import SweepRecord, SweepResult, pareto_front, run_sweep
from nbkit.sources.models import ModelSource


def run_matching_sweep(
    source: ModelSource | Path | str,
    space: OliveSearchSpace | None = None,
    *,
    candidates: Sequence[OliveCandidate] | None = None,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> SweepResult:
    """nbkit's own sweep of ``space``'s grid, measured with the same settings as Olive's metric.

    With ``candidates`` (an :class:`OliveSearchResult`'s), only the configs Olive evaluated.
    """
    space = space or OliveSearchSpace()
    configs = (
        space.export_configs() if candidates is None else list(dict.fromkeys(c.config for c in candidates))
    )
    return run_sweep(
        source,
        configs=configs,
        settings=space.measure_settings(),
        cache=cache,
        progress=progress,
        reporter=reporter,
    )


# -- Olive's search next to nbkit's sweep --------------------------------------------------------


def _front(points: Sequence[Sequence[float]]) -> list[bool]:
    """Which points no other point dominates; every objective is "lower is better"."""

    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(
            x < y for x, y in zip(a, b, strict=True)
        )

    return [not any(dominates(other, p) for other in points if other is not p) for p in points]


@dataclasses.dataclass(frozen=True)
class CandidateMatch:
    """One Olive candidate next to nbkit's sweep record of the same ModelBuilder build."""

    candidate: OliveCandidate
    record: SweepRecord
    olive_size_kl_front: bool  # on the (size, KL) front of Olive's numbers
    nbkit_size_kl_front: bool  # on the (size, KL) front of the sweep's numbers
    olive_three_front: bool  # on the (size, KL, tokens/s) front of Olive's numbers
    nbkit_front: bool  # on the sweep's Pareto front (size, KL, tokens/s) of these configs

    @property
    def kl_difference(self) -> float:
        """Olive's KL minus the sweep's: the same build, reference and tokens give (nearly) zero."""
        return self.candidate.kl - self.record.mean_kl


@dataclasses.dataclass(frozen=True)
class SweepComparison:
    """Olive's candidates against nbkit's sweep records of the same configs, objective by objective.

    The (size, KL) fronts come from deterministic numbers, so they should agree; a front with
    tokens/s in it can differ between two timings of the same models (noise), and Olive's own
    flag is over every metric of its workflow (top-1 too), so those are reported, not forced.
    """

    matches: tuple[CandidateMatch, ...]
    unmatched: tuple[OliveCandidate, ...]

    @property
    def max_kl_difference(self) -> float:
        return max((abs(m.kl_difference) for m in self.matches), default=math.nan)

    @property
    def size_kl_fronts_agree(self) -> bool:
        return all(m.olive_size_kl_front == m.nbkit_size_kl_front for m in self.matches)

    @property
    def three_objective_fronts_agree(self) -> bool:
        return all(m.olive_three_front == m.nbkit_front for m in self.matches)

    @property
    def olive_flags_match_nbkit_front(self) -> bool:
        return all(m.candidate.olive_pareto == m.nbkit_front for m in self.matches)

    def summary(self) -> str:
        """Which objectives agree, in sentences computed from the numbers."""

        def verdict(agree: bool) -> str:
            return "agree" if agree else "differ"

        lines = [
            f"{len(self.matches)} of {len(self.matches) + len(self.unmatched)} Olive candidates have a sweep "
            f"record of the same build; the largest KL difference is {self.max_kl_difference:.3g} nats.",
            f"(size, KL) fronts: {verdict(self.size_kl_fronts_agree)}.",
            f"(size, KL, tokens/s) fronts: {verdict(self.three_objective_fronts_agree)} "
            "(tokens/s is timed twice, once by each run).",
            f"Olive's Pareto flags (all its metrics, top-1 included) and nbkit's front: "
            f"{verdict(self.olive_flags_match_nbkit_front)}.",
        ]
        return "\n".join(lines)

    def table(self) -> str:
        header = [
            "config",
            "Olive KL",
            "sweep KL",
            "Olive MiB",
            "sweep MiB",
            "Olive tok/s",
            "sweep tok/s",
            "Olive front",
            "sweep front",
            "size-KL front O/S",
        ]

        def mark(flag: bool) -> str:
            return "*" if flag else "-"

        rows = [
            [
                m.candidate.label,
                f"{m.candidate.kl:.4g}",
                f"{m.record.mean_kl:.4g}",
                f"{m.candidate.size_mib:.4g}",
                f"{m.record.weights_mib:.4g}",
                f"{m.candidate.decode_tps:.1f}",
                f"{m.record.tokens_per_s:.1f}",
                mark(m.candidate.olive_pareto),
                mark(m.nbkit_front),
                f"{mark(m.olive_size_kl_front)}/{mark(m.nbkit_size_kl_front)}",
            ]
            for m in sorted(self.matches, key=lambda m: m.record.weights_mib)
        ]
        return format_rows(header, rows)


def _records(sweep: SweepResult | Sequence[SweepRecord]) -> list[SweepRecord]:
    return list(sweep.all_records if isinstance(sweep, SweepResult) else sweep)


def compare_with_sweep(
    result: OliveSearchResult, sweep: SweepResult | Sequence[SweepRecord]
) -> SweepComparison:
    """Match each Olive candidate to the sweep record of the same build and compare fronts.

    A record matches when its engine and config are the candidate's (block size, symmetric,
    accuracy level). Fronts are computed over the matched configs only, on both sides, so
    they compare the same set of models.
    """
    records = _records(sweep)
    matched: list[tuple[OliveCandidate, SweepRecord]] = []
    unmatched: list[OliveCandidate] = []
    for candidate in result.candidates:
        config = candidate.config
        engine = engine_for_config(config).name
        record = next(
            (r for r in reversed(records) if r.engine == engine and r.config == config.to_dict()), None
        )
        if record is None:
            unmatched.append(candidate)
        else:
            matched.append((candidate, record))
    olive_size_kl = _front([(c.size_bytes, c.kl) for c, _ in matched])
    nbkit_size_kl = _front([(r.size.weights_bytes, r.mean_kl) for _, r in matched])
    olive_three = _front([(c.size_bytes, c.kl, -c.decode_tps) for c, _ in matched])
    nbkit_front = pareto_front([r for _, r in matched])
    matches = tuple(
        CandidateMatch(
            candidate=c,
            record=r,
            olive_size_kl_front=olive_size_kl[i],
            nbkit_size_kl_front=nbkit_size_kl[i],
            olive_three_front=olive_three[i],
            nbkit_front=any(r is f for f in nbkit_front),
        )
        for i, (c, r) in enumerate(matched)
    )
    return SweepComparison(matches=matches, unmatched=tuple(unmatched))


__all__ = ["CandidateMatch", "SweepComparison", "compare_with_sweep", "run_matching_sweep"]
