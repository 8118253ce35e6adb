"""Versions of the libraries whose releases change what nbkit builds (they enter cache keys)."""

from __future__ import annotations

import importlib.metadata
import platform
from functools import cache

CONVERSION_LIBRARIES = ("gguf", "tokenizers", "transformers")
EXPORT_LIBRARIES = ("openvino", "openvino-tokenizers", "optimum", "optimum-intel", "transformers", "torch")
COMPRESSION_LIBRARIES = ("openvino", "nncf")


@cache
def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(distributions: tuple[str, ...]) -> dict[str, str | None]:
    return {name: version_of(name) for name in distributions}


def machine_summary() -> dict[str, str]:
    """The machine a speed figure holds for: its host name, processor, platform and Python."""
    return {
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
