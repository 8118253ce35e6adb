"""GenerationForm: the generation settings of a chat, and its system prompt.

``settings`` always holds what the controls say as a valid
:class:`nbkit.GenerationSettings`, or ``None`` with ``error`` saying why (the checks are
the core's, in ``GenerationSettings.__post_init__``; nothing is clamped). The sampling knobs
are disabled while greedy decoding is on, because they would change nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.config import GenerationSettings
from nbkit.errors import ConfigError

from ._common import first_sentence

_LABELS = {"description_width": "100px"}  # wide enough for "Temperature" and "Repetition"


def _slider(value: float, low: float, high: float, description: str, tooltip: str) -> widgets.FloatSlider:
    return widgets.FloatSlider(
        value=value,
        min=low,
        max=high,
        step=0.05,
        description=description,
        tooltip=tooltip,
        continuous_update=False,  # one settings update per drag, not one per pixel
        readout_format=".2f",
        style=_LABELS,
        layout=widgets.Layout(width="380px"),
    )


class GenerationForm(widgets.VBox):
    """Max tokens, greedy or sampled, temperature, top-p, top-k, repetition penalty, system prompt."""

    settings = traitlets.Instance(
        GenerationSettings, allow_none=True, help="The settings the controls describe, or None if invalid"
    )
    error = traitlets.Unicode("", help="Why the controls are not valid settings; empty when they are")

    def __init__(self, settings: GenerationSettings | None = None, *, system_prompt: str = "") -> None:
        start = settings or GenerationSettings(max_new_tokens=128)
        self._start = start  # what the form has no control for (min_new_tokens, seed) is kept
        # Not bounded: a value out of range is refused with the core's sentence, never clamped.
        self.max_new_tokens = widgets.IntText(
            value=start.max_new_tokens,
            description="Max tokens",
            tooltip="max_new_tokens: the longest answer, in tokens; a longer answer is cut there",
            style=_LABELS,
            layout=widgets.Layout(width="200px"),
        )
        self.do_sample = widgets.Checkbox(
            value=start.do_sample,
            description="Sample",
            indent=False,
            tooltip="Off: greedy (the same answer every time); on: random, shaped by temperature and top-p",
        )
        self.temperature = _slider(
            start.temperature, 0.05, 2.0, "Temperature", "Higher = more varied answers (sampling only)"
        )
        self.top_p = _slider(
            start.top_p,
            0.05,
            1.0,
            "Top-p",
            "Sample only from the most likely tokens covering this probability (sampling only)",
        )
        self.top_k = widgets.IntSlider(
            value=start.top_k,
            min=0,
            max=200,
            description="Top-k",
            tooltip="Sample only from the k most likely tokens; 0 = no limit (sampling only)",
            continuous_update=False,
            style=_LABELS,
            layout=widgets.Layout(width="380px"),
        )
        self.repetition_penalty = _slider(
            start.repetition_penalty,
            1.0,
            2.0,
            "Repetition",
            "repetition_penalty: > 1 discourages repeating tokens; 1 = off",
        )
        self.system_prompt = widgets.Textarea(
            value=system_prompt,
            placeholder="Empty: the model's chat template decides (many add their own default "
            "system prompt). E.g. You are a concise assistant.",
            description="System",
            tooltip="A system prompt sent before the conversation; empty leaves it to the model's chat template",
            style=_LABELS,
            layout=widgets.Layout(width="95%", height="52px"),
        )
        super().__init__(
            [
                widgets.HBox([self.max_new_tokens, self.do_sample]),
                self.temperature,
                self.top_p,
                self.top_k,
                self.repetition_penalty,
                self.system_prompt,
            ]
        )
        self._controls = (
            self.max_new_tokens,
            self.do_sample,
            self.temperature,
            self.top_p,
            self.top_k,
            self.repetition_penalty,
        )
        for control in self._controls:
            control.observe(self._read, names="value")
        self._read()

    @property
    def system(self) -> str | None:
        """The system prompt, or None when it is blank."""
        return self.system_prompt.value.strip() or None

    def close(self) -> None:
        # Idempotent: a dashboard closes every widget of its tree, this one's pane did already.
        for control in self.__dict__.pop("_controls", ()):
            control.unobserve(self._read, names="value")
        super().close()

    def _read(self, _: Any = None) -> None:
        sampling = bool(self.do_sample.value)
        for control in (self.temperature, self.top_p, self.top_k):
            control.disabled = not sampling
        try:
            settings = dataclasses.replace(
                self._start,
                max_new_tokens=int(self.max_new_tokens.value),
                do_sample=sampling,
                temperature=float(self.temperature.value),
                top_p=float(self.top_p.value),
                top_k=int(self.top_k.value),
                repetition_penalty=float(self.repetition_penalty.value),
            )
        except ConfigError as exc:
            # error first: an observer of settings reads the reason when None arrives
            self.error = first_sentence(exc)
            self.settings = None
        else:
            self.error = ""
            self.settings = settings
