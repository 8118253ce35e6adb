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
    assert form.temperature.disabled and form.top_p.disabled
    assert not form.repetition_penalty.disabled  # applies to greedy decoding too
    form.do_sample.value = True
    assert not form.temperature.disabled and not form.top_p.disabled


def test_every_control_reaches_the_settings(form: panels.GenerationForm) -> None:
    form.do_sample.value = True
    form.temperature.value = 0.7
    form.top_p.value = 0.9
    form.repetition_penalty.value = 1.1
    form.max_new_tokens.value = 20
    assert form.settings == GenerationSettings(
        max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.1
    )


def test_invalid_values_give_none_and_the_core_reason(form: panels.GenerationForm) -> None:
    form.max_new_tokens.min = 0
    form.max_new_tokens.value = 0
    assert form.settings is None
    assert form.error == "max_new_tokens must be at least 1, not 0."
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
    chat = panels.ChatPane(export_dir=tmp_path, settings=GenerationSettings(max_new_tokens=8))
    assert chat.settings == GenerationSettings(max_new_tokens=8) and not chat.send_button.disabled
    chat.max_new_tokens.min = 0
    chat.max_new_tokens.value = 0
    assert chat.settings is None and chat.send_button.disabled
    assert "max_new_tokens must be at least 1" in chat.view.notice.value
    chat.max_new_tokens.value = 3
    assert chat.settings == GenerationSettings(max_new_tokens=3) and not chat.send_button.disabled
    assert "max_new_tokens" not in chat.view.notice.value
    chat.close()
