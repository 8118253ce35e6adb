"""Baselines for recipe results, and the tutorial's benchmark claims checked against them.

The Olive tutorial says recipes typically bring "2-6x" lower latency than the baseline, "50-75 %"
less memory with quantization and "95-99 %" of the accuracy kept. :func:`seed_claims` puts each
recipe result measured on this machine next to those ranges and says, claim by claim, whether
the measurement falls inside, below or above:

* latency, as the decode speed-up (tokens/s over the baseline's) and the time-to-first-token
  speed-up, against two baselines: the float ONNX model on ONNX Runtime (the same runtime,
  so the gain of the recipe alone) and PyTorch ``generate`` on the float Hugging Face model
  (what one starts from);
* memory, as the reduction of the measuring process's peak resident memory (``VmHWM``: loading
  plus generating) against the same two baselines;
* accuracy, as top-1 agreement with the float model's next token on the evaluation text,
  with the mean KL divergence alongside (the tutorial gives no range for it).

The recipe rows and the ONNX Runtime float row come from :func:`nbkit.measure.compare.compare_models`
(quality against one reference, speed interleaved across models, each model in its own worker
process). :func:`measure_torch_baseline` measures PyTorch the same way nbkit's chat sessions do
(the prompt through the chat template, greedy, exactly ``new_tokens`` tokens, TTFT to the first
token, tokens/s = 1 / mean time of every later token) in a fresh child process, so its peak
memory is that process's own: PyTorch, transformers and the float32 weights.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from nbkit.config import RuntimeConfig
from nbkit.errors import ConfigError, ModelSourceError
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.infra.worker import run_isolated
from nbkit.measure.common import ModelLike
from nbkit.measure.compare import ComparedModel, Comparison, compare_models
from nbkit.measure.speed import high_water_rss_mb
from nbkit.sources.texts import SPEED_PROMPT

# The tutorial's ranges ("Benchmarks de performance" of the olive-recipes section).
LATENCY_CLAIM = (2.0, 6.0)  # times faster than the baseline
MEMORY_CLAIM = (0.50, 0.75)  # fraction of memory saved
ACCURACY_CLAIM = (0.95, 0.99)  # fraction of accuracy kept


# -- PyTorch baseline -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TorchBaseline:
    """PyTorch ``generate`` on the float Hugging Face folder: medians over ``repeats`` runs, peak RSS in MiB."""

    model_path: str
    load_s: float
    ttft_ms: float
    tpot_ms: float
    tokens_per_s: float
    new_tokens: int
    repeats: int
    peak_rss_mb: float
    threads: int
    dtype: str
    torch_version: str
    transformers_version: str
    ttft_samples: tuple[float, ...]
    tokens_per_s_samples: tuple[float, ...]
    name: str = "PyTorch fp32"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure_torch_baseline(
    hf_folder: Path | str,
    *,
    new_tokens: int = 64,
    repeats: int = 3,
    prompt: str = SPEED_PROMPT,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> TorchBaseline:
    """Decode speed, TTFT and peak RSS of transformers ``generate`` on ``hf_folder``, in a child process.

    Float32 on the CPU, greedy, exactly ``new_tokens`` new tokens per run after one untimed
    warm-up; ``threads`` sets ``torch.set_num_threads`` (None keeps PyTorch's default). Local
    files only: nothing is downloaded.
    """
    folder = Path(hf_folder).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"{folder} is not a Hugging Face model folder (no config.json).")
    # Two tokens at least: decode speed is timed from the first generated token to the last.
    for what, value, least in (("new_tokens", new_tokens, 2), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{what} must be an integer of at least {least}, not {value!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, not {threads!r}.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("The speed prompt is empty; pass a prompt with some text.")
    reporter = reporter or ProgressReporter(progress)
    result = run_isolated(
        torch_generate_in_this_process, str(folder), new_tokens, repeats, prompt, threads, reporter=reporter
    )
    return TorchBaseline(**result)


def torch_generate_in_this_process(
    folder: str,
    new_tokens: int,
    repeats: int,
    prompt: str,
    threads: int | None,
    *,
    reporter: ProgressReporter,
) -> dict[str, Any]:
    """The child's side of :func:`measure_torch_baseline` (module level so a worker can start it)."""
    import time

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    class TokenClock(BaseStreamer):
        """Times each generated token (``generate`` first hands the streamer the prompt)."""

        def __init__(self) -> None:
            self.prompt_seen = False
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    if threads is not None:
        torch.set_num_threads(threads)
    reporter.report(0.0, f"Loading {Path(folder).name} with PyTorch")
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    model.eval()
    load_s = time.perf_counter() - started
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ttfts: list[float] = []
    speeds: list[float] = []
    tpots: list[float] = []
    for run in range(repeats + 1):  # run 0 warms up and is not counted
        reporter.report((run + 1) / (repeats + 2), "Warming up" if run == 0 else f"Run {run} of {repeats}")
        clock = TokenClock()
        with torch.inference_mode():
            begun = time.perf_counter()
            model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
                pad_token_id=pad,
            )
        if run == 0:
            continue
        if len(clock.times) < 2:
            raise ModelSourceError(f"PyTorch generated {len(clock.times)} token(s); cannot time decoding.")
        tpot_s = (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1)
        ttfts.append((clock.times[0] - begun) * 1000)
        tpots.append(tpot_s * 1000)
        speeds.append(1 / tpot_s)
    reporter.report(1.0, "PyTorch baseline measured")
    return {
        "model_path": folder,
        "load_s": load_s,
        "ttft_ms": statistics.median(ttfts),
        "tpot_ms": statistics.median(tpots),
        "tokens_per_s": statistics.median(speeds),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "peak_rss_mb": high_water_rss_mb() or 0.0,
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "ttft_samples": tuple(ttfts),
        "tokens_per_s_samples": tuple(speeds),
    }


# -- the tutorial's claims -------------------------------------------------------------------------


class SpeedRow(Protocol):
    """What a baseline needs: a :class:`ComparedModel` or a :class:`TorchBaseline`."""

    @property
    def tokens_per_s(self) -> float: ...

    @property
    def ttft_ms(self) -> float: ...

    @property
    def peak_rss_mb(self) -> float: ...


@dataclasses.dataclass(frozen=True)
class ClaimCheck:
    """One claim of the tutorial for one recipe: the measurement, the claimed range, the verdict."""

    recipe: str
    claim: str  # "latency", "memory" or "accuracy"
    metric: str  # what was measured, in words
    baseline: str
    measured: float
    low: float
    high: float
    verdict: str  # "inside", "below" or "above" the claimed range; "n/a" when not measurable
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ClaimsTable:
    """Every :class:`ClaimCheck` of :func:`seed_claims`, with a plain-text table."""

    checks: tuple[ClaimCheck, ...]

    def verdicts(self) -> dict[tuple[str, str, str], str]:
        """(recipe, metric, baseline) -> verdict."""
        return {(c.recipe, c.metric, c.baseline): c.verdict for c in self.checks}

    def rows(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.checks]

    def table(self) -> str:
        header = ("recipe", "claim", "measured", "vs", "value", "claimed", "verdict")
        lines = [header]
        for c in self.checks:
            lines.append(
                (
                    c.recipe,
                    c.claim,
                    c.metric,
                    c.baseline,
                    _format(c.claim, c.measured),
                    f"{_format(c.claim, c.low)}-{_format(c.claim, c.high)}",
                    c.verdict + (f" ({c.note})" if c.note else ""),
                )
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(text)


def _format(claim: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}x" if claim == "latency" else f"{value:.0%}"


def _verdict(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "below" if value < low else "above" if value > high else "inside"


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 and numerator > 0 else float("nan")


def _rows(rows: Comparison | Mapping[str, ComparedModel] | Sequence[ComparedModel]) -> list[ComparedModel]:
    if isinstance(rows, Comparison):
        return list(rows.models)
    if isinstance(rows, Mapping):
        return list(rows.values())
    return list(rows)


def seed_claims(
    rows: Comparison | Mapping[str, ComparedModel] | Sequence[ComparedModel],
    float_row: ComparedModel | str,
    torch_row: SpeedRow | None = None,
) -> ClaimsTable:
    """The tutorial's latency, memory and accuracy claims, checked for each recipe row.

    ``rows``: the recipe results (a :class:`Comparison` or its models); ``float_row``: the float
    ONNX Runtime model measured in the same comparison (or its name in ``rows``); ``torch_row``:
    :func:`measure_torch_baseline`'s result (None leaves out the PyTorch comparisons). The float
    row itself is not checked against itself.
    """
    models = _rows(rows)
    if isinstance(float_row, str):
        named = {m.name: m for m in models}
        if float_row not in named:
            raise ConfigError(f"No row is named {float_row!r}; the rows are: {', '.join(named)}.")
        float_row = named[float_row]
    baselines: list[tuple[str, SpeedRow]] = [(float_row.name, float_row)]
    if torch_row is not None:
        baselines.append((getattr(torch_row, "name", "PyTorch"), torch_row))
    checks: list[ClaimCheck] = []
    for model in models:
        if model.name == float_row.name:
            continue
        for label, base in baselines:
            decode = _ratio(model.tokens_per_s, base.tokens_per_s)
            ttft = _ratio(base.ttft_ms, model.ttft_ms)
            saved = (
                1 - model.peak_rss_mb / base.peak_rss_mb
                if base.peak_rss_mb > 0 and model.peak_rss_mb > 0
                else float("nan")
            )
            for claim, metric, value, (low, high) in (
                ("latency", "decode tokens/s speed-up", decode, LATENCY_CLAIM),
                ("latency", "time to first token speed-up", ttft, LATENCY_CLAIM),
                ("memory", "peak RSS saved", saved, MEMORY_CLAIM),
            ):
                checks.append(
                    ClaimCheck(model.name, claim, metric, label, value, low, high, _verdict(value, low, high))
                )
        top1 = model.quality.top1_agreement
        checks.append(
            ClaimCheck(
                model.name,
                "accuracy",
                "top-1 agreement with float",
                float_row.name,
                top1,
                *ACCURACY_CLAIM,
                _verdict(top1, *ACCURACY_CLAIM),
                note=f"mean KL {model.quality.mean_kl:.4f} nats",
            )
        )
    return ClaimsTable(tuple(checks))


# -- all of it at once ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecipeBenchmark:
    """:func:`benchmark_recipes`' result: the comparison, the PyTorch baseline and the claims."""

    comparison: Comparison
    torch: TorchBaseline | None
    claims: ClaimsTable
    float_name: str


def benchmark_recipes(
    models: Mapping[str, ModelLike],
    float_model: ModelLike,
    reference: ModelLike,
    hf_folder: Path | str | None = None,
    *,
    float_name: str = "ORT fp32",
    rounds: int = 3,
    new_tokens: int = 64,
    quality_tokens: int = 512,
    runtimes: Mapping[str, RuntimeConfig] | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> RecipeBenchmark:
    """Compare recipe outputs with the float ONNX model (and PyTorch on ``hf_folder``), then check the claims.

    ``models``: name -> ONNX Runtime GenAI folder (e.g. ``run_recipe(...).output_dir``);
    ``float_model``: the float ONNX Runtime GenAI folder, timed in the same interleaved rounds;
    ``reference``: the float model quality is measured against (any engine's float export).
    """
    if float_name in models:
        raise ConfigError(f"{float_name!r} names the float model; give the recipes other names.")
    reporter = reporter or ProgressReporter(progress)
    comparison = compare_models(
        {float_name: float_model, **models},
        reference,
        rounds=rounds,
        new_tokens=new_tokens,
        quality_tokens=quality_tokens,
        runtimes=runtimes,
        reporter=reporter.step(0.0, 0.85 if hf_folder is not None else 1.0),
    )
    torch = None
    if hf_folder is not None:
        torch = measure_torch_baseline(
            hf_folder, new_tokens=new_tokens, repeats=rounds, reporter=reporter.step(0.85, 1.0)
        )
    return RecipeBenchmark(comparison, torch, seed_claims(comparison, float_name, torch), float_name)


__all__ = [
    "ACCURACY_CLAIM",
    "LATENCY_CLAIM",
    "MEMORY_CLAIM",
    "ClaimCheck",
    "ClaimsTable",
    "RecipeBenchmark",
    "TorchBaseline",
    "benchmark_recipes",
    "measure_torch_baseline",
    "seed_claims",
]
