"""nbkit's measures as an Olive ``custom`` metric: the ``user_script`` Olive loads by file path.

An Olive workflow names this file in a metric's ``user_config``::

    {"name": "nbkit", "type": "custom",
     "sub_types": [{"name": "kl", "priority": 1, "higher_is_better": false},
                   {"name": "decode_tps", "priority": 2, "higher_is_better": true},
                   {"name": "top1", "priority": 3, "higher_is_better": true}],
     "user_config": {"user_script": "<this file>", "evaluate_func": "nbkit_metric",
                     "evaluate_func_kwargs": {"reference": "<float model folder>", ...}}}

Olive calls :func:`nbkit_metric` with each candidate model it built, and ranks and searches on
what it returns: the mean KL divergence and top-1 agreement against the float reference
(:func:`nbkit.measure.quality.measure_quality`) and the decode speed
(:func:`nbkit.measure.speed.measure_speed`), the same measures as nbkit's sweep.

Olive imports this file as a stand-alone module, so it imports nbkit lazily, inside the function:
loading it costs nothing until Olive evaluates a model. On olive-ai 0.13.0 a workflow with a
custom metric runs only with :mod:`nbkit.engines.ort.olive_patches` applied.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("nbkit.measure.olive_metric")

EVALUATE_FUNC = "nbkit_metric"
SUB_TYPES = ("kl", "decode_tps", "top1")  # what nbkit_metric returns, by Olive's sub-type name


def model_folder(model: Any) -> Path:
    """The folder of an Olive model handler (its ``model_path`` names the ``.onnx`` file or the folder)."""
    path = Path(str(model.model_path))
    return path.parent if path.is_file() else path


def nbkit_metric(
    model: Any,
    device: Any,
    execution_providers: Any,
    reference: str,
    num_tokens: int = 512,
    window: int = 128,
    new_tokens: int = 64,
    repeats: int = 3,
    isolated: bool = True,
) -> dict[str, float]:
    """KL and top-1 agreement of ``model`` against ``reference``, and its decode tokens/s.

    ``model`` is the Olive model handler of a candidate, ``device`` and ``execution_providers``
    what Olive evaluates on (nbkit measures on the CPU, the one device this workflow targets).
    ``num_tokens``/``window`` are :func:`~nbkit.measure.quality.measure_quality`'s,
    ``new_tokens``/``repeats``/``isolated`` :func:`~nbkit.measure.speed.measure_speed`'s: with
    the same values as a sweep's :class:`~nbkit.measure.sweep.MeasureSettings`, the numbers are
    the sweep's.
    """
    from nbkit.measure.quality import measure_quality
    from nbkit.measure.speed import measure_speed

    folder = model_folder(model)
    started = time.perf_counter()
    quality = measure_quality(folder, reference, num_tokens=num_tokens, window=window, device="CPU")
    speed = measure_speed(folder, new_tokens=new_tokens, repeats=repeats, isolated=isolated)
    log.info(
        "nbkit metric of %s on %s %s: KL %.4g, top-1 %.3f, %.1f tokens/s (%.1f s)",
        folder,
        device,
        execution_providers,
        quality.mean_kl,
        quality.top1_agreement,
        speed.tokens_per_s,
        time.perf_counter() - started,
    )
    return {"kl": quality.mean_kl, "top1": quality.top1_agreement, "decode_tps": speed.tokens_per_s}


__all__ = ["EVALUATE_FUNC", "SUB_TYPES", "model_folder", "nbkit_metric"]
