"""Prompt-lookup and speculative decoding against plain decoding, on this CPU, where each helps or hurts.

Rows (all greedy, f32 compute, ``PERFORMANCE_HINT=LATENCY``, one process, sessions loaded once):

* ``int4``: nbkit's default INT4 build of the bundled model, plain decoding;
* ``int4 + prompt lookup``: the same model, guesses taken from the prompt
  (:meth:`nbkit.config.AssistedDecoding.prompt_lookup`, ``--candidates`` per step, n-grams up to 3);
* ``int4 exact`` and ``int4 exact + prompt lookup``: the same two with the CPU's dynamic quantization
  of activations turned off (``DYNAMIC_QUANTIZATION_GROUP_SIZE=0``). With it on, a step of several
  tokens rounds differently from one token, so a compressed model's greedy answer can change at a
  near-tie; without it, assisted decoding gives the plain answer exactly (the "same text" column);
* ``float``: the float (fp32) OpenVINO export, plain decoding;
* ``float + int4 draft``: speculative decoding, the INT4 build drafting ``--candidates`` tokens per step
  for the float model (:meth:`~nbkit.config.AssistedDecoding.speculative`).

Two workloads, each a few prompts:

* ``grounded``: rewrite, extract from or summarize a given passage: the answer reuses the input,
  which is where prompt lookup finds its guesses;
* ``free``: open questions whose answers do not copy the prompt.

Every round asks every row every prompt, the rows' order rotated from round to round. Per row and
workload: decode tokens/s (generated tokens over the turn's wall time after its first token),
TTFT, tokens per step of the model (openvino-genai hands its streamer each step's tokens
together; 1.0 in plain decoding), the acceptance rate (accepted guesses over steps x guesses per
step: a lower bound for prompt lookup, which guesses nothing when no n-gram matches), the
ratio against the plain row of the same model in the same run, and whether the answer was the
plain row's text (greedy decoding should not change it).

    python benchmarks/assisted.py [--rounds 3] [--new-tokens 96] [--candidates 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from engines import format_table
from quickstart import git_revision, machine_info

import nbkit
from nbkit import CompressionConfig, GenerationSettings, RuntimeConfig
from nbkit.config import AssistedDecoding
from nbkit.engines.openvino.chat import ChatSession
from nbkit.infra.versions import versions

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "assisted.json"
RUNTIME = RuntimeConfig.create("CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
EXACT = RuntimeConfig.create("CPU", {**RUNTIME.property_dict, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})

PASSAGES = {
    "loire": (
        "The Loire is the longest river in France. It rises in the Massif Central and flows north and then "
        "west through Orleans, Tours and Nantes before reaching the Atlantic Ocean at Saint-Nazaire. Its "
        "valley, between Sully-sur-Loire and Chalonnes-sur-Loire, is a UNESCO World Heritage Site known for "
        "its castles, vineyards and historic towns."
    ),
    "meeting": (
        "Minutes of the planning meeting, 14 March. Present: Alice Martin (chair), Bruno Costa, Chen Wei "
        "and Dana Kowalski. The team agreed to move the product launch from 2 May to 16 May because the "
        "payment provider needs two more weeks for certification. Bruno will update the public roadmap by "
        "Friday. Chen will run the load tests on the new servers next Tuesday. Dana will draft the press "
        "release and send it to Alice for review before 10 May."
    ),
}
WORKLOADS: dict[str, list[str]] = {
    "grounded": [
        f"Rewrite this passage in the same words, fixing nothing: {PASSAGES['loire']}",
        f"List every person named in these minutes with the task they took on: {PASSAGES['meeting']}",
        f"Summarize this passage, reusing its own phrases: {PASSAGES['loire']}",
    ],
    "free": [
        "Write a short story about a robot who learns to paint.",
        "Give three tips for learning a new language.",
        "Why is the sky blue? Explain it to a child.",
    ],
}


def build_models(cache: nbkit.Cache) -> dict[str, Any]:
    float_model = nbkit.export_openvino(nbkit.DEFAULT_MODEL, cache=cache)
    int4 = nbkit.compress(float_model, CompressionConfig(mode="int4_sym"), cache=cache)
    return {"float": float_model, "int4": int4}


def open_rows(
    models: dict[str, Any], candidates: int, settings: GenerationSettings
) -> dict[str, ChatSession]:
    """Each row's session: (row name) -> loaded and warmed up."""
    lookup = AssistedDecoding.prompt_lookup(candidates=candidates)
    specs: dict[str, tuple[Any, RuntimeConfig, AssistedDecoding | None]] = {
        "int4": (models["int4"], RUNTIME, None),
        "int4 + prompt lookup": (models["int4"], RUNTIME, lookup),
        "int4 exact": (models["int4"], EXACT, None),
        "int4 exact + prompt lookup": (models["int4"], EXACT, lookup),
        "float": (models["float"], RUNTIME, None),
        "float + int4 draft": (
            models["float"],
            RUNTIME,
            AssistedDecoding.speculative(models["int4"], candidates),
        ),
    }
    return {
        name: ChatSession(model, runtime, settings, assisted=assisted)
        for name, (model, runtime, assisted) in specs.items()
    }


PLAIN_OF = {
    "int4": "int4",
    "int4 + prompt lookup": "int4",
    "int4 exact": "int4",
    "int4 exact + prompt lookup": "int4 exact",
    "float": "float",
    "float + int4 draft": "float",
}


def measure(
    sessions: dict[str, ChatSession], rounds: int, candidates: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    samples: list[dict[str, Any]] = []
    names = list(sessions)
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for workload, prompts in WORKLOADS.items():
            for prompt_index, prompt in enumerate(prompts):
                for name in order:
                    session = sessions[name]
                    session.reset()
                    turn = session.send(prompt)
                    m = turn.metrics
                    decode_s = max(m.total_s - m.ttft_ms / 1000, 1e-9)
                    samples.append(
                        {
                            "round": round_index,
                            "row": name,
                            "workload": workload,
                            "prompt": prompt_index,
                            "generated_tokens": m.generated_tokens,
                            "decode_steps": m.decode_steps,
                            "ttft_ms": m.ttft_ms,
                            "total_s": m.total_s,
                            "decode_tokens_per_s": (m.generated_tokens - 1) / decode_s,
                            "openvino_genai_tokens_per_s": m.tokens_per_s,
                            "text": turn.text,
                        }
                    )
        print(f"round {round_index + 1} of {rounds} done", file=sys.stderr)
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        for workload in WORKLOADS:
            mine = [s for s in samples if s["row"] == name and s["workload"] == workload]
            plain = [s for s in samples if s["row"] == PLAIN_OF[name] and s["workload"] == workload]
            generated = sum(s["generated_tokens"] for s in mine)
            steps = sum(s["decode_steps"] for s in mine)
            tokens_per_s = sum(s["generated_tokens"] - 1 for s in mine) / sum(
                s["total_s"] - s["ttft_ms"] / 1000 for s in mine
            )
            plain_tokens_per_s = sum(s["generated_tokens"] - 1 for s in plain) / sum(
                s["total_s"] - s["ttft_ms"] / 1000 for s in plain
            )
            plain_text = {(s["round"], s["prompt"]): s["text"] for s in plain}
            same = sum(s["text"] == plain_text[(s["round"], s["prompt"])] for s in mine)
            assisted = sessions[name].assisted is not None
            summary[f"{name} | {workload}"] = {
                "row": name,
                "workload": workload,
                "decode_tokens_per_s": tokens_per_s,
                "ratio_to_plain": tokens_per_s / plain_tokens_per_s,
                "ttft_ms_median": statistics.median(s["ttft_ms"] for s in mine),
                "tokens_per_step": generated / steps if steps else None,
                "acceptance_rate": ((generated - steps) / (steps * candidates))
                if assisted and steps
                else None,
                "same_text_as_plain": f"{same}/{len(mine)}",
                "generated_tokens": generated,
            }
    return samples, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=96, help="greedy tokens per answer at most")
    parser.add_argument("--candidates", type=int, default=5, help="guesses per step (num_assistant_tokens)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="nbkit cache (default: nbkit's own)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    models = build_models(nbkit.Cache(args.cache_dir))
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    sessions = open_rows(models, args.candidates, settings)
    samples, summary = measure(sessions, args.rounds, args.candidates)
    for session in sessions.values():
        session.close()
    load_after = os.getloadavg()

    header = [
        "row",
        "workload",
        "decode tok/s",
        "x plain",
        "TTFT ms",
        "tokens/step",
        "acceptance",
        "same text",
    ]
    rows = [
        [
            s["row"],
            s["workload"],
            f"{s['decode_tokens_per_s']:.1f}",
            f"{s['ratio_to_plain']:.2f}",
            f"{s['ttft_ms_median']:.0f}",
            "-" if s["tokens_per_step"] is None else f"{s['tokens_per_step']:.2f}",
            "-" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.0%}",
            s["same_text_as_plain"],
        ]
        for s in summary.values()
    ]
    print(format_table(header, rows))
    verdicts = [
        f"{s['row']} on {s['workload']}: {'faster' if s['ratio_to_plain'] > 1.05 else 'slower' if s['ratio_to_plain'] < 0.95 else 'no clear change'}"
        f" ({s['ratio_to_plain']:.2f}x plain)"
        for s in summary.values()
        if s["row"] != PLAIN_OF[s["row"]]
    ]
    # "int4 exact" is compared with "int4": what turning dynamic quantization off costs by itself.
    print("\n" + "\n".join(verdicts))
    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores: above ~0.5, noisy)"
    )
    record = {
        "benchmark": "assisted",
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "machine": machine_info(),
        "git": git_revision(Path(__file__).resolve().parent.parent),
        "versions": versions(("nbkit", "openvino", "openvino-genai", "nncf")),
        "settings": {"rounds": args.rounds, "new_tokens": args.new_tokens, "candidates": args.candidates},
        "models": {name: str(model.path) for name, model in models.items()},
        "load_average": {"before": load_before, "after": load_after},
        "summary": list(summary.values()),
        "verdicts": verdicts,
        "samples": samples,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
