"""The panels' background task: states, progress, cancel, and errors that are shown, never lost."""

from __future__ import annotations

import logging
import threading

import ipywidgets as widgets
import pytest
import traitlets

from nbkit import widgets as panels
from nbkit.errors import BusyError, Cancelled, ConfigError
from nbkit.infra.progress import ProgressReporter

TIMEOUT_S = 30


def _log_text(output: widgets.Output) -> str:
    return "".join(item.get("text", "") for item in output.outputs)


def test_finished_task_keeps_result_summary_and_progress_log() -> None:
    out = widgets.Output()
    task = panels.BackgroundTask("demo", out)
    view = panels.TaskView(task, idle_text="Nothing yet.")
    states: list[str] = []
    task.observe(lambda c: states.append(c["new"]), "state")

    def work(reporter: ProgressReporter) -> int:
        reporter.report(0.5, "Halfway")
        reporter.report(1.0, "Done")
        return 42

    task.start(work, on_success=lambda result: f"Got {result}")
    assert task.wait(TIMEOUT_S) == "finished"
    assert states == ["running", "finished"]
    assert task.result == 42 and task.fraction == 1.0 and task.error == ""
    assert task.message.startswith("Got 42 (")
    assert "Got 42" in view.status.value and view.cancel_button.disabled
    assert view.bar.layout.display == "none" and view.progress.bar_style == "success"
    log = _log_text(out)
    assert "Halfway" in log and "Done" in log
    view.close()


def test_cancel_ends_as_cancelled_and_calls_the_hook() -> None:
    task = panels.BackgroundTask("demo")
    started, hook_called = threading.Event(), threading.Event()

    def work(reporter: ProgressReporter) -> None:
        started.set()
        while True:
            reporter.check()  # raises Cancelled once cancel() is called
            reporter.cancel_token._event.wait(0.01)

    task.start(work, on_cancel=hook_called.set)
    assert started.wait(TIMEOUT_S)
    assert task.cancel()
    assert task.wait(TIMEOUT_S) == "cancelled"
    assert hook_called.is_set()
    assert "cancelled" in task.message and task.error == ""
    assert not task.cancel()  # nothing runs any more


def test_nbkit_error_is_one_sentence_without_traceback_noise() -> None:
    out = widgets.Output()
    task = panels.BackgroundTask("demo", out)
    view = panels.TaskView(task)

    def work(_: ProgressReporter) -> None:
        raise ConfigError("group_size 128 does not divide 576; valid group sizes: 16, 32, 64.")

    task.start(work)
    assert task.wait(TIMEOUT_S) == "error"
    assert task.error == "group_size 128 does not divide 576; valid group sizes: 16, 32, 64."
    assert task.error in view.status.value.replace("&#x27;", "'")
    assert "ConfigError" in task.details  # the traceback is kept for whoever needs it
    view.close()


def test_unexpected_exception_is_shown_with_its_type_and_traceback_in_the_log() -> None:
    out = widgets.Output()
    task = panels.BackgroundTask("demo", out)

    def work(_: ProgressReporter) -> None:
        raise KeyError("no such thing")

    task.start(work)
    assert task.wait(TIMEOUT_S) == "error"
    assert task.error.startswith("KeyError: 'no such thing'") and "log" in task.error
    assert "Traceback (most recent call last)" in _log_text(out)


def test_exception_in_on_success_is_not_lost() -> None:
    task = panels.BackgroundTask("demo")

    def boom(_: object) -> str:
        raise ValueError("the panel could not draw the result")

    task.start(lambda reporter: 1, on_success=boom)
    assert task.wait(TIMEOUT_S) == "error"
    assert "the panel could not draw the result" in task.error


def test_second_start_while_running_is_refused() -> None:
    task = panels.BackgroundTask("demo")
    release = threading.Event()
    view = panels.TaskView(task)
    task.start(lambda reporter: release.wait(TIMEOUT_S))
    assert view.bar.layout.display == "flex" and not view.cancel_button.disabled
    with pytest.raises(BusyError, match="still running"):
        task.start(lambda reporter: None)
    release.set()
    assert task.wait(TIMEOUT_S) == "finished"
    task.start(lambda reporter: None)  # and it can run again afterwards
    assert task.wait(TIMEOUT_S) == "finished"


def test_wait_times_out_instead_of_hanging() -> None:
    task = panels.BackgroundTask("demo")
    release = threading.Event()
    task.start(lambda reporter: release.wait(TIMEOUT_S))
    with pytest.raises(TimeoutError, match="still runs"):
        task.wait(0.05)
    release.set()
    task.wait(TIMEOUT_S)


def test_cancelled_raised_by_the_target_carries_its_message() -> None:
    task = panels.BackgroundTask("demo")

    def work(_: ProgressReporter) -> None:
        raise Cancelled("Stopped after 3 tokens; the partial answer is kept.")

    task.start(work)
    assert task.wait(TIMEOUT_S) == "cancelled"
    assert task.message == "Stopped after 3 tokens; the partial answer is kept."


def test_log_records_of_the_task_thread_reach_its_output_only() -> None:
    out = widgets.Output()
    task = panels.BackgroundTask("demo", out)
    other = logging.getLogger("nbkit.test")

    def work(_: ProgressReporter) -> None:
        other.warning("from the worker")

    task.start(work)
    other.warning("from the test thread")
    task.wait(TIMEOUT_S)
    text = _log_text(out)
    assert "from the worker" in text and "from the test thread" not in text
    assert all(not isinstance(h, panels._common.OutputLogHandler) for h in logging.getLogger().handlers)


def test_choice_buttons_refuse_an_unavailable_option() -> None:
    buttons = panels._common.ChoiceButtons(
        [
            panels._common.Choice("a", "A", "first"),
            panels._common.Choice("b", "B", "second", unavailable="it is switched off"),
        ],
        "a",
    )
    assert buttons.buttons["b"].disabled and buttons.buttons["b"].tooltip == "it is switched off"
    buttons.buttons["b"].click()
    assert buttons.value == "a"
    with pytest.raises(traitlets.TraitError, match="switched off"):
        buttons.value = "b"
    assert buttons.buttons["a"].button_style == "info" and buttons.buttons["a"].icon == "check"
