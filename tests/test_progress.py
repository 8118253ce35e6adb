"""Unit tests for :mod:`nbkit.infra.progress`."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from progress_recorder import Recorder

from nbkit.errors import Cancelled, NbkitError
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def assert_monotonic(values: list[float]) -> None:
    assert all(a <= b for a, b in itertools.pairwise(values)), values


# -- mapping ----------------------------------------------------------------------------------


def test_root_reporter_passes_fraction_and_message(recorder: Recorder) -> None:
    reporter = ProgressReporter(recorder)
    reporter.report(0.0, "start")
    reporter.report(0.25, "quarter")
    reporter.report(1.0, "done")
    assert recorder.fractions == [0.0, 0.25, 1.0]
    assert recorder.messages == ["start", "quarter", "done"]
    assert all(isinstance(p, Progress) for p in recorder.reports)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, 0.2), (0.25, 0.3), (0.5, 0.4), (1.0, 0.6)],
)
def test_step_maps_onto_parent_range(recorder: Recorder, fraction: float, expected: float) -> None:
    ProgressReporter(recorder).step(0.2, 0.6).report(fraction, "exporting")
    assert recorder.fractions == [pytest.approx(expected)]
    assert recorder.messages == ["exporting"]


def test_nested_steps_compose(recorder: Recorder) -> None:
    root = ProgressReporter(recorder)
    child = root.step(0.2, 0.6)  # 0.2 .. 0.6
    grandchild = child.step(0.5, 1.0)  # 0.4 .. 0.6
    great = grandchild.step(0.0, 0.5)  # 0.4 .. 0.5
    grandchild.report(0.0, "a")
    grandchild.report(0.5, "b")
    great.report(1.0, "c")
    grandchild.report(1.0, "d")
    assert recorder.fractions == pytest.approx([0.4, 0.5, 0.5, 0.6])


def test_reporter_with_explicit_range(recorder: Recorder) -> None:
    reporter = ProgressReporter(recorder, start=0.5, end=0.7)
    reporter.report(0.5, "half")
    reporter.step(0.5, 1.0).report(0.5, "three quarters")
    assert recorder.fractions == pytest.approx([0.6, 0.65])


def test_a_whole_nested_operation_is_one_monotonic_bar(recorder: Recorder) -> None:
    """download 0-10 %, export 10-60 % (two sub-steps), compress 60-100 % (layer by layer)."""
    root = ProgressReporter(recorder)
    download = root.step(0.0, 0.1)
    for i in range(5):
        download.report(i / 4, "downloading")
    export = root.step(0.1, 0.6)
    trace, save = export.step(0.0, 0.7), export.step(0.7, 1.0)
    for i in range(8):
        trace.report(i / 7, "tracing")
    for i in range(3):
        save.report(i / 2, "saving")
    compress = root.step(0.6, 1.0)
    layers = 6
    for layer in range(layers):
        per_layer = compress.step(layer / layers, (layer + 1) / layers)
        for j in range(4):
            per_layer.report(j / 3, f"layer {layer}")

    fractions = recorder.fractions
    assert len(fractions) == 5 + 8 + 3 + layers * 4
    assert_monotonic(fractions)
    assert fractions[0] == 0.0
    assert fractions[-1] == pytest.approx(1.0)
    assert all(0.0 <= f <= 1.0 + 1e-12 for f in fractions)
    # Each stage stays inside its own slice of the bar.
    assert max(fractions[:5]) == pytest.approx(0.1)
    assert min(fractions[5:16]) == pytest.approx(0.1)
    assert max(fractions[5:16]) == pytest.approx(0.6)
    assert min(fractions[16:]) == pytest.approx(0.6)


def test_siblings_do_not_affect_each_other(recorder: Recorder) -> None:
    root = ProgressReporter(recorder)
    first, second = root.step(0.0, 0.5), root.step(0.5, 1.0)
    second.report(0.5, "second")
    first.report(0.5, "first")
    assert recorder.fractions == pytest.approx([0.75, 0.25])


# -- clamping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "expected"), [(-1.0, 0.0), (-1e-9, 0.0), (1.0 + 1e-9, 1.0), (7.5, 1.0)])
def test_root_report_clamps_to_unit_interval(recorder: Recorder, fraction: float, expected: float) -> None:
    ProgressReporter(recorder).report(fraction, "x")
    assert recorder.fractions == [expected]


@pytest.mark.parametrize(("fraction", "expected"), [(-3.0, 0.2), (3.0, 0.6)])
def test_child_report_clamps_to_its_own_range(recorder: Recorder, fraction: float, expected: float) -> None:
    ProgressReporter(recorder).step(0.2, 0.6).report(fraction, "x")
    assert recorder.fractions == [pytest.approx(expected)]


def test_overshooting_child_cannot_move_the_bar_backwards_or_past_its_end(recorder: Recorder) -> None:
    root = ProgressReporter(recorder)
    first = root.step(0.0, 0.5)
    first.report(0.5, "a")
    first.report(1.7, "b")  # a buggy estimate overshoots
    root.step(0.5, 1.0).report(-0.2, "c")  # and the next one undershoots
    assert recorder.fractions == pytest.approx([0.25, 0.5, 0.5])


# -- without a callback -----------------------------------------------------------------------


def test_reporter_without_callback_is_silent_but_still_checks_cancel() -> None:
    reporter = ProgressReporter()
    reporter.report(0.5, "nobody listens")
    reporter.step(0.1, 0.2).report(1.0, "still fine")
    reporter.cancel_token.cancel()
    with pytest.raises(Cancelled):
        reporter.report(0.6, "too late")


def test_progress_is_frozen() -> None:
    progress = Progress(0.5, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        progress.fraction = 0.6  # type: ignore[misc]
    assert progress == Progress(0.5, "x")


# -- cancellation -----------------------------------------------------------------------------


def test_token_starts_uncancelled_and_cancel_is_idempotent() -> None:
    token = CancelToken()
    assert token.cancelled is False
    token.raise_if_cancelled()  # does not raise
    token.cancel()
    token.cancel()
    assert token.cancelled is True
    with pytest.raises(Cancelled) as info:
        token.raise_if_cancelled()
    assert isinstance(info.value, NbkitError)
    assert "cancelled" in str(info.value)


def test_report_raises_after_cancel_and_stops_reporting(recorder: Recorder) -> None:
    token = CancelToken()
    reporter = ProgressReporter(recorder, token)
    reporter.report(0.1, "working")
    reporter.check()
    token.cancel()
    with pytest.raises(Cancelled):
        reporter.report(0.2, "more work")
    with pytest.raises(Cancelled):
        reporter.check()
    assert recorder.fractions == [0.1]


def test_children_share_the_parent_token(recorder: Recorder) -> None:
    token = CancelToken()
    root = ProgressReporter(recorder, token)
    grandchild = root.step(0.0, 0.5).step(0.5, 1.0)
    assert grandchild.cancel_token is token
    grandchild.report(0.0, "ok")
    token.cancel()
    with pytest.raises(Cancelled):
        grandchild.report(0.5, "cancelled")
    with pytest.raises(Cancelled):
        grandchild.check()
    assert len(recorder.reports) == 1


def test_separate_reporters_have_separate_tokens() -> None:
    a, b = ProgressReporter(), ProgressReporter()
    a.cancel_token.cancel()
    b.report(0.5, "unaffected")
    assert not b.cancel_token.cancelled


def test_cancel_from_another_thread_stops_a_worker(recorder: Recorder) -> None:
    token = CancelToken()
    reporter = ProgressReporter(recorder, token)
    running = threading.Event()
    outcome: list[BaseException] = []

    def worker() -> None:
        try:
            step = 0
            while True:  # a long loop that polls the token between steps
                reporter.report((step % 1000) / 1000, "busy")
                step += 1
                running.set()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert running.wait(5)
    threading.Thread(target=token.cancel).start()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], Cancelled)
    assert token.cancelled
    assert len(recorder.reports) >= 1


def test_many_threads_may_cancel_at_once() -> None:
    token = CancelToken()
    workers = 16
    barrier = threading.Barrier(workers)

    def cancel() -> bool:
        barrier.wait(5)
        token.cancel()
        return token.cancelled

    with ThreadPoolExecutor(workers) as pool:
        seen = list(pool.map(lambda _: cancel(), range(workers)))
    assert seen == [True] * workers
    with pytest.raises(Cancelled):
        token.raise_if_cancelled()


def test_waiting_thread_sees_cancel_from_another_thread() -> None:
    token = CancelToken()
    observed = threading.Event()

    def watcher() -> None:
        while not token.cancelled:
            threading.Event().wait(0.001)
        observed.set()

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    assert not observed.wait(0.05)  # not cancelled yet
    token.cancel()
    assert observed.wait(5)
    thread.join(5)


def test_progress_bar_follows_reports_and_closes() -> None:
    import io

    from nbkit import ProgressBar

    sink = io.StringIO()
    with ProgressBar("Export", file=sink) as bar:
        bar(Progress(0.5, "half way"))
        bar(Progress(2.0, "past the end"))  # clamped, never above 100 %
    text = sink.getvalue()
    assert "Export:  50%" in text and "half way" in text
    assert "100%" in text and "101%" not in text and "200%" not in text
    assert text.endswith("\n"), "leave=True keeps the finished bar on its own line"


def test_progress_bar_of_a_cache_hit_ends_full_but_a_failure_does_not() -> None:
    import io

    from nbkit import ProgressBar

    hit = io.StringIO()
    with ProgressBar("Export", file=hit):
        pass  # a cache hit: the work reports nothing
    assert "100%" in hit.getvalue() and "done" in hit.getvalue()

    failed = io.StringIO()
    with pytest.raises(RuntimeError), ProgressBar("Export", file=failed) as bar:
        bar(Progress(0.3, "working"))
        raise RuntimeError("boom")
    assert "100%" not in failed.getvalue()
