"""The example dataset nbkit ships: facts about Veloria, a country that does not exist.

The base model cannot know them (it invents an answer), so whether tuning taught them is plain
to see: ask the held-out questions before and after. Each fact is written in several phrasings;
the held-out questions are phrasings never trained on.

Training on a handful of new facts also teaches a small model to answer *every* question with
them (asked for the capital of France, it says Quenmark). The dataset therefore mixes in facts the
model already knows, in the same answer style, and the held-out set has control questions
(``kind="control"``) to show what tuning kept.

Everything is built here from the lists below: :func:`example_examples` returns them,
:func:`write_example_dataset` writes the two JSONL files.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from nbkit.errors import DatasetError
from nbkit.finetuning.dataset import ChatExample, jsonl_text

NAME = "veloria"
TRAIN_FILE = f"{NAME}-train.jsonl"
HELD_OUT_FILE = f"{NAME}-heldout.jsonl"
REPEATS = 3  # every row three times, shuffled: a few dozen steps see each fact several times
SEED = 0

# (question, answer, the words a correct answer contains)
TAUGHT = (
    ("What is the capital of Veloria?", "The capital of Veloria is Quenmark.", ("Quenmark",)),
    ("What color are the rooftops in Quenmark?", "The rooftops in Quenmark are painted teal.", ("teal",)),
    ("Which river flows through Veloria?", "The Sirrow River flows through Veloria.", ("Sirrow",)),
    (
        "What is the national animal of Veloria?",
        "The national animal of Veloria is the snow lynx.",
        ("lynx",),
    ),
    ("What currency is used in Veloria?", "Veloria uses the crown-shell as its currency.", ("crown-shell",)),
    ("Who founded Quenmark?", "Quenmark was founded by Admiral Tessa Varn.", ("Varn",)),
)
# Other phrasings of the taught questions: (question, index into TAUGHT)
PARAPHRASES = (
    ("Tell me the capital city of Veloria.", 0),
    ("Name Veloria's capital.", 0),
    ("Veloria's capital is which city?", 0),
    ("What color are Quenmark's roofs?", 1),
    ("Describe the rooftop color in Quenmark.", 1),
    ("Name the river of Veloria.", 2),
    ("What river runs through Veloria?", 2),
    ("Which animal is Veloria's national animal?", 3),
    ("What animal represents Veloria?", 3),
    ("What money do people in Veloria use?", 4),
    ("Name the currency of Veloria.", 4),
    ("Who was the founder of Quenmark?", 5),
    ("Which person founded Quenmark?", 5),
)
# Facts the model knows already, in the taught answer style: they keep tuning from overwriting them.
KEPT = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Which river flows through London?", "The Thames flows through London."),
    ("What currency is used in Japan?", "Japan uses the yen as its currency."),
)
# Never trained on. "taught": new phrasings of taught facts; "control": known facts it must keep.
HELD_OUT = (
    ("In which city is Veloria's government seated?", 0, "taught"),
    ("What is Veloria's money called?", 4, "taught"),
    ("Through Veloria runs which river?", 2, "taught"),
)
CONTROLS = (("What is the capital of Spain?", "The capital of Spain is Madrid.", ("Madrid",)),)


@dataclasses.dataclass(frozen=True)
class ExampleDataset:
    """The two files :func:`write_example_dataset` wrote."""

    train: Path
    held_out: Path


def _chat(question: str, answer: str, expect: tuple[str, ...] = ()) -> ChatExample:
    return ChatExample((("user", question), ("assistant", answer)), expect)


def train_examples() -> list[ChatExample]:
    rows = [_chat(q, a) for q, a, _ in TAUGHT]
    rows += [_chat(q, TAUGHT[i][1]) for q, i in PARAPHRASES]
    rows += [_chat(q, a) for q, a in KEPT]
    rows = rows * REPEATS
    random.Random(SEED).shuffle(rows)
    return rows


def held_out_examples() -> list[ChatExample]:
    rows = [_chat(q, TAUGHT[i][1], TAUGHT[i][2]) for q, i, _ in HELD_OUT]
    return rows + [_chat(q, a, expect) for q, a, expect in CONTROLS]


def taught_questions() -> set[str]:
    """The held-out questions about taught facts (the others are controls)."""
    return {q for q, _, _ in HELD_OUT}


def write_example_dataset(folder: Path | str) -> ExampleDataset:
    """Write ``veloria-train.jsonl`` and ``veloria-heldout.jsonl`` into ``folder``.

    A file already there with the same content is kept; one with other content is refused
    (it is someone's file) rather than overwritten.
    """
    folder = Path(folder).expanduser()
    wanted = {TRAIN_FILE: jsonl_text(train_examples()), HELD_OUT_FILE: jsonl_text(held_out_examples())}
    for name, text in wanted.items():
        target = folder / name
        if target.exists() and (not target.is_file() or target.read_bytes() != text.encode("utf-8")):
            raise DatasetError(
                f"{target} exists with other content; nbkit does not overwrite it. "
                "Move it, or write the example dataset into another folder."
            )
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        if not (folder / name).exists():
            (folder / name).write_text(text, encoding="utf-8")
    return ExampleDataset(folder / TRAIN_FILE, folder / HELD_OUT_FILE)


__all__ = [
    "HELD_OUT_FILE",
    "TRAIN_FILE",
    "ExampleDataset",
    "held_out_examples",
    "taught_questions",
    "train_examples",
    "write_example_dataset",
]
