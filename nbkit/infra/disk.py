"""Disk space: check it before a build, and name it when a build runs out of it.

A full disk shows up deep inside the libraries nbkit drives: an ``OSError`` with
``errno.ENOSPC`` from Python, a ``SafetensorError: ... No space left on device (os error 28)``
from Rust, an OpenVINO exception with the C library's text, all of it wrapped in a
:class:`~nbkit.errors.WorkerError` when it happened in the worker process. The cache turns
any of them into one :class:`~nbkit.errors.DiskSpaceError` that says where the space ran out
and what to do, after removing the partial build.

Estimates of how much a build writes are deliberately simple (the float weights it will
hold): they exist to refuse a build that cannot fit before minutes of work, not to
predict sizes exactly.
"""

from __future__ import annotations

import errno
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

from nbkit.errors import DiskSpaceError

# Room left for everything that is not weights (tokenizer IRs, manifests, temporary files
# the libraries write next to their output) and for the rest of the system.
DISK_MARGIN_BYTES = 256 * 2**20

# What `nbkit quickstart` leaves in an empty cache: the bundled model's float32 Hugging Face
# folder (513 MiB), its float OpenVINO IR (the same again) and the INT4 model (81 MiB).
QUICKSTART_BYTES = 1150 * 2**20

FREE_SPACE_ADVICE = (
    "Free some space (see `nbkit cache list`; `nbkit cache clear` empties the cache) "
    "or set NBKIT_CACHE_DIR to a folder on a bigger disk."
)

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded")


def format_bytes(count: float) -> str:
    """``1536 * 2**20`` -> ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit in ("B", "KiB") else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def require_free_space(folder: Path, needs_bytes: int, what: str) -> None:
    """Raise :class:`~nbkit.errors.DiskSpaceError` unless ``needs_bytes`` (plus a margin) fit."""
    if needs_bytes <= 0:
        return
    free = free_bytes(folder)
    if free < needs_bytes + DISK_MARGIN_BYTES:
        # The margin is part of the figure shown: "needs 513 MiB, 600 MiB free" would read as a bug.
        raise DiskSpaceError(
            f"Not enough disk space to build {what}: it needs about "
            f"{format_bytes(needs_bytes + DISK_MARGIN_BYTES)} and the disk holding {folder} "
            f"has {format_bytes(free)} free. {FREE_SPACE_ADVICE}"
        )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk is full."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        text = str(error).lower()
        if any(marker in text for marker in _DISK_FULL_TEXTS):
            return True
    return False


def safetensors_elements(path: Path) -> int:
    """Number of tensor elements a ``.safetensors`` file holds, read from its header only."""
    with open(path, "rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_length))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        elements = 1
        for dimension in info["shape"]:
            elements *= int(dimension)
        total += elements
    return total


def float32_weights_bytes(hf_folder: Path) -> int:
    """Bytes the weights of a Hugging Face model folder take in float32.

    Exact for safetensors (from the headers); for PyTorch ``.bin`` files the file size is
    doubled, which covers weights saved in 16 bits.
    """
    total = 0
    for file in sorted(Path(hf_folder).glob("*.safetensors")):
        total += 4 * safetensors_elements(file)
    if total == 0:
        total = sum(2 * file.stat().st_size for file in Path(hf_folder).glob("*.bin"))
    return total


__all__ = [
    "DISK_MARGIN_BYTES",
    "FREE_SPACE_ADVICE",
    "QUICKSTART_BYTES",
    "float32_weights_bytes",
    "format_bytes",
    "free_bytes",
    "is_disk_full",
    "require_free_space",
    "safetensors_elements",
]
