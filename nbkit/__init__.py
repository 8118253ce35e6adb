"""nbkit: export, compress, measure and chat with small language models on ordinary hardware."""

from __future__ import annotations

__version__ = "0.1.0"
