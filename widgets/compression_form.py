"""CompressionForm: the controls of one compression config, and the code that reproduces it.

Every field of :class:`nbkit.CompressionConfig` has a control: mode (the formats that run on
this CPU, with the ones not offered and why listed beside), group size (only the sizes valid
for the model), ratio, all layers, backup mode, the layers kept in float or INT8 (the model's
real layer names, with shortcuts for the embeddings, the LM head and the first and last
block), AWQ, scale estimation, GPTQ, LoRA correction, the sensitivity metric and the
calibration set. A control that cannot apply to the other choices
is disabled with the reason as its tooltip; the rules come from
:func:`nbkit.config.unavailable_options`, and a disabled control contributes its default, so
the form never builds a config the core would refuse. "Show code" prints the same config as
nbkit Python, the ``nbkit`` command line, plain OpenVINO + NNCF and ``optimum-cli``
(:func:`nbkit.compression.snippets.compression_code`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.compression.layers import layer_shortcuts, model_layer_names
from nbkit.compression.snippets import compression_code
from nbkit.compression.weights import resolve_config
from nbkit.config import (
    AUTO,
    NOT_OFFERED_FORMATS,
    BackupMode,
    CompressionConfig,
    CompressionMode,
    SensitivityMetric,
    largest_group_size,
    unavailable_options,
)
from nbkit.errors import ConfigError
from nbkit.sources.architecture import ArchitectureFacts

from ._common import Choice, ChoiceButtons, code_html, first_sentence, status_html

MODES = (
    "int4_sym",
    "int4_asym",
    "nf4",
    "cb4",
    "mxfp4",
    "fp4",
    "nvfp4",
    "fp8_e4m3",
    "mxfp8_e4m3",
    "int8_asym",
    "int8_sym",
)
MODE_TIPS = {
    "int4_sym": "INT4 symmetric: smallest and fastest",
    "int4_asym": "INT4 asymmetric: a zero point per group, a little more accurate",
    "nf4": "NF4: 4-bit normal-float levels",
    "cb4": "CB4: 4-bit indexes into a fixed codebook of 16 FP8 (E4M3) values",
    "mxfp4": "MXFP4: FP4 (E2M1) values, one 8-bit exponent per group of 32 (OCP MX format)",
    "fp4": "FP4: FP4 (E2M1) values with an fp16 scale per group",
    "nvfp4": "NVFP4: FP4 (E2M1) values, an FP8 scale per group of 16",
    "fp8_e4m3": "FP8 E4M3 values with an fp16 scale per group: 8-bit, close to float",
    "mxfp8_e4m3": "MXFP8: FP8 E4M3 values, one 8-bit exponent per group of 32",
    "int8_asym": "INT8 asymmetric, per-channel: close to float (ignores group sizes and ratios)",
    "int8_sym": "INT8 symmetric, per-channel (ignores group sizes and ratios)",
}
assert set(MODES) == {mode.value for mode in CompressionMode}, "every mode nbkit offers has a button"
KEEP_FIELDS = ("keep_float", "keep_int8")
PER_CHANNEL = -1
NNCF_DEFAULT_METRIC = ""
_DEFAULT = CompressionConfig()
_TIPS = {
    "group_size": "Input channels sharing one scale; only sizes valid for this model are offered",
    "ratio": "Share of the eligible layers in the 4-bit mode; the rest use the backup precision",
    "all_layers": "Also compress the embeddings and the last layer to 4 bits (smaller, less accurate)",
    "backup_mode": "Precision of the layers left out of the 4-bit mode ('none' keeps them float)",
    "awq": "Activation-aware weight quantization: protects the channels with large activations",
    "scale_estimation": "Fits each group's scale to the calibration activations",
    "gptq": "GPTQ: corrects the rounding error layer by layer from calibration data",
    "lora_correction": "LoRA correction: low-rank INT8 adapters fitted to cancel part of the 4-bit error",
    "keep_float": "Layers left in float (NNCF ignored scope); type to search the model's layer names",
    "keep_int8": "Layers compressed to INT8 instead of the 4-bit mode (a second NNCF pass)",
    "sensitivity_metric": "How layers are ranked when some stay in the backup precision (ratio < 1)",
    "calibration": "Calibration sequences x tokens, cut from text that ships with Python (no download)",
}


def _label(text: str, width: str = "118px") -> widgets.HTML:
    return widgets.HTML(f"<b>{text}</b>", layout=widgets.Layout(width=width))


class CompressionForm(widgets.VBox):
    """One compression config as controls; ``config`` is None (with ``problem``) while it is invalid."""

    config = traitlets.Instance(CompressionConfig, allow_none=True, help="The config the controls describe")
    problem = traitlets.Unicode("", help="Why the controls describe no valid config, or empty")
    show_code = traitlets.Bool(False, help="Whether the equivalent code is shown")

    def __init__(
        self, facts: ArchitectureFacts | None = None, *, model_spec: str = "", float_xml: str = ""
    ) -> None:
        self.facts = facts
        self.model_spec = model_spec
        self.float_xml = float_xml
        # The same teal-with-a-check selection as every other choice (a ToggleButtons' grey is hard to see).
        self.mode = ChoiceButtons([Choice(m, m, MODE_TIPS[m]) for m in MODES], "int4_sym")
        self.mode.add_class("nbkit-mode")
        # Formats the user may look for and not find, with why (the claims are re-checked by tests).
        self.not_offered = widgets.HTML(
            '<small style="color:#57606a">Not offered: '
            + "; ".join(f"<b>{name}</b> ({reason})" for name, reason in NOT_OFFERED_FORMATS.items())
            + "</small>",
            layout=widgets.Layout(margin="0 0 0 122px"),
        )
        self.group_size = widgets.Dropdown(options=[], tooltip=_TIPS["group_size"], layout=_width("160px"))
        self.ratio = widgets.FloatSlider(
            value=1.0, min=0.0, max=1.0, step=0.05, readout_format=".2f", tooltip=_TIPS["ratio"]
        )
        self.all_layers = _checkbox("all layers", _TIPS["all_layers"])
        self.backup_mode = widgets.Dropdown(
            options=[(m.value, m.value) for m in BackupMode],
            value=_DEFAULT.backup_mode.value,
            tooltip=_TIPS["backup_mode"],
            layout=_width("160px"),
        )
        self.awq = _checkbox("AWQ", _TIPS["awq"])
        self.scale_estimation = _checkbox("scale estimation", _TIPS["scale_estimation"])
        self.gptq = _checkbox("GPTQ", _TIPS["gptq"])
        self.lora_correction = _checkbox("LoRA correction", _TIPS["lora_correction"])
        self.keep_float = _layer_names_input(_TIPS["keep_float"])
        self.keep_int8 = _layer_names_input(_TIPS["keep_int8"])
        self.keep_float.add_class("nbkit-keep-float")
        self.keep_int8.add_class("nbkit-keep-int8")
        self.shortcuts: dict[str, widgets.HBox] = {
            "keep_float": widgets.HBox(layout=widgets.Layout(flex_flow="row wrap")),
            "keep_int8": widgets.HBox(layout=widgets.Layout(flex_flow="row wrap")),
        }
        self.sensitivity_metric = widgets.Dropdown(
            # "" for NNCF's default: a Dropdown shows nothing for the value None.
            options=[
                ("metric: NNCF default", NNCF_DEFAULT_METRIC),
                *((m.value, m.value) for m in SensitivityMetric),
            ],
            value=NNCF_DEFAULT_METRIC,
            tooltip=_TIPS["sensitivity_metric"],
            layout=_width("260px"),
        )
        self.calibration_samples = widgets.BoundedIntText(
            value=_DEFAULT.calibration_samples,
            min=1,
            max=1024,
            tooltip="Calibration sequences",
            layout=_width("80px"),
        )
        self.calibration_tokens = widgets.BoundedIntText(
            value=_DEFAULT.calibration_tokens,
            min=8,
            max=8192,
            tooltip="Tokens per sequence",
            layout=_width("80px"),
        )
        self.code_toggle = widgets.ToggleButton(
            value=False,
            description="Show code",
            icon="code",
            tooltip="Show this config as nbkit Python, the nbkit CLI, OpenVINO + NNCF, and optimum-cli",
            layout=widgets.Layout(width="auto", min_width="120px", align_self="flex-start"),
        )
        self.code_toggle.add_class("nbkit-code-toggle")
        self.code = widgets.HTML(layout=widgets.Layout(display="none"))
        self.message = widgets.HTML()
        self._controls: dict[str, list[widgets.DOMWidget]] = {
            "group_size": [self.group_size],
            "ratio": [self.ratio],
            "all_layers": [self.all_layers],
            "backup_mode": [self.backup_mode],
            "awq": [self.awq],
            "scale_estimation": [self.scale_estimation],
            "gptq": [self.gptq],
            "lora_correction": [self.lora_correction],
            "keep_float": [self.keep_float],
            "keep_int8": [self.keep_int8],
            "sensitivity_metric": [self.sensitivity_metric],
            "calibration": [self.calibration_samples, self.calibration_tokens],
        }
        row = widgets.Layout(align_items="center", flex_flow="row wrap")
        super().__init__(
            [
                widgets.HBox([_label("Mode"), self.mode], layout=row),
                self.not_offered,
                widgets.HBox(
                    [_label("Group size"), self.group_size, _label("Ratio", "56px"), self.ratio], layout=row
                ),
                widgets.HBox([_label("Other layers"), self.backup_mode, self.all_layers], layout=row),
                widgets.HBox(
                    [_label("Keep in float"), widgets.VBox([self.keep_float, self.shortcuts["keep_float"]])],
                    layout=row,
                ),
                widgets.HBox(
                    [_label("Keep in INT8"), widgets.VBox([self.keep_int8, self.shortcuts["keep_int8"]])],
                    layout=row,
                ),
                widgets.HBox(
                    [
                        _label("Data-aware"),
                        self.awq,
                        self.scale_estimation,
                        self.gptq,
                        self.lora_correction,
                        self.sensitivity_metric,
                    ],
                    layout=row,
                ),
                widgets.HBox(
                    [
                        _label("Calibration"),
                        self.calibration_samples,
                        widgets.HTML("&nbsp;sequences ×&nbsp;"),
                        self.calibration_tokens,
                        widgets.HTML("&nbsp;tokens"),
                    ],
                    layout=row,
                ),
                self.message,
                self.code_toggle,
                self.code,
            ]
        )
        self._inputs = [self.mode, *(c for controls in self._controls.values() for c in controls)]
        for control in self._inputs:
            control.observe(self._update, names="value")
        self._links = [traitlets.link((self.code_toggle, "value"), (self, "show_code"))]
        self.observe(self._update, names="show_code")
        self.set_facts(facts, model_spec=model_spec, float_xml=float_xml)

    # -- public -----------------------------------------------------------------------------------

    def set_facts(
        self, facts: ArchitectureFacts | None, *, model_spec: str = "", float_xml: str = ""
    ) -> None:
        """Offer the group sizes valid for ``facts`` (the largest up to 128 preselected)."""
        self.facts, self.model_spec, self.float_xml = facts, model_spec, float_xml
        valid = facts.valid_group_sizes() if facts is not None else ()
        options = [(str(s), s) for s in valid] + [("per-channel", PER_CHANNEL)]
        best = largest_group_size(valid) or PER_CHANNEL
        names = list(model_layer_names(facts)) if facts is not None else []
        shortcuts = layer_shortcuts(facts) if facts is not None else {}
        with self.hold_trait_notifications():
            self.group_size.options = options
            self.group_size.value = best
            for field in KEEP_FIELDS:
                control: widgets.TagsInput = getattr(self, field)
                control.value = [name for name in control.value if name in names] if names else []
                control.allowed_tags = names  # the model's real layers, offered as the user types
                self._set_shortcuts(field, shortcuts)
        self._update()

    def load(self, config: CompressionConfig) -> None:
        """Show ``config`` in the controls (e.g. a point clicked on the chart)."""
        values = {
            self.mode: config.mode.value,
            self.ratio: config.ratio,
            self.all_layers: config.all_layers,
            self.backup_mode: config.backup_mode.value,
            self.awq: config.awq,
            self.scale_estimation: config.scale_estimation,
            self.gptq: config.gptq,
            self.lora_correction: config.lora_correction,
            self.sensitivity_metric: config.sensitivity_metric.value
            if config.sensitivity_metric
            else NNCF_DEFAULT_METRIC,
            self.calibration_samples: config.calibration_samples,
            self.calibration_tokens: config.calibration_tokens,
        }
        group = PER_CHANNEL if config.group_size is None else config.group_size
        if group in [value for _, value in self.group_size.options]:
            values[self.group_size] = group
        for field in KEEP_FIELDS:
            control = getattr(self, field)
            names = list(getattr(config, field))
            if control.allowed_tags and not set(names) <= set(control.allowed_tags):
                # A name this model lacks: accept it, so the config check names it and the close matches.
                control.allowed_tags = [
                    *control.allowed_tags,
                    *(n for n in names if n not in control.allowed_tags),
                ]
            values[control] = names
        for control in self._inputs:
            control.unobserve(self._update, names="value")
        try:
            for control, value in values.items():
                control.value = value
        finally:
            for control in self._inputs:
                control.observe(self._update, names="value")
        self._update()

    def options(self) -> dict[str, Any]:
        """The fields besides mode, group size and ratio, as a sweep applies them to every 4-bit config."""
        if self.config is None:
            return {}
        return {
            name: value
            for name, value in dataclasses.asdict(self.config).items()
            if name not in ("mode", "group_size", "ratio")
        }

    def add_layers(self, field: str, names: tuple[str, ...] | list[str]) -> None:
        """Add ``names`` to ``keep_float`` or ``keep_int8`` (what a shortcut button does)."""
        control: widgets.TagsInput = getattr(self, field)
        control.value = [*control.value, *(name for name in names if name not in control.value)]

    def set_disabled(self, disabled: bool) -> None:
        """Freeze every control (while work runs), or give them back their own enabled state."""
        self._frozen = disabled
        self._update()

    def close(self) -> None:
        if self.__dict__.get("_closed", False):
            return
        self._closed = True
        for control in self.__dict__.get("_inputs", []):
            control.unobserve(self._update, names="value")
        for link in self.__dict__.get("_links", []):
            link.unlink()
        if "_inputs" in self.__dict__:
            self.unobserve(self._update, names="show_code")
            for box in self.shortcuts.values():
                for button in box.children:
                    button.close()
            for child in [*self._inputs, self.code_toggle, self.code, self.message, self.not_offered]:
                child.close()
        super().close()

    # -- reacting ---------------------------------------------------------------------------------

    def _update(self, _: Any = None) -> None:
        reasons = unavailable_options(
            self.mode.value,
            ratio=self.ratio.value,
            all_layers=self.all_layers.value,
            awq=self.awq.value,
            scale_estimation=self.scale_estimation.value,
            gptq=self.gptq.value,
            lora_correction=self.lora_correction.value,
            sensitivity_metric=self.sensitivity_metric.value or None,
        )
        frozen = self.__dict__.get("_frozen", False)
        self.mode.disabled = frozen
        self._show_fixed_group_size()
        for name, controls in self._controls.items():
            for control in controls:
                control.disabled = frozen or name in reasons
                control.tooltip = reasons.get(name) or _TIPS.get(name) or control.tooltip
            if name in self.shortcuts:
                for button in self.shortcuts[name].children:
                    button.disabled = frozen or name in reasons
        config, problem = None, ""
        try:
            config = CompressionConfig(**self._fields(reasons))
            if self.facts is not None:
                config = resolve_config(config, self.facts)
        except ConfigError as exc:
            config, problem = None, first_sentence(exc)
        with self.hold_trait_notifications():
            self.config, self.problem = config, problem
        if config is not None:
            calibration = " (data-aware: calibrates first)" if config.is_data_aware else ""
            self.message.value = status_html("info", f"This config: {config.label}{calibration}")
        else:
            self.message.value = status_html("error", problem)
        self._show_code()

    def _show_fixed_group_size(self) -> None:
        """Show the group size a format defines (MXFP4: 32) while it is picked; give the user's back after."""
        fixed = CompressionMode.parse(self.mode.value).fixed_group_size
        sizes = [value for _, value in self.group_size.options]
        chosen = self.__dict__.get("_chosen_group_size")
        target = fixed if fixed in sizes else chosen
        if fixed in sizes and chosen is None:
            self._chosen_group_size = self.group_size.value
        elif fixed not in sizes:
            self._chosen_group_size = None
        if target is None or target == self.group_size.value or target not in sizes:
            return
        self.group_size.unobserve(self._update, names="value")
        try:
            self.group_size.value = target
        finally:
            self.group_size.observe(self._update, names="value")

    def _fields(self, reasons: dict[str, str]) -> dict[str, Any]:
        """The config's fields from the enabled controls; a disabled control gives its default."""
        fields: dict[str, Any] = {"mode": self.mode.value}
        group = self.group_size.value
        fields["group_size"] = None if group in (None, PER_CHANNEL) else group
        values = {
            "ratio": self.ratio.value,
            "all_layers": self.all_layers.value,
            "backup_mode": self.backup_mode.value,
            "awq": self.awq.value,
            "scale_estimation": self.scale_estimation.value,
            "gptq": self.gptq.value,
            "lora_correction": self.lora_correction.value,
            "sensitivity_metric": self.sensitivity_metric.value or None,
            "keep_float": tuple(self.keep_float.value),
            "keep_int8": tuple(self.keep_int8.value),
        }
        for name, value in values.items():
            fields[name] = getattr(_DEFAULT, name) if name in reasons else value
        if "group_size" in reasons:
            # Per-channel for INT8; the one size the format defines (resolved from "auto") otherwise.
            fields["group_size"] = None if CompressionMode.parse(self.mode.value).is_int8 else AUTO
        if "calibration" not in reasons:
            fields["calibration_samples"] = self.calibration_samples.value
            fields["calibration_tokens"] = self.calibration_tokens.value
        return fields

    def _show_code(self) -> None:
        self.code_toggle.description = "Hide code" if self.show_code else "Show code"
        self.code.layout.display = "block" if self.show_code else "none"
        if not self.show_code:
            return
        if self.config is None:
            self.code.value = status_html("warn", "No code for an invalid config: " + self.problem)
            return
        code = compression_code(
            self.config,
            self.model_spec or "smollm2-135m-instruct",
            float_xml=self.float_xml or "float/openvino_model.xml",
        )
        self.code.value = "".join(
            [
                code_html(code.python, "nbkit (Python)", copyable=True),
                code_html(code.cli, "nbkit (command line)", copyable=True),
                code_html(code.nncf, "OpenVINO + NNCF directly", copyable=True),
                code_html(
                    code.optimum_cli,
                    "optimum-cli (calibrates on a hub dataset; nbkit works offline)",
                    copyable=True,
                ),
            ]
        )

    def _set_shortcuts(self, field: str, shortcuts: dict[str, tuple[str, ...]]) -> None:
        box = self.shortcuts[field]
        for button in box.children:
            button.close()
        buttons = []
        for title, names in shortcuts.items():
            button = widgets.Button(
                description=f"+ {title}",
                tooltip=", ".join(names),
                layout=widgets.Layout(width="auto", margin="2px 4px 0 0"),
            )
            button.add_class("nbkit-layer-shortcut")
            button.on_click(lambda _, names=names: self.add_layers(field, names))
            buttons.append(button)
        box.children = buttons


def _layer_names_input(tooltip: str) -> widgets.TagsInput:
    return widgets.TagsInput(
        value=[],
        allow_duplicates=False,
        placeholder="type a layer name, or use a shortcut below",
        tooltip=tooltip,
        layout=_width("520px"),
    )


def _checkbox(label: str, tooltip: str) -> widgets.Checkbox:
    return widgets.Checkbox(
        value=False,
        description=label,
        tooltip=tooltip,
        indent=False,
        layout=widgets.Layout(width="auto", margin="0 16px 0 0"),
    )


def _width(width: str) -> widgets.Layout:
    return widgets.Layout(width=width)
