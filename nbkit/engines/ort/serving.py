"""Serve an ONNX Runtime GenAI model: one request decodes at a time, the rest wait their turn.

onnxruntime-genai 0.14 has no continuous batching: a ``Generator`` holds one batch from its
prefill to its end, and requests cannot join or leave it. So :class:`SequentialBackend`
decodes one request at a time on one thread (``max_running`` is 1); the server queues the others
first come, first served, and each waits for the one before it. A cancelled request (a client
gone, a stop string found) ends at its next token and the next one starts at once.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.base import CutCharacterGuard, _context_length
from nbkit.engines.ort.chat import (
    CPU_RUNTIME,
    GENAI_CONFIG,
    chat_template_of,
    check_ort_runtime,
    eos_token_ids,
    load_model,
    search_options,
)
from nbkit.engines.ort.deps import require_ort_genai
from nbkit.engines.serving import (
    Completion,
    DoneCallback,
    TextCallback,
    Ticket,
    finish_reason,
    safe_call,
)
from nbkit.errors import ConfigError, ModelSourceError, error_summary

log = logging.getLogger(__name__)


@dataclass
class _Request:
    ticket: Ticket
    ids: Any
    settings: GenerationSettings
    on_text: TextCallback
    on_done: DoneCallback


class SequentialBackend:
    """A :class:`~nbkit.engines.serving.ServingBackend` on onnxruntime-genai, one request at a time."""

    def __init__(self, folder: Path, runtime: RuntimeConfig | None = None, *, max_batch: int = 1) -> None:
        require_ort_genai()
        import onnxruntime_genai as og

        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a whole number >= 1, not {max_batch!r}.")
        folder = Path(folder).expanduser()
        if not (folder / GENAI_CONFIG).is_file():
            raise ModelSourceError(
                f"{folder} is not an ONNX Runtime GenAI model folder (no {GENAI_CONFIG}); "
                "build one with `nbkit export --engine ort`."
            )
        runtime = check_ort_runtime(runtime or CPU_RUNTIME)
        started = time.perf_counter()
        try:
            self._model = load_model(folder, runtime)
            self._tokenizer = og.Tokenizer(self._model)
        except Exception as exc:  # onnxruntime-genai raises RuntimeError/OSError with its own text
            raise ModelSourceError(f"onnxruntime-genai could not load {folder.name}: {error_summary(exc)}") from exc
        self.load_s = time.perf_counter() - started
        self._og = og
        self._template = chat_template_of(folder)
        self._eos_ids = eos_token_ids(folder)
        self.model_path = folder
        self.context_length = _context_length(folder)
        self.max_running = 1
        self.scheduling = "one request at a time (onnxruntime-genai has no continuous batching); the rest wait in order"
        if max_batch > 1:
            log.info("onnxruntime-genai decodes one request at a time; max_batch %d does not apply", max_batch)
        self._ids = itertools.count(1)
        self._waiting: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nbkit-serve-sequential", daemon=True)
        self._thread.start()

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        try:
            return str(
                self._tokenizer.apply_chat_template(
                    json.dumps(messages), template_str=self._template, add_generation_prompt=True
                )
                if self._template is not None
                else self._tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
            )
        except Exception as exc:
            raise ModelSourceError(
                f"The chat template of {self.model_path.name} could not be applied ({error_summary(exc)})."
            ) from exc

    def count_tokens(self, prompt: str) -> int:
        return len(self._tokenizer.encode(prompt))

    def submit(
        self, prompt: str, settings: GenerationSettings, on_text: TextCallback, on_done: DoneCallback
    ) -> Ticket:
        if self._closed.is_set():
            raise ConfigError("The server's model was closed; start a new server.")
        ticket = Ticket(next(self._ids))
        self._waiting.put(_Request(ticket, self._tokenizer.encode(prompt), settings, on_text, on_done))
        return ticket

    def close(self) -> None:
        self._closed.set()
        self._waiting.put(None)
        self._thread.join(timeout=30)

    def _generate(self, request: _Request) -> Completion:
        og = self._og
        params = og.GeneratorParams(self._model)
        params.set_search_options(**search_options(request.settings, len(request.ids)))
        stream = self._tokenizer.create_stream()
        guard = CutCharacterGuard()
        generator = og.Generator(self._model, params)
        generated = 0
        last_token: int | None = None
        try:
            if not request.ticket.cancelled:
                generator.append_tokens(request.ids)  # the prefill
            while not request.ticket.cancelled and not generator.is_done():
                generator.generate_next_token()
                generated += 1
                last_token = int(generator.get_next_tokens()[0])
                piece = guard.feed(stream.decode(last_token))
                if piece:
                    safe_call(request.on_text, piece)
        finally:
            del generator  # frees the KV cache now
        guard.finish()
        ended_by_model = last_token is not None and last_token in self._eos_ids
        reached_limit = not ended_by_model and generated >= request.settings.max_new_tokens
        return Completion(len(request.ids), generated, finish_reason(request.ticket.cancelled, reached_limit))

    def _loop(self) -> None:
        while not self._closed.is_set():
            request = self._waiting.get()
            if request is None:
                break
            try:
                outcome: Completion | BaseException = self._generate(request)
            except Exception as exc:  # this request failed; the next one still runs
                log.exception("onnxruntime-genai failed on request %d", request.ticket.request_id)
                outcome = exc
            safe_call(request.on_done, outcome)
        while True:  # closed: what still waits ends as cancelled
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                request.ticket.cancel()
                safe_call(request.on_done, Completion(len(request.ids), 0, finish_reason(True, False)))


__all__ = ["SequentialBackend"]
