"""Fine-tuning: LoRA with Olive on a local JSONL dataset, merged into a float model folder.

:func:`nbkit.finetuning.run.finetune` is the entry point (``nbkit finetune`` on the command line);
:mod:`nbkit.finetuning.veloria` is the example dataset nbkit ships; :mod:`nbkit.finetuning.dataset`
reads and checks dataset files; :mod:`nbkit.finetuning.olive_lora` holds the settings and the
Olive workflow; :mod:`nbkit.finetuning.training` is the worker's side.
"""
