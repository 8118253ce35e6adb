"""The "Pick for me" controls of the tuner: a quality target, what to optimize, data-aware options to try.

The search itself is :func:`nbkit.measure.sweep.run_sweep` with a ``target`` (the tuner runs
it in its worker, so its points land on the tuner's chart); this box only edits what to
search for and renders the path the core reports (:func:`nbkit.measure.pick.path_rows`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ipywidgets as widgets
import traitlets

from nbkit.config import CompressionConfig
from nbkit.errors import ConfigError
from nbkit.measure.pick import DATA_AWARE_FLAGS, PATH_HEADER, PickResult, PickStep, Target, path_rows

from ._common import Choice, ChoiceButtons, first_sentence, status_html, table_html
from ._panel import Panel

DATA_AWARE_LABELS = {
    "awq": ("AWQ", "activation-aware scaling of the weights (calibrates on text)"),
    "scale_estimation": ("Scale estimation", "fits the 4-bit scales to the calibration activations"),
    "gptq": ("GPTQ", "corrects the rounding error layer by layer (slow)"),
    "lora_correction": ("LoRA correction", "trains small adapters that undo the rounding error (slowest)"),
}
DEFAULT_TARGET = "kl<=0.25"


def _offered_flags() -> list[str]:
    """The data-aware flags this nbkit's CompressionConfig has (each a separate search family)."""
    fields = {f.name for f in dataclasses.fields(CompressionConfig)}
    return [name for name in DATA_AWARE_FLAGS if name in fields]


class PickControls(Panel):
    """Target, objective, data-aware options and the search's path; the tuner runs the search."""

    target_text = traitlets.Unicode(DEFAULT_TARGET, help="The quality target as typed, e.g. 'kl<=0.25'")
    problem = traitlets.Unicode("", help="Why the target cannot be used (one sentence), or empty")

    def __init__(self) -> None:
        self._start_registry()
        self.target_input = widgets.Text(
            value=DEFAULT_TARGET,
            description="Target",
            placeholder="kl<=0.25, top1>=90%",
            tooltip="What the winner must meet: kl, top1, ppl_ratio or answers; commas join several",
            layout=widgets.Layout(width="320px"),
        )
        self.target_input.add_class("nbkit-pick-target")
        self.optimize_buttons = ChoiceButtons(
            [
                Choice("size", "Smallest", "The smallest configuration that meets the target"),
                Choice("speed", "Fastest", "The fastest configuration that meets the target"),
            ],
            "size",
        )
        self.data_aware_toggles = {
            name: widgets.ToggleButton(
                description=DATA_AWARE_LABELS[name][0],
                tooltip=f"Also try {DATA_AWARE_LABELS[name][0]}: {DATA_AWARE_LABELS[name][1]}",
                layout=widgets.Layout(width="auto"),
            )
            for name in _offered_flags()
        }
        self.button = widgets.Button(
            description="Pick for me",
            icon="magic",
            button_style="primary",
            layout=widgets.Layout(width="160px"),
            tooltip="Measure configurations cheapest first until the best one meeting the target is known",
        )
        self.button.add_class("nbkit-pick")
        self.message = widgets.HTML()
        # Scrolls past a dozen rows: a search over a large grid lists every config it skipped.
        self.path = widgets.HTML(layout=widgets.Layout(overflow="auto", max_height="360px"))
        self.path.add_class("nbkit-pick-path")
        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        super().__init__(
            [
                widgets.HTML(
                    "Say what quality you need; nbkit measures the configurations in order of cost "
                    "(smallest first), skips those that cannot win, and loads the winner into the form "
                    "and the chat. It searches int4_sym and int4_asym at the group sizes that fit the "
                    "model and ratios from 1 to 0.6, on the engines ticked in the grid below."
                ),
                widgets.HBox([self.target_input, self.optimize_buttons], layout=row),
                widgets.HBox([widgets.Label("Also try"), *self.data_aware_toggles.values()], layout=row),
                widgets.HBox([self.button], layout=row),
                self.message,
                self.path,
            ]
        )
        self.own(self.target_input, self.optimize_buttons, self.button, self.message, self.path)
        self.own(*self.data_aware_toggles.values())
        self.watch(self.target_input, self._on_text, "value")
        for toggle in self.data_aware_toggles.values():
            self.watch(toggle, self._on_text, "value")
        self._on_text()

    @property
    def optimize(self) -> str:
        return self.optimize_buttons.value

    @property
    def data_aware(self) -> list[str]:
        return [name for name, toggle in self.data_aware_toggles.items() if toggle.value]

    def target(self) -> Target | None:
        """The parsed target, or None (``problem`` says why)."""
        try:
            return Target.parse(self.target_input.value)
        except ConfigError:
            return None

    def set_disabled(self, disabled: bool) -> None:
        self.target_input.disabled = disabled
        self.optimize_buttons.disabled = disabled
        for toggle in self.data_aware_toggles.values():
            toggle.disabled = disabled

    def show_steps(self, steps: Sequence[PickStep]) -> None:
        self.path.value = table_html(PATH_HEADER, path_rows(steps), empty="")

    def show_result(self, result: PickResult) -> None:
        self.show_steps(result.steps)
        self.message.value = status_html("ok" if result.winner is not None else "warn", result.conclusion())

    def _on_text(self, _: object = None) -> None:
        self.target_text = self.target_input.value
        try:
            Target.parse(self.target_input.value)
        except ConfigError as exc:
            self.problem = first_sentence(exc)
        else:
            self.problem = ""
        self.message.value = status_html("error", self.problem) if self.problem else ""
        for toggle in self.data_aware_toggles.values():
            toggle.button_style, toggle.icon = ("info", "check") if toggle.value else ("", "")
