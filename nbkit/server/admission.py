"""Who generates now and who waits: a bounded first-come, first-served queue on the event loop.

At most ``max_running`` requests are handed to the engine at once (its batch, or 1); up to
``max_queue`` more wait in arrival order (asyncio's semaphore wakes waiters in order). Beyond
that a request is refused at once with 503 and a ``Retry-After`` computed from how long
requests have been taking, instead of piling up until clients time out.
"""

from __future__ import annotations

import asyncio
import math

from nbkit.server.errors import APIError, overloaded

RETRY_AFTER_RANGE_S = (1, 120)


class Admission:
    def __init__(self, max_running: int, max_queue: int) -> None:
        self.max_running = max_running
        self.max_queue = max_queue
        self._places = asyncio.Semaphore(max_running)
        self.running = 0
        self.waiting = 0
        self.draining = False
        self._mean_duration_s = 1.0  # until a request has been timed

    def full(self) -> bool:
        return self.running >= self.max_running and self.waiting >= self.max_queue

    def check(self) -> None:
        """Refuse now (503) when the server is stopping or the queue is full."""
        if self.draining:
            raise APIError(
                503,
                "The server is shutting down and takes no new requests.",
                type="server_error",
                code="shutting_down",
                headers={"Retry-After": "5"},
            )
        if self.full():
            raise overloaded(self.waiting, self.retry_after_s())

    def retry_after_s(self) -> int:
        estimate = self._mean_duration_s * (self.waiting + 1) / self.max_running
        low, high = RETRY_AFTER_RANGE_S
        return int(min(max(math.ceil(estimate), low), high))

    async def enter(self) -> None:
        """Wait for a place (in arrival order); cancellation while waiting leaves the queue."""
        self.check()
        self.waiting += 1
        try:
            await self._places.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def leave(self, duration_s: float | None = None) -> None:
        self.running -= 1
        self._places.release()
        if duration_s is not None:
            self._mean_duration_s = 0.8 * self._mean_duration_s + 0.2 * duration_s
