"""How many LoRA steps the bundled model needs to learn the shipped Veloria facts, across seeds.

Each (steps, seed) pair is one ``nbkit.finetune`` run on the bundled model and the shipped
examples, default settings otherwise (cached: a second run of this script only reads results).
For each it records how many of the held-out questions about taught facts the tuned model
answers right, whether the control question is still right, the held-out answer loss, and the
time. The smallest step count whose every seed answers all taught questions is what
``FinetuneConfig.steps`` defaults to and what CI trains.

    python benchmarks/finetune_steps.py [--steps 10 20 30 40] [--seeds 0 1 2]
        [--cache-dir DIR] [--json benchmarks/results/finetune_steps.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import nbkit
from nbkit.finetuning import veloria
from nbkit.infra.versions import versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 30, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: nbkit's cache")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/finetune_steps.json"))
    args = parser.parse_args()

    cache = nbkit.Cache(args.cache_dir)
    taught = veloria.taught_questions()
    controls = [e.question for e in veloria.held_out_examples() if e.question not in taught]
    rows = []
    for steps in args.steps:
        for seed in args.seeds:
            started = time.perf_counter()
            result = nbkit.finetune(config=nbkit.FinetuneConfig(steps=steps, seed=seed), cache=cache)
            right, asked = result.correct("after", taught)
            kept, checked = result.correct("after", controls)
            rows.append(
                {
                    "steps": steps,
                    "seed": seed,
                    "taught_right": right,
                    "taught_asked": asked,
                    "controls_kept": kept,
                    "controls": checked,
                    "held_out_loss_before": result.eval_loss_before,
                    "held_out_loss_after": result.eval_loss_after,
                    "build_seconds": result.seconds,
                    "this_run_seconds": time.perf_counter() - started,
                }
            )
            print(
                f"steps {steps:>3}  seed {seed}  taught {right}/{asked}  controls {kept}/{checked}  "
                f"loss {result.eval_loss_after:.3f}  build {result.seconds:.0f} s",
                flush=True,
            )

    print(f"\n{'steps':>5}  {'seeds all right':>15}  {'taught right (sum)':>18}  {'mean loss':>9}")
    reliable = []
    for steps in args.steps:
        mine = [r for r in rows if r["steps"] == steps]
        all_right = sum(r["taught_right"] == r["taught_asked"] for r in mine)
        total = sum(r["taught_right"] for r in mine)
        loss = sum(r["held_out_loss_after"] for r in mine) / len(mine)
        print(
            f"{steps:>5}  {all_right:>13}/{len(mine)}  {total:>15}/{sum(r['taught_asked'] for r in mine)}  {loss:>9.3f}"
        )
        if all_right == len(mine):
            reliable.append(steps)
    smallest = min(reliable) if reliable else None
    print(
        f"\nsmallest step count with every seed right: {smallest}; FinetuneConfig default: {nbkit.FinetuneConfig().steps}"
    )

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "rows": rows,
                "smallest_reliable_steps": smallest,
                "default_steps": nbkit.FinetuneConfig().steps,
                "machine": {"platform": platform.platform(), "processor": platform.processor()},
                "versions": versions(("olive-ai", "peft", "transformers", "torch", "accelerate", "datasets")),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
