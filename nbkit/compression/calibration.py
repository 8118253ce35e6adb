"""Calibration data for data-aware NNCF compression (AWQ, scale estimation, GPTQ, data-aware
sensitivity metrics) and for full INT8 post-training quantization.

The text is :func:`nbkit.sources.texts.calibration_texts` (Python's help topics, disjoint from the
evaluation text), tokenized with the model folder's own tokenizer into ``samples`` sequences
of exactly ``tokens`` tokens. Each sequence becomes one input of the exported *stateful* LLM
IR, shaped the way NNCF's own LLM examples feed it: ``input_ids``, ``attention_mask``,
``position_ids`` (0..tokens-1) and ``beam_idx``, batch 1, a whole prefill per sample.

Stateful models and statistics: the IR keeps its KV cache in internal state variables.
NNCF's OpenVINO engine resets that state before every inference of a stateful model (unless
a sample carries ``nncf.definitions.NNCF_DATASET_RESET_STATE_KEY``), so each sample is a fresh
prefill and nothing carries over between samples; nbkit relies on that and never sets the key.

A :class:`CalibrationSet` names its text exactly (:meth:`CalibrationSet.identity` hashes the
chunks, which differ slightly between Python minor versions), so cache keys of data-aware
results change whenever the calibration text does.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbkit.compression.nncf_progress import active as nncf_progress_active
from nbkit.errors import ConfigError
from nbkit.infra.progress import ProgressReporter
from nbkit.sources.texts import calibration_texts

if TYPE_CHECKING:
    import numpy as np

CALIBRATION_SOURCE = "pydoc_data.topics via nbkit.sources.texts.calibration_texts"
CALIBRATION_FORMAT = 1
# Characters asked per token: English BPE averages about four; a chunk that still comes out
# short is topped up with the next chunk's tokens (see :func:`tokenize`).
CHARS_PER_TOKEN = 4

# Inputs of an optimum-intel "text-generation-with-past" stateful IR that nbkit knows how to fill.
KNOWN_INPUTS = ("input_ids", "attention_mask", "position_ids", "beam_idx", "token_type_ids")


@dataclass(frozen=True)
class CalibrationSet:
    """``samples`` sequences of ``tokens`` tokens of nbkit's fixed calibration text."""

    samples: int
    tokens: int

    def __post_init__(self) -> None:
        for name in ("samples", "tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"calibration {name} must be a positive integer, not {value!r}.")

    @property
    def min_chars(self) -> int:
        return self.tokens * CHARS_PER_TOKEN

    @property
    def label(self) -> str:
        return f"cal{self.samples}x{self.tokens}"

    def texts(self) -> list[str]:
        try:
            return calibration_texts(self.samples, self.min_chars)
        except ConfigError as exc:
            raise ConfigError(
                f"nbkit's calibration text is too short for {self.samples} samples of {self.tokens} tokens "
                f"({exc}); lower calibration_samples or calibration_tokens."
            ) from exc

    def identity(self) -> dict[str, Any]:
        """What decides the calibration data: source, exact text (hashed), samples, tokens."""
        return _identity(self.samples, self.tokens)

    @property
    def id(self) -> str:
        """A short hash of :meth:`identity`."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _identity(samples: int, tokens: int) -> dict[str, Any]:
    texts = CalibrationSet(samples, tokens).texts()
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    return {
        "source": CALIBRATION_SOURCE,
        "format": CALIBRATION_FORMAT,
        "samples": samples,
        "tokens": tokens,
        "min_chars": tokens * CHARS_PER_TOKEN,
        "text_sha256": digest,
    }


def load_tokenizer(model_dir: Path) -> Any:
    """The Hugging Face tokenizer saved in an exported model folder."""
    from transformers import AutoTokenizer

    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ConfigError(
            f"Calibration needs the model's tokenizer, but {model_dir} has no tokenizer.json or "
            "tokenizer_config.json; export the model with nbkit."
        )
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise ConfigError(
            f"Calibration needs the model's tokenizer, but {model_dir} has none that transformers can load "
            f"({type(exc).__name__}: {exc})."
        ) from exc


def tokenize(calibration: CalibrationSet, tokenizer: Any) -> list[np.ndarray]:
    """``calibration.samples`` arrays of exactly ``calibration.tokens`` token ids (int64).

    A chunk shorter than ``tokens`` tokens is continued with the following chunks (cyclically),
    so every sample has the same length and the set stays deterministic.
    """
    import numpy as np

    texts = calibration.texts()
    # verbose=False: the texts are longer than ``tokens`` on purpose (they are cut below).
    encoded = [list(tokenizer(text, verbose=False)["input_ids"]) for text in texts]
    separator = list(tokenizer("\n\n", add_special_tokens=False, verbose=False)["input_ids"])
    if not any(encoded):
        raise ConfigError("The tokenizer turned the calibration text into no tokens at all.")
    samples: list[np.ndarray] = []
    for index, ids in enumerate(encoded):
        ids = list(ids)
        step = 1
        while len(ids) < calibration.tokens:
            ids += separator + encoded[(index + step) % len(encoded)]
            step += 1
        samples.append(np.asarray(ids[: calibration.tokens], dtype=np.int64))
    return samples


def input_names(model: Any) -> list[str]:
    """Names of the OpenVINO model's inputs (first tensor name of each)."""
    return [port.get_any_name() for port in model.inputs]


def check_llm_inputs(model: Any) -> list[str]:
    """The model's input names; :class:`ConfigError` unless nbkit knows how to fill each of them.

    An IR with other inputs is not an optimum-intel text-generation IR.
    """
    names = input_names(model)
    unknown = [name for name in names if name not in KNOWN_INPUTS]
    if "input_ids" not in names or unknown:
        raise ConfigError(
            f"Calibration feeds LLM IRs with inputs {', '.join(KNOWN_INPUTS)}; this model has "
            f"{', '.join(names)}. Export it with nbkit (optimum-intel text-generation-with-past) first."
        )
    return names


def llm_inputs(model: Any, token_ids: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One prefill input dict per token sequence, for the inputs ``model`` actually has."""
    import numpy as np

    names = check_llm_inputs(model)
    types = {port.get_any_name(): port.get_element_type().to_dtype() for port in model.inputs}
    items: list[dict[str, np.ndarray]] = []
    for ids in token_ids:
        length = int(ids.shape[-1])
        values = {
            "input_ids": ids.reshape(1, length),
            "attention_mask": np.ones((1, length)),
            "position_ids": np.arange(length).reshape(1, length),
            "beam_idx": np.zeros((1,)),  # batch 1: the single beam keeps its (freshly reset) state
            "token_type_ids": np.zeros((1, length)),
        }
        items.append({name: np.ascontiguousarray(values[name], dtype=types[name]) for name in names})
    return items


def calibration_items(
    model: Any, model_dir: Path, calibration: CalibrationSet
) -> list[dict[str, np.ndarray]]:
    """The model inputs of ``calibration`` for the IR ``model`` saved in ``model_dir``."""
    check_llm_inputs(model)  # before the slow part
    return llm_inputs(model, tokenize(calibration, load_tokenizer(model_dir)))


def make_dataset(
    items: Sequence[dict[str, np.ndarray]], on_item: Callable[[int, int], None] | None = None
) -> Any:
    """An ``nncf.Dataset`` over ``items``; ``on_item(index, total)`` is called as NNCF reads each."""
    import nncf

    total = len(items)
    if on_item is None:
        return nncf.Dataset(list(items))
    indexed = list(enumerate(items))

    def transform(pair: tuple[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        index, item = pair
        on_item(index, total)
        return item

    return nncf.Dataset(indexed, transform)


class CalibrationProgress:
    """``on_item`` for :func:`make_dataset`: NNCF's reads of calibration samples as progress.

    NNCF may read the samples more than once (statistics, then GPTQ's layer-wise passes); the
    first pass fills the first half of ``start``..``end``, later passes the second half, and
    the reported fraction never goes back.

    While an :func:`nbkit.compression.nncf_progress.nncf_progress` context reports NNCF's own phases
    (its "Statistics collection" steps are these same samples), the reads only check for a
    cancel: two sources moving one bar would make it jump. Without that context (or with an
    NNCF it cannot hook) they report as described above.
    """

    def __init__(
        self, reporter: ProgressReporter, start: float, end: float, what: str = "Calibrating"
    ) -> None:
        self.reporter = reporter
        self.start = start
        self.end = end
        self.what = what
        self.passes = 0
        self.done = start

    def __call__(self, index: int, total: int) -> None:
        if nncf_progress_active():
            self.reporter.check()
            return
        if index == 0:
            self.passes += 1
        middle = (self.start + self.end) / 2
        low, high = (self.start, middle) if self.passes == 1 else (middle, self.end)
        self.done = max(self.done, low + (high - low) * (index + 1) / total)
        self.reporter.report(self.done, f"{self.what}: pass {self.passes}, sample {index + 1}/{total}")


__all__ = [
    "CALIBRATION_SOURCE",
    "CalibrationProgress",
    "CalibrationSet",
    "calibration_items",
    "check_llm_inputs",
    "input_names",
    "llm_inputs",
    "load_tokenizer",
    "make_dataset",
    "tokenize",
]
