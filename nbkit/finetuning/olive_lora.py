"""LoRA fine-tuning settings, and the Olive workflow and command line that run them.

nbkit runs Olive's ``LoRA`` pass and then its ``MergeAdapterWeights`` pass in one workflow, on
CPU in float32 (no bitsandbytes, triton or CUDA). That is what ``olive finetune --method lora``
builds, with three changes that make a few dozen steps on a small model teach it something:

- every linear layer of the attention and MLP blocks is adapted (Olive's default for Llama
  models is ``q_proj`` and ``v_proj`` only);
- each example is one padded sequence (``strategy: line-by-line``): the command line cannot set
  it, and its default ``join`` packs examples end to end, so the tuned model keeps talking after
  its answer with the next made-up question;
- the text is the model's own chat template (``--use_chat_template``), so the tuned model
  answers through every chat session the way it was taught.

:func:`olive_finetune_args` gives the ``olive finetune`` command line of the same training (the
seed page's command in the form that runs offline), which writes the adapter only; merging it is
``olive run-pass --pass-name MergeAdapterWeights``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nbkit.config import _Fingerprinted
from nbkit.errors import ConfigError

LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_CLI_SEQ_LEN = 64  # the command line needs a number; the shipped examples fit in 64 tokens
TRAIN_DATA = "train_data"
EVAL_DATA = "eval_data"


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(_Fingerprinted):
    """One LoRA training: how long, how fast, how large the adapter."""

    steps: int = 30
    learning_rate: float = 1e-3
    lora_r: int = 16  # adapter rank
    lora_alpha: int = 32  # the adapter's output is scaled by alpha / r
    target_modules: tuple[str, ...] = LLAMA_LINEAR_LAYERS
    # Tokens per example, chat template included; longer ones are cut. None: the longest
    # example's length, rounded up to a multiple of 16.
    max_seq_len: int | None = None
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            (self.steps >= 1, f"steps must be at least 1, not {self.steps}"),
            (0 < self.learning_rate < 1, f"learning_rate must be between 0 and 1, not {self.learning_rate}"),
            (self.lora_r >= 1, f"lora_r must be at least 1, not {self.lora_r}"),
            (self.lora_alpha >= 1, f"lora_alpha must be at least 1, not {self.lora_alpha}"),
            (bool(self.target_modules), "target_modules must name at least one layer"),
            (
                self.max_seq_len is None or 16 <= self.max_seq_len <= 4096,
                f"max_seq_len must be between 16 and 4096, not {self.max_seq_len}",
            ),
            (self.batch_size >= 1, f"batch_size must be at least 1, not {self.batch_size}"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def label(self) -> str:
        """Rank and steps, then every other setting that differs from the default: runs apart, names apart."""
        default = FinetuneConfig()
        extras = [
            f"{short}{getattr(self, name):g}"
            if isinstance(getattr(self, name), float)
            else f"{short}{getattr(self, name)}"
            for name, short in (
                ("learning_rate", "lr"),
                ("lora_alpha", "a"),
                ("max_seq_len", "seq"),
                ("batch_size", "b"),
                ("seed", "seed"),
            )
            if getattr(self, name) != getattr(default, name)
        ]
        if self.target_modules != default.target_modules:
            extras.append("+".join(m.removesuffix("_proj") for m in self.target_modules))
        return "-".join([f"lora-r{self.lora_r}-{self.steps}steps", *extras])


def _data_config(name: str, jsonl: Path, config: FinetuneConfig) -> dict[str, Any]:
    return {
        "name": name,
        "type": "HuggingfaceContainer",
        "load_dataset_config": {"data_name": "json", "split": "train", "data_files": [str(jsonl)]},
        "pre_process_data_config": {
            "chat_template": True,
            "message_col": "messages",
            "strategy": "line-by-line",
            "max_seq_len": config.max_seq_len,
            "pad_to_max_len": True,
        },
        "dataloader_config": {"batch_size": config.batch_size},
    }


def lora_workflow_config(
    hf_folder: Path, train_jsonl: Path, eval_jsonl: Path, config: FinetuneConfig
) -> dict[str, Any]:
    """The Olive workflow: LoRA on ``train_jsonl`` (eval loss on ``eval_jsonl``), then the merge.

    Save it as JSON and ``olive run --config`` it to train outside nbkit; nbkit sets
    ``output_dir`` and ``cache_dir`` itself when it runs it.
    """
    return {
        "input_model": {
            "type": "HfModel",
            "model_path": str(hf_folder),
            # The attention Olive picks by default (sdpa) warns and falls back on CPU training.
            "load_kwargs": {"attn_implementation": "eager"},
        },
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "data_configs": [
            _data_config(TRAIN_DATA, train_jsonl, config),
            _data_config(EVAL_DATA, eval_jsonl, config),
        ],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": config.lora_r,
                "alpha": config.lora_alpha,
                "lora_dropout": 0.0,
                "torch_dtype": "float32",
                "target_modules": list(config.target_modules),
                "train_data_config": TRAIN_DATA,
                "eval_data_config": EVAL_DATA,
                "training_args": {
                    "max_steps": config.steps,
                    "learning_rate": config.learning_rate,
                    "per_device_train_batch_size": config.batch_size,
                    "per_device_eval_batch_size": config.batch_size,
                    "lr_scheduler_type": "constant",
                    "warmup_ratio": 0.0,
                    "gradient_checkpointing": False,  # 135M parameters fit; checkpointing only slows CPU training
                    "logging_steps": max(1, config.steps // 10),
                    "eval_steps": config.steps,
                    "save_strategy": "no",
                    "seed": config.seed,
                    "data_seed": config.seed,
                    "report_to": "none",
                },
            },
            "merge": {"type": "MergeAdapterWeights"},
        },
        "host": "local_system",
        "target": "local_system",
        "log_severity_level": 1,
    }


def olive_finetune_args(
    hf_folder: Path | str, train_jsonl: Path | str, output: Path | str, config: FinetuneConfig
) -> list[str]:
    """``olive finetune`` arguments for the same training from the command line (adapter only).

    The command line keeps Olive's ``join`` strategy (it has no flag for another), so its
    adapter is not the same as the workflow's. Flags Olive does not know go to
    ``transformers.TrainingArguments``.
    """
    return [
        "finetune",
        "--method", "lora",
        "--model_name_or_path", str(hf_folder),
        "--torch_dtype", "float32",
        "--data_name", "json",
        "--data_files", str(train_jsonl),
        "--use_chat_template",
        "--max_seq_len", str(config.max_seq_len or DEFAULT_CLI_SEQ_LEN),
        "--lora_r", str(config.lora_r),
        "--lora_alpha", str(config.lora_alpha),
        "--target_modules", ",".join(config.target_modules),
        "--max_steps", str(config.steps),
        "--learning_rate", str(config.learning_rate),
        "--per_device_train_batch_size", str(config.batch_size),
        "--lr_scheduler_type", "constant",
        "--warmup_ratio", "0",
        "--gradient_checkpointing", "False",
        "--seed", str(config.seed),
        "--output_path", str(output),
    ]  # fmt: skip


__all__ = ["LLAMA_LINEAR_LAYERS", "FinetuneConfig", "lora_workflow_config", "olive_finetune_args"]
