"""Which kernels NNCF quantizes weights with: NumPy, or small OpenVINO models it compiles.

NNCF 3.x quantizes each weight with an OpenVINO model it builds and compiles for that weight
("optimized compression"), and disables its cache of compiled models while doing so: every
weight pays one ``compile_model``, ~40 ms on a 2-core CPU. For a small LLM that overhead
dominates. On SmolLM2-135M (211 weights of ~0.64 M elements on average) ``cProfile`` showed
8.2 s of a 14.8 s ``compress_weights`` call inside ``compile_model``; NNCF's NumPy kernels
(``NNCF_DISABLE_OPTIMIZED_COMPRESSION``) took 2-3x less time for INT4 sym/asym, ratio < 1 and
INT8, with byte-identical ``.bin`` files (``tests/test_nncf_kernels.py`` checks identity on
every mode and data-aware algorithm). For large weights the compiled kernels are faster (they
use every core), so the choice depends on the mean weight size:

- ``auto`` (default): NumPy when the model's linear layers hold at most
  :data:`NUMPY_UP_TO_ELEMENTS` elements on average, else OpenVINO. The threshold is where the
  two costs per weight met on this machine (compile overhead ~40 ms vs ~20 vs ~60 ns per
  element); it was not measured on larger models.
- ``numpy`` / ``openvino``: forced, through ``NBKIT_NNCF_KERNELS`` or the argument.

Results do not depend on the choice, so it is not part of any cache key.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from nbkit.errors import ConfigError
from nbkit.sources.architecture import ArchitectureFacts

log = logging.getLogger(__name__)

KERNELS_ENV = "NBKIT_NNCF_KERNELS"
NNCF_SWITCH = "NNCF_DISABLE_OPTIMIZED_COMPRESSION"  # read by NNCF at every weight, not at import
NUMPY_UP_TO_ELEMENTS = 1_000_000
CHOICES = ("auto", "numpy", "openvino")


def choose_kernels(facts: ArchitectureFacts | None, requested: str | None = None) -> str:
    """``"numpy"`` or ``"openvino"`` for a model with these facts (see the module docstring)."""
    choice = (requested or os.environ.get(KERNELS_ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise ConfigError(f"{KERNELS_ENV}={choice!r} is not one of {', '.join(CHOICES)}.")
    if choice != "auto":
        return choice
    if facts is None or not facts.linear_layers:
        return "openvino"  # nothing known about the weights: NNCF's own default
    sizes = [layer.in_features * layer.out_features for layer in facts.linear_layers]
    return "numpy" if sum(sizes) / len(sizes) <= NUMPY_UP_TO_ELEMENTS else "openvino"


@contextlib.contextmanager
def nncf_kernels(kernels: str) -> Iterator[None]:
    """Run NNCF weight compression in this process with ``kernels``; restore the switch after.

    The switch is an environment variable of this process, so call this only where one
    compression runs at a time (nbkit's worker processes).
    """
    if kernels not in ("numpy", "openvino"):
        raise ConfigError(f"kernels must be 'numpy' or 'openvino', not {kernels!r}.")
    previous = os.environ.get(NNCF_SWITCH)
    if kernels == "numpy":
        os.environ[NNCF_SWITCH] = "1"
    else:
        os.environ.pop(NNCF_SWITCH, None)
    log.debug("NNCF weight compression with %s kernels", kernels)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(NNCF_SWITCH, None)
        else:
            os.environ[NNCF_SWITCH] = previous
