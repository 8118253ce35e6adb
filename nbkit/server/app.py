"""The HTTP API: OpenVINO Model Server's OpenAI-compatible paths, on FastAPI.

``/v3/chat/completions``, ``/v3/completions`` and ``/v3/models`` are OVMS's paths; ``/v1/...``
are the same handlers, for clients that assume OpenAI's. ``/health`` and ``/v2/health/ready``
answer 200 once the model is loaded (the server listens only then) and 503 while it stops.
Everything but the health checks needs ``Authorization: Bearer KEY`` when a key was set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nbkit.config import GenerationSettings
from nbkit.engines.serving import ServingBackend
from nbkit.server import schema
from nbkit.server.admission import Admission
from nbkit.server.errors import APIError, bad_request, unknown_model
from nbkit.server.generation import Generation
from nbkit.server.metrics import ServerMetrics
from nbkit.server.options import ServeOptions

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25
SSE_PING_S = 15


@dataclass
class ServerState:
    backend: ServingBackend
    options: ServeOptions
    model_name: str
    engine_name: str
    metrics: ServerMetrics
    admission: Admission | None = None  # made on the server's event loop
    generations: set[Generation] = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))

    def cancel_all(self) -> None:
        for generation in list(self.generations):
            generation.close()


class BodySizeLimit:
    """Refuses a request body over ``limit`` bytes with 413, before the handler reads it all."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise APIError(413, self._message(), code="request_too_large")
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"The request body is larger than the server's limit of {self.limit} bytes."

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await APIError(413, self._message(), code="request_too_large").response()(scope, receive, send)


def create_app(state: ServerState) -> FastAPI:
    options = state.options

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The queue belongs to the server's event loop; the port opens after this runs.
        state.admission = Admission(state.backend.max_running, options.max_queue)
        yield
        state.cancel_all()

    app = FastAPI(
        title="nbkit serve", version="1", docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan
    )
    app.state.nbkit = state

    # -- errors: always OpenAI's shape --------------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return _invalid_request(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("Request failed")
        return APIError(500, f"The server failed on this request: {exc}", type="server_error").response()

    def require_key(request: Request) -> None:
        if options.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise APIError(
                401,
                "Missing or wrong API key: send the header 'Authorization: Bearer <key>' with the key the server was started with.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(require_key)]

    # -- health and metrics -----------------------------------------------------------------

    def _ready() -> bool:
        return state.admission is not None and not state.admission.draining

    @app.get("/health")
    async def health() -> Response:
        body = {
            "status": "ok" if _ready() else "stopping",
            "model": state.model_name,
            "engine": state.engine_name,
            "scheduling": state.backend.scheduling,
        }
        return JSONResponse(body, status_code=200 if _ready() else 503)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200 if _ready() else 503)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/metrics", dependencies=guarded)
    async def metrics() -> Response:
        admission = state.admission
        if admission is not None:
            state.metrics.running.set(admission.running)
            state.metrics.waiting.set(admission.waiting)
        return Response(state.metrics.page(), media_type=CONTENT_TYPE_LATEST)

    # -- models -----------------------------------------------------------------------------

    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [schema.model_card(state.model_name, state.created)]}

    async def get_model(model: str) -> dict[str, Any]:
        if model != state.model_name:
            raise unknown_model(model, state.model_name)
        return schema.model_card(state.model_name, state.created)

    for prefix in ("/v3", "/v1"):
        app.add_api_route(f"{prefix}/models", list_models, methods=["GET"], dependencies=guarded)
        app.add_api_route(f"{prefix}/models/{{model:path}}", get_model, methods=["GET"], dependencies=guarded)

    # -- completions ------------------------------------------------------------------------

    async def chat_completions(request: Request) -> Response:
        body = await _parse(request, schema.ChatCompletionRequest)
        prompt = _run_sync(state.backend.render_chat, body.conversation())
        return await _complete(state, request, body, prompt, chat=True)

    async def completions(request: Request) -> Response:
        body = await _parse(request, schema.CompletionRequest)
        return await _complete(state, request, body, str(body.prompt), chat=False)

    for prefix in ("/v3", "/v1"):
        app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"], dependencies=guarded)
        app.add_api_route(f"{prefix}/completions", completions, methods=["POST"], dependencies=guarded)

    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, limit=options.max_body_bytes)
    return app


def _run_sync(call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:  # a template or tokenizer refusing this input is the request's fault
        if isinstance(exc, APIError):
            raise
        raise bad_request(str(exc)) from exc


ParsedRequest = TypeVar("ParsedRequest", bound=BaseModel)


async def _parse(request: Request, model: type[ParsedRequest]) -> ParsedRequest:
    """The body as ``model``, whatever Content-Type the client sent (OpenAI's clients send JSON;
    curl -d says form data), or a 400 naming the first problem."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid_request(list(exc.errors())) from None


def _invalid_request(errors: list[Any]) -> APIError:
    """One 400 sentence for pydantic's errors: the first problem, where it is, and how many more."""
    if not errors:
        return bad_request("The request is not valid.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "parse error")
        return bad_request(f"The request body is not valid JSON ({detail}).", code="invalid_json")
    if first.get("type") == "model_type" and not [p for p in first.get("loc", ()) if p != "body"]:
        return bad_request("The request body must be a JSON object.")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    where = f"{param}: " if param else ""
    extra = f" ({len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return bad_request(f"Invalid request: {where}{message}{extra}.", param=param)


def _settings(state: ServerState, body: schema._Sampling, prompt_tokens: int) -> GenerationSettings:
    context = state.backend.context_length
    limit = body.token_limit()  # type: ignore[attr-defined]
    room = context - prompt_tokens
    if limit is None:
        limit = min(state.options.default_max_tokens, room)
    if prompt_tokens + limit > context or room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens; the prompt takes {prompt_tokens} tokens "
            f"and max_tokens asks for {limit} more. Shorten the messages or lower max_tokens.",
            code="context_length_exceeded",
            param="messages" if isinstance(body, schema.ChatCompletionRequest) else "prompt",
        )
    temperature = body.temperature or 0.0
    # nbkit decodes greedily unless a temperature above 0 is asked for (OpenAI's default of 1
    # makes a small model ramble); a client that wants sampling says so. Greedy answers can still
    # differ a little with what shares the batch: batched kernels round differently.
    return GenerationSettings(
        max_new_tokens=limit,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 0.7,
        top_p=body.top_p if body.top_p is not None else 1.0,
        top_k=0,
        seed=body.seed,
    )


async def _complete(
    state: ServerState, request: Request, body: schema._Sampling, prompt: str, *, chat: bool
) -> Response:
    arrived = time.perf_counter()
    endpoint = "chat" if chat else "completions"
    if body.model != state.model_name:
        raise unknown_model(body.model, state.model_name)
    admission = state.admission
    assert admission is not None  # the startup event made it before the port was open
    admission.check()
    prompt_tokens = _run_sync(state.backend.count_tokens, prompt)
    settings = _settings(state, body, prompt_tokens)
    stops = body.stop_strings()
    if body.stream:
        events = _stream(state, body, prompt, settings, stops, arrived, chat=chat)
        state.metrics.requests.labels(endpoint, "200").inc()
        return EventSourceResponse(events, ping=SSE_PING_S, send_timeout=30)
    async with _generating(state, prompt, settings, stops, arrived) as generation:
        await _until_done_or_gone(generation, request)
    completion = generation.completion
    if completion is None:  # the client went away; nobody reads this
        return Response(status_code=499)
    counts = schema.usage(completion.prompt_tokens, completion.completion_tokens)
    build = schema.chat_completion if chat else schema.text_completion
    state.metrics.requests.labels(endpoint, "200").inc()
    return JSONResponse(build(schema.new_id("chatcmpl" if chat else "cmpl"), state.model_name, generation.text, generation.finish_reason, counts))


async def _until_done_or_gone(generation: Generation, request: Request) -> None:
    """Read the whole answer, cancelling it if the client disconnects meanwhile."""

    async def read() -> None:
        async for _ in generation.pieces():
            pass

    reader = asyncio.ensure_future(read())
    try:
        while not reader.done():
            await asyncio.wait({reader}, timeout=DISCONNECT_POLL_S)
            if not reader.done() and await request.is_disconnected():
                generation.close()
                reader.cancel()
                break
        if not reader.cancelled():
            reader.result()  # re-raises the engine's error, if any
    finally:
        if not reader.done():
            reader.cancel()


async def _stream(
    state: ServerState,
    body: schema._Sampling,
    prompt: str,
    settings: GenerationSettings,
    stops: list[str],
    arrived: float,
    *,
    chat: bool,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    request_id = schema.new_id("chatcmpl" if chat else "cmpl")
    created = int(time.time())
    model = state.model_name
    # Admission happens here, inside the stream: a client that leaves while queued is
    # cancelled with this generator and never takes a place.
    async with _generating(state, prompt, settings, stops, arrived) as generation:
        if chat:
            yield json.dumps(schema.chat_chunk(request_id, model, created, {"role": "assistant", "content": ""}))
        try:
            async for piece in generation.pieces():
                chunk = (
                    schema.chat_chunk(request_id, model, created, {"content": piece})
                    if chat
                    else schema.text_chunk(request_id, model, created, piece)
                )
                yield json.dumps(chunk)
        except Exception as exc:  # headers are sent: the error travels as an event, OpenAI-style
            log.exception("Generation failed mid-stream")
            yield json.dumps({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
            return
        finish = generation.finish_reason
        yield json.dumps(
            schema.chat_chunk(request_id, model, created, {}, finish)
            if chat
            else schema.text_chunk(request_id, model, created, "", finish)
        )
        completion = generation.completion
        if body.include_usage and completion is not None:
            counts = schema.usage(completion.prompt_tokens, completion.completion_tokens)
            kind = "chat.completion.chunk" if chat else "text_completion"
            yield json.dumps(schema.usage_chunk(request_id, model, created, kind, counts))
        yield "[DONE]"


@contextlib.asynccontextmanager
async def _generating(
    state: ServerState, prompt: str, settings: GenerationSettings, stops: list[str], arrived: float
) -> AsyncIterator[Generation]:
    """A place in the queue, then the engine's request; on the way out (an answer done, a client
    gone, a shutdown) the request is cancelled if still running and the place is freed."""
    admission = state.admission
    assert admission is not None  # made by the lifespan before the port opened
    await admission.enter()
    generation: Generation | None = None
    try:
        generation = Generation(state.backend, prompt, settings, stops, state.metrics, arrived)
        state.generations.add(generation)
        yield generation
    finally:
        if generation is not None:
            generation.close()  # a client that left frees its place in the batch now
            state.generations.discard(generation)
        admission.leave(time.perf_counter() - arrived)


__all__ = ["BodySizeLimit", "ServerState", "create_app"]
