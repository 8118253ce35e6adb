"""GenerationForm: the controls become valid GenerationSettings, or None with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbkit import widgets as panels
from nbkit.config import GenerationSettings


@pytest.fixture
def form() -> panels.GenerationForm:
    return panels.GenerationForm(GenerationSettings(max_new_tokens=64))


def test_starts_from_the_settings_it_is_given(form: panels.GenerationForm) -> None:
    assert form.settings == GenerationSettings(max_new_tokens=64)
    assert form.error == ""
    assert panels.GenerationForm().settings == GenerationSettings(max_new_tokens=128)


def test_sampling_knobs_are_off_while_greedy(form: panels.GenerationForm) -> None:
    assert form.temperature.disabled and form.top_p.disabled and form.top_k.disabled
    assert not form.repetition_penalty.disabled  # applies to greedy decoding too
    form.do_sample.value = True
    assert not form.temperature.disabled and not form.top_p.disabled and not form.top_k.disabled


def test_every_control_reaches_the_settings(form: panels.GenerationForm) -> None:
    form.do_sample.value = True
    form.temperature.value = 0.7
    form.top_p.value = 0.9
    form.top_k.value = 20
    form.repetition_penalty.value = 1.1
    form.max_new_tokens.value = 20
    assert form.settings == GenerationSettings(
        max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.1
    )


def test_settings_without_a_control_are_kept() -> None:
    start = GenerationSettings(max_new_tokens=16, min_new_tokens=4, seed=7, top_k=5)
    form = panels.GenerationForm(start)
    assert form.settings == start and form.top_k.value == 5
    form.max_new_tokens.value = 32
    assert form.settings == GenerationSettings(max_new_tokens=32, min_new_tokens=4, seed=7, top_k=5)


def test_labels_are_not_cut_and_the_system_prompt_says_what_empty_means(
    form: panels.GenerationForm,
) -> None:
    for slider in (form.temperature, form.top_p, form.top_k, form.repetition_penalty):
        # about 8 px per character of the default font: "Temperature" needs more than the default 80 px
        assert int(slider.style.description_width.removesuffix("px")) >= 8 * len(slider.description)
    assert "(none)" not in form.system_prompt.placeholder
    assert "default system prompt" in form.system_prompt.placeholder


def test_invalid_values_give_none_and_the_core_reason(form: panels.GenerationForm) -> None:
    form.max_new_tokens.value = 0  # refused with the core's sentence, never silently made 1
    assert form.max_new_tokens.value == 0
    assert form.settings is None
    assert form.error == "max_new_tokens must be at least 1, not 0."
    form.max_new_tokens.value = 100_000  # never clamped either: the chat checks the model's context
    assert form.settings == GenerationSettings(max_new_tokens=100_000)
    form.max_new_tokens.value = 5
    assert form.settings == GenerationSettings(max_new_tokens=5) and form.error == ""


def test_blank_system_prompt_is_none(form: panels.GenerationForm) -> None:
    assert form.system is None
    form.system_prompt.value = "   "
    assert form.system is None
    form.system_prompt.value = "  Answer in one sentence. "
    assert form.system == "Answer in one sentence."


def test_a_closed_form_stops_listening(form: panels.GenerationForm) -> None:
    form.close()
    form.max_new_tokens.value = 7
    assert form.settings == GenerationSettings(max_new_tokens=64)


def test_chat_pane_refuses_to_send_with_invalid_settings(tmp_path: Path) -> None:
    chat = panels.ChatPane(tmp_path, export_dir=tmp_path, settings=GenerationSettings(max_new_tokens=8))
    assert chat.settings == GenerationSettings(max_new_tokens=8) and not chat.send_button.disabled
    chat.max_new_tokens.value = 0
    assert chat.settings is None and chat.send_button.disabled
    assert "max_new_tokens must be at least 1" in chat.view.notice.value
    assert chat.send("Hi") is False and "max_new_tokens must be at least 1" in chat.view.notice.value
    chat.max_new_tokens.value = 3
    assert chat.settings == GenerationSettings(max_new_tokens=3) and not chat.send_button.disabled
    assert "max_new_tokens" not in chat.view.notice.value
    chat.close()
