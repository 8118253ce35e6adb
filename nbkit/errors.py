"""The exceptions nbkit raises.

Every error a user can cause (bad path, impossible config, unknown device, offline hub id,
prompt too long, ...) is an :class:`NbkitError` whose message is one actionable sentence.
The CLI prints that sentence and exits non-zero; panels show it. Anything else that escapes
is a bug in nbkit.
"""

from __future__ import annotations

from pathlib import Path


class NbkitError(Exception):
    """Base class of every error nbkit raises on purpose."""


class ModelSourceError(NbkitError):
    """The model cannot be found or read (missing path, unknown name, unsupported file)."""


class OfflineError(ModelSourceError):
    """A hub id was asked for while the model hub is not reachable."""


class MissingDependencyError(NbkitError):
    """An optional package is needed; the message says what to install."""


class ConfigError(NbkitError, ValueError):
    """A configuration is impossible (invalid group size, ratio outside [0, 1], ...)."""


class DeviceError(NbkitError):
    """The device is unknown to OpenVINO or cannot run the model."""


class CacheError(NbkitError):
    """The cache is unusable (not writable, entry damaged, locked too long)."""


class DiskSpaceError(CacheError):
    """The disk holding the cache has too little room for a build (checked before, or it ran out)."""


class ContextLengthError(NbkitError):
    """The prompt does not fit in the model's context window."""


class Cancelled(NbkitError):
    """A long operation was cancelled through its :class:`~nbkit.infra.progress.CancelToken`."""


class ExportError(NbkitError):
    """optimum-intel could not export the model."""


class CompressionError(NbkitError):
    """NNCF failed on a config that passed nbkit's checks."""


class QuantizationError(NbkitError):
    """NNCF failed to quantize a model that passed nbkit's checks."""


class OliveExportError(NbkitError):
    """Olive ran but did not produce an ONNX Runtime GenAI model."""


class OliveRunError(NbkitError):
    """An Olive workflow or command (search, recipe, OpenVINO passes, auto-opt) wrote no output model.

    Olive logs a failed pass and still exits 0 ("No output model produced"), so nbkit checks the
    output and raises this with the pass's own error.
    """


class FinetuneError(NbkitError):
    """Fine-tuning cannot start (bad dataset, impossible settings) or produced no model."""


class DatasetError(FinetuneError, ValueError):
    """A fine-tuning dataset file is unreadable or a line lacks what it needs; names file and line."""


class WorkerError(NbkitError):
    """The worker process failed with an unexpected error (a bug, or it was killed)."""


class BusyError(NbkitError):
    """A second request arrived while one is still running (a chat answer, a panel's task)."""


class NotebookExecutionError(NbkitError):
    """A notebook raised an error; the executed notebook (and its HTML copy) show where."""

    def __init__(self, message: str, notebook: Path, html: Path | None) -> None:
        super().__init__(message)
        self.notebook = notebook
        self.html = html


def error_summary(exc: BaseException, limit: int = 300) -> str:
    """The informative line of a library error, for one-sentence messages.

    OpenVINO errors start with a source location ("Exception from src/...cpp:117:") and
    put the cause on a later line; skip such location lines.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [
        line for line in lines if not (line.startswith("Exception from ") or line.startswith("Check '"))
    ]
    text = (useful or lines or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
