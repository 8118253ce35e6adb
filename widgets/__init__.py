"""Jupyter panels for nbkit: pick a model, choose a device, tune the compression, chat: one dashboard.

Every panel is an ipywidgets box whose state lives in traitlets and whose actions are methods
(``prepare()``, ``run()``, ``send()``, ``stop()``, ``cancel()``), so the same panel works in
JupyterLab, in Voila and in a test without a browser. Long work runs in a worker thread.
"""

from __future__ import annotations

from ._worker import BackgroundTask, TaskView
from .chat_pane import ChatPane, openvino_session
from .compression_form import CompressionForm
from .dashboard import Dashboard, dashboard
from .device_selector import DeviceSelector
from .generation_form import GenerationForm
from .model_picker import ModelPicker
from .quantization_tuner import QuantizationTuner

__all__ = [
    "BackgroundTask",
    "ChatPane",
    "CompressionForm",
    "Dashboard",
    "DeviceSelector",
    "GenerationForm",
    "ModelPicker",
    "QuantizationTuner",
    "TaskView",
    "dashboard",
    "openvino_session",
]
