"""llama.cpp-like quality statistics: KL percentiles, Δp RMS, standard errors, the answers' first
divergent token, and the compact table, all checked on synthetic inputs against a plain recomputation.

No model runs here: the scoring loop is driven by fake scorers returning known log-probabilities.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import nbkit.measure.quality as quality
import nbkit.measure.sweep as sweep
from nbkit.errors import ConfigError
from nbkit.infra.progress import ProgressReporter
from nbkit.measure.evaluation import (
    AnswerDivergence,
    AnswerReport,
    SizeReport,
    _divergences,
    answers_summary,
    first_divergence,
)
from nbkit.measure.quality import QualityReport, quality_statistics, quality_summary
from nbkit.measure.speed import SpeedReport
from nbkit.measure.sweep import (
    TABLE_HEADER,
    TABLE_NOTE,
    SweepRecord,
    format_table,
    record_summary,
    table_rows,
)

VOCAB = 40
WINDOW = 40  # longer than the row block of the KL loop, so blocks are stitched together


def plain_stderr(values: np.ndarray) -> float:
    """Sample standard deviation over sqrt(n), written out."""
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


class FakeScorer:
    """A LogitsScorer returning fixed log-probabilities per window (looked up by the window's first id)."""

    def __init__(self, by_window: dict[int, np.ndarray]) -> None:
        self.by_window = by_window
        self.vocab_size = VOCAB

    def log_probs(self, window_ids: np.ndarray) -> np.ndarray:
        return self.by_window[int(window_ids[0])]


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Any]:
    """Three windows of token ids, a reference's log-probs and a perturbed model's."""
    rng = np.random.default_rng(14)
    windows = [np.concatenate([[first], rng.integers(0, VOCAB, WINDOW - 1)]) for first in (3, 7, 11)]
    windows[-1] = windows[-1][:25]  # a shorter tail window
    reference, model = {}, {}
    for ids in windows:
        logits = rng.normal(0.0, 2.0, (len(ids) - 1, VOCAB))
        reference[int(ids[0])] = log_softmax(logits)
        model[int(ids[0])] = log_softmax(logits + rng.normal(0.0, 0.7, logits.shape))
    return {"windows": windows, "reference": reference, "model": model}


def score(synthetic: dict[str, Any], model: dict[int, np.ndarray]) -> QualityReport:
    windows = synthetic["windows"]
    reference_run = quality._score_reference(FakeScorer(synthetic["reference"]), windows, ProgressReporter())
    return quality._score_model(
        FakeScorer(model), Path("model"), Path("reference"), windows, reference_run, ProgressReporter(), 105
    )


def test_statistics_match_a_plain_recomputation() -> None:
    rng = np.random.default_rng(0)
    n = 400
    kl = rng.exponential(0.1, n)
    kl[17] = 3.5  # one outlier: the max and the top percentiles must see it
    reference_nll = rng.exponential(2.0, n)
    model_nll = reference_nll + rng.normal(0.05, 0.2, n)
    same = rng.random(n) < 0.8
    report = quality_statistics(
        kl=kl, model_nll=model_nll, reference_nll=reference_nll, same_top=same, num_tokens=512
    )

    ordered = sorted(kl)

    def percentile(q: float) -> float:  # linear interpolation between order statistics
        rank = q / 100 * (n - 1)
        low = math.floor(rank)
        return ordered[low] + (rank - low) * (ordered[min(low + 1, n - 1)] - ordered[low])

    assert report.positions == n and report.num_tokens == 512
    assert report.mean_kl == pytest.approx(sum(kl) / n, rel=1e-12)
    assert report.kl_median == pytest.approx(percentile(50), rel=1e-12)
    assert report.kl_p99 == pytest.approx(percentile(99), rel=1e-12)
    assert report.kl_p999 == pytest.approx(percentile(99.9), rel=1e-12)
    assert report.kl_max == 3.5
    assert report.kl_median < report.kl_p99 < report.kl_p999 < report.kl_max
    delta_p = [math.exp(-m) - math.exp(-r) for m, r in zip(model_nll, reference_nll, strict=True)]
    assert report.delta_p_rms == pytest.approx(math.sqrt(sum(d * d for d in delta_p) / n), rel=1e-12)

    perplexity = math.exp(sum(model_nll) / n)
    reference_perplexity = math.exp(sum(reference_nll) / n)
    assert report.perplexity == pytest.approx(perplexity, rel=1e-12)
    assert report.reference_perplexity == pytest.approx(reference_perplexity, rel=1e-12)
    assert report.perplexity_ratio == pytest.approx(perplexity / reference_perplexity, rel=1e-12)
    assert report.ppl_ratio == report.perplexity_ratio and report.kl == report.mean_kl
    assert report.top1 == report.top1_agreement == pytest.approx(same.mean())

    # Delta method for the perplexities, paired differences for the ratio, binomial for top-1.
    assert report.perplexity_stderr == pytest.approx(perplexity * plain_stderr(model_nll), rel=1e-9)
    assert report.reference_perplexity_stderr == pytest.approx(
        reference_perplexity * plain_stderr(reference_nll), rel=1e-9
    )
    ratio_stderr = perplexity / reference_perplexity * plain_stderr(model_nll - reference_nll)
    assert report.perplexity_ratio_stderr == pytest.approx(ratio_stderr, rel=1e-9)
    assert report.mean_kl_stderr == pytest.approx(plain_stderr(kl), rel=1e-9)
    p = same.mean()
    assert report.top1_stderr == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-9)


def test_one_position_has_no_standard_errors_and_bad_arrays_are_refused() -> None:
    one = quality_statistics(kl=[0.2], model_nll=[1.0], reference_nll=[0.9], same_top=[True], num_tokens=2)
    assert one.kl_max == one.kl_median == 0.2 and one.positions == 1
    assert one.mean_kl_stderr is None and one.perplexity_stderr is None and one.top1_stderr is None
    with pytest.raises(ConfigError, match="one value per position"):
        quality_statistics(kl=[0.1, 0.2], model_nll=[1.0], reference_nll=[1.0], same_top=[True], num_tokens=4)


def test_scoring_loop_matches_a_direct_computation(synthetic: dict[str, Any]) -> None:
    report = score(synthetic, synthetic["model"])
    kl, model_target, reference_target, same = [], [], [], []
    for ids in synthetic["windows"]:
        ref = synthetic["reference"][int(ids[0])].astype(np.float64)
        mod = synthetic["model"][int(ids[0])].astype(np.float64)
        kl += [float(np.sum(np.exp(r) * (r - m))) for r, m in zip(ref, mod, strict=True)]
        targets = ids[1:]
        model_target += [mod[i, t] for i, t in enumerate(targets)]
        reference_target += [ref[i, t] for i, t in enumerate(targets)]
        same += [int(np.argmax(r) == np.argmax(m)) for r, m in zip(ref, mod, strict=True)]
    n = len(kl)
    assert report.positions == n == 2 * (WINDOW - 1) + 24
    assert report.mean_kl == pytest.approx(np.mean(kl), rel=1e-9) and report.mean_kl > 0.01
    assert report.kl_max == pytest.approx(max(kl), rel=1e-9)
    assert report.kl_p99 == pytest.approx(np.percentile(kl, 99), rel=1e-9)
    assert report.top1_agreement == pytest.approx(np.mean(same)) and 0 < report.top1_agreement < 1
    delta_p = np.exp(model_target) - np.exp(reference_target)
    assert report.delta_p_rms == pytest.approx(np.sqrt(np.mean(delta_p**2)), rel=1e-9)
    assert report.perplexity == pytest.approx(np.exp(-np.mean(model_target)), rel=1e-9)
    assert report.reference_perplexity == pytest.approx(np.exp(-np.mean(reference_target)), rel=1e-9)
    assert report.mean_kl_stderr == pytest.approx(np.std(kl, ddof=1) / np.sqrt(n), rel=1e-6)


def test_the_same_log_probs_give_zeros(synthetic: dict[str, Any]) -> None:
    report = score(synthetic, synthetic["reference"])
    assert report.mean_kl == report.kl_median == report.kl_p99 == report.kl_p999 == report.kl_max == 0.0
    assert report.delta_p_rms == 0.0 and report.top1_agreement == 1.0
    assert report.mean_kl_stderr == report.top1_stderr == report.perplexity_ratio_stderr == 0.0
    assert report.perplexity == report.reference_perplexity and report.perplexity_ratio == 1.0
    assert report.perplexity_stderr == report.reference_perplexity_stderr
    assert report.perplexity_stderr is not None and report.perplexity_stderr > 0  # the text's own spread


def test_reports_round_trip_and_old_ledger_lines_read(synthetic: dict[str, Any]) -> None:
    report = score(synthetic, synthetic["model"])
    line = json.loads(json.dumps(report.to_dict()))
    assert set(line) >= {"kl_median", "kl_p99", "kl_p999", "kl_max", "delta_p_rms", "mean_kl_stderr"}
    assert QualityReport.from_dict(line) == report and report.has_distribution

    old = {
        "perplexity": 12.5,
        "reference_perplexity": 12.0,
        "mean_kl": 0.01,
        "top1_agreement": 0.95,
        "num_tokens": 512,
    }
    read = QualityReport.from_dict(old)
    assert read == QualityReport(12.5, 12.0, 0.01, 0.95, 512)
    assert read.kl_p99 is None and read.mean_kl_stderr is None and read.positions is None
    assert not read.has_distribution and read.ppl_ratio == pytest.approx(12.5 / 12.0)
    assert QualityReport.from_dict(json.loads(json.dumps(read.to_dict()))) == read
    assert "not measured" in quality_summary(read) and "±" not in quality_summary(read)

    old_answers = AnswerReport.from_dict({"identical": 1, "total": 2, "answers": ["Paris.", "Seven."]})
    assert old_answers.divergences is None and old_answers.identical_fraction == 0.5
    assert "not recorded" in answers_summary(old_answers, prompts=["a?", "b?"])


def test_summary_lists_every_statistic(synthetic: dict[str, Any]) -> None:
    report = score(synthetic, synthetic["model"])
    text = quality_summary(report)
    assert len(text.splitlines()) == 4
    assert f"{report.perplexity:.3f} ± {report.perplexity_stderr:.3f}" in text
    assert f"ratio {report.perplexity_ratio:.4f} ± {report.perplexity_ratio_stderr:.4f}" in text
    assert f"{report.mean_kl:.4f} ± {report.mean_kl_stderr:.4f}" in text
    for value in (report.kl_median, report.kl_p99, report.kl_p999, report.kl_max):
        assert f"{value:.4f}" in text
    assert f"Δp RMS {100 * report.delta_p_rms:.2f} %" in text
    assert f"{report.positions} scored positions of 105 tokens" in text


def test_first_divergent_token_of_two_sequences() -> None:
    def text(token: int) -> str:
        return f"<{token}>"

    assert first_divergence([5, 6, 7], [5, 6, 7], text) is None
    assert first_divergence([5, 6, 7, 8], [5, 6, 9, 8], text) == AnswerDivergence(2, "<7>", "<9>")
    assert first_divergence([1, 2, 3], [4], text) == AnswerDivergence(0, "<1>", "<4>")
    # One answer stops where the other goes on: the missing side is "".
    assert first_divergence([5, 6], [5, 6, 7], text) == AnswerDivergence(2, "", "<7>")
    assert first_divergence([5, 6, 7], [5, 6], text) == AnswerDivergence(2, "<7>", "")


def test_divergences_of_answers_with_a_real_tokenizer(tiny_tokenizer_files: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_tokenizer_files / "tokenizer.json"))
    reference = ("The cat sat on the mat.", "Paris is the capital.", "Seven.")
    answers = ("The cat sat on the dog.", "Paris is the capital.", "Seven days.")
    found = _divergences(tiny_tokenizer_files, reference, answers)
    assert found[1] is None
    first = found[0]
    assert first is not None
    same_prefix = tokenizer.encode("The cat sat on the", add_special_tokens=False).ids
    assert first.index == len(same_prefix)
    assert first.reference_token.strip() and first.model_token.strip()
    assert "mat".startswith(first.reference_token.strip()) and "dog".startswith(first.model_token.strip())
    last = found[2]
    assert last is not None and last.index == len(tokenizer.encode("Seven", add_special_tokens=False).ids)
    assert (
        last.reference_token == "."
        and last.model_token.strip()
        and "days".startswith(last.model_token.strip())
    )
    assert _divergences(tiny_tokenizer_files, reference, reference) == (None, None, None)

    report = AnswerReport(1, 3, answers, found)
    assert AnswerReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    lines = answers_summary(report, prompts=["Where?", "Capital?", "Days?"]).splitlines()
    assert lines[0].endswith("1/3") and len(lines) == 3
    assert lines[1].startswith("  Where?: token") and repr(first.model_token) in lines[1]


def _record(label: str, report: QualityReport, answers: AnswerReport | None = None) -> SweepRecord:
    return SweepRecord(
        key=f"key-{label}",
        model="tiny",
        engine="openvino",
        label=label,
        config={},
        model_path=f"/nowhere/{label}",
        size=SizeReport(10 * 2**20, 40 * 2**20, 4.0, {"int4": 1.0}),
        quality=report,
        speed=SpeedReport(0.5, 12.0, 20.0, 50.0, 4, 1, 300.0),
        answers=answers,
        versions={},
        machine={},
        created=1.0,
    )


def test_table_shows_percentiles_and_standard_errors(synthetic: dict[str, Any]) -> None:
    report = score(synthetic, synthetic["model"])
    old = QualityReport(10.5, 10.0, 0.2, 0.8, 512)
    answers = AnswerReport(0, 1, ("Seven days.",), (AnswerDivergence(1, ".", " days"),))
    records = [_record("new", report, answers), _record("old", old)]
    rows = {row[1]: dict(zip(TABLE_HEADER, row, strict=True)) for row in table_rows(records)}
    new = rows["new"]
    assert new["mean KL"] == f"{report.mean_kl:.4f} ± {report.mean_kl_stderr:.4f}"
    assert new["KL p99"] == f"{report.kl_p99:.4f}"
    assert new["ppl ratio"] == f"{report.perplexity_ratio:.3f} ± {report.perplexity_ratio_stderr:.3f}"
    assert new["top-1"] == f"{100 * report.top1_agreement:.1f} ± {100 * report.top1_stderr:.1f}%"
    # A record from before the statistics: bare values, no percentile.
    assert rows["old"]["mean KL"] == "0.2000" and rows["old"]["KL p99"] == "-"
    assert rows["old"]["ppl ratio"] == "1.050" and rows["old"]["top-1"] == "80.0%"
    # The float model against itself: exact zeros, shown without "± 0".
    same = {row[1]: row for row in table_rows([_record("same", score(synthetic, synthetic["reference"]))])}
    assert dict(zip(TABLE_HEADER, same["same"], strict=True))["mean KL"] == "0.0000"
    assert dict(zip(TABLE_HEADER, same["same"], strict=True))["top-1"] == "100.0%"
    table = format_table(records)
    assert "KL p99" in table and "±" in table and table.endswith(TABLE_NOTE)

    detail = record_summary(records[0])
    assert detail.startswith("openvino new\n") and quality_summary(report) in detail
    assert "token 1, reference '.', model ' days'" in detail


def test_record_key_changes_with_the_statistics_version(monkeypatch: pytest.MonkeyPatch) -> None:
    model = SimpleNamespace(entry=SimpleNamespace(key="model-key"))
    reference = SimpleNamespace(entry=SimpleNamespace(key="float-key"))
    runtime = SimpleNamespace(fingerprint=lambda: "runtime")
    engine = SimpleNamespace(versions=lambda: {"openvino": "x"})
    settings = sweep.MeasureSettings()

    def key() -> str:
        return sweep._record_key(model, reference, settings, runtime, engine)  # type: ignore[arg-type]

    current = key()
    assert key() == current
    monkeypatch.setattr(sweep, "MEASUREMENT_STATISTICS", sweep.MEASUREMENT_STATISTICS - 1)
    assert key() != current  # a record without the newer statistics is not reused
