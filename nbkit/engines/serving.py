"""What an engine gives a server: a backend that runs many generation requests at once.

``nbkit serve`` (:mod:`nbkit.serve`) speaks HTTP; an engine speaks tokens. Between them is
:class:`ServingBackend`: ``submit()`` a prompt with its settings and two callbacks, get a
:class:`Ticket` back at once, and the backend calls ``on_text`` with each new piece of text and
``on_done`` once, from its own thread. ``Ticket.cancel()`` ends a request at its next token and
frees its place (a client that went away, a stop string found).

How a backend shares the hardware is its own business, and it says so: OpenVINO's
``ContinuousBatchingPipeline`` decodes up to ``max_running`` sequences in one batch, each
joining and leaving between steps; ONNX Runtime GenAI decodes one request at a time. The
server admits at most ``max_running`` requests to the backend and queues the rest first come,
first served, so neither engine ever sees more than it can hold.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from nbkit.config import GenerationSettings
from nbkit.engines.base import FINISH_LENGTH, FINISH_STOP, REPLACEMENT

log = logging.getLogger(__name__)

FINISH_CANCELLED = "cancelled"  # Completion.finish_reason of a request ended by Ticket.cancel()


@dataclass(frozen=True)
class Completion:
    """How one request ended: token counts and why (``stop``, ``length`` or ``cancelled``)."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


TextCallback = Callable[[str], None]
DoneCallback = Callable[[Completion | BaseException], None]


class Ticket:
    """One submitted request: ``cancel()`` ends it at its next token (thread-safe, idempotent)."""

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@runtime_checkable
class ServingBackend(Protocol):
    """A loaded model that generates for many requests (see the module's docstring)."""

    model_path: Path
    context_length: int  # prompt + generated tokens one request may hold
    max_running: int  # requests the backend generates for at once; the server queues the rest
    scheduling: str  # one sentence: how concurrent requests share the model

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """``messages`` rendered with the model's chat template, ending with the assistant's turn."""
        ...

    def count_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` (already templated) as the backend will feed it."""
        ...

    def submit(
        self, prompt: str, settings: GenerationSettings, on_text: TextCallback, on_done: DoneCallback
    ) -> Ticket:
        """Start generating for ``prompt``; callbacks come from the backend's thread."""
        ...

    def close(self) -> None:
        """Cancel what runs, stop the backend's thread and free the model."""
        ...


class IncrementalText:
    """Text of a growing list of token ids, handed out piece by piece.

    Decoding the whole answer each time (not token by token) keeps multi-token characters and
    words whole; a trailing U+FFFD (half a character) is held back until the next token shows
    what it was, and dropped if the answer ends there.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._shown = 0

    def add(self, new_ids: list[int]) -> str:
        """The text the new ids add (possibly empty)."""
        self.ids.extend(new_ids)
        text = self._decode(self.ids).rstrip(REPLACEMENT)
        piece = text[self._shown :]
        self._shown = max(self._shown, len(text))
        return piece


def finish_reason(cancelled: bool, reached_limit: bool) -> str:
    """The OpenAI word for how a request ended (a cancelled one reports ``cancelled``)."""
    if cancelled:
        return FINISH_CANCELLED
    return FINISH_LENGTH if reached_limit else FINISH_STOP


def safe_call(callback: Callable[..., None], *args: object) -> None:
    """Call a server's callback from a backend thread; a failing callback never stops the backend."""
    try:
        callback(*args)
    except Exception:  # the server's side failed (a closed event loop, say); the backend goes on
        log.exception("A serving callback failed")


__all__ = [
    "FINISH_CANCELLED",
    "Completion",
    "DoneCallback",
    "IncrementalText",
    "ServingBackend",
    "TextCallback",
    "Ticket",
    "finish_reason",
    "safe_call",
]
