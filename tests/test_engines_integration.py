"""The issue's bars on the bundled model: `nbkit sweep --engines openvino,ort` in one run.

One CLI sweep, three configurations per engine plus the float reference, measured on the same
text and prompts against the same float IR. The table, the ledger and the chart must hold both
engines, and the measured margins must hold on any x86 CPU:

* ONNX Runtime GenAI's fp32 build computes what the float IR computes (mean KL <= 0.01);
* its int8 build is closer to float than its int4 build;
* ORT int4 and OpenVINO int4 g64 r1.0 are measured in that same run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from markers import needs_smollm2

from nbkit import Cache
from nbkit.cli.main import main
from nbkit.engines.ort.deps import olive_available
from nbkit.infra.ledger import LEDGER_NAME

pytestmark = [
    pytest.mark.integration,
    needs_smollm2,
    pytest.mark.skipif(not olive_available(), reason='Olive is not installed (pip install "nbkit[olive]")'),
]


@pytest.fixture(scope="module")
def swept(real_cache: Cache, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    chart = tmp_path_factory.mktemp("engines-chart") / "sweep.html"
    argv = [
        "--cache-dir", str(real_cache.root), "-q", "sweep", "smollm2-135m-instruct",
        "--engines", "openvino,ort", "--modes", "int4_sym,int4_asym,int8_asym,fp32",
        "--group-sizes", "64", "--ratios", "1.0", "--quality-tokens", "128",
        "--speed-tokens", "16", "--repeats", "1", "--chart", str(chart),
    ]  # fmt: skip
    code = main(argv)
    ledger = real_cache.root / LEDGER_NAME
    records = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    return {"code": code, "chart": chart, "records": [r for r in records if r.get("kind") == "measurement"]}


def by_label(swept: dict[str, object], engine: str) -> dict[str, dict[str, object]]:
    return {r["label"]: r for r in swept["records"] if r["engine"] == engine}  # type: ignore[union-attr,index]


def test_the_sweep_completes_with_three_configs_per_engine(swept: dict[str, object]) -> None:
    assert swept["code"] == 0
    openvino, ort = by_label(swept, "openvino"), by_label(swept, "ort")
    assert set(openvino) == {"float-fp32", "int4_sym-g64-r1", "int4_asym-g64-r1", "int8_asym"}
    assert set(ort) == {"int4-b64-acc4", "int4-asym-b64-acc4", "int8-b64", "fp32"}
    for record in [*openvino.values(), *ort.values()]:
        quality = record["quality"]
        assert quality["mean_kl"] >= 0.0 and 0.0 <= quality["top1_agreement"] <= 1.0  # type: ignore[index]
        assert record["speed"]["tokens_per_s"] > 0 and record["answers"]["total"] == 8  # type: ignore[index]


def test_the_chart_holds_both_engines(swept: dict[str, object]) -> None:
    html = Path(str(swept["chart"])).read_text(encoding="utf-8")
    assert "OpenVINO + NNCF" in html and "Olive + ONNX Runtime GenAI" in html
    for label in ("int4_sym-g64-r1", "int4-b64-acc4", "int8-b64"):
        assert label in html


def test_ort_fp32_matches_the_float_reference(swept: dict[str, object]) -> None:
    fp32 = by_label(swept, "ort")["fp32"]["quality"]
    assert fp32["mean_kl"] <= 0.01, fp32  # type: ignore[index]


def test_ort_int8_is_closer_than_ort_int4(swept: dict[str, object]) -> None:
    ort = by_label(swept, "ort")
    int8, int4 = ort["int8-b64"]["quality"], ort["int4-b64-acc4"]["quality"]
    assert int8["mean_kl"] < int4["mean_kl"], (int8, int4)  # type: ignore[index]
    assert int8["top1_agreement"] > int4["top1_agreement"]  # type: ignore[index]


def test_both_int4_are_measured_in_the_same_run(swept: dict[str, object]) -> None:
    ov_int4 = by_label(swept, "openvino")["int4_sym-g64-r1"]
    ort_int4 = by_label(swept, "ort")["int4-b64-acc4"]
    # Same reference, same text: their reference perplexity is one number.
    assert ov_int4["quality"]["reference_perplexity"] == ort_int4["quality"]["reference_perplexity"]  # type: ignore[index]
    assert ov_int4["quality"]["num_tokens"] == ort_int4["quality"]["num_tokens"] == 128  # type: ignore[index]
    for record in (ov_int4, ort_int4):  # 4-bit weights cost something, and far from everything
        assert 0.0 < record["quality"]["mean_kl"] < 2.0  # type: ignore[index]
