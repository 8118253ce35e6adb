"""What NNCF raises becomes an nbkit error that says whose fault it is."""

from __future__ import annotations

from typing import Any

import nncf
import pytest

from nbkit import CompressionConfig
from nbkit.compression import nncf_compress as nncf_compress_module
from nbkit.compression.nncf_compress import nncf_errors
from nbkit.errors import Cancelled, CompressionError, ConfigError, QuantizationError

CONFIG = CompressionConfig(mode="int4_sym", group_size=32)


@pytest.mark.parametrize(
    "refusal", [nncf.ValidationError, nncf.ParameterNotSupportedError, nncf.UnsupportedModelError]
)
def test_what_nncf_refuses_is_a_config_error(refusal: type[Exception]) -> None:
    expected = "NNCF does not support int8-test on this model: no"
    with pytest.raises(ConfigError, match=expected) as caught, nncf_errors("int8-test", QuantizationError):
        raise refusal("no")
    assert isinstance(caught.value.__cause__, refusal)


@pytest.mark.parametrize("failure", [CompressionError, QuantizationError])
def test_anything_else_is_the_given_failure(failure: type[Exception]) -> None:
    expected = r"^NNCF failed on a-config: RuntimeError: boom$"
    with pytest.raises(failure, match=expected), nncf_errors("a-config", failure):  # type: ignore[arg-type]
        raise RuntimeError("boom")


def test_nbkit_errors_pass_through_unchanged() -> None:
    cancelled = Cancelled("stopped by the user")
    with pytest.raises(Cancelled) as caught, nncf_errors("a-config", CompressionError):
        raise cancelled
    assert caught.value is cancelled


def test_a_rejected_group_size_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def reject(model: Any, **arguments: Any) -> None:
        raise nncf.InvalidGroupSizeError("32 does not divide 100")

    monkeypatch.setattr(nncf, "compress_weights", reject)
    with pytest.raises(ConfigError, match="NNCF rejected group_size 32: 32 does not divide 100"):
        nncf_compress_module._run_nncf(object(), CONFIG, {})


def test_a_crash_in_compress_weights_is_a_compression_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(model: Any, **arguments: Any) -> None:
        raise MemoryError("out of memory")

    monkeypatch.setattr(nncf, "compress_weights", crash)
    with pytest.raises(CompressionError, match=f"NNCF failed on {CONFIG.label}: MemoryError: out of memory"):
        nncf_compress_module._run_nncf(object(), CONFIG, {})
