"""``finetune``: teach a model from a JSONL file with Olive's LoRA pass, merged, scored, cached.

The result is a float Hugging Face folder in nbkit's cache (kind ``finetuned``): a model source
like any other. Export it to either engine, compress it, measure it, chat with it::

    result = finetune("smollm2-135m-instruct")    # the shipped Veloria examples
    result.table()                                 # held-out answers before and after, as text
    nbkit.export_openvino(result.path)             # or: nbkit export <path> --engine ort

The entry also holds ``olive_config.json`` (the workflow, to rerun with ``olive run --config``),
the LoRA ``adapter/`` before the merge, and the normalized ``data/`` it trained on. Its manifest
keeps the eval loss and the held-out answers before and after, so a cached result reports them
without running anything.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbkit.engines.ort.deps import require_finetune
from nbkit.errors import DatasetError
from nbkit.finetuning.dataset import (
    ChatExample,
    check_train_examples,
    examples_digest,
    read_examples,
    split_held_out,
    write_jsonl,
)
from nbkit.finetuning.olive_lora import FinetuneConfig
from nbkit.finetuning.training import train
from nbkit.finetuning.veloria import held_out_examples, train_examples
from nbkit.infra.cache import FINETUNED_KIND, Cache, CacheEntry, cache_key
from nbkit.infra.disk import float32_weights_bytes
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.versions import versions
from nbkit.infra.worker import Worker, run_isolated
from nbkit.sources.models import ModelSource, resolve_source

FINETUNE_FORMAT = 1
DATA_DIR = "data"
TRAIN_NAME = "train.jsonl"
HELD_OUT_NAME = "heldout.jsonl"
EXAMPLE_DATA = "veloria"
FINETUNE_LIBRARIES = ("olive-ai", "peft", "transformers", "torch", "accelerate", "datasets")
DEFAULT_MAX_NEW_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class HeldOutAnswer:
    """One held-out question: the reference answer, and the model's before and after tuning."""

    question: str
    reference: str
    before: str
    after: str
    correct_before: bool | None  # None: the example names no expected words
    correct_after: bool | None


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """A merged fine-tuned model in the cache, with its scores before and after."""

    entry: CacheEntry

    @property
    def path(self) -> Path:
        """The merged float Hugging Face folder: pass it wherever a model source goes."""
        return self.entry.path

    @property
    def source(self) -> ModelSource:
        return resolve_source(self.path)

    @property
    def config(self) -> FinetuneConfig:
        fields = dict(self.entry.metadata["config"])
        fields["target_modules"] = tuple(fields["target_modules"])
        return FinetuneConfig(**fields)

    @property
    def eval_loss_before(self) -> float:
        return float(self.entry.metadata["before"]["eval_loss"])

    @property
    def eval_loss_after(self) -> float:
        return float(self.entry.metadata["after"]["eval_loss"])

    @property
    def seconds(self) -> float:
        """How long scoring, training and merging took when the entry was built."""
        return float(self.entry.metadata.get("seconds", float("nan")))

    @property
    def loss_log(self) -> list[dict[str, float]]:
        """What the trainer logged: ``step`` with ``loss`` (training) or ``eval_loss``."""
        return list(self.entry.metadata.get("loss_log", []))

    @functools.cached_property
    def answers(self) -> list[HeldOutAnswer]:
        # Read once: correct() and table() ask for them again and again.
        held_out = read_examples(self.path / DATA_DIR / HELD_OUT_NAME)
        before = self.entry.metadata["before"]["answers"]
        after = self.entry.metadata["after"]["answers"]
        return [
            HeldOutAnswer(e.question, e.answer, b, a, e.is_correct(b), e.is_correct(a))
            for e, b, a in zip(held_out, before, after, strict=True)
        ]

    def correct(self, which: str = "after", questions: Sequence[str] | None = None) -> tuple[int, int]:
        """(right, scored) among held-out answers ``"before"`` or ``"after"`` tuning (those with expected words)."""
        scored = [a for a in self.answers if a.correct_after is not None]
        if questions is not None:
            scored = [a for a in scored if a.question in questions]
        right = sum(bool(a.correct_before if which == "before" else a.correct_after) for a in scored)
        return right, len(scored)

    def table(self) -> str:
        """The held-out answers before and after, and the eval loss, as text."""
        lines = [
            f"eval loss on the held-out answers: {self.eval_loss_before:.3f} before, {self.eval_loss_after:.3f} after",
        ]
        for answer in self.answers:
            marks = {True: "right", False: "wrong", None: "not scored"}
            lines += [
                f"Q: {answer.question}",
                f"   reference: {answer.reference}",
                f"   before ({marks[answer.correct_before]}): {answer.before}",
                f"   after  ({marks[answer.correct_after]}): {answer.after}",
            ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"FinetuneResult({self.entry.metadata.get('label', '')} at {self.path})"


def _examples(
    data: Path | str | None, held_out: Path | str | None, seed: int
) -> tuple[str, list[ChatExample], list[ChatExample]]:
    """(name, train, held out): the shipped examples, or the user's files (read, never written)."""
    if data is None:
        if held_out is not None:
            raise DatasetError("A held-out file needs its training file: pass data= (--data) too.")
        return EXAMPLE_DATA, train_examples(), held_out_examples()
    path = Path(data).expanduser()
    examples = read_examples(path)
    if held_out is None:
        train_rows, held_rows = split_held_out(examples, seed=seed)
    else:
        train_rows, held_rows = examples, read_examples(held_out)
    check_train_examples(train_rows, str(path))
    # The shipped examples read back from the files nbkit wrote are the same training run.
    same_as_shipped = examples_digest(train_rows) == examples_digest(train_examples())
    return (EXAMPLE_DATA if same_as_shipped else path.stem), train_rows, held_rows


def finetune(
    source: ModelSource | str | Path = "smollm2-135m-instruct",
    data: Path | str | None = None,
    *,
    held_out: Path | str | None = None,
    config: FinetuneConfig | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
    worker: Worker | None = None,
) -> FinetuneResult:
    """Fine-tune ``source`` on ``data`` (JSONL; default: the shipped Veloria examples), from the cache or now.

    ``held_out`` is a JSONL of questions kept out of training; without it a tenth of ``data`` is
    held out. The work runs in a child process: cancelling ``reporter``'s token ends it and
    leaves nothing in the cache.
    """
    config = config or FinetuneConfig()
    require_finetune()  # before any work: a missing extra should not cost a GGUF conversion first
    name, train_rows, held_rows = _examples(data, held_out, config.seed)
    source = resolve_source(source)
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    hf_folder = source.hf_folder(cache, reporter.step(0.0, 0.05))
    library_versions = versions(FINETUNE_LIBRARIES)
    key = cache_key(
        {
            "stage": "finetune",
            "format": FINETUNE_FORMAT,
            "source": source.identity(),
            "hf_folder": hf_folder.name,
            "train": examples_digest(train_rows),
            "held_out": examples_digest(held_rows),
            "config": config.fingerprint(),
            "max_new_tokens": max_new_tokens,
            "versions": library_versions,
        }
    )
    label = f"{name}-{config.label}"
    entry_name = f"{source.name}-{label}"

    def build(folder: Path) -> dict[str, Any]:
        train_jsonl = write_jsonl(train_rows, folder / DATA_DIR / TRAIN_NAME)
        held_jsonl = write_jsonl(held_rows, folder / DATA_DIR / HELD_OUT_NAME)
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        started = time.perf_counter()
        report = run_isolated(
            train,
            hf_folder,
            train_jsonl,
            held_jsonl,
            fields,
            folder,
            max_new_tokens,
            reporter=reporter.step(0.05, 1.0),
            worker=worker,
        )
        return {
            "source_name": source.name,
            "source": source.identity(),
            "label": label,
            "data": name,
            "train_examples": len(train_rows),
            "held_out_examples": len(held_rows),
            "hf_folder": str(hf_folder),
            **report,
            "seconds": time.perf_counter() - started,
            "versions": library_versions,
        }

    entry = cache.get_or_build(
        FINETUNED_KIND,
        key,
        entry_name,
        build,
        description={"source": source.identity(), "label": label},
        needs_bytes=lambda: 3 * float32_weights_bytes(hf_folder),  # the merged copy, Olive's and the adapter
        inputs=[hf_folder],
    )
    reporter.report(1.0, "Fine-tuned model ready")
    return FinetuneResult(entry)


def finetuned_models(cache: Cache | None = None) -> list[FinetuneResult]:
    """Every fine-tuned model in the cache, newest last."""
    cache = cache or Cache()
    return [FinetuneResult(e) for e in cache.entries(FINETUNED_KIND)]


def describe(result: FinetuneResult) -> dict[str, Any]:
    """The result as JSON-ready data (what ``nbkit finetune --json`` prints)."""
    right_before, scored = result.correct("before")
    right_after, _ = result.correct("after")
    return {
        "path": str(result.path),
        "config": result.config.to_dict(),
        "eval_loss_before": result.eval_loss_before,
        "eval_loss_after": result.eval_loss_after,
        "correct_before": right_before,
        "correct_after": right_after,
        "scored": scored,
        "answers": [dataclasses.asdict(a) for a in result.answers],
    }


__all__ = ["FinetuneResult", "HeldOutAnswer", "describe", "finetune", "finetuned_models"]
