"""Jupyter panels for nbkit: pick a model, choose a device, tune with either engine, chat: one dashboard.

Every panel is a :class:`Panel` (an ipywidgets box whose ``close()`` undoes all its wiring)
whose state lives in traitlets and whose actions are methods (``prepare()``, ``run()``,
``sweep()``, ``choose()``, ``send()``, ``stop()``, ``cancel()``), so the same panel works in
JupyterLab, in Voila and in a test without a browser. Long work runs in a worker thread. The
panels call the core and render what it returns: engines come from
:mod:`nbkit.engines.registry`, runtimes from the engines' tuned defaults unless picked.
"""

from __future__ import annotations

from ._panel import Panel
from ._worker import BackgroundTask, TaskView
from .chat_pane import ChatPane, engine_session, openvino_session
from .compression_form import CompressionForm
from .dashboard import Dashboard, dashboard
from .device_selector import DeviceSelector
from .generation_form import GenerationForm
from .model_picker import ModelPicker
from .olive_form import OliveForm
from .quantization_tuner import QuantizationTuner

__all__ = [
    "BackgroundTask",
    "ChatPane",
    "CompressionForm",
    "Dashboard",
    "DeviceSelector",
    "GenerationForm",
    "ModelPicker",
    "OliveForm",
    "Panel",
    "QuantizationTuner",
    "TaskView",
    "dashboard",
    "engine_session",
    "openvino_session",
]
