"""Next-token log-probabilities of an ONNX Runtime GenAI model, for quality measurements.

``Generator.append_tokens(window)`` runs the prefill of the whole window, and
``get_output("logits")`` then holds the logits of every position of it (batch x positions x
vocab), so one window is one forward pass, as on the OpenVINO side. The model runs as built:
an int4 model with accuracy level 4 quantizes its activations to int8, and that is part of
what is measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nbkit.config import RuntimeConfig
from nbkit.engines.ort.chat import GENAI_CONFIG, check_ort_runtime, load_model
from nbkit.engines.ort.deps import require_ort_genai
from nbkit.engines.protocol import log_softmax32
from nbkit.errors import ModelSourceError, error_summary


class OrtScorer:
    """Log-probabilities of an ONNX Runtime GenAI folder (see :class:`~nbkit.engines.protocol.LogitsScorer`)."""

    def __init__(self, folder: Path, device: str = "CPU") -> None:
        require_ort_genai()
        check_ort_runtime(RuntimeConfig.create(device))  # the CPU only, one sentence otherwise
        self.folder = folder
        try:
            config = json.loads((folder / GENAI_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{folder / GENAI_CONFIG} cannot be read: {exc}") from exc
        vocab = config.get("model", {}).get("vocab_size")
        self.vocab_size: int | None = int(vocab) if vocab else None
        self._device = device
        self._model: Any = None

    def _loaded(self) -> Any:
        # Loaded on first use: a vocabulary mismatch is found from genai_config.json alone.
        if self._model is None:
            try:
                self._model = load_model(self.folder, RuntimeConfig.create("CPU"))
            except Exception as exc:
                raise ModelSourceError(
                    f"onnxruntime-genai could not load {self.folder.name}: {error_summary(exc)}"
                ) from exc
        return self._model

    def log_probs(self, window_ids: np.ndarray) -> np.ndarray:
        import onnxruntime_genai as og

        model = self._loaded()
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(window_ids) + 1, do_sample=False)
        generator = og.Generator(model, params)  # a new generator: an empty KV cache
        generator.append_tokens(np.asarray(window_ids, dtype=np.int32))
        logits = np.asarray(generator.get_output("logits"))
        del generator
        return log_softmax32(logits[0, :-1])


def token_ids(folder: Path, text: str) -> np.ndarray:
    """``text`` as token ids with the folder's ``tokenizer.json`` (what onnxruntime-genai loads)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:
        raise ModelSourceError(f"{folder} has no usable tokenizer.json ({error_summary(exc)}).") from exc
    return np.array(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
