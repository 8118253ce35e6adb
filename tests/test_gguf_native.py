"""The source's own quantization: a GGUF read by openvino-genai, built into nbkit's cache, never
next to the user's file; what it cannot read, and other sources, are refused with the reason. The
bundled model's record in a real sweep is in tests/test_sweep.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import nbkit
from nbkit import Cache, CompressionConfig
from nbkit.engines.openvino.gguf_native import build_gguf_native, gguf_native_label, gguf_weight_types
from nbkit.engines.registry import REFERENCE_ENGINE
from nbkit.errors import ConfigError, ModelSourceError
from nbkit.infra.cache import GGUF_NATIVE_KIND
from nbkit.infra.progress import ProgressReporter
from nbkit.measure.sweep import MeasureSettings, run_sweep

TINY_SETTINGS = MeasureSettings(
    quality_tokens=64, quality_window=32, speed_new_tokens=4, speed_repeats=1, answers=False
)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def q4_gguf(make_tiny_gguf: Callable[..., Path]) -> Path:
    """The tiny model as llama.cpp's Q4_1 files are: Q4_1 matrices, a Q8_0 embedding, F32 norms."""
    return make_tiny_gguf("tiny-q4_1.gguf", weight_type="Q4_1")


@pytest.fixture(scope="module")
def q4_cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    """One cache for the Q4 GGUF's builds: the sweep below reuses the export and the native build."""
    return Cache(tmp_path_factory.mktemp("q4-cache"))


def test_the_weight_types_of_a_gguf_are_counted_by_elements(tiny_gguf: Path, q4_gguf: Path) -> None:
    types = gguf_weight_types(tiny_gguf)
    assert types == {"F32": 1.0}
    assert gguf_native_label(types) == "gguf-f32" and gguf_native_label({}) == "gguf-unknown"
    mixed = gguf_weight_types(q4_gguf)
    assert set(mixed) == {"Q4_1", "Q8_0"} and abs(sum(mixed.values()) - 1.0) < 1e-9


def test_a_gguf_is_read_into_the_cache_and_its_own_folder_is_untouched(
    q4_gguf: Path, q4_cache: Cache
) -> None:
    """openvino-genai writes next to the file it reads: nbkit gives it a link in its own build folder."""
    before = _listing(q4_gguf.parent)
    cache = q4_cache
    reference = nbkit.export_openvino(q4_gguf, cache=cache)
    native = REFERENCE_ENGINE.source_quantization(reference, cache=cache, reporter=ProgressReporter())
    assert _listing(q4_gguf.parent) == before
    assert native.entry.kind == GGUF_NATIVE_KIND and native.label.startswith("gguf-q")
    assert (native.path / "openvino_model.xml").is_file() and not list(native.path.glob("*.gguf"))
    for name in ("openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json"):  # the reference's
        assert (native.path / name).read_bytes() == (reference.path / name).read_bytes()
    assert native.entry.metadata["config"]["source_quantization"] in ("Q4_1", "Q8_0")
    assert native.entry.metadata["float_model"] == reference.entry.key
    assert native.weights_bytes < reference.weights_bytes / 2
    again = build_gguf_native(reference, cache=cache)  # from the cache, not rebuilt
    assert again.path == native.path
    assert os.stat(again.model_xml).st_mtime_ns == os.stat(native.model_xml).st_mtime_ns
    turn = nbkit.ChatSession(native, settings=nbkit.GenerationSettings(max_new_tokens=4)).send("Hi")
    assert turn.metrics.generated_tokens > 0


def test_a_gguf_openvino_genai_cannot_read_is_refused_and_leaves_nothing(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    """openvino-genai 2026.4 refuses an all-F32 GGUF ("Unsupported quantization type")."""
    before = _listing(tiny_gguf.parent)
    cache = Cache(tmp_path / "cache")
    reference = nbkit.export_openvino(tiny_gguf, cache=cache)
    with pytest.raises(
        ModelSourceError, match=r"openvino-genai cannot read tiny\.gguf: .*Compress the model"
    ):
        build_gguf_native(reference, cache=cache)
    assert _listing(tiny_gguf.parent) == before
    kind_folder = cache.root / GGUF_NATIVE_KIND
    assert not kind_folder.exists() or not any(kind_folder.iterdir())
    assert not (cache.root / ".tmp").exists() or not any((cache.root / ".tmp").iterdir())


def test_a_source_that_is_not_a_gguf_has_no_quantization_of_its_own(float_model: nbkit.OVModel) -> None:
    with pytest.raises(ModelSourceError, match=r"not a \.gguf file: it has no quantization of its own"):
        build_gguf_native(float_model, cache=Cache(float_model.cache_root))


def test_a_sweep_lists_it_as_skipped_with_the_reason_for_another_source(
    tiny_hf_model: Path, cache: Cache
) -> None:
    result = run_sweep(
        tiny_hf_model,
        [CompressionConfig(mode="int8_asym")],
        settings=TINY_SETTINGS,
        cache=cache,
        gguf_native=True,
    )
    assert [r.label for r in result.records] == ["int8_asym"]
    assert [label for label, _ in result.skipped] == ["openvino gguf-native"]
    assert "has no quantization of its own" in result.skipped[0][1]


def test_a_sweep_of_a_gguf_measures_its_own_quantization_next_to_the_grid(
    q4_gguf: Path, tmp_path: Path
) -> None:
    result = run_sweep(
        q4_gguf,
        [CompressionConfig(mode="int8_asym")],
        settings=TINY_SETTINGS,
        cache=Cache(tmp_path / "cache"),
        gguf_native=True,
    )
    labels = [r.label for r in result.records]
    assert labels[0] == "int8_asym" and labels[1].startswith("gguf-q") and result.skipped == ()
    native = result.records[-1]
    assert native.engine == "openvino" and native.size.weights_bytes < result.reference.size.weights_bytes
    assert native.mean_kl >= 0 and native.tokens_per_s > 0


def test_the_guided_search_refuses_it_rather_than_ignore_it(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not consider the source's own quantization yet"):
        run_sweep(tiny_gguf, cache=Cache(tmp_path / "cache"), target="kl<=0.1", gguf_native=True)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("nbkit-manifest.json"))
