"""Layers a compression config may keep in float or INT8, by the model's own module names.

A layer is named as the Hugging Face module that owns the weight: ``"model.embed_tokens"``,
``"model.layers.0.self_attn.q_proj"``, ``"lm_head"``. :func:`model_layer_names` lists them
from a model's :class:`~nbkit.sources.architecture.ArchitectureFacts` (plus ``"lm_head"`` when
it shares the embeddings' weight and so has no tensor of its own), :func:`layer_shortcuts`
groups the usual choices (embeddings, LM head, first and last block) and
:func:`check_layer_names` refuses a name the model lacks, naming the closest ones.

The float IR nbkit exports (optimum-intel's PyTorch frontend) names each layer's node
``__module.<module name>/...``, so :func:`ignored_scope_patterns` turns module names into NNCF
``IgnoredScope`` patterns that match those nodes and nothing else, and
:func:`only_these_pattern` into the one pattern that matches every other module's nodes (the
second, INT8 pass of ``keep_int8``). NNCF checks that every pattern matches a node, so an IR
named otherwise fails with NNCF's message instead of silently compressing the layer.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict

from nbkit.config import CompressionConfig
from nbkit.errors import ConfigError
from nbkit.sources.architecture import ArchitectureFacts

LM_HEAD = "lm_head"
_BLOCK = re.compile(r"^(?P<prefix>.*\.)(?P<index>\d+)\.")
_MODULE_PREFIX = "__module."


def model_layer_names(facts: ArchitectureFacts) -> tuple[str, ...]:
    """The model's weight layers by module name, in model order (embeddings, blocks, LM head)."""
    names = {layer.name.removesuffix(".weight") for layer in facts.linear_layers}
    if facts.tie_word_embeddings and embedding_name(facts) is not None:
        names.add(LM_HEAD)  # its MatMul reads the embeddings' weight; the IR still has the node
    return tuple(sorted(names, key=_model_order))


def _model_order(name: str) -> tuple[int, int, str]:
    match = _BLOCK.match(name)
    if match:
        return (1, int(match["index"]), name)
    lowered = name.lower()
    if "embed" in lowered or lowered.endswith(("wte", "wpe")):
        return (0, 0, name)
    return (2, 0, name)


def embedding_name(facts: ArchitectureFacts) -> str | None:
    """The token embedding's module name (the one the LM head shares when embeddings are tied)."""
    for layer in facts.linear_layers:
        name = layer.name.removesuffix(".weight")
        if layer.is_embedding_or_head and LM_HEAD not in name and not _BLOCK.match(name):
            return name
    return None


def blocks(facts: ArchitectureFacts) -> dict[int, tuple[str, ...]]:
    """The layers of each transformer block, by block index."""
    by_index: dict[int, list[str]] = defaultdict(list)
    for name in model_layer_names(facts):
        match = _BLOCK.match(name)
        if match:
            by_index[int(match["index"])].append(name)
    return {index: tuple(names) for index, names in sorted(by_index.items())}


def layer_shortcuts(facts: ArchitectureFacts) -> dict[str, tuple[str, ...]]:
    """Named groups of layers for the form: embeddings, LM head (one group when tied), first/last block."""
    shortcuts: dict[str, tuple[str, ...]] = {}
    names = set(model_layer_names(facts))
    embedding = embedding_name(facts)
    if facts.tie_word_embeddings and embedding is not None:
        shortcuts["embeddings + LM head (tied)"] = (embedding, LM_HEAD)
    else:
        if embedding is not None:
            shortcuts["embeddings"] = (embedding,)
        if LM_HEAD in names:
            shortcuts["LM head"] = (LM_HEAD,)
    by_block = blocks(facts)
    if by_block:
        first, last = min(by_block), max(by_block)
        shortcuts[f"first block ({first})"] = by_block[first]
        if last != first:
            shortcuts[f"last block ({last})"] = by_block[last]
    return shortcuts


def check_layer_names(config: CompressionConfig, facts: ArchitectureFacts) -> None:
    """Raise :class:`ConfigError` if ``keep_float``/``keep_int8`` name a layer the model lacks,
    or split the LM head from the embeddings it shares its weight with."""
    known = model_layer_names(facts)
    for field in ("keep_float", "keep_int8"):
        chosen: tuple[str, ...] = getattr(config, field)
        for name in chosen:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
                hint = f"close matches: {', '.join(close)}" if close else f"layers look like {known[0]!r}"
                raise ConfigError(
                    f"{field} names {name!r}, which is not a layer of this model; {hint} "
                    "(nbkit.compression.layers.model_layer_names lists them all)."
                )
        embedding = embedding_name(facts)
        if (
            facts.tie_word_embeddings
            and embedding is not None
            and (LM_HEAD in chosen) != (embedding in chosen)
        ):
            raise ConfigError(
                f"{LM_HEAD} and {embedding} share one weight in this model (tied embeddings), so {field} "
                "must name both or neither."
            )


def ignored_scope_patterns(names: tuple[str, ...]) -> list[str]:
    """NNCF ``IgnoredScope`` patterns matching the IR nodes of these modules (``re.match``)."""
    return [re.escape(f"{_MODULE_PREFIX}{name}/") for name in names]


def only_these_pattern(names: tuple[str, ...]) -> str:
    """One pattern matching the IR nodes of every module *except* these (to ignore all the others).

    Only module nodes: a pattern that also matched the weights' own constants would make NNCF
    skip the named layers too.
    """
    escaped = "|".join(re.escape(f"{name}/") for name in names)
    return f"{re.escape(_MODULE_PREFIX)}(?!{escaped})"
