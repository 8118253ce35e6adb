"""What ``nbkit serve`` is started with: one frozen, checked set of options.

Every limit has a default that is safe on a laptop: loopback only, no key needed there, a
bounded queue, a bounded request body, and no cross-origin access unless an origin is named.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from nbkit.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServeOptions:
    """How a server listens, whom it answers and how much it takes on.

    ``port`` 0 takes a free port (the handle's ``url`` says which). ``max_batch`` is how many
    requests decode together (OpenVINO's continuous batching; ONNX Runtime GenAI decodes one
    at a time whatever it is); ``max_queue`` how many more may wait before the server answers
    503 with ``Retry-After``. ``default_max_tokens`` caps an answer whose request sets no
    ``max_tokens``. ``shutdown_timeout`` is how long a stop lets running answers finish
    before cancelling them.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    model_name: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 256
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError(f"host must be an address or host name such as 127.0.0.1, not {self.host!r}.")
        _whole("port", self.port, 0, 65535)
        _whole("max_batch", self.max_batch, 1, 256)
        _whole("max_queue", self.max_queue, 0, 100_000)
        _whole("max_body_bytes", self.max_body_bytes, 1024, 1 << 30)
        _whole("default_max_tokens", self.default_max_tokens, 1, 1 << 20)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ConfigError("api_key must be a non-empty string, or None for no key.")
        if self.model_name is not None and (not isinstance(self.model_name, str) or not self.model_name.strip()):
            raise ConfigError("model_name must be a non-empty string, or None for the folder's name.")
        if isinstance(self.cors_origins, str):
            object.__setattr__(self, "cors_origins", (self.cors_origins,))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        for origin in self.cors_origins:
            if not isinstance(origin, str) or not (origin == "*" or origin.startswith(("http://", "https://"))):
                raise ConfigError(f"A CORS origin is * or a URL such as http://localhost:3000, not {origin!r}.")
        timeout = self.shutdown_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout < 0:
            raise ConfigError(f"shutdown_timeout must be seconds >= 0, not {timeout!r}.")

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach the server."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _whole(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, not {value!r}.")
