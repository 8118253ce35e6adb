"""OliveForm: the controls of one Olive (ONNX Runtime GenAI) build, and the code that reproduces it.

Every field of :class:`~nbkit.engines.ort.olive_config.OliveExportConfig` has a control:
precision, int4 block size, int4 accuracy level and int4 symmetry. What cannot apply is
disabled with the reason as its tooltip, from the core's rules: the engine's
:meth:`~nbkit.engines.protocol.Engine.unavailable_options` (the int4 knobs of an int8, fp16 or
fp32 build) and :func:`~nbkit.engines.ort.olive_config.check_olive_config` (a block size that
does not divide every layer of the model). "Show code" prints the engine's
:meth:`~nbkit.engines.protocol.Engine.code`: nbkit Python, the nbkit CLI, the Olive CLI and
the Olive JSON for ``olive run --config``.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.engines.ort.olive_config import (
    ACCURACY_LEVELS,
    BLOCK_SIZES,
    DEFAULT_ACCURACY_LEVEL,
    DEFAULT_BLOCK_SIZE,
    OliveExportConfig,
    OlivePrecision,
    check_olive_config,
)
from nbkit.engines.registry import engine_for_config
from nbkit.errors import ConfigError
from nbkit.sources.architecture import ArchitectureFacts

from ._common import Choice, ChoiceButtons, code_html, first_sentence, status_html
from ._panel import Panel

PRECISION_TIPS = {
    "int4": "4-bit blocks (MatMulNBits): the smallest build",
    "int8": "8-bit blocks of 64 (OnnxKQuantQuantization): close to float",
    "fp16": "Half-precision float weights",
    "fp32": "Full-precision float weights: the ONNX export itself",
}
ACCURACY_TIPS = {
    1: "1: fp32 compute of the activations (exact, slowest)",
    2: "2: fp16 compute",
    3: "3: bf16 compute",
    4: "4: int8 compute of the activations (fastest on CPU; ModelBuilder's default)",
}
_TIPS = {
    "int4_block_size": "Input channels sharing one int4 scale; sizes that do not divide every layer are off",
    "int4_accuracy_level": "The compute type of MatMulNBits' activations (1 fp32 ... 4 int8)",
    "int4_symmetric": "Symmetric int4 (no zero points, as NNCF's int4_sym); off: asymmetric",
}
_PLACEHOLDER_SPEC = "smollm2-135m-instruct"


def _label(text: str, width: str = "118px") -> widgets.HTML:
    return widgets.HTML(f"<b>{text}</b>", layout=widgets.Layout(width=width))


class OliveForm(Panel):
    """One Olive build as controls; ``config`` is None (with ``problem``) while it cannot fit the model."""

    config = traitlets.Instance(OliveExportConfig, allow_none=True, help="The build the controls describe")
    problem = traitlets.Unicode("", help="Why the controls describe no build that fits the model, or empty")
    show_code = traitlets.Bool(False, help="Whether the equivalent code is shown")

    def __init__(self, facts: ArchitectureFacts | None = None, *, model_spec: str = "") -> None:
        self._start_registry()
        self.facts = facts
        self.model_spec = model_spec
        self._frozen = False
        self.engine = engine_for_config(OliveExportConfig())
        precisions = [p.value for p in OlivePrecision]
        # Teal with a check, as every other choice (a ToggleButtons' grey selection is hard to see).
        self.precision = ChoiceButtons(
            [Choice(p, p, PRECISION_TIPS[p]) for p in precisions], OlivePrecision.INT4.value
        )
        self.precision.add_class("nbkit-precision")
        self.block_size = ChoiceButtons([], str(DEFAULT_BLOCK_SIZE))
        self.accuracy_level = widgets.ToggleButtons(
            options=[(str(level), level) for level in ACCURACY_LEVELS],
            value=DEFAULT_ACCURACY_LEVEL,
            tooltips=[ACCURACY_TIPS[level] for level in ACCURACY_LEVELS],
            tooltip=_TIPS["int4_accuracy_level"],
            style={"button_width": "48px"},
        )
        self.symmetric = widgets.Checkbox(
            value=True,
            description="symmetric",
            tooltip=_TIPS["int4_symmetric"],
            indent=False,
            layout=widgets.Layout(width="auto"),
        )
        self.code_toggle = widgets.ToggleButton(
            value=False,
            description="Show code",
            icon="code",
            tooltip="Show this build as nbkit Python, the nbkit CLI, the Olive CLI and Olive's JSON",
            layout=widgets.Layout(width="auto", min_width="120px", align_self="flex-start"),
        )
        self.code_toggle.add_class("nbkit-code-toggle")
        self.code = widgets.HTML(layout=widgets.Layout(display="none"))
        self.message = widgets.HTML()
        self.reasons: dict[str, str] = {}  # the fields that cannot apply now, with why
        row = widgets.Layout(align_items="center", flex_flow="row wrap")
        super().__init__(
            [
                widgets.HBox([_label("Precision"), self.precision], layout=row),
                widgets.HBox([_label("Block size"), self.block_size], layout=row),
                widgets.HBox([_label("Accuracy level"), self.accuracy_level, self.symmetric], layout=row),
                self.message,
                self.code_toggle,
                self.code,
            ]
        )
        self._inputs: list[Any] = [self.precision, self.block_size, self.accuracy_level, self.symmetric]
        for control in self._inputs:
            self.watch(control, self._update, "value")
        self.link((self.code_toggle, "value"), (self, "show_code"))
        self.watch(self, self._update, "show_code")
        self.set_facts(facts, model_spec=model_spec)

    # -- public -----------------------------------------------------------------------------------

    def set_facts(
        self, facts: ArchitectureFacts | None, *, model_spec: str = "", float_xml: str = ""
    ) -> None:
        """Offer the block sizes that fit ``facts`` (the others disabled with the reason).

        ``float_xml`` is accepted for the tuner's sake (the OpenVINO form takes it); Olive builds
        start from the Hugging Face folder, not from the float IR.
        """
        self.facts, self.model_spec = facts, model_spec
        choices = [
            Choice(
                str(size),
                str(size),
                f"Blocks of {size} input channels",
                unavailable=self._block_problem(size),
            )
            for size in BLOCK_SIZES
        ]
        wanted = self.block_size.value or str(DEFAULT_BLOCK_SIZE)
        fitting = [c.value for c in choices if not c.unavailable]
        if wanted not in fitting and fitting:
            # The largest size up to 128 that fits, as the engine's grid picks for "auto".
            small = [int(v) for v in fitting if int(v) <= 128]
            wanted = str(max(small)) if small else fitting[0]
        self.block_size.set_choices(choices, wanted)
        self._update()

    def load(self, config: OliveExportConfig) -> None:
        """Show ``config`` in the controls (e.g. a point clicked on the chart)."""
        for control in self._inputs:
            self.unwatch(control, self._update, "value")
        try:
            self.precision.value = config.precision.value
            if config.int4_block_size is not None and config.int4_block_size in BLOCK_SIZES:
                choice = self.block_size.choices.get(str(config.int4_block_size))
                if choice is not None and not choice.unavailable:
                    self.block_size.value = str(config.int4_block_size)
            if config.int4_accuracy_level is not None:
                self.accuracy_level.value = config.int4_accuracy_level
            if config.int4_symmetric is not None:
                self.symmetric.value = config.int4_symmetric
        finally:
            for control in self._inputs:
                self.watch(control, self._update, "value")
        self._update()

    def options(self) -> dict[str, Any]:
        """Nothing beyond the grid's own axes: an Olive build has no options a sweep shares."""
        return {}

    def set_disabled(self, disabled: bool) -> None:
        """Freeze every control (while work runs), or give them back their own enabled state."""
        self._frozen = disabled
        self._update()

    def code_blocks(self) -> dict[str, str]:
        """The engine's code for the current build: {title: text}, or {} while it is invalid."""
        if self.config is None:
            return {}
        return self.engine.code(self.config, self.model_spec or _PLACEHOLDER_SPEC)

    # -- reacting ---------------------------------------------------------------------------------

    def _block_problem(self, size: int) -> str:
        if self.facts is None:
            return ""
        try:
            check_olive_config(OliveExportConfig(int4_block_size=size), self.facts)
        except ConfigError as exc:
            return first_sentence(exc)
        return ""

    def _update(self, _: Any = None) -> None:
        precision = str(self.precision.value)
        # The core's rule: which int4 knobs apply to this precision (with the engine's defaults).
        self.reasons = self.engine.unavailable_options(OliveExportConfig(precision))
        frozen = self._frozen
        self.precision.disabled = frozen
        for name, control in (
            ("int4_accuracy_level", self.accuracy_level),
            ("int4_symmetric", self.symmetric),
        ):
            control.disabled = frozen or name in self.reasons
            control.tooltip = self.reasons.get(name) or _TIPS[name]
        block_reason = self.reasons.get("int4_block_size", "")
        for value, button in self.block_size.buttons.items():
            own = self.block_size.choices[value].unavailable
            button.disabled = frozen or bool(block_reason) or bool(own)
            button.tooltip = block_reason or own or self.block_size.choices[value].tooltip
        config, problem = None, ""
        try:
            fields: dict[str, Any] = {"precision": precision}
            if "int4_block_size" not in self.reasons:
                if not self.block_size.value:
                    raise ConfigError(
                        "No int4 block size divides every layer of this model; use int8 or a float build."
                    )
                fields["int4_block_size"] = int(self.block_size.value)
            if "int4_accuracy_level" not in self.reasons:
                fields["int4_accuracy_level"] = int(self.accuracy_level.value)
            if "int4_symmetric" not in self.reasons:
                fields["int4_symmetric"] = bool(self.symmetric.value)
            config = OliveExportConfig(**fields)
            if self.facts is not None:
                config = self.engine.resolve(config, self.facts)
        except ConfigError as exc:
            config, problem = None, first_sentence(exc)
        with self.hold_trait_notifications():
            self.config, self.problem = config, problem
        if config is not None:
            self.message.value = status_html("info", f"This build: {config.label}")
        else:
            self.message.value = status_html("error", problem)
        self._show_code()

    def _show_code(self) -> None:
        self.code_toggle.description = "Hide code" if self.show_code else "Show code"
        self.code.layout.display = "block" if self.show_code else "none"
        if not self.show_code:
            return
        if self.config is None:
            self.code.value = status_html("warn", "No code for an invalid build: " + self.problem)
            return
        self.code.value = "".join(
            code_html(text, title, copyable=True) for title, text in self.code_blocks().items()
        )
