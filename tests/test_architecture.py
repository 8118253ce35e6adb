"""Tests of :mod:`nbkit.sources.architecture` on the tiny Llama of ``conftest`` and on hand-made folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONTEXT, TINY_HIDDEN, TINY_INTERMEDIATE, TINY_KV_HEADS, TINY_LAYERS

from nbkit.errors import ModelSourceError
from nbkit.sources.architecture import ArchitectureFacts, LinearLayer, read_architecture

HEAD_DIM = 16


@pytest.fixture(scope="module")
def facts(tiny_hf_model: Path) -> ArchitectureFacts:
    return read_architecture(tiny_hf_model)


@pytest.fixture(scope="module")
def vocab_size(tiny_hf_model: Path) -> int:
    return int(json.loads((tiny_hf_model / "config.json").read_text())["vocab_size"])


def write_folder(
    folder: Path, config: dict[str, object], shards: dict[str, dict[str, tuple[int, ...]]]
) -> Path:
    """A model folder with ``config.json`` and safetensors shards of zero tensors of the given shapes."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    for file_name, shapes in shards.items():
        save_file(
            {name: np.zeros(shape, dtype=np.float16) for name, shape in shapes.items()},
            str(folder / file_name),
        )
    return folder


def test_basic_facts(facts: ArchitectureFacts) -> None:
    assert facts.model_type == "llama"
    assert facts.num_layers == TINY_LAYERS
    assert facts.hidden_size == TINY_HIDDEN
    assert facts.context_length == TINY_CONTEXT
    assert facts.tie_word_embeddings is True


def test_parameter_count_matches_the_torch_model(tiny_hf_model: Path, facts: ArchitectureFacts) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_hf_model))
    state = model.state_dict()
    # The tied head shares the embedding's storage: count each storage once, as safetensors stores it.
    unique: dict[int, int] = {}
    for tensor in state.values():
        unique[tensor.data_ptr()] = tensor.numel()
    assert len(unique) == len(state) - 1
    assert facts.num_parameters == sum(unique.values())
    assert facts.num_parameters == sum(p.numel() for p in model.parameters())
    assert facts.num_parameters < sum(t.numel() for t in state.values())


def test_linear_layers(facts: ArchitectureFacts, vocab_size: int) -> None:
    kv = TINY_KV_HEADS * HEAD_DIM
    expected = {"model.embed_tokens.weight": (vocab_size, TINY_HIDDEN)}
    for layer in range(TINY_LAYERS):
        prefix = f"model.layers.{layer}."
        expected |= {
            prefix + "self_attn.q_proj.weight": (TINY_HIDDEN, TINY_HIDDEN),
            prefix + "self_attn.k_proj.weight": (kv, TINY_HIDDEN),
            prefix + "self_attn.v_proj.weight": (kv, TINY_HIDDEN),
            prefix + "self_attn.o_proj.weight": (TINY_HIDDEN, TINY_HIDDEN),
            prefix + "mlp.gate_proj.weight": (TINY_INTERMEDIATE, TINY_HIDDEN),
            prefix + "mlp.up_proj.weight": (TINY_INTERMEDIATE, TINY_HIDDEN),
            prefix + "mlp.down_proj.weight": (TINY_HIDDEN, TINY_INTERMEDIATE),
        }
    found = {layer.name: (layer.out_features, layer.in_features) for layer in facts.linear_layers}
    assert found == expected  # norms (1-D) are not linear layers; the tied head is not stored
    embedding = next(layer for layer in facts.linear_layers if "embed" in layer.name)
    assert embedding.is_embedding_or_head
    assert [layer.name for layer in facts.linear_layers if layer.is_embedding_or_head] == [embedding.name]


def test_input_channel_sizes_and_group_sizes(facts: ArchitectureFacts) -> None:
    assert facts.input_channel_sizes() == (64, 96)
    assert facts.input_channel_sizes(all_layers=True) == (64, 96)
    assert facts.valid_group_sizes() == (16, 32)
    assert facts.valid_group_sizes(all_layers=True) == (16, 32)
    assert facts.valid_group_sizes(candidates=(8, 24, 32, 48, 64)) == (8, 32)


def test_layers_not_divisible_by(facts: ArchitectureFacts) -> None:
    down = [f"model.layers.{i}.mlp.down_proj.weight" for i in range(TINY_LAYERS)]
    assert [layer.name for layer in facts.layers_not_divisible_by(64)] == down
    assert [layer.name for layer in facts.layers_not_divisible_by(64, all_layers=True)] == down
    assert facts.layers_not_divisible_by(32) == []
    assert facts.layers_not_divisible_by(16, all_layers=True) == []
    assert len(facts.layers_not_divisible_by(128)) == 7 * TINY_LAYERS
    assert len(facts.layers_not_divisible_by(128, all_layers=True)) == 7 * TINY_LAYERS + 1


def test_summary(facts: ArchitectureFacts) -> None:
    summary = facts.summary()
    assert summary == {
        "model_type": "llama",
        "parameters": facts.num_parameters,
        "layers": TINY_LAYERS,
        "hidden_size": TINY_HIDDEN,
        "context_length": TINY_CONTEXT,
        "input_channel_sizes": [64, 96],
        "valid_group_sizes": [16, 32],
    }
    json.dumps(summary)


def test_all_layers_includes_embedding_and_head(tmp_path: Path) -> None:
    # An untied model whose embedding/head widths (48) differ from the blocks' (64, 128).
    folder = write_folder(
        tmp_path / "untied",
        {"model_type": "toy", "num_hidden_layers": 1, "hidden_size": 64, "max_position_embeddings": 32},
        {
            "model-00001-of-00002.safetensors": {
                "model.embed_tokens.weight": (100, 48),
                "model.layers.0.mlp.up_proj.weight": (128, 64),
                "model.layers.0.input_layernorm.weight": (64,),
            },
            "model-00002-of-00002.safetensors": {
                "model.layers.0.mlp.down_proj.weight": (64, 128),
                "lm_head.weight": (100, 48),
            },
        },
    )
    facts = read_architecture(folder)
    assert facts.num_parameters == 100 * 48 * 2 + 128 * 64 * 2 + 64
    assert facts.tie_word_embeddings is False
    assert facts.input_channel_sizes() == (64, 128)
    assert facts.input_channel_sizes(all_layers=True) == (48, 64, 128)
    assert facts.valid_group_sizes() == (16, 32, 64)
    assert facts.valid_group_sizes(all_layers=True) == (16,)
    assert facts.layers_not_divisible_by(32) == []
    assert [layer.name for layer in facts.layers_not_divisible_by(32, all_layers=True)] == [
        "model.embed_tokens.weight",
        "lm_head.weight",
    ]


def test_nested_text_config_and_gpt2_names(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "nested",
        {
            "model_type": "outer",
            "text_config": {"model_type": "gpt2", "n_layer": 3, "n_embd": 32, "n_positions": 64},
        },
        {"model.safetensors": {"transformer.h.0.mlp.c_fc.weight": (32, 128)}},
    )
    facts = read_architecture(folder)
    assert (facts.model_type, facts.num_layers, facts.hidden_size, facts.context_length) == (
        "gpt2",
        3,
        32,
        64,
    )
    assert facts.linear_layers == (LinearLayer("transformer.h.0.mlp.c_fc.weight", 32, 128),)


def test_no_linear_layers_means_no_valid_group_size(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "norms", {"model_type": "toy"}, {"model.safetensors": {"norm.weight": (8,)}}
    )
    facts = read_architecture(folder)
    assert facts.input_channel_sizes() == ()
    assert facts.valid_group_sizes() == ()


def test_missing_config_is_refused(tmp_path: Path, tiny_hf_model: Path) -> None:
    folder = tmp_path / "weights-only"
    folder.mkdir()
    shutil.copy2(tiny_hf_model / "model.safetensors", folder)
    with pytest.raises(ModelSourceError, match=r"config\.json"):
        read_architecture(folder)
    with pytest.raises(ModelSourceError, match=r"config\.json"):
        read_architecture(tmp_path / "does-not-exist")


def test_missing_safetensors_is_refused(tmp_path: Path, tiny_hf_model: Path) -> None:
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy2(tiny_hf_model / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelSourceError, match="safetensors"):
        read_architecture(folder)


def test_absurd_safetensors_header_is_refused(tmp_path: Path, tiny_hf_model: Path) -> None:
    folder = tmp_path / "damaged"
    folder.mkdir()
    shutil.copy2(tiny_hf_model / "config.json", folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ModelSourceError, match="safetensors"):
        read_architecture(folder)


@pytest.mark.parametrize(
    "content", [b"abc", b"\x05\x00\x00\x00\x00\x00\x00\x00{oops"], ids=["short-file", "garbled-header"]
)
def test_damaged_safetensors_is_refused(tmp_path: Path, tiny_hf_model: Path, content: bytes) -> None:
    folder = tmp_path / "damaged"
    folder.mkdir()
    shutil.copy2(tiny_hf_model / "config.json", folder)
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelSourceError):
        read_architecture(folder)
