"""ChatSession mechanics on the INT4 tiny random Llama, and nbkit.engines.openvino.devices.

The weights are random, so answers are gibberish: these tests check streaming, token
counts, metrics, stop, busy, context and history handling, never what the model says.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from nbkit import (
    Cache,
    ChatSession,
    CompressionConfig,
    GenerationSettings,
    OVModel,
    RuntimeConfig,
    compress,
    export_openvino,
)
from nbkit.engines.openvino.devices import check_device, list_devices
from nbkit.errors import ConfigError, ContextLengthError, DeviceError, ModelSourceError, NbkitError
from nbkit.infra.cache import ClearReport

SHARED_CACHE = "nbkit-shared-tiny-cache"  # the same folder test_pipeline.py and test_cli.py use
TINY_CONTEXT = 256


def exactly(tokens: int, **options: object) -> GenerationSettings:
    """Settings that generate exactly ``tokens`` tokens (no early end-of-sequence)."""
    return GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def int4_model(tmp_path_factory: pytest.TempPathFactory, tiny_hf_model: Path) -> OVModel:
    cache = Cache(tmp_path_factory.getbasetemp() / SHARED_CACHE)
    float_model = export_openvino(tiny_hf_model, cache=cache)
    return compress(float_model, CompressionConfig(mode="int4_sym", group_size=32), cache=cache)


@pytest.fixture(scope="module")
def shared_session(int4_model: OVModel) -> ChatSession:
    return ChatSession(int4_model, settings=exactly(8))


@pytest.fixture
def session(shared_session: ChatSession) -> ChatSession:
    shared_session.reset()
    shared_session.system_prompt = None
    return shared_session


# -- streaming and metrics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [exactly(24), exactly(40, do_sample=True, temperature=1.5, top_k=0, seed=7)],
    ids=["greedy", "sampled"],
)
def test_streamed_pieces_add_up_to_the_answer(session: ChatSession, settings: GenerationSettings) -> None:
    pieces: list[str] = []
    turn = session.send("Tell me about the weather.", pieces.append, settings=settings)
    assert len(pieces) > 1
    assert "".join(pieces) == turn.text
    assert turn.text
    assert turn.prompt == "Tell me about the weather."
    assert not turn.stopped


@pytest.mark.parametrize("tokens", [1, 13])
def test_min_equal_to_max_new_tokens_forces_the_count(session: ChatSession, tokens: int) -> None:
    turn = session.send("Count with me.", settings=exactly(tokens))
    assert turn.metrics.generated_tokens == tokens


def test_metrics_are_positive_and_input_tokens_match_the_context_check(session: ChatSession) -> None:
    expected_input = session.count_prompt_tokens("How fast are you?")
    started = time.perf_counter()
    turn = session.send("How fast are you?", settings=exactly(10))
    elapsed = time.perf_counter() - started
    m = turn.metrics
    assert m.input_tokens == expected_input > 0
    assert m.generated_tokens == 10
    assert m.ttft_ms > 0 and m.tpot_ms > 0 and m.tokens_per_s > 0
    assert 0 < m.total_s <= elapsed
    assert set(m.to_dict()) == {
        "input_tokens",
        "generated_tokens",
        "ttft_ms",
        "tpot_ms",
        "tokens_per_s",
        "total_s",
        "decode_steps",
    }
    assert m.decode_steps == m.generated_tokens and m.tokens_per_step == 1.0  # plain decoding


def test_multi_turn_grows_the_input_and_the_history(session: ChatSession) -> None:
    first = session.send("First question?")
    second = session.send("Second question?")
    third = session.send("Third question?")
    assert first.metrics.input_tokens < second.metrics.input_tokens < third.metrics.input_tokens
    # The second prompt carries the first exchange, so it exceeds a fresh prompt by at least its answer.
    assert second.metrics.input_tokens >= first.metrics.input_tokens + first.metrics.generated_tokens
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 3
    assert session.messages[0] == {"role": "user", "content": "First question?"}
    assert session.messages[3] == {"role": "assistant", "content": second.text}
    assert session.turns == [first, second, third]


def test_system_prompt_enters_the_conversation(session: ChatSession) -> None:
    without = session.count_prompt_tokens("hi")
    session.system_prompt = "You are a very terse assistant."
    with_system = session.count_prompt_tokens("hi")
    assert with_system > without
    assert session.send("hi").metrics.input_tokens == with_system
    assert json.loads(session.transcript_json())["system_prompt"] == "You are a very terse assistant."


# -- stop and busy -----------------------------------------------------------------------------


def test_stop_from_the_streaming_callback_ends_the_turn_early(session: ChatSession) -> None:
    pieces: list[str] = []

    def stop_after_three(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            session.stop()

    turn = session.send("Talk for a long time.", stop_after_three, settings=exactly(60))
    assert turn.stopped
    assert 3 <= turn.metrics.generated_tokens < 60
    assert turn.text.startswith("".join(pieces[:3]))
    assert session.turns[-1] is turn  # the partial answer is kept in the history
    assert session.messages[-1] == {"role": "assistant", "content": turn.text}
    # The stop flag does not leak into the next turn.
    follow_up = session.send("Go on.", settings=exactly(12))
    assert not follow_up.stopped and follow_up.metrics.generated_tokens == 12


def test_second_send_while_answering_is_refused_politely(session: ChatSession) -> None:
    results: list[object] = []
    streaming, checked = threading.Event(), threading.Event()

    def slow(_: str) -> None:
        streaming.set()
        checked.wait(30)  # hold the first answer until the second send has been tried
        time.sleep(0.05)

    def answer() -> None:
        try:
            results.append(session.send("A long answer please.", slow, settings=exactly(60)))
        except BaseException as exc:  # pragma: no cover - reported by the asserts below
            results.append(exc)

    worker = threading.Thread(target=answer, daemon=True)
    worker.start()
    try:
        assert streaming.wait(30), "the first send never streamed"
        assert session.busy
        with pytest.raises(NbkitError, match=r"still answering the previous message.*wait for it or stop it"):
            session.send("Interrupting!")
        session.stop()
    finally:
        checked.set()
        worker.join(30)
    assert not worker.is_alive()
    assert len(results) == 1 and not isinstance(results[0], BaseException), results
    assert [t.prompt for t in session.turns] == ["A long answer please."]  # the refused one left no trace
    assert results[0].stopped  # type: ignore[attr-defined]
    assert not session.busy


def test_turn_text_is_exactly_what_was_streamed(session: ChatSession) -> None:
    # Whether or not a stop lands before the (very fast) tiny model finishes, the history must
    # hold exactly the text the user was shown.
    pieces: list[str] = []

    def render_then_stop(piece: str) -> None:
        pieces.append(piece)
        time.sleep(0.02)  # a UI rendering each piece
        if len(pieces) == 3:
            session.stop()

    settings = exactly(100, do_sample=True, temperature=1.5, seed=3)
    turn = session.send("Tell me a story.", render_then_stop, settings=settings)
    assert turn.text == "".join(pieces)
    assert session.messages[-1]["content"] == "".join(pieces)


def test_stop_from_a_slow_consumer_ends_decoding_early(session: ChatSession) -> None:
    # The consumer runs on its own thread, so its rendering time does not slow decoding; a stop
    # it sends after 3 pieces (~15 ms) lands long before 200 tokens are decoded.
    pieces: list[str] = []

    def render_then_stop(piece: str) -> None:
        pieces.append(piece)
        time.sleep(0.005)
        if len(pieces) == 3:
            session.stop()

    turn = session.send("Tell me a story.", render_then_stop, settings=exactly(200))
    assert turn.stopped
    assert turn.metrics.generated_tokens < 200
    assert turn.text == "".join(pieces)


def test_stop_while_busy_before_the_first_token_is_not_lost(
    session: ChatSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = threading.Event()
    real_count = session._count_tokens

    def slow_count(conversation: list[dict[str, str]]) -> int:
        counting.set()
        time.sleep(1.0)  # the templating/tokenizing step of a long conversation
        return real_count(conversation)

    monkeypatch.setattr(session, "_count_tokens", slow_count)
    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.append(session.send("Answer at length.", settings=exactly(60))), daemon=True
    )
    worker.start()
    assert counting.wait(30)
    assert session.busy  # the UI shows "answering", and the user presses Stop
    session.stop()
    worker.join(60)
    assert len(results) == 1
    turn = results[0]
    assert turn.stopped  # type: ignore[attr-defined]
    assert turn.metrics.generated_tokens < 60  # type: ignore[attr-defined]


# -- input checks ------------------------------------------------------------------------------


def test_context_check_is_exact_and_leaves_history_unchanged(session: ChatSession) -> None:
    assert session.context_length == TINY_CONTEXT
    session.send("Remember this.")
    messages, turns = [dict(m) for m in session.messages], list(session.turns)

    needed = session.count_prompt_tokens("Next one.")
    with pytest.raises(ContextLengthError, match=r"context of 256 tokens"):
        session.send("Next one.", settings=GenerationSettings(max_new_tokens=TINY_CONTEXT - needed + 1))
    with pytest.raises(ContextLengthError):
        session.send("word " * 300)
    assert session.messages == messages and session.turns == turns
    assert not session.busy

    # Exactly filling the context is allowed.
    fits = session.send("Next one.", settings=GenerationSettings(max_new_tokens=TINY_CONTEXT - needed))
    assert fits.metrics.input_tokens == needed
    assert len(session.turns) == len(turns) + 1


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_a_config_error(session: ChatSession, prompt: str) -> None:
    with pytest.raises(ConfigError, match="empty"):
        session.send(prompt)
    assert session.turns == [] and not session.busy


def test_reset_clears_the_conversation(session: ChatSession) -> None:
    first = session.send("Hello!")
    session.send("And again.")
    session.reset()
    assert session.messages == [] and session.turns == []
    assert "Hello!" not in session.transcript_markdown()
    fresh = session.send("Hello!")
    assert fresh.metrics.input_tokens == first.metrics.input_tokens


def test_transcripts_contain_every_turn(session: ChatSession, int4_model: OVModel) -> None:
    first = session.send("What is a cat?")
    pieces: list[str] = []

    def stop_soon(piece: str) -> None:
        pieces.append(piece)
        session.stop()

    second = session.send("And a dog?", stop_soon, settings=exactly(30))
    assert second.stopped

    markdown = session.transcript_markdown()
    assert markdown.startswith(f"# Chat with {int4_model.path.name}")
    assert "**User:** What is a cat?" in markdown and "**User:** And a dog?" in markdown
    assert f"**Assistant:** {first.text}" in markdown
    assert "*(stopped)*" in markdown
    assert f"{first.metrics.generated_tokens} tokens" in markdown

    data = json.loads(session.transcript_json())
    assert data["model"] == str(int4_model.path)
    assert data["runtime"]["device"] == "CPU"
    assert [t["prompt"] for t in data["turns"]] == ["What is a cat?", "And a dog?"]
    assert [t["text"] for t in data["turns"]] == [first.text, second.text]
    assert [t["stopped"] for t in data["turns"]] == [False, True]
    assert data["turns"][0]["metrics"]["generated_tokens"] == first.metrics.generated_tokens


# -- loading -----------------------------------------------------------------------------------


def _copy_without(model: OVModel, target: Path, missing: str) -> Path:
    shutil.copytree(model.path, target)
    (target / missing).unlink()
    return target


@pytest.mark.parametrize(
    ("missing", "match"),
    [("openvino_model.xml", "openvino_model.xml"), ("openvino_detokenizer.xml", "detokenizer")],
)
def test_incomplete_model_folder_is_a_model_source_error(
    int4_model: OVModel, tmp_path: Path, missing: str, match: str
) -> None:
    folder = _copy_without(int4_model, tmp_path / "model", missing)
    with pytest.raises(ModelSourceError, match=match):
        ChatSession(folder)


def test_not_a_folder_at_all_is_a_model_source_error(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError):
        ChatSession(tmp_path / "nothing-here")


def test_a_plain_path_loads_like_the_ovmodel(int4_model: OVModel) -> None:
    chat = ChatSession(str(int4_model.path), settings=exactly(3))
    assert chat.model_path == int4_model.path
    assert chat.load_s > 0
    assert chat.send("hi").metrics.generated_tokens == 3


def test_unknown_device_is_a_device_error(int4_model: OVModel) -> None:
    with pytest.raises(DeviceError, match="CPU"):
        ChatSession(int4_model, RuntimeConfig.create("TPU"))


# -- devices -----------------------------------------------------------------------------------

FAKE_DEVICES = ["CPU", "GPU.0", "GPU.1", "NPU"]


@pytest.mark.parametrize(
    ("requested", "normalized"),
    [
        ("gpu", "GPU"),
        ("GPU.1", "GPU.1"),
        ("cpu", "CPU"),
        (" npu ", "NPU"),
        ("AUTO", "AUTO"),
        ("AUTO:GPU,CPU", "AUTO:GPU,CPU"),
        ("auto:gpu.0,cpu", "AUTO:GPU.0,CPU"),
        ("HETERO:NPU,CPU", "HETERO:NPU,CPU"),
        ("MULTI:GPU.0,GPU.1", "MULTI:GPU.0,GPU.1"),
    ],
)
def test_check_device_accepts(requested: str, normalized: str) -> None:
    assert check_device(requested, FAKE_DEVICES) == normalized


@pytest.mark.parametrize("requested", ["TPU", "AUTO:TPU", "", "   ", "GPU.2", "HETERO:NPU,TPU", "CPU:GPU"])
def test_check_device_rejects_and_lists_the_devices(requested: str) -> None:
    with pytest.raises(DeviceError) as caught:
        check_device(requested, FAKE_DEVICES)
    message = str(caught.value)
    for name in FAKE_DEVICES:
        assert name in message
    assert "AUTO" in message


def test_check_device_on_this_machine() -> None:
    assert check_device("cpu") == "CPU"
    with pytest.raises(DeviceError, match="CPU"):
        check_device("TPU")


def test_list_devices_has_the_cpu_with_its_full_name() -> None:
    devices = {d.name: d for d in list_devices()}
    assert "CPU" in devices
    cpu = devices["CPU"]
    assert cpu.full_name and cpu.full_name != "CPU"
    assert cpu.device_type == "CPU"
    assert cpu.supports_performance_hint
    assert cpu.properties.get("PERFORMANCE_HINT")


def test_an_open_session_keeps_its_model_out_of_cache_clear(int4_model: OVModel, tmp_path: Path) -> None:
    from conftest import linked_cache_copy

    copy = Cache(linked_cache_copy(int4_model.cache_root, tmp_path / "cache"))
    [entry] = [e for e in copy.entries("openvino-compressed") if e.key == int4_model.entry.key]
    session = ChatSession(entry.path, settings=exactly(2))
    assert session.send("Hi").text is not None
    report = copy.clear("openvino-compressed")
    assert entry.path in {item.path: item.reason for item in report.skipped}
    assert {item.path: item.reason for item in report.skipped}[entry.path] == "in use"
    assert (entry.path / "openvino_model.bin").is_file()
    session.close()
    assert entry.path in [item.path for item in copy.clear("openvino-compressed").removed]
    assert not entry.path.exists()


@pytest.mark.parametrize("measure", ["quality", "speed"])
def test_a_measurement_keeps_its_models_out_of_cache_clear(
    int4_model: OVModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measure: str
) -> None:
    import importlib

    from conftest import linked_cache_copy

    copy = Cache(linked_cache_copy(int4_model.cache_root, tmp_path / "cache"))
    [entry] = [e for e in copy.entries("openvino-compressed") if e.key == int4_model.entry.key]
    module = importlib.import_module(f"nbkit.measure.{measure}")
    seen: list[object] = []
    monkeypatch.setattr(module, f"_measure_{measure}", lambda *args, **kwargs: seen.append(copy.clear()))
    if measure == "quality":
        module.measure_quality(entry.path, entry.path)
    else:
        module.measure_speed(entry.path)
    report = seen[0]
    assert isinstance(report, ClearReport)
    assert {item.path: item.reason for item in report.skipped}.get(entry.path) == "in use"
    assert entry.path.is_dir()
    assert entry.path in [item.path for item in copy.clear().removed]  # released afterwards
