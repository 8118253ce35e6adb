"""What the ONNX Runtime GenAI engine needs installed, checked before any work.

Both the Olive export and the chat session ask here, so a missing extra is one sentence
that names the install command, and neither module imports the other to find out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

from nbkit.errors import MissingDependencyError

# The versions that work together with nbkit's own pins (see the `olive` extra in pyproject.toml).
OLIVE_REQUIREMENTS = ("olive-ai==0.13.0", "onnxruntime-genai==0.14.1", "onnxruntime==1.31.1")
INSTALL_OLIVE = 'pip install "nbkit[olive]"  (that is: pip install ' + " ".join(OLIVE_REQUIREMENTS) + ")"
FINETUNE_REQUIREMENTS = ("peft==0.21.2", "accelerate==1.15.0", "datasets==5.0.1")
INSTALL_FINETUNE = (
    'pip install "nbkit[finetune]"  (that is: pip install '
    + " ".join(OLIVE_REQUIREMENTS + FINETUNE_REQUIREMENTS)
    + ")"
)
INSTALL_ORT_GENAI = 'pip install "nbkit[olive]"  (or just: pip install onnxruntime-genai==0.14.1)'


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or sys.modules[module] is None
        return False


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _require(what: str, packages: tuple[tuple[str, str], ...], install: str) -> None:
    """:class:`MissingDependencyError` naming the (distribution, module) pairs that do not import."""
    missing = [name for name, module in packages if not _installed(module)]
    if missing:
        raise MissingDependencyError(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: {install}."
        )


def require_olive() -> None:
    """Raise :class:`MissingDependencyError` unless Olive and a matching onnxruntime-genai are importable."""
    _require(
        "Exporting with Olive",
        (("olive-ai", "olive"), ("onnxruntime-genai", "onnxruntime_genai"), ("onnxruntime", "onnxruntime")),
        INSTALL_OLIVE,
    )
    genai = _version("onnxruntime-genai") or ""
    if genai and not genai.startswith("0.14."):
        raise MissingDependencyError(
            f"olive-ai 0.13's ModelBuilder needs onnxruntime-genai 0.14.x, but {genai} is installed "
            "(0.15 and later removed onnxruntime_genai.models.quantized_model): "
            "pip install onnxruntime-genai==0.14.1"
        )


def require_ort_genai() -> None:
    """Raise :class:`MissingDependencyError` unless onnxruntime-genai is importable (chat only)."""
    if not _installed("onnxruntime_genai"):
        raise MissingDependencyError(
            f"Chatting with an ONNX Runtime GenAI model needs onnxruntime-genai, which is not installed: "
            f"{INSTALL_ORT_GENAI}."
        )


def require_finetune() -> None:
    """Raise :class:`MissingDependencyError` unless Olive's LoRA pass can run (Olive, peft, datasets, accelerate)."""
    _require(
        "Fine-tuning with Olive",
        (("olive-ai", "olive"), ("peft", "peft"), ("datasets", "datasets"), ("accelerate", "accelerate")),
        INSTALL_FINETUNE,
    )


def olive_available() -> bool:
    try:
        require_olive()
    except MissingDependencyError:
        return False
    return True
