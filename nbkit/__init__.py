"""nbkit: export, compress, measure and chat with small language models on ordinary hardware.

The heavy libraries (OpenVINO, NNCF, optimum-intel, torch) are imported only by the steps
that need them, so ``import nbkit`` stays fast in a notebook.
"""

from __future__ import annotations

__version__ = "0.1.0"

from nbkit.artifacts import OVModel
from nbkit.cli.quickstart import QuickstartReport, quickstart
from nbkit.compression.ptq import quantize
from nbkit.compression.weights import check_compression, compress
from nbkit.config import (
    BackupMode,
    CompressionConfig,
    CompressionMode,
    ExportConfig,
    GenerationSettings,
    GroupSizeFallback,
    QuantizationConfig,
    RuntimeConfig,
    SensitivityMetric,
)
from nbkit.engines.base import Turn, TurnMetrics
from nbkit.engines.openvino.chat import ChatSession
from nbkit.engines.openvino.devices import DeviceInfo, check_device, list_devices
from nbkit.engines.openvino.export import export_openvino
from nbkit.errors import (
    BusyError,
    CacheError,
    Cancelled,
    CompressionError,
    ConfigError,
    ContextLengthError,
    DatasetError,
    DeviceError,
    DiskSpaceError,
    ExportError,
    FinetuneError,
    MissingDependencyError,
    ModelSourceError,
    NbkitError,
    NotebookExecutionError,
    OfflineError,
    OliveExportError,
    OliveRunError,
    QuantizationError,
    WorkerError,
)
from nbkit.finetuning.olive_lora import FinetuneConfig
from nbkit.finetuning.run import FinetuneResult, finetune
from nbkit.infra.cache import Cache, CacheEntry, default_cache_dir
from nbkit.infra.progress import CancelToken, Progress, ProgressBar, ProgressReporter
from nbkit.measure.evaluation import AnswerReport, SizeReport, measure_answers, measure_size
from nbkit.measure.pick import PickResult, Target
from nbkit.measure.quality import QualityReport, measure_quality
from nbkit.measure.speed import SpeedReport, measure_speed
from nbkit.measure.sweep import MeasureSettings, SweepResult, pick, run_sweep
from nbkit.server.options import ServeOptions
from nbkit.server.server import ServerHandle, serve
from nbkit.sources.architecture import ArchitectureFacts, read_architecture
from nbkit.sources.models import DEFAULT_MODEL, ModelSource, resolve_source

__all__ = [
    "DEFAULT_MODEL",
    "AnswerReport",
    "ArchitectureFacts",
    "BackupMode",
    "BusyError",
    "Cache",
    "CacheEntry",
    "CacheError",
    "CancelToken",
    "Cancelled",
    "ChatSession",
    "CompressionConfig",
    "CompressionError",
    "CompressionMode",
    "ConfigError",
    "ContextLengthError",
    "DatasetError",
    "DeviceError",
    "DeviceInfo",
    "DiskSpaceError",
    "ExportConfig",
    "ExportError",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "GenerationSettings",
    "GroupSizeFallback",
    "MeasureSettings",
    "MissingDependencyError",
    "ModelSource",
    "ModelSourceError",
    "NbkitError",
    "NotebookExecutionError",
    "OVModel",
    "OfflineError",
    "OliveExportError",
    "OliveRunError",
    "PickResult",
    "Progress",
    "ProgressBar",
    "ProgressReporter",
    "QualityReport",
    "QuantizationConfig",
    "QuantizationError",
    "QuickstartReport",
    "RuntimeConfig",
    "SensitivityMetric",
    "ServeOptions",
    "ServerHandle",
    "SizeReport",
    "SpeedReport",
    "SweepResult",
    "Target",
    "Turn",
    "TurnMetrics",
    "WorkerError",
    "__version__",
    "check_compression",
    "check_device",
    "compress",
    "default_cache_dir",
    "export_openvino",
    "finetune",
    "list_devices",
    "measure_answers",
    "measure_quality",
    "measure_size",
    "measure_speed",
    "pick",
    "quantize",
    "quickstart",
    "read_architecture",
    "resolve_source",
    "run_sweep",
    "serve",
]
