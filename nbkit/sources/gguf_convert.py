"""Convert a llama-family GGUF file into a float Hugging Face folder with a correct tokenizer.

Why not ``transformers``' own GGUF loader: it builds a wrong tokenizer for byte-level BPE
GGUFs such as SmolLM2 (CodeLlamaTokenizer, ``eos`` = ``<|im_start|>``, a decoder chain that
openvino-tokenizers turns into a detokenizer printing ``Ġ``/``Ċ``), and it gives no progress
or cancel points. Here each tensor is dequantized with the ``gguf`` package, the
query/key rows that llama.cpp permuted for its rotary layout are put back, and the
tokenizer is rebuilt from the GGUF vocabulary, merges, token types and chat template.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nbkit.errors import ModelSourceError
from nbkit.infra.disk import require_free_space
from nbkit.infra.progress import ProgressReporter

log = logging.getLogger(__name__)

# Bump when the produced folder changes, so cache keys of older conversions stop matching.
CONVERSION_FORMAT = 1

_SUPPORTED_ARCHITECTURES = ("llama",)
_CONTROL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL

# GGUF tensor name (per block, after "blk.N.") -> Hugging Face name (after "model.layers.N.").
_BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


@dataclass(frozen=True)
class GGUFSummary:
    """What nbkit needs to know about a GGUF file before converting it."""

    architecture: str
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    context_length: int
    file_type: str


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _open(path: Path) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises IndexError, struct errors, ... on damaged files
        raise ModelSourceError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); "
            "it may be truncated by an interrupted download."
        ) from exc


def _required(reader: Any, key: str, path: Path) -> int:
    value = _field(reader, key)
    if value is None:
        raise ModelSourceError(
            f"{path.name} lacks the GGUF field {key!r}; the file is incomplete or not a model."
        )
    return int(value)


def read_summary(path: Path) -> GGUFSummary:
    reader = _open(path)
    return _summary(reader, path)


def _summary(reader: Any, path: Path) -> GGUFSummary:
    arch = str(_field(reader, "general.architecture", ""))
    if arch not in _SUPPORTED_ARCHITECTURES:
        raise ModelSourceError(
            f"{path.name} is a {arch or 'unknown'!r} GGUF; nbkit converts {', '.join(_SUPPORTED_ARCHITECTURES)} "
            "GGUFs only. Use the model's Hugging Face folder or hub id instead."
        )
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    file_type = next(
        (t.tensor_type.name for t in reader.tensors if t.name.endswith("attn_q.weight")), "unknown"
    )
    return GGUFSummary(
        architecture=arch,
        name=str(_field(reader, "general.name", path.stem)),
        num_layers=_required(reader, f"{arch}.block_count", path),
        hidden_size=_required(reader, f"{arch}.embedding_length", path),
        intermediate_size=_required(reader, f"{arch}.feed_forward_length", path),
        num_heads=_required(reader, f"{arch}.attention.head_count", path),
        num_kv_heads=int(
            _field(
                reader,
                f"{arch}.attention.head_count_kv",
                _required(reader, f"{arch}.attention.head_count", path),
            )
        ),
        vocab_size=int(_field(reader, f"{arch}.vocab_size", len(tokens))),
        context_length=int(_field(reader, f"{arch}.context_length", 2048)),
        file_type=file_type,
    )


def unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's query/key row permutation (interleaved -> half-split rotary layout)."""
    rows = weight.shape[0]
    head_dim_half = rows // num_heads // 2
    return weight.reshape(num_heads, head_dim_half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def permute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """The permutation llama.cpp applies when it writes a GGUF (the inverse of :func:`unpermute_rotary`)."""
    rows = weight.shape[0]
    head_dim_half = rows // num_heads // 2
    return weight.reshape(num_heads, 2, head_dim_half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    if gguf_name.startswith("blk."):
        _, index, rest = gguf_name.split(".", 2)
        mapped = _BLOCK_TENSORS.get(rest)
        if mapped is not None:
            return f"model.layers.{index}.{mapped}"
    return None


def convert_gguf_to_hf(path: Path, out_dir: Path, reporter: ProgressReporter | None = None) -> dict[str, Any]:
    """Write ``config.json``, ``model.safetensors`` (float32), the tokenizer and generation config.

    Returns metadata for the cache manifest. Checks for cancellation between tensors.
    """
    import gguf
    import torch
    from safetensors.torch import save_file

    reporter = reporter or ProgressReporter()
    reader = _open(path)
    summary = _summary(reader, path)
    _check_tokenizer_kind(reader)  # fail before minutes of dequantizing, not after
    # Every weight is written in float32; checked here, where the reader is already open.
    float32_bytes = 4 * sum(int(tensor.n_elements) for tensor in reader.tensors)
    require_free_space(out_dir, float32_bytes, f"the float32 weights of {path.name}")
    reporter.report(0.0, f"Reading {path.name}")

    tensors: dict[str, torch.Tensor] = {}
    total = len(reader.tensors)
    for index, tensor in enumerate(reader.tensors):
        reporter.report(index / total * 0.9, f"Dequantizing {tensor.name}")
        hf_name = _hf_name(tensor.name)
        if hf_name is None:
            if tensor.name != "rope_freqs.weight":  # llama3 rope scaling table; config carries it
                log.warning("Skipping GGUF tensor %s: no Hugging Face counterpart.", tensor.name)
            continue
        # A writable copy: F32 tensors come back as read-only views of the memory-mapped file.
        values = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if hf_name.endswith("q_proj.weight"):
            values = unpermute_rotary(values, summary.num_heads)
        elif hf_name.endswith("k_proj.weight"):
            values = unpermute_rotary(values, summary.num_kv_heads)
        tensors[hf_name] = torch.from_numpy(np.ascontiguousarray(values))

    tie_embeddings = "lm_head.weight" not in tensors
    reporter.report(0.9, "Writing model.safetensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    special = _special_ids(reader)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": summary.hidden_size,
        "intermediate_size": summary.intermediate_size,
        "num_hidden_layers": summary.num_layers,
        "num_attention_heads": summary.num_heads,
        "num_key_value_heads": summary.num_kv_heads,
        "head_dim": summary.hidden_size // summary.num_heads,
        "vocab_size": summary.vocab_size,
        "max_position_embeddings": summary.context_length,
        # GGUF stores float32: 1e-5 reads back as 9.99999974e-06; 7 significant digits restore it.
        "rms_norm_eps": float(f"{_field(reader, 'llama.attention.layer_norm_rms_epsilon', 1e-5):.7g}"),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
        **special,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    generation = {k: v for k, v in special.items() if v is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))

    reporter.report(0.95, "Rebuilding the tokenizer")
    tokenizer = build_tokenizer(reader, summary)
    tokenizer.save_pretrained(str(out_dir))
    reporter.report(1.0, "Converted")
    return {
        "gguf": path.name,
        "architecture": summary.architecture,
        "gguf_weight_type": summary.file_type,
        "tie_word_embeddings": tie_embeddings,
    }


def _special_ids(reader: Any) -> dict[str, int | None]:
    def get(key: str) -> int | None:
        value = _field(reader, key)
        return int(value) if value is not None else None

    return {
        "bos_token_id": get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": get("tokenizer.ggml.padding_token_id"),
    }


def _check_tokenizer_kind(reader: Any) -> None:
    kind = str(_field(reader, "tokenizer.ggml.model", ""))
    if kind != "gpt2":
        raise ModelSourceError(
            f"The GGUF tokenizer is of type {kind!r}; nbkit rebuilds byte-level BPE ('gpt2') tokenizers only."
        )


def build_tokenizer(reader: Any, summary: GGUFSummary) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` equal to the one the GGUF was made from."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    _check_tokenizer_kind(reader)
    tokens: list[str] = list(_field(reader, "tokenizer.ggml.tokens"))
    token_types: list[int] = list(_field(reader, "tokenizer.ggml.token_type") or [])
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {token: index for index, token in enumerate(tokens)}

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = str(_field(reader, "tokenizer.ggml.pre", ""))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # llama.cpp's "smollm" pre-tokenizer splits digits one by one before the GPT-2 regex.
    if pre in ("smollm", "starcoder", "refact"):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, kind_id in enumerate(token_types) if kind_id == _CONTROL_TOKEN_TYPE]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    ids = _special_ids(reader)

    def token(index: int | None) -> str | None:
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    unk_id = _field(reader, "tokenizer.ggml.unknown_token_id")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token(ids["bos_token_id"]),
        eos_token=token(ids["eos_token_id"]),
        pad_token=token(ids["pad_token_id"]),
        unk_token=token(int(unk_id)) if unk_id is not None else None,
        chat_template=_field(reader, "tokenizer.chat_template"),
        model_max_length=summary.context_length,
        clean_up_tokenization_spaces=False,
    )
