"""Prompt-lookup and speculative decoding on openvino-genai: the pipeline's options, the draft
model's checks, and a streamer that counts the model's steps.

openvino-genai does both inside ``LLMPipeline``: ``prompt_lookup=True`` or
``draft_model=openvino_genai.draft_model(folder, device)`` at construction, and
``num_assistant_tokens`` (plus ``max_ngram_size`` for prompt lookup) in every generation config.
It reports no acceptance figures to Python, but its streamer receives each step's tokens
together, so counting the streamer's calls counts the model's steps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from nbkit.config import DRAFT, PROMPT_LOOKUP, AssistedDecoding, RuntimeConfig
from nbkit.errors import ConfigError, ModelSourceError

log = logging.getLogger(__name__)

# Text whose token ids two tokenizers must agree on before one model drafts for the other:
# words, digits, punctuation, accents, another script and the chat template's special tokens.
TOKENIZER_PROBE = (
    "<|im_start|>user\nThe capital of France is Paris; 1234 + 5678 = 6912? Naïve café, Straße, 東京."
    "<|im_end|>\n<|im_start|>assistant\n"
)


def check_assisted(assisted: Any) -> AssistedDecoding | None:
    if assisted is None or isinstance(assisted, AssistedDecoding):
        return assisted
    raise ConfigError(
        "assisted must be an AssistedDecoding (AssistedDecoding.prompt_lookup() or "
        f"AssistedDecoding.speculative(draft_folder)), not a {type(assisted).__name__}."
    )


def pipeline_options(
    assisted: AssistedDecoding | None, model_path: Path, device: str, runtime: RuntimeConfig
) -> dict[str, Any]:
    """What ``LLMPipeline(model_path, device, **options)`` needs for ``assisted`` (nothing for None)."""
    if assisted is None:
        return {}
    if assisted.method == PROMPT_LOOKUP:
        return {"prompt_lookup": True}
    import openvino_genai

    draft = check_draft(Path(assisted.draft).expanduser(), model_path)
    draft_device = assisted.draft_device or device
    return {"draft_model": openvino_genai.draft_model(str(draft), draft_device, **runtime.property_dict)}


def check_draft(draft: Path, model_path: Path) -> Path:
    """``draft`` when it can draft for ``model_path``: an OpenVINO model folder whose tokenizer
    gives the same token ids; otherwise a ModelSourceError that says why."""
    if not (draft / "openvino_model.xml").is_file():
        raise ModelSourceError(
            f"The draft model {draft} is not an OpenVINO model folder (no openvino_model.xml); "
            "pass a folder nbkit built, e.g. the INT4 build of the same model."
        )
    if not (draft / "openvino_tokenizer.xml").is_file():
        raise ModelSourceError(
            f"The draft model {draft} has no openvino_tokenizer.xml; re-export it with nbkit."
        )
    if draft.resolve() == model_path.resolve():
        log.warning("The draft model is the model itself: every guess is accepted, but nothing is saved.")
    reason = tokenizer_mismatch(draft, model_path)
    if reason:
        raise ModelSourceError(f"{draft.name} cannot draft for {model_path.name}: {reason}.")
    return draft


def tokenizer_mismatch(draft: Path, model_path: Path) -> str:
    """Why the two folders' tokenizers differ ("" when they agree): the vocabulary size in
    ``config.json``, the end-of-sequence id, and the token ids of :data:`TOKENIZER_PROBE`."""
    import openvino_genai

    sizes = [_vocab_size(folder) for folder in (draft, model_path)]
    if None not in sizes and sizes[0] != sizes[1]:
        return f"its vocabulary has {sizes[0]} tokens and the model's {sizes[1]}"
    tokenizers = [openvino_genai.Tokenizer(str(folder)) for folder in (draft, model_path)]
    eos = [t.get_eos_token_id() for t in tokenizers]
    if eos[0] != eos[1]:
        return f"its end-of-sequence token is id {eos[0]} and the model's id {eos[1]}"
    ids = [
        t.encode(TOKENIZER_PROBE, add_special_tokens=False).input_ids.data.ravel().tolist()
        for t in tokenizers
    ]
    if ids[0] != ids[1]:
        at = next((i for i, (a, b) in enumerate(zip(*ids, strict=False)) if a != b), min(map(len, ids)))
        return f"the two tokenizers split the same text differently (from token {at} on)"
    return ""


def _vocab_size(folder: Path) -> int | None:
    try:
        size = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError):
        return None
    return int(size) if isinstance(size, int) else None


def apply_to_config(config: Any, assisted: AssistedDecoding | None) -> Any:
    """``config`` (an openvino_genai.GenerationConfig) with ``assisted``'s per-generation options."""
    if assisted is not None:
        config.num_assistant_tokens = assisted.candidates
        if assisted.method == PROMPT_LOOKUP:
            config.max_ngram_size = assisted.max_ngram
    return config


def step_counting_streamer(tokenizer: Any, on_text: Any) -> Any:
    """A streamer that decodes text for ``on_text`` like openvino-genai's ``TextStreamer`` and
    counts the model's steps (``.steps``): each call of ``write`` brings one step's tokens."""
    import openvino_genai

    class StepCountingStreamer(openvino_genai.StreamerBase):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.steps = 0
            self.text = openvino_genai.TextStreamer(tokenizer, on_text)

        def write(self, token: Any) -> Any:
            self.steps += 1
            return self.text.write(token)

        def end(self) -> None:
            self.text.end()

    return StepCountingStreamer()


__all__ = [
    "DRAFT",
    "PROMPT_LOOKUP",
    "TOKENIZER_PROBE",
    "apply_to_config",
    "check_assisted",
    "check_draft",
    "pipeline_options",
    "step_counting_streamer",
    "tokenizer_mismatch",
]
