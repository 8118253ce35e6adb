"""Sweeps on a Dask cluster: the same records as here, faults, cancels, signals and bad input.

Most tests share one LocalCluster of 2 worker processes (``cluster``) and the tiny model the
suite builds. The test that kills a worker runs last in the module, on that same cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nbkit import Cache, OVModel
from nbkit.config import CompressionConfig, RuntimeConfig
from nbkit.errors import Cancelled, ConfigError
from nbkit.infra.cache import MANIFEST_NAME
from nbkit.infra.ledger import LEDGER_NAME, Ledger
from nbkit.infra.machine import MachineWork, measured_on
from nbkit.infra.progress import CancelToken, ProgressReporter
from nbkit.measure import quality as quality_module
from nbkit.measure.cluster import LocalClusterProcess, connect, device_resources, parse_local
from nbkit.measure.sweep import (
    MEASUREMENT_KIND,
    PLACE_COLUMN,
    MeasureSettings,
    SweepRecord,
    format_table,
    run_sweep,
)

pytest.importorskip("distributed")

SETTINGS = MeasureSettings(
    quality_tokens=64, quality_window=32, speed_new_tokens=4, speed_repeats=1, answers=True, answer_tokens=4
)
CONFIGS = (
    CompressionConfig(mode="int4_asym", group_size=16),
    CompressionConfig(mode="int4_sym", group_size=32),
    CompressionConfig(mode="int8_asym"),
)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalClusterProcess]:
    with LocalClusterProcess(2, dashboard_address=":0") as started:
        yield started


def _measurements(ledger: Ledger) -> list[dict[str, Any]]:
    return ledger.records(MEASUREMENT_KIND)


def _entries(root: Path) -> dict[str, float]:
    """Every finished cache entry under ``root`` (a folder with its manifest) and its manifest's mtime."""
    return {
        str(manifest.parent.relative_to(root)): manifest.stat().st_mtime
        for manifest in root.glob(f"*/*/{MANIFEST_NAME}")
    }


def _no_half_entries(root: Path, *, build_area_empty: bool = True) -> None:
    """No entry folder without its manifest; with ``build_area_empty``, nothing left in ``.tmp``
    (a SIGKILLed build leaves its folder there, marked with its dead process, for the next build
    to reclaim: never an entry)."""
    for kind in root.iterdir():
        if kind.is_dir() and not kind.name.startswith("."):
            for entry in kind.iterdir():
                assert (entry / MANIFEST_NAME).is_file(), f"{entry} has no manifest"
    if build_area_empty:
        leftovers = list((root / ".tmp").iterdir()) if (root / ".tmp").is_dir() else []
        assert leftovers == [], leftovers


# -- the machine-wide lock ------------------------------------------------------------------------


def test_speed_waits_for_shared_work_and_new_shared_work_waits_for_a_waiting_speed_run(
    tmp_path: Path,
) -> None:
    work = MachineWork(tmp_path)
    events: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def build() -> None:
        with work.shared():
            events.append("build starts")
            holding.set()
            release.wait(10)
            events.append("build ends")

    def speed() -> None:
        with work.exclusive():
            events.append("speed")

    def quality() -> None:
        with work.shared():
            events.append("quality")

    builder = threading.Thread(target=build)
    builder.start()
    assert holding.wait(10)
    timer = threading.Thread(target=speed)
    timer.start()
    time.sleep(0.3)  # the speed run waits at the turnstile, holding it
    late = threading.Thread(target=quality)
    late.start()
    time.sleep(0.3)
    assert events == ["build starts"]  # neither the speed run nor the later shared work got in
    release.set()
    for thread in (builder, timer, late):
        thread.join(10)
    assert events == ["build starts", "build ends", "speed", "quality"]


def test_a_cancel_stops_the_wait_for_the_machine(tmp_path: Path) -> None:
    token = CancelToken()
    holder = MachineWork(tmp_path)
    waiter = MachineWork(tmp_path, check=token.raise_if_cancelled)
    with holder.shared():
        threading.Timer(0.3, token.cancel).start()
        started = time.monotonic()
        with pytest.raises(Cancelled), waiter.exclusive():
            pass
    assert time.monotonic() - started < 10


def test_the_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from nbkit.infra.machine import MachineWork\n"
        f"w = MachineWork(Path({str(tmp_path)!r}))\n"
        "with w.exclusive():\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.kill()
        holder.wait(10)
        got = threading.Event()

        def take() -> None:
            with MachineWork(tmp_path).exclusive():
                got.set()

        threading.Thread(target=take, daemon=True).start()
        assert got.wait(10), "the lock of a SIGKILLed process was not released"
    finally:
        holder.kill()


def test_outside_a_dask_worker_a_record_names_only_the_host() -> None:
    place = measured_on()
    assert set(place) == {"host"} and place["host"]


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("local:0", "at least 1"),
        ("local:two", "whole number"),
        ("remote:2", "takes local:N"),
        ("local:4096", "more workers than this machine has CPUs"),
    ],
)
def test_a_bad_cluster_spec_is_one_sentence(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_local(spec)


def test_an_unreachable_or_malformed_scheduler_is_one_sentence() -> None:
    with pytest.raises(ConfigError, match="takes a scheduler address such as tcp://host:8786"):
        connect("localhost:8786")
    with pytest.raises(ConfigError, match=r"No Dask scheduler answered at tcp://127\.0\.0\.1:9"):
        connect("tcp://127.0.0.1:9", timeout=2)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--worker-cache", "/tmp/x"], "--worker-cache names the Dask workers' cache"),
        (["--cluster", "local:0"], "at least 1"),
        (["--cluster", "local:1", "--gguf-native"], "--gguf-native is measured in this process only"),
        (["--cluster", "local:1", "--device", "GPU"], "declares the GPU resource"),
    ],
)
def test_cli_refuses_bad_cluster_flags_before_any_work(
    argv: list[str], says: str, tmp_path: Path, tiny_hf_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbkit.cli.main import main

    code = main(["--cache-dir", str(tmp_path / "cache"), "-q", "sweep", str(tiny_hf_model), *argv])
    assert code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing exported, nothing written


def test_cli_takes_one_place_to_run(tiny_hf_model: Path) -> None:
    from nbkit.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["sweep", str(tiny_hf_model), "--cluster", "local:1", "--scheduler", "tcp://127.0.0.1:8786"])
    assert exited.value.code == 2


class _Workers:
    """A stand-in for a Client, as far as device_resources asks."""

    def __init__(self, resources: list[dict[str, float]]) -> None:
        self._resources = resources

    def scheduler_info(self, n_workers: int = 5) -> dict[str, Any]:
        return {"workers": {f"tcp://w{i}": {"resources": r} for i, r in enumerate(self._resources)}}


def test_speed_goes_to_workers_that_declare_the_device() -> None:
    assert device_resources(_Workers([{}, {}]), "CPU") is None  # plain `dask worker`s: any of them
    assert device_resources(_Workers([{"GPU": 1}, {}]), "GPU.0") == {"GPU": 1}
    assert device_resources(_Workers([{"CPU": 1}, {"GPU": 1}]), "CPU") == {"CPU": 1}
    with pytest.raises(ConfigError, match=r"declares the NPU resource.*--resources NPU=1"):
        device_resources(_Workers([{"CPU": 1}]), "NPU")
    with pytest.raises(ConfigError, match="has no worker yet"):
        device_resources(_Workers([]), "CPU")


def test_a_gpu_sweep_on_a_cpu_cluster_is_refused_before_any_work(
    cluster: LocalClusterProcess, tiny_hf_model: Path, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / LEDGER_NAME)
    settings = MeasureSettings(runtime=RuntimeConfig(device="GPU"))
    with pytest.raises(ConfigError, match="GPU"):
        run_sweep(
            tiny_hf_model,
            CONFIGS[:1],
            settings=settings,
            cache=Cache(tmp_path / "cache"),
            ledger=ledger,
            client=cluster.client,
            worker_cache=str(tmp_path / "workers"),
        )
    assert not ledger.path.exists() and not (tmp_path / "workers").exists()


# -- sweeps on the cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory, tiny_hf_model: Path) -> Any:
    root = tmp_path_factory.mktemp("serial")
    return run_sweep(
        tiny_hf_model,
        CONFIGS,
        settings=SETTINGS,
        cache=Cache(root / "cache"),
        ledger=Ledger(root / LEDGER_NAME),
    )


def test_a_cluster_sweep_gives_the_serial_records_and_each_worker_builds_what_it_needs_once(
    cluster: LocalClusterProcess, serial: Any, tiny_hf_model: Path, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / LEDGER_NAME)
    arrived: list[SweepRecord] = []
    workers = tmp_path / "worker-{worker}"
    result = run_sweep(
        tiny_hf_model,
        CONFIGS,
        settings=SETTINGS,
        cache=Cache(tmp_path / "client"),
        ledger=ledger,
        on_record=arrived.append,
        client=cluster.client,
        worker_cache=str(workers),
    )
    # The same records as the serial sweep, except the timings: same keys, sizes, quality, answers.
    here = {r.label: r for r in serial.all_records}
    there = {r.label: r for r in result.all_records}
    assert set(here) == set(there) == {"float-fp32", "int4_asym-g16-r1", "int4_sym-g32-r1", "int8_asym"}
    for label, record in there.items():
        assert record.key == here[label].key
        assert record.quality_key == here[label].quality_key
        assert record.size == here[label].size
        assert record.quality.mean_kl == pytest.approx(here[label].quality.mean_kl, abs=1e-9)
        assert record.quality.top1_agreement == here[label].quality.top1_agreement
        assert record.answers == here[label].answers
        assert record.speed.tokens_per_s > 0
        # Each names the worker and the device it was measured on.
        assert record.measured_on["worker"] in {"0", "1"} and record.runtime["device"] == "CPU"
        assert f"(worker {record.measured_on['worker']}), CPU" in record.place
    assert [r.label for r in result.records] == [
        "int4_asym-g16-r1",
        "int4_sym-g32-r1",
        "int8_asym",
    ]  # grid order
    # Streamed into the client's ledger as they finished: one complete line per record.
    assert arrived[0].label == "float-fp32" and len(arrived) == 4
    assert sorted(r["label"] for r in _measurements(ledger)) == sorted(there)
    assert result.retried == ()
    if len({r.place for r in result.all_records}) > 1:
        assert PLACE_COLUMN in format_table(result.all_records)
    assert "Size and quality do not depend on the machine" in format_table(result.all_records)

    # Separate caches: each worker that ran a task exported the float model once, and each
    # config was built once, in one worker's cache.
    caches = sorted(tmp_path.glob("worker-*"))
    assert caches and all(p.name in {"worker-0", "worker-1"} for p in caches)
    built = {cache: _entries(cache) for cache in caches}
    for cache, entries in built.items():
        assert sum(1 for e in entries if e.startswith("openvino-float/")) == 1, cache
        _no_half_entries(cache)
    compressed = [e for entries in built.values() for e in entries if e.startswith("openvino-compressed/")]
    assert len(compressed) == len(CONFIGS)

    # Again: every record is reused, nothing is built again, nothing new lands in the ledger.
    again = run_sweep(
        tiny_hf_model,
        CONFIGS,
        settings=SETTINGS,
        cache=Cache(tmp_path / "client"),
        ledger=ledger,
        client=cluster.client,
        worker_cache=str(workers),
    )
    assert [(r.key, r.created) for r in again.all_records] == [(r.key, r.created) for r in result.all_records]
    assert len(_measurements(ledger)) == 4
    after = {cache: _entries(cache) for cache in sorted(tmp_path.glob("worker-*"))}
    for cache, entries in built.items():  # nothing a worker had was built again
        assert {e: after[cache][e] for e in entries} == entries
    for entries in after.values():  # a task sent to the other worker this time builds there, once
        assert sum(1 for e in entries if e.startswith("openvino-float/")) == 1


def test_quality_measured_on_another_machine_is_reused_and_only_speed_is_measured(
    serial: Any, tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The serial sweep's ledger, as if another host had written it: its keys do not match here
    # (the machine is part of them), but its quality keys do.
    ledger = Ledger(tmp_path / LEDGER_NAME)
    for record in serial.all_records:
        data = record.to_dict()
        data["key"] = "elsewhere-" + data["key"]
        data["machine"] = {**data["machine"], "host": "elsewhere"}
        data["measured_on"] = {"host": "elsewhere"}
        ledger.append(data)

    def no_quality(*args: object, **kwargs: object) -> None:
        raise AssertionError("quality was measured again")

    monkeypatch.setattr(quality_module, "measure_quality", no_quality)
    result = run_sweep(
        tiny_hf_model, CONFIGS[2:], settings=SETTINGS, cache=Cache(tmp_path / "cache"), ledger=ledger
    )
    lent = {r.label: r for r in serial.all_records}
    for record in result.all_records:
        assert record.quality == lent[record.label].quality and record.size == lent[record.label].size
        assert record.measured_on["host"] != "elsewhere" and record.speed.tokens_per_s > 0
        assert record.created > lent[record.label].created  # a new record: its speed is this machine's
    assert len(_measurements(ledger)) == 4 + 2


def test_the_target_search_runs_on_the_cluster(
    cluster: LocalClusterProcess, tiny_hf_model: Path, tmp_path: Path
) -> None:
    result = run_sweep(
        tiny_hf_model,
        CONFIGS,
        settings=SETTINGS,
        cache=Cache(tmp_path / "client"),
        ledger=Ledger(tmp_path / LEDGER_NAME),
        client=cluster.client,
        worker_cache=str(tmp_path / "workers"),
        target="kl<=1",
    )
    assert result.pick is not None and result.pick.winner is not None
    assert result.records and all("worker" in r.measured_on for r in result.all_records)


def test_the_tuner_panel_sweeps_on_the_cluster(
    cluster: LocalClusterProcess, float_model: OVModel, cache: Cache, tiny_hf_model: Path, tmp_path: Path
) -> None:
    from nbkit import widgets as panels
    from nbkit.sources.models import resolve_source

    tuner = panels.QuantizationTuner(
        float_model, resolve_source(tiny_hf_model), cache=cache, ledger=Ledger(tmp_path / LEDGER_NAME)
    )
    try:
        tuner.client = cluster.client
        tuner.worker_cache = str(cache.root)  # the workers share this machine's filesystem
        counts: list[int] = []
        tuner.observe(lambda change: counts.append(len(change["new"])), "records")
        tuner.mode_buttons["int8_asym"].value = True
        assert tuner.sweep() is True
        assert tuner.wait(600) == "finished", tuner.view.status.value
        assert [c for c in counts if c][:2] == [1, 2]  # points arrive one by one
        assert all("worker" in r.measured_on for r in tuner.records)
        assert "Measured 2 config(s)" in tuner.view.status.value
        assert "do not depend on the machine" in tuner.table.value
    finally:
        tuner.close()


def test_cancel_in_the_tuner_panel_stops_its_sweep_on_the_cluster(
    cluster: LocalClusterProcess, float_model: OVModel, cache: Cache, tiny_hf_model: Path, tmp_path: Path
) -> None:
    from nbkit import widgets as panels
    from nbkit.sources.models import resolve_source

    tuner = panels.QuantizationTuner(
        float_model, resolve_source(tiny_hf_model), cache=cache, ledger=Ledger(tmp_path / LEDGER_NAME)
    )
    try:
        tuner.client = cluster.client
        tuner.worker_cache = str(tmp_path / "workers")  # builds nobody else made: the cancel finds work
        for mode in ("int4_asym", "int8_asym"):
            tuner.mode_buttons[mode].value = True
        assert tuner.sweep() is True
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(cluster.client.processing().values()):
            time.sleep(0.05)
        assert tuner.cancel() is True
        assert tuner.wait(120) == "cancelled"
        assert "cancelled" in tuner.view.status.value
        assert not any(cluster.client.processing().values())  # its tasks stopped with it
        _no_half_entries(tmp_path / "workers")
    finally:
        tuner.close()


def test_cancelling_stops_the_cluster_tasks_and_leaves_only_complete_records(
    cluster: LocalClusterProcess, tiny_hf_model: Path, tmp_path: Path
) -> None:
    token = CancelToken()
    ledger = Ledger(tmp_path / LEDGER_NAME)
    arrived: list[SweepRecord] = []  # cancelled once the first config comes home, the others under way
    configs = [
        CompressionConfig(mode="int4_asym", group_size=g, ratio=r) for g in (16, 32) for r in (1.0, 0.8)
    ]
    with pytest.raises(Cancelled):
        run_sweep(
            tiny_hf_model,
            configs,
            settings=SETTINGS,
            cache=Cache(tmp_path / "client"),
            ledger=ledger,
            reporter=ProgressReporter(cancel=token),
            on_record=lambda record: arrived.append(record) or (len(arrived) == 2 and token.cancel()),
            client=cluster.client,
            worker_cache=str(tmp_path / "workers"),
        )
    # The cluster stops working on the sweep: nothing processing, nothing waiting.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(cluster.client.processing().values()):
        time.sleep(0.2)
    assert not any(cluster.client.processing().values())
    records = _measurements(ledger)
    assert records[0]["label"] == "float-fp32" and 2 <= len(records) < 1 + len(configs)
    assert all(SweepRecord.from_dict(r).speed.tokens_per_s > 0 for r in records)
    _no_half_entries(tmp_path / "workers")
    assert len(_entries(tmp_path / "workers")) < 1 + len(configs)  # it did not build everything


# -- processes: a plain script, signals ------------------------------------------------------------


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _all_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def test_a_plain_script_without_a_main_guard_runs_a_cluster_sweep(
    tiny_hf_model: Path, tmp_path: Path
) -> None:
    script = tmp_path / "sweep_on_dask.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json
            from nbkit import Cache
            from nbkit.config import CompressionConfig
            from nbkit.measure.cluster import LocalClusterProcess
            from nbkit.measure.sweep import MeasureSettings, run_sweep

            cluster = LocalClusterProcess(1, dashboard_address=":0")
            result = run_sweep(
                {str(tiny_hf_model)!r},
                [CompressionConfig(mode="int8_asym")],
                settings=MeasureSettings(quality_tokens=32, quality_window=16, speed_new_tokens=4,
                                         speed_repeats=1, answers=False),
                cache=Cache({str(tmp_path / "cache")!r}),
                client=cluster.client,
                worker_cache={str(tmp_path / "cache")!r},
            )
            cluster.close()
            print(json.dumps([r.place for r in result.all_records]))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    places = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(places) == 2 and all("(worker 0), CPU" in p for p in places)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_signal_to_the_cli_ends_the_cluster_and_its_workers(
    signum: int, tiny_hf_model: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "NBKIT_MACHINE_LOCK_DIR": str(tmp_path / "locks")}
    command = [
        sys.executable,
        "-m",
        "nbkit.cli.main",
        "--cache-dir",
        str(tmp_path / "cache"),
        "-q",
        "sweep",
        str(tiny_hf_model),
        "--cluster",
        "local:2",
        "--dashboard-address",
        ":0",
        "--modes",
        "int4_asym,int4_sym",
        "--group-sizes",
        "16,32",
        "--ratios",
        "1,0.8",
        "--quality-tokens",
        "64",
        "--chart",
        str(tmp_path / "chart.html"),
    ]
    cli = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        assert cli.stderr is not None
        seen = [cli.stderr.readline() for _ in range(1)]
        while not seen[-1].startswith("Dask cluster tcp://") and seen[-1] and len(seen) < 50:
            seen.append(cli.stderr.readline())
        assert seen[-1].startswith("Dask cluster tcp://"), seen
        family = [psutil.Process(cli.pid), *_descendants(cli.pid)]
        assert len(family) >= 4  # the CLI, the cluster's host process, 2 workers (and their nannies)
        time.sleep(1.0)  # the tasks are running
        cli.send_signal(signum)
        cli.wait(90)
        if signum != signal.SIGKILL:
            assert cli.returncode in (128 + signum, 130), cli.stderr.read()[-2000:]
        alive = _all_gone(family[1:], timeout=60)
        assert alive == [], [p.pid for p in alive]
    finally:
        for process in [psutil.Process(cli.pid), *_descendants(cli.pid)] if cli.poll() is None else []:
            process.kill()
    ledger = Ledger(tmp_path / "cache" / LEDGER_NAME)
    assert all(SweepRecord.from_dict(r).speed.tokens_per_s > 0 for r in _measurements(ledger))
    if (tmp_path / "cache").is_dir():
        _no_half_entries(tmp_path / "cache", build_area_empty=signum != signal.SIGKILL)


# -- faults: runs last, it kills one of the shared cluster's workers -------------------------------


def test_a_worker_killed_mid_task_is_retried_and_the_ledger_has_one_record_per_config(
    cluster: LocalClusterProcess, tiny_hf_model: Path, tmp_path: Path
) -> None:
    client = cluster.client
    pids = client.run(os.getpid)  # {worker address: pid}
    configs = [
        CompressionConfig(mode="int4_asym", group_size=g, ratio=r) for g in (16, 32) for r in (1.0, 0.8)
    ]
    ledger = Ledger(tmp_path / LEDGER_NAME)
    outcome: dict[str, Any] = {}

    def sweep() -> None:
        try:
            outcome["result"] = run_sweep(
                tiny_hf_model,
                configs,
                settings=SETTINGS,
                cache=Cache(tmp_path / "client"),
                ledger=ledger,
                client=client,
                worker_cache=str(tmp_path / "workers"),
            )
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=sweep)
    runner.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and runner.is_alive():
        # Wait for a config task (the float model's comes first), then kill its worker mid-task.
        if len(_measurements(ledger)) >= 1:
            busy = [address for address, keys in client.processing().items() if keys]
            if busy:
                time.sleep(0.5)
                killed = busy[0]
                os.kill(pids[killed], signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "no task was seen running"
    runner.join(600)
    assert "error" not in outcome, str(outcome.get("error"))
    result = outcome["result"]
    labels = [r["label"] for r in _measurements(ledger)]
    assert sorted(labels) == sorted({"float-fp32", *(r.label for r in result.records)})  # one line each
    assert len(result.records) == len(configs)
    assert result.retried and all(retries >= 1 for _, retries in result.retried)
    _no_half_entries(tmp_path / "workers", build_area_empty=False)


# -- integration: the bundled model ----------------------------------------------------------------


@pytest.mark.integration
def test_the_bundled_model_sweeps_4_configs_on_2_workers(
    real_cache: Cache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbkit.cli.main import main

    code = main(
        [
            "--cache-dir",
            str(real_cache.root),
            "-q",
            "sweep",
            "smollm2-135m-instruct",
            "--cluster",
            "local:2",
            "--dashboard-address",
            ":0",
            "--modes",
            "int4_sym,int4_asym",
            "--group-sizes",
            "32,64",
            "--quality-tokens",
            "64",
            "--speed-tokens",
            "8",
            "--repeats",
            "1",
            "--no-answers",
            "--chart",
            str(tmp_path / "chart.html"),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "Dask cluster tcp://" in out.err and "2 worker(s)" in out.err
    records = [SweepRecord.from_dict(r) for r in _measurements(Ledger(cache=real_cache))]
    assert sorted(r.label for r in records) == sorted(
        ["float-fp32", "int4_sym-g32-r1", "int4_sym-g64-r1", "int4_asym-g32-r1", "int4_asym-g64-r1"]
    )
    assert all(r.measured_on.get("worker") in {"0", "1"} and r.speed.tokens_per_s > 0 for r in records)
    compressed = [r for r in records if r.label != "float-fp32"]
    assert all(0 < r.mean_kl < 1 and r.weights_mib < records[0].weights_mib for r in compressed)
    for record in records:
        assert record.label in out.out
    assert "do not depend on the machine" in out.out and "decodes fastest" in out.out
    _no_half_entries(real_cache.root)
