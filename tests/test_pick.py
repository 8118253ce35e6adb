"""Pick for me: targets, the guided search's order, pruning and stop rule, on synthetic measurements.

The search only sees what :class:`~nbkit.engines.protocol.SearchTraits` promise and what
``evaluate`` returns, so these tests give it made-up grids whose quality is monotone in the
coarseness (as the search assumes) and compare its answer with a brute force over the whole
grid. The bundled model's search is in tests/test_sweep.py (integration).
"""

from __future__ import annotations

import io
import json
import random
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nbkit.cli.main import main
from nbkit.engines.openvino.search import search_traits as openvino_traits
from nbkit.engines.protocol import SearchTraits
from nbkit.errors import ConfigError
from nbkit.measure.pick import (
    SPEED_NOISE,
    Candidate,
    PickStep,
    Target,
    format_path,
    guided_search,
    option_variants,
    parse_optimize,
)
from nbkit.sources.architecture import ArchitectureFacts, LinearLayer

# -- targets -------------------------------------------------------------------------------


def test_targets_parse_every_metric_and_combine_with_commas() -> None:
    target = Target.parse("kl<=0.1, top1>=90%,ppl_ratio<1.2 ,answers>=0.5")
    assert [(b.metric, b.op, b.value) for b in target.bounds] == [
        ("kl", "<=", 0.1),
        ("top1", ">=", 0.9),
        ("ppl_ratio", "<", 1.2),
        ("answers", ">=", 0.5),
    ]
    assert str(target) == "kl<=0.1,top1>=0.9,ppl_ratio<1.2,answers>=0.5"
    assert Target.parse(["kl<=0.1"]) == Target.parse("kl<=0.1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "The target is empty"),
        ("kl", "Cannot read the target 'kl'"),
        ("loss<=0.1", "Unknown target metric 'loss'"),
        ("kl>=0.1", "kl is better lower, so a target on it is written kl<=…"),
        ("top1<=0.9", "top1 is better higher"),
        ("top1>=95", "top1 is a share: write it as 0.9 or 90%"),
        ("kl<=0.1,kl<=0.2", "bounds kl twice"),
        ("kl<=-1", "Cannot read the target|at least 0"),
    ],
)
def test_bad_targets_get_one_sentence(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Target.parse(text)


def test_optimize_and_data_aware_choices() -> None:
    assert parse_optimize(" Speed ") == "speed"
    with pytest.raises(ConfigError, match="optimize must be one of size, speed"):
        parse_optimize("quality")
    assert option_variants("awq, lora_correction") == [{}, {"awq": True}, {"lora_correction": True}]
    assert option_variants(()) == [{}]
    with pytest.raises(ConfigError, match="Unknown data-aware option 'smoothquant'"):
        option_variants(["smoothquant"])


# -- synthetic grids --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Quality:
    mean_kl: float
    top1_agreement: float
    perplexity: float = 10.0
    reference_perplexity: float = 10.0


@dataclass(frozen=True)
class _Size:
    weights_bytes: float


@dataclass(frozen=True)
class _Record:
    engine: str
    label: str
    size: _Size
    quality: _Quality
    tokens_per_s: float
    answers: Any = None

    @property
    def weights_mib(self) -> float:
        return self.size.weights_bytes / 2**20

    @property
    def mean_kl(self) -> float:
        return self.quality.mean_kl


@dataclass
class _Grid:
    """Candidates and the record each would measure, with a log of what the search evaluated."""

    candidates: list[Candidate]
    truth: dict[int, _Record]
    evaluated: list[int] = field(default_factory=list)

    def evaluate(self, candidate: Candidate) -> tuple[_Record, bool]:
        assert candidate.index not in self.evaluated, "measured twice"
        self.evaluated.append(candidate.index)
        return self.truth[candidate.index], False


def make_grid(
    seed: int,
    *,
    families: int = 2,
    ratios: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6),
    groups: tuple[int, ...] = (128, 64, 32),
    size_error: float = 0.0,
) -> _Grid:
    """Families x ratios x groups; KL falls and size grows as configs get finer, with noise in speed."""
    rng = random.Random(seed)
    candidates, truth = [], {}
    index = 0
    for family in range(families):
        kl_scale = rng.uniform(0.2, 0.6)
        for ratio in ratios:
            for group in groups:
                size = 80e6 * (1 + (1 - ratio) * 0.5 + 4 / group) * (1 + 0.01 * family)
                kl = kl_scale * ratio**3 * (group / 128) ** 0.5 + rng.uniform(0, 0.005)
                speed = 100 * 80e6 / size * rng.uniform(0.97, 1.03)
                label = f"f{family}-g{group}-r{ratio:g}"
                estimated = size * (1 + rng.uniform(-size_error, size_error))
                traits = SearchTraits(
                    family=f"f{family}",
                    coarseness=(ratio, float(group)),
                    layout=f"f{family}",
                    estimated_bytes=estimated,
                    build_cost=family,
                )
                candidates.append(Candidate(index, "openvino", label, None, traits))
                truth[index] = _Record("openvino", label, _Size(size), _Quality(kl, 1 - kl), speed)
                index += 1
    return _Grid(candidates, truth)


def brute_force(grid: _Grid, target: Target, optimize: str) -> _Record | None:
    winners = [r for r in grid.truth.values() if target.met(r)]  # type: ignore[arg-type]
    if not winners:
        return None
    if optimize == "size":
        return min(winners, key=lambda r: r.weights_mib)
    return max(winners, key=lambda r: r.tokens_per_s)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("optimize", ["size", "speed"])
def test_search_finds_the_brute_force_winner_with_fewer_measurements(seed: int, optimize: str) -> None:
    grid = make_grid(seed, size_error=0.02)
    kls = sorted(r.mean_kl for r in grid.truth.values())
    target = Target.parse(f"kl<={kls[len(kls) // 3]:.6f}")  # about a third of the grid meets it
    steps: list[PickStep] = []
    result = guided_search(grid.candidates, target, optimize, grid.evaluate, on_step=steps.append)

    best = brute_force(grid, target, optimize)
    assert result.winner is not None and best is not None and target.met(result.winner)  # type: ignore[arg-type]
    if optimize == "size":
        assert result.winner == best
    else:  # speeds within the noise margin are not told apart
        assert result.winner.tokens_per_s * (1 + SPEED_NOISE) >= best.tokens_per_s
    assert len(grid.evaluated) < len(grid.candidates)
    assert result.measured_count == len(grid.evaluated)
    assert list(result.steps) == steps  # the callback saw every step, in order
    assert {s.candidate.index for s in result.steps} == {c.index for c in grid.candidates}
    for step in result.steps:  # every config is accounted for, with a reason
        assert step.why and step.action in ("measured", "skipped")
        assert (step.record is None) == (step.action == "skipped")


def test_size_search_path_on_a_small_grid_reads_like_an_explanation() -> None:
    grid = make_grid(3, families=1, ratios=(1.0, 0.8, 0.6), groups=(64, 32))
    finest_kl = min(r.mean_kl for r in grid.truth.values())
    coarsest_kl = max(r.mean_kl for r in grid.truth.values())
    target = Target.parse(f"kl<={(finest_kl + coarsest_kl) / 2:.6f}")
    result = guided_search(grid.candidates, target, "size", grid.evaluate)

    first, second = result.steps[0], result.steps[1]
    assert first.candidate.label == "f0-g64-r1" and first.met is False  # the smallest config first
    assert second.candidate.label == "f0-g32-r0.6"  # then the finest: can the family meet it at all?
    assert "finest config of its family" in second.why
    skipped = [s for s in result.steps if s.action == "skipped"]
    assert skipped and all("cannot be smaller than" in s.why or "at least as coarse" in s.why for s in skipped)
    table = format_path(result)
    assert table.splitlines()[0].split()[:3] == ["#", "engine", "config"]
    assert len(table.splitlines()) == 2 + len(grid.candidates)
    assert result.conclusion().startswith(f"The smallest configuration meeting {target} is openvino ")
    assert f"{result.measured_count} of {len(grid.candidates)} configurations measured" in result.conclusion()


def test_an_impossible_target_names_the_closest_after_one_probe_per_family() -> None:
    grid = make_grid(5, families=2)
    result = guided_search(grid.candidates, Target.parse("kl<=0.00001"), "size", grid.evaluate)

    assert result.winner is None
    closest = min(grid.truth.values(), key=lambda r: r.mean_kl)
    assert result.closest == closest
    # Per family: the smallest config, then the finest; every other one is pruned as coarser.
    assert len(grid.evaluated) == 4
    assert result.conclusion().startswith("No configuration meets kl<=1e-05; the closest is openvino ")
    assert closest.label in result.conclusion()


def test_predictions_off_by_a_constant_factor_are_calibrated_away() -> None:
    exact = make_grid(7)
    scaled = make_grid(7)
    scaled.candidates = [
        Candidate(
            c.index,
            c.engine,
            c.label,
            None,
            SearchTraits(c.traits.family, c.traits.coarseness, c.traits.layout, c.traits.estimated_bytes * 1.7),
        )
        for c in scaled.candidates
    ]
    target = Target.parse("kl<=0.1")
    assert guided_search(scaled.candidates, target, "size", scaled.evaluate).winner == brute_force(
        exact, target, "size"
    )


def test_a_target_on_answers_needs_the_answer_check() -> None:
    Target.parse("kl<=0.1").check_answers(False)
    with pytest.raises(ConfigError, match="drop --no-answers"):
        Target.parse("answers>=0.5").check_answers(False)


# -- size predictions ------------------------------------------------------------------------


def _facts() -> ArchitectureFacts:
    layers = (
        LinearLayer("model.embed_tokens.weight", 1000, 64),
        LinearLayer("model.layers.0.mlp.up_proj.weight", 256, 64),
        LinearLayer("model.layers.0.mlp.down_proj.weight", 64, 256),
    )
    params = sum(layer.in_features * layer.out_features for layer in layers) + 128
    return ArchitectureFacts("llama", 1, 64, params, 512, True, layers)


def test_openvino_size_prediction_orders_configs_like_their_bits() -> None:
    from nbkit.config import CompressionConfig

    facts = _facts()

    def predicted(**fields: Any) -> float:
        return openvino_traits(CompressionConfig(**fields), facts).estimated_bytes

    assert predicted(mode="int4_sym", group_size=64) < predicted(mode="int4_sym", group_size=32)
    assert predicted(mode="int4_sym", group_size=32) < predicted(mode="int4_asym", group_size=32)
    assert predicted(mode="int4_sym", group_size=32) < predicted(mode="int4_sym", group_size=32, ratio=0.8)
    assert predicted(mode="int4_sym", group_size=32, ratio=0.8) < predicted(mode="int8_asym", group_size=None)
    plain = openvino_traits(CompressionConfig(mode="int4_sym", group_size=32, ratio=0.8), facts)
    awq = openvino_traits(CompressionConfig(mode="int4_sym", group_size=32, ratio=0.8, awq=True), facts)
    coarser = openvino_traits(CompressionConfig(mode="int4_sym", group_size=64, ratio=1.0, awq=True), facts)
    assert awq.estimated_bytes == plain.estimated_bytes and awq.build_cost > plain.build_cost
    assert awq.layout == plain.layout and awq.family != plain.family  # same graph, other weights
    assert coarser.at_least_as_coarse_as(awq) and not awq.at_least_as_coarse_as(coarser)
    assert not coarser.at_least_as_coarse_as(plain)  # another family: no assumption across it


# -- the command line ----------------------------------------------------------------------


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "kl>=0.1"], "kl is better lower"),
        (["--target", "answers>=0.5", "--no-answers"], "drop --no-answers"),
        (["--data-aware", "awq"], "--data-aware lists options for the guided search; give it with --target"),
        (["--target", "kl<=0.1", "--data-aware", "smoothquant"], "Unknown data-aware option"),
    ],
)
def test_cli_refuses_a_bad_search_before_any_work(tmp_path: Path, extra: list[str], message: str) -> None:
    cache_dir = tmp_path / "cache"
    code, out, err = _run(["--cache-dir", str(cache_dir), "-q", "sweep", *extra])
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err
    assert not cache_dir.exists()  # refused before the export: nothing built, nothing written


def test_cli_help_names_the_search_flags() -> None:
    code, out, _ = _run(["sweep", "--help"])
    assert code == 0
    for flag in ("--target", "--optimize", "--data-aware"):
        assert flag in out
    json.dumps(out)  # plain text
