"""NNCF's NumPy and OpenVINO quantization kernels: the choice, the switch, and identical results.

nbkit picks NNCF's NumPy kernels for small models because they are faster there
(:mod:`nbkit.compression.nncf_kernels`); that is only allowed because the result is the same bytes. The
first identity test uses a synthetic OpenVINO model whose weights are big enough for NNCF's
compiled kernels (>= 10,000 elements, NNCF's threshold; the tiny test LLM's are not); the
integration test compares whole compressed SmolLM2 IRs, data-aware configs included.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from markers import needs_smollm2

import nbkit
from nbkit import Cache, CompressionConfig
from nbkit.compression.nncf_compress import nncf_arguments
from nbkit.compression.nncf_kernels import (
    KERNELS_ENV,
    NNCF_SWITCH,
    NUMPY_UP_TO_ELEMENTS,
    choose_kernels,
    nncf_kernels,
)
from nbkit.errors import ConfigError
from nbkit.infra.worker import Worker
from nbkit.sources.architecture import ArchitectureFacts, LinearLayer


def _facts(*layers: tuple[int, int]) -> ArchitectureFacts:
    return ArchitectureFacts(
        model_type="llama",
        num_layers=1,
        hidden_size=layers[0][1],
        num_parameters=sum(o * i for o, i in layers),
        context_length=512,
        tie_word_embeddings=True,
        linear_layers=tuple(LinearLayer(f"layer{n}", o, i) for n, (o, i) in enumerate(layers)),
    )


SMALL = _facts((576, 576), (1536, 576), (576, 1536))  # SmolLM2-135M's shapes: ~0.6 M elements
LARGE = _facts((4096, 4096), (11008, 4096), (4096, 11008))  # a 7B model's shapes


def test_auto_picks_numpy_for_small_weights_and_openvino_for_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert choose_kernels(SMALL) == "numpy"
    assert choose_kernels(LARGE) == "openvino"
    assert choose_kernels(None) == "openvino"  # nothing known: NNCF's own default
    edge = int(NUMPY_UP_TO_ELEMENTS**0.5)
    assert choose_kernels(_facts((edge, edge))) == "numpy"
    assert choose_kernels(_facts((edge + 1, edge + 1))) == "openvino"


def test_the_choice_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KERNELS_ENV, "openvino")
    assert choose_kernels(SMALL) == "openvino"
    monkeypatch.setenv(KERNELS_ENV, " NumPy ")
    assert choose_kernels(LARGE) == "numpy"
    assert choose_kernels(LARGE, "openvino") == "openvino"  # the argument wins over the variable
    monkeypatch.setenv(KERNELS_ENV, "gpu")
    with pytest.raises(ConfigError, match="NBKIT_NNCF_KERNELS='gpu' is not one of auto, numpy, openvino"):
        choose_kernels(SMALL)


@pytest.mark.parametrize("before", [None, "1"])
def test_the_switch_is_restored_even_after_an_error(
    before: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if before is None:
        monkeypatch.delenv(NNCF_SWITCH, raising=False)
    else:
        monkeypatch.setenv(NNCF_SWITCH, before)
    with nncf_kernels("numpy"):
        assert os.environ[NNCF_SWITCH] == "1"
    assert os.environ.get(NNCF_SWITCH) == before
    with pytest.raises(RuntimeError), nncf_kernels("openvino"):
        assert NNCF_SWITCH not in os.environ
        raise RuntimeError("NNCF failed")
    assert os.environ.get(NNCF_SWITCH) == before
    with pytest.raises(ConfigError, match="'numpy' or 'openvino'"), nncf_kernels("cuda"):
        pass


def _synthetic_model() -> object:
    """Three MatMuls with 128x256 .. 256x512 float weights (above NNCF's 10,000-element threshold)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 4, 256], np.float32, name="x")
    h = ops.matmul(x, ops.constant(rng.standard_normal((512, 256)).astype(np.float32)), False, True)
    h = ops.matmul(h, ops.constant(rng.standard_normal((256, 512)).astype(np.float32)), False, True)
    y = ops.matmul(h, ops.constant(rng.standard_normal((128, 256)).astype(np.float32)), False, True)
    return ov.Model([y], [x], "synthetic")


def _compressed_constants(config: CompressionConfig, kernels: str) -> str:
    import nncf

    with nncf_kernels(kernels):
        model = nncf.compress_weights(_synthetic_model(), **nncf_arguments(config))
    digest = hashlib.sha256()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            digest.update(op.get_output_element_type(0).get_type_name().encode())
            digest.update(np.ascontiguousarray(op.get_data()).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize(
    "config",
    [
        CompressionConfig(mode="int4_sym", group_size=64),
        CompressionConfig(mode="int4_asym", group_size=32, ratio=0.6),
        CompressionConfig(mode="int4_sym", group_size=None, all_layers=True),
        CompressionConfig(mode="nf4", group_size=64),
        CompressionConfig(mode="int8_asym"),
        CompressionConfig(mode="int8_sym"),
    ],
    ids=lambda c: c.label,
)
def test_both_kernels_write_the_same_constants(
    config: CompressionConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nncf.openvino.optimized_functions.models as compiled

    compiles: list[str] = []
    original = compiled._compile_ov_model

    def counting(*args: object, **kwargs: object) -> object:
        compiles.append(kernels)
        return original(*args, **kwargs)

    monkeypatch.setattr(compiled, "_compile_ov_model", counting)
    results = {}
    for kernels in ("numpy", "openvino"):
        results[kernels] = _compressed_constants(config, kernels)
    # Each kernel really ran: compiled models per weight only with "openvino" (NF4 compiles a
    # few for its float rounding either way).
    assert compiles.count("openvino") > compiles.count("numpy")
    assert results["numpy"] == results["openvino"]


@pytest.mark.integration
@needs_smollm2
def test_smollm2_compressed_with_either_kernel_is_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_cache: Cache
) -> None:
    """The bundled model, data-free and data-aware: the same .bin, byte for byte.

    Two configs of the real model (mixed INT4/INT8 by ratio, and AWQ with scale estimation) are
    enough here: every mode's identity is checked on the synthetic model above, for a fraction of
    the suite's time."""
    float_model = nbkit.export_openvino(nbkit.DEFAULT_MODEL, cache=real_cache)
    configs = [
        CompressionConfig(mode="int4_sym", group_size=64, ratio=0.8),
        CompressionConfig(
            mode="int4_sym",
            group_size=64,
            awq=True,
            scale_estimation=True,
            calibration_samples=4,
            calibration_tokens=64,
        ),
    ]
    digests: dict[str, list[str]] = {}
    for kernels in ("numpy", "openvino"):
        monkeypatch.setenv(KERNELS_ENV, kernels)
        cache = Cache(tmp_path / kernels)
        with Worker() as worker:
            models = [nbkit.compress(float_model, c, cache=cache, worker=worker) for c in configs]
        assert {m.entry.metadata["nncf_kernels"] for m in models} == {kernels}
        digests[kernels] = [
            hashlib.sha256((m.path / "openvino_model.bin").read_bytes()).hexdigest() for m in models
        ]
    assert digests["numpy"] == digests["openvino"]
