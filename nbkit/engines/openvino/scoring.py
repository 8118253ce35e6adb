"""Next-token log-probabilities of an OpenVINO IR, for quality measurements.

The stateful IR runs directly (no generation loop): one forward pass per window from an
empty KV cache, logits of every position at once. On CPU it runs in f32 with an f32 KV
cache, so a measured difference is the weight compression alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nbkit.artifacts import MODEL_XML
from nbkit.engines.openvino.devices import check_device
from nbkit.engines.protocol import log_softmax32
from nbkit.errors import ModelSourceError

TOKENIZER_XML = "openvino_tokenizer.xml"

# f32 on CPU so the measured difference is the weight compression alone: CPUs with bf16 or
# AMX otherwise run both models in bf16 with a u8 KV cache, which adds its own noise.
CPU_QUALITY_PROPERTIES: dict[str, str] = {
    "PERFORMANCE_HINT": "LATENCY",
    "INFERENCE_PRECISION_HINT": "f32",
    "KV_CACHE_PRECISION": "f32",
}


class OpenVINOScorer:
    """Log-probabilities of an OpenVINO IR folder's model (see :class:`~nbkit.engines.protocol.LogitsScorer`)."""

    def __init__(self, folder: Path, device: str = "CPU") -> None:
        import openvino as ov

        self.folder = folder
        try:
            ir = ov.Core().read_model(str(folder / MODEL_XML))
        except RuntimeError as exc:
            raise ModelSourceError(f"OpenVINO cannot read {folder / MODEL_XML}: {exc}") from exc
        if not any("logits" in output.get_names() for output in ir.outputs):
            raise ModelSourceError(
                f"{folder / MODEL_XML} has no 'logits' output; it is not a causal LM export."
            )
        dimension = ir.output("logits").get_partial_shape()[-1]
        self.vocab_size: int | None = dimension.get_length() if dimension.is_static else None
        self._ir = ir
        self._device = check_device(device)
        self._request: Any = None
        self._inputs: set[str] = set()

    def _compiled(self) -> Any:
        # Compiled on first use: a vocabulary mismatch is found from the IR alone, before this cost.
        if self._request is None:
            import openvino as ov

            properties = CPU_QUALITY_PROPERTIES if self._device == "CPU" else {}
            compiled = ov.Core().compile_model(self._ir, self._device, properties)
            self._request = compiled.create_infer_request()
            self._inputs = {name for port in compiled.inputs for name in port.get_names()}
        return self._request

    def log_probs(self, window_ids: np.ndarray) -> np.ndarray:
        request = self._compiled()
        length = len(window_ids)
        feed = {
            "input_ids": window_ids[None, :],
            "attention_mask": np.ones((1, length), dtype=np.int64),
            "position_ids": np.arange(length, dtype=np.int64)[None, :],
            "beam_idx": np.zeros(1, dtype=np.int32),
        }
        request.reset_state()  # each window starts from an empty KV cache
        request.infer({name: value for name, value in feed.items() if name in self._inputs})
        return log_softmax32(request.get_tensor("logits").data[0, :-1])


def token_ids(folder: Path, text: str) -> np.ndarray:
    """``text`` as token ids with the folder's OpenVINO tokenizer (what openvino-genai runs)."""
    if not (folder / TOKENIZER_XML).is_file():
        raise ModelSourceError(f"{folder} has no {TOKENIZER_XML}; re-export the model with nbkit.")
    import openvino_genai

    tokenizer = openvino_genai.Tokenizer(str(folder))
    encoded = tokenizer.encode(text, add_special_tokens=False)
    return np.array(encoded.input_ids.data[0], dtype=np.int64)
