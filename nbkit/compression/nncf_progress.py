"""NNCF's own progress bars as nbkit progress reports.

NNCF draws a rich progress bar for each long phase of a compression or quantization
("Statistics collection", "Applying data-aware AWQ", "Applying Scale Estimation",
"Applying GPTQ", "Mixed-Precision assignment", "Applying Weight Compression", "Applying Smooth
Quant", ...), all through one class, ``nncf.common.logging.track_progress.track``, and offers no
callback. While :func:`nncf_progress` is active, every ``track`` also reports its phase and step
to a :class:`~nbkit.infra.progress.ProgressReporter` (``"Applying data-aware AWQ 12/30"``), so nbkit's
bar keeps moving during the minutes NNCF works, and a cancelled reporter stops NNCF at its next
step by raising :class:`~nbkit.errors.Cancelled` from inside the loop.

How it hooks in: NNCF's modules import ``track`` by name, so replacing the module attribute
would not reach them; the hook replaces ``__iter__``, ``__enter__``, ``__exit__`` and ``update``
on the class itself, calls the original methods unchanged (NNCF's own bars are drawn exactly as
before: nowhere in nbkit's child process, whose output goes to /dev/null) and restores the
originals when the last active context ends, also on an exception. If NNCF ever stops shipping
``track``, the context does nothing and :class:`~nbkit.compression.calibration.CalibrationProgress` keeps
reporting the calibration reads as before.

How phases map onto the bar: NNCF runs several ``track`` phases one after another, and how
many depends on the config, the model and whether cached statistics are loaded; nbkit cannot
ask in advance. The caller therefore passes the phases it *expects*, in order, with rough
relative durations (``phases=[("Statistics collection", 3), ("AWQ", 2), ...]``, a name matching
any part of NNCF's description, case-insensitively). When a phase begins it gets the share of
what is left of ``start..end`` that its weight has among the expected phases not seen yet;
expected phases that are passed over (NNCF skipped them) give their share to the later ones.
A phase nobody expected gets the average weight of the remaining expected ones, or half of the
remaining range when none are left (so any number of surprises still fits before ``end``).
Inside a phase the bar moves with NNCF's step count (weighted by NNCF's ``weights=`` when given,
as for "Applying Weight Compression", whose steps are layers of very different sizes). The bar
never moves backwards, and reports are throttled to one per ``min_interval`` seconds except the
first and the last of each phase.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nbkit.errors import Cancelled
from nbkit.infra.progress import ProgressReporter

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.1  # at most ~10 reports a second: each one crosses the process boundary
_PATCHED = ("__iter__", "__enter__", "__exit__", "update")
# NNCF phases whose steps are calibration samples, named so in the message ("..., sample 3/8").
_UNITS = {"statistics collection": "sample"}

_lock = threading.RLock()
_active: list[NncfProgress] = []  # innermost last
# The class's own methods, kept for good once read: a track that began under the hook may still
# call them after the hook is removed.
_originals: dict[str, Any] = {}
_installed = False


def _track_class() -> Any:
    try:
        from nncf.common.logging.track_progress import track
    except Exception:  # pragma: no cover - an NNCF without track: nothing to hook
        return None
    if not all(callable(vars(track).get(name)) for name in _PATCHED):  # pragma: no cover
        return None
    return track


@dataclass
class _Phase:
    """One ``track`` of NNCF: its slot of the bar and how far it got."""

    description: str
    count: int | None  # steps (sequence items), None when NNCF does not know
    weights: list[float] | None
    low: float
    high: float
    done: int = 0

    def fraction(self) -> float:
        if self.weights:
            total = sum(self.weights)
            part = sum(self.weights[: self.done]) / total if total > 0 else 1.0
        elif self.count:
            part = self.done / self.count
        else:
            part = 0.0  # unknown length: stay at the start of the slot, the message shows the count
        return self.low + (self.high - self.low) * min(max(part, 0.0), 1.0)

    def message(self) -> str:
        if self.count:
            steps = f"{self.done}/{self.count}"
        elif self.done:
            steps = str(self.done)  # NNCF does not say how many
        else:
            return self.description  # nothing to do, or nothing counted yet
        unit = _UNITS.get(self.description.strip().lower())
        return f"{self.description}, {unit} {steps}" if unit else f"{self.description} {steps}"


class NncfProgress:
    """The state of one :func:`nncf_progress` context (see the module docstring)."""

    def __init__(
        self,
        reporter: ProgressReporter,
        start: float,
        end: float,
        phases: Sequence[tuple[str, float]] = (),
        *,
        min_interval: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if end < start:
            raise ValueError(f"end {end} is before start {start}")
        self.reporter = reporter
        self.start = start
        self.end = end
        self.expected = [(name.lower(), float(weight)) for name, weight in phases if weight > 0]
        self.min_interval = min_interval
        self.clock = clock
        self.thread = threading.get_ident()
        self.cursor = start  # where the next phase starts
        self.last_fraction = start  # the bar never goes back
        self.last_time: float | None = None
        self.phases_seen: list[str] = []
        self.closed = False
        self.hooked = False
        self._failed = False
        self._state = threading.Lock()

    # -- phases ----------------------------------------------------------------------------

    def _slot(self, description: str) -> tuple[float, float]:
        text = description.lower()
        remaining = self.end - self.cursor
        match = next((i for i, (name, _) in enumerate(self.expected) if name and name in text), None)
        if match is not None:
            weight = self.expected[match][1]
            del self.expected[:match]  # passed over: NNCF skipped them, later phases share their part
            share = weight / sum(w for _, w in self.expected)
            self.expected.pop(0)
        elif self.expected:
            weight = sum(w for _, w in self.expected) / len(self.expected)
            share = weight / (weight + sum(w for _, w in self.expected))
        else:
            share = 0.5
        return self.cursor, self.cursor + remaining * share

    def begin(self, description: str, count: int | None, weights: list[float] | None) -> _Phase:
        with self._state:
            low, high = self._slot(description)
            phase = _Phase(description, count, list(weights) if weights else None, low, high)
            self.phases_seen.append(description)
        self._report(phase, force=True)
        return phase

    def step(self, phase: _Phase, done: int) -> None:
        phase.done = done
        self._report(phase)

    def finish(self, phase: _Phase, failed: bool) -> None:
        with self._state:
            self.cursor = max(self.cursor, phase.high)
        if failed or self.closed:
            return
        if phase.count is not None:
            phase.done = max(phase.done, phase.count)
        self._report(phase, force=True, final=True)  # the bar rests here while NNCF works between phases

    # -- reporting -------------------------------------------------------------------------

    def _report(self, phase: _Phase, *, force: bool = False, final: bool = False) -> None:
        if self.closed:
            return
        self.reporter.check()  # a cancel stops NNCF here, at its next step
        with self._state:
            now = self.clock()
            due = self.last_time is None or now - self.last_time >= self.min_interval
            if not (force or due):
                return
            fraction = phase.high if final else phase.fraction()
            fraction = self.last_fraction = max(self.last_fraction, fraction)
            self.last_time = now
            message = phase.message()
        try:
            self.reporter.report(fraction, message)
        except Cancelled:
            raise
        except Exception as exc:
            if not self._failed:  # a broken progress display must never break a compression
                self._failed = True
                log.debug("Progress report of an NNCF phase failed: %s: %s", type(exc).__name__, exc)


# -- the hook on NNCF's track class ----------------------------------------------------------


def _current() -> NncfProgress | None:
    """The context NNCF's progress goes to: the innermost one of this thread, or the only one."""
    with _lock:
        if not _active:
            return None
        here = threading.get_ident()
        for context in reversed(_active):
            if context.thread == here:
                return context
        return _active[-1] if len(_active) == 1 else None


def active() -> bool:
    """True while an :func:`nncf_progress` context reports NNCF's phases (for this thread)."""
    context = _current()
    return context is not None and context.hooked


def _count(track: Any) -> int | None:
    weights = getattr(track, "weights", None)
    if weights:
        return len(weights)
    total = getattr(track, "total", None)
    if total is not None:
        return int(total)
    sequence = getattr(track, "sequence", None)
    if sequence is None:
        return None
    try:
        hint = operator.length_hint(sequence, -1)  # len() when the sequence has one
    except Exception:
        return None
    return hint if hint >= 0 else None


def _guarded(action: Callable[..., None], *args: Any) -> None:
    """Run nbkit's part of a hook: a cancel propagates, any other failure is only logged."""
    try:
        action(*args)
    except Cancelled:
        raise
    except Exception as exc:  # a bug in the hook must never break a compression
        log.debug("nbkit's NNCF progress hook failed: %s: %s", type(exc).__name__, exc, exc_info=True)


def _hooked_iter(self: Any) -> Iterator[Any]:
    def measure() -> None:  # before the original __iter__ enters the bar and so begins the phase
        self._nbkit_count = _count(self)

    _guarded(measure)
    inner = _originals["__iter__"](self)
    try:
        for done, item in enumerate(inner, start=1):
            yield item
            # The consumer is back for the next item: this one is done. Reported before the next
            # item is fetched, which can be the slow part (GPTQ's layer-wise iterator runs the model).
            _guarded(_on_step, self, done)
    finally:
        inner.close()  # on an early exit, end NNCF's bar (and the phase) now, not at garbage collection


def _hooked_enter(self: Any) -> Any:
    result = _originals["__enter__"](self)

    def begin() -> None:
        count = self.__dict__.pop("_nbkit_count", None)
        context = _current()
        if context is None or context.closed:
            return
        self._nbkit_done = 0
        description = str(getattr(self, "description", "") or "NNCF")
        phase = context.begin(
            description, count if count is not None else _count(self), getattr(self, "weights", None)
        )
        self._nbkit_phase = (context, phase)

    try:
        _guarded(begin)
    except BaseException as exc:  # cancelled: the with-block never starts, so end NNCF's bar here
        _originals["__exit__"](self, type(exc), exc, exc.__traceback__)
        raise
    return result


def _hooked_exit(self: Any, *exc_info: Any) -> Any:
    result = _originals["__exit__"](self, *exc_info)

    def finish() -> None:
        context, phase = self.__dict__.pop("_nbkit_phase", (None, None))
        if context is not None and phase is not None:
            context.finish(phase, failed=bool(exc_info) and exc_info[0] is not None)

    _guarded(finish)
    return result


def _hooked_update(self: Any, advance: float, **kwargs: Any) -> Any:
    result = _originals["update"](self, advance, **kwargs)

    def step() -> None:
        if kwargs.get("completed") is not None:
            done = int(kwargs["completed"])
        else:
            done = int(getattr(self, "_nbkit_done", 0) + (advance or 0))
        self._nbkit_done = done
        _on_step(self, done)

    _guarded(step)
    return result


def _on_step(track: Any, done: int) -> None:
    context, phase = getattr(track, "_nbkit_phase", (None, None))
    if context is not None and phase is not None:
        context.step(phase, done)


_HOOKS = {
    "__iter__": _hooked_iter,
    "__enter__": _hooked_enter,
    "__exit__": _hooked_exit,
    "update": _hooked_update,
}


def _install(track: Any) -> None:
    global _installed
    if _installed:
        return
    if not _originals:
        _originals.update({name: vars(track)[name] for name in _PATCHED})
    try:
        for name in _PATCHED:
            setattr(track, name, _HOOKS[name])
    except BaseException:  # pragma: no cover - a class that refuses attributes
        _restore(track)
        raise
    _installed = True


def _restore(track: Any) -> None:
    global _installed
    for name, original in _originals.items():
        setattr(track, name, original)
    _installed = False


@contextlib.contextmanager
def nncf_progress(
    reporter: ProgressReporter,
    start: float,
    end: float,
    phases: Sequence[tuple[str, float]] = (),
    *,
    min_interval: float = MIN_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[NncfProgress]:
    """Report NNCF's ``track`` phases to ``reporter`` within ``start..end`` while active.

    ``start``/``end`` are fractions of ``reporter``'s own range (as in
    :meth:`~nbkit.infra.progress.ProgressReporter.report`); ``phases`` are the expected phases with
    relative weights (see the module docstring). Contexts may nest; the innermost one of the
    current thread receives NNCF's phases. Everything is restored when the context ends.
    """
    context = NncfProgress(reporter, start, end, phases, min_interval=min_interval, clock=clock)
    track = _track_class()
    with _lock:
        if track is not None:
            _install(track)
            context.hooked = True
        _active.append(context)
    try:
        yield context
    finally:
        with _lock:
            context.closed = True
            _active.remove(context)
            if track is not None and not any(c.hooked for c in _active):
                _restore(track)


__all__ = ["MIN_INTERVAL_S", "NncfProgress", "active", "nncf_progress"]
