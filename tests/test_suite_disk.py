"""The suite's own disk hygiene: it stops early on a disk too small, and shares the float export."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import conftest
import pytest

from nbkit.infra import disk


class FakeItem:
    def __init__(self, *markers: str) -> None:
        self.markers = set(markers)

    def get_closest_marker(self, name: str) -> Any:
        return object() if name in self.markers else None


def fake_config(basetemp: Path | None) -> Any:
    return SimpleNamespace(option=SimpleNamespace(basetemp=basetemp))


def test_a_small_disk_stops_a_run_with_the_bundled_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 2**30)
    with pytest.raises(pytest.exit.Exception) as caught:
        conftest.pytest_collection_modifyitems(fake_config(tmp_path), [FakeItem(), FakeItem("integration")])
    message = str(caught.value)
    assert "need about 3.5 GiB free in" in message and str(tmp_path) in message
    assert "1.0 GiB is free" in message and "-m 'not integration'" in message
    assert caught.value.returncode == 1


def test_a_small_disk_does_not_stop_the_fast_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 2**30)
    conftest.pytest_collection_modifyitems(fake_config(tmp_path), [FakeItem(), FakeItem("browser")])


def test_a_roomy_disk_runs_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 50 * 2**30)
    conftest.pytest_collection_modifyitems(fake_config(None), [FakeItem("integration")])


def test_linked_copy_shares_the_files_and_keeps_writes_apart(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "openvino-float" / "model-abc").mkdir(parents=True)
    weights = source / "openvino-float" / "model-abc" / "openvino_model.bin"
    weights.write_bytes(b"weights")
    (source / ".locks").mkdir()
    (source / ".tmp").mkdir()
    (source / "ledger.jsonl").write_text("{}\n")
    copy = conftest.linked_cache_copy(source, tmp_path / "copy")
    linked = copy / "openvino-float" / "model-abc" / "openvino_model.bin"
    assert os.path.samefile(linked, weights)  # no second copy on disk
    assert sorted(p.name for p in copy.iterdir()) == ["openvino-float"]  # no locks, leftovers, ledger
    (copy / "openvino-float" / "new-entry").mkdir()
    linked.unlink()  # how the cache removes things: the source keeps its file
    assert weights.read_bytes() == b"weights"
    assert not (source / "openvino-float" / "new-entry").exists()
