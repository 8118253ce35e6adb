"""Prompt-lookup and speculative decoding: the config, the engines' answers, the CLI, and on the
bundled model the same greedy tokens as plain decoding in fewer steps of the model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from markers import needs_smollm2

import nbkit
from nbkit import Cache, CompressionConfig, GenerationSettings, RuntimeConfig
from nbkit.cli.main import main
from nbkit.config import AssistedDecoding
from nbkit.engines.openvino.chat import ChatSession, generation_config
from nbkit.engines.registry import get_engine
from nbkit.errors import ConfigError, ModelSourceError

# An input-grounded task: the answer copies the passage, which is where prompt lookup finds guesses.
PASSAGE = (
    "The Loire is the longest river in France. It rises in the Massif Central and flows north and "
    "then west through Orleans, Tours and Nantes before reaching the Atlantic Ocean at Saint-Nazaire."
)
GROUNDED = f"Repeat this passage exactly: {PASSAGE}"
F32 = RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
# The CPU's dynamic quantization of a compressed model's activations rounds a step of several tokens
# differently from one token, which can flip a near-tie (benchmarks/assisted.py shows it): without
# it, assisted decoding is exact, so both sides of the comparison turn it off.
EXACT = RuntimeConfig.create("CPU", {**F32.property_dict, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})


# -- the config ----------------------------------------------------------------------------------


def test_prompt_lookup_and_speculative_configs_say_what_they_are(tmp_path: Path) -> None:
    lookup = AssistedDecoding.prompt_lookup()
    assert (lookup.method, lookup.candidates, lookup.max_ngram) == ("prompt_lookup", 5, 3)
    assert lookup.label == "prompt-lookup k5 n3"
    draft = AssistedDecoding.speculative(tmp_path / "int4-draft", candidates=4)
    assert draft.label == "draft int4-draft k4" and draft.draft == str(tmp_path / "int4-draft")
    assert AssistedDecoding.prompt_lookup() == lookup and hash(AssistedDecoding.prompt_lookup()) == hash(
        lookup
    )
    assert lookup.fingerprint() != AssistedDecoding.prompt_lookup(candidates=4).fingerprint()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "medusa"}, "'prompt_lookup' or 'draft'"),
        ({"candidates": 0}, "candidates must be a whole number from 1 to 32, not 0"),
        ({"candidates": 33}, "from 1 to 32, not 33"),
        ({"candidates": 2.5}, "candidates"),
        ({"max_ngram": 0}, "max_ngram must be a whole number from 1 to 16"),
        ({"method": "draft"}, "needs a draft model"),
        ({"draft": "/some/folder"}, "Prompt lookup takes its guesses from the prompt"),
        ({"method": "draft", "draft": 3}, "must be strings"),
    ],
)
def test_bad_assisted_configs_are_one_sentence(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AssistedDecoding(**kwargs)


def test_the_generation_config_carries_the_guesses_per_step() -> None:
    settings = GenerationSettings(max_new_tokens=7)
    plain = generation_config(settings)
    assert not plain.num_assistant_tokens and not plain.is_assisting_generation()
    lookup = generation_config(settings, AssistedDecoding.prompt_lookup(candidates=4, max_ngram=2))
    assert (lookup.num_assistant_tokens, lookup.max_ngram_size, lookup.max_new_tokens) == (4, 2, 7)
    assert lookup.is_assisting_generation()


def test_engines_say_whether_they_can_assist() -> None:
    lookup = AssistedDecoding.prompt_lookup()
    assert get_engine("openvino").check_assisted(lookup) is lookup
    assert get_engine("openvino").check_assisted(None) is None
    with pytest.raises(ConfigError, match="must be an AssistedDecoding"):
        get_engine("openvino").check_assisted("prompt_lookup")
    assert get_engine("ort").check_assisted(None) is None
    with pytest.raises(ConfigError, match=r"onnxruntime-genai 0\.14 has no prompt-lookup or speculative"):
        get_engine("ort").check_assisted(lookup)


def test_cli_refuses_assisted_decoding_on_ort_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--cache-dir", str(tmp_path / "cache"), "-q", "chat", "--engine", "ort", "--prompt-lookup",
                 "--prompt", "Hi"])  # fmt: skip
    assert code != 0
    assert "no prompt-lookup or speculative decoding" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("manifest.json"))


def test_cli_refuses_a_missing_draft_folder_and_both_methods_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--cache-dir", str(tmp_path / "cache"), "-q", "chat", "--draft", str(tmp_path / "nope"),
                 "--prompt", "Hi"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and f"--draft {tmp_path / 'nope'}: no such folder" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--prompt-lookup", "--draft", str(tmp_path), "--prompt", "Hi"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- the bundled model: same tokens, fewer steps; a draft with another tokenizer is refused ------------


@pytest.fixture(scope="module")
def built(real_cache: Cache) -> dict[str, Any]:
    float_model = nbkit.export_openvino(nbkit.DEFAULT_MODEL, cache=real_cache)
    int4 = nbkit.compress(float_model, CompressionConfig(mode="int4_sym"), cache=real_cache)
    return {"float": float_model, "int4": int4}


@pytest.mark.integration
@needs_smollm2
def test_a_draft_with_another_tokenizer_is_refused_with_the_reason(
    built: dict[str, Any], float_model: Any
) -> None:
    """The tiny test model's tokenizer is not SmolLM2's: refused before the pipeline loads."""
    tiny, int4 = float_model, built["int4"]
    with pytest.raises(
        ModelSourceError, match=f"{tiny.path.name} cannot draft for {int4.path.name}: its vocabulary"
    ):
        ChatSession(int4, F32, assisted=AssistedDecoding.speculative(tiny))
    with pytest.raises(ModelSourceError, match="not an OpenVINO model folder"):
        ChatSession(int4, F32, assisted=AssistedDecoding.speculative(int4.path.parent))


def _answer(model: Any, assisted: AssistedDecoding | None, prompt: str = GROUNDED) -> nbkit.Turn:
    session = ChatSession(model, EXACT, GenerationSettings(max_new_tokens=48), assisted=assisted)
    try:
        return session.send(prompt)
    finally:
        session.close()


@pytest.mark.integration
@needs_smollm2
def test_prompt_lookup_reaches_openvino_genai_and_keeps_the_greedy_answer(
    built: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import openvino_genai

    seen: list[dict[str, Any]] = []
    real_pipeline = openvino_genai.LLMPipeline

    def recording_pipeline(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(openvino_genai, "LLMPipeline", recording_pipeline)
    plain = _answer(built["int4"], None)
    lookup = _answer(built["int4"], AssistedDecoding.prompt_lookup())
    assert [kwargs.get("prompt_lookup") for kwargs in seen] == [None, True]
    assert lookup.text == plain.text  # the same greedy tokens, whatever the guesses were
    assert plain.metrics.decode_steps == plain.metrics.generated_tokens  # one token per step
    m = lookup.metrics
    assert m.generated_tokens == plain.metrics.generated_tokens
    # The answer copies the passage: openvino-genai accepted guesses, so it took fewer steps.
    assert (
        0 < m.decode_steps < m.generated_tokens and m.tokens_per_step is not None and m.tokens_per_step > 1.2
    )
    assert m.accepted_tokens == m.generated_tokens - m.decode_steps
    # An answer that does not copy the prompt: few guesses match, and the text is still the same.
    free = "Give three tips for learning a new language."
    assert (
        _answer(built["int4"], AssistedDecoding.prompt_lookup(), free).text
        == _answer(built["int4"], None, free).text
    )


@pytest.mark.integration
@needs_smollm2
def test_an_int4_draft_speeds_the_float_model_without_changing_its_answer(built: dict[str, Any]) -> None:
    plain = _answer(built["float"], None)
    drafted = _answer(built["float"], AssistedDecoding.speculative(built["int4"], candidates=4))
    assert drafted.text == plain.text
    assert drafted.metrics.decode_steps < drafted.metrics.generated_tokens


@pytest.mark.integration
@needs_smollm2
def test_speed_measurement_reports_tokens_per_step(built: dict[str, Any]) -> None:
    report = nbkit.measure_speed(
        built["int4"], F32, new_tokens=24, repeats=1, prompt=GROUNDED, isolated=False,
        assisted=AssistedDecoding.prompt_lookup(),
    )  # fmt: skip
    assert report.assisted == "prompt-lookup k5 n3" and report.tokens_per_step > 1.0
    plain = nbkit.measure_speed(built["int4"], F32, new_tokens=24, repeats=1, prompt=GROUNDED, isolated=False)
    assert plain.assisted == "" and plain.tokens_per_step == pytest.approx(1.0)


@pytest.mark.integration
@needs_smollm2
def test_cli_chat_with_prompt_lookup_prints_tokens_per_step(built: dict[str, Any]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nbkit", "chat", str(built["int4"].path), "--prompt-lookup", "--candidates", "4",
         "--max-new-tokens", "32", "--prompt", GROUNDED],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "The Loire" in done.stdout
    assert "tokens/step]" in done.stderr and " steps: " in done.stderr
