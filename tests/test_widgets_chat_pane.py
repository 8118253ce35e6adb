"""ChatPane driven like a user: streaming, turns, Stop, Regenerate, Clear, examples, settings,
transcripts, earlier conversations, side by side, refusals.

Most tests plug in a scripted engine (any BaseChatSession works); one chats with the tiny
random model through openvino-genai, so the default engine is covered too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from nbkit import Cache, ExportConfig, GenerationSettings, RuntimeConfig, export_openvino
from nbkit import widgets as panels
from nbkit.config import AssistedDecoding
from nbkit.engines.base import BaseChatSession, TurnMetrics
from nbkit.errors import DeviceError, NbkitError

SHARED_CACHE = "nbkit-shared-tiny-cache"
TIMEOUT_S = 60
ANSWER = ["The", " capital", " of", " France", " is", " Paris", "."]


class ScriptedSession(BaseChatSession):
    """An engine that answers with ANSWER, piece by piece, ``delay`` seconds apart.

    The answer ends after ANSWER (as a model's end-of-sequence token would), or, ``endless``,
    only at ``max_new_tokens`` or a stop.
    """

    engine = "scripted"
    created: list[ScriptedSession] = []  # noqa: RUF012 - a test registry

    def __init__(
        self,
        model_path: Path,
        runtime: RuntimeConfig,
        settings: GenerationSettings,
        delay: float = 0.0,
        endless: bool = False,
    ) -> None:
        super().__init__(model_path, runtime, settings, None)
        self.delay = delay
        self.endless = endless
        self.closed = False
        self.started = threading.Event()
        ScriptedSession.created.append(self)

    def close(self) -> None:
        self.closed = True
        super().close()

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
        limit = settings.max_new_tokens if self.endless else min(settings.max_new_tokens, len(ANSWER))
        for index in range(limit):
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


def scripted(
    delay: float = 0.0, endless: bool = False
) -> Callable[[Path, RuntimeConfig, GenerationSettings], BaseChatSession]:
    return lambda path, runtime, settings: ScriptedSession(path, runtime, settings, delay, endless)


@pytest.fixture
def pane(tmp_path: Path) -> panels.ChatPane:
    model = tmp_path / "some-model"
    model.mkdir()
    chat = panels.ChatPane(
        model,
        session_factory=scripted(),
        export_dir=tmp_path / "transcripts",
        settings=GenerationSettings(max_new_tokens=32),
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


def test_turns_accumulate_and_new_chat_clears_but_keeps_the_old_one(pane: panels.ChatPane) -> None:
    for question in ("First?", "Second?"):
        assert pane.send(question)
        assert pane.wait(TIMEOUT_S) == "finished"
    assert [t.prompt for t in pane.turns] == ["First?", "Second?"]
    assert len(pane.session.messages) == 4  # type: ignore[union-attr]
    assert len(pane.history.children) == 6
    assert pane.past_conversations == []
    assert pane.new_chat() is True
    assert pane.turns == [] and pane.history.children == (pane.empty,)
    assert "New chat started" in pane.view.notice.value
    # The conversation is not lost: it can be read and downloaded under Earlier conversations.
    (past,) = pane.past_conversations
    assert [t.prompt for t in past.turns] == ["First?", "Second?"] and past.model_label == "some-model"
    assert "**User:** Second?" in past.markdown and json.loads(past.json)["turns"][1]["prompt"] == "Second?"
    assert "First?" in pane.past_view.value and 'download="chat-some-model-1.md"' in pane.past_view.value
    assert "Earlier conversations (1)" in pane.extras.titles
    assert pane.new_chat() is True and len(pane.past_conversations) == 1  # nothing said: nothing kept


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
        tmp_path,
        session_factory=scripted(delay=0.05, endless=True),
        settings=GenerationSettings(max_new_tokens=500),
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
    assert "stopped" in _bubbles(chat)[2] and "token limit" not in _bubbles(chat)[2]
    assert chat.stop() is False  # nothing to stop any more
    chat.close()


def test_stop_before_the_first_token_still_stops(tmp_path: Path) -> None:
    chat = panels.ChatPane(
        tmp_path,
        session_factory=scripted(delay=0.05, endless=True),
        settings=GenerationSettings(max_new_tokens=500),
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


def test_transcripts_are_offered_for_download_and_saved_where_asked(
    pane: panels.ChatPane, tmp_path: Path
) -> None:
    assert "download=" not in pane.downloads.value  # nothing to download yet
    pane.send("What is the capital of France?")
    pane.wait(TIMEOUT_S)
    # A download carries the transcript itself: no file is written for it.
    assert (
        pane.downloads.value.count("download=") == 2 and "data:text/markdown;base64," in pane.downloads.value
    )
    assert not (tmp_path / "transcripts").exists()
    markdown = pane.save_transcript("markdown")
    as_json = pane.save_transcript("json", folder=tmp_path / "chosen")
    assert markdown is not None and markdown.parent == tmp_path / "transcripts"
    assert "**Assistant:** The capital of France is Paris." in markdown.read_text()
    assert as_json is not None and as_json.parent == tmp_path / "chosen"
    data = json.loads(as_json.read_text())
    assert data["engine"] == "scripted" and data["turns"][0]["metrics"]["generated_tokens"] == 7
    assert str(as_json) in pane.saved.value
    pane.save_folder.value = str(tmp_path / "typed")
    typed = pane.save_transcript()
    assert typed is not None and typed.parent == tmp_path / "typed"
    assert pane.save_transcript("pdf") is None and "markdown or json" in pane.view.notice.value


def test_default_transcript_folder_is_the_users_documents_never_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents, kernel_cwd = tmp_path / "Documents", tmp_path / "notebooks"
    kernel_cwd.mkdir()
    monkeypatch.setattr(platformdirs, "user_documents_dir", lambda: str(documents))
    monkeypatch.chdir(kernel_cwd)
    chat = panels.ChatPane(tmp_path / "model", session_factory=scripted())
    assert chat.export_dir == documents / "nbkit" / "transcripts" == panels.chat_pane.default_transcript_dir()
    chat.send("Hi")
    assert chat.wait(TIMEOUT_S) == "finished"
    saved = chat.save_transcript()
    assert saved is not None and saved.parent == documents / "nbkit" / "transcripts"
    assert list(kernel_cwd.iterdir()) == []
    chat.close()


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


def test_new_model_starts_a_new_conversation_and_keeps_the_old_one(
    pane: panels.ChatPane, tmp_path: Path
) -> None:
    pane.send("One")
    pane.wait(TIMEOUT_S)
    other = tmp_path / "other-model"
    other.mkdir()
    pane.set_model(other, label="other")
    assert pane.session is None and pane.history.children == (pane.empty,)
    assert "other" in pane.header.value
    (past,) = pane.past_conversations
    assert past.model_label == "some-model" and [t.prompt for t in past.turns] == ["One"]
    assert "One" in pane.past_view.value
    pane.set_model(other, label="other")  # the same model again: nothing changes
    assert len(pane.past_conversations) == 1


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.01)


def test_one_scroll_container_anchored_at_the_bottom(pane: panels.ChatPane) -> None:
    # The browser keeps a column-reverse scroller's bottom in view while it grows; an inner box
    # with its own overflow or height would scroll instead (the history stayed at its top).
    assert "nbkit-chat-history" in pane.scroller._dom_classes
    assert pane.scroller.layout.flex_flow == "column-reverse" and pane.scroller.layout.height
    assert pane.scroller.layout.overflow.split()[-1] == "auto"
    assert pane.scroller.children == (pane.history,)
    assert pane.history.layout.overflow == "visible" and pane.history.layout.height is None


def test_send_and_stop_sit_in_one_row_and_switch_while_streaming(tmp_path: Path) -> None:
    chat = panels.ChatPane(
        tmp_path,
        session_factory=scripted(delay=0.05, endless=True),
        settings=GenerationSettings(max_new_tokens=500),
    )
    row = next(c for c in chat.children if chat.send_button in getattr(c, "children", ()))
    assert row.children[:3] == (chat.prompt, chat.send_button, chat.stop_button)
    assert "nbkit-chat-compose" in row._dom_classes
    for button, css in (
        (chat.send_button, "nbkit-send"),
        (chat.stop_button, "nbkit-stop"),
        (chat.regenerate_button, "nbkit-regenerate"),
        (chat.new_button, "nbkit-new-chat"),
    ):
        assert css in button._dom_classes
    assert not chat.send_button.disabled and chat.stop_button.disabled
    assert chat.regenerate_button.disabled  # nothing to ask again yet
    chat.send("Talk")
    assert chat.send_button.disabled and not chat.stop_button.disabled
    assert chat.regenerate_button.disabled and chat.new_button.disabled
    assert all(b.disabled for b in chat.example_buttons)
    _wait_until(lambda: len(chat.current_text) > 5)
    chat.stop_button.click()
    assert chat.wait(TIMEOUT_S) == "cancelled"
    assert not chat.send_button.disabled and chat.stop_button.disabled
    assert not chat.regenerate_button.disabled
    chat.close()


def test_stale_messages_clear(tmp_path: Path) -> None:
    chat = panels.ChatPane(
        tmp_path,
        session_factory=scripted(delay=0.05, endless=True),
        settings=GenerationSettings(max_new_tokens=500),
    )
    chat.send("One")
    assert chat.send("Two") is False and "Still answering" in chat.view.notice.value
    _wait_until(lambda: len(chat.current_text) > 5)
    chat.stop()
    assert chat.wait(TIMEOUT_S) == "cancelled"
    assert "Still answering" not in chat.view.notice.value  # the answer ended
    assert "Stopped after" in chat.view.status.value
    assert chat.new_chat()  # the next action: the cancelled status is gone
    assert "Stopped after" not in chat.view.status.value and "Ready" in chat.view.status.value
    chat.close()


def test_examples_fill_and_send(pane: panels.ChatPane) -> None:
    assert len(pane.example_buttons) >= 3
    assert all("nbkit-example" in b._dom_classes for b in pane.example_buttons)
    pane.example_buttons[1].click()
    assert pane.wait(TIMEOUT_S) == "finished"
    assert pane.turns[0].prompt == panels.chat_pane.EXAMPLE_PROMPTS[1]


def test_regenerate_replaces_the_last_answer(pane: panels.ChatPane) -> None:
    assert pane.regenerate() is False and "Nothing to regenerate" in pane.view.notice.value
    for question in ("First?", "Second?"):
        pane.send(question)
        pane.wait(TIMEOUT_S)
    first_answer = pane.history.children[4]
    assert pane.regenerate() is True
    assert pane.wait(TIMEOUT_S) == "finished"
    assert [t.prompt for t in pane.turns] == ["First?", "Second?"]
    assert len(pane.session.messages) == 4  # type: ignore[union-attr]
    assert len(pane.history.children) == 6 and pane.history.children[4] is not first_answer
    assert "Second?" in pane.history.children[3].value


def test_load_time_is_shown_apart_from_the_speed(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_loading(path: Path, runtime: RuntimeConfig, settings: GenerationSettings) -> BaseChatSession:
        release.wait(TIMEOUT_S)
        return ScriptedSession(path, runtime, settings)

    chat = panels.ChatPane(tmp_path, session_factory=slow_loading)
    messages: list[str] = []
    chat.task.observe(lambda c: messages.append(c["new"]), "message")
    chat.send("Hi")
    # While the model loads, the status counts the seconds (it never sits still at 0 %).
    _wait_until(lambda: any(m.startswith("Loading the model… ") for m in messages))
    assert "%" not in chat.view.status.value and "Loading the model… " in chat.view.status.value
    release.set()
    assert chat.wait(TIMEOUT_S) == "finished"
    first_meta = chat.history.children[2].value
    assert first_meta.index("TTFT") < first_meta.index("Model loaded in")
    assert "not counted in the speed" in first_meta and "model loaded in" in chat.view.status.value
    chat.send("Again")
    assert chat.wait(TIMEOUT_S) == "finished"
    assert "Model loaded" not in chat.history.children[5].value  # loaded once
    chat.close()


def test_an_answer_cut_at_max_tokens_says_so(tmp_path: Path) -> None:
    chat = panels.ChatPane(
        tmp_path, session_factory=scripted(endless=True), settings=GenerationSettings(max_new_tokens=3)
    )
    chat.send("Hi")
    assert chat.wait(TIMEOUT_S) == "finished"
    assert chat.turns[0].reached_token_limit
    assert "stopped at the token limit (3 tokens)" in chat.history.children[2].value
    assert "stopped at the token limit (3 tokens)" in chat.view.status.value
    assert "*(stopped at the token limit)*" in chat.transcript_markdown()
    chat.max_new_tokens.value = 1
    chat.send("Hi")
    chat.wait(TIMEOUT_S)
    assert "· 1 token ·" in chat.history.children[5].value and "(1 token)" in chat.history.children[5].value
    chat.close()


def test_an_answer_the_model_ended_is_not_cut(pane: panels.ChatPane) -> None:
    pane.send("Hi")
    pane.wait(TIMEOUT_S)
    assert not pane.turns[0].reached_token_limit
    assert "token limit" not in pane.history.children[2].value + pane.view.status.value


def test_side_by_side_sends_one_prompt_to_two_models(pane: panels.ChatPane, tmp_path: Path) -> None:
    float_model = tmp_path / "float-model"
    float_model.mkdir()
    own = Path(pane.model_path)
    pane.available_models = [float_model, own]
    assert [label for label, _ in pane.compare_with.options] == ["nothing", "float-model"]  # not itself
    assert pane.compare_model is None and pane.compare_with.value == -1
    pane.compare_with.value = 0
    assert pane.compare_model == float_model
    assert pane.send("What is the capital of France?")
    assert pane.wait(TIMEOUT_S) == "finished"
    assert [t.prompt for t in pane.turns] == [t.prompt for t in pane.compare_turns]
    assert pane.compare_session is not None and pane.compare_session.model_path == float_model
    assert pane.session is not None and pane.session.model_path == own
    user, columns = pane.history.children
    assert "What is the capital" in user.value
    assert "nbkit-compare-row" in columns._dom_classes
    left, right = columns.children
    assert "some-model" in left.children[0].value and "float-model" in right.children[0].value
    assert all("Paris" in c.children[1].value and "TTFT" in c.children[2].value for c in (left, right))
    assert "float-model" in pane.view.status.value
    assert "float-model" in pane.downloads.value  # its transcript can be downloaded too
    # Regenerate asks both again; no comparison any more is one column again.
    assert pane.regenerate() and pane.wait(TIMEOUT_S) == "finished"
    assert len(pane.turns) == len(pane.compare_turns) == 1
    pane.compare_with.value = -1
    assert pane.compare_model is None and pane.compare_session is None
    assert len(pane.past_conversations) == 1  # the compared model's side is kept
    pane.send("Again")
    pane.wait(TIMEOUT_S)
    assert len(pane.history.children) == 5


def test_a_stop_during_the_compared_answer_keeps_the_first(tmp_path: Path) -> None:
    model, other = tmp_path / "a", tmp_path / "b"
    model.mkdir()
    other.mkdir()
    sessions: dict[Path, ScriptedSession] = {}

    def factory(path: Path, runtime: RuntimeConfig, settings: GenerationSettings) -> BaseChatSession:
        sessions[path] = ScriptedSession(path, runtime, settings, delay=0.02, endless=path == other)
        return sessions[path]

    chat = panels.ChatPane(model, session_factory=factory, settings=GenerationSettings(max_new_tokens=500))
    chat.compare_model = other  # not offered yet: offered from now on
    assert chat.available_models == [other] and chat.compare_with.value == 0
    chat.send("Hi")
    _wait_until(lambda: len(chat.compare_text) > 5)
    chat.stop()
    assert chat.wait(TIMEOUT_S) == "cancelled"
    assert chat.turns[0].text == "".join(ANSWER) and chat.compare_turns[0].stopped
    assert "both answers are kept" in chat.view.status.value
    chat.close()


def test_closing_closes_both_sessions(pane: panels.ChatPane, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    pane.compare_model = other
    pane.send("Hi")
    pane.wait(TIMEOUT_S)
    sessions = [pane.session, pane.compare_session]
    pane.close()
    assert pane.session is None and pane.compare_session is None
    assert all(isinstance(s, ScriptedSession) and s.closed for s in sessions)


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
    # openvino-genai says why the answer ended; the pane says "token limit" only when it was cut
    assert turn.finish_reason in ("length", "stop")
    assert turn.reached_token_limit == (turn.finish_reason == "length")
    assert ("stopped at the token limit" in chat.history.children[2].value) == turn.reached_token_limit
    assert pieces[-1] == turn.text or turn.text.startswith(pieces[-1])
    assert "Loaded" in "".join(o.get("text", "") for o in chat.log_output.outputs)
    chat.close()


# -- preload and prompt lookup ------------------------------------------------------------------------


class SlowLoadingSession(ScriptedSession):
    """Loading takes ``load_s`` and ends with a warm-up, as the engines' sessions do."""

    def __init__(self, *args: Any, load_s: float = 0.3, assisted: Any = None, **kwargs: Any) -> None:
        time.sleep(load_s)
        super().__init__(*args, **kwargs)
        self.assisted = assisted
        self.warmup_s = 0.05
        self.load_s = load_s


def test_preload_loads_and_warms_up_when_a_model_is_set_and_a_message_sent_meanwhile_waits(
    tmp_path: Path,
) -> None:
    opened: list[Any] = []

    def factory(path: Path, runtime: RuntimeConfig, settings: GenerationSettings, **options: Any) -> Any:
        opened.append(options.get("assisted"))
        return SlowLoadingSession(path, runtime, settings, **options)

    model = tmp_path / "some-model"
    model.mkdir()
    chat = panels.ChatPane(session_factory=factory, settings=GenerationSettings(max_new_tokens=32))
    chat.preload = True
    try:
        chat.set_model(model)
        assert chat.task.running and chat.task.message.startswith("Loading the model")
        assert chat.send("What is the capital of France?")  # queued behind the preload, not refused
        assert chat.wait(TIMEOUT_S) == "finished"
        assert len(opened) == 1 and chat.turns[-1].text == "".join(ANSWER)  # loaded once, answered
        assert "warmed up" not in chat.task.message  # the final status is the answer's
        assert "warm-up 50 ms included" in "".join(o["text"] for o in chat.log_output.outputs)
        assert not chat.load()  # loaded already: nothing to do
    finally:
        chat.close()


def test_a_model_changed_during_a_preload_is_loaded_next_and_answers_the_waiting_message(
    tmp_path: Path,
) -> None:
    opened: list[str] = []

    def factory(path: Path, runtime: RuntimeConfig, settings: GenerationSettings, **options: Any) -> Any:
        opened.append(path.name)
        return SlowLoadingSession(path, runtime, settings, load_s=0.4, **options)

    first, second = tmp_path / "first-model", tmp_path / "second-model"
    first.mkdir()
    second.mkdir()
    chat = panels.ChatPane(session_factory=factory, settings=GenerationSettings(max_new_tokens=32))
    chat.preload = True
    try:
        chat.set_model(first)
        time.sleep(0.1)  # the first model's load is under way: a change cancels it, it cannot stop at once
        chat.set_model(second)
        assert chat.send("Hello")  # waits for the second model, not refused, not lost with the first
        assert chat.wait(TIMEOUT_S) == "finished", chat.task.error
        assert opened[-1] == "second-model" and chat.session is not None
        assert chat.session.model_path.name == "second-model"
        assert [turn.prompt for turn in chat.turns] == ["Hello"]
    finally:
        chat.close()


def test_prompt_lookup_reaches_the_engine_and_a_change_reloads_the_model(tmp_path: Path) -> None:
    opened: list[Any] = []

    def factory(path: Path, runtime: RuntimeConfig, settings: GenerationSettings, **options: Any) -> Any:
        opened.append(options.get("assisted"))
        return SlowLoadingSession(path, runtime, settings, load_s=0.0, **options)

    model = tmp_path / "some-model"
    model.mkdir()
    chat = panels.ChatPane(model, session_factory=factory, settings=GenerationSettings(max_new_tokens=32))
    try:
        assert chat.send("Hi") and chat.wait(TIMEOUT_S) == "finished"
        chat.prompt_lookup_box.value = True  # the checkbox sets the trait
        assert chat.prompt_lookup and chat.assisted_decoding() == AssistedDecoding.prompt_lookup()
        assert chat.send("Hi again") and chat.wait(TIMEOUT_S) == "finished"
        assert chat.send("And again") and chat.wait(TIMEOUT_S) == "finished"
        assert opened == [None, AssistedDecoding.prompt_lookup()]  # reloaded once for the change, then reused
        assert len(chat.turns) == 3  # the conversation carried over
    finally:
        chat.close()


def test_a_preload_that_fails_gives_the_queued_message_back(tmp_path: Path) -> None:
    def failing(path: Path, runtime: RuntimeConfig, settings: GenerationSettings, **options: Any) -> Any:
        time.sleep(0.2)
        raise NbkitError("The model folder is broken.")

    model = tmp_path / "some-model"
    model.mkdir()
    chat = panels.ChatPane(session_factory=failing, settings=GenerationSettings(max_new_tokens=32))
    chat.preload = True
    try:
        chat.set_model(model)
        chat.prompt.value = "Are you there?"
        assert chat.send()
        assert chat.wait(TIMEOUT_S) == "error" and "broken" in chat.task.error
        assert chat.prompt.value == "Are you there?" and chat.turns == []
    finally:
        chat.close()
