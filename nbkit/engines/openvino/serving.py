"""Serve an OpenVINO model to many clients at once: openvino-genai's continuous batching.

:class:`ContinuousBatchingBackend` owns one ``ContinuousBatchingPipeline`` and one thread that
drives it. Each ``pipeline.step()`` decodes one token for every running request (and prefills
new ones, split into chunks by ``dynamic_split_fuse``); a request joins the batch at the next
step after it is submitted and leaves it the step it ends or is cancelled, so a long answer
never holds up a short one. The KV cache is paged and grows as needed (``cache_size`` 0).

Only the stepping thread touches the pipeline: ``submit()`` and ``Ticket.cancel()`` leave notes
the thread reads between steps, so no two threads ever call into openvino-genai at once.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.config import GenerationSettings, RuntimeConfig
from nbkit.engines.base import _context_length
from nbkit.engines.openvino.chat import generation_config
from nbkit.engines.openvino.runtime import base_runtime, check_runtime
from nbkit.engines.serving import (
    Completion,
    DoneCallback,
    IncrementalText,
    TextCallback,
    Ticket,
    finish_reason,
    safe_call,
)
from nbkit.errors import ConfigError, DeviceError, ModelSourceError, error_summary

log = logging.getLogger(__name__)

# Prompt tokens one step may prefill across requests: a long prompt is split over steps so the
# requests already decoding keep getting a token per step (dynamic split-fuse).
MAX_BATCHED_TOKENS = 512


@dataclass
class _Running:
    ticket: Ticket
    input_ids: Any  # the prompt's token ids (an openvino Tensor)
    text: IncrementalText
    settings: GenerationSettings
    prompt_tokens: int
    on_text: TextCallback
    on_done: DoneCallback
    handle: Any = None  # the pipeline's GenerationHandle, once the stepping thread added the request
    finish: str = ""


class ContinuousBatchingBackend:
    """A :class:`~nbkit.engines.serving.ServingBackend` on openvino-genai's ContinuousBatchingPipeline."""

    def __init__(self, folder: Path, runtime: RuntimeConfig | None = None, *, max_batch: int = 8) -> None:
        import openvino_genai

        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a whole number >= 1, not {max_batch!r}.")
        folder = Path(folder).expanduser()
        if not (folder / "openvino_model.xml").is_file() or not (folder / "openvino_detokenizer.xml").is_file():
            raise ModelSourceError(
                f"{folder} is not an OpenVINO model folder with its tokenizer (openvino_model.xml, "
                "openvino_detokenizer.xml); export one with `nbkit export` or `nbkit compress`."
            )
        runtime = runtime or base_runtime("CPU")
        device = check_runtime(runtime)
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.max_num_seqs = max_batch
        scheduler.max_num_batched_tokens = MAX_BATCHED_TOKENS
        scheduler.dynamic_split_fuse = True
        scheduler.enable_prefix_caching = True  # clients resend the whole conversation each turn
        started = time.perf_counter()
        try:
            self._pipeline = openvino_genai.ContinuousBatchingPipeline(
                str(folder), scheduler, device, runtime.property_dict
            )
        except RuntimeError as exc:
            raise DeviceError(
                f"openvino-genai could not load {folder.name} for continuous batching on {device}: "
                f"{error_summary(exc)}"
            ) from exc
        self.load_s = time.perf_counter() - started
        self._tokenizer = self._pipeline.get_tokenizer()
        self._genai = openvino_genai
        self.model_path = folder
        self.context_length = _context_length(folder)
        self.max_running = max_batch
        self.scheduling = (
            f"continuous batching (openvino-genai ContinuousBatchingPipeline on {device}): up to "
            f"{max_batch} requests decode together, each joining and leaving the batch between steps"
            if max_batch > 1
            else f"one request at a time (openvino-genai ContinuousBatchingPipeline on {device} with "
            "max_batch 1); the rest wait in order"
        )
        self._ids = itertools.count(1)
        self._arrivals: queue.SimpleQueue[_Running] = queue.SimpleQueue()
        self._running: dict[int, _Running] = {}
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nbkit-serve-batching", daemon=True)
        self._thread.start()
        log.info("Loaded %s for continuous batching on %s in %.1f s", folder.name, device, self.load_s)

    # -- what the server calls -------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        history = self._genai.ChatHistory(messages)
        return str(self._tokenizer.apply_chat_template(history, add_generation_prompt=True))

    def _encode(self, prompt: str) -> Any:
        # The template already holds the special tokens; adding them again would double BOS.
        return self._tokenizer.encode(prompt, add_special_tokens=False).input_ids

    def count_tokens(self, prompt: str) -> int:
        return int(self._encode(prompt).get_shape()[-1])

    def submit(
        self, prompt: str, settings: GenerationSettings, on_text: TextCallback, on_done: DoneCallback
    ) -> Ticket:
        if self._closed.is_set():
            raise ConfigError("The server's model was closed; start a new server.")
        ticket = Ticket(next(self._ids))
        ids = self._encode(prompt)
        request = _Running(
            ticket=ticket,
            input_ids=ids,
            text=IncrementalText(lambda token_ids: self._tokenizer.decode(token_ids)),
            settings=settings,
            prompt_tokens=int(ids.get_shape()[-1]),
            on_text=on_text,
            on_done=on_done,
        )
        self._arrivals.put(request)
        self._wake.set()
        return ticket

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._pipeline = None  # frees the model and its KV cache now, not at garbage collection

    # -- the stepping thread ---------------------------------------------------------------

    def _admit(self) -> None:
        while True:
            try:
                request = self._arrivals.get_nowait()
            except queue.Empty:
                return
            if request.ticket.cancelled:
                self._end(request, cancelled=True)
                continue
            try:
                request.handle = self._pipeline.add_request(
                    request.ticket.request_id, request.input_ids, generation_config(request.settings)
                )
            except Exception as exc:  # a config the pipeline refuses ends this request only
                safe_call(request.on_done, exc)
                continue
            self._running[request.ticket.request_id] = request

    def _read(self, request: _Running) -> None:
        handle = request.handle
        while handle.can_read():
            for output in handle.read().values():
                new_ids = [int(i) for i in output.generated_ids]
                if new_ids:
                    piece = request.text.add(new_ids)
                    if piece:
                        safe_call(request.on_text, piece)
                reason = output.finish_reason
                if reason == self._genai.GenerationFinishReason.LENGTH:
                    request.finish = "length"
                elif reason == self._genai.GenerationFinishReason.STOP:
                    request.finish = "stop"

    def _end(self, request: _Running, *, cancelled: bool) -> None:
        self._running.pop(request.ticket.request_id, None)
        generated = len(request.text.ids)
        reached_limit = request.finish == "length" or (
            not request.finish and generated >= request.settings.max_new_tokens
        )
        safe_call(
            request.on_done,
            Completion(request.prompt_tokens, generated, finish_reason(cancelled, reached_limit)),
        )

    def _loop(self) -> None:
        finished = self._genai.GenerationStatus.FINISHED
        try:
            while not self._closed.is_set():
                self._admit()
                for request in list(self._running.values()):
                    if request.ticket.cancelled:
                        request.handle.cancel()  # its KV blocks go back at the next step
                        self._read(request)
                        self._end(request, cancelled=True)
                if not self._pipeline.has_non_finished_requests():
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                self._pipeline.step()
                for request in list(self._running.values()):
                    self._read(request)
                    if request.handle.get_status() == finished:
                        self._end(request, cancelled=False)
        except Exception as exc:  # the pipeline broke: every request gets the error, not silence
            log.exception("Continuous batching stopped")
            for request in list(self._running.values()):
                self._running.pop(request.ticket.request_id, None)
                safe_call(request.on_done, exc)
            self._closed.set()
        finally:
            for request in list(self._running.values()):
                request.ticket.cancel()
                request.handle.cancel()
                self._end(request, cancelled=True)
            while True:
                try:
                    self._end(self._arrivals.get_nowait(), cancelled=True)
                except queue.Empty:
                    break


__all__ = ["MAX_BATCHED_TOKENS", "ContinuousBatchingBackend"]
