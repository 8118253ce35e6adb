"""A serving backend with no model: characters are tokens, answers are scripted.

It satisfies :class:`nbkit.engines.serving.ServingBackend`, so the HTTP layer (errors, limits,
queueing, streaming, stop strings, disconnects) is tested in milliseconds; the real engines'
backends are tested on real models in ``tests/test_serve_integration.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nbkit.config import GenerationSettings
from nbkit.engines.serving import Completion, DoneCallback, TextCallback, Ticket, finish_reason


class ScriptedBackend:
    """Answers every prompt with ``answer`` (one character per token, ``delay_s`` apart)."""

    def __init__(
        self, answer: str = "Paris is the capital of France.", *, context_length: int = 400, delay_s: float = 0.0
    ) -> None:
        self.answer = answer
        self.context_length = context_length
        self.delay_s = delay_s
        self.model_path = Path("/models/scripted-model-0123456789abcdef")
        self.max_running = 1
        self.scheduling = "scripted: one request at a time"
        self.prompts: list[str] = []
        self.settings: list[GenerationSettings] = []
        self.cancelled: list[int] = []
        self.active = 0
        self.max_active = 0
        self.closed = False
        self._lock = threading.Lock()
        self._ids = iter(range(1, 1_000_000))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def count_tokens(self, prompt: str) -> int:
        return len(prompt)

    def submit(
        self, prompt: str, settings: GenerationSettings, on_text: TextCallback, on_done: DoneCallback
    ) -> Ticket:
        ticket = Ticket(next(self._ids))
        self.prompts.append(prompt)
        self.settings.append(settings)
        threading.Thread(target=self._run, args=(ticket, prompt, settings, on_text, on_done), daemon=True).start()
        return ticket

    def _run(
        self, ticket: Ticket, prompt: str, settings: GenerationSettings, on_text: TextCallback, on_done: DoneCallback
    ) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        generated = 0
        try:
            for character in self.answer[: settings.max_new_tokens]:
                if ticket.cancelled:
                    break
                if self.delay_s:
                    time.sleep(self.delay_s)
                generated += 1
                on_text(character)
        finally:
            with self._lock:
                self.active -= 1
            if ticket.cancelled:
                self.cancelled.append(ticket.request_id)
        reached_limit = generated >= settings.max_new_tokens and generated < len(self.answer)
        on_done(Completion(len(prompt), generated, finish_reason(ticket.cancelled, reached_limit)))

    def close(self) -> None:
        self.closed = True


FAKE_ENGINE: Any = SimpleNamespace(name="scripted")
