"""CompressionForm on the tiny model: only valid group sizes, Run, Cancel, and failures shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbkit import Cache, OVModel, export_openvino
from nbkit import widgets as panels

SHARED_CACHE = "nbkit-shared-tiny-cache"
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return Cache(tmp_path_factory.getbasetemp() / SHARED_CACHE)


@pytest.fixture(scope="module")
def float_model(shared_cache: Cache, tiny_hf_model: Path) -> OVModel:
    return export_openvino(tiny_hf_model, cache=shared_cache)


def test_without_a_model_run_is_refused_with_the_reason() -> None:
    form = panels.CompressionForm()
    assert form.config is None and form.run_button.disabled
    assert form.run() is False and "Prepare a model" in form.view.notice.value
    form.close()


def test_only_group_sizes_valid_for_the_model_are_offered(float_model: OVModel, shared_cache: Cache) -> None:
    form = panels.CompressionForm(float_model, cache=shared_cache)
    assert [value for _, value in form.group_size.options] == [16, 32, -1]  # 64 and 128 do not divide 96
    assert form.group_size.value == 32  # the largest valid one
    assert "64, 96" in form.group_size.tooltip
    assert "group_size=32" in form.code.value and "int4_sym-g32-r1" in form.code.value
    with pytest.raises(Exception, match="Invalid selection"):
        form.group_size.value = 64
    form.close()


def test_int8_disables_group_size_and_ratio_with_the_reason(
    float_model: OVModel, shared_cache: Cache
) -> None:
    form = panels.CompressionForm(float_model, cache=shared_cache)
    form.mode.value = "int8_asym"
    assert form.group_size.disabled and form.ratio.disabled and form.backup.disabled
    assert "per-channel" in form.ratio.tooltip
    assert form.config is not None and form.config.group_size is None and form.config.label == "int8_asym"
    form.mode.value = "int4_asym"
    assert not form.group_size.disabled and form.config.group_size == 32  # type: ignore[union-attr]
    form.close()


def test_run_compresses_and_offers_the_result_for_chat(float_model: OVModel, shared_cache: Cache) -> None:
    form = panels.CompressionForm(float_model, cache=shared_cache)
    done: list[OVModel] = []
    form.on_compressed(done.append)
    assert form.run() is True
    assert form.run() is False and "A compression is running" in form.view.notice.value
    assert form.wait(TIMEOUT_S) == "finished"
    model = form.compressed_model
    assert model is not None and model.label == "int4_sym-g32-r1" and done == [model]
    assert model.weight_precisions["int4"] > 0.5
    assert (
        "int4_sym-g32-r1 ready" in form.view.status.value and "smaller than float" in form.view.status.value
    )
    assert "int4_sym-g32-r1" in form.results_table.value
    assert form.results.value == model
    form.close()


def test_picking_an_earlier_result_changes_the_chat_model(float_model: OVModel, shared_cache: Cache) -> None:
    form = panels.CompressionForm(float_model, cache=shared_cache)
    form.mode.value = "int8_asym"
    form.run()
    assert form.wait(TIMEOUT_S) == "finished"
    labels = [label for label, _ in form.results.options]
    assert "int8_asym" in labels and len(labels) >= 2
    other = next(m for label, m in form.results.options if label != "int8_asym")
    form.results.value = other
    assert form.compressed_model == other
    form.close()


def test_cancelled_run_ends_cancelled_and_caches_nothing(float_model: OVModel, shared_cache: Cache) -> None:
    form = panels.CompressionForm(float_model, cache=shared_cache)
    form.mode.value = "nf4"
    form.group_size.value = 16
    form.ratio.value = 0.65  # a config no other test builds
    label = form.config.label  # type: ignore[union-attr]
    form.run()
    form.cancel()
    assert form.wait(TIMEOUT_S) == "cancelled"
    assert not [e for e in shared_cache.entries("openvino-compressed") if e.metadata.get("label") == label]
    assert "nothing was written to the cache" in form.view.status.value
    assert not form.run_button.disabled  # ready to run again
    form.close()


def test_error_in_the_worker_is_shown(
    float_model: OVModel, shared_cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise MemoryError("out of memory while compressing")

    monkeypatch.setattr(panels.compression_form, "compress", broken)
    form = panels.CompressionForm(float_model, cache=shared_cache)
    form.run()
    assert form.wait(TIMEOUT_S) == "error"
    assert form.task.error.startswith("MemoryError: out of memory while compressing")
    assert "out of memory" in form.view.status.value
    assert "Traceback" in "".join(o.get("text", "") for o in form.log_output.outputs)
    form.close()
