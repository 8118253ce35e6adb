"""Unit tests for :mod:`nbkit.config`."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from nbkit.config import (
    BackupMode,
    CompressionConfig,
    CompressionMode,
    ExportConfig,
    GenerationSettings,
    GroupSizeFallback,
    RuntimeConfig,
    unavailable_options,
)
from nbkit.errors import ConfigError, NbkitError


def assert_config_error(cls: Any, match: str | None = None, **kwargs: Any) -> ConfigError:
    """``cls(**kwargs)`` raises a ConfigError, which is also a ValueError and an NbkitError."""
    with pytest.raises(ConfigError, match=match) as info:
        cls(**kwargs)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, NbkitError)
    return info.value


# -- CompressionConfig: validation ------------------------------------------------------------


def test_compression_defaults() -> None:
    cfg = CompressionConfig()
    assert cfg.mode is CompressionMode.INT4_SYM
    assert cfg.group_size == "auto"  # resolved per model by CompressionConfig.resolve
    assert cfg.ratio == 1.0
    assert not cfg.is_data_aware
    assert cfg.backup_mode is BackupMode.INT8_ASYM
    assert cfg.group_size_fallback is GroupSizeFallback.ERROR


@pytest.mark.parametrize("ratio", [-0.01, -1, 1.0001, 2, math.inf, -math.inf, math.nan])
def test_ratio_outside_unit_interval_is_rejected(ratio: float) -> None:
    err = assert_config_error(CompressionConfig, match="ratio", ratio=ratio)
    assert "[0, 1]" in str(err)


@pytest.mark.parametrize("ratio", ["0.5", None, True, False, [0.5], b"1"])
def test_non_number_ratio_is_rejected(ratio: Any) -> None:
    assert_config_error(CompressionConfig, match="ratio must be a number", ratio=ratio)


@pytest.mark.parametrize("ratio", [0, 0.0, 0.5, 1, 1.0])
def test_ratio_bounds_are_inclusive_and_stored_as_float(ratio: float) -> None:
    cfg = CompressionConfig(ratio=ratio)
    assert cfg.ratio == ratio
    assert type(cfg.ratio) is float


def test_int_ratio_and_float_ratio_are_the_same_config() -> None:
    assert CompressionConfig(ratio=1) == CompressionConfig(ratio=1.0)
    assert CompressionConfig(ratio=1).fingerprint() == CompressionConfig(ratio=1.0).fingerprint()


@pytest.mark.parametrize("mode", ["int8_sym", "int8_asym", CompressionMode.INT8_ASYM])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int8_with_group_size_is_rejected(mode: str, group_size: int) -> None:
    err = assert_config_error(CompressionConfig, match="group_size", mode=mode, group_size=group_size)
    assert "per-channel" in str(err)


def test_int8_default_group_size_means_per_channel() -> None:
    # The default group_size ("auto") resolves to per-channel for INT8 modes at once.
    assert CompressionConfig(mode="int8_asym").group_size is None
    assert CompressionConfig(mode="int8_asym") == CompressionConfig(mode="int8_asym", group_size=None)


def test_auto_group_size_resolves_to_the_largest_valid_size() -> None:
    assert CompressionConfig().resolve((16, 32, 64)).group_size == 64
    assert CompressionConfig().resolve((16, 32, 64, 128, 256)).group_size == 128
    assert CompressionConfig(group_size=32).resolve((16, 64)).group_size == 32  # explicit sizes stay
    assert_config_error(CompressionConfig().resolve, match="per-channel", valid_group_sizes=())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "int8_asym", "awq": True},
        {"mode": "int8_sym", "gptq": True},
        {"mode": "int8_sym", "scale_estimation": True},
        {"mode": "int8_sym", "sensitivity_metric": "hessian_input_activation"},
        {"awq": True, "gptq": True},
        {"calibration_samples": 0},
        {"calibration_tokens": -5},
        {"sensitivity_metric": "loudness"},
        {"group_size": "big"},
    ],
)
def test_impossible_data_aware_combinations_are_rejected(kwargs: dict[str, Any]) -> None:
    assert_config_error(CompressionConfig, match=".", **kwargs)


def test_data_aware_flag() -> None:
    assert CompressionConfig(awq=True).is_data_aware
    assert CompressionConfig(ratio=0.8, sensitivity_metric="mean_activation_variance").is_data_aware
    assert not CompressionConfig(ratio=0.8, sensitivity_metric="weight_quantization_error").is_data_aware
    # With ratio 1 every layer is 4-bit: no layer is ranked, so the metric needs no data.
    assert not CompressionConfig(ratio=1.0, sensitivity_metric="mean_activation_variance").is_data_aware


@pytest.mark.parametrize("mode", ["int8_sym", "int8_asym"])
def test_int8_with_all_layers_is_rejected(mode: str) -> None:
    err = assert_config_error(CompressionConfig, match="all_layers", mode=mode, all_layers=True)
    assert "already compresses every layer" in str(err)


# -- which options can apply (what panels disable, and why) ---------------------------------


@pytest.mark.parametrize("mode", ["int8_sym", "int8_asym"])
def test_int8_leaves_only_the_mode(mode: str) -> None:
    reasons = unavailable_options(mode)
    assert set(reasons) == {
        "group_size",
        "ratio",
        "all_layers",
        "backup_mode",
        "awq",
        "scale_estimation",
        "gptq",
        "lora_correction",
        "sensitivity_metric",
        "keep_int8",
        "calibration",
    }
    assert "per-channel" in reasons["group_size"] and mode in reasons["awq"]


def test_awq_and_gptq_disable_each_other_with_the_way_out() -> None:
    assert "turn AWQ off" in unavailable_options("int4_sym", awq=True)["gptq"]
    assert "turn GPTQ off" in unavailable_options("int4_sym", gptq=True)["awq"]
    assert "awq" not in unavailable_options("int4_sym", awq=True, scale_estimation=True)


def test_the_metric_and_backup_mode_need_layers_outside_the_4_bit_mode() -> None:
    assert "ratio < 1" in unavailable_options("int4_sym", ratio=1.0)["sensitivity_metric"]
    assert "sensitivity_metric" not in unavailable_options("int4_sym", ratio=0.8)
    assert "backup_mode" not in unavailable_options("int4_sym", ratio=1.0)  # embeddings, last layer
    assert "backup_mode" in unavailable_options("int4_sym", ratio=1.0, all_layers=True)
    assert "backup_mode" not in unavailable_options("int4_sym", ratio=0.9, all_layers=True)


def test_calibration_is_available_exactly_when_the_config_is_data_aware() -> None:
    for kwargs in (
        {},
        {"awq": True},
        {"scale_estimation": True},
        {"gptq": True},
        {"ratio": 0.8, "sensitivity_metric": "hessian_input_activation"},
        {"ratio": 0.8, "sensitivity_metric": "weight_quantization_error"},
        {"ratio": 1.0, "sensitivity_metric": "hessian_input_activation"},
    ):
        data_aware = CompressionConfig(**kwargs).is_data_aware
        assert ("calibration" not in unavailable_options("int4_sym", **kwargs)) == data_aware, kwargs


@pytest.mark.parametrize("mode", [m.value for m in CompressionMode])
@pytest.mark.parametrize("ratio", [1.0, 0.8])
@pytest.mark.parametrize("all_layers", [False, True])
@pytest.mark.parametrize(("awq", "gptq"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("metric", [None, "mean_activation_variance"])
def test_every_value_left_enabled_makes_a_valid_config(
    mode: str, ratio: float, all_layers: bool, awq: bool, gptq: bool, metric: str | None
) -> None:
    """What a panel builds: disabled options at their defaults, enabled ones as set. Never an error."""
    wanted = {
        "ratio": ratio,
        "all_layers": all_layers,
        "awq": awq,
        "scale_estimation": True,
        "gptq": gptq,
        "sensitivity_metric": metric,
        "group_size": 64,
    }
    reasons = unavailable_options(mode, **{k: v for k, v in wanted.items() if k != "group_size"})
    defaults = CompressionConfig()
    fields = {k: (getattr(defaults, k) if k in reasons else v) for k, v in wanted.items()}
    if "group_size" in reasons:  # per-channel for INT8, the format's own size otherwise (as the form does)
        fields["group_size"] = None if CompressionMode(mode).is_int8 else "auto"
    CompressionConfig(mode=mode, **fields)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.99])
def test_int8_with_ratio_below_one_is_rejected(ratio: float) -> None:
    err = assert_config_error(CompressionConfig, match="ratio", mode="int8_sym", group_size=None, ratio=ratio)
    assert "4-bit" in str(err)


@pytest.mark.parametrize("group_size", [None, -1])
def test_int8_per_channel_is_valid(group_size: int | None) -> None:
    cfg = CompressionConfig(mode="int8_asym", group_size=group_size)
    assert cfg.mode.is_int8
    assert cfg.group_size is None
    assert cfg.ratio == 1.0


@pytest.mark.parametrize("group_size", [0, -2, -64])
def test_zero_or_negative_group_size_is_rejected(group_size: int) -> None:
    assert_config_error(CompressionConfig, match="group_size must be a positive", group_size=group_size)


@pytest.mark.parametrize("group_size", ["64", 64.0, True])
def test_non_integer_group_size_is_rejected(group_size: Any) -> None:
    assert_config_error(CompressionConfig, match="group_size", group_size=group_size)


@pytest.mark.parametrize("mode", ["int4_sym", "int4_asym", "nf4"])
def test_group_size_minus_one_means_per_channel(mode: str) -> None:
    cfg = CompressionConfig(mode=mode, group_size=-1)
    assert cfg.group_size is None
    assert cfg == CompressionConfig(mode=mode, group_size=None)
    assert cfg.fingerprint() == CompressionConfig(mode=mode, group_size=None).fingerprint()


@pytest.mark.parametrize("mode", ["int2", "int4", "fp8", "", "int4_sym "])
def test_unknown_mode_lists_the_valid_modes(mode: str) -> None:
    err = assert_config_error(CompressionConfig, mode=mode)
    message = str(err)
    assert repr(mode) in message
    for valid in CompressionMode:
        assert valid.value in message


@pytest.mark.parametrize("mode", [None, 4])
def test_non_string_mode_is_a_config_error(mode: Any) -> None:
    assert_config_error(CompressionConfig, match="compression mode", mode=mode)


@pytest.mark.parametrize(
    ("field", "value"),
    [("backup_mode", "int16"), ("group_size_fallback", "skip")],
)
def test_unknown_enum_fields_list_the_valid_values(field: str, value: str) -> None:
    err = assert_config_error(CompressionConfig, **{field: value})
    enum_type = {"backup_mode": BackupMode, "group_size_fallback": GroupSizeFallback}[field]
    for valid in enum_type:
        assert valid.value in str(err)


# -- CompressionConfig: normalization, equality, fingerprint --------------------------------


@pytest.mark.parametrize(
    "spelling", ["int4_sym", "INT4_SYM", "int4-sym", "Int4-Sym", CompressionMode.INT4_SYM]
)
def test_mode_strings_normalize_to_enums(spelling: Any) -> None:
    cfg = CompressionConfig(mode=spelling)
    reference = CompressionConfig(mode=CompressionMode.INT4_SYM)
    assert cfg.mode is CompressionMode.INT4_SYM
    assert cfg == reference
    assert hash(cfg) == hash(reference)
    assert cfg.fingerprint() == reference.fingerprint()


def test_enum_fields_normalize_from_strings() -> None:
    from_strings = CompressionConfig(mode="int4_asym", backup_mode="none", group_size_fallback="adjust")
    from_enums = CompressionConfig(
        mode=CompressionMode.INT4_ASYM,
        backup_mode=BackupMode.NONE,
        group_size_fallback=GroupSizeFallback.ADJUST,
    )
    assert from_strings.backup_mode is BackupMode.NONE
    assert from_strings.group_size_fallback is GroupSizeFallback.ADJUST
    assert from_strings == from_enums
    assert from_strings.fingerprint() == from_enums.fingerprint()


def test_fingerprint_is_a_deterministic_sha256() -> None:
    fp = CompressionConfig().fingerprint()
    assert len(fp) == 64
    assert int(fp, 16) >= 0
    assert fp == CompressionConfig().fingerprint()
    assert fp == CompressionConfig(mode="int4_sym", group_size="auto", ratio=1).fingerprint()
    assert fp != CompressionConfig(group_size=64).fingerprint()


COMPRESSION_CHANGES: dict[str, Any] = {
    "mode": "int4_asym",
    "group_size": 128,
    "ratio": 0.8,
    "all_layers": True,
    "backup_mode": "int8_sym",
    "group_size_fallback": "ignore",
    "awq": True,
    "scale_estimation": True,
    "gptq": True,
    "sensitivity_metric": "mean_activation_magnitude",
    "calibration_samples": 8,
    "calibration_tokens": 64,
    "lora_correction": True,
    "keep_float": ("lm_head",),
    "keep_int8": ("model.layers.0.mlp.down_proj",),
}


def test_compression_changes_cover_every_field() -> None:
    assert set(COMPRESSION_CHANGES) == {f.name for f in dataclasses.fields(CompressionConfig)}


@pytest.mark.parametrize(("field", "value"), COMPRESSION_CHANGES.items())
def test_any_compression_field_change_changes_fingerprint(field: str, value: Any) -> None:
    base = CompressionConfig()
    changed = CompressionConfig(**{field: value})
    assert changed != base
    assert changed.fingerprint() != base.fingerprint()


def test_fingerprints_of_many_configs_are_distinct() -> None:
    configs = {
        CompressionConfig(mode=mode, group_size=group, ratio=ratio)
        for mode in ("int4_sym", "int4_asym", "nf4")
        for group in (None, 32, 64, 128)
        for ratio in (0.5, 0.8, 1.0)
    }
    configs |= {CompressionConfig(mode=mode, group_size=None) for mode in ("int8_sym", "int8_asym")}
    assert len(configs) == 3 * 4 * 3 + 2
    assert len({c.fingerprint() for c in configs}) == len(configs)


def test_fingerprint_includes_the_type() -> None:
    @dataclasses.dataclass(frozen=True)
    class OtherExport(ExportConfig):
        pass

    # Same fields, same values, different type: different cache entries.
    assert OtherExport().to_dict() == ExportConfig().to_dict()
    assert OtherExport().fingerprint() != ExportConfig().fingerprint()


def test_to_dict_is_plain_json() -> None:
    cfg = CompressionConfig(mode="nf4", group_size=None, ratio=0.5, backup_mode="none")
    data = cfg.to_dict()
    assert data == {
        "mode": "nf4",
        "group_size": None,
        "ratio": 0.5,
        "all_layers": False,
        "backup_mode": "none",
        "group_size_fallback": "error",
        "awq": False,
        "scale_estimation": False,
        "gptq": False,
        "sensitivity_metric": None,
        "calibration_samples": 32,
        "calibration_tokens": 128,
    }
    assert json.loads(json.dumps(data)) == data
    assert CompressionConfig(**data) == cfg


# -- hashable and frozen ----------------------------------------------------------------------

# Factories, not instances: a broken config class fails its own tests, not the whole module's collection.
CONFIG_FACTORIES: dict[str, Callable[[], Any]] = {
    "ExportConfig": lambda: ExportConfig(weight_format="fp16"),
    "CompressionConfig": lambda: CompressionConfig(mode="int4_asym", ratio=0.8),
    "GenerationSettings": lambda: GenerationSettings(max_new_tokens=32, seed=7),
    "RuntimeConfig": lambda: RuntimeConfig.create("GPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}),
}


@pytest.mark.parametrize("make", CONFIG_FACTORIES.values(), ids=CONFIG_FACTORIES.keys())
def test_configs_are_hashable_and_usable_as_keys(make: Callable[[], Any]) -> None:
    cfg, twin = make(), make()
    assert twin is not cfg
    assert twin == cfg
    assert hash(twin) == hash(cfg)
    assert {cfg: "a", twin: "b"} == {cfg: "b"}
    assert twin.fingerprint() == cfg.fingerprint()
    assert dataclasses.replace(cfg) == cfg


@pytest.mark.parametrize("make", CONFIG_FACTORIES.values(), ids=CONFIG_FACTORIES.keys())
def test_configs_are_frozen(make: Callable[[], Any]) -> None:
    cfg = make()
    first_field = dataclasses.fields(cfg)[0].name
    before = getattr(cfg, first_field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, first_field, before)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.new_attribute = 1
    assert getattr(cfg, first_field) == before


def test_replace_revalidates() -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(CompressionConfig(), ratio=1.5)


# -- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({}, "int4_sym-gauto-r1"),
        ({"group_size": 64}, "int4_sym-g64-r1"),
        ({"group_size": 64, "ratio": 0.8}, "int4_sym-g64-r0.8"),
        ({"group_size": 64, "awq": True, "scale_estimation": True}, "int4_sym-g64-r1-awq-se-cal32x128"),
        ({"mode": "int4_asym", "group_size": 128, "ratio": 0.75}, "int4_asym-g128-r0.75"),
        ({"group_size": None}, "int4_sym-per-channel-r1"),
        ({"mode": "nf4", "group_size": -1, "ratio": 0.5}, "nf4-per-channel-r0.5"),
        ({"mode": "int8_sym", "group_size": None}, "int8_sym"),
        ({"mode": "int8_asym", "group_size": None}, "int8_asym"),
        ({"group_size": 64, "ratio": 0.8, "backup_mode": "none"}, "int4_sym-g64-r0.8-backup-none"),
        ({"group_size": 64, "backup_mode": "int8_sym"}, "int4_sym-g64-r1-backup-int8_sym"),
        ({"group_size": 64, "all_layers": True}, "int4_sym-g64-r1-all-layers"),
        ({"group_size": 64, "group_size_fallback": "adjust"}, "int4_sym-g64-r1-fallback-adjust"),
        (
            {"mode": "int4_asym", "group_size": 32, "all_layers": True, "group_size_fallback": "ignore"},
            "int4_asym-g32-r1-all-layers-fallback-ignore",
        ),
    ],
)
def test_labels(kwargs: dict[str, Any], label: str) -> None:
    assert CompressionConfig(**kwargs).label == label


# -- GenerationSettings -----------------------------------------------------------------------


def test_generation_defaults_are_valid() -> None:
    settings = GenerationSettings()
    assert settings.max_new_tokens >= 1
    assert 0 <= settings.min_new_tokens <= settings.max_new_tokens


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -5}, "max_new_tokens"),
        ({"max_new_tokens": 10, "min_new_tokens": 11}, "min_new_tokens"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ],
)
def test_invalid_generation_settings(kwargs: dict[str, Any], match: str) -> None:
    assert_config_error(GenerationSettings, match=match, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 1},
        {"max_new_tokens": 10, "min_new_tokens": 10},
        {"temperature": 1e-6},
        {"top_p": 1.0},
        {"top_p": 1e-9},
        {"top_k": 0},
        {"repetition_penalty": 0.5},
        {"do_sample": True, "seed": 42},
    ],
)
def test_generation_boundaries_are_valid(kwargs: dict[str, Any]) -> None:
    settings = GenerationSettings(**kwargs)
    for name, value in kwargs.items():
        assert getattr(settings, name) == value


def test_any_generation_field_change_changes_fingerprint() -> None:
    changes: dict[str, Any] = {
        "max_new_tokens": 64,
        "min_new_tokens": 1,
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "seed": 0,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(GenerationSettings)}
    base = GenerationSettings()
    changed = {GenerationSettings(**{k: v}).fingerprint() for k, v in changes.items()}
    fingerprints = {base.fingerprint()} | changed
    assert len(fingerprints) == len(changes) + 1


@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty"])
def test_equal_generation_settings_have_equal_fingerprints(field: str) -> None:
    as_int, as_float = GenerationSettings(**{field: 1}), GenerationSettings(**{field: 1.0})
    assert as_int == as_float
    assert as_int.fingerprint() == as_float.fingerprint()


# -- RuntimeConfig ----------------------------------------------------------------------------


def test_runtime_create_sorts_properties() -> None:
    cfg = RuntimeConfig.create("CPU", {"b": 2, "a": "x", "c": True})
    assert cfg.properties == (("a", "x"), ("b", 2), ("c", True))
    assert cfg.property_dict == {"a": "x", "b": 2, "c": True}


def test_runtime_equal_dicts_give_equal_configs() -> None:
    a = RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 4})
    b = RuntimeConfig.create("CPU", {"INFERENCE_NUM_THREADS": 4, "PERFORMANCE_HINT": "LATENCY"})
    assert a == b
    assert hash(a) == hash(b)
    assert a.fingerprint() == b.fingerprint()


def test_runtime_direct_construction_is_normalized_too() -> None:
    direct = RuntimeConfig(properties=(("b", 2), ("a", 1)))  # type: ignore[arg-type]
    listed = RuntimeConfig(properties=[["a", 1], ["b", 2]])  # type: ignore[arg-type]
    created = RuntimeConfig.create(properties={"a": 1, "b": 2})
    assert direct == listed == created
    assert hash(listed) == hash(created)
    assert direct.fingerprint() == listed.fingerprint() == created.fingerprint()


def test_runtime_defaults() -> None:
    cfg = RuntimeConfig.create()
    assert cfg == RuntimeConfig()
    assert cfg.device == "CPU"
    assert cfg.property_dict == {}


@pytest.mark.parametrize(
    "other",
    [
        RuntimeConfig.create("GPU", {"PERFORMANCE_HINT": "LATENCY"}),
        RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "THROUGHPUT"}),
        RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}),
        RuntimeConfig.create("CPU", {"performance_hint": "LATENCY"}),
        RuntimeConfig.create("CPU"),
    ],
)
def test_runtime_any_change_changes_fingerprint(other: RuntimeConfig) -> None:
    base = RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "LATENCY"})
    assert other != base
    assert other.fingerprint() != base.fingerprint()


@pytest.mark.parametrize("device", ["", None, 0])
def test_runtime_rejects_empty_device(device: Any) -> None:
    assert_config_error(RuntimeConfig, match="device", device=device)


# -- ExportConfig -----------------------------------------------------------------------------


@pytest.mark.parametrize("weight_format", ["fp32", "fp16"])
def test_export_float_formats_are_valid(weight_format: str) -> None:
    assert ExportConfig(weight_format=weight_format).weight_format == weight_format


def test_export_default_is_fp32() -> None:
    assert ExportConfig().weight_format == "fp32"


@pytest.mark.parametrize("weight_format", ["int8", "int4", "bf16", "", None])
def test_export_rejects_other_formats(weight_format: Any) -> None:
    err = assert_config_error(ExportConfig, match="weight_format", weight_format=weight_format)
    assert "CompressionConfig" in str(err)


def test_export_formats_have_distinct_fingerprints() -> None:
    fp32, fp16 = ExportConfig(weight_format="fp32"), ExportConfig(weight_format="fp16")
    assert fp32.fingerprint() != fp16.fingerprint()
    assert ExportConfig().fingerprint() == ExportConfig(weight_format="fp32").fingerprint()
