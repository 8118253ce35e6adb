"""``nbkit serve``'s HTTP layer against a scripted backend: the API, its errors and its limits.

Every request goes over real HTTP to a real uvicorn server; clients are the official ``openai``
package (what users run) and plain ``httpx`` for the requests ``openai`` would refuse to send.
After each bad request the server must still answer a good one.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from nbkit.errors import ConfigError
from nbkit.server.options import ServeOptions, is_loopback
from nbkit.server.server import ServerHandle, _start_in_background, _warn_if_exposed, served_name
from nbkit.server.stops import StopStrings
from tests.serve_fakes import FAKE_ENGINE, ScriptedBackend

MODEL = "scripted-model"  # served_name() drops the cache hash from the folder's name
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def start(backend: ScriptedBackend, **options: Any) -> ServerHandle:
    return _start_in_background(backend, FAKE_ENGINE, ServeOptions(port=0, **options))


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def server(backend: ScriptedBackend) -> Iterator[ServerHandle]:
    handle = start(backend)
    yield handle
    handle.stop()


def client(handle: ServerHandle, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=handle.url, api_key=key, max_retries=0, timeout=20)


def still_serves(handle: ServerHandle, key: str = "unused") -> None:
    answer = client(handle, key).chat.completions.create(model=MODEL, messages=QUESTION)
    assert answer.choices[0].message.content


def post(handle: ServerHandle, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return httpx.post(f"{handle.root}{path}", content=content, timeout=20, **kwargs)


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": QUESTION, **fields}


# -- the OpenAI API, as the openai client sees it ----------------------------------------------


def test_chat_answers_with_usage_and_finish_reason(server: ServerHandle, backend: ScriptedBackend) -> None:
    answer = client(server).chat.completions.create(model=MODEL, messages=QUESTION)
    assert answer.choices[0].message.content == backend.answer
    assert answer.choices[0].finish_reason == "stop"
    prompt = backend.render_chat(QUESTION)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(prompt), len(backend.answer))
    assert answer.usage.total_tokens == len(prompt) + len(backend.answer)
    assert backend.prompts == [prompt]  # the chat template was applied to the messages
    assert backend.settings[0].do_sample is False  # greedy unless a temperature is asked for


def test_streaming_chunks_parse_and_add_up(server: ServerHandle, backend: ScriptedBackend) -> None:
    stream = client(server).chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == backend.answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(backend.answer)
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_gives_length_and_max_completion_tokens_too(server: ServerHandle) -> None:
    for fields in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        answer = client(server).chat.completions.create(model=MODEL, messages=QUESTION, **fields)
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None and answer.usage.completion_tokens == 5
        assert answer.choices[0].message.content == "Paris"


def test_sampling_fields_reach_the_engine(server: ServerHandle, backend: ScriptedBackend) -> None:
    client(server).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0.8, top_p=0.5, seed=7)
    settings = backend.settings[-1]
    assert (settings.do_sample, settings.temperature, settings.top_p, settings.seed) == (True, 0.8, 0.5, 7)
    assert settings.top_k == 0  # OpenAI has no top_k: none is applied


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_answer_before_them_even_across_pieces(server: ServerHandle, stream: bool) -> None:
    # One character per piece: " capital" arrives in eight pieces and must still be caught.
    if stream:
        chunks = client(server).chat.completions.create(
            model=MODEL, messages=QUESTION, stop=[" capital", "zzz"], stream=True
        )
        pieces = list(chunks)
        text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
        finish = [c.choices[0].finish_reason for c in pieces if c.choices][-1]
    else:
        answer = client(server).chat.completions.create(model=MODEL, messages=QUESTION, stop=" capital")
        text, finish = answer.choices[0].message.content, answer.choices[0].finish_reason
    assert (text, finish) == ("Paris is the", "stop")


def test_multi_turn_sends_the_whole_conversation(server: ServerHandle, backend: ScriptedBackend) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        *QUESTION,
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    client(server).chat.completions.create(model=MODEL, messages=messages)
    assert backend.prompts[-1] == backend.render_chat(messages)


def test_text_completions_and_model_listing(server: ServerHandle, backend: ScriptedBackend) -> None:
    answer = client(server).completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5)
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == ("Paris", "length")
    assert backend.prompts[-1] == "The capital of France is"  # no chat template on /completions
    assert [m.id for m in client(server).models.list()] == [MODEL]
    assert client(server).models.retrieve(MODEL).owned_by == "nbkit"


def test_v1_paths_alias_the_v3_ones(server: ServerHandle) -> None:
    v1 = openai.OpenAI(base_url=f"{server.root}/v1", api_key="unused", max_retries=0)
    assert v1.chat.completions.create(model=MODEL, messages=QUESTION).choices[0].message.content


def test_health_readiness_and_metrics(server: ServerHandle) -> None:
    health = httpx.get(f"{server.root}/health")
    assert health.status_code == 200 and health.json()["model"] == MODEL
    assert httpx.get(f"{server.root}/v2/health/ready").status_code == 200
    client(server).chat.completions.create(model=MODEL, messages=QUESTION)
    page = httpx.get(f"{server.root}/metrics").text
    assert 'nbkit_requests_total{endpoint="chat",status="200"} 1.0' in page
    assert "nbkit_generated_tokens_total 31.0" in page  # the scripted answer's characters
    for name in ("nbkit_requests_waiting", "nbkit_time_to_first_token_seconds_count", "nbkit_generated_tokens_per_second"):
        assert name in page


def test_served_name_drops_the_cache_hash() -> None:
    from pathlib import Path

    assert served_name(Path("/c/smollm2-135m-instruct-int4_sym-g64-r1-cb26010ce4ff868c")) == (
        "smollm2-135m-instruct-int4_sym-g64-r1"
    )
    assert served_name(Path("/models/my-model")) == "my-model"


# -- bad requests: OpenAI-style errors, and the server goes on --------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"model": "scripted-model", "messages": [', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (chat_body(max_tokens="5"), "max_tokens: Input should be a valid integer"),
        (chat_body(temperature="hot"), "temperature"),
        (chat_body(messages=[]), "messages"),
        (chat_body(messages=[{"role": "robot", "content": "hi"}]), "messages.0.role"),
        (chat_body(n=2), "n:"),
        (chat_body(tools=[{"type": "function", "function": {"name": "f"}}]), "tools is not supported"),
        (chat_body(stop=["a", "b", "c", "d", "e"]), "stop"),
        ({"messages": QUESTION}, "model: Field required"),
    ],
)
def test_malformed_requests_get_400_with_one_sentence(server: ServerHandle, body: Any, expected: str) -> None:
    answer = post(server, "/v3/chat/completions", body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert expected in error["message"] and error["type"] == "invalid_request_error"
    still_serves(server)


def test_openai_client_raises_its_own_errors(server: ServerHandle) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(server).chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert "gpt-4o" in str(info.value) and MODEL in str(info.value)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client(server).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=0)
    still_serves(server)


def test_unknown_paths_get_openai_shaped_404(server: ServerHandle) -> None:
    answer = httpx.get(f"{server.root}/v3/embeddings")
    assert answer.status_code == 404 and "error" in answer.json()
    assert httpx.get(f"{server.root}/v3/models/other").status_code == 404


def test_a_prompt_longer_than_the_context_is_400_naming_the_context() -> None:
    handle = start(ScriptedBackend(context_length=60))
    try:
        long = [{"role": "user", "content": "word " * 40}]
        answer = post(handle, "/v3/chat/completions", chat_body(messages=long))
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert "maximum context length is 60 tokens" in error["message"]
        assert error["code"] == "context_length_exceeded"
        # A prompt that fits, with a max_tokens that does not, is refused the same way.
        answer = post(handle, "/v3/chat/completions", chat_body(max_tokens=50))
        assert answer.status_code == 400 and "60 tokens" in answer.json()["error"]["message"]
        still_serves(handle)
    finally:
        handle.stop()


def test_a_body_over_the_limit_is_413_and_nothing_is_generated(backend: ScriptedBackend) -> None:
    handle = start(backend, max_body_bytes=4096)
    try:
        big = chat_body(messages=[{"role": "user", "content": "x" * 10_000}])
        answer = post(handle, "/v3/chat/completions", big)
        assert answer.status_code == 413 and "4096 bytes" in answer.json()["error"]["message"]
        # Without a Content-Length (chunked upload) the limit still holds.
        chunks = iter([json.dumps(big).encode()[i : i + 1000] for i in range(0, 11_000, 1000)])
        answer = httpx.post(f"{handle.root}/v3/chat/completions", content=chunks, timeout=20)
        assert answer.status_code == 413
        assert backend.prompts == []
        still_serves(handle)
    finally:
        handle.stop()


def test_a_full_queue_is_503_with_retry_after_and_the_queue_drains() -> None:
    backend = ScriptedBackend(delay_s=0.05)  # about 1.5 s per answer
    handle = start(backend, max_queue=1)
    results: list[str] = []

    def ask() -> None:
        answer = client(handle).chat.completions.create(model=MODEL, messages=QUESTION)
        results.append(answer.choices[0].message.content or "")

    try:
        running, waiting = threading.Thread(target=ask), threading.Thread(target=ask)
        running.start()
        _wait_for(lambda: backend.active == 1)
        waiting.start()
        _wait_for(lambda: "nbkit_requests_waiting 1.0" in httpx.get(f"{handle.root}/metrics").text)
        refused = post(handle, "/v3/chat/completions", chat_body())
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "server_overloaded"
        running.join(30)
        waiting.join(30)
        assert results == [backend.answer] * 2  # the queued request was served, in turn
        assert backend.max_active == 1  # never more than the backend's places
        still_serves(handle)
    finally:
        handle.stop()


def test_a_client_leaving_mid_stream_frees_its_place_at_once() -> None:
    backend = ScriptedBackend("x" * 400, delay_s=0.02)  # 8 s if it ran to the end
    handle = start(backend)
    try:
        with httpx.stream("POST", f"{handle.root}/v3/chat/completions", json=chat_body(stream=True)) as answer:
            lines = answer.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            next(line for line in lines if '"content": "x"' in line)
        # The client is gone: the engine's request is cancelled and the next one runs at once.
        _wait_for(lambda: backend.cancelled == [1], timeout=3)
        started = time.monotonic()
        answer = client(handle).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3)
        assert answer.choices[0].message.content == "xxx"
        assert time.monotonic() - started < 5  # not behind the 8 s the abandoned answer had left
    finally:
        handle.stop()


def test_a_non_streaming_client_that_leaves_is_cancelled_too() -> None:
    backend = ScriptedBackend("x" * 400, delay_s=0.02)
    handle = start(backend)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{handle.root}/v3/chat/completions", json=chat_body(), timeout=0.5)
        _wait_for(lambda: backend.cancelled == [1], timeout=3)
    finally:
        handle.stop()


# -- security defaults ---------------------------------------------------------------------------


def test_an_api_key_is_required_when_set(backend: ScriptedBackend) -> None:
    handle = start(backend, api_key="s3cret")
    try:
        for key in ("wrong", ""):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=handle.url, api_key=key or "x", max_retries=0).models.list()
        answer = httpx.get(f"{handle.url}/models")
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{handle.root}/metrics").status_code == 401
        assert post(handle, "/v3/chat/completions", chat_body()).status_code == 401
        assert backend.prompts == []  # nothing ran for a request without the key
        assert httpx.get(f"{handle.root}/health").status_code == 200  # probes need no key
        still_serves(handle, "s3cret")
    finally:
        handle.stop()


def test_no_cors_unless_an_origin_is_named(backend: ScriptedBackend) -> None:
    origin = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    handle = start(backend)
    try:
        answer = httpx.options(f"{handle.url}/chat/completions", headers=origin)
        assert "access-control-allow-origin" not in answer.headers
    finally:
        handle.stop()
    handle = start(backend, cors_origins=("http://localhost:3000",))
    try:
        allowed = {**origin, "Origin": "http://localhost:3000"}
        answer = httpx.options(f"{handle.url}/chat/completions", headers=allowed)
        assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"
        answer = httpx.options(f"{handle.url}/chat/completions", headers=origin)
        assert "access-control-allow-origin" not in answer.headers
    finally:
        handle.stop()


def test_binding_beyond_loopback_without_a_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("myhost")
    assert ServeOptions().host == "127.0.0.1"
    with caplog.at_level(logging.WARNING, logger="nbkit.server.server"):
        _warn_if_exposed(ServeOptions(host="127.0.0.1"))
        _warn_if_exposed(ServeOptions(host="0.0.0.0", api_key="k"))
        assert not caplog.records
        _warn_if_exposed(ServeOptions(host="0.0.0.0"))
    assert "without an API key" in caplog.text and "0.0.0.0" in caplog.text


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"port": 70000}, "port must be a whole number from 0 to 65535"),
        ({"port": "8000"}, "port must be"),
        ({"max_batch": 0}, "max_batch must be"),
        ({"max_queue": -1}, "max_queue must be"),
        ({"api_key": ""}, "api_key must be a non-empty string"),
        ({"host": ""}, "host must be"),
        ({"cors_origins": ("evil",)}, "A CORS origin is"),
        ({"shutdown_timeout": float("nan")}, "shutdown_timeout"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
    ],
)
def test_bad_options_are_one_sentence(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ServeOptions(**fields)


def test_a_port_in_use_is_one_sentence_and_the_model_is_freed(backend: ScriptedBackend) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"Cannot listen on 127.0.0.1:{port}"):
            _start_in_background(backend, FAKE_ENGINE, ServeOptions(port=port))


def test_stop_finishes_running_answers_then_refuses_new_ones() -> None:
    backend = ScriptedBackend(delay_s=0.02)  # under a second per answer
    handle = start(backend)
    results: list[str] = []
    asking = threading.Thread(
        target=lambda: results.append(
            client(handle).chat.completions.create(model=MODEL, messages=QUESTION).choices[0].message.content or ""
        )
    )
    asking.start()
    _wait_for(lambda: backend.active == 1)
    handle.stop()
    asking.join(10)
    assert results == [backend.answer]  # finished within shutdown_timeout, not cut
    assert backend.closed and not handle.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{handle.root}/health")


def test_stop_cancels_what_outlives_the_grace_period() -> None:
    backend = ScriptedBackend("x" * 1000, delay_s=0.02)  # 20 s
    handle = start(backend, shutdown_timeout=0.5)
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            list(client(handle).chat.completions.create(model=MODEL, messages=QUESTION, stream=True))
        except Exception as exc:  # the stream ends early; the client may report it
            failures.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    _wait_for(lambda: backend.active == 1)
    started = time.monotonic()
    handle.stop()
    asking.join(10)
    assert not asking.is_alive()
    assert time.monotonic() - started < 8
    _wait_for(lambda: backend.cancelled == [1], timeout=3)


# -- stop strings, unit ------------------------------------------------------------------------


def test_stop_strings_hold_back_only_what_could_begin_one() -> None:
    stops = StopStrings(["\n\n", "END"])
    shown = [stops.feed(p) for p in ["Hello E", "N", "x wor", "ld\n", "\nmore"]]
    assert shown == ["Hello ", "", "ENx wor", "ld", ""] and stops.hit
    stops = StopStrings(["END"])
    assert [stops.feed("abc E"), stops.feed("N")] == ["abc ", ""]
    assert stops.finish() == "EN"  # the answer ended: what was held was text after all
    assert StopStrings([]).feed("anything") == "anything"


def _wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["serve", "--port", "70000"], 2, "port must be a whole number from 0 to 65535"),
        (["serve", "--max-batch", "0"], 2, "max_batch must be"),
        (["serve", "--cors-origin", "evil"], 2, "A CORS origin is"),
        (["serve", "/no/such/model/folder"], 1, "/no/such/model/folder"),
        (["serve", "--device", "TPU"], 1, "TPU"),
    ],
)
def test_cli_refuses_bad_flags_before_loading_anything(
    argv: list[str], code: int, expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    from nbkit.cli.main import main

    assert main(["--cache-dir", str(tmp_path / "cache"), *argv]) == code
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing built
