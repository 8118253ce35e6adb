"""CompressionForm without a browser: valid group sizes only, impossible options disabled with why, code."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import pytest

from nbkit import CompressionConfig, read_architecture
from nbkit import widgets as panels
from nbkit.cli.main import _compression_config
from nbkit.cli.parser import build_parser
from nbkit.sources.architecture import ArchitectureFacts


@pytest.fixture(scope="module")
def facts(tiny_hf_model: Path) -> ArchitectureFacts:
    return read_architecture(tiny_hf_model)


@pytest.fixture
def form(facts: ArchitectureFacts) -> panels.CompressionForm:
    panel = panels.CompressionForm(
        facts, model_spec="/models/tiny", float_xml="/cache/float/openvino_model.xml"
    )
    yield panel
    panel.close()


def test_only_valid_group_sizes_are_offered_and_the_largest_is_preselected(
    form: panels.CompressionForm,
) -> None:
    assert [value for _, value in form.group_size.options] == [16, 32, -1]  # 64 and 128 do not divide 96
    assert form.group_size.value == 32
    assert form.config == CompressionConfig(group_size=32) and form.problem == ""


def test_int8_disables_every_4_bit_option_with_the_reason(form: panels.CompressionForm) -> None:
    form.mode.value = "int8_asym"
    for control in (form.group_size, form.ratio, form.all_layers, form.backup_mode, form.awq, form.gptq):
        assert control.disabled and "int8_asym" in control.tooltip
    assert (
        form.calibration_tokens.disabled
        and "Calibration text is used only by" in form.calibration_tokens.tooltip
    )
    assert form.config == CompressionConfig(mode="int8_asym")
    form.mode.value = "int4_sym"
    assert not form.group_size.disabled and "valid for this model" in form.group_size.tooltip
    assert form.config == CompressionConfig(group_size=32)


def test_values_set_before_a_control_was_disabled_do_not_leak_into_the_config(
    form: panels.CompressionForm,
) -> None:
    form.ratio.value = 0.8
    form.awq.value = True
    form.all_layers.value = True
    assert form.config == CompressionConfig(group_size=32, ratio=0.8, awq=True, all_layers=True)
    form.mode.value = "int8_sym"
    assert form.config == CompressionConfig(mode="int8_sym")  # not ratio 0.8, not AWQ, not all layers
    assert form.ratio.value == 0.8 and form.awq.value  # kept for when a 4-bit mode comes back
    form.mode.value = "nf4"
    assert form.config == CompressionConfig(mode="nf4", group_size=32, ratio=0.8, awq=True, all_layers=True)


def test_awq_and_gptq_exclude_each_other(form: panels.CompressionForm) -> None:
    form.awq.value = True
    assert form.gptq.disabled and "turn AWQ off" in form.gptq.tooltip and not form.scale_estimation.disabled
    form.awq.value = False
    form.gptq.value = True
    assert form.awq.disabled and "turn GPTQ off" in form.awq.tooltip
    assert form.config is not None and form.config.gptq and form.config.is_data_aware


def test_the_metric_and_calibration_follow_ratio_and_data_awareness(form: panels.CompressionForm) -> None:
    assert form.sensitivity_metric.disabled and "ratio < 1" in form.sensitivity_metric.tooltip
    assert form.calibration_samples.disabled
    form.ratio.value = 0.8
    assert not form.sensitivity_metric.disabled
    form.sensitivity_metric.value = "hessian_input_activation"
    assert not form.calibration_samples.disabled  # a data-aware metric calibrates
    form.calibration_samples.value = 4
    assert form.config is not None and form.config.label.endswith("hessian-input-activation-cal4x128")
    form.ratio.value = 1.0
    assert form.config == CompressionConfig(group_size=32)  # no layer to rank: metric and calibration unused


def test_calibration_longer_than_the_context_is_reported(
    form: panels.CompressionForm, facts: ArchitectureFacts
) -> None:
    form.scale_estimation.value = True
    form.calibration_tokens.value = facts.context_length + 1
    assert form.config is None and "exceeds the context" in form.problem
    assert "exceeds the context" in form.message.value


def test_every_combination_the_controls_allow_is_a_valid_config(form: panels.CompressionForm) -> None:
    """Whatever a user clicks, the form never holds an error other than its own reported problem."""
    combos = itertools.product(
        ["int4_sym", "int4_asym", "nf4", "int8_asym", "int8_sym"],
        [16, 32, -1],
        [1.0, 0.8],
        [False, True],
        [(False, False), (True, False), (False, True)],
        ["", "weight_quantization_error", "max_activation_variance"],  # "": NNCF's default
        ["int8_asym", "none"],
    )
    for mode, group, ratio, all_layers, (awq, gptq), metric, backup in combos:
        form.load(CompressionConfig())  # from a clean form each time
        for control, value in (
            (form.mode, mode),
            (form.group_size, group),
            (form.ratio, ratio),
            (form.all_layers, all_layers),
            (form.backup_mode, backup),
            (form.awq, awq),
            (form.gptq, gptq),
            (form.scale_estimation, True),
        ):
            if not control.disabled:
                control.value = value
        if not form.sensitivity_metric.disabled:
            form.sensitivity_metric.value = metric
        assert form.config is not None and form.problem == "", (
            mode,
            group,
            ratio,
            all_layers,
            awq,
            gptq,
            metric,
        )


def test_load_shows_a_config_in_the_controls(form: panels.CompressionForm) -> None:
    for config in (
        CompressionConfig(mode="int4_asym", group_size=16, ratio=0.8, backup_mode="int8_sym", awq=True),
        CompressionConfig(
            mode="nf4", group_size=None, ratio=0.6, sensitivity_metric="mean_activation_magnitude"
        ),
        CompressionConfig(mode="int8_sym"),
        CompressionConfig(
            group_size=32, gptq=True, scale_estimation=True, calibration_samples=8, calibration_tokens=64
        ),
    ):
        form.load(config)
        assert form.config == config


def test_show_code_prints_the_config_as_python_cli_nncf_and_optimum(form: panels.CompressionForm) -> None:
    assert form.code.layout.display == "none"
    form.ratio.value = 0.8
    form.awq.value = True
    assert form.code_toggle.description == "Show code"
    form.code_toggle.value = True
    assert form.show_code and form.code.layout.display == "block"
    assert form.code_toggle.description == "Hide code"  # the toggle says what a click does
    code = form.code.value
    assert code.count('class="nbkit-copy"') == 4 and "monospace" in code  # a Copy button per block
    for text in (
        "nbkit compress /models/tiny --mode int4_sym --group-size 32 --ratio 0.8 --awq",
        "nbkit.CompressionConfig(mode=&#x27;int4_sym&#x27;, group_size=32, ratio=0.8, awq=True)",
        "read_model(&#x27;/cache/float/openvino_model.xml&#x27;)",
        "nncf.compress_weights(",
        "optimum-cli export openvino",
    ):
        assert text in code, text
    cli = code[code.index("nbkit compress") :].split("</pre>")[0]
    args = build_parser().parse_args(shlex.split(cli.replace("\\\n", " "))[1:])
    assert _compression_config(args) == form.config
    form.group_size.value = 16  # the code follows every change
    assert "--group-size 16" in form.code.value
    form.calibration_tokens.value = (
        100_000 if form.calibration_tokens.max >= 100_000 else form.calibration_tokens.max
    )
    assert form.config is None and "No code for an invalid config" in form.code.value
    form.code_toggle.value = False
    assert form.code.layout.display == "none" and form.code_toggle.description == "Show code"


def test_the_mode_shows_its_choice_like_every_other_choice(form: panels.CompressionForm) -> None:
    assert isinstance(form.mode, panels._common.ChoiceButtons)
    form.mode.buttons["int4_asym"].click()
    assert (
        form.mode.value == "int4_asym" and form.config is not None and form.config.mode.value == "int4_asym"
    )
    styles = {value: (b.button_style, b.icon) for value, b in form.mode.buttons.items()}
    assert styles.pop("int4_asym") == ("info", "check") and set(styles.values()) == {("", "")}
    assert all(b.layout.width == "auto" for b in form.mode.buttons.values())  # never cut to "int4_as…"


def test_set_disabled_freezes_and_restores_the_controls(form: panels.CompressionForm) -> None:
    form.set_disabled(True)
    assert form.mode.disabled and form.group_size.disabled and form.awq.disabled
    assert all(b.disabled for b in form.mode.buttons.values())
    form.mode.buttons["nf4"].click()
    assert form.mode.value == "int4_sym"  # frozen: a click changes nothing
    form.set_disabled(False)
    assert not form.mode.disabled and not form.awq.disabled
    assert form.sensitivity_metric.disabled  # its own reason (ratio 1) still holds


def test_the_metric_dropdown_shows_nncf_default_and_maps_it_to_none(form: panels.CompressionForm) -> None:
    assert form.sensitivity_metric.value == "" and form.sensitivity_metric.label == "metric: NNCF default"
    form.ratio.value = 0.8
    assert form.config == CompressionConfig(group_size=32, ratio=0.8, sensitivity_metric=None)
    form.load(CompressionConfig(group_size=32, ratio=0.8, sensitivity_metric="weight_quantization_error"))
    assert form.sensitivity_metric.value == "weight_quantization_error"
    form.load(CompressionConfig(group_size=32, ratio=0.8))
    assert form.sensitivity_metric.value == ""


def test_without_a_model_only_per_channel_is_offered() -> None:
    form = panels.CompressionForm()
    assert [value for _, value in form.group_size.options] == [-1]
    assert form.config == CompressionConfig(group_size=None)
    form.close()


def test_close_unobserves_everything(form: panels.CompressionForm) -> None:
    controls = [form.mode, form.ratio, form.awq]
    assert all(form._update in c._trait_notifiers["value"]["change"] for c in controls)
    form.close()
    form.close()  # twice is fine
    assert all(form._update not in c._trait_notifiers.get("value", {}).get("change", []) for c in controls)
    assert all(c.comm is None for c in controls)
