"""Olive's OpenVINO INT4 next to nbkit's own NNCF INT4 of the same config: same bytes? same model?

:func:`compare_olive_and_nncf` builds both from one model source:

* nbkit: the float OpenVINO IR (:func:`~nbkit.engines.openvino.export.export_openvino`), then
  :func:`~nbkit.compression.weights.compress` with ``CompressionConfig(mode, group_size, ratio)``;
* Olive: the same settings through Olive's OpenVINO passes in one of the forms of
  :data:`~nbkit.engines.ort.olive_openvino.FORMS`
  (:func:`~nbkit.engines.ort.olive_openvino.build_openvino_with_olive`), with the tokenizer files
  the ``convert-then-compress`` form lacks copied from nbkit's float export.

It then answers the question in three layers, each computed, none assumed:

1. the weights: the SHA-256 of both ``openvino_model.bin`` files;
2. the graph: both ``openvino_model.xml`` parsed and compared once the automatically numbered
   node names (``Convert_1003`` …) are set aside, and their ``rt_info`` sections diffed key by
   key. ``rt_info`` holds the versions and settings the tools record, and also
   ``runtime_options`` that OpenVINO applies when it compiles the model: optimum-intel marks
   its float export ``KV_CACHE_PRECISION=f16`` and removes that mark when it compresses, while
   ``nncf.compress_weights`` (nbkit, and Olive's ``OpenVINOWeightCompression``) keeps it. So
   identical weights can still run with different KV-cache precisions, which is why speed and
   answers are measured rather than inferred from the hashes;
3. behaviour: :func:`~nbkit.measure.compare.compare_models` against the float IR: size,
   perplexity, mean KL, top-1 agreement, and interleaved decode speed and time to first token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from nbkit.compression.weights import compress
from nbkit.config import CompressionConfig, CompressionMode, RuntimeConfig
from nbkit.engines.openvino.export import export_openvino
from nbkit.engines.ort.deps import require_olive
from nbkit.engines.ort.olive_openvino import FORMS, MODEL_BIN, MODEL_XML, build_openvino_with_olive
from nbkit.errors import ConfigError
from nbkit.infra.cache import Cache
from nbkit.infra.progress import ProgressCallback, ProgressReporter
from nbkit.measure.compare import Comparison, compare_models
from nbkit.sources.models import ModelSource, resolve_source

NNCF_NAME = "nbkit-nncf"
_HASH_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def rt_info(xml_path: Path) -> dict[str, str]:
    """The model-level ``rt_info`` of an OpenVINO IR, flattened: ``"optimum.nncf_version" -> "3.4.0"``."""
    section = ET.parse(xml_path).getroot().find("rt_info")
    flat: dict[str, str] = {}

    def walk(element: ET.Element, prefix: str) -> None:
        for child in element:
            key = f"{prefix}{child.tag}"
            if len(child):
                walk(child, key + ".")
            else:
                flat[key] = child.attrib.get("value", "")

    if section is not None:
        walk(section, "")
    return flat


def _layers_and_edges(xml_path: Path) -> tuple[list[ET.Element], list[tuple[tuple[str, str], ...]]]:
    root = ET.parse(xml_path).getroot()
    edges = [tuple(sorted(edge.attrib.items())) for edge in root.iter("edge")]
    return list(root.iter("layer")), edges


def _unnamed(layer: ET.Element) -> bytes:
    # The layer as XML without its node names (OpenVINO numbers them per process, so two runs of
    # the same conversion name the same node Convert_1003 and Convert_23243).
    copy = ET.fromstring(ET.tostring(layer))
    for element in copy.iter():
        element.attrib.pop("name", None)
    return ET.tostring(copy)


@dataclasses.dataclass(frozen=True)
class XmlDifference:
    """How two ``openvino_model.xml`` differ: graph apart from node names, and model ``rt_info``."""

    layers: int
    renamed_layers: int
    same_graph: bool
    only_olive: dict[str, str]
    only_nncf: dict[str, str]
    changed: dict[str, tuple[str, str]]  # key -> (Olive's value, nbkit's value)

    @property
    def same_rt_info(self) -> bool:
        return not (self.only_olive or self.only_nncf or self.changed)

    def lines(self) -> list[str]:
        graph = (
            f"graph: the same {self.layers} layers and edges once node names are set aside "
            f"({self.renamed_layers} layer(s) named differently)"
            if self.same_graph
            else f"graph: the layers or edges differ ({self.layers} layers in Olive's model)"
        )
        lines = [graph]
        if self.same_rt_info:
            lines.append("rt_info: identical")
        for key, value in sorted(self.only_olive.items()):
            lines.append(f"rt_info only in Olive's: {key} = {value}")
        for key, value in sorted(self.only_nncf.items()):
            lines.append(f"rt_info only in nbkit's: {key} = {value}")
        for key, (olive, nncf) in sorted(self.changed.items()):
            lines.append(f"rt_info {key}: Olive {olive!r}, nbkit {nncf!r}")
        return lines


def compare_xml(olive_xml: Path, nncf_xml: Path) -> XmlDifference:
    """The graph and ``rt_info`` differences of two OpenVINO IRs (Olive's first, nbkit's second)."""
    olive_layers, olive_edges = _layers_and_edges(olive_xml)
    nncf_layers, nncf_edges = _layers_and_edges(nncf_xml)
    same_graph = (
        len(olive_layers) == len(nncf_layers)
        and olive_edges == nncf_edges
        and all(_unnamed(a) == _unnamed(b) for a, b in zip(olive_layers, nncf_layers, strict=False))
    )
    renamed = sum(a.get("name") != b.get("name") for a, b in zip(olive_layers, nncf_layers, strict=False))
    olive_info, nncf_info = rt_info(olive_xml), rt_info(nncf_xml)
    return XmlDifference(
        layers=len(olive_layers),
        renamed_layers=renamed,
        same_graph=same_graph,
        only_olive={k: v for k, v in olive_info.items() if k not in nncf_info},
        only_nncf={k: v for k, v in nncf_info.items() if k not in olive_info},
        changed={
            k: (olive_info[k], nncf_info[k])
            for k in olive_info.keys() & nncf_info.keys()
            if olive_info[k] != nncf_info[k]
        },
    )


@dataclasses.dataclass(frozen=True)
class OliveNncfComparison:
    """Olive's OpenVINO model (``form``) next to nbkit's NNCF compression of the same config."""

    form: str
    label: str
    olive_name: str
    olive_folder: Path
    nncf_folder: Path
    reference_folder: Path
    olive_bin_sha256: str
    nncf_bin_sha256: str
    xml: XmlDifference
    comparison: Comparison

    @property
    def bins_identical(self) -> bool:
        return self.olive_bin_sha256 == self.nncf_bin_sha256

    def table(self) -> str:
        """The byte and XML verdicts, then the measurement table (ratios against nbkit's model)."""
        verdict = (
            f"{MODEL_BIN}: byte-identical (sha256 {self.olive_bin_sha256[:16]}…)"
            if self.bins_identical
            else f"{MODEL_BIN}: different (Olive {self.olive_bin_sha256[:16]}…, nbkit {self.nncf_bin_sha256[:16]}…)"
        )
        head = [f"{self.label}: Olive form {self.form!r} vs nbkit's NNCF", verdict, *self.xml.lines()]
        return "\n".join([*head, "", self.comparison.table(NNCF_NAME)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "label": self.label,
            "olive_folder": str(self.olive_folder),
            "nncf_folder": str(self.nncf_folder),
            "reference_folder": str(self.reference_folder),
            "olive_bin_sha256": self.olive_bin_sha256,
            "nncf_bin_sha256": self.nncf_bin_sha256,
            "bins_identical": self.bins_identical,
            "xml": dataclasses.asdict(self.xml),
            "comparison": self.comparison.to_dict(),
        }


def compare_olive_and_nncf(
    source: ModelSource | Path | str,
    *,
    mode: str | CompressionMode = "int4_sym",
    group_size: int | str | None = 64,
    ratio: float = 1.0,
    form: str = "optimum",
    work_dir: Path,
    cache: Cache | None = None,
    quality_tokens: int = 512,
    new_tokens: int = 64,
    rounds: int = 3,
    runtime: RuntimeConfig | None = None,
    progress: ProgressCallback | None = None,
    reporter: ProgressReporter | None = None,
) -> OliveNncfComparison:
    """Build ``source`` compressed by nbkit (NNCF) and by Olive (``form``) with the same settings; compare.

    nbkit's models (float IR, compressed IR) land in ``cache``; Olive's in ``work_dir`` (see
    :func:`~nbkit.engines.ort.olive_openvino.build_openvino_with_olive`). Both are measured
    against nbkit's float IR with :func:`~nbkit.measure.compare.compare_models`
    (``quality_tokens`` of evaluation text, ``rounds`` interleaved rounds of ``new_tokens``).
    ``runtime``: run both with these OpenVINO properties (e.g. the same ``KV_CACHE_PRECISION``, to
    take the ``rt_info`` difference out of the speed comparison); by default each runs with its
    engine's default, so each model's own ``rt_info`` runtime options apply.
    """
    require_olive()  # before nbkit's own builds: a missing extra should not cost an export first
    if form not in FORMS:
        raise ConfigError(f"Unknown Olive OpenVINO form {form!r}; choose one of: {', '.join(FORMS)}.")
    reporter = reporter or ProgressReporter(progress)
    cache = cache or Cache()
    source = resolve_source(source)
    config = CompressionConfig(mode=mode, group_size=group_size, ratio=ratio)
    reporter.report(0.0, "Exporting the float OpenVINO IR")
    float_model = export_openvino(source, cache=cache, reporter=reporter.step(0.0, 0.15))
    nncf_model = compress(float_model, config, cache=cache, reporter=reporter.step(0.15, 0.3))
    resolved_group_size = nncf_model.entry.metadata.get("config", {}).get("group_size", group_size)
    olive_folder = build_openvino_with_olive(
        source,
        form=form,
        mode=config.mode,
        group_size=resolved_group_size,  # "auto" resolved the way nbkit just did
        ratio=ratio,
        work_dir=work_dir,
        reporter=reporter.step(0.3, 0.6),
        tokenizer_from=float_model.path,
        cache=cache,
    )
    reporter.report(0.6, "Comparing the two models' files")
    xml = compare_xml(olive_folder / MODEL_XML, nncf_model.path / MODEL_XML)
    olive_name = f"olive-{form}"
    comparison = compare_models(
        {NNCF_NAME: nncf_model, olive_name: olive_folder},
        float_model,
        rounds=rounds,
        new_tokens=new_tokens,
        quality_tokens=quality_tokens,
        runtimes=None if runtime is None else {NNCF_NAME: runtime, olive_name: runtime},
        reporter=reporter.step(0.62, 1.0),
    )
    return OliveNncfComparison(
        form=form,
        label=nncf_model.label,
        olive_name=olive_name,
        olive_folder=olive_folder,
        nncf_folder=nncf_model.path,
        reference_folder=float_model.path,
        olive_bin_sha256=file_sha256(olive_folder / MODEL_BIN),
        nncf_bin_sha256=file_sha256(nncf_model.path / MODEL_BIN),
        xml=xml,
        comparison=comparison,
    )


__all__ = [
    "OliveNncfComparison",
    "XmlDifference",
    "compare_olive_and_nncf",
    "compare_xml",
    "rt_info",
]
