"""Olive's evaluators and search_strategy driven by nbkit's measures (nbkit.measure.olive_search).

Without running Olive: the search space's checks (an unknown sampler names Olive 0.13's), the
workflow JSON (evaluator with a type, fixed options, search parameters, absolute paths), Olive's
own parser accepting it, reading ``footprint.json``, and the comparison with a sweep on made-up
records. With Olive, on the tiny test model (offline): the search runs, Olive evaluates the
candidates with nbkit's metric, and nbkit's own sweep of the same configs gives the same KL and
the same (size, KL) Pareto front; the saved config runs again with Olive's command line.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nbkit import Cache
from nbkit.engines.ort.deps import olive_available
from nbkit.engines.ort.olive_config import OliveExportConfig
from nbkit.engines.ort.olive_runner import check_command, run_olive_command
from nbkit.errors import ConfigError
from nbkit.measure import olive_metric, olive_search_sweep
from nbkit.measure.evaluation import SizeReport
from nbkit.measure.olive_search import (
    CONFIG_NAME,
    SAMPLERS,
    OliveCandidate,
    OliveSearchResult,
    OliveSearchSpace,
    candidates_from_footprint,
    olive_search_config,
    run_olive_search,
)
from nbkit.measure.olive_search_sweep import compare_with_sweep, run_matching_sweep
from nbkit.measure.quality import QualityReport
from nbkit.measure.speed import SpeedReport
from nbkit.measure.sweep import SweepRecord

needs_olive = pytest.mark.skipif(
    not olive_available(), reason='Olive is not installed (pip install "nbkit[olive]")'
)
ORT = "ort"


# -- the search space ------------------------------------------------------------------------


def test_default_space_searches_block_sizes_with_the_rest_fixed() -> None:
    space = OliveSearchSpace()
    assert space.block_sizes == (16, 32, 64) and space.symmetric == (True,) and space.accuracy_levels == (4,)
    assert space.sampler == "tpe" and space.max_samples == space.grid_size == 3
    assert [c.label for c in space.export_configs()] == ["int4-b16-acc4", "int4-b32-acc4", "int4-b64-acc4"]
    settings = space.measure_settings()
    assert (settings.quality_tokens, settings.speed_new_tokens, settings.speed_repeats) == (512, 64, 3)
    assert settings.answers is False


@pytest.mark.parametrize("sampler", ["bayes", "search_algorithm", "", 3])
def test_unknown_sampler_names_olives_samplers(sampler: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        OliveSearchSpace(sampler=sampler)
    message = str(raised.value)
    assert "tpe, random, sequential" in message and "search_algorithm" in message


def test_sampler_name_is_normalized() -> None:
    assert OliveSearchSpace(sampler=" TPE ").sampler == "tpe"


@needs_olive
def test_samplers_are_the_ones_olive_registers() -> None:
    from olive.search.samplers import REGISTRY

    assert set(SAMPLERS) == set(REGISTRY)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"block_sizes": (48,)}, "block_sizes must be distinct values among 16, 32, 64, 128, 256"),
        ({"block_sizes": ()}, "block_sizes must be"),
        ({"block_sizes": (32, 32)}, "block_sizes must be distinct"),
        ({"block_sizes": (True,)}, "block_sizes must be"),
        ({"accuracy_levels": (5,)}, "accuracy_levels must be distinct values among 1, 2, 3, 4"),
        ({"symmetric": (1,)}, "symmetric must be"),
        ({"max_samples": 4}, "max_samples must be an integer from 1 to 3"),
        ({"max_samples": 0}, "max_samples must be an integer from 1 to 3"),
        ({"quality_tokens": 1}, "quality_tokens must be an integer of at least 2"),
        ({"speed_repeats": 0}, "speed_repeats must be a positive integer"),
        ({"latency": "yes"}, "latency must be True or False"),
    ],
)
def test_bad_space_is_one_sentence(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        OliveSearchSpace(**options)


def test_grid_is_the_product_and_lists_become_tuples() -> None:
    space = OliveSearchSpace(
        block_sizes=[16, 32], symmetric=[True, False], accuracy_levels=[1, 4], max_samples=5
    )
    assert space.grid_size == 8 and space.block_sizes == (16, 32) and space.max_samples == 5
    configs = space.export_configs()
    assert len(set(configs)) == 8
    assert OliveExportConfig("int4", 32, 1, False) in configs


# -- the workflow config -------------------------------------------------------------------------


def _config(tmp_path: Path, space: OliveSearchSpace) -> dict[str, Any]:
    (tmp_path / "hf").mkdir(exist_ok=True)
    (tmp_path / "reference").mkdir(exist_ok=True)
    return olive_search_config(tmp_path / "hf", tmp_path / "reference", space)


def test_config_has_a_typed_evaluator_and_nbkits_metric(tmp_path: Path) -> None:
    config = _config(tmp_path, OliveSearchSpace(quality_tokens=64, speed_repeats=2))
    (evaluator,) = config["evaluators"].values()
    assert evaluator["type"] == "OnnxEvaluator"  # without it olive-ai 0.13.0 crashes
    assert config["evaluator"] in config["evaluators"] and config["evaluate_input_model"] is False
    nbkit_metric, size = evaluator["metrics"]
    assert nbkit_metric["type"] == "custom" and size["type"] == "size_on_disk"
    directions = {s["name"]: s["higher_is_better"] for s in nbkit_metric["sub_types"]}
    assert directions == {"kl": False, "decode_tps": True, "top1": True}
    assert set(directions) == set(olive_metric.SUB_TYPES)
    user = nbkit_metric["user_config"]
    script = Path(user["user_script"])
    assert script.is_absolute() and script.is_file() and script == Path(olive_metric.__file__).resolve()
    assert user["evaluate_func"] == "nbkit_metric"
    kwargs = user["evaluate_func_kwargs"]
    assert kwargs["reference"] == str((tmp_path / "reference").resolve())
    assert (kwargs["num_tokens"], kwargs["repeats"]) == (64, 2)
    assert config["input_model"] == {"type": "HfModel", "model_path": str((tmp_path / "hf").resolve())}
    assert "data_configs" not in config


def test_config_searches_what_varies_and_fixes_the_rest(tmp_path: Path) -> None:
    config = _config(tmp_path, OliveSearchSpace(block_sizes=(16, 64), accuracy_levels=(1, 4)))
    builder = config["passes"]["model_builder"]
    assert builder["type"] == "ModelBuilder" and builder["precision"] == "int4"
    for name, support in (("int4_block_size", [16, 64]), ("int4_accuracy_level", [1, 4])):
        assert builder[name] == {
            "olive_parameter_type": "SearchParameter",
            "type": "Categorical",
            "support": support,
        }
    # Not searched: fixed, or Olive would search them with its own defaults.
    assert builder["int4_is_symmetric"] is True and builder["int4_algo_config"] == "default"
    assert config["search_strategy"] == {
        "execution_order": "joint",
        "sampler": "tpe",
        "max_samples": 4,
        "seed": 0,
    }
    assert "search_algorithm" not in json.dumps(config)


def test_sequential_sampler_gets_no_seed_and_latency_adds_dummy_data(tmp_path: Path) -> None:
    config = _config(tmp_path, OliveSearchSpace(sampler="sequential", latency=True))
    assert "seed" not in config["search_strategy"]
    latency = config["evaluators"]["nbkit_evaluator"]["metrics"][-1]
    assert latency["type"] == "latency" and latency["data_config"] == "latency_data"
    (data,) = config["data_configs"]
    assert data["type"] == "TransformersTokenDummyDataContainer"
    assert data["load_dataset_config"]["model_name"] == str((tmp_path / "hf").resolve())


@needs_olive
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("latency", [False, True])
def test_olives_parser_accepts_the_config(tmp_path: Path, sampler: str, latency: bool) -> None:
    from olive.workflows.run.config import RunConfig

    space = OliveSearchSpace(block_sizes=(16, 32), symmetric=(True, False), sampler=sampler, latency=latency)
    config = _config(tmp_path, space)
    parsed = RunConfig.parse_file_or_obj(copy.deepcopy(config))  # Olive's parser changes what it is given
    strategy = parsed.engine.search_strategy
    assert strategy.sampler == sampler and strategy.sampler_config.max_samples == 4
    metrics = parsed.evaluators["nbkit_evaluator"].metrics
    assert [m.name for m in metrics] == ["nbkit_measures", "size", *(["latency"] if latency else [])]
    # The seed's key is not Olive's: it fails in Olive's parser.
    config["search_strategy"] = {"execution_order": "joint", "search_algorithm": sampler}
    with pytest.raises(KeyError):
        RunConfig.parse_file_or_obj(config)


def test_metric_module_imports_nothing_heavy(tmp_path: Path) -> None:
    # Olive loads the user_script by path; loading it must not import nbkit's measures or runtimes.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('user_script', {olive_metric.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "heavy = [m for m in ('nbkit.measure.quality', 'nbkit.measure.speed', 'onnxruntime_genai', "
        "'openvino', 'numpy') if m in sys.modules]\n"
        "assert callable(module.nbkit_metric) and not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


# -- reading Olive's footprint -------------------------------------------------------------------


def _node(model_id: str, block: int, kl: float, tps: float, size: int, pareto: bool, prefix: str = "") -> Any:
    return {
        "parent_model_id": "input",
        "model_id": model_id,
        "model_config_data": {"type": "onnxmodel", "config": {"model_path": f"/nowhere/{model_id}"}},
        "from_pass": "modelbuilder",
        "pass_run_config": {
            "precision": "int4",
            "int4_block_size": block,
            "int4_is_symmetric": True,
            "int4_accuracy_level": 4,
            "int4_algo_config": "default",
        },
        "is_pareto_frontier": pareto,
        "metrics": {
            "value": {
                f"{prefix}nbkit_measures-kl": {"value": kl, "priority": 1, "higher_is_better": False},
                f"{prefix}nbkit_measures-decode_tps": {"value": tps, "priority": 2, "higher_is_better": True},
                f"{prefix}nbkit_measures-top1": {"value": 1 - kl, "priority": 3, "higher_is_better": True},
                "size-bytes": {"value": size, "priority": -1, "higher_is_better": False},
            }
        },
    }


def test_footprint_gives_the_evaluated_candidates_in_order() -> None:
    footprint = {
        "input": {"model_id": "input", "metrics": None, "pass_run_config": None},
        "b": _node("b", 32, 0.4, 100.0, 2_000, True),
        # Olive makes a metric name that is also a folder of the working directory absolute.
        "a": _node("a", 16, 0.3, 90.0, 2_100, True, prefix="/somewhere/"),
        "failed": {"model_id": "failed", "from_pass": "modelbuilder", "metrics": None},
    }
    candidates = candidates_from_footprint(footprint)
    assert [c.model_id for c in candidates] == ["b", "a"]
    first, second = candidates
    assert (first.block_size, first.symmetric, first.accuracy_level) == (32, True, 4)
    assert (second.kl, second.decode_tps, second.top1, second.size_bytes) == (0.3, 90.0, 0.7, 2_100)
    assert first.label == "int4-b32-acc4" and first.config == OliveExportConfig("int4", 32, 4, True)
    assert first.model_path is None and first.weights_bytes is None  # not on this disk
    assert first.latency_ms is None and first.olive_pareto


def _candidate(block: int, kl: float, tps: float, size: int, pareto: bool, level: int = 4) -> OliveCandidate:
    return OliveCandidate(
        f"m{block}-{level}", block, True, level, kl, 1 - kl, tps, size, None, pareto, None, None
    )


def _record(block: int, kl: float, tps: float, size: int, level: int = 4) -> SweepRecord:
    config = OliveExportConfig("int4", block, level, True)
    return SweepRecord(
        key=f"k{block}-{level}",
        model="tiny",
        engine=ORT,
        label=config.label,
        config=config.to_dict(),
        model_path=f"/nowhere/{block}",
        size=SizeReport(size, None, None, {"int4": 1.0}),
        quality=QualityReport(10.0, 9.0, kl, 1 - kl, 64),
        speed=SpeedReport(0.1, 10.0, 1000 / tps, tps, 8, 1, 100.0),
        answers=None,
        versions={},
        machine={},
        created=1.0,
    )


def test_comparison_reports_which_objectives_agree(tmp_path: Path) -> None:
    # b16 acc1 and acc4 have the same size: acc4 loses on (size, KL) but wins on tokens/s in
    # Olive's timing only, so the three-objective fronts differ while the (size, KL) ones agree.
    candidates = (
        _candidate(16, 0.30, 100.0, 2_100, True, level=1),
        _candidate(16, 0.31, 120.0, 2_100, True, level=4),
        _candidate(32, 0.40, 110.0, 2_000, True),
        _candidate(64, 0.50, 90.0, 1_950, True),
    )
    records = [
        _record(16, 0.30, 100.0, 2_150, level=1),
        _record(16, 0.31, 95.0, 2_150, level=4),  # slower here: dominated by acc1
        _record(32, 0.40, 110.0, 2_050),
        # no record of b64: unmatched
    ]
    result = OliveSearchResult(
        space=OliveSearchSpace(block_sizes=(16, 32, 64), accuracy_levels=(1, 4)),
        candidates=candidates,
        config_path=tmp_path / CONFIG_NAME,
        output_dir=tmp_path,
        run_history="",
        reference_path=tmp_path,
        hf_folder=tmp_path,
        seconds=1.0,
    )
    comparison = compare_with_sweep(result, records)
    assert [m.candidate.label for m in comparison.matches] == [
        "int4-b16-acc1",
        "int4-b16-acc4",
        "int4-b32-acc4",
    ]
    assert [c.label for c in comparison.unmatched] == ["int4-b64-acc4"]
    assert comparison.max_kl_difference == 0.0
    by_label = {m.candidate.label: m for m in comparison.matches}
    assert (
        not by_label["int4-b16-acc4"].olive_size_kl_front
        and not by_label["int4-b16-acc4"].nbkit_size_kl_front
    )
    assert comparison.size_kl_fronts_agree
    assert by_label["int4-b16-acc4"].olive_three_front and not by_label["int4-b16-acc4"].nbkit_front
    assert not comparison.three_objective_fronts_agree
    summary = comparison.summary()
    assert "(size, KL) fronts: agree." in summary and "(size, KL, tokens/s) fronts: differ" in summary
    assert "int4-b16-acc1" in comparison.table() and "int4-b64-acc4" in result.table()


def test_matching_sweep_builds_the_grid_or_olives_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(olive_search_sweep, "run_sweep", lambda source, **kwargs: calls.append(kwargs))
    space = OliveSearchSpace(block_sizes=(16, 32, 64), quality_tokens=128, speed_repeats=1)
    run_matching_sweep("tiny", space)
    run_matching_sweep(
        "tiny", space, candidates=[_candidate(64, 0.5, 9.0, 10, True), _candidate(16, 0.3, 8.0, 12, True)]
    )
    assert calls[0]["configs"] == space.export_configs()
    assert [c.label for c in calls[1]["configs"]] == ["int4-b64-acc4", "int4-b16-acc4"]
    for call in calls:
        assert call["settings"] == space.measure_settings()
        assert (call["settings"].quality_tokens, call["settings"].speed_repeats) == (128, 1)


def test_work_dir_with_other_files_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds files of something else"):
        run_olive_search("nowhere", work_dir=work)
    assert (work / "notes.txt").read_text() == "keep me" and len(list(work.iterdir())) == 1


@needs_olive
def test_block_size_the_model_cannot_take_fails_before_olive(tiny_hf_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid block sizes for this model: 16, 32"):
        run_olive_search(
            tiny_hf_model,
            OliveSearchSpace(block_sizes=(32, 64)),
            work_dir=tmp_path / "w",
            cache=Cache(tmp_path / "cache"),
        )
    assert not (tmp_path / "w").exists()


# -- with Olive: the tiny model, offline ----------------------------------------------------------

# Block sizes 16 and 32 (the tiny model's), accuracy levels 1 and 4: the same size at two KLs, so
# the (size, KL) front leaves points out. TPE builds 3 of the 4. Olive's own latency metric too.
TINY_SPACE = OliveSearchSpace(
    block_sizes=(16, 32),
    accuracy_levels=(1, 4),
    max_samples=3,
    seed=0,
    quality_tokens=256,
    speed_new_tokens=16,
    speed_repeats=2,
    latency=True,
)
# ModelBuilder builds the same files for the same options, and both sides score them with the
# same scorer, reference and tokens: the KLs came out identical when this test was written. The
# tolerance only allows for a thread-count dependent rounding in ONNX Runtime.
KL_RELATIVE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def searched(
    cache: Cache, tiny_hf_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> OliveSearchResult:
    if not olive_available():
        pytest.skip("Olive is not installed")
    work = tmp_path_factory.mktemp("olive-search") / "work"
    return run_olive_search(tiny_hf_model, TINY_SPACE, work_dir=work, cache=cache)


@pytest.fixture(scope="module")
def swept(cache: Cache, tiny_hf_model: Path, searched: OliveSearchResult) -> Any:
    # The configs Olive evaluated, as nbkit's sweep builds and measures them.
    return run_matching_sweep(tiny_hf_model, TINY_SPACE, candidates=searched.candidates, cache=cache)


@needs_olive
def test_olive_search_evaluates_candidates_with_nbkits_metric(searched: OliveSearchResult) -> None:
    candidates = searched.candidates
    assert len(candidates) == TINY_SPACE.max_samples >= 3
    assert len({c.config for c in candidates}) == len(candidates)  # distinct points of the grid
    assert {c.config for c in candidates} <= set(TINY_SPACE.export_configs())
    for c in candidates:
        assert math.isfinite(c.kl) and c.kl >= 0.0 and 0.0 <= c.top1 <= 1.0
        assert c.decode_tps > 0 and c.size_bytes > 0 and c.latency_ms is not None and c.latency_ms > 0
        assert c.model_path is not None and c.weights_bytes and c.weights_bytes > 0
    # Olive's flags are its front over every metric it recorded, read back from the footprint.
    assert searched.olive_pareto
    saved = json.loads(searched.config_path.read_text())
    assert saved["output_dir"] == str(searched.output_dir) and saved["evaluators"]
    assert "nbkit_measures-kl" in searched.run_history and "latency-avg" in searched.run_history
    table = searched.table()
    assert all(c.label in table for c in candidates) and "Olive front" in table and "latency ms" in table


@needs_olive
def test_olive_pareto_flags_follow_its_numbers(searched: OliveSearchResult) -> None:
    def dominated(c: OliveCandidate) -> bool:
        mine = (c.kl, -c.decode_tps, -c.top1, c.size_bytes, c.latency_ms)
        for other in searched.candidates:
            theirs = (other.kl, -other.decode_tps, -other.top1, other.size_bytes, other.latency_ms)
            if all(t <= m for t, m in zip(theirs, mine, strict=True)) and theirs != mine:
                return True
        return False

    assert [c.olive_pareto for c in searched.candidates] == [not dominated(c) for c in searched.candidates]


@needs_olive
def test_olive_search_agrees_with_nbkits_sweep(searched: OliveSearchResult, swept: Any) -> None:
    comparison = compare_with_sweep(searched, swept)
    assert not comparison.unmatched and len(comparison.matches) == len(searched.candidates)
    assert {r.label for r in swept.records} == {c.label for c in searched.candidates}
    for match in comparison.matches:
        assert match.candidate.weights_bytes == match.record.size.weights_bytes  # the same build
        assert abs(match.kl_difference) <= KL_RELATIVE_TOLERANCE * match.record.mean_kl
    # The (size, KL) front is deterministic; one with tokens/s in it is reported, not asserted.
    assert comparison.size_kl_fronts_agree
    # 3 of the 4 points (2 block sizes x 2 accuracy levels): one block size comes with both
    # levels, one size at two KLs, so the front leaves one of them out on both sides.
    assert any(not m.nbkit_size_kl_front for m in comparison.matches)
    assert "(size, KL) fronts: agree." in comparison.summary()


@needs_olive
def test_saved_config_runs_again_with_olives_command_line(
    searched: OliveSearchResult, tmp_path: Path
) -> None:
    config = json.loads(searched.config_path.read_text())
    config["output_dir"] = str(tmp_path / "again")
    config["cache_dir"] = str(tmp_path / "olive-cache")
    path = tmp_path / "search.json"
    path.write_text(json.dumps(config))
    command = check_command(
        run_olive_command(
            ["run", "--config", str(path)],
            tmp_path,
            patched=True,
            env={"HF_HUB_CACHE": str(tmp_path / "hub")},
        )
    )
    rerun = candidates_from_footprint(json.loads((tmp_path / "again" / "footprint.json").read_text()))
    assert command.returncode == 0 and len(rerun) == len(searched.candidates)
    first = {c.config: c.kl for c in searched.candidates}
    assert {c.config: c.kl for c in rerun} == pytest.approx(first, rel=KL_RELATIVE_TOLERANCE)
