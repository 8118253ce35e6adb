"""Olive's own search over ModelBuilder's int4 options, scored by nbkit's measures.

Olive 0.13 can search a pass's options itself: a ``search_strategy`` (``sampler`` ``tpe``,
``random`` or ``sequential``) picks option values, builds each candidate, scores it with the
workflow's ``evaluators`` and marks the Pareto front in ``footprint.json``.
:func:`olive_search_config` writes such a workflow for ModelBuilder's int4 block size,
symmetric/asymmetric blocks and accuracy level (:class:`OliveSearchSpace`), scored by a
``custom`` metric that calls nbkit's measures (:mod:`nbkit.measure.olive_metric`: mean KL and
top-1 agreement against nbkit's float reference, decode tokens/s), Olive's ``size_on_disk``
and, optionally, Olive's built-in latency metric. :func:`run_olive_search` runs it offline in
a child process and reads every evaluated candidate back;
:func:`nbkit.measure.olive_search_sweep.compare_with_sweep` puts the candidates next to nbkit's
own sweep of the same configs.

The float reference is the sweep's (:data:`~nbkit.engines.registry.REFERENCE_ENGINE`'s fp32
export), and the token counts are the sweep's :class:`~nbkit.measure.sweep.MeasureSettings`, so
Olive's KL numbers are on the scale of nbkit's sweep.

Three things stop such a workflow on olive-ai 0.13.0 unless nbkit sees to them:

* an evaluator without ``"type"`` crashes ``olive run`` before any pass runs. Checked by hand
  on olive-ai 0.13.0 with the plain latency evaluator of the issue's seed config
  (``{"metrics": [{"name": "latency", "type": "latency", "sub_types": [{"name": "avg"}]}]}``)
  and a ModelBuilder int4 pass: ``ValueError: None is not a valid ResourceType``, then
  ``AttributeError: 'NoneType' object has no attribute 'lower'`` (in ``find_all_resources``),
  exit code 1. The config says ``"type": "OnnxEvaluator"``; with it, and dummy token data of
  the model's own config, Olive's latency metric times a ModelBuilder model too.
* a ``custom`` metric only runs with :func:`~nbkit.engines.ort.olive_patches.apply_olive_patches`
  (serialization bugs): run a saved config with
  ``python -m nbkit.engines.ort.olive_patches run --config search.json``.
* with search on, Olive searches *every* ModelBuilder option that has search defaults
  (block size, symmetric, ``int4_algo_config``); the options not searched are fixed here.

The sampler goes under ``search_strategy.sampler``; a ``search_algorithm`` key (seen in older
examples) is not Olive 0.13's and fails with ``KeyError: None``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbkit.config import _Fingerprinted
from nbkit.engines.ort.deps import require_olive
from nbkit.engines.ort.olive_config import (
    ACCURACY_LEVELS,
    BLOCK_SIZES,
    OliveExportConfig,
    check_olive_config,
)
from nbkit.engines.ort.olive_runner import OUTPUT_DIR, last_error, run_olive_config
from nbkit.engines.registry import REFERENCE_ENGINE, engine_for_folder
from nbkit.errors import ConfigError, OliveRunError
from nbkit.infra.cache import Cache, hold_entry
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.measure import olive_metric
from nbkit.measure.sweep import MeasureSettings
from nbkit.sources.models import ModelSource, resolve_source

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "sequential")  # what olive-ai 0.13 registers (olive.search.samplers)
SEEDED_SAMPLERS = ("tpe", "random")  # the sequential sampler takes no seed
CONFIG_NAME = "search.json"
SCRATCH_DIR = ".olive-scratch"  # where run_olive_config keeps Olive's cache, in the work folder
PASS_NAME = "model_builder"
EVALUATOR_NAME = "nbkit_evaluator"
# Olive makes any string of its config that names an existing path relative to the working folder
# absolute, metric names too (a metric called "nbkit" run from nbkit's repository became
# "/…/nbkit"): these names are unlikely to be files, and results are read by suffix anyway.
NBKIT_METRIC = "nbkit_measures"
SIZE_METRIC = "size"
LATENCY_METRIC = "latency"
LATENCY_DATA = "latency_data"
LATENCY_SAMPLES = 8
LATENCY_WARMUP = 2
LATENCY_REPEATS = 10
OLIVE_OUTPUT = "olive-search-output"  # output_dir of a config written for a user to run

# Olive's flattened metric names in footprint.json: "<metric>-<sub type>".
KL_KEY = f"{NBKIT_METRIC}-kl"
TOP1_KEY = f"{NBKIT_METRIC}-top1"
TPS_KEY = f"{NBKIT_METRIC}-decode_tps"
SIZE_KEY = f"{SIZE_METRIC}-bytes"
LATENCY_KEY = f"{LATENCY_METRIC}-avg"


# -- the search space ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OliveSearchSpace(_Fingerprinted):
    """What Olive searches (ModelBuilder int4 options), how, and how nbkit scores each candidate.

    ``block_sizes``, ``symmetric`` and ``accuracy_levels`` are the values tried; an option with
    one value is fixed in the pass. Every block size must divide the input channels of every
    quantized layer, as for nbkit's own builds (:func:`check_space_fits`): the default stops at
    64 because the bundled SmolLM2-135M's 576 channels are no multiple of 128. ``sampler`` is Olive's (``tpe``, ``random`` or
    ``sequential``); ``max_samples`` how many candidates it builds (default: the whole grid);
    ``seed`` the sampler's seed. ``quality_tokens``/``quality_window`` and
    ``speed_new_tokens``/``speed_repeats`` are nbkit's measure settings, as in a sweep's
    :class:`~nbkit.measure.sweep.MeasureSettings`. ``latency`` adds Olive's built-in latency
    metric (ms per forward pass of dummy tokens through an ONNX Runtime session).
    """

    block_sizes: tuple[int, ...] = (16, 32, 64)
    symmetric: tuple[bool, ...] = (True,)
    accuracy_levels: tuple[int, ...] = (4,)
    sampler: str = "tpe"
    max_samples: int | None = None
    seed: int = 0
    quality_tokens: int = 512
    quality_window: int = 128
    speed_new_tokens: int = 64
    speed_repeats: int = 3
    latency: bool = False

    def __post_init__(self) -> None:
        self._set("block_sizes", _values("block_sizes", self.block_sizes, BLOCK_SIZES, int))
        self._set("symmetric", _values("symmetric", self.symmetric, (True, False), bool))
        self._set(
            "accuracy_levels",
            _values("accuracy_levels", self.accuracy_levels, tuple(ACCURACY_LEVELS), int),
        )
        sampler = self.sampler.strip().lower() if isinstance(self.sampler, str) else self.sampler
        if sampler not in SAMPLERS:
            raise ConfigError(
                f"Unknown Olive sampler {self.sampler!r}; olive-ai 0.13 registers {', '.join(SAMPLERS)} "
                "(set as search_strategy.sampler: Olive 0.13 has no search_algorithm key)."
            )
        self._set("sampler", sampler)
        size = self.grid_size
        if self.max_samples is None:
            self._set("max_samples", size)
        elif not _is_int(self.max_samples) or not 1 <= self.max_samples <= size:
            raise ConfigError(
                f"max_samples must be an integer from 1 to {size} (the size of the search grid), "
                f"not {self.max_samples!r}."
            )
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, not {self.seed!r}.")
        for name in ("quality_tokens", "quality_window"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 2:
                raise ConfigError(f"{name} must be an integer of at least 2, not {getattr(self, name)!r}.")
        for name in ("speed_new_tokens", "speed_repeats"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, not {getattr(self, name)!r}.")
        if not isinstance(self.latency, bool):
            raise ConfigError(f"latency must be True or False, not {self.latency!r}.")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def grid_size(self) -> int:
        return len(self.block_sizes) * len(self.symmetric) * len(self.accuracy_levels)

    def export_configs(self) -> list[OliveExportConfig]:
        """Every point of the grid as nbkit's ONNX Runtime GenAI config (what a sweep builds)."""
        return [
            OliveExportConfig("int4", size, level, symmetric)
            for size, symmetric, level in itertools.product(
                self.block_sizes, self.symmetric, self.accuracy_levels
            )
        ]

    def measure_settings(self) -> MeasureSettings:
        """The sweep settings that measure what the Olive metric measures (no answers check)."""
        return MeasureSettings(
            quality_tokens=self.quality_tokens,
            quality_window=self.quality_window,
            speed_new_tokens=self.speed_new_tokens,
            speed_repeats=self.speed_repeats,
            answers=False,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _values(name: str, values: Any, allowed: Sequence[Any], kind: type) -> tuple[Any, ...]:
    items = (values,) if isinstance(values, (int, bool, str)) else tuple(values)
    good = [v for v in items if (isinstance(v, bool) if kind is bool else _is_int(v)) and v in allowed]
    if not items or len(good) != len(items) or len(set(items)) != len(items):
        raise ConfigError(
            f"{name} must be distinct values among {', '.join(map(str, allowed))}, not {values!r}."
        )
    return items


# -- the Olive workflow ------------------------------------------------------------------------


def _option(values: tuple[Any, ...]) -> Any:
    """One value fixes the option; more make it an Olive search parameter."""
    if len(values) == 1:
        return values[0]
    return {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": list(values)}


def olive_search_config(
    hf_folder: Path | str,
    reference_folder: Path | str,
    space: OliveSearchSpace | None = None,
    *,
    output_dir: Path | str = OLIVE_OUTPUT,
    cache_dir: Path | str | None = None,
) -> dict[str, Any]:
    """The Olive 0.13 workflow that searches ``space`` on the Hugging Face folder ``hf_folder``.

    Candidates are scored by nbkit's metric against ``reference_folder`` (a float model folder
    nbkit loads, such as the sweep's reference), by Olive's size on disk and, with
    ``space.latency``, by Olive's latency metric. Save it as JSON and run it with
    ``python -m nbkit.engines.ort.olive_patches run --config FILE`` (the patches make the custom
    metric run on olive-ai 0.13.0). Paths are made absolute so the file runs from any folder.
    """
    space = space or OliveSearchSpace()
    hf = str(Path(hf_folder).expanduser().resolve())
    metrics: list[dict[str, Any]] = [
        {
            "name": NBKIT_METRIC,
            "type": "custom",
            "sub_types": [
                {"name": "kl", "priority": 1, "higher_is_better": False},
                {"name": "decode_tps", "priority": 2, "higher_is_better": True},
                {"name": "top1", "priority": 3, "higher_is_better": True},
            ],
            "user_config": {
                "user_script": str(Path(olive_metric.__file__).resolve()),
                "evaluate_func": olive_metric.EVALUATE_FUNC,
                "evaluate_func_kwargs": {
                    "reference": str(Path(reference_folder).expanduser().resolve()),
                    "num_tokens": space.quality_tokens,
                    "window": space.quality_window,
                    "new_tokens": space.speed_new_tokens,
                    "repeats": space.speed_repeats,
                },
            },
        },
        # priority -1: reported and on the Pareto front, not used to rank the candidates
        {"name": SIZE_METRIC, "type": "size_on_disk", "sub_types": [{"name": "bytes", "priority": -1}]},
    ]
    config: dict[str, Any] = {
        "input_model": {"type": "HfModel", "model_path": hf},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        # "type" is required in practice: without it olive-ai 0.13.0 crashes in find_all_resources.
        "evaluators": {EVALUATOR_NAME: {"type": "OnnxEvaluator", "metrics": metrics}},
        "evaluator": EVALUATOR_NAME,
        "evaluate_input_model": False,
        "passes": {
            PASS_NAME: {
                "type": "ModelBuilder",
                "precision": "int4",
                "int4_block_size": _option(space.block_sizes),
                "int4_is_symmetric": _option(space.symmetric),
                "int4_accuracy_level": _option(space.accuracy_levels),
                # ModelBuilder's own default; fixed, or Olive would search its four algorithms too.
                "int4_algo_config": "default",
            }
        },
        "search_strategy": {
            "execution_order": "joint",
            "sampler": space.sampler,
            "max_samples": space.max_samples,
            **({"seed": space.seed} if space.sampler in SEEDED_SAMPLERS else {}),
        },
        "host": "local_system",
        "target": "local_system",
        "log_severity_level": 1,
        "output_dir": str(output_dir),
    }
    if cache_dir is not None:
        config["cache_dir"] = str(cache_dir)
    if space.latency:
        metrics.append(
            {
                "name": LATENCY_METRIC,
                "type": "latency",
                "sub_types": [
                    {
                        "name": "avg",
                        "priority": 4,
                        "metric_config": {"warmup_num": LATENCY_WARMUP, "repeat_test_num": LATENCY_REPEATS},
                    }
                ],
                # A ModelBuilder model's inputs have symbolic shapes: without dummy data of the
                # model's own config, the latency metric cannot make its inputs.
                "data_config": LATENCY_DATA,
            }
        )
        config["data_configs"] = [
            {
                "name": LATENCY_DATA,
                "type": "TransformersTokenDummyDataContainer",
                "load_dataset_config": {"model_name": hf, "max_samples": LATENCY_SAMPLES},
            }
        ]
    return config


# -- results ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OliveCandidate:
    """One model Olive built and evaluated: its ModelBuilder options and its metrics.

    ``size_bytes`` is Olive's ``size_on_disk`` (the loaded ONNX model's serialized size),
    ``weights_bytes`` nbkit's (the files ``model.onnx*``, as a sweep counts them) when the
    model is still in Olive's cache. ``olive_pareto`` is Olive's ``is_pareto_frontier`` over
    every metric of the workflow.
    """

    model_id: str
    block_size: int
    symmetric: bool
    accuracy_level: int
    kl: float
    top1: float
    decode_tps: float
    size_bytes: int
    latency_ms: float | None
    olive_pareto: bool
    model_path: Path | None
    weights_bytes: int | None

    @property
    def config(self) -> OliveExportConfig:
        """The same build as nbkit's config (what :func:`nbkit.engines.ort.olive.export_olive` takes)."""
        return OliveExportConfig("int4", self.block_size, self.accuracy_level, self.symmetric)

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def size_mib(self) -> float:
        return self.size_bytes / 1024 / 1024


@dataclasses.dataclass(frozen=True)
class OliveSearchResult:
    """What :func:`run_olive_search` found: every evaluated candidate, in Olive's order."""

    space: OliveSearchSpace
    candidates: tuple[OliveCandidate, ...]
    config_path: Path
    output_dir: Path
    run_history: str
    reference_path: Path
    hf_folder: Path
    seconds: float

    @property
    def olive_pareto(self) -> list[OliveCandidate]:
        """The candidates Olive marked on its Pareto front, smallest first."""
        return sorted((c for c in self.candidates if c.olive_pareto), key=lambda c: c.size_bytes)

    @property
    def command(self) -> str:
        """The command that runs the saved config again (into its own output folder)."""
        return f"python -m nbkit.engines.ort.olive_patches run --config {self.config_path}"

    def table(self) -> str:
        """The candidates as a text table: Olive's Pareto front first (smallest first), then the rest."""
        header = ["config", "block", "sym", "acc", "Olive front", "MiB", "mean KL", "top-1", "tokens/s"]
        if self.space.latency:
            header.append("latency ms")
        front = self.olive_pareto
        rest = sorted((c for c in self.candidates if not c.olive_pareto), key=lambda c: c.size_bytes)
        rows = []
        for c in [*front, *rest]:
            row = [
                c.label,
                str(c.block_size),
                "yes" if c.symmetric else "no",
                str(c.accuracy_level),
                "*" if c.olive_pareto else "",
                f"{c.size_mib:.4g}",
                f"{c.kl:.4g}",
                f"{c.top1:.1%}",
                f"{c.decode_tps:.1f}",
            ]
            if self.space.latency:
                row.append("-" if c.latency_ms is None else f"{c.latency_ms:.2f}")
            rows.append(row)
        return format_rows(header, rows)


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    table = [list(header), *map(list, rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _metric(values: Mapping[str, Any], key: str) -> float | None:
    found = [name for name in values if name == key or name.endswith(f"/{key}")]
    item = values.get(found[0]) if found else None
    if isinstance(item, Mapping):
        item = item.get("value")
    return None if item is None else float(item)


def _node_model_path(node: Mapping[str, Any]) -> Path | None:
    config = (node.get("model_config_data") or node.get("model_config") or {}).get("config") or {}
    path = config.get("model_path")
    if not path:
        return None
    folder = Path(path)
    folder = folder.parent if folder.suffix == ".onnx" else folder
    return folder if folder.is_dir() else None


def candidates_from_footprint(footprint: Mapping[str, Any]) -> list[OliveCandidate]:
    """The evaluated candidates of Olive's ``footprint.json`` (model id -> node), in evaluation order.

    The input model and nodes without nbkit's metric (a failed build) are left out.
    """
    candidates = []
    for model_id, node in footprint.items():
        if not isinstance(node, Mapping):
            continue
        values = ((node.get("metrics") or {}).get("value")) or {}
        params = node.get("pass_run_config") or {}
        kl = _metric(values, KL_KEY)
        if kl is None or "int4_block_size" not in params:
            continue
        folder = _node_model_path(node)
        engine = engine_for_folder(folder) if folder is not None else None
        latency = _metric(values, LATENCY_KEY)
        candidates.append(
            OliveCandidate(
                model_id=str(model_id),
                block_size=int(params["int4_block_size"]),
                symmetric=bool(params.get("int4_is_symmetric", True)),
                accuracy_level=int(params.get("int4_accuracy_level") or 4),
                kl=kl,
                top1=_metric(values, TOP1_KEY) or 0.0,
                decode_tps=_metric(values, TPS_KEY) or 0.0,
                size_bytes=int(_metric(values, SIZE_KEY) or 0),
                latency_ms=latency,
                olive_pareto=bool(node.get("is_pareto_frontier", False)),
                model_path=folder,
                weights_bytes=engine.weights_bytes(folder) if engine is not None and folder else None,
            )
        )
    return candidates


# -- running the search ------------------------------------------------------------------------


def _check_work_dir(work_dir: Path) -> None:
    """Refuse a folder holding files nbkit did not write (Olive would write over them)."""
    if work_dir.is_file():
        raise ConfigError(f"work_dir {work_dir} is a file; give a folder for the search's files.")
    if work_dir.is_dir() and any(work_dir.iterdir()) and not (work_dir / CONFIG_NAME).is_file():
        raise ConfigError(
            f"work_dir {work_dir} holds files of something else (no {CONFIG_NAME}); give an empty or new "
            "folder, or the work_dir of an earlier search to run it again."
        )


def check_space_fits(space: OliveSearchSpace, source: ModelSource, cache: Cache) -> None:
    """ConfigError naming the model's valid block sizes when one of ``space``'s does not fit its layers."""
    facts = source.architecture(cache)
    for config in space.export_configs():
        check_olive_config(config, facts)


def run_olive_search(
    source: ModelSource | Path | str,
    space: OliveSearchSpace | None = None,
    *,
    work_dir: Path | str,
    cache: Cache | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> OliveSearchResult:
    """Let Olive search ``space`` on ``source``, scoring each candidate with nbkit's measures.

    The float reference is the one nbkit's sweep measures against (exported into ``cache``
    if needed). The workflow is saved as ``work_dir/search.json`` and runs offline in a child
    process (Cancel ends it); Olive writes ``footprint.json`` and ``run_history.txt`` into
    ``work_dir/output`` and keeps its cache, with every candidate model, in
    ``work_dir/.olive-scratch`` (each candidate's ``model_path``). Running again in the same
    ``work_dir`` replaces its ``output`` and reuses Olive's cache; a folder holding other files
    is refused.
    """
    space = space or OliveSearchSpace()
    work = Path(work_dir).expanduser().resolve()
    _check_work_dir(work)
    require_olive()
    source = resolve_source(source)
    cache = cache or Cache()
    reporter = reporter or ProgressReporter(progress)
    hf_folder = source.hf_folder(cache, reporter.step(0.0, 0.1))
    check_space_fits(space, source, cache)  # before the float export and Olive: a bad size costs nothing
    reference = REFERENCE_ENGINE.export_reference(source, None, cache=cache, reporter=reporter.step(0.1, 0.2))
    output = work / OUTPUT_DIR
    config = olive_search_config(
        hf_folder, reference.path, space, output_dir=output, cache_dir=work / SCRATCH_DIR / "cache"
    )
    if output.is_dir():  # an earlier search's (the work folder holds its search.json): no stale footprint
        shutil.rmtree(output)
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / CONFIG_NAME
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    started = time.perf_counter()
    with hold_entry(reference.path):  # `nbkit cache clear` leaves the reference alone meanwhile
        run = run_olive_config(
            config,
            work,
            reporter=reporter.step(0.2, 1.0),
            produced=lambda folder: (folder / "footprint.json").is_file(),
            patched=True,
            pass_runs=space.max_samples or space.grid_size,
        )
    candidates = candidates_from_footprint(run.footprint)
    if not candidates:
        raise OliveRunError(
            f"Olive's search evaluated no candidate ({last_error(run.errors)}); see {output}."
        )
    log.info("Olive evaluated %d candidates in %.1f s", len(candidates), time.perf_counter() - started)
    return OliveSearchResult(
        space=space,
        candidates=tuple(candidates),
        config_path=config_path,
        output_dir=output,
        run_history=run.run_history,
        reference_path=reference.path,
        hf_folder=hf_folder,
        seconds=time.perf_counter() - started,
    )


__all__ = [
    "CONFIG_NAME",
    "SAMPLERS",
    "OliveCandidate",
    "OliveSearchResult",
    "OliveSearchSpace",
    "candidates_from_footprint",
    "check_space_fits",
    "format_rows",
    "olive_search_config",
    "run_olive_search",
]
