"""The worker's side of fine-tuning: score the model, train and merge with Olive, score again.

Everything here runs in a child process (:func:`nbkit.infra.worker.run_isolated`), which keeps
torch's memory out of the caller and lets Cancel end the training at once.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbkit.engines.ort.olive_runner import OUTPUT_DIR, last_error, run_olive_here
from nbkit.errors import FinetuneError
from nbkit.finetuning.dataset import ChatExample, read_examples
from nbkit.finetuning.olive_lora import FinetuneConfig, lora_workflow_config
from nbkit.infra.progress import Progress, ProgressReporter

log = logging.getLogger(__name__)

SEQ_LEN_STEP = 16  # the automatic max_seq_len is the longest example rounded up to this
ADAPTER_DIR = "adapter"
OLIVE_WORK = ".olive-work"


def evaluate(
    folder: Path, examples: Sequence[ChatExample], max_new_tokens: int, reporter: ProgressReporter
) -> dict[str, Any]:
    """The float model's loss on the held-out answers and its greedy answers to their questions.

    The loss is the mean negative log-likelihood of the answer tokens only (the prompt and the
    chat template are given), so it says how well the model predicts what it should answer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    total_nll, total_tokens, answers = 0.0, 0, []
    for index, example in enumerate(examples):
        reporter.report(index / len(examples), f"Asking held-out question {index + 1} of {len(examples)}")
        prompt_ids = tokenizer.apply_chat_template(
            example.prompt_messages, add_generation_prompt=True, tokenize=True
        )
        full_ids = tokenizer.apply_chat_template(
            [*example.prompt_messages, {"role": "assistant", "content": example.answer}], tokenize=True
        )
        prompt_ids, full_ids = _ids(prompt_ids), _ids(full_ids)
        with torch.no_grad():
            ids = torch.tensor([full_ids])
            labels = ids.clone()
            labels[0, : len(prompt_ids)] = -100  # score the answer, not the question
            answer_tokens = int((labels[0, 1:] != -100).sum())
            if answer_tokens:
                loss = model(input_ids=ids, labels=labels).loss
                total_nll += float(loss) * answer_tokens
                total_tokens += answer_tokens
            prompt = torch.tensor([prompt_ids])
            output = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        answers.append(tokenizer.decode(output[0, len(prompt_ids) :], skip_special_tokens=True).strip())
    loss = total_nll / total_tokens if total_tokens else math.nan
    return {"eval_loss": loss, "answers": answers}


def _ids(tokenized: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    if hasattr(tokenized, "input_ids") or isinstance(tokenized, dict):
        tokenized = tokenized["input_ids"]
    return list(tokenized)


def longest_example_tokens(folder: Path, examples: Sequence[ChatExample]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return max(
        len(
            _ids(
                tokenizer.apply_chat_template(
                    [{"role": r, "content": c} for r, c in e.messages], tokenize=True
                )
            )
        )
        for e in examples
    )


def step_reporter(reporter: ProgressReporter, steps: int) -> Any:
    """A transformers ``TrainerCallback`` that reports each training step and keeps the logged losses."""
    from transformers import TrainerCallback

    class StepReporter(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.losses: list[dict[str, float]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            reporter.report(state.global_step / steps, f"Training step {state.global_step} of {steps}")

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            losses = {k: float(v) for k, v in (logs or {}).items() if k.endswith("loss")}
            if losses:
                self.losses.append({"step": state.global_step, **losses})

    return StepReporter()


def _forward_only(reporter: ProgressReporter) -> ProgressReporter:
    """A reporter over the same range whose fraction never decreases."""
    furthest = 0.0

    def forward(progress: Progress) -> None:
        nonlocal furthest
        furthest = max(furthest, progress.fraction)
        reporter.report(furthest, progress.message)

    return ProgressReporter(forward, reporter.cancel_token)


def train(
    hf_folder: Path,
    train_jsonl: Path,
    eval_jsonl: Path,
    config_fields: dict[str, Any],
    out_dir: Path,
    max_new_tokens: int,
    *,
    reporter: ProgressReporter,
) -> dict[str, Any]:
    """Score, train, merge, score again; the merged model's files land in ``out_dir``."""
    import transformers.trainer

    held_out = read_examples(eval_jsonl)
    train_examples = read_examples(train_jsonl)
    before = evaluate(hf_folder, held_out, max_new_tokens, reporter.step(0.0, 0.1))
    config = FinetuneConfig(**config_fields)
    longest = longest_example_tokens(hf_folder, train_examples + held_out)
    if config_fields.get("max_seq_len") is None:
        config = FinetuneConfig(
            **{**config_fields, "max_seq_len": -(-longest // SEQ_LEN_STEP) * SEQ_LEN_STEP}
        )
    elif longest > config.max_seq_len:
        log.warning("The longest example has %d tokens; max_seq_len %d cuts it.", longest, config.max_seq_len)
    workflow = lora_workflow_config(hf_folder, train_jsonl, eval_jsonl, config)
    (out_dir / "olive_config.json").write_text(json.dumps(workflow, indent=2) + "\n")
    # Olive's pass messages and the training steps share one stretch of the bar: keep it from
    # going back when "running pass merge" arrives after the last step.
    training = _forward_only(reporter.step(0.1, 0.85))
    # Olive's LoRA pass builds its Trainer without callbacks; transformers adds these to every Trainer.
    steps = step_reporter(training.step(0.05, 0.95), config.steps)
    transformers.trainer.DEFAULT_CALLBACKS.append(steps)
    work = out_dir / OLIVE_WORK
    errors = run_olive_here(workflow, work, False, reporter=training.step(0.0, 0.05))
    merged = work / OUTPUT_DIR / "model"
    if not (merged / "config.json").is_file():
        raise FinetuneError(f"Olive's LoRA workflow wrote no merged model ({last_error(errors)}).")
    for item in merged.iterdir():
        shutil.move(str(item), str(out_dir / item.name))
    adapters = sorted(work.rglob("adapter_config.json"))
    if adapters:  # the LoRA pass's adapter, kept for whoever wants it without the merge
        shutil.copytree(adapters[0].parent, out_dir / ADAPTER_DIR)
    shutil.rmtree(work)
    after = evaluate(out_dir, held_out, max_new_tokens, reporter.step(0.85, 1.0))
    return {
        "config": config.to_dict(),
        "longest_example_tokens": longest,
        "before": before,
        "after": after,
        "loss_log": steps.losses,
        "olive_errors": errors,
    }


__all__ = ["evaluate", "longest_example_tokens", "train"]
