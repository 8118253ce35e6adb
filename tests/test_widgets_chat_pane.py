"""ChatPane driven like a user: streaming, turns, Stop, New chat, settings, transcripts, refusals.

Most tests plug in a scripted engine (any BaseChatSession works); one chats with the tiny
random model through openvino-genai, so the default engine is covered too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nbkit import Cache, ExportConfig, GenerationSettings, RuntimeConfig, export_openvino
from nbkit import widgets as panels
from nbkit.engines.base import BaseChatSession, TurnMetrics
from nbkit.errors import DeviceError

SHARED_CACHE = "nbkit-shared-tiny-cache"
TIMEOUT_S = 60
ANSWER = ["The", " capital", " of", " France", " is", " Paris", "."]


class ScriptedSession(BaseChatSession):
    """An engine that answers with ANSWER, piece by piece, ``delay`` seconds apart."""

    engine = "scripted"
    created: list[ScriptedSession] = []  # noqa: RUF012 - a test registry

    def __init__(
        self, model_path: Path, runtime: RuntimeConfig, settings: GenerationSettings, delay: float = 0.0
    ) -> None:
        super().__init__(model_path, runtime, settings, None)
        self.delay = delay
        self.started = threading.Event()
        ScriptedSession.created.append(self)

    def _count_tokens(self, conversation: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 4 for m in conversation)

    def _generate(
        self,
        conversation: list[dict[str, str]],
        settings: GenerationSettings,
        on_piece: Callable[[str], bool],
    ) -> tuple[str, TurnMetrics]:
        pieces: list[str] = []
        started = time.perf_counter()
        self.started.set()
        for index in range(settings.max_new_tokens):
            time.sleep(self.delay)
            piece = ANSWER[index % len(ANSWER)]
            pieces.append(piece)
            if not on_piece(piece):
                break
        total = time.perf_counter() - started
        metrics = TurnMetrics(
            input_tokens=self._count_tokens(conversation),
            generated_tokens=len(pieces),
            ttft_ms=12.0,
            tpot_ms=3.0,
            tokens_per_s=len(pieces) / max(total, 1e-6),
            total_s=total,
        )
        return "".join(pieces), metrics


def scripted(delay: float = 0.0) -> Callable[[Path, RuntimeConfig, GenerationSettings], BaseChatSession]:
    return lambda path, runtime, settings: ScriptedSession(path, runtime, settings, delay)


@pytest.fixture
def pane(tmp_path: Path) -> panels.ChatPane:
    model = tmp_path / "some-model"
    model.mkdir()
    chat = panels.ChatPane(
        model,
        session_factory=scripted(),
        export_dir=tmp_path / "transcripts",
        settings=GenerationSettings(max_new_tokens=len(ANSWER)),
    )
    yield chat
    chat.close()


def _bubbles(chat: panels.ChatPane) -> list[str]:
    return [w.value for w in chat.history.children]


def test_answer_streams_piece_by_piece_and_is_measured(pane: panels.ChatPane) -> None:
    seen: list[str] = []
    pane.observe(lambda c: seen.append(c["new"]), "current_text")
    pane.prompt.value = "What is the capital of France?"
    assert pane.send() is True
    assert pane.prompt.value == ""  # the box is cleared for the next message
    assert pane.wait(TIMEOUT_S) == "finished"
    assert "".join(ANSWER) == pane.current_text == pane.turns[0].text
    assert len(seen) >= len(ANSWER)  # one update per piece, not one at the end
    assert seen[:2] == ["The", "The capital"]
    bubbles = _bubbles(pane)
    assert "What is the capital of France?" in bubbles[0] and "Paris" in bubbles[1]
    assert "TTFT 12 ms" in bubbles[2] and "tokens/s" in bubbles[2]
    assert "Answered 7 tokens" in pane.view.status.value


def test_turns_accumulate_and_new_chat_clears(pane: panels.ChatPane) -> None:
    for question in ("First?", "Second?"):
        assert pane.send(question)
        assert pane.wait(TIMEOUT_S) == "finished"
    assert [t.prompt for t in pane.turns] == ["First?", "Second?"]
    assert len(pane.session.messages) == 4  # type: ignore[union-attr]
    assert len(pane.history.children) == 6
    assert pane.new_chat() is True
    assert pane.turns == [] and pane.history.children == (pane.empty,)
    assert "New chat started" in pane.view.notice.value


def test_enter_in_the_text_box_sends(pane: panels.ChatPane) -> None:
    pane.prompt.value = "Hello"
    pane.prompt._handle_custom_msg({"event": "submit"}, [])  # what the browser sends on Enter
    assert pane.wait(TIMEOUT_S) == "finished"
    assert pane.turns[0].prompt == "Hello"


def test_second_send_while_answering_is_refused_politely(tmp_path: Path) -> None:
    chat = panels.ChatPane(tmp_path, session_factory=scripted(delay=0.05))
    assert chat.send("One")
    assert chat.send("Two") is False
    assert "Still answering the previous message" in chat.view.notice.value
    assert chat.new_chat() is False and "Stop the current answer" in chat.view.notice.value
    assert chat.wait(TIMEOUT_S) == "finished"
    assert [t.prompt for t in chat.turns] == ["One"]
    chat.close()


def test_stop_keeps_the_partial_answer_and_ends_cancelled(tmp_path: Path) -> None:
    chat = panels.ChatPane(
        tmp_path, session_factory=scripted(delay=0.05), settings=GenerationSettings(max_new_tokens=500)
    )
    chat.send("Talk for a long time")
    deadline = time.monotonic() + TIMEOUT_S
    while len(chat.current_text) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chat.stop() is True
    assert chat.wait(TIMEOUT_S) == "cancelled"
    turn = chat.turns[0]
    assert turn.stopped and 0 < turn.metrics.generated_tokens < 500
    assert "Stopped after" in chat.view.status.value and "partial answer is kept" in chat.view.status.value
    assert "stopped" in _bubbles(chat)[2]
    assert chat.stop() is False  # nothing to stop any more
    chat.close()


def test_stop_before_the_first_token_still_stops(tmp_path: Path) -> None:
    chat = panels.ChatPane(
        tmp_path, session_factory=scripted(delay=0.05), settings=GenerationSettings(max_new_tokens=500)
    )
    chat.send("Hi")
    chat.stop()
    assert chat.wait(TIMEOUT_S) == "cancelled"
    assert not chat.turns or chat.turns[0].metrics.generated_tokens <= 2
    chat.close()


def test_stop_while_the_model_loads_takes_the_turn_back(tmp_path: Path) -> None:
    loading = threading.Event()

    def slow_loading(path: Path, runtime: RuntimeConfig, settings: GenerationSettings) -> BaseChatSession:
        loading.set()
        time.sleep(0.3)
        return ScriptedSession(path, runtime, settings)

    chat = panels.ChatPane(tmp_path, session_factory=slow_loading)
    chat.prompt.value = "Hi"
    chat.send()
    assert loading.wait(TIMEOUT_S)
    chat.stop()
    assert chat.wait(TIMEOUT_S) == "cancelled"
    assert chat.history.children == (chat.empty,) and chat.prompt.value == "Hi"
    assert chat.session is not None  # the loaded model is kept for the next message
    chat.close()


def test_too_long_a_conversation_is_an_error_shown_and_the_message_given_back(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    chat = panels.ChatPane(
        tmp_path, session_factory=scripted(), settings=GenerationSettings(max_new_tokens=60)
    )
    chat.prompt.value = "A question that does not fit"
    chat.send()
    assert chat.wait(TIMEOUT_S) == "error"
    assert (
        "more than the model" in chat.view.status.value and "context of 64 tokens" in chat.view.status.value
    )
    assert chat.history.children == (chat.empty,)  # the failed turn is not shown as if it happened
    assert chat.prompt.value == "A question that does not fit"
    chat.close()


def test_engine_that_cannot_load_shows_the_error(tmp_path: Path) -> None:
    def failing(path: Path, runtime: RuntimeConfig, settings: GenerationSettings) -> BaseChatSession:
        raise DeviceError("openvino-genai could not load some-model on NPU: not enough memory")

    chat = panels.ChatPane(tmp_path, session_factory=failing)
    chat.send("Hi")
    assert chat.wait(TIMEOUT_S) == "error"
    assert chat.task.error == "openvino-genai could not load some-model on NPU: not enough memory"
    assert chat.session is None
    chat.close()


def test_refusals_without_model_or_text(tmp_path: Path) -> None:
    chat = panels.ChatPane(session_factory=scripted())
    assert chat.send("Hi") is False and "Pick a model first" in chat.view.notice.value
    chat.set_model(tmp_path)
    assert chat.send("   ") is False and "Type a message first" in chat.view.notice.value
    assert chat.save_transcript() is None and "Nothing to save yet" in chat.view.notice.value
    chat.close()


def test_generation_settings_reach_the_engine(pane: panels.ChatPane) -> None:
    assert pane.temperature.disabled and pane.top_p.disabled  # greedy: sampling knobs unused
    pane.do_sample.value = True
    assert not pane.temperature.disabled
    pane.temperature.value = 1.3
    pane.top_p.value = 0.5
    pane.repetition_penalty.value = 1.2
    pane.max_new_tokens.value = 3
    assert pane.settings == GenerationSettings(
        max_new_tokens=3, do_sample=True, temperature=1.3, top_p=0.5, repetition_penalty=1.2
    )
    pane.send("Hi")
    pane.wait(TIMEOUT_S)
    assert pane.turns[0].metrics.generated_tokens == 3


def test_transcripts_are_saved_and_offered_for_download(pane: panels.ChatPane, tmp_path: Path) -> None:
    pane.send("What is the capital of France?")
    pane.wait(TIMEOUT_S)
    markdown = pane.save_transcript("markdown")
    as_json = pane.save_transcript("json")
    assert markdown is not None and markdown.parent == tmp_path / "transcripts"
    assert "**Assistant:** The capital of France is Paris." in markdown.read_text()
    data = json.loads(as_json.read_text())  # type: ignore[union-attr]
    assert data["engine"] == "scripted" and data["turns"][0]["metrics"]["generated_tokens"] == 7
    assert (
        pane.downloads.value.count("download=") == 2 and "data:text/markdown;base64," in pane.downloads.value
    )


def test_new_device_keeps_the_conversation_and_reloads_the_model(pane: panels.ChatPane) -> None:
    pane.send("One")
    pane.wait(TIMEOUT_S)
    first = pane.session
    pane.runtime = RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    assert "THROUGHPUT" in pane.header.value
    pane.send("Two")
    pane.wait(TIMEOUT_S)
    assert (
        pane.session is not first and pane.session.runtime.property_dict["PERFORMANCE_HINT"] == "THROUGHPUT"
    )  # type: ignore[union-attr]
    assert [t.prompt for t in pane.turns] == ["One", "Two"]


def test_new_model_starts_a_new_conversation(pane: panels.ChatPane, tmp_path: Path) -> None:
    pane.send("One")
    pane.wait(TIMEOUT_S)
    other = tmp_path / "other-model"
    other.mkdir()
    pane.set_model(other, label="other")
    assert pane.session is None and pane.history.children == (pane.empty,)
    assert "other" in pane.header.value


def test_real_openvino_chat_with_the_tiny_model(
    tmp_path_factory: pytest.TempPathFactory, tiny_hf_model: Path, tmp_path: Path
) -> None:
    cache = Cache(tmp_path_factory.getbasetemp() / SHARED_CACHE)
    model = export_openvino(tiny_hf_model, ExportConfig(), cache=cache)
    chat = panels.ChatPane(model, settings=GenerationSettings(max_new_tokens=12), export_dir=tmp_path)
    assert model.label in chat.header.value
    pieces: list[str] = []
    chat.observe(lambda c: pieces.append(c["new"]), "current_text")
    chat.send("Hello there")
    assert chat.wait(120) == "finished"
    turn = chat.turns[0]
    assert turn.metrics.generated_tokens > 0 and turn.metrics.ttft_ms > 0
    assert pieces[-1] == turn.text or turn.text.startswith(pieces[-1])
    assert "Loaded" in "".join(o.get("text", "") for o in chat.log_output.outputs)
    chat.close()
