"""A full disk: builds that cannot fit are refused first, builds that run out are named.

Either way the partial build is removed and what the cache already held is untouched.
``/dev/full`` gives a real ``ENOSPC`` from the kernel; the free-space figure is faked by
patching :func:`nbkit.infra.disk.free_bytes`, the one place nbkit reads it.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import worker_targets
from safetensors.numpy import load_file

from nbkit import Cache, CompressionConfig, OVModel, compress, export_openvino
from nbkit.cli.main import main
from nbkit.errors import CacheError, DiskSpaceError, WorkerError
from nbkit.infra import disk as disk_module
from nbkit.infra.cache import CACHE_ENV_VAR, MANIFEST_NAME
from nbkit.infra.disk import (
    DISK_MARGIN_BYTES,
    FREE_SPACE_ADVICE,
    float32_weights_bytes,
    format_bytes,
    free_bytes,
    is_disk_full,
    require_free_space,
)
from nbkit.infra.ledger import LEDGER_NAME, Ledger
from nbkit.infra.progress import ProgressReporter
from nbkit.infra.worker import run_isolated
from nbkit.measure.sweep import MeasureSettings, run_sweep
from nbkit.sources.gguf_convert import convert_gguf_to_hf

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")

RUST_MESSAGE = "SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture
def little_free_space(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pretend the disk has 10 MiB free (below the margin every build keeps)."""
    free = 10 * 2**20
    monkeypatch.setattr(disk_module, "free_bytes", lambda folder: free)
    return free


def existing_entry(cache: Cache) -> Path:
    """An entry already in the cache, which no failed build may touch (built without a size check)."""

    def build(folder: Path) -> dict[str, str]:
        (folder / "data.txt").write_text("kept")
        return {}

    return cache.get_or_build("demo", "k" * 64, "kept", build).path


def assert_untouched(cache: Cache, kept: Path) -> None:
    assert (kept / "data.txt").read_text() == "kept"
    assert cache.read_entry(kept) is not None
    assert [e.path for e in cache.entries()] == [kept]
    assert not any((cache.root / ".tmp").iterdir()), "a partial build was left behind"


# -- recognising a full disk --------------------------------------------------------------------


def test_disk_full_is_recognised_in_every_form_it_arrives_in() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(WorkerError(f"{RUST_MESSAGE} (an unexpected error in nbkit's worker)"))
    assert is_disk_full(
        RuntimeError("Exception from src/core.cpp:12:\nwrite failed: No space left on device")
    )
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("saving the model failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)


def test_other_errors_are_not_taken_for_a_full_disk() -> None:
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("group_size 128 does not divide 576"))
    assert not is_disk_full(RuntimeError("tensor 28 has no space for padding"))


def test_free_bytes_looks_at_the_nearest_existing_folder(tmp_path: Path) -> None:
    assert free_bytes(tmp_path / "not" / "yet" / "made") == free_bytes(tmp_path) > 0


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536 * 2**20) == "1.5 GiB"
    assert format_bytes(81 * 2**20) == "81.0 MiB"


def test_the_advice_names_the_cache_variable() -> None:
    assert CACHE_ENV_VAR in FREE_SPACE_ADVICE


def test_float32_size_of_a_folder_is_read_from_the_headers(tiny_hf_model: Path) -> None:
    weights = load_file(str(tiny_hf_model / "model.safetensors"))
    assert float32_weights_bytes(tiny_hf_model) == 4 * sum(array.size for array in weights.values())


def test_float32_size_of_pytorch_bin_files_is_doubled(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 1000)
    assert float32_weights_bytes(tmp_path) == 2000


# -- the cache ----------------------------------------------------------------------------------


def test_require_free_space_names_need_free_and_advice(tmp_path: Path, little_free_space: int) -> None:
    with pytest.raises(DiskSpaceError) as caught:
        require_free_space(tmp_path, 50 * 2**20, "demo-model")
    message = str(caught.value)
    assert "demo-model: it needs about 306.0 MiB" in message and "10.0 MiB free" in message
    assert str(tmp_path) in message and CACHE_ENV_VAR in message
    assert isinstance(caught.value, CacheError)


def test_enough_space_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_module, "free_bytes", lambda folder: DISK_MARGIN_BYTES + 100)
    require_free_space(tmp_path, 100, "fits exactly")
    with pytest.raises(DiskSpaceError):
        require_free_space(tmp_path, 101, "one byte too many")


def test_a_build_that_cannot_fit_never_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path / "cache")
    kept = existing_entry(cache)
    monkeypatch.setattr(disk_module, "free_bytes", lambda folder: 10 * 2**20)
    started: list[Path] = []
    with pytest.raises(DiskSpaceError, match="Not enough disk space to build big"):
        cache.get_or_build("demo", "b" * 64, "big", started.append, needs_bytes=2**30)
    assert started == []
    assert_untouched(cache, kept)


def test_the_estimate_is_only_computed_for_a_missing_entry(tmp_path: Path, little_free_space: int) -> None:
    cache = Cache(tmp_path / "cache")
    kept = existing_entry(cache)

    def estimate() -> int:
        raise AssertionError("a cache hit must not estimate anything")

    again = cache.get_or_build("demo", "k" * 64, "kept", lambda folder: {}, needs_bytes=estimate)
    assert again.path == kept


@needs_dev_full
def test_running_out_of_space_removes_the_partial_build(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    kept = existing_entry(cache)

    def build(folder: Path) -> dict[str, str]:
        (folder / "partial.bin").write_bytes(b"\0" * 4096)
        with open("/dev/full", "wb") as handle:  # the kernel answers ENOSPC
            handle.write(b"\0" * 4096)
            handle.flush()
        return {}

    with pytest.raises(DiskSpaceError) as caught:
        cache.get_or_build("demo", "f" * 64, "filler", build)
    message = str(caught.value)
    assert "ran out of space while building filler" in message
    assert str(cache.root) in message and "cache is unchanged" in message and CACHE_ENV_VAR in message
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.ENOSPC
    assert_untouched(cache, kept)


@needs_dev_full
def test_running_out_of_space_in_the_worker_is_named_too(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    kept = existing_entry(cache)

    def build(folder: Path) -> dict[str, str]:
        run_isolated(worker_targets.write_to_full_disk, str(folder), reporter=ProgressReporter())
        return {}

    with pytest.raises(DiskSpaceError, match="ran out of space while building child-build") as caught:
        cache.get_or_build("demo", "c" * 64, "child-build", build)
    assert isinstance(caught.value.__cause__, WorkerError)  # the child's OSError arrives as text
    assert_untouched(cache, kept)


def test_other_build_errors_pass_through_unchanged(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")

    def build(folder: Path) -> dict[str, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        cache.get_or_build("demo", "p" * 64, "denied", build)


# -- the builds that check before they start -------------------------------------------------


def test_export_is_refused_before_any_work(
    tmp_path: Path, tiny_hf_model: Path, little_free_space: int
) -> None:
    cache = Cache(tmp_path / "cache")
    kept = existing_entry(cache)
    with pytest.raises(DiskSpaceError, match="Not enough disk space to build tiny-llama"):
        export_openvino(tiny_hf_model, cache=cache)
    assert_untouched(cache, kept)


def test_compression_is_refused_and_the_float_model_stays(
    cache: Cache, float_model: OVModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(e.path for e in cache.entries())
    bin_before = (float_model.path / "openvino_model.bin").read_bytes()
    monkeypatch.setattr(disk_module, "free_bytes", lambda folder: 10 * 2**20)
    config = CompressionConfig(mode="int4_sym", group_size=16, ratio=0.5)  # a config no test builds
    with pytest.raises(DiskSpaceError, match="Not enough disk space"):
        compress(float_model, config, cache=cache)
    assert sorted(e.path for e in cache.entries()) == before
    assert (float_model.path / "openvino_model.bin").read_bytes() == bin_before
    assert json.loads((float_model.path / MANIFEST_NAME).read_text())["key"] == float_model.entry.key


def test_gguf_conversion_checks_before_dequantizing(
    tmp_path: Path, tiny_gguf: Path, little_free_space: int
) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    with pytest.raises(DiskSpaceError, match=r"float32 weights of tiny\.gguf"):
        convert_gguf_to_hf(tiny_gguf, out)
    assert list(out.iterdir()) == []


def test_cli_prints_one_line_and_fails(
    tmp_path: Path, tiny_hf_model: Path, little_free_space: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--cache-dir", str(tmp_path / "cache"), "export", str(tiny_hf_model)])
    _, err = capsys.readouterr()
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Not enough disk space" in lines[0] and "Traceback" not in err


def test_cli_quickstart_stops_before_the_answer(
    tmp_path: Path, tiny_hf_model: Path, little_free_space: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--cache-dir", str(tmp_path / "cache"), "-q", "quickstart", str(tiny_hf_model)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""  # no dangling "Q: ... A:" above the error
    assert err.startswith("nbkit: error: Not enough disk space") and err.count("\n") == 1


def test_a_sweep_that_runs_out_of_space_keeps_what_it_finished(
    tmp_path: Path, tiny_hf_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path / "cache")
    ledger = Ledger(tmp_path / LEDGER_NAME)
    settings = MeasureSettings(quality_tokens=32, quality_window=16, speed_new_tokens=2, speed_repeats=1)
    configs = [CompressionConfig("int8_asym"), CompressionConfig("int4_sym", group_size=32)]
    export_openvino(tiny_hf_model, cache=cache)  # the float model fits; the disk fills after it
    checks: list[Path] = []

    def room_for_one_compression(folder: Path) -> int:
        checks.append(folder)
        return 50 * 2**30 if len(checks) == 1 else 10 * 2**20

    monkeypatch.setattr(disk_module, "free_bytes", room_for_one_compression)
    finished = []
    with pytest.raises(DiskSpaceError, match="int4_sym-g32"):
        run_sweep(
            tiny_hf_model, configs, settings=settings, cache=cache, ledger=ledger, on_record=finished.append
        )
    assert [r.label for r in finished] == ["float-fp32", "int8_asym"]
    assert [e.metadata["label"] for e in cache.entries("openvino-compressed")] == ["int8_asym"]
    assert not any((cache.root / ".tmp").iterdir())

    monkeypatch.undo()  # space freed: the rerun measures only what is missing
    result = run_sweep(tiny_hf_model, configs, settings=settings, cache=cache, ledger=ledger)
    assert [r.label for r in result.records] == ["int8_asym", "int4_sym-g32-r1"]
    assert result.records[0].key == finished[1].key
    assert len(ledger.records()) == 3  # float, int8 from the first run; int4 from the second
