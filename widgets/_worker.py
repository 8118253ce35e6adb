"""Run long work (export, compression, generation) off the kernel's thread, cancellably.

:class:`BackgroundTask` is a worker thread with a :class:`~nbkit.infra.progress.CancelToken`, a
``state`` trait (idle, running, finished, error, cancelled), the latest progress report and,
when it fails, a one-sentence ``error`` (the traceback of unexpected errors goes to the log
``Output``). The error is always kept: nothing that goes wrong in the thread is lost.
:class:`TaskView` draws a task: a progress bar, a Cancel button and a status line.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import traitlets

from nbkit.errors import BusyError, Cancelled, NbkitError
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter

from ._common import OutputLogHandler, first_sentence, status_html

log = logging.getLogger(__name__)

IDLE, RUNNING, FINISHED, ERROR, CANCELLED = "idle", "running", "finished", "error", "cancelled"
STATES = (IDLE, RUNNING, FINISHED, ERROR, CANCELLED)


class BackgroundTask(traitlets.HasTraits):
    """One long operation at a time, in a daemon thread, with progress and cooperative cancel."""

    state = traitlets.Enum(STATES, default_value=IDLE, help="idle, running, finished, error or cancelled")
    fraction = traitlets.Float(0.0, help="Share of the work done, 0..1")
    message = traitlets.Unicode("", help="What runs now, or how the last run ended")
    error = traitlets.Unicode("", help="One sentence: why the last run failed")

    def __init__(self, name: str, log_output: widgets.Output | None = None) -> None:
        super().__init__()
        self.name = name
        self.log_output = log_output
        self.result: Any = None
        self.details = ""  # traceback of the last unexpected error
        self.elapsed_s = 0.0
        self._thread: threading.Thread | None = None
        self._token = CancelToken()
        self._on_cancel: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._started = 0.0
        self._last_message = ""

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def cancel_requested(self) -> bool:
        return self._token.cancelled

    def start(
        self,
        target: Callable[[ProgressReporter], Any],
        *,
        on_success: Callable[[Any], str | None] | None = None,
        on_cancel: Callable[[], None] | None = None,
        message: str = "Starting",
    ) -> None:
        """Run ``target(reporter)`` in a thread; ``on_success(result)`` runs there before ``finished``.

        ``on_success`` may return a one-sentence summary shown as the final status.

        ``target`` raises :class:`~nbkit.errors.Cancelled` to end as ``cancelled``;
        ``on_cancel`` is called by :meth:`cancel` (e.g. to stop a generation early).
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise BusyError(f"{self.name} is still running; wait for it to finish or cancel it first.")
            self._token = CancelToken()
            self._on_cancel = on_cancel
            thread = threading.Thread(
                target=self._run,
                args=(target, on_success, self._token),
                name=f"nbkit-{self.name}",
                daemon=True,
            )
            self._thread = thread
        self.result, self.details, self.error = None, "", ""
        self.fraction, self.message, self._last_message = 0.0, message, ""
        self._started = time.perf_counter()
        self.state = RUNNING
        thread.start()

    def cancel(self) -> bool:
        """Ask the running work to stop; returns False if nothing runs."""
        if not self.running:
            return False
        self._token.cancel()
        self.message = "Cancelling…"
        if self._on_cancel is not None:
            try:
                self._on_cancel()
            except Exception as exc:  # never let a cancel hook hide the cancel itself
                self._append_log(f"Cancel hook failed: {type(exc).__name__}: {exc}\n")
        return True

    def wait(self, timeout: float | None = None) -> str:
        """Block until the work ends (for tests and scripts; a notebook never needs it)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"{self.name} still runs after {timeout} s (state {self.state}).")
        return str(self.state)

    # -- the thread ------------------------------------------------------------------------------

    def _run(self, target: Callable[[ProgressReporter], Any], on_success: Any, token: CancelToken) -> None:
        handler = OutputLogHandler(self.log_output) if self.log_output is not None else None
        root = logging.getLogger()
        if handler is not None:
            root.addHandler(handler)
        final, message, error = ERROR, "", ""
        try:
            reporter = ProgressReporter(self._on_progress, token)
            result = target(reporter)
            self.result = result
            summary = on_success(result) if on_success is not None else None
            summary = summary if isinstance(summary, str) and summary else "Finished"
            final, message = FINISHED, f"{summary} ({self._elapsed():.1f} s)"
        except Cancelled as exc:
            final, message = CANCELLED, first_sentence(exc)
        except NbkitError as exc:
            error = first_sentence(exc)
            self.details = traceback.format_exc()
            self._append_log(f"ERROR {error}\n")
        except BaseException as exc:  # a bug: keep the traceback where the user can find it
            error = f"{type(exc).__name__}: {first_sentence(exc)} (unexpected; the traceback is in the log)"
            self.details = traceback.format_exc()
            self._append_log(self.details)
            log.debug("%s failed", self.name, exc_info=True)
        finally:
            if handler is not None:
                root.removeHandler(handler)
            self.elapsed_s = self._elapsed()
            try:
                if final == ERROR:
                    self.error, self.message = error or "The task failed without a message.", error
                else:
                    self.message = message
                    if final == FINISHED:
                        self.fraction = 1.0
                self.state = final
            except Exception:  # an observer of ``state`` failed: record it, do not lose the outcome
                self.details += traceback.format_exc()
                self._append_log(traceback.format_exc())
                log.exception("An observer of %s's state failed", self.name)

    def _on_progress(self, progress: Progress) -> None:
        self.fraction = progress.fraction
        self.message = progress.message
        if progress.message != self._last_message:
            self._last_message = progress.message
            self._append_log(f"[{self._elapsed():6.1f} s] {progress.message}\n")

    def _elapsed(self) -> float:
        return time.perf_counter() - self._started

    def _append_log(self, text: str) -> None:
        if self.log_output is not None:
            try:
                self.log_output.append_stdout(text)
            except Exception:
                log.debug("Cannot write to the log output", exc_info=True)


class TaskView(widgets.VBox):
    """A progress bar with a Cancel button and a status line, following one task."""

    def __init__(self, task: BackgroundTask, *, idle_text: str = "", cancel_label: str = "Cancel") -> None:
        self.task = task
        self.progress = widgets.FloatProgress(
            value=0.0,
            min=0.0,
            max=1.0,
            bar_style="info",
            tooltip=f"Progress of {task.name}",
            layout=widgets.Layout(flex="1 1 auto", width="auto"),
        )
        self.cancel_button = widgets.Button(
            description=cancel_label,
            icon="stop",
            tooltip=f"{cancel_label} {task.name}: nothing half-done is kept in the cache",
            disabled=True,
            layout=widgets.Layout(width="100px"),
        )
        self._on_cancel_click = lambda _: task.cancel()
        self.cancel_button.on_click(self._on_cancel_click)
        self.status = widgets.HTML(status_html("info", idle_text), tooltip="Status of " + task.name)
        self.notice = widgets.HTML("", tooltip="Messages about your last action")
        # Shown only while the task runs.
        self.bar = widgets.HBox(
            [self.progress, self.cancel_button], layout=widgets.Layout(width="100%", display="none")
        )
        super().__init__(
            [
                self.bar,
                self.status,
                self.notice,
            ]
        )
        task.observe(self._update, names=["state", "fraction", "message", "error"])
        self._closed = False

    def show(self, kind: str, text: str) -> None:
        """Replace the status line (panels use it for hints while no task runs)."""
        self.status.value = status_html(kind, text)

    def notify(self, kind: str, text: str) -> None:
        """A message about the user's last action (a refusal, a saved file); empty text clears it."""
        self.notice.value = status_html(kind, text) if text else ""

    def _update(self, change: Any = None) -> None:
        task = self.task
        if change is not None and change["name"] == "state" and change["new"] == RUNNING:
            self.notify("", "")  # a new run: the message about the last action is stale
        running = task.state == RUNNING
        self.cancel_button.disabled = not running
        self.progress.value = task.fraction
        self.bar.layout.display = "flex" if running else "none"  # the status line tells the outcome
        style = {RUNNING: "info", FINISHED: "success", ERROR: "danger", CANCELLED: "warning"}
        self.progress.bar_style = style.get(task.state, "info")
        if running:
            self.show("running", f"{task.message} ({task.fraction:.0%})")
        elif task.state == FINISHED:
            self.show("ok", task.message)
        elif task.state == CANCELLED:
            self.show("cancelled", task.message)
        elif task.state == ERROR:
            self.show("error", task.error)

    def close(self) -> None:
        if self.__dict__.get("_closed", True):  # closed already, or __init__ failed half-way
            super().close()
            return
        self._closed = True
        self.task.unobserve(self._update, names=["state", "fraction", "message", "error"])
        self.cancel_button.on_click(self._on_cancel_click, remove=True)
        for widget in (self.progress, self.cancel_button, self.status, self.notice, *self.children):
            widget.close()
        super().close()
