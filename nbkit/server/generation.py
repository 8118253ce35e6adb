"""One request's answer, seen from the event loop: pieces of text, then how it ended.

The engine's backend generates on its own thread and calls back with each piece; the
callbacks hop onto the event loop (``call_soon_threadsafe``) into an asyncio queue the HTTP
handler reads. Stop strings are applied here. ``close()`` cancels the engine's request, so a
client that goes away frees its place in the batch at the next token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nbkit.config import GenerationSettings
from nbkit.engines.serving import FINISH_CANCELLED, Completion, ServingBackend
from nbkit.server.metrics import ServerMetrics
from nbkit.server.stops import StopStrings


@dataclass(frozen=True)
class _Done:
    outcome: Completion | BaseException


class Generation:
    def __init__(
        self,
        backend: ServingBackend,
        prompt: str,
        settings: GenerationSettings,
        stops: list[str],
        metrics: ServerMetrics,
        arrived: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | _Done] = asyncio.Queue()
        self._stops = StopStrings(stops)
        self._metrics = metrics
        self._arrived = arrived
        self._first_text_at: float | None = None
        self.text = ""
        self.completion: Completion | None = None
        self.finish_reason = ""
        self.ticket = backend.submit(prompt, settings, self._on_text, self._on_done)

    # Called on the backend's thread.
    def _on_text(self, piece: str) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, piece)

    def _on_done(self, outcome: Completion | BaseException) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, _Done(outcome))

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text as it comes (stop strings cut it); then ``completion`` is set."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _Done):
                if isinstance(item.outcome, BaseException):
                    raise item.outcome
                self._finish(item.outcome)
                tail = self._stops.finish()
                if tail:
                    self.text += tail
                    yield tail
                return
            shown = self._stops.feed(item)
            if self._stops.hit:
                self.ticket.cancel()  # the engine stops at its next token; its text is not shown
            if shown:
                if self._first_text_at is None:
                    self._first_text_at = time.perf_counter()
                    self._metrics.ttft.observe(self._first_text_at - self._arrived)
                self.text += shown
                yield shown

    def _finish(self, completion: Completion) -> None:
        self.completion = completion
        reason = completion.finish_reason
        if self._stops.hit:
            reason = "stop"
        self.finish_reason = "stop" if reason == FINISH_CANCELLED else reason
        self._metrics.prompt_tokens.inc(completion.prompt_tokens)
        self._metrics.tokens_generated(completion.completion_tokens)
        self._metrics.duration.observe(time.perf_counter() - self._arrived)

    def close(self) -> None:
        """Cancel the engine's request unless it ended (a client gone, a shutdown)."""
        if self.completion is None:
            self.ticket.cancel()
