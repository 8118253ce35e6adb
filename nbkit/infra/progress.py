"""Progress reporting and cooperative cancellation for long operations.

Long operations (GGUF conversion, export, compression, generation) accept a
``progress`` callback and a :class:`CancelToken`. The core never draws a bar itself:
the CLI turns the callback into a ``tqdm.auto`` bar, a panel into a ``FloatProgress``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from nbkit.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One progress report: ``fraction`` of the whole operation done, and what runs now."""

    fraction: float
    message: str


ProgressCallback = Callable[[Progress], None]


def _ignore(_: Progress) -> None:
    return None


class CancelToken:
    """A flag a UI sets and a worker polls between steps.

    Thread-safe; ``cancel()`` may be called from any thread, any number of times.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("The operation was cancelled; nothing was written to the cache.")


class ProgressReporter:
    """Maps the progress of sub-steps onto one overall fraction and checks cancellation.

    ``reporter.step(0.3, 0.8, "exporting")`` yields a child reporter whose 0..1 range covers
    30 %..80 % of the parent, so nested operations report one monotonic bar.
    """

    def __init__(
        self,
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        start: float = 0.0,
        end: float = 1.0,
    ) -> None:
        self.callback: ProgressCallback = callback or _ignore
        self.cancel_token = cancel or CancelToken()
        self._start = start
        self._end = end

    def report(self, fraction: float, message: str) -> None:
        """Report ``fraction`` (0..1 of this reporter's range), after checking for cancel."""
        self.cancel_token.raise_if_cancelled()
        clamped = min(max(fraction, 0.0), 1.0)
        self.callback(Progress(self._start + clamped * (self._end - self._start), message))

    def step(self, start: float, end: float) -> ProgressReporter:
        span = self._end - self._start
        return ProgressReporter(
            self.callback,
            self.cancel_token,
            start=self._start + start * span,
            end=self._start + end * span,
        )

    def check(self) -> None:
        self.cancel_token.raise_if_cancelled()
