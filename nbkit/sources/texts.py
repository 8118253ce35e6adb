"""Fixed English text for measuring and calibrating models, with nothing to download.

The text is Python's own interactive help: ``pydoc_data.topics.topics``, the dictionary of
help topics that ships with every CPython (it is what ``help("if")`` shows). It is real
English prose about programming, a few hundred kilobytes long, available offline and in
every environment nbkit runs in, which is why nbkit uses it instead of WikiText or C4.

Two parts of it are kept strictly apart, so a compression calibrated on text never gets
measured on that same text:

* :func:`evaluation_text`: the topics named in :data:`EVALUATION_TOPICS`, in that order.
  Quality measurements (perplexity, KL divergence, top-1 agreement) read it.
* :func:`calibration_texts`: chunks of every *other* topic. Many help topics repeat
  sections of others (``naming`` is part of ``execmodel``, ``try`` part of ``compound``),
  so disjointness is enforced per paragraph: any paragraph that also occurs in the
  evaluation text is left out of calibration.

The topics are regenerated for each Python minor version, so the text (and the numbers
measured on it) can differ slightly between Python 3.10, 3.11 and 3.12; it never changes
within one. :func:`evaluation_text_id` names the exact text, for ledgers that compare runs.

:data:`SPEED_PROMPT` and :data:`ANSWER_PROMPTS` are the fixed chat prompts of the speed
and answer checks.
"""

from __future__ import annotations

import functools
import hashlib
import re

from nbkit.errors import ConfigError

# Prose-heavy topics that do not repeat one another: execution model, objects, truth values,
# boolean operations, comparisons, calls, raise, import (about 46,000 characters).
EVALUATION_TOPICS: tuple[str, ...] = (
    "execmodel",
    "objects",
    "truth",
    "booleans",
    "comparisons",
    "calls",
    "raise",
    "import",
)

# Long enough that the model settles into generation, open enough that no EOS comes early.
SPEED_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."

# Short questions with one well-known answer: a small model answers them in a sentence, so a
# changed word between float and compressed is a real change, not sampling noise.
ANSWER_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What is the largest planet in the solar system?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in degrees Celsius?",
    "What color do you get when you mix blue and yellow?",
    "How many legs does a spider have?",
    "What is the chemical symbol for gold?",
)

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(topics)


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def _normalized(paragraph: str) -> str:
    # Topics wrap the same paragraph differently; compare the words, not the line breaks.
    return " ".join(paragraph.split())


@functools.lru_cache(maxsize=1)
def _evaluation_paragraphs() -> tuple[str, ...]:
    topics = _topics()
    chosen = [name for name in EVALUATION_TOPICS if name in topics]
    if not chosen:  # pragma: no cover - every CPython 3.10-3.13 has them
        raise ConfigError("This Python's pydoc_data has none of nbkit's evaluation topics.")
    seen: set[str] = set()
    paragraphs: list[str] = []
    for name in chosen:
        for paragraph in _paragraphs(topics[name]):
            key = _normalized(paragraph)
            if key not in seen:  # a paragraph repeated across topics would be scored twice
                seen.add(key)
                paragraphs.append(paragraph)
    return tuple(paragraphs)


def evaluation_text() -> str:
    """The fixed evaluation text: the :data:`EVALUATION_TOPICS` help topics, paragraphs deduplicated."""
    return "\n\n".join(_evaluation_paragraphs())


def evaluation_text_id() -> str:
    """A short hash naming the exact evaluation text (it differs between Python minor versions)."""
    return hashlib.sha256(evaluation_text().encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _calibration_chunks(min_chars: int) -> tuple[str, ...]:
    topics = _topics()
    used = {_normalized(p) for p in _evaluation_paragraphs()}
    per_topic: list[list[str]] = []
    for name in sorted(topics):
        if name in EVALUATION_TOPICS:
            continue
        chunks: list[str] = []
        current: list[str] = []
        for paragraph in _paragraphs(topics[name]):
            key = _normalized(paragraph)
            if key in used:  # in the evaluation text, or already in an earlier chunk
                continue
            used.add(key)
            current.append(paragraph)
            if sum(len(p) for p in current) + 2 * (len(current) - 1) >= min_chars:
                chunks.append("\n\n".join(current))
                current = []
        # A topic's short remainder is dropped: joining it to another topic would mix subjects.
        if chunks:
            per_topic.append(chunks)
    # Round-robin over topics so even a few samples cover many subjects, not one long topic.
    ordered: list[str] = []
    for index in range(max((len(c) for c in per_topic), default=0)):
        ordered.extend(chunks[index] for chunks in per_topic if index < len(chunks))
    return tuple(ordered)


def calibration_texts(count: int, min_chars: int = 512) -> list[str]:
    """``count`` fixed text chunks of at least ``min_chars`` characters, none from the evaluation text.

    The same arguments always give the same chunks; a larger ``count`` extends the list.
    """
    for name, value in (("count", count), ("min_chars", min_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, not {value!r}.")
    chunks = _calibration_chunks(min_chars)
    if count > len(chunks):
        raise ConfigError(
            f"The calibration text has {len(chunks)} chunks of at least {min_chars} characters, "
            f"fewer than the {count} asked; ask for at most {len(chunks)} or lower min_chars."
        )
    return list(chunks[:count])


__all__ = [
    "ANSWER_PROMPTS",
    "EVALUATION_TOPICS",
    "SPEED_PROMPT",
    "calibration_texts",
    "evaluation_text",
    "evaluation_text_id",
]
