"""Fine-tuning data: chat examples read from JSONL, checked line by line, and written for Olive.

A line is one example, in either of two shapes:

- ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}``,
  the chat format (a ``system`` message first is allowed);
- ``{"prompt": ..., "response": ...}``, one question and its answer.

Either may carry ``"expect"``: a word or a list of words a correct answer contains (case does not
matter). Held-out examples with ``expect`` are scored as answered right or wrong before and after
tuning; without it, their answers are shown but not scored.

nbkit trains on the model's own chat template (Olive's ``chat_template`` preprocessing), so the
tuned model answers in the chat sessions of both engines and in the dashboard the way it was
taught. The user's files are only read: the normalized copy Olive reads is written into the
build folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nbkit.errors import DatasetError

ROLES = ("system", "user", "assistant")
MIN_TRAIN_EXAMPLES = 4
HELD_OUT_FRACTION = 0.1  # of a dataset given without a held-out file
MAX_LINE_PREVIEW = 60


@dataclasses.dataclass(frozen=True)
class ChatExample:
    """One conversation to learn: messages as (role, content) pairs, the answer last."""

    messages: tuple[tuple[str, str], ...]
    expect: tuple[str, ...] = ()

    @property
    def question(self) -> str:
        """The last user message: what a held-out check asks the model."""
        return next(content for role, content in reversed(self.messages) if role == "user")

    @property
    def answer(self) -> str:
        return self.messages[-1][1]

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Every message before the answer, as a chat session sends them."""
        return [{"role": role, "content": content} for role, content in self.messages[:-1]]

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"messages": [{"role": r, "content": c} for r, c in self.messages]}
        if self.expect:
            row["expect"] = list(self.expect)
        return row

    def is_correct(self, answer: str) -> bool | None:
        """Whether ``answer`` holds every expected word; None when this example expects none."""
        if not self.expect:
            return None
        folded = answer.casefold()
        return all(word.casefold() in folded for word in self.expect)


def _where(path: Path, line: int) -> str:
    return f"{path}, line {line}"


def _parse_expect(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    words = [value] if isinstance(value, str) else value
    if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
        raise DatasetError(f'{where}: "expect" must be a word or a list of words, not {value!r}.')
    return tuple(w.strip() for w in words)


def _parse_messages(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects.')
    messages = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise DatasetError(f'{where}: every message needs a "role" and a text "content", not {item!r}.')
        role = item.get("role")
        if role not in ROLES:
            raise DatasetError(f"{where}: a message role must be one of {', '.join(ROLES)}, not {role!r}.")
        messages.append((role, item["content"]))
    if messages[-1][0] != "assistant" or not any(role == "user" for role, _ in messages):
        raise DatasetError(
            f"{where}: a conversation needs a user message and must end with the assistant's answer."
        )
    return tuple(messages)


def parse_example(row: Any, where: str) -> ChatExample:
    """One JSON object as a :class:`ChatExample`; :class:`DatasetError` names ``where`` otherwise."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: each line must be a JSON object, not {type(row).__name__}.")
    expect = _parse_expect(row.get("expect"), where)
    if "messages" in row:
        return ChatExample(_parse_messages(row["messages"], where), expect)
    prompt, response = row.get("prompt"), row.get("response")
    if isinstance(prompt, str) and isinstance(response, str) and prompt.strip() and response.strip():
        return ChatExample((("user", prompt), ("assistant", response)), expect)
    raise DatasetError(
        f'{where}: a line needs "messages" (chat format) or both "prompt" and "response" as text; '
        f"it has {', '.join(sorted(row)) or 'no keys'}."
    )


def read_examples(path: Path | str) -> list[ChatExample]:
    """Every example of the JSONL file ``path`` (blank lines skipped), checked line by line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"No dataset file at {path}: pass a JSONL file with one example per line.")
    examples = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            preview = line.strip()[:MAX_LINE_PREVIEW]
            raise DatasetError(f"{_where(path, number)} is not JSON ({exc.msg}): {preview!r}.") from None
        examples.append(parse_example(row, _where(path, number)))
    if not examples:
        raise DatasetError(f"{path} holds no examples: write one JSON object per line.")
    return examples


def split_held_out(
    examples: Sequence[ChatExample], fraction: float = HELD_OUT_FRACTION, seed: int = 0
) -> tuple[list[ChatExample], list[ChatExample]]:
    """(train, held out): a seeded shuffle keeps ``fraction`` of the examples (at least one) aside."""
    if len(examples) < MIN_TRAIN_EXAMPLES + 1:
        raise DatasetError(
            f"{len(examples)} examples are too few to hold some out: give at least "
            f"{MIN_TRAIN_EXAMPLES + 1}, or pass a held-out file."
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(examples) * fraction))
    held = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in held], [
        e for i, e in enumerate(examples) if i in held
    ]


def check_train_examples(examples: Sequence[ChatExample], where: str) -> None:
    if len(examples) < MIN_TRAIN_EXAMPLES:
        raise DatasetError(
            f"{where} has {len(examples)} training examples; fine-tuning needs at least {MIN_TRAIN_EXAMPLES}."
        )


def jsonl_text(examples: Iterable[ChatExample]) -> str:
    """The examples in the chat format, one JSON object per line (what Olive reads with ``chat_template``)."""
    return "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples)


def write_jsonl(examples: Iterable[ChatExample], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl_text(examples), encoding="utf-8")
    return path


def examples_digest(examples: Iterable[ChatExample]) -> str:
    """A SHA-256 of the examples' content: equal data, equal cache key, wherever the file lives."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.to_json(), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


__all__ = [
    "ChatExample",
    "check_train_examples",
    "examples_digest",
    "jsonl_text",
    "parse_example",
    "read_examples",
    "split_held_out",
    "write_jsonl",
]
