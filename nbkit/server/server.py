"""Start and stop a server: in the background from Python, or in the foreground from the CLI.

:func:`serve` loads the model (building it first when given a model source), then runs uvicorn
on a thread of its own and returns a :class:`ServerHandle` once ``/health`` answers, so the
next line of a notebook or script can send requests. :func:`run_foreground` is ``nbkit serve``:
uvicorn on the main thread, where SIGINT, SIGTERM and SIGHUP each stop it gracefully (running
answers get ``shutdown_timeout`` seconds to finish, then are cancelled), and a second Ctrl-C
stops it at once.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbkit.config import ExportConfig, RuntimeConfig
from nbkit.engines.protocol import Engine
from nbkit.engines.registry import engine_for_folder, get_engine
from nbkit.engines.serving import ServingBackend
from nbkit.errors import ConfigError, MissingDependencyError, ModelSourceError, NbkitError
from nbkit.infra.cache import Cache
from nbkit.infra.progress import ProgressReporter
from nbkit.server.options import ServeOptions
from nbkit.sources.models import DEFAULT_MODEL, resolve_source

log = logging.getLogger(__name__)

INSTALL_SERVE = 'pip install "nbkit[serve]"  (FastAPI, uvicorn, sse-starlette, prometheus-client)'
READY_TIMEOUT_S = 60.0
_CACHE_SUFFIX = re.compile(r"-[0-9a-f]{16}$")  # the config hash ending a cache entry's folder name
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


def require_serve() -> None:
    missing = []
    for module in ("fastapi", "uvicorn", "sse_starlette", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingDependencyError(f"nbkit serve needs {', '.join(missing)}: {INSTALL_SERVE}")


def served_name(folder: Path) -> str:
    """The model id clients send: the folder's name without the cache's config hash."""
    return _CACHE_SUFFIX.sub("", folder.name)


def load_backend(
    model: Any = None,
    *,
    engine: str | Engine | None = None,
    runtime: RuntimeConfig | None = None,
    max_batch: int = 8,
    cache: Cache | None = None,
    reporter: ProgressReporter | None = None,
) -> tuple[ServingBackend, Engine]:
    """A serving backend on ``model``: a model folder, a built model, or a source built first.

    A source (the bundled model's name, a local Hugging Face or GGUF path, a hub id) is built
    with the engine's default compression, from the cache when it was built before.
    """
    target = getattr(model, "path", model if model is not None else DEFAULT_MODEL)
    folder = Path(str(target)).expanduser()
    chosen = get_engine(engine) if engine is not None else (engine_for_folder(folder) or get_engine("openvino"))
    reason = chosen.missing()
    if reason is not None:
        raise MissingDependencyError(reason)
    if not chosen.is_model_folder(folder):
        other = engine_for_folder(folder)
        if other is not None:
            raise ModelSourceError(
                f"{folder} is a model folder of the {other.name} engine; serve it with engine {other.name!r}."
            )
        built = chosen.build_from_source(
            resolve_source(str(target)),
            chosen.config_from_options({}),
            cache=cache or Cache(),
            reporter=reporter or ProgressReporter(),
            export_config=ExportConfig(),
        )
        folder = Path(built.path)
    if runtime is not None:
        runtime = chosen.check_runtime(runtime)
    return chosen.serving_backend(folder, runtime, max_batch=max_batch), chosen


def _build_app(backend: ServingBackend, engine: Engine, options: ServeOptions) -> Any:
    from nbkit.server.app import ServerState, create_app
    from nbkit.server.metrics import ServerMetrics

    name = options.model_name or served_name(backend.model_path)
    state = ServerState(
        backend=backend,
        options=options,
        model_name=name,
        engine_name=engine.name,
        metrics=ServerMetrics(name, backend.max_running),
    )
    return create_app(state), state


def _warn_if_exposed(options: ServeOptions) -> None:
    if not options.loopback and options.api_key is None:
        log.warning(
            "Serving on %s without an API key: anyone who can reach this address can use the model. "
            "Pass --api-key (or api_key=) or bind 127.0.0.1.",
            options.host,
        )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _port_is_free(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port, or 0 for a free one."
        ) from exc


def _uvicorn_server(app: Any, options: ServeOptions, port: int) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, stopping gracefully on SIGHUP too, and not re-raising the signal after."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            state = app.state.nbkit
            if state.admission is not None:
                state.admission.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=options.host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=int(options.shutdown_timeout) or 1,
        timeout_keep_alive=5,
        limit_concurrency=options.max_queue + options.max_batch + 64,
        server_header=False,
        lifespan="on",
    )
    return Server(config)


class ServerHandle:
    """A server running in the background: ``url`` to talk to it, ``stop()`` to end it.

    ``url`` is the OpenAI-compatible base (``http://127.0.0.1:8000/v3``), what ``openai.OpenAI(
    base_url=...)`` takes; ``root`` is the server itself (``/health``, ``/metrics``). Stopping
    waits up to ``shutdown_timeout`` for running answers, cancels the rest and frees the model.
    The process's exit stops it too.
    """

    def __init__(self, server: Any, thread: threading.Thread, state: Any, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self._state = state
        self.host = host
        self.port = port
        shown = f"[{host}]" if ":" in host else host
        self.root = f"http://{shown}:{port}"
        self.url = f"{self.root}/v3"
        self.model = state.model_name
        self._stopped = False
        atexit.register(self.stop)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    @property
    def model_path(self) -> Path:
        """The model folder being served."""
        return Path(self._state.backend.model_path)

    @property
    def scheduling(self) -> str:
        return str(self._state.backend.scheduling)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking requests, let running ones finish (up to ``timeout`` s), then shut down."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        grace = self._state.options.shutdown_timeout if timeout is None else timeout
        admission = self._state.admission
        if admission is not None:
            admission.draining = True
            deadline = time.monotonic() + grace
            while (admission.running or admission.waiting) and time.monotonic() < deadline:
                time.sleep(0.05)
        loop = getattr(self._server, "nbkit_loop", None)
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._state.cancel_all)
        self._server.should_exit = True
        self._thread.join(timeout=grace + 10)
        self._state.backend.close()
        log.info("Stopped the server at %s", self.root)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<nbkit server {self.model!r} at {self.url} ({'running' if self.running else 'stopped'})>"


def serve(
    model: Any = None,
    *,
    engine: str | Engine | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    max_batch: int = 8,
    model_name: str | None = None,
    runtime: RuntimeConfig | None = None,
    cache: Cache | None = None,
    **limits: Any,
) -> ServerHandle:
    """Serve ``model`` in the background (OpenAI-compatible, OVMS paths) and return its handle.

    ``model``: a model folder, a built model, or a source (default: the bundled model, built
    with the engine's default compression). ``port`` 0 takes a free port. ``limits`` are the
    other :class:`ServeOptions` fields (``max_queue``, ``max_body_bytes``, ``default_max_tokens``,
    ``cors_origins``, ``shutdown_timeout``). Works the same in a notebook, a script and the REPL.
    """
    require_serve()
    options = ServeOptions(host=host, port=port, api_key=api_key, model_name=model_name, max_batch=max_batch, **limits)
    _warn_if_exposed(options)
    backend, chosen = load_backend(model, engine=engine, runtime=runtime, max_batch=options.max_batch, cache=cache)
    try:
        return _start_in_background(backend, chosen, options)
    except BaseException:
        backend.close()
        raise


def _start_in_background(backend: ServingBackend, engine: Engine, options: ServeOptions) -> ServerHandle:
    import asyncio

    port = options.port or _free_port(options.host)
    _port_is_free(options.host, port)
    app, state = _build_app(backend, engine, options)
    server = _uvicorn_server(app, options, port)
    failure: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server.nbkit_loop = loop
        try:
            loop.run_until_complete(server.serve())
        except BaseException as exc:  # reported to serve()'s caller below
            failure.append(exc)
        finally:
            # Tasks libraries leave behind (sse-starlette's shutdown watcher) end with the loop.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=run, name=f"nbkit-serve-{port}", daemon=True)
    thread.start()
    handle = ServerHandle(server, thread, state, options.host, port)
    _wait_until_ready(handle, thread, failure)
    log.info("Serving %s at %s (%s)", state.model_name, handle.url, backend.scheduling)
    return handle


def _wait_until_ready(handle: ServerHandle, thread: threading.Thread, failure: list[BaseException]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not thread.is_alive():
            handle.stop(timeout=0)
            cause = failure[0] if failure else None
            raise NbkitError(f"The server at {handle.root} stopped while starting: {cause or 'see the log'}") from cause
        try:
            with urllib.request.urlopen(f"{handle.root}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    handle.stop(timeout=0)
    raise NbkitError(f"The server at {handle.root} did not answer /health within {READY_TIMEOUT_S:.0f} s.")


def run_foreground(backend: ServingBackend, engine: Engine, options: ServeOptions, *, announce: Any = None) -> int:
    """``nbkit serve``: serve until a signal, then stop gracefully; the signal's name is returned in the log."""
    require_serve()
    _warn_if_exposed(options)
    port = options.port or _free_port(options.host)
    _port_is_free(options.host, port)
    app, state = _build_app(backend, engine, options)
    server = _uvicorn_server(app, options, port)
    shown = f"[{options.host}]" if ":" in options.host else options.host

    original_startup = server.startup

    async def startup(*args: Any, **kwargs: Any) -> None:
        await original_startup(*args, **kwargs)
        if announce is not None and server.started:
            announce(f"http://{shown}:{port}", state)

    server.startup = startup
    try:
        server.run()
    finally:
        state.cancel_all()
        backend.close()
    signals = getattr(server, "_captured_signals", [])
    return int(signals[0]) if signals else 0


__all__ = ["INSTALL_SERVE", "ServerHandle", "load_backend", "require_serve", "run_foreground", "serve", "served_name"]
