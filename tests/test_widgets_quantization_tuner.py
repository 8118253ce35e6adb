"""QuantizationTuner on the tiny model: the grid, a sweep plotted as it runs, picking, cancel, errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from nbkit import Cache, OVModel
from nbkit import widgets as panels
from nbkit.engines.registry import get_engine
from nbkit.errors import ConfigError
from nbkit.infra.ledger import Ledger
from nbkit.measure.charts import CHOSEN_COLOR, pareto_figure, size_quality_front
from nbkit.measure.evaluation import SizeReport
from nbkit.measure.quality import QualityReport
from nbkit.measure.speed import SpeedReport
from nbkit.measure.sweep import SweepRecord
from nbkit.sources.models import resolve_source

TIMEOUT_S = 900  # the shared tiny-model ``cache`` and its ``float_model`` come from conftest.py


@pytest.fixture
def tuner(
    float_model: OVModel, cache: Cache, tiny_hf_model: Path, tmp_path: Path
) -> panels.QuantizationTuner:
    panel = panels.QuantizationTuner(
        float_model,
        resolve_source(tiny_hf_model),
        cache=cache,
        ledger=Ledger(tmp_path / "ledger.jsonl"),
    )
    yield panel
    panel.close()


def _openvino_points(tuner: panels.QuantizationTuner) -> list[str]:
    """The labels on the chart's OpenVINO trace (one trace per engine, named by its title)."""
    trace = next(t for t in tuner.figure.data if t.name == get_engine("openvino").title)
    return list(trace.text or ())


def _reference_lines(tuner: panels.QuantizationTuner) -> list[str]:
    """The notes of the chart's float reference lines (KL 0 has no place on a log axis)."""
    return [a.text for a in tuner.figure.layout.annotations or ()]


def test_without_a_model_nothing_can_run() -> None:
    panel = panels.QuantizationTuner()
    assert panel.problem == "Prepare a model in the Model tab first." and panel.run_button.disabled
    assert panel.sweep_problem == panel.problem and panel.sweep_button.disabled
    assert panel.run() is False and "Prepare a model" in panel.view.notice.value
    assert panel.sweep() is False
    panel.close()


def test_only_valid_group_sizes_are_offered_and_the_plan_follows_the_toggles(
    tuner: panels.QuantizationTuner,
) -> None:
    assert list(tuner.group_buttons) == [16, 32, -1]  # 64 and 128 do not divide 96
    assert [c.label for c in tuner.configs] == ["int4_sym-g32-r1"]  # the default: one INT4 config
    tuner.group_buttons[16].value = True
    tuner.ratio_buttons[0.8].value = True
    tuner.mode_buttons["int8_asym"].value = True
    labels = [c.label for c in tuner.configs]
    assert labels == [
        "int4_sym-g16-r1",
        "int4_sym-g16-r0.8",
        "int4_sym-g32-r1",
        "int4_sym-g32-r0.8",
        "int8_asym",
    ]
    assert "5 config(s) to build and measure" in tuner.plan.value


def test_an_empty_plan_disables_run_sweep_with_the_reason(tuner: panels.QuantizationTuner) -> None:
    tuner.mode_buttons["int4_sym"].value = False
    assert tuner.sweep_problem == "Pick at least one mode." and tuner.sweep_button.disabled
    assert "Pick at least one mode" in tuner.sweep_button.tooltip
    assert tuner.sweep() is False and "Pick at least one mode" in tuner.view.notice.value
    assert tuner.problem == "" and not tuner.run_button.disabled  # the single config is still fine
    tuner.mode_buttons["int8_sym"].value = True  # INT8 needs no group size or ratio
    for button in [*tuner.group_buttons.values(), *tuner.ratio_buttons.values()]:
        button.value = False
    assert tuner.sweep_problem == "" and [c.label for c in tuner.configs] == ["int8_sym"]
    tuner.mode_buttons["nf4"].value = True
    assert "need at least one group size and one ratio" in tuner.sweep_problem


def test_the_sweep_applies_the_form_options_to_its_4_bit_configs(tuner: panels.QuantizationTuner) -> None:
    tuner.mode_buttons["int8_asym"].value = True
    tuner.form.all_layers.value = True
    tuner.form.backup_mode.value = "int8_sym"
    # With ratio 1 and all layers the form has no layer left for a backup precision...
    assert tuner.form.backup_mode.disabled
    assert [c.label for c in tuner.configs] == ["int4_sym-g32-r1-all-layers", "int8_asym"]
    tuner.form.ratio.value = 0.9  # ...below 1 it has, and the sweep takes it over
    assert [c.label for c in tuner.configs] == ["int4_sym-g32-r1-backup-int8_sym-all-layers", "int8_asym"]
    tuner.form.mode.value = "int8_sym"  # the form's own config is INT8 now: no 4-bit options left
    assert [c.label for c in tuner.configs] == ["int4_sym-g32-r1", "int8_asym"]


def test_sweep_plots_records_as_they_arrive_and_chooses_nothing_by_itself(
    tuner: panels.QuantizationTuner,
) -> None:
    counts: list[int] = []
    tuner.observe(lambda change: counts.append(len(change["new"])), "records")
    chosen: list[OVModel] = []
    tuner.on_chosen(chosen.append)
    tuner.mode_buttons["int8_asym"].value = True
    assert tuner.sweep() is True
    assert tuner.sweep() is False and "Compression is running" in tuner.view.notice.value
    assert tuner.run() is False and tuner.sweep_button.disabled and tuner.run_button.disabled
    assert tuner.wait(TIMEOUT_S) == "finished"
    assert [c for c in counts if c][:3] == [1, 2, 3]  # the reference, then one point per config, live
    assert [r.label for r in tuner.records] == ["float-fp32", "int4_sym-g32-r1", "int8_asym"]
    assert "Measured 2 config(s) and the float reference" in tuner.view.status.value
    # The float reference is a line with a note, not a point squeezed onto the log axis.
    assert sorted(_openvino_points(tuner)) == ["int4_sym-g32-r1", "int8_asym"]
    assert ["float-fp32" in note for note in _reference_lines(tuner)] == [True]
    assert min(y for t in tuner.figure.data for y in (t.y or ())) > 1e-6
    assert "(3 measured)" in tuner.figure.layout.title.text
    assert "mean KL" in tuner.table.value and "peak RSS MiB" in tuner.table.value
    # A finished sweep offers its best new model; only the user puts a model in the chat.
    assert tuner.compressed_model is None and chosen == [] and tuner.choice.value == str(tuner.model.path)
    assert tuner.latest_model is not None and tuner.latest_model.label == "int4_sym-g32-r1"
    assert tuner.chat_latest_button.layout.display != "none"
    offered = [value for _, value in tuner.choice.options]  # model folders, the chat's choices
    assert offered[0] == str(tuner.model.path) and len(offered) == 3  # the float reference first

    # Clicking the INT8 point on the chart picks it, and the chart rings it.
    trace = next(t for t in tuner.figure.data if t.text and "int8_asym" in t.text)
    index = list(trace.text).index("int8_asym")
    tuner._on_point(trace, SimpleNamespace(point_inds=[index]))
    assert tuner.compressed_model.label == "int8_asym" and chosen == [tuner.compressed_model]
    assert tuner.choice.value == str(tuner.compressed_model.path)
    assert list(trace.marker.line.color)[index] == CHOSEN_COLOR
    assert tuner.form.mode.value == "int8_asym" and tuner.config.label == "int8_asym"  # the form follows
    # "Chat with this" takes the model the sweep offered; the float model can be chosen too.
    assert tuner.choose_latest() == tuner.latest_model and tuner.compressed_model.label == "int4_sym-g32-r1"
    assert tuner.chat_latest_button.layout.display == "none"  # offered and taken
    tuner.choice.value = str(tuner.model.path)
    assert tuner.compressed_model is not None and tuner.compressed_model.path == tuner.model.path
    with pytest.raises(ConfigError, match="No measured config named 'nope'"):
        tuner.choose("nope")


def test_pick_for_me_searches_draws_live_and_loads_its_winner(tuner: panels.QuantizationTuner) -> None:
    chosen: list[OVModel] = []
    tuner.on_chosen(chosen.append)
    tuner.pick_controls.target_input.value = "kl>=1"
    assert tuner.pick_problem.startswith("kl is better lower") and tuner.pick_controls.button.disabled
    assert tuner.pick() is False and "kl is better lower" in tuner.view.notice.value
    # Every config of the tiny model meets this, so the smallest one wins and nothing larger is built.
    tuner.pick_controls.target_input.value = "kl<=1000"
    assert tuner.pick_problem == "" and not tuner.pick_controls.button.disabled
    counts: list[int] = []
    tuner.observe(lambda change: counts.append(len(change["new"])), "records")
    assert tuner.pick() is True
    assert tuner.pick() is False and tuner.pick_controls.target_input.disabled  # one task at a time
    assert tuner.wait(TIMEOUT_S) == "finished"

    result = tuner.pick_result
    assert result is not None and result.winner is not None and result.target.met(result.winner)
    assert result.measured_count == 1 < result.candidates
    assert [c for c in counts if c][:2] == [1, 2]  # the float reference, then the searched config, live
    winner = result.winner
    assert tuner.compressed_model is not None and str(tuner.compressed_model.path) == winner.model_path
    assert chosen == [tuner.compressed_model] and tuner.bring_chat_forward is True
    assert tuner.config is not None and tuner.config.label == winner.label  # the form shows the winner
    assert tuner.choice.value == winner.model_path  # and the chat list
    assert "loaded into the form and the chat" in tuner.view.status.value
    assert f"openvino {winner.label}" in tuner.details.value and "99.9 %" in tuner.details.value
    path = tuner.pick_controls.path.value
    assert winner.label in path and path.count("skipped") == result.candidates - 1
    assert "The smallest configuration meeting kl&lt;=1000 is openvino" in tuner.pick_controls.message.value
    assert not tuner.pick_controls.target_input.disabled


def test_run_compresses_and_measures_the_form_config_and_keeps_earlier_points(
    tuner: panels.QuantizationTuner,
) -> None:
    tuner.form.mode.value = "int4_asym"
    tuner.form.group_size.value = 16
    tuner.form.ratio.value = 0.9
    tuner.form.backup_mode.value = "none"
    expected = "int4_asym-g16-r0.9-backup-none"
    assert tuner.config is not None and tuner.config.label == expected
    assert tuner.run() is True
    assert tuner.wait(TIMEOUT_S) == "finished"
    assert [r.label for r in tuner.records] == ["float-fp32", expected]
    assert tuner.compressed_model is None and tuner.latest_model is not None
    assert tuner.latest_model.label == expected
    assert tuner.latest_model.weight_precisions.get("float", 0) > 0  # 'none' keeps 10 % float
    # A second config adds a point; the first stays on the chart.
    tuner.form.mode.value = "int8_sym"
    assert tuner.run() and tuner.wait(TIMEOUT_S) == "finished"
    assert [r.label for r in tuner.records] == ["float-fp32", expected, "int8_sym"]
    assert sorted(_openvino_points(tuner)) == sorted([expected, "int8_sym"])

    # The ledger keeps them: a new tuner (a dashboard opened later, a re-prepared model) shows them
    # at once, and another model's chart gives them back when the model returns.
    again = panels.QuantizationTuner(tuner.model, tuner.source, cache=tuner.cache, ledger=tuner.ledger)
    try:
        assert [r.label for r in again.records] == ["float-fp32", expected, "int8_sym"]
        assert again.choice.options[0][0].startswith("Float reference")
        assert again.results.layout.visibility == "visible"
    finally:
        again.close()
    model = tuner.model
    tuner.model = None
    assert len(tuner.records) == 3  # no model: nothing to replace them with
    tuner.model = model
    assert [r.label for r in tuner.records] == ["float-fp32", expected, "int8_sym"]


def test_an_invalid_config_cannot_run(tuner: panels.QuantizationTuner, float_model: OVModel) -> None:
    context = float_model.architecture.context_length
    tuner.form.awq.value = True
    tuner.form.calibration_tokens.value = context + 1
    assert tuner.config is None and f"exceeds the context of {context} tokens" in tuner.problem
    assert tuner.run_button.disabled and tuner.run() is False
    assert "exceeds the context" in tuner.view.notice.value
    assert "Fix the OpenVINO config first" in tuner.sweep_problem and tuner.sweep_button.disabled


def test_cancelled_sweep_ends_cancelled_without_a_half_built_model(
    tuner: panels.QuantizationTuner, cache: Cache
) -> None:
    tuner.mode_buttons["int4_sym"].value = False
    tuner.mode_buttons["nf4"].value = True
    tuner.group_buttons[16].value = True
    tuner.group_buttons[32].value = False
    tuner.ratio_buttons[0.6].value = True
    tuner.ratio_buttons[1.0].value = False  # nf4-g16-r0.6: built by no other test
    label = tuner.configs[0].label
    tuner.sweep()
    tuner.cancel()
    assert tuner.wait(TIMEOUT_S) == "cancelled"
    assert not [e for e in cache.entries("openvino-compressed") if e.metadata.get("label") == label]
    assert "cancelled" in tuner.view.status.value
    assert not tuner.run_button.disabled and not tuner.mode_buttons["nf4"].disabled


def test_error_in_the_sweep_is_shown(
    tuner: panels.QuantizationTuner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ConfigError("quality_tokens 10 is shorter than one window of 128 tokens.")

    monkeypatch.setattr(panels.quantization_tuner, "run_sweep", broken)
    tuner.sweep()
    assert tuner.wait(TIMEOUT_S) == "error"
    assert tuner.task.error == "quality_tokens 10 is shorter than one window of 128 tokens."
    assert "shorter than one window" in tuner.view.status.value


def _record(label: str, mib: float, kl: float, tokens_per_s: float, engine: str = "openvino") -> SweepRecord:
    return SweepRecord(
        key=f"key-{label}",
        model="tiny",
        engine=engine,
        label=label,
        config={},
        model_path=f"/nowhere/{label}",
        size=SizeReport(int(mib * 2**20), 40 * 2**20, 40 / mib, {"int4": 1.0}),
        quality=QualityReport(
            perplexity=10 + kl, reference_perplexity=10, mean_kl=kl, top1_agreement=1 - kl, num_tokens=64
        ),
        speed=SpeedReport(
            load_s=0.5,
            ttft_ms=12,
            tpot_ms=10,
            tokens_per_s=tokens_per_s,
            new_tokens=4,
            repeats=1,
            peak_rss_mb=300,
        ),
        answers=None,
        versions={},
        machine={},
        created=1.0,
    )


def test_the_chart_rings_only_the_front_and_draws_the_float_reference_as_a_line() -> None:
    # "slow" is beaten by "medium" on both axes (smaller, lower KL) though it is faster: off the front.
    small, medium, slow = (
        _record("small", 5, 0.5, 30),
        _record("medium", 10, 0.1, 50),
        _record("slow", 12, 0.2, 90),
    )
    ort = _record("ort-int4", 6, 0.3, 30, engine="ort")
    reference = _record("float-fp32", 40, 0.0, 20)
    figure = pareto_figure([reference, small, medium, slow, ort], chosen=medium.model_path)
    openvino_points, ort_points, front = figure.data
    assert [r.label for r in size_quality_front([reference, small, medium, slow, ort])] == [
        "small",
        "ort-int4",
        "medium",
    ]
    assert list(front.x) == pytest.approx([5, 6, 10], rel=1e-3) and 0.0 not in list(front.y)
    ringed = dict(zip(openvino_points.text, openvino_points.marker.line.width, strict=True))
    labelled = dict(zip(openvino_points.text, openvino_points.texttemplate, strict=True))
    assert "float-fp32" not in ringed  # the reference is no point...
    assert (
        "float-fp32" in figure.layout.annotations[0].text and figure.layout.shapes[0].x0 == 40
    )  # ...but a line
    assert ringed["slow"] < ringed["small"] < ringed["medium"]  # dominated < front < the chat's model
    assert labelled["slow"].strip() == "" and "%{text}" in labelled["small"]  # labels on the front only
    colors = dict(zip(openvino_points.text, openvino_points.marker.line.color, strict=True))
    assert colors["medium"] == CHOSEN_COLOR and colors["small"] != CHOSEN_COLOR
    positions = dict(zip(openvino_points.text, openvino_points.textposition, strict=True))
    assert positions["small"] != positions["medium"]  # neighbours on the front alternate above/below
    # The KL axis spans the compressed points (log10 of 0.1 .. 0.5 plus padding), not down to 1e-6.
    low, high = figure.layout.yaxis.range
    assert -1.6 < low < -1 and -0.3 < high < 0.3
    assert list(ort_points.text) == ["ort-int4"]
