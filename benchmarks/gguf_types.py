"""Which GGUF quantization types openvino-genai keeps, and which it refuses, on the bundled model.

nbkit can build "the source's own quantization" of a ``.gguf`` source
(:mod:`nbkit.engines.openvino.gguf_native`): openvino-genai reads the file and saves the OpenVINO
IR it builds. Whether that works depends on the GGUF's tensor types. This probe makes one GGUF per
llama.cpp file type from the bundled SmolLM2-135M-Instruct Q4_1 file
(``llama_cpp.llama_model_quantize`` with ``allow_requantize``, into ``--cache-dir``), then for each:

* llama.cpp's own view of the result: how many tensors of each type it holds (``gguf.GGUFReader``;
  the table counts the 2-D weight tensors, the JSON also every tensor);
* whether openvino-genai reads it: ``gguf_native.save_gguf_as_ir`` in a child process
  (``LLMPipeline(link, "CPU", enable_save_ov_model=True)``), which raises with openvino-genai's
  message when it refuses the file. The bundled file itself is the first row (``source``);
* when it is read: the storage element types of the saved IR's weight constants (each MatMul and
  embedding Gather weight followed back through its decompression subgraph to the stored constant:
  how many of each, and their share of the weight elements), the ``.bin`` size, one greedy answer
  (``--new-tokens``) to "What is the capital of France?" through ``openvino_genai.LLMPipeline``
  on the saved folder, with the float reference's tokenizer and config files copied in (as
  ``gguf_native.build_gguf_native`` does), and the mean KL(float || this) of
  ``nbkit.measure_quality`` over ``--quality-tokens`` tokens against the float reference
  (``nbkit.export_openvino(nbkit.DEFAULT_MODEL)``).

Caveat: every file except ``source`` is requantized from Q4_1, not quantized from the original
float weights. Its quality (KL, answer) is at best that of the Q4_1 file, and says nothing about what
that type gives from float weights ("F32" and "Q8_0" here hold Q4_1's rounding). What this probe is
for is the other column: which types openvino-genai keeps (and as what) and which it refuses.

    python benchmarks/gguf_types.py [--types Q4_0,Q8_0,...|all] [--cache-dir DIR]
                                    [--quality-tokens 256] [--new-tokens 16] [--json PATH]

Needs llama-cpp-python (``pip install "nbkit[bench]"``). The requantized files are kept in
``--cache-dir`` (named by llama-cpp-python's version); the IRs are rebuilt every run. The machine is
usually shared: build times are rough (the JSON records the load average before and after).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

# Run as a script, this folder is on sys.path: the sibling benchmarks' helpers are shared, not copied.
from engines import _physical_cores, format_table, gguf_tensor_types
from quickstart import git_revision
from serve import cpu_model

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / ".cache" / "gguf-types"
DEFAULT_JSON = HERE / "results" / "gguf_types.json"
INSTALL_BENCH = 'pip install "nbkit[bench]"'
LIBRARIES = ("nbkit", "openvino", "openvino-genai", "openvino-tokenizers", "llama-cpp-python", "gguf")
SOURCE = "source"  # the bundled file itself, not requantized
# The types the probe makes by default (``--types all`` adds every other file type llama-cpp-python names).
DEFAULT_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q2_K_S",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
    "IQ3_S",
    "IQ2_XXS",
)
QUESTION = "What is the capital of France?"


# -- llama.cpp ------------------------------------------------------------------------------------


def ftype_constant(name: str) -> str:
    return "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"


def all_types() -> list[str]:
    """Every file type llama-cpp-python names, the default ones first."""
    import llama_cpp

    named = sorted(
        n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_")
    )
    return [*DEFAULT_TYPES, *(n for n in named if n not in DEFAULT_TYPES)]


def quantize_main(source: str, out: str, ftype: str) -> int:
    """``--quantize SRC OUT FTYPE`` (child process): llama.cpp's quantizer, allowed to requantize."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_constant(ftype))
    params.allow_requantize = True  # the source is Q4_1: dequantized, then quantized again
    params.nthread = _physical_cores()
    return int(llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params)))


def llama_cpp_error(output: str, returncode: int) -> str:
    """The line of llama.cpp's log that says why it made no file."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for pattern in (r"requires an importance matrix", r"\berror\b|\bfailed\b|exception|abort"):
        found = [line for line in lines if re.search(pattern, line, re.IGNORECASE)]
        if found:
            return re.sub(r"^=+\s*", "", found[0])
    return f"exit {returncode}: " + " | ".join(lines[-2:])


def requantized(source: Path, ftype: str, cache_dir: Path) -> tuple[Path | None, str | None, float | None]:
    """The file ``ftype`` made from ``source`` (kept in ``cache_dir``), or why llama.cpp made none; seconds."""
    tag = f"llama-cpp-{version('llama-cpp-python')}"
    out = cache_dir / f"{source.stem}.requantized-{ftype}.{tag}.gguf"
    if out.is_file():
        return out, None, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    started = time.perf_counter()
    # In a child process: llama.cpp logs every tensor, and an abort stays there.
    done = subprocess.run(
        [sys.executable, __file__, "--quantize", str(source), str(partial), ftype],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        return None, llama_cpp_error(done.stderr + "\n" + done.stdout, done.returncode), seconds
    partial.rename(out)
    return out, None, seconds


def weight_tensor_types(path: Path) -> dict[str, int]:
    """How many 2-D tensors (the weights) of each type the GGUF holds, most first."""
    import gguf

    counts = collections.Counter(
        t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) == 2
    )
    return dict(counts.most_common())


# -- openvino-genai -------------------------------------------------------------------------------


def ir_weight_elements(xml: Path) -> dict[str, dict[str, float]]:
    """Per storage element type of the IR's weights: how many constants, and their share of the elements."""
    import openvino as ov

    from nbkit.compression.nncf_compress import _numel, _weight_constant

    model = ov.Core().read_model(str(xml))
    seen: set[str] = set()
    count: collections.Counter[str] = collections.Counter()
    elements: collections.Counter[str] = collections.Counter()
    for op in model.get_ordered_ops():
        port = {"MatMul": 1, "Gather": 0}.get(op.get_type_name())
        if port is None:
            continue
        node, _ = _weight_constant(op.input_value(port).get_node())
        name = node.get_friendly_name()
        if node.get_type_name() != "Constant" or name in seen or len(node.get_output_partial_shape(0)) < 2:
            continue
        seen.add(name)
        element = node.get_output_element_type(0).get_type_name()
        count[element] += 1
        elements[element] += _numel(node)
    total = sum(elements.values()) or 1
    return {
        element: {"constants": count[element], "share": round(elements[element] / total, 4)}
        for element, _ in elements.most_common()
    }


def openvino_genai_message(exc: BaseException) -> str:
    """openvino-genai's own words in the ModelSourceError save_gguf_as_ir raises (its first line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.match(r"openvino-genai cannot read [^:]+: (.*?)\. Compress the model with NNCF", text)
    return match.group(1) if match else text


def build_ir(gguf_path: Path, folder: Path) -> tuple[bool, str | None, float]:
    """``save_gguf_as_ir`` into an emptied ``folder`` in a child process: (kept, refusal, seconds)."""
    from nbkit.engines.openvino.gguf_native import save_gguf_as_ir
    from nbkit.infra.progress import ProgressReporter
    from nbkit.infra.worker import run_isolated

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    try:
        run_isolated(save_gguf_as_ir, gguf_path, folder, reporter=ProgressReporter())
    except (
        Exception
    ) as exc:  # ModelSourceError when refused; anything else (a crashed child) is a refusal too
        return False, openvino_genai_message(exc), time.perf_counter() - started
    return True, None, time.perf_counter() - started


def greedy_answer(folder: Path, new_tokens: int) -> str:
    import openvino_genai

    pipeline = openvino_genai.LLMPipeline(str(folder), "CPU")
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = new_tokens
    config.do_sample = False
    history = openvino_genai.ChatHistory([{"role": "user", "content": QUESTION}])
    result = pipeline.generate(history, config)
    del pipeline
    return str(result.texts[0]).strip()


def probe(
    name: str,
    gguf_path: Path,
    ir_folder: Path,
    reference: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """What openvino-genai makes of one GGUF file."""
    import nbkit
    from nbkit.engines.openvino.gguf_native import REFERENCE_FILES

    row: dict[str, Any] = {
        "type": name,
        "gguf": str(gguf_path),
        "gguf_bytes": gguf_path.stat().st_size,
    }
    try:
        row["gguf_weight_tensor_types"] = weight_tensor_types(gguf_path)
        row["gguf_tensor_types"] = gguf_tensor_types(str(gguf_path))
    except Exception as exc:  # a tensor type newer than the installed gguf package knows
        row["gguf_weight_tensor_types"] = {}
        row["gguf_read_error"] = f"gguf {version('gguf')}: {type(exc).__name__}: {exc}".splitlines()[0]
    print(f"{name}: openvino-genai reads {gguf_path.name}...", file=sys.stderr, flush=True)
    kept, refusal, seconds = build_ir(gguf_path, ir_folder)
    row.update(kept=kept, refusal=refusal, build_s=round(seconds, 1))
    if not kept:
        print(f"  refused: {refusal}", file=sys.stderr, flush=True)
        shutil.rmtree(ir_folder, ignore_errors=True)
        return row
    row["ir"] = str(ir_folder)
    row["ir_bin_bytes"] = (ir_folder / "openvino_model.bin").stat().st_size
    row["ir_weight_elements"] = ir_weight_elements(ir_folder / "openvino_model.xml")
    for file_name in REFERENCE_FILES:
        if (reference.path / file_name).is_file():
            shutil.copy2(reference.path / file_name, ir_folder / file_name)
    try:
        row["answer"] = greedy_answer(ir_folder, args.new_tokens)
    except Exception as exc:  # a model that loads for saving but not for running
        row["answer_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if args.quality_tokens:
        try:
            report = nbkit.measure_quality(ir_folder, reference, num_tokens=args.quality_tokens)
            row["mean_kl"] = report.mean_kl
            row["top1_agreement"] = report.top1_agreement
            row["perplexity"] = report.perplexity
            row["reference_perplexity"] = report.reference_perplexity
        except Exception as exc:
            row["quality_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    print(
        f"  kept in {seconds:.0f} s: {row['ir_weight_elements']}, KL {row.get('mean_kl')}, "
        f"answer {row.get('answer', row.get('answer_error'))!r}",
        file=sys.stderr,
        flush=True,
    )
    return row


# -- table ----------------------------------------------------------------------------------------


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024 / 1024:.1f}"


def _short(text: str | None, limit: int = 70) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(rows: list[dict[str, Any]]) -> str:
    header = ["type", "file MiB", "llama.cpp weight types", "openvino-genai", "IR MiB", "KL", "answer"]
    lines = []
    for row in rows:
        if "gguf" not in row:  # llama.cpp made no file
            lines.append([row["type"], "-", "-", f"not made: {_short(row['skipped'], 60)}", "-", "-", "-"])
            continue
        weights = ", ".join(f"{t} {n}" for t, n in row["gguf_weight_tensor_types"].items())
        weights = weights or f"(gguf-py cannot read: {_short(row.get('gguf_read_error'), 40)})"
        if row["kept"]:
            elements = ", ".join(
                f"{e} {v['constants']} ({v['share']:.0%})" for e, v in row["ir_weight_elements"].items()
            )
            verdict = f"kept: {elements}"
        else:
            verdict = f"refused: {_short(row['refusal'])}"
        kl = row.get("mean_kl")
        lines.append(
            [
                row["type"],
                _mib(row["gguf_bytes"]),
                weights,
                verdict,
                _mib(row.get("ir_bin_bytes")),
                "-" if kl is None else f"{kl:.4f}",
                _short(row.get("answer") or row.get("answer_error"), 50) if row["kept"] else "-",
            ]
        )
    return format_table(header, lines)


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--types",
        default=",".join(DEFAULT_TYPES),
        help="comma-separated llama.cpp file types (F32, Q4_K_M, IQ4_XS, ...) or 'all'",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--quality-tokens", type=int, default=256, help="tokens of the KL measurement (0: no KL)"
    )
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens of the answer")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if args.new_tokens < 1 or args.quality_tokens < 0:
        parser.error("--new-tokens must be >= 1 and --quality-tokens >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import llama_cpp
    except ImportError as exc:
        print(f"llama_cpp is not importable ({exc}): install it with {INSTALL_BENCH}.", file=sys.stderr)
        return 2
    import nbkit
    from nbkit.infra.versions import machine_summary, versions
    from nbkit.sources.models import resolve_source

    types = (
        all_types()
        if args.types.strip().lower() == "all"
        else [t.strip().upper() for t in args.types.split(",")]
    )
    unknown = [t for t in types if not hasattr(llama_cpp, ftype_constant(t))]
    if unknown:
        print(f"llama-cpp-python {version('llama-cpp-python')} names no file type {', '.join(unknown)}.")
        return 2
    source = resolve_source(nbkit.DEFAULT_MODEL).path
    print(f"Source: {source}", file=sys.stderr)
    reference = nbkit.export_openvino(nbkit.DEFAULT_MODEL)  # the float reference (cached)
    started = time.perf_counter()
    load_before = os.getloadavg()
    ir_root = args.cache_dir / "ir"
    rows: list[dict[str, Any]] = [probe(SOURCE, source, ir_root / SOURCE, reference, args)]
    rows[0]["type"] = f"{SOURCE} ({next(iter(rows[0]['gguf_weight_tensor_types']), '?')})"
    for ftype in types:
        path, skipped, seconds = requantized(source, ftype, args.cache_dir)
        if path is None:
            print(f"{ftype}: llama.cpp made no file: {skipped}", file=sys.stderr, flush=True)
            rows.append({"type": ftype, "skipped": skipped, "quantize_s": round(seconds or 0, 1)})
            continue
        row = probe(ftype, path, ir_root / ftype, reference, args)
        row["quantize_s"] = None if seconds is None else round(seconds, 1)
        rows.append(row)
    load_after = os.getloadavg()

    print()
    print(
        f"openvino-genai {version('openvino-genai')} on GGUF files made by llama-cpp-python "
        f"{version('llama-cpp-python')} from {source.name} (requantized: see the docstring's caveat)"
    )
    print(table(rows))
    made = [r for r in rows[1:] if "gguf" in r]
    kept = [r["type"] for r in made if r["kept"]]
    refused = [r["type"] for r in made if not r["kept"]]
    not_made = [r["type"] for r in rows[1:] if "gguf" not in r]
    print(f"\nkept ({len(kept)}): {', '.join(kept) or '-'}")
    print(f"refused ({len(refused)}): {', '.join(refused) or '-'}")
    print(f"not made by llama.cpp ({len(not_made)}): {', '.join(not_made) or '-'}")
    if args.quality_tokens:
        print(f"KL: mean KL(float reference || model) in nats over {args.quality_tokens} tokens.")

    result = {
        "benchmark": "gguf_types",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": str(source),
        "float_reference": str(reference.path),
        "question": QUESTION,
        "new_tokens": args.new_tokens,
        "quality_tokens": args.quality_tokens,
        "summary": {"kept": kept, "refused": refused, "not_made": not_made},
        "rows": rows,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "versions": versions(LIBRARIES),
        "machine": {**machine_summary(), "cpu": cpu_model(), "cpus": os.cpu_count()},
        "git": git_revision(HERE.parent),
        "note": "Requantized from Q4_1: quality columns are not what each type gives from float weights.",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nWrote {args.json}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--quantize":
        sys.exit(quantize_main(*sys.argv[2:5]))
    sys.exit(main())
