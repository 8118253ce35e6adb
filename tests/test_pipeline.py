"""Export and NNCF compression of the tiny random Llama: the cache, the checks, cancel and recovery.

Every build goes to one cache folder under pytest's session temp folder (shared with
test_chat.py and test_cli.py, which reuse the float export and the INT4 g32 model), so the
tiny model is exported once per run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest

from nbkit import (
    Cache,
    CompressionConfig,
    ExportConfig,
    OVModel,
    compress,
    export_openvino,
    read_architecture,
)
from nbkit.errors import CacheError, Cancelled, ConfigError
from nbkit.infra.cache import MANIFEST_NAME
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter

# The modules, not the package attributes: ``nbkit.compression.weights`` is the function of that name.
compress_module = importlib.import_module("nbkit.compression.weights")
export_module = importlib.import_module("nbkit.engines.openvino.export")
sources_module = importlib.import_module("nbkit.sources.models")

SHARED_CACHE = "nbkit-shared-tiny-cache"
INT4_G32 = CompressionConfig(mode="int4_sym", group_size=32, ratio=1.0)


class Exported(NamedTuple):
    model: OVModel
    bin_sha256: str  # openvino_model.bin right after the export, before any compression


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(cache: Cache) -> dict[str, Any]:
    """Every path under the cache root, with each manifest's creation time."""
    return {
        str(path.relative_to(cache.root)): (
            json.loads(path.read_text())["created"] if path.name == MANIFEST_NAME else path.is_dir()
        )
        for path in sorted(cache.root.rglob("*"))
    }


def _compressed_folders(cache: Cache, label: str) -> list[Path]:
    kind_dir = cache.root / "openvino-compressed"
    if not kind_dir.is_dir():
        return []
    return [p for p in kind_dir.iterdir() if f"-{label}-" in p.name]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return Cache(tmp_path_factory.getbasetemp() / SHARED_CACHE)


@pytest.fixture(scope="module")
def exported(cache: Cache, tiny_hf_model: Path) -> Exported:
    model = export_openvino(tiny_hf_model, cache=cache)
    return Exported(model, _sha256(model.path / "openvino_model.bin"))


@pytest.fixture(scope="module")
def float_model(exported: Exported) -> OVModel:
    return exported.model


@pytest.fixture(scope="module")
def int4_model(cache: Cache, float_model: OVModel) -> OVModel:
    return compress(float_model, INT4_G32, cache=cache)


# -- export ------------------------------------------------------------------------------------


def test_export_writes_a_complete_openvino_folder(float_model: OVModel, tiny_hf_model: Path) -> None:
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  # registers the tokenizer ops with OpenVINO

    folder = float_model.path
    for name in (
        "openvino_model.xml",
        "openvino_model.bin",
        "openvino_tokenizer.xml",
        "openvino_detokenizer.xml",
        "config.json",
        MANIFEST_NAME,
    ):
        assert (folder / name).is_file(), name
    assert float_model.entry.kind == "openvino-float"
    assert not float_model.is_compressed
    assert float_model.label == "float-fp32"
    assert float_model.source_name == tiny_hf_model.name
    assert float_model.model_xml == folder / "openvino_model.xml"
    assert float_model.weights_bytes == (folder / "openvino_model.bin").stat().st_size > 100_000
    # The chat template: as a file next to the IR and embedded in the tokenizer IR for openvino-genai.
    template = (tiny_hf_model / "chat_template.jinja").read_text()
    assert (folder / "chat_template.jinja").read_text() == template
    tokenizer_ir = ov.Core().read_model(str(folder / "openvino_tokenizer.xml"))
    assert "<|im_start|>" in tokenizer_ir.get_rt_info("chat_template").astype(str)


def test_architecture_facts_round_trip_through_the_manifest(
    float_model: OVModel, tiny_hf_model: Path
) -> None:
    stored = json.loads((float_model.path / MANIFEST_NAME).read_text())["metadata"]["architecture"]
    assert stored["hidden_size"] == 64
    facts = float_model.architecture
    assert facts == read_architecture(tiny_hf_model)
    assert facts.num_layers == 2 and facts.hidden_size == 64 and facts.context_length == 256
    assert facts.input_channel_sizes() == (64, 96)
    assert facts.valid_group_sizes() == (16, 32)


def test_second_export_is_a_cache_hit(
    cache: Cache, float_model: OVModel, tiny_hf_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = json.loads((float_model.path / MANIFEST_NAME).read_text())["created"]

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("the exporter ran again although the export is cached")

    monkeypatch.setattr(export_module, "run_isolated", no_rebuild)
    seen: list[Progress] = []
    again = export_openvino(tiny_hf_model, ExportConfig(), cache=cache, progress=seen.append)
    assert again.path == float_model.path
    assert again.entry.key == float_model.entry.key
    assert json.loads((again.path / MANIFEST_NAME).read_text())["created"] == created
    assert seen and seen[-1].fraction == 1.0


def test_a_moved_cache_is_still_a_cache(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys hold no path into the cache: a cache copied to another disk keeps every entry."""
    first = Cache(tmp_path / "first")
    built = compress(export_openvino(tiny_gguf, cache=first), CompressionConfig("int8_asym"), cache=first)
    moved = Cache(shutil.copytree(first.root, tmp_path / "moved"))

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("an entry was rebuilt after the cache moved")

    monkeypatch.setattr(export_module, "run_isolated", no_rebuild)
    monkeypatch.setattr(compress_module, "run_isolated", no_rebuild)
    monkeypatch.setattr(sources_module, "run_isolated", no_rebuild)
    again = compress(export_openvino(tiny_gguf, cache=moved), CompressionConfig("int8_asym"), cache=moved)
    assert again.entry.key == built.entry.key
    assert again.path.is_relative_to(moved.root)


def test_fp16_export_is_another_smaller_entry(
    cache: Cache, float_model: OVModel, tiny_hf_model: Path
) -> None:
    fp16 = export_openvino(tiny_hf_model, ExportConfig(weight_format="fp16"), cache=cache)
    assert fp16.path != float_model.path
    assert fp16.entry.key != float_model.entry.key
    assert fp16.label == "float-fp16"
    assert (fp16.path / "openvino_detokenizer.xml").is_file()
    assert fp16.weights_bytes < 0.7 * float_model.weights_bytes
    assert {e.path for e in cache.entries("openvino-float")} >= {fp16.path, float_model.path}


# -- compression -------------------------------------------------------------------------------


def test_int4_sym_g32_compresses_most_weights_to_int4(int4_model: OVModel, float_model: OVModel) -> None:
    assert int4_model.is_compressed
    assert int4_model.entry.kind == "openvino-compressed"
    assert int4_model.label == "int4_sym-g32-r1"
    assert int4_model.source_name == float_model.source_name
    precisions = int4_model.weight_precisions
    assert sum(precisions.values()) == pytest.approx(1.0, abs=1e-3)
    assert precisions.get("int4", 0) > 0
    assert set(precisions) <= {"int4", "int8", "float"}
    assert int4_model.weights_bytes < float_model.weights_bytes / 3
    assert int4_model.entry.metadata["float_model"] == float_model.entry.key
    for name in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json"):
        assert (int4_model.path / name).is_file(), name
    assert int4_model.architecture == float_model.architecture


def test_int8_asym_per_channel_is_all_int8(cache: Cache, float_model: OVModel, int4_model: OVModel) -> None:
    int8 = compress(float_model, CompressionConfig(mode="int8_asym", group_size=None), cache=cache)
    assert int8.weight_precisions == {"int8": 1.0}
    assert int4_model.weights_bytes < int8.weights_bytes < float_model.weights_bytes


def test_ratio_half_mixes_int4_and_int8(cache: Cache, float_model: OVModel, int4_model: OVModel) -> None:
    mixed = compress(float_model, CompressionConfig(mode="int4_sym", group_size=32, ratio=0.5), cache=cache)
    precisions = mixed.weight_precisions
    assert precisions.get("int4", 0) > 0 and precisions.get("int8", 0) > 0
    assert sum(precisions.values()) == pytest.approx(1.0, abs=1e-3)
    assert precisions["int4"] < int4_model.weight_precisions["int4"]
    assert mixed.path != int4_model.path


def test_invalid_group_size_fails_before_any_child_process(
    cache: Cache, float_model: OVModel, int4_model: OVModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_worker(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker process was started for an impossible group size")

    monkeypatch.setattr(compress_module, "run_isolated", no_worker)
    before = _snapshot(cache)
    with pytest.raises(ConfigError, match=r"valid group sizes for this model: 16, 32\b") as caught:
        compress(float_model, CompressionConfig(mode="int4_sym", group_size=64), cache=cache)
    assert "64" in str(caught.value)
    assert _snapshot(cache) == before


@pytest.mark.parametrize("fallback", ["ignore", "adjust"])
def test_group_size_fallback_makes_64_work(
    cache: Cache, float_model: OVModel, int4_model: OVModel, fallback: str
) -> None:
    config = CompressionConfig(mode="int4_sym", group_size=64, group_size_fallback=fallback)
    model = compress(float_model, config, cache=cache)
    precisions = model.weight_precisions
    assert sum(precisions.values()) == pytest.approx(1.0, abs=1e-3)
    assert precisions.get("int4", 0) > 0
    assert model.label == f"int4_sym-g64-r1-fallback-{fallback}"
    if fallback == "ignore":  # the 96-channel down_proj layers stay in the backup precision
        assert precisions["int4"] < int4_model.weight_precisions["int4"]
    else:  # they get group size 32 instead, so as much is int4 as with g32
        assert precisions["int4"] == pytest.approx(int4_model.weight_precisions["int4"], abs=1e-3)


def test_compressing_a_compressed_model_is_refused(
    cache: Cache, int4_model: OVModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_worker(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker process was started for an already compressed model")

    monkeypatch.setattr(compress_module, "run_isolated", no_worker)
    with pytest.raises(ConfigError, match="already compressed"):
        compress(int4_model, CompressionConfig(mode="int8_asym", group_size=None), cache=cache)


def test_cancel_from_the_progress_callback_leaves_nothing(
    cache: Cache, float_model: OVModel, int4_model: OVModel
) -> None:
    config = CompressionConfig(mode="int4_asym", group_size=16, ratio=0.9)  # built by no other test
    token = CancelToken()
    seen: list[Progress] = []

    def cancel_on_first_report(progress: Progress) -> None:
        seen.append(progress)
        token.cancel()

    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(Cancelled):
        compress(float_model, config, cache=cache, reporter=ProgressReporter(cancel_on_first_report, token))
    assert len(seen) == 1, "progress was reported after the cancel"
    assert _compressed_folders(cache, config.label) == []
    assert [e for e in cache.entries() if e.metadata.get("label") == config.label] == []
    tmp = cache.root / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    new_children = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in children_before and "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert new_children == []


def test_half_written_compressed_folder_is_never_used_nor_deleted(
    cache: Cache, float_model: OVModel, tmp_path: Path
) -> None:
    from conftest import linked_cache_copy

    own = Cache(linked_cache_copy(cache.root, tmp_path / "cache"))  # the shared cache stays clean
    [float_entry] = [e for e in own.entries("openvino-float") if e.key == float_model.entry.key]
    float_copy = OVModel(float_entry)
    config = CompressionConfig(mode="int4_sym", group_size=16, ratio=1.0)
    first = compress(float_copy, config, cache=own)
    folder = first.path
    # A folder under the entry's name without its manifest: nbkit never leaves one (it renames
    # whole builds into place), so it is somebody else's, e.g. a copy interrupted by hand.
    (folder / MANIFEST_NAME).unlink()
    (folder / "openvino_model.bin").write_bytes(b"truncated")
    (folder / "stale-leftover.txt").write_text("from the interrupted copy")
    assert Cache.read_entry(folder) is None
    assert folder in [leftover.path for leftover in own.incomplete() if leftover.state == "foreign"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    with pytest.raises(CacheError, match="is not an nbkit cache entry; move it out of the cache") as caught:
        compress(float_copy, config, cache=own)
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    # Once the user moves it away, the entry is built again and used.
    shutil.move(str(folder), str(tmp_path / "moved-away"))
    rebuilt = compress(float_copy, config, cache=own)
    assert rebuilt.path == folder and rebuilt.weight_precisions.get("int4", 0) > 0
    assert (tmp_path / "moved-away" / "stale-leftover.txt").read_text() == "from the interrupted copy"
    again = compress(float_copy, config, cache=own)  # and now the rebuilt entry is what is used
    assert again.entry.manifest["created"] == rebuilt.entry.manifest["created"]


def test_cached_float_model_is_never_modified(cache: Cache, exported: Exported, int4_model: OVModel) -> None:
    # Runs last in this module: the int4 (built after the hash was taken), int8, mixed,
    # fallback, cancelled and rebuilt compressions have all read this float IR by now.
    assert _sha256(exported.model.path / "openvino_model.bin") == exported.bin_sha256
    assert Cache.read_entry(exported.model.path) == exported.model.entry
