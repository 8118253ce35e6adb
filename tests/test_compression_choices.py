"""More compression choices: LoRA correction, layers kept in float or INT8, newer NNCF formats.

Each choice is checked where it flows: the config rules (one sentence for an impossible
combination), NNCF's own rules (so a version that changes them is caught), the nbkit CLI,
the code shown for a config, the sweep grid, the form, and a real compression of the tiny
model (formats: compressed *and* run by openvino-genai on the CPU). The integration test at
the end measures LoRA correction on the bundled model.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from nbkit import CompressionConfig, read_architecture
from nbkit import widgets as panels
from nbkit.cli.main import _compression_config
from nbkit.cli.parser import build_parser
from nbkit.compression.layers import (
    check_layer_names,
    ignored_scope_patterns,
    layer_shortcuts,
    model_layer_names,
    only_these_pattern,
)
from nbkit.compression.nncf_compress import (
    _weight_constant,
    compress_folder,
    int8_pass_arguments,
    nncf_arguments,
)
from nbkit.compression.snippets import compression_code
from nbkit.config import NOT_OFFERED_FORMATS, CompressionMode, unavailable_options
from nbkit.engines.openvino.engine import nncf_grid
from nbkit.errors import ConfigError
from nbkit.infra.progress import ProgressReporter
from nbkit.sources.architecture import ArchitectureFacts

NEW_FORMATS = [
    CompressionMode.CB4,
    CompressionMode.MXFP4,
    CompressionMode.FP4,
    CompressionMode.NVFP4,
    CompressionMode.FP8_E4M3,
    CompressionMode.MXFP8_E4M3,
]
# What each format stores its weights as (nbkit's weight_precisions names).
STORED_AS = {
    "cb4": "cb4",
    "mxfp4": "fp4",
    "fp4": "fp4",
    "nvfp4": "fp4",
    "fp8_e4m3": "fp8",
    "mxfp8_e4m3": "fp8",
}
FIRST_BLOCK = "model.layers.0"


@pytest.fixture(scope="module")
def facts(tiny_hf_model: Path) -> ArchitectureFacts:
    return read_architecture(tiny_hf_model)


def _layer_precisions(xml: Path) -> dict[str, str]:
    """Module name -> stored element type (or "cb4") of every weight of a compressed IR."""
    import openvino as ov

    found: dict[str, str] = {}
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Gather") or not op.get_friendly_name().startswith("__module."):
            continue
        node, precision = _weight_constant(op.input_value(1 if kind == "MatMul" else 0).get_node())
        if node.get_type_name() == "Constant" and len(node.get_output_partial_shape(0)) >= 2:
            module = op.get_friendly_name().removeprefix("__module.").split("/")[0]
            found[module] = precision or node.get_output_element_type(0).get_type_name()
    return found


# -- LoRA correction: the rules, and NNCF agreeing with them -------------------------------------


def test_lora_correction_is_data_aware_and_passed_to_nncf() -> None:
    config = CompressionConfig(group_size=64, lora_correction=True, calibration_samples=8)
    assert config.is_data_aware and "-lora-" in config.label
    dataset = object()
    arguments = nncf_arguments(config, dataset=dataset)
    assert arguments["lora_correction"] is True and arguments["dataset"] is dataset
    assert arguments["subset_size"] == 8
    assert "lora_correction" not in nncf_arguments(CompressionConfig(group_size=64))
    assert config.fingerprint() != CompressionConfig(group_size=64, calibration_samples=8).fingerprint()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mode": "int8_asym", "group_size": None}, "apply to 4-bit modes"),
        ({"mode": "mxfp4"}, "not mxfp4"),
        ({"mode": "cb4"}, "not cb4"),
        ({"mode": "fp8_e4m3"}, "not fp8_e4m3"),
        ({"gptq": True}, "LoRA correction and GPTQ cannot be combined"),
    ],
)
def test_lora_correction_refuses_what_nncf_refuses_in_one_sentence(
    kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        CompressionConfig(lora_correction=True, **kwargs)
    assert str(err.value).count(". ") == 0  # one sentence


@pytest.mark.parametrize("mode", ["int4_sym", "int4_asym", "nf4"])
def test_lora_correction_combines_with_awq_and_scale_estimation(mode: str) -> None:
    assert CompressionConfig(mode=mode, lora_correction=True, awq=True, scale_estimation=True).is_data_aware
    assert not unavailable_options(mode, lora_correction=True, awq=True).get("lora_correction")


def test_the_form_rules_follow_lora_correction() -> None:
    assert "turn GPTQ off" in unavailable_options("int4_sym", gptq=True)["lora_correction"]
    assert "turn LoRA correction off" in unavailable_options("int4_sym", lora_correction=True)["gptq"]
    assert "int4 and nf4" in unavailable_options("mxfp4")["lora_correction"]
    assert "calibration" not in unavailable_options("int4_sym", lora_correction=True)
    # A checked box that is disabled (mode changed) contributes nothing: no calibration either.
    assert "calibration" in unavailable_options("cb4", lora_correction=True)


def test_nncf_refuses_lora_correction_exactly_where_nbkit_does(float_model: Any) -> None:
    """NNCF 3.4's own answer on the tiny model: INT4 and NF4 take LoRA correction, CB4 and the
    FP formats do not, nor does LoRA with GPTQ; CB4 takes AWQ, MXFP4 does not. A new NNCF
    that changes this fails here."""
    import nncf
    import openvino as ov

    from nbkit.compression.calibration import CalibrationSet, calibration_items, make_dataset

    float_dir = Path(float_model.path)
    model = ov.Core().read_model(str(float_dir / "openvino_model.xml"))
    items = calibration_items(model, float_dir, CalibrationSet(2, 16))
    outcomes: dict[str, bool] = {}
    for mode in ["int4_sym", "nf4", "cb4", "mxfp4", "fp4"]:
        group = 32 if CompressionMode(mode).fixed_group_size is None or mode.startswith("mx") else 16
        try:
            nncf.compress_weights(
                model.clone(),
                mode=nncf.CompressWeightsMode(mode),
                group_size=group,
                dataset=make_dataset(items),
                subset_size=2,
                lora_correction=True,
            )
            outcomes[mode] = True
        except (nncf.ParameterNotSupportedError, nncf.InternalError):
            outcomes[mode] = False
    assert outcomes == {mode: CompressionMode(mode).takes_lora_correction for mode in outcomes}
    for mode in ["cb4", "mxfp4"]:  # AWQ stands for the data-aware algorithms NNCF checks together
        try:
            nncf.compress_weights(
                model.clone(),
                mode=nncf.CompressWeightsMode(mode),
                group_size=32,
                dataset=make_dataset(items),
                subset_size=2,
                awq=True,
            )
            outcomes[mode] = True
        except nncf.ParameterNotSupportedError:
            outcomes[mode] = False
        assert outcomes[mode] == CompressionMode(mode).takes_data_aware, mode
    with pytest.raises(nncf.ParameterNotSupportedError):
        nncf.compress_weights(
            model.clone(),
            mode=nncf.CompressWeightsMode.INT4_SYM,
            group_size=32,
            dataset=make_dataset(items),
            gptq=True,
            lora_correction=True,
        )


# -- newer formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", NEW_FORMATS, ids=lambda m: m.value)
def test_each_offered_format_compresses_and_generates_on_the_cpu(
    mode: CompressionMode, float_model: Any, facts: ArchitectureFacts, tmp_path: Path
) -> None:
    """The claim behind offering a format, re-checked on the tiny model: NNCF compresses it and
    openvino-genai runs it on the CPU (a version that breaks either fails here)."""
    import openvino_genai

    from nbkit.compression.weights import resolve_config

    config = resolve_config(CompressionConfig(mode=mode), facts)
    result = compress_folder(Path(float_model.path), tmp_path, config, reporter=ProgressReporter())
    assert result["weight_precisions"].get(STORED_AS[mode.value], 0) > 0.5, result["weight_precisions"]
    pipeline = openvino_genai.LLMPipeline(str(tmp_path), "CPU")
    settings = openvino_genai.GenerationConfig(max_new_tokens=4, min_new_tokens=4)
    answer = pipeline.generate(["Hello"], settings)
    assert answer.perf_metrics.get_num_generated_tokens() == 4


def test_formats_not_offered_are_still_missing_from_nncf_or_need_a_codebook() -> None:
    """If NNCF grows an E5M2 weight mode, this fails: re-check it and offer it."""
    import nncf

    nncf_modes = {mode.value for mode in nncf.CompressWeightsMode}
    assert "fp8_e5m2" not in nncf_modes
    assert {"codebook", "adaptive_codebook"} <= nncf_modes  # exist, but need user codebook parameters
    assert {mode.value for mode in CompressionMode} <= nncf_modes
    for name, reason in NOT_OFFERED_FORMATS.items():
        with pytest.raises(ConfigError, match="is not offered") as err:
            CompressionMode.parse(name)
        assert reason in str(err.value)


@pytest.mark.parametrize(("mode", "size"), [("mxfp4", 32), ("mxfp8_e4m3", 32), ("nvfp4", 16)])
def test_fixed_group_formats_resolve_auto_to_their_size_and_refuse_others(mode: str, size: int) -> None:
    assert CompressionConfig(mode=mode).resolve((16, 32, 64)).group_size == size
    assert CompressionConfig(mode=mode, group_size=size).group_size == size
    with pytest.raises(ConfigError, match=f"groups of {size} weights"):
        CompressionConfig(mode=mode, group_size=64 if size != 64 else 16)
    with pytest.raises(ConfigError, match=f"groups of {size}"):
        CompressionConfig(mode=mode, group_size=None)
    assert f"groups of {size}" in unavailable_options(mode)["group_size"]


@pytest.mark.parametrize("mode", ["mxfp4", "fp4", "nvfp4", "fp8_e4m3", "mxfp8_e4m3"])
def test_formats_without_data_aware_algorithms_refuse_them(mode: str) -> None:
    with pytest.raises(ConfigError, match="int4_sym, int4_asym, nf4 and cb4"):
        CompressionConfig(mode=mode, awq=True)
    reasons = unavailable_options(mode)
    assert {"awq", "scale_estimation", "gptq", "lora_correction"} <= set(reasons)


def test_cb4_takes_awq_scale_estimation_and_gptq_but_not_lora_correction() -> None:
    assert CompressionConfig(mode="cb4", awq=True, scale_estimation=True).is_data_aware
    assert CompressionConfig(mode="cb4", gptq=True).is_data_aware
    assert set(unavailable_options("cb4")) & {"awq", "scale_estimation", "gptq", "lora_correction"} == {
        "lora_correction"
    }


def test_the_grid_keeps_the_new_formats_apart_and_skips_what_cannot_fit(facts: ArchitectureFacts) -> None:
    configs, skipped = nncf_grid(
        facts, modes=["int4_sym", "mxfp4", "fp8_e4m3", "cb4"], group_sizes=["auto", 16], ratios=[1.0]
    )
    labels = [config.label for config in configs]
    assert len(set(labels)) == len(labels) == len({c.fingerprint() for c in configs})
    assert [c.group_size for c in configs if c.mode is CompressionMode.MXFP4] == [32]
    assert any("mxfp4" in label and "groups of 32" in reason for label, reason in skipped)
    lora, _ = nncf_grid(facts, modes=["int4_sym", "mxfp4"], group_sizes=["auto"], lora_correction=True)
    assert len(lora) == 1 and lora[0].label.count("lora") == 1  # mxfp4 skipped with why
    with pytest.raises(ConfigError, match="close matches: lm_head"):
        nncf_grid(facts, modes=["int4_sym", "int8_asym"], keep_float=("lm_haed",))


# -- layers kept in float or INT8 -------------------------------------------------------------------


def test_layer_names_are_the_models_modules_with_shortcuts(facts: ArchitectureFacts) -> None:
    names = model_layer_names(facts)
    assert names[0] == "model.embed_tokens" and names[-1] == "lm_head"  # model order
    assert f"{FIRST_BLOCK}.mlp.down_proj" in names and all(not n.endswith(".weight") for n in names)
    shortcuts = layer_shortcuts(facts)
    assert shortcuts["embeddings + LM head (tied)"] == (
        "model.embed_tokens",
        "lm_head",
    )  # tiny model ties them
    assert all(name.startswith(f"{FIRST_BLOCK}.") for name in shortcuts["first block (0)"])
    assert all(name.startswith("model.layers.1.") for name in shortcuts["last block (1)"])


def test_keep_lists_are_sorted_tuples_with_one_fingerprint() -> None:
    one = CompressionConfig(keep_float=["lm_head", "model.embed_tokens", "lm_head"])
    other = CompressionConfig(keep_float=("model.embed_tokens", "lm_head"))
    assert one == other and one.keep_float == ("lm_head", "model.embed_tokens")
    assert one.fingerprint() == other.fingerprint() != CompressionConfig().fingerprint()
    assert hash(one) == hash(other)
    assert CompressionConfig(keep_float="lm_head").keep_float == ("lm_head",)
    assert one.label != CompressionConfig(keep_int8=one.keep_float).label
    many = CompressionConfig(keep_float=[f"{FIRST_BLOCK}.mlp.{p}_proj" for p in ("up", "down", "gate")])
    assert many.label != CompressionConfig(keep_float=(*many.keep_float[:2], "lm_head")).label


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"keep_float": ["lm_head"], "keep_int8": ["lm_head"]}, "both in float and in INT8"),
        ({"keep_float": [""]}, "non-empty strings"),
        ({"keep_float": 3}, "list of layer names"),
        ({"mode": "int8_sym", "group_size": None, "keep_int8": ["lm_head"]}, "INT8 already"),
    ],
)
def test_impossible_keep_lists_are_one_sentence(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        CompressionConfig(**kwargs)


def test_a_layer_the_model_lacks_is_named_with_close_matches(facts: ArchitectureFacts) -> None:
    with pytest.raises(ConfigError, match=r"close matches: model\.layers\.0\.self_attn\.q_proj") as err:
        check_layer_names(CompressionConfig(keep_float=["model.layers.0.self_atn.q_proj"]), facts)
    assert "not a layer of this model" in str(err.value)
    with pytest.raises(ConfigError, match="tied embeddings"):
        check_layer_names(CompressionConfig(keep_int8=["lm_head"]), facts)
    check_layer_names(CompressionConfig(keep_float=["lm_head", "model.embed_tokens"]), facts)


def test_patterns_match_only_the_named_layers_nodes() -> None:
    import re

    nodes = [
        "__module.model.layers.1.mlp.down_proj/aten::linear/MatMul",
        "__module.model.layers.11.mlp.down_proj/aten::linear/MatMul",
        "__module.lm_head/aten::linear/MatMul",
    ]
    (pattern,) = ignored_scope_patterns(("model.layers.1.mlp.down_proj",))
    assert [bool(re.match(pattern, node)) for node in nodes] == [True, False, False]
    others = only_these_pattern(("model.layers.1.mlp.down_proj",))
    assert [bool(re.match(others, node)) for node in nodes] == [False, True, True]
    assert not re.match(others, "self.model.layers.1.mlp.down_proj.weight")  # its weight constant
    assert int8_pass_arguments(CompressionConfig()) is None


def test_nodes_named_alike_get_their_own_names_before_the_int8_pass() -> None:
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    from nbkit.compression.nncf_compress import make_names_unique

    data = ops.parameter([2, 2], np.float32, name="x")
    first, second = ops.constant(np.ones((2, 2), np.float32)), ops.constant(np.ones((2, 2), np.float32))
    for node in (first, second):
        node.set_friendly_name("Constant_1")
    model = ov.Model([ops.add(ops.matmul(data, first, False, False), second)], [data])
    assert make_names_unique(model) == 1
    names = [op.get_friendly_name() for op in model.get_ops()]
    assert len(names) == len(set(names)) and "Constant_1" in names
    assert make_names_unique(model) == 0


def test_kept_layers_end_up_float_and_int8_in_the_compressed_model(
    float_model: Any, facts: ArchitectureFacts, tmp_path: Path
) -> None:
    from nbkit.compression.weights import resolve_config

    down, up = f"{FIRST_BLOCK}.mlp.down_proj", f"{FIRST_BLOCK}.mlp.up_proj"
    config = resolve_config(CompressionConfig(keep_float=[down], keep_int8=[up], backup_mode="none"), facts)
    # NumPy kernels (nbkit's choice for small models) name some constants twice: the INT8 pass
    # must cope (make_names_unique).
    compress_folder(Path(float_model.path), tmp_path, config, reporter=ProgressReporter(), kernels="numpy")
    precisions = _layer_precisions(tmp_path / "openvino_model.xml")
    assert precisions[down] == "f32" and precisions[up] == "u8"
    # The INT8 pass touched nothing else: backup layers (none: float) stay float, the rest 4-bit.
    assert precisions["model.embed_tokens"] == "f32"
    rest = {
        name: p for name, p in precisions.items() if name not in (down, up, "model.embed_tokens", "lm_head")
    }
    assert set(rest.values()) == {"i4"}


# -- the CLI, the code shown, the form ------------------------------------------------------------

NEW_CONFIGS = [
    CompressionConfig(group_size=64, lora_correction=True, calibration_samples=8),
    CompressionConfig(mode="nf4", group_size=32, lora_correction=True, awq=True, scale_estimation=True),
    CompressionConfig(keep_float=["lm_head", "model.embed_tokens"], keep_int8=[f"{FIRST_BLOCK}.mlp.up_proj"]),
    CompressionConfig(mode="int8_asym", group_size=None, keep_float=["lm_head", "model.embed_tokens"]),
    *(CompressionConfig(mode=mode) for mode in NEW_FORMATS),
    CompressionConfig(mode="fp4", group_size=32, ratio=0.8, backup_mode="int8_sym"),
]


def _argv(command: str) -> list[str]:
    return shlex.split(command.split("\n#")[0].replace("\\\n", " "))


@pytest.mark.parametrize("config", NEW_CONFIGS, ids=lambda c: c.label)
def test_code_shown_reproduces_the_config(config: CompressionConfig) -> None:
    code = compression_code(config, "my-model")
    args = build_parser().parse_args(_argv(code.cli)[1:])
    assert _compression_config(args) == config
    namespace: dict[str, Any] = {}
    exec(code.python[: code.python.index("float_model =")], namespace)
    assert namespace["config"] == config
    call = code.nncf[code.nncf.index("nncf.compress_weights(") :]
    call = call[: call.index("\n)") + 2]
    namespace = {"dataset": "DATA", "model": "MODEL", "captured": {}}
    exec("import nncf\ndef _capture(model, **kwargs):\n    captured.update(kwargs)\n", namespace)
    exec(call.replace("nncf.compress_weights(", "_capture("), namespace)
    assert namespace["captured"] == nncf_arguments(config, dataset="DATA" if config.is_data_aware else None)
    assert ("compressed = nncf.compress_weights(\n    compressed," in code.nncf) == bool(config.keep_int8)
    optimum = code.optimum_cli
    if config.mode in (
        CompressionMode.FP4,
        CompressionMode.NVFP4,
        CompressionMode.FP8_E4M3,
        CompressionMode.MXFP8_E4M3,
    ):
        assert optimum.startswith(f"# optimum-cli has no --weight-format for {config.mode.value}")
    else:
        argv = _argv(optimum)
        assert ("--lora-correction" in argv) == config.lora_correction
        if config.mode in (CompressionMode.MXFP4, CompressionMode.CB4):
            assert argv[argv.index("--weight-format") + 1] == config.mode.value
        assert ("no flag to keep layers" in optimum) == bool(config.keep_float or config.keep_int8)


def test_cli_flags_make_the_config() -> None:
    argv = [
        "compress",
        "--lora-correction",
        "--keep-float",
        "lm_head, model.embed_tokens",
        "--keep-int8",
        f"{FIRST_BLOCK}.mlp.up_proj",
        "--mode",
        "nf4",
    ]
    config = _compression_config(build_parser().parse_args(argv))
    assert config.lora_correction and config.mode is CompressionMode.NF4
    assert config.keep_float == ("lm_head", "model.embed_tokens")
    assert config.keep_int8 == (f"{FIRST_BLOCK}.mlp.up_proj",)
    sweep = build_parser().parse_args(["sweep", "--lora-correction", "--keep-float", "lm_head"])
    assert sweep.lora_correction and sweep.keep_float == ("lm_head",)
    with pytest.raises(ConfigError, match=r"fp8_e5m2 is not offered: NNCF 3\.4"):
        _compression_config(build_parser().parse_args(["compress", "--mode", "fp8_e5m2"]))


@pytest.fixture
def form(facts: ArchitectureFacts) -> panels.CompressionForm:
    panel = panels.CompressionForm(
        facts, model_spec="/models/tiny", float_xml="/cache/float/openvino_model.xml"
    )
    yield panel
    panel.close()


def test_the_form_offers_lora_correction_where_it_applies(form: panels.CompressionForm) -> None:
    chosen = form.group_size.value = 16
    form.lora_correction.value = True
    assert form.config is not None and form.config.lora_correction and form.config.is_data_aware
    assert not form.calibration_samples.disabled
    assert form.gptq.disabled and "LoRA" in form.gptq.tooltip  # NNCF refuses both together
    form.mode.value = "mxfp4"
    assert form.lora_correction.disabled and "mxfp4" in form.lora_correction.tooltip
    assert form.group_size.disabled and form.config is not None and form.config.group_size == 32
    assert form.group_size.value == 32  # the dropdown shows the size the format uses
    assert not form.config.lora_correction and not form.config.is_data_aware
    form.mode.value = "int4_sym"
    assert form.group_size.value == chosen  # the user's own choice is back
    form.code_toggle.value = True
    assert "--lora-correction" in form.code.value and "lora_correction=True" in form.code.value


def test_the_form_offers_the_models_layers_with_shortcuts(form: panels.CompressionForm) -> None:
    assert list(form.keep_float.allowed_tags) == list(model_layer_names(form.facts))
    buttons = {button.description: button for button in form.shortcuts["keep_float"].children}
    buttons["+ embeddings + LM head (tied)"].click()
    buttons["+ embeddings + LM head (tied)"].click()  # twice adds nothing new
    assert form.config is not None and form.config.keep_float == ("lm_head", "model.embed_tokens")
    int8_buttons = {button.description: button for button in form.shortcuts["keep_int8"].children}
    int8_buttons["+ first block (0)"].click()
    assert form.config is not None and len(form.config.keep_int8) == len(
        layer_shortcuts(form.facts)["first block (0)"]
    )
    assert "float-lm_head+embed_tokens" in form.message.value and "int8-7layers" in form.message.value
    form.mode.value = "int8_asym"
    assert form.keep_int8.disabled and all(b.disabled for b in form.shortcuts["keep_int8"].children)
    assert form.config is not None and form.config.keep_int8 == () and form.config.keep_float
    form.code_toggle.value = True
    assert "ignored_scope=nncf.IgnoredScope" in form.code.value and "--keep-float" in form.code.value


def test_the_form_names_close_matches_for_a_layer_the_model_lacks(form: panels.CompressionForm) -> None:
    form.load(CompressionConfig(keep_float=["model.layers.0.mlp.dwn_proj"]))
    assert form.config is None and "close matches: model.layers.0.mlp.down_proj" in form.problem
    form.load(CompressionConfig(keep_float=[f"{FIRST_BLOCK}.mlp.down_proj"], lora_correction=True))
    assert form.config is not None and form.config.keep_float == (f"{FIRST_BLOCK}.mlp.down_proj",)
    assert form.lora_correction.value


def test_the_form_shows_why_formats_are_not_offered(form: panels.CompressionForm) -> None:
    assert set(form.mode.choices) == {mode.value for mode in CompressionMode}
    for name in NOT_OFFERED_FORMATS:
        assert name in form.not_offered.value


# -- the bar: LoRA correction lowers mean KL on the bundled model --------------------------------


@pytest.mark.integration
def test_lora_correction_lowers_mean_kl_on_the_bundled_model(real_cache: Any) -> None:
    """Same config with and without LoRA correction; only the adapters differ.

    Ratio 0.2 (layers ranked by the data-free weight error in both, so the same layers are
    4-bit) keeps NNCF's adapter fitting, an SVD and least squares per 4-bit layer, short.
    """
    from nbkit import compress, export_openvino
    from nbkit.measure.quality import measure_quality

    float_model = export_openvino("smollm2-135m-instruct", cache=real_cache)
    base = {
        "mode": "int4_sym",
        "group_size": 64,
        "ratio": 0.2,
        "sensitivity_metric": "weight_quantization_error",
    }
    plain = compress(float_model, CompressionConfig(**base), cache=real_cache)
    corrected = compress(
        float_model,
        CompressionConfig(**base, lora_correction=True, calibration_samples=8, calibration_tokens=64),
        cache=real_cache,
    )
    plain_kl = measure_quality(plain, float_model, num_tokens=256).mean_kl
    corrected_kl = measure_quality(corrected, float_model, num_tokens=256).mean_kl
    print(f"mean KL without LoRA correction {plain_kl:.4f}, with {corrected_kl:.4f}")
    assert corrected_kl < plain_kl
    # The same layers are 4-bit in both: the adapters, not a different layer choice, made the difference.
    assert plain.entry.metadata["weight_precisions"]["int4"] == pytest.approx(
        corrected.entry.metadata["weight_precisions"]["int4"], abs=0.01
    )
