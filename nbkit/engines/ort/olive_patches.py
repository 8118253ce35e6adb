"""Fixes for three olive-ai 0.13.0 bugs that stop every workflow with a ``custom`` metric.

Olive's documented way to score candidates with your own function is a ``custom`` metric with a
``user_script`` and an ``evaluate_func``. In olive-ai 0.13.0 such a workflow cannot run:

1. ``Metric.serialize_backend`` calls ``None.model_dump()`` (a custom metric has no backend),
   and ``SubMetric.serialize_metric_config`` does the same for a custom sub-type's missing
   ``metric_config``; both fail in ``run_config.to_json()`` before any pass runs
   (``PydanticSerializationError: ... 'NoneType' object has no attribute 'model_dump'``).
2. ``Metric.user_config`` is declared as the base ``ConfigBase``, so pydantic 2 dumps it as ``{}``:
   the engine's dump/re-validate round trip drops ``user_script`` and ``evaluate_func``
   ("evaluate_func or metric_func is not specified in the metric config").

A fourth bug has a config workaround rather than a patch: an evaluator without ``"type"`` makes
``olive run`` crash in ``find_all_resources`` (``'NoneType' object has no attribute 'lower'``), so
nbkit's configs always say ``"type": "OnnxEvaluator"``.

:func:`apply_olive_patches` fixes 1 and 2 in this process only, and only on the Olive release they
were found in (a later release is left alone: it may have fixed them differently). The module also
runs as Olive's command line with the fixes applied, for configs you run yourself::

    python -m nbkit.engines.ort.olive_patches run --config search.json
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

log = logging.getLogger(__name__)

PATCHED_RELEASE = "0.13.0"
_applied = False


def _serialize_backend(self: Any, backend: Any) -> Any:
    return backend if backend is None or isinstance(backend, str) else backend.model_dump()


def _serialize_metric_config(self: Any, metric_config: Any) -> Any:
    return None if metric_config is None else metric_config.model_dump()


def apply_olive_patches() -> bool:
    """Patch Olive's metric serialization in this process; True when the patches are (now) in place."""
    global _applied
    if _applied:
        return True
    release = importlib.metadata.version("olive-ai")
    if release != PATCHED_RELEASE:
        log.info(
            "olive-ai %s is not %s: its metric serialization is left as it is.", release, PATCHED_RELEASE
        )
        return False
    from olive.common.config_utils import ConfigBase
    from olive.evaluator.metric import Metric, SubMetric

    # pydantic-core keeps the original function objects of field serializers, so replacing the
    # class attributes would change nothing: swap the code of those functions instead.
    Metric.serialize_backend.__code__ = _serialize_backend.__code__
    SubMetric.serialize_metric_config.__code__ = _serialize_metric_config.__code__
    original_dump = ConfigBase.model_dump

    def model_dump_as_any(self: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("serialize_as_any", True)  # dump a field's real subclass, not its declared base
        return original_dump(self, **kwargs)

    ConfigBase.model_dump = model_dump_as_any  # type: ignore[method-assign]
    _applied = True
    return True


def main(argv: list[str] | None = None) -> None:
    """Olive's command line with :func:`apply_olive_patches` applied first."""
    apply_olive_patches()
    from olive.cli.launcher import main as olive_main

    olive_main(argv, called_as_console_script=False)


if __name__ == "__main__":
    main()


__all__ = ["PATCHED_RELEASE", "apply_olive_patches", "main"]
