"""The engine protocol and registry, and both engines through one sweep, one quality and one CLI.

Fast tests use the tiny llama of conftest (hidden 64, intermediate 96: NNCF group sizes and
ModelBuilder block sizes 16 and 32 fit, 64 does not), a model with other channel sizes than
the bundled one, so the grid mapping meets layers it must refuse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import nbkit.engines.ort.engine as ort_engine_module
from nbkit import Cache, CompressionConfig, RuntimeConfig, export_openvino, read_architecture
from nbkit.cli.main import main
from nbkit.engines.ort.chat import check_ort_runtime
from nbkit.engines.ort.deps import olive_available
from nbkit.engines.ort.olive import OrtGenAIModel, export_olive
from nbkit.engines.ort.olive_config import OliveExportConfig
from nbkit.engines.protocol import Engine, GridOptions
from nbkit.engines.registry import (
    REFERENCE_ENGINE,
    engine_for_config,
    engine_for_folder,
    engine_names,
    engines,
    get_engine,
    model_at,
    parse_engines,
)
from nbkit.engines.tuning_report import TUNING_KIND
from nbkit.errors import ConfigError, DeviceError, MissingDependencyError, ModelSourceError
from nbkit.infra.cache import CACHE_KINDS
from nbkit.infra.ledger import LEDGER_NAME, Ledger
from nbkit.infra.progress import ProgressReporter
from nbkit.measure.compare import compare_models
from nbkit.measure.quality import measure_quality
from nbkit.measure.sweep import TABLE_NOTE, MeasureSettings, grid, measurement_runtime, run_sweep
from nbkit.sources.models import resolve_source

needs_olive = pytest.mark.skipif(
    not olive_available(), reason='Olive is not installed (pip install "nbkit[olive]")'
)
QUICK = MeasureSettings(
    quality_tokens=64, quality_window=32, speed_new_tokens=4, speed_repeats=1, answers=False
)


# -- the registry ----------------------------------------------------------------------------------


def test_every_registered_engine_implements_the_protocol() -> None:
    assert engine_names() == ("openvino", "ort")
    for engine in engines():
        assert isinstance(engine, Engine), engine
        assert engine.cache_kinds and engine.modes and engine.title
    kinds = [kind for engine in engines() for kind in engine.cache_kinds]
    assert len(kinds) == len(set(kinds))  # a cache kind belongs to one engine
    assert set(kinds) <= set(CACHE_KINDS)  # and is one `nbkit cache clear --kind` knows
    assert REFERENCE_ENGINE is get_engine("openvino")


@pytest.mark.parametrize(
    ("name", "expected"), [("openvino", "openvino"), ("ORT", "ort"), ("olive", "ort"), (" ov ", "openvino")]
)
def test_engines_are_found_by_name_and_alias(name: str, expected: str) -> None:
    assert get_engine(name).name == expected


@pytest.mark.parametrize("name", ["llama.cpp", "", 3, None])
def test_an_unknown_engine_is_one_sentence_naming_the_choices(name: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        get_engine(name) if name != "" else parse_engines(name)
    assert "openvino" in str(raised.value) and "ort" in str(raised.value)
    assert str(raised.value).count(". ") == 0


def test_parse_engines_keeps_order_and_drops_repeats() -> None:
    assert [e.name for e in parse_engines("ort, openvino,olive")] == ["ort", "openvino"]


def test_configs_and_folders_name_their_engine(tmp_path: Path) -> None:
    assert engine_for_config(CompressionConfig()).name == "openvino"
    assert engine_for_config(OliveExportConfig()).name == "ort"
    with pytest.raises(ConfigError, match="CompressionConfig or OliveExportConfig"):
        engine_for_config({"mode": "int4_sym"})
    (tmp_path / "ov").mkdir()
    (tmp_path / "ov" / "openvino_model.xml").write_text("<net/>")
    (tmp_path / "ort").mkdir()
    (tmp_path / "ort" / "genai_config.json").write_text("{}")
    assert engine_for_folder(tmp_path / "ov").name == "openvino"  # type: ignore[union-attr]
    assert engine_for_folder(tmp_path / "ort").name == "ort"  # type: ignore[union-attr]
    assert engine_for_folder(tmp_path) is None
    assert model_at(tmp_path / "ov") is None  # a folder without nbkit's manifest is no built model


# -- the ORT engine's rules -------------------------------------------------------------------------


def test_ort_grid_maps_nncf_words_and_skips_the_rest_with_reasons(tiny_hf_model: Path) -> None:
    facts = read_architecture(tiny_hf_model)
    spec = GridOptions(
        modes=("int4_sym", "int4_asym", "int8_sym", "int8_asym", "nf4", "fp32"),
        group_sizes=(16, 64, None, "auto"),
        ratios=(1.0, 0.8),
        accuracy_levels=(4, 1),
    )
    configs, skipped = get_engine("ort").grid(facts, spec)
    labels = [c.label for c in configs]
    # block 16 and auto (32, the largest that fits 64 and 96) for both schemes and both levels,
    # one int8 for both int8 modes, and fp32.
    assert labels == [
        "int4-b16-acc4",
        "int4-b16-acc1",
        "int4-b32-acc4",
        "int4-b32-acc1",
        "int4-asym-b16-acc4",
        "int4-asym-b16-acc1",
        "int4-asym-b32-acc4",
        "int4-asym-b32-acc1",
        "int8-b64",
        "fp32",
    ]
    reasons = dict(skipped)
    assert "valid block sizes for this model: 16, 32" in reasons["ort int4_sym g64 r1"]
    assert "ratio below 1" in reasons["ort int4_sym r0.8"]
    assert "not per-channel" in reasons["ort int4_sym per-channel"]
    assert "no NF4" in reasons["ort nf4"]
    assert all(label.startswith("ort ") for label, _ in skipped)


def test_ort_grid_skips_nncf_algorithms_and_refuses_unknown_levels(tiny_hf_model: Path) -> None:
    facts = read_architecture(tiny_hf_model)
    configs, skipped = get_engine("ort").grid(facts, GridOptions(group_sizes=(16,), options={"awq": True}))
    assert configs == [] and "round-to-nearest" in skipped[0][1]
    with pytest.raises(ConfigError, match="1 fp32, 2 fp16, 3 bf16, 4 int8"):
        get_engine("ort").grid(facts, GridOptions(accuracy_levels=(5,)))
    with pytest.raises(ConfigError, match="Unknown mode 'int3'"):
        get_engine("ort").grid(facts, GridOptions(modes=("int3",)))


def test_openvino_grid_skips_float_modes_with_the_reason(tiny_hf_model: Path) -> None:
    facts = read_architecture(tiny_hf_model)
    configs, skipped = grid(facts, engines="openvino", modes=["fp32", "int8_asym"], group_sizes=[16])
    assert [c.label for c in configs] == ["int8_asym"]
    assert skipped == [("openvino fp32", "the OpenVINO fp32 export is the float reference itself")]


def test_ort_config_options_disable_with_reasons() -> None:
    ort = get_engine("ort")
    assert ort.unavailable_options(OliveExportConfig("int4", 32)) == {}
    reasons = ort.unavailable_options(OliveExportConfig("int8"))
    assert set(reasons) == {"int4_block_size", "int4_accuracy_level", "int4_symmetric"}
    with pytest.raises(ConfigError, match="int4_symmetric applies to precision 'int4' only"):
        OliveExportConfig("fp32", int4_symmetric=False)
    assert OliveExportConfig(int4_symmetric=False).label == "int4-asym-b32-acc4"
    assert OliveExportConfig(int4_symmetric=True) == OliveExportConfig()  # the default, spelled out


def test_ort_runtime_keeps_its_options_and_drops_openvinos() -> None:
    runtime = check_ort_runtime(
        RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "LATENCY", "intra_op_num_threads": 2})
    )
    assert runtime == RuntimeConfig.create("CPU", {"intra_op_num_threads": 2})
    with pytest.raises(ConfigError, match="whole number >= 0"):
        check_ort_runtime(RuntimeConfig.create("CPU", {"intra_op_num_threads": -1}))
    with pytest.raises(ConfigError, match="intra_op_num_threads, inter_op_num_threads"):
        check_ort_runtime(RuntimeConfig.create("CPU", {"graph_optimization": 1}))
    with pytest.raises(DeviceError, match="CPU only"):
        check_ort_runtime(RuntimeConfig.create("GPU"))


def test_code_for_the_ort_side_covers_nbkit_and_olive() -> None:
    code = get_engine("ort").code(OliveExportConfig("int4", 64, 4, False), "smollm2-135m-instruct")
    assert list(code) == [
        "nbkit (Python)",
        "nbkit (command line)",
        "Olive (command line)",
        "Olive (JSON for olive run --config)",
    ]
    assert "int4_symmetric=False" in code["nbkit (Python)"]
    assert "--int4_block_size 64" in code["Olive (command line)"]
    assert "int4_is_symmetric=false" in code["Olive (command line)"]
    workflow = json.loads(code["Olive (JSON for olive run --config)"])
    builder = workflow["passes"]["model_builder"]
    assert (builder["int4_block_size"], builder["int4_is_symmetric"]) == (64, False)


# -- both engines on the tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return Cache(tmp_path_factory.mktemp("engines-cache"))


@pytest.fixture(scope="module")
def both_swept(tiny_cache: Cache, tiny_hf_model: Path) -> Any:
    if not olive_available():
        pytest.skip("Olive is not installed")
    return run_sweep(
        tiny_hf_model,
        engines=("openvino", "ort"),
        modes=("int4_sym", "int8_asym", "fp32"),
        group_sizes=(16, 64),
        settings=QUICK,
        cache=tiny_cache,
    )


@needs_olive
def test_a_tiny_llama_goes_through_both_engines_sweeps(both_swept: Any) -> None:
    by_engine: dict[str, list[str]] = {}
    for record in both_swept.records:
        by_engine.setdefault(record.engine, []).append(record.label)
    assert by_engine == {
        "openvino": ["int4_sym-g16-r1", "int8_asym"],
        "ort": ["int4-b16-acc4", "int8-b64", "fp32"],
    }
    assert both_swept.reference.engine == "openvino" and both_swept.reference.mean_kl == 0.0
    skipped = dict(both_swept.skipped)
    assert "group_size 64 does not divide" in skipped["openvino int4_sym g64 r1"]
    assert "valid block sizes for this model: 16, 32" in skipped["ort int4_sym g64 r1"]
    assert "float reference itself" in skipped["openvino fp32"]
    for record in both_swept.all_records:  # every figure is there for both engines
        assert record.quality.num_tokens == QUICK.quality_tokens
        assert record.speed.tokens_per_s > 0 and record.size.weights_bytes > 0
        assert 0.0 <= record.quality.top1_agreement <= 1.0


@needs_olive
def test_ort_quality_is_measured_against_the_same_reference(both_swept: Any) -> None:
    ort = {r.label: r for r in both_swept.records if r.engine == "ort"}
    # The ONNX fp32 build of the same weights computes what the float IR computes: the KL is
    # rounding noise, orders of magnitude below what 4-bit weights cost.
    assert ort["fp32"].mean_kl < 1e-3 and ort["fp32"].quality.top1_agreement > 0.98
    assert ort["int8-b64"].mean_kl < ort["int4-b16-acc4"].mean_kl
    assert ort["fp32"].quality.reference_perplexity == both_swept.reference.quality.perplexity


@needs_olive
def test_ort_logits_are_every_positions(tiny_cache: Cache, tiny_hf_model: Path, both_swept: Any) -> None:
    float_model = export_openvino(tiny_hf_model, cache=tiny_cache)
    fp32 = next(r for r in both_swept.records if r.label == "fp32")
    scorer = get_engine("ort").logits_scorer(Path(fp32.model_path))
    reference = get_engine("openvino").logits_scorer(float_model.path)
    window = get_engine("openvino").token_ids(
        float_model.path, "The sea is calm tonight, and the stars are out."
    )
    ort_lp, ov_lp = scorer.log_probs(window), reference.log_probs(window)
    assert ort_lp.shape == ov_lp.shape == (len(window) - 1, scorer.vocab_size)
    assert abs(ort_lp - ov_lp).max() < 1e-3
    assert (ort_lp.argmax(-1) == ov_lp.argmax(-1)).all()


@needs_olive
def test_a_built_model_of_either_engine_is_found_from_its_folder(both_swept: Any) -> None:
    for record in both_swept.all_records:
        model = model_at(record.model_path)
        assert model is not None and model.engine == record.engine
        assert str(model.path) == record.model_path
    assert isinstance(
        model_at(next(r for r in both_swept.records if r.engine == "ort").model_path), OrtGenAIModel
    )


@needs_olive
def test_measuring_quality_across_engines_checks_the_vocabulary(
    tiny_cache: Cache, tiny_hf_model: Path, both_swept: Any, tmp_path: Path
) -> None:
    ort_folder = Path(next(r for r in both_swept.records if r.label == "fp32").model_path)
    with pytest.raises(ModelSourceError, match="not a model folder nbkit can load"):
        measure_quality(tmp_path, ort_folder)
    float_model = export_openvino(tiny_hf_model, cache=tiny_cache)
    with pytest.raises(ConfigError, match="num_tokens must be an integer"):
        measure_quality(ort_folder, float_model, num_tokens=1)


@needs_olive
def test_compare_models_puts_both_engines_side_by_side(tiny_cache: Cache, tiny_hf_model: Path) -> None:
    float_model = export_openvino(tiny_hf_model, cache=tiny_cache)
    ort_model = export_olive(tiny_hf_model, OliveExportConfig("int4", 16), cache=tiny_cache)
    ov_model = get_engine("openvino").build(
        resolve_source(tiny_hf_model),
        CompressionConfig(group_size=16),
        reference=float_model,
        cache=tiny_cache,
        reporter=ProgressReporter(),
    )
    comparison = compare_models(
        {"openvino": ov_model, "ort": ort_model}, float_model, rounds=2, new_tokens=4, quality_tokens=64
    )
    assert [m.name for m in comparison.models] == ["openvino", "ort"]
    assert [m.engine for m in comparison.models] == ["openvino", "ort"]
    for model in comparison.models:
        assert len(model.tokens_per_s_samples) == 2 and model.tokens_per_s > 0 and model.load_s > 0
        assert model.quality.mean_kl > 0 and model.peak_rss_mb > 0
    ratios = comparison.ratios("openvino")
    assert ratios["openvino"] == {"tokens_per_s": 1.0, "ttft_ms": 1.0, "weights": 1.0}
    assert ratios["ort"]["weights"] == pytest.approx(ort_model.weights_bytes / ov_model.weights_bytes)
    table = comparison.table("openvino").splitlines()
    assert table[0].split()[:2] == ["model", "engine"] and len(table) == 4
    assert json.loads(json.dumps(comparison.to_dict()))["models"][1]["engine"] == "ort"
    with pytest.raises(ConfigError, match="rounds must be a positive integer"):
        compare_models({"ort": ort_model}, float_model, rounds=0)
    with pytest.raises(ConfigError, match="not among the models"):
        compare_models({"ort": ort_model}, float_model, runtimes={"other": RuntimeConfig.create()})


# -- the command line --------------------------------------------------------------------------------


@needs_olive
def test_cli_sweeps_both_engines_into_one_table_ledger_and_chart(
    tiny_hf_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "both.html"
    argv = [
        "--cache-dir", str(tmp_path / "cache"), "-q", "sweep", str(tiny_hf_model),
        "--engines", "openvino,ort", "--modes", "int4_sym,int4_asym,int8_asym", "--group-sizes", "16",
        "--accuracy-levels", "4,1", "--quality-tokens", "64", "--speed-tokens", "4", "--repeats", "1",
        "--no-answers", "--chart", str(chart),
    ]  # fmt: skip
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    recommendation = [line for line in out.splitlines() if "decodes fastest" in line]
    rows = [
        line.split()
        for line in out.splitlines()[2:]
        if line and not line.startswith(("chart:", "ledger:", TABLE_NOTE)) and line not in recommendation
    ]
    # From the ledger: which configuration of either engine decodes fastest, and which answers first.
    assert len(recommendation) == 1 and "answers first (time to first token" in recommendation[0]
    assert re.search(r"(openvino|ort) \S+ decodes fastest \(\d+\.\d tokens/s", recommendation[0])
    engines_seen = {row[0] for row in rows}
    assert engines_seen == {"openvino", "ort"}
    ort_labels = sorted(row[1] for row in rows if row[0] == "ort")
    assert ort_labels == sorted(
        ["int4-b16-acc4", "int4-b16-acc1", "int4-asym-b16-acc4", "int4-asym-b16-acc1", "int8-b64"]
    )
    stored = Ledger(tmp_path / "cache" / LEDGER_NAME).records("measurement")
    assert {s["engine"] for s in stored} == {"openvino", "ort"}
    assert all("mean_kl" in s["quality"] and "top1_agreement" in s["quality"] for s in stored)
    html = chart.read_text(encoding="utf-8")
    assert "OpenVINO + NNCF" in html and "Olive + ONNX Runtime GenAI" in html
    assert all(label in html for label in ort_labels)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--engines", "openvino,llama.cpp"], "Unknown engine 'llama.cpp'"),
        (["--modes", "int3"], "Unknown mode 'int3'"),
        (["--engines", "ort", "--accuracy-levels", "5"], "1 fp32, 2 fp16, 3 bf16, 4 int8"),
    ],
)
def test_cli_sweep_refuses_bad_engine_flags_in_one_sentence(
    flags: list[str], message: str, tiny_hf_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--cache-dir", str(tmp_path / "cache"), "-q", "sweep", str(tiny_hf_model), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache" / LEDGER_NAME).exists()


def test_a_missing_engine_fails_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tiny_hf_model: Path, tmp_path: Path
) -> None:
    ort = get_engine("ort")
    monkeypatch.setattr(
        type(ort), "missing", lambda self: "Olive is not installed: pip install nbkit[olive]."
    )
    with pytest.raises(MissingDependencyError, match="The ort engine cannot run here"):
        run_sweep(tiny_hf_model, engines="openvino,ort", cache=Cache(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "openvino-float").exists()  # nothing was exported


@needs_olive
def test_cli_tune_device_times_ort_threads_and_chat_and_sweeps_use_the_best(
    tiny_hf_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    argv = ["--cache-dir", str(cache_dir), "-q", "tune-device", str(tiny_hf_model), "--engine", "ort",
            "--int4-block-size", "16", "--tokens", "4", "--repeats", "2"]  # fmt: skip
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(onnxruntime-genai defaults)" in out and "intra_op_num_threads=1" in out
    records = Ledger(cache_dir / LEDGER_NAME).records(TUNING_KIND)
    assert len(records) == 1 and records[0]["engine"] == "ort"
    best = records[0]["best"]
    model = export_olive(tiny_hf_model, OliveExportConfig("int4", 16), cache=Cache(cache_dir))
    tuned = RuntimeConfig.create("CPU", best)
    assert get_engine("ort").default_runtime(model) == tuned
    assert get_engine("ort").default_runtime(model.path) == tuned  # from its folder too
    assert measurement_runtime(model, QUICK) == tuned  # what sweeps and panels measure with
    seen: list[RuntimeConfig] = []

    class SpySession:
        def __init__(self, folder: Any, runtime: Any, settings: Any, **kwargs: Any) -> None:
            seen.append(runtime)
            raise ModelSourceError("spy session: stop before loading")

    monkeypatch.setattr(ort_engine_module, "OrtChatSession", SpySession)  # where the engine finds it
    assert main(["--cache-dir", str(cache_dir), "-q", "chat", str(model.path), "--prompt", "hi"]) == 1
    assert seen == [tuned]
    assert re.search("spy session", capsys.readouterr().err)


def test_runtime_knobs_map_to_each_engines_own_properties() -> None:
    from nbkit.engines.protocol import RUNTIME_KNOBS

    for engine in engines():
        knobs = engine.runtime_properties("CPU")
        assert set(knobs) <= set(RUNTIME_KNOBS) and "threads" in knobs
        # what the selector would set is a property the engine's own runtime check keeps
        kept = engine.check_runtime(RuntimeConfig.create("CPU", {knobs["threads"]: 1}))
        assert kept.property_dict == {knobs["threads"]: 1}
    assert get_engine("ort").runtime_properties() == {"threads": "intra_op_num_threads"}
