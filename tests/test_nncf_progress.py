"""NNCF's progress bars (``nncf.common.logging.track_progress.track``) as nbkit progress.

The unit tests drive ``track`` directly, no model: mapping onto the bar, weighted steps,
unexpected and skipped phases, throttling, restoring the class on exit and on an exception,
cancel, and a broken callback. The tiny-model test compresses with AWQ and scale estimation in
the child process and checks that NNCF's phases arrive in the parent through the relay; it
shares the float export with test_pipeline.py (one cache folder under pytest's session temp
folder). The integration test checks the steps inside the phases on the real SmolLM2-135M.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import itertools
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from markers import needs_smollm2
from nncf.common.logging.track_progress import track
from progress_recorder import Recorder
from rich.console import Console

from nbkit import Cache, CompressionConfig, OVModel, compress, export_openvino
from nbkit.compression.calibration import CalibrationProgress, CalibrationSet
from nbkit.compression.nncf_progress import active, nncf_progress
from nbkit.errors import Cancelled
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter

compress_module = importlib.import_module("nbkit.compression.weights")
nncf_module = importlib.import_module("nbkit.compression.nncf_compress")
ptq_module = importlib.import_module("nbkit.compression.ptq")

PATCHED = ("__iter__", "__enter__", "__exit__", "update")
ORIGINALS = {name: vars(track)[name] for name in PATCHED}


class Clock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(autouse=True)
def _track_is_restored() -> Iterator[None]:
    yield
    assert {name: vars(track)[name] for name in PATCHED} == ORIGINALS
    assert not active()


def quiet(items: object = None, **options: object) -> track:
    """An NNCF ``track`` whose bar goes to a string instead of the terminal."""
    console = Console(file=io.StringIO(), force_terminal=False)
    return track(items, console=console, **options)  # type: ignore[arg-type]


def run_phase(description: str, steps: int, **options: object) -> None:
    for _ in quiet(range(steps), description=description, **options):
        pass


def assert_monotonic(values: list[float]) -> None:
    assert all(a <= b for a, b in itertools.pairwise(values)), values


# -- mapping ----------------------------------------------------------------------------------


def test_steps_of_expected_phases_fill_their_share_of_the_range(recorder: Recorder) -> None:
    reporter = ProgressReporter(recorder)
    with nncf_progress(reporter, 0.2, 0.6, [("Alpha", 1), ("Beta", 3)], min_interval=0):
        run_phase("Applying Alpha", 4)
        run_phase("Applying Beta", 2)
    assert recorder.messages == [
        "Applying Alpha 0/4",
        "Applying Alpha 1/4",
        "Applying Alpha 2/4",
        "Applying Alpha 3/4",
        "Applying Alpha 4/4",
        "Applying Alpha 4/4",  # the end of the phase
        "Applying Beta 0/2",
        "Applying Beta 1/2",
        "Applying Beta 2/2",
        "Applying Beta 2/2",
    ]
    # Alpha has a quarter of 0.2..0.6, Beta the rest.
    assert recorder.fractions == pytest.approx([0.2, 0.225, 0.25, 0.275, 0.3, 0.3, 0.3, 0.45, 0.6, 0.6])


def test_fractions_are_of_the_reporters_own_range(recorder: Recorder) -> None:
    child = ProgressReporter(recorder).step(0.5, 1.0)
    with nncf_progress(child, 0.0, 0.5, [("Alpha", 1)], min_interval=0):
        run_phase("Alpha", 2)
    assert recorder.fractions == pytest.approx([0.5, 0.625, 0.75, 0.75])


def test_weighted_steps_move_by_their_weights(recorder: Recorder) -> None:
    # algorithm.py's form: track(all_weight_params, weights=all_weight_sizes), biggest first.
    with nncf_progress(ProgressReporter(recorder), 0.0, 1.0, min_interval=0):
        for _ in quiet(
            ["big", "small", "small"], description="Applying Weight Compression", weights=[6, 1, 1]
        ):
            pass
    assert recorder.messages[:4] == [
        "Applying Weight Compression 0/3",
        "Applying Weight Compression 1/3",
        "Applying Weight Compression 2/3",
        "Applying Weight Compression 3/3",
    ]
    # The only phase, unexpected: half of the range; the big layer is 6/8 of it.
    assert recorder.fractions[:4] == pytest.approx([0.0, 0.375, 0.4375, 0.5])


def test_update_form_with_a_total(recorder: Recorder) -> None:
    reporter = ProgressReporter(recorder)
    with (
        nncf_progress(reporter, 0.0, 1.0, [("Collecting", 1)], min_interval=0),
        quiet(total=4, description="Collecting outputs") as bar,
    ):
        bar.update(advance=1)
        bar.update(advance=2)
        bar.update(advance=0, completed=4)
    assert recorder.messages == [
        "Collecting outputs 0/4",
        "Collecting outputs 1/4",
        "Collecting outputs 3/4",
        "Collecting outputs 4/4",
        "Collecting outputs 4/4",
    ]
    assert recorder.fractions == pytest.approx([0.0, 0.25, 0.75, 1.0, 1.0])


def test_statistics_collection_counts_samples_and_unknown_lengths_count_up(recorder: Recorder) -> None:
    def generator() -> Iterator[int]:
        yield from range(3)

    with nncf_progress(ProgressReporter(recorder), 0.0, 1.0, min_interval=0):
        run_phase("Statistics collection", 2)
        for _ in quiet(generator(), description="Applying Something"):
            pass
    assert recorder.messages[0] == "Statistics collection, sample 0/2"
    assert recorder.messages[-3:] == ["Applying Something 2", "Applying Something 3", "Applying Something 3"]
    assert "Applying Something" in recorder.messages  # nothing counted yet: the name alone

    recorder.reports.clear()
    with nncf_progress(ProgressReporter(recorder), 0.0, 1.0, min_interval=0):
        run_phase("Applying Fast Bias correction", 0)  # a model without biases: nothing to do
    assert set(recorder.messages) == {"Applying Fast Bias correction"}


def test_unexpected_and_skipped_phases_still_fit_before_the_end(recorder: Recorder) -> None:
    reporter = ProgressReporter(recorder)
    phases = [("Statistics collection", 2), ("AWQ", 2), ("Scale Estimation", 4), ("Weight Compression", 2)]
    with nncf_progress(reporter, 0.1, 0.9, phases, min_interval=0) as progress:
        run_phase("Statistics collection", 3)  # 2/10 of 0.1..0.9 -> ends at 0.26
        run_phase("Something new", 2)  # unexpected: the average remaining weight (8/3) of 8 + 8/3
        # AWQ never runs (NNCF found nothing to scale): its share goes to the later phases.
        run_phase("Applying Scale Estimation", 2)
        run_phase("Applying Weight Compression", 2)
        run_phase("Yet another", 2)  # nothing expected is left: half of what remains (nothing)
    assert progress.phases_seen == [
        "Statistics collection",
        "Something new",
        "Applying Scale Estimation",
        "Applying Weight Compression",
        "Yet another",
    ]
    ends = {p.message: p.fraction for p in recorder.reports}
    assert ends["Statistics collection, sample 3/3"] == pytest.approx(0.26)
    assert ends["Something new 2/2"] == pytest.approx(0.26 + 0.64 * (8 / 3) / (8 / 3 + 8))
    assert ends["Applying Scale Estimation 2/2"] == pytest.approx(0.9 - (0.9 - 0.42) * 2 / 6)
    assert ends["Applying Weight Compression 2/2"] == pytest.approx(0.9)
    assert recorder.fractions[-1] == pytest.approx(0.9)
    assert_monotonic(recorder.fractions)


def test_without_expected_phases_each_takes_half_of_what_remains(recorder: Recorder) -> None:
    with nncf_progress(ProgressReporter(recorder), 0.0, 1.0, min_interval=0):
        for name in ("One", "Two", "Three"):
            run_phase(name, 1)
    ends = [p.fraction for p in recorder.reports if p.message.endswith("1/1")]
    assert ends == pytest.approx([0.5, 0.5, 0.75, 0.75, 0.875, 0.875])


def test_nncf_draws_its_own_bar_as_before(recorder: Recorder) -> None:
    drawn = io.StringIO()
    console = Console(file=drawn, force_terminal=True, width=100)
    with nncf_progress(ProgressReporter(recorder), 0.0, 1.0, min_interval=0):
        items = list(track(range(3), description="Applying Alpha", console=console))
    assert items == [0, 1, 2]
    assert "Applying Alpha" in drawn.getvalue() and "3/3" in drawn.getvalue()
    assert recorder.messages[-1] == "Applying Alpha 3/3"


def test_nested_contexts_report_to_the_innermost(recorder: Recorder) -> None:
    inner_recorder = Recorder()
    with nncf_progress(ProgressReporter(recorder), 0.0, 1.0, min_interval=0):
        with nncf_progress(ProgressReporter(inner_recorder), 0.0, 1.0, min_interval=0):
            run_phase("Inner", 1)
        assert vars(track)["__iter__"] is not ORIGINALS["__iter__"]  # still hooked for the outer one
        run_phase("Outer", 1)
    assert {m.split()[0] for m in inner_recorder.messages} == {"Inner"}
    assert {m.split()[0] for m in recorder.messages} == {"Outer"}


def test_a_track_in_another_thread_goes_to_that_threads_context() -> None:
    here, there = Recorder(), Recorder()
    entered, done = threading.Event(), threading.Event()

    def other() -> None:
        with nncf_progress(ProgressReporter(there), 0.0, 1.0, min_interval=0):
            entered.set()
            done.wait(10)
            run_phase("There", 1)

    thread = threading.Thread(target=other)
    with nncf_progress(ProgressReporter(here), 0.0, 1.0, min_interval=0):
        thread.start()
        assert entered.wait(10)
        run_phase("Here", 1)
        done.set()
        thread.join(10)
    assert {m.split()[0] for m in here.messages} == {"Here"}
    assert {m.split()[0] for m in there.messages} == {"There"}


# -- throttling -------------------------------------------------------------------------------


def test_reports_are_throttled_but_each_phase_start_and_end_is_reported(recorder: Recorder) -> None:
    clock = Clock()
    with nncf_progress(ProgressReporter(recorder), 0.0, 1.0, [("Fast", 1), ("Next", 1)], clock=clock):
        for _ in quiet(range(1000), description="Fast"):
            clock.now += 0.001  # 1000 steps in one second
        run_phase("Next", 5)  # same instant as the last report: only its start and end get through
    fast = [m for m in recorder.messages if m.startswith("Fast")]
    assert 10 <= len(fast) <= 13, fast
    assert fast[0] == "Fast 0/1000" and fast[-1] == "Fast 1000/1000"
    assert [m for m in recorder.messages if m.startswith("Next")] == ["Next 0/5", "Next 5/5"]
    assert_monotonic(recorder.fractions)


# -- restore, cancel, failures ----------------------------------------------------------------


def test_track_is_hooked_only_inside_the_context(recorder: Recorder) -> None:
    with nncf_progress(ProgressReporter(recorder), 0.0, 1.0) as progress:
        assert progress.hooked and active()
        assert all(vars(track)[name] is not ORIGINALS[name] for name in PATCHED)
    assert all(vars(track)[name] is ORIGINALS[name] for name in PATCHED)
    run_phase("After", 3)
    assert recorder.messages == []


def test_track_is_restored_after_an_exception(recorder: Recorder) -> None:
    bar = quiet(range(5), description="Failing")
    with (
        pytest.raises(ZeroDivisionError),
        nncf_progress(ProgressReporter(recorder), 0.0, 1.0, min_interval=0),
    ):
        for index in bar:
            if index == 2:
                _ = 1 / 0
    assert all(vars(track)[name] is ORIGINALS[name] for name in PATCHED)
    assert not bar.progress.live.is_started  # NNCF's bar was ended, not left refreshing
    assert recorder.messages == ["Failing 0/5", "Failing 1/5", "Failing 2/5"]  # no end of phase


def test_cancel_stops_nncf_at_the_next_step(recorder: Recorder) -> None:
    token = CancelToken()
    ran: list[int] = []
    bar = quiet(range(10), description="Applying AWQ")
    with (
        pytest.raises(Cancelled),
        nncf_progress(ProgressReporter(recorder, token), 0.0, 1.0, min_interval=60),
    ):
        for index in bar:
            ran.append(index)
            if index == 2:
                token.cancel()  # e.g. from a UI thread
    assert ran == [0, 1, 2]  # the next step raised, although no report was due
    assert recorder.messages == ["Applying AWQ 0/10"]
    assert not bar.progress.live.is_started


def test_a_cancel_before_a_phase_starts_stops_it(recorder: Recorder) -> None:
    token = CancelToken()
    token.cancel()
    bar = quiet(range(3), description="Applying GPTQ")
    with pytest.raises(Cancelled), nncf_progress(ProgressReporter(recorder, token), 0.0, 1.0), bar:
        pytest.fail("the phase must not start")
    assert not bar.progress.live.is_started


def test_a_failing_callback_never_breaks_nncf() -> None:
    calls: list[str] = []

    def broken(progress: Progress) -> None:
        calls.append(progress.message)
        raise OSError("the parent is gone")

    with nncf_progress(ProgressReporter(broken), 0.0, 1.0, min_interval=0):
        assert [index for index in quiet(range(3), description="Applying Alpha")] == [0, 1, 2]
    assert calls[0] == "Applying Alpha 0/3"


def test_calibration_reads_leave_the_bar_to_nncfs_phases(recorder: Recorder) -> None:
    reporter = ProgressReporter(recorder)
    reads = CalibrationProgress(reporter, 0.1, 0.8)
    reads(0, 4)  # no NNCF phases followed: the reads report themselves
    with nncf_progress(reporter, 0.1, 0.8):
        reads(1, 4)
    assert recorder.messages == ["Calibrating: pass 1, sample 1/4"]

    token = CancelToken()
    token.cancel()
    cancelled = CalibrationProgress(ProgressReporter(recorder, token), 0.1, 0.8)
    with pytest.raises(Cancelled), nncf_progress(ProgressReporter(recorder, token), 0.1, 0.8):
        cancelled(0, 4)


def test_expected_phases_of_compression_configs() -> None:
    def names(config: CompressionConfig, **options: bool) -> list[str]:
        return [name for name, _ in nncf_module.nncf_phases(config, **options)]

    awq_se = CompressionConfig(group_size=16, awq=True, scale_estimation=True)
    assert names(awq_se, collect_statistics=True) == [
        "Statistics collection",
        "AWQ",
        "Scale Estimation",
        "Applying Weight Compression",
    ]
    assert names(awq_se) == ["AWQ", "Scale Estimation", "Applying Weight Compression"]
    gptq = CompressionConfig(group_size=16, gptq=True, scale_estimation=True, ratio=0.8)
    assert names(gptq) == ["Mixed-Precision assignment", "GPTQ", "Applying Weight Compression"]
    assert names(CompressionConfig(mode="int8_asym"), collect_statistics=True) == [
        "Applying Weight Compression"
    ]
    assert [name for name, _ in ptq_module.NNCF_PHASES].count("Statistics collection") == 2


# -- the tiny model, through the child process ----------------------------------------------


def test_data_aware_compression_reports_nncfs_phases_through_the_worker(
    cache: Cache, float_model: OVModel
) -> None:
    recorder = Recorder()
    # A calibration set no other test uses, so the statistics are collected here.
    config = CompressionConfig(
        mode="int4_sym",
        group_size=16,
        awq=True,
        scale_estimation=True,
        calibration_samples=7,
        calibration_tokens=24,
    )
    model = compress(float_model, config, cache=cache, reporter=ProgressReporter(recorder))
    assert model.entry.metadata["calibration"]["statistics"] == "collected"
    nncf = [p for p in recorder.reports if re.search(r" \d+/\d+$", p.message)]
    phases = [p.message.rsplit(" ", 1)[0] for p in nncf]
    assert list(dict.fromkeys(phases)) == [
        "Statistics collection, sample",
        "Applying data-aware AWQ",
        "Applying Scale Estimation",
        "Applying Weight Compression",
    ]
    assert "Statistics collection, sample 0/7" in recorder.messages
    assert all(nncf_module.NNCF_START <= p.fraction <= nncf_module.NNCF_END for p in nncf)
    assert len({p.fraction for p in nncf}) >= 4  # the bar moves between the NNCF phases
    assert_monotonic(recorder.fractions)
    assert recorder.messages[-1] == "Compressed"


def test_a_cancel_during_an_nncf_phase_stops_the_compression_in_process(
    tmp_path: Path, float_model: OVModel
) -> None:
    # In this process (no worker to end): the hook raises Cancelled inside NNCF's loop, and NNCF
    # lets it through.
    config = compress_module.resolve_config(
        CompressionConfig(group_size=16, scale_estimation=True, calibration_samples=3, calibration_tokens=16),
        float_model.architecture,
    )
    token = CancelToken()
    recorder = Recorder()

    def cancel_in_scale_estimation(progress: Progress) -> None:
        recorder(progress)
        if progress.message.startswith("Applying Scale Estimation"):
            token.cancel()

    spec = compress_module.statistics_spec(
        float_model, CalibrationSet(3, 16), Cache(tmp_path / "statistics-cache")
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Cancelled):
        nncf_module.compress_folder(
            float_model.path,
            out,
            config,
            reporter=ProgressReporter(cancel_in_scale_estimation, token),
            statistics=spec,
        )
    assert recorder.messages[-1].startswith("Applying Scale Estimation 0/")
    assert "Applying Weight Compression" not in " ".join(recorder.messages)
    assert list(out.iterdir()) == []
    assert all(vars(track)[name] is ORIGINALS[name] for name in PATCHED)


# -- the real model ---------------------------------------------------------------------------


@pytest.mark.integration
@needs_smollm2
def test_real_scale_estimation_reports_steps_inside_the_phases(real_cache: Cache) -> None:
    cache = real_cache
    float_model = export_openvino("smollm2-135m-instruct", cache=cache)
    recorder = Recorder()
    config = CompressionConfig(
        mode="int4_sym", group_size=64, scale_estimation=True, calibration_samples=16, calibration_tokens=64
    )
    compress(float_model, config, cache=cache, reporter=ProgressReporter(recorder))
    steps = [re.search(r"^(.*) (\d+)/(\d+)$", m) for m in recorder.messages]
    inside = {m.group(1) for m in steps if m and 0 < int(m.group(2)) < int(m.group(3))}
    assert "Applying Scale Estimation" in inside, recorder.messages
    assert_monotonic(recorder.fractions)
