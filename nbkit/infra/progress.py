"""Progress reporting and cooperative cancellation for long operations.

Long operations (GGUF conversion, export, compression, generation) accept a
``progress`` callback and a :class:`CancelToken`. The core never draws a bar itself:
the CLI turns the callback into a ``tqdm.auto`` bar, a panel into a ``FloatProgress``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class ProgressBar:
    """A ``tqdm.auto`` bar driven by nbkit progress reports: a widget bar in a notebook, text elsewhere.

    Pass it wherever nbkit takes ``progress=``; use it as a context manager (or call ``close()``)
    so the bar ends when the work does::

        with nbkit.ProgressBar("Export") as bar:
            nbkit.export_openvino(model, progress=bar)

    The bar shows the current step's message; ``leave=True`` keeps the finished bar on screen,
    which is what a notebook reader wants to see afterwards.
    """

    def __init__(self, description: str = "", *, leave: bool = True, file: Any = None) -> None:
        # tqdm.auto picks the notebook bar only inside a kernel; importing it here keeps the
        # import cost out of `import nbkit`.
        from tqdm.auto import tqdm

        self.description = description
        self._bar = tqdm(
            total=100,
            file=file,
            leave=leave,
            desc=description or None,
            bar_format="{l_bar}{bar}| {elapsed}{postfix}",
        )

    def __call__(self, progress: Progress) -> None:
        self._bar.n = round(min(max(progress.fraction, 0.0), 1.0) * 100)
        self._bar.set_postfix_str(progress.message[:60], refresh=False)
        self._bar.refresh()

    def finish(self, message: str = "done") -> None:
        """Show the work as complete: a cache hit reports no progress, yet it is done."""
        self(Progress(1.0, message))

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None and self._bar.n < 100:
            self.finish()
        self.close()
