"""Plotly charts of sweep results: size vs quality vs speed per engine, with the Pareto front highlighted.

The same figure feeds the CLI (a self-contained HTML file, offline) and the tuner panel
(wrapped in a ``FigureWidget``).

The float reference has a KL divergence of exactly 0, which a log axis cannot show: it is
drawn as a dashed vertical line at its size with a note (size, speed), never as a point, and
the axes are fitted to the compressed points so they are not squeezed into a corner.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbkit.engines.registry import engine_names, engines
from nbkit.errors import ConfigError
from nbkit.measure.sweep import SweepRecord

# One marker per engine, so both engines' points read apart on one chart (and in greyscale).
ENGINE_SYMBOLS = {"openvino": "circle", "ort": "diamond"}
_EXTRA_SYMBOLS = ("square", "triangle-up", "cross", "x")
CHOSEN_COLOR = "#d1242f"  # the ring of the model the chat uses
FRONT_NAME = "Pareto front: smallest for its KL"


def engine_symbol(engine: str) -> str:
    if engine in ENGINE_SYMBOLS:
        return ENGINE_SYMBOLS[engine]
    others = [name for name in engine_names() if name not in ENGINE_SYMBOLS]
    return _EXTRA_SYMBOLS[others.index(engine) % len(_EXTRA_SYMBOLS)] if engine in others else "square"


def is_reference(record: SweepRecord) -> bool:
    """A float reference measured against itself: its KL is exactly 0 (no log axis can show it)."""
    return record.mean_kl <= 0.0


def size_quality_front(records: Sequence[SweepRecord]) -> list[SweepRecord]:
    """The compressed records no other one beats on both axes of the chart (smaller and lower KL), smallest first.

    Speed is the colour, not an axis: a point is on this front only for what the chart shows,
    so a reader can check every ring by eye.
    """
    points = [r for r in records if not is_reference(r)]

    def beaten(r: SweepRecord) -> bool:
        return any(
            o.weights_mib <= r.weights_mib
            and o.mean_kl <= r.mean_kl
            and (o.weights_mib < r.weights_mib or o.mean_kl < r.mean_kl)
            for o in points
            if o is not r
        )

    return sorted((r for r in points if not beaten(r)), key=lambda r: (r.weights_mib, r.mean_kl))


def _log_range(values: Sequence[float], pad: float) -> list[float] | None:
    """A log axis range (in decades) around ``values``, widened by ``pad`` decades each side."""
    positive = [v for v in values if v > 0]
    if not positive:
        return None
    low, high = math.log10(min(positive)), math.log10(max(positive))
    pad = max(pad, (high - low) * 0.12)
    return [low - pad, high + pad]


def _label_positions(points: Sequence[SweepRecord], labelled: set[int]) -> list[str]:
    """Above and below in turn along the x axis, so labels of neighbouring points do not overlap."""
    order = sorted((i for i in range(len(points)) if i in labelled), key=lambda i: points[i].weights_mib)
    positions = ["top center"] * len(points)
    for rank, index in enumerate(order):
        positions[index] = "top center" if rank % 2 == 0 else "bottom center"
    return positions


def pareto_figure(
    records: Sequence[SweepRecord], *, title: str | None = None, chosen: str | None = None
) -> Any:
    """x: weights (MiB, log), y: mean KL vs float (log), colour: tokens/s, marker: engine.

    One trace per registered engine (always present, possibly empty, so a panel can update
    the traces in place) holding the compressed points, plus the front of
    :func:`size_quality_front` joined by a dotted line; front points are ringed and labelled
    (every point names itself on hover). Float references (KL 0) are dashed vertical lines
    with a note. ``chosen`` (a model folder) rings that point in red: the model the chat
    uses. Every point's ``customdata[0]`` is its model folder (what a click picks).
    """
    import plotly.graph_objects as go

    references = [r for r in records if is_reference(r)]
    points_all = [r for r in records if not is_reference(r)]
    front = size_quality_front(points_all)
    front_paths = {r.model_path for r in front}
    speeds = [r.tokens_per_s for r in records]
    low, high = (min(speeds), max(speeds)) if speeds else (0.0, 1.0)
    title_of = {e.name: e.title for e in engines()}

    def points_trace(points: Sequence[SweepRecord], engine: str) -> Any:
        on_front = [r.model_path in front_paths for r in points]
        is_chosen = [r.model_path == chosen for r in points]
        labelled = {i for i, (f, c) in enumerate(zip(on_front, is_chosen, strict=True)) if f or c}
        return go.Scatter(
            x=[r.weights_mib for r in points],
            y=[r.mean_kl for r in points],
            mode="markers+text",
            name=title_of.get(engine, engine),
            text=[r.label for r in points],
            # Only the front (and the chat's model) is labelled on the chart; hover names every point.
            # " ", not "": plotly falls back to ``text`` for an empty template.
            texttemplate=[
                "%{text}" + (" · chat" if c else "") if i in labelled else " "
                for i, c in enumerate(is_chosen)
            ],
            textposition=_label_positions(points, labelled),
            textfont={"size": 11},
            customdata=[
                [
                    r.model_path,
                    r.label,
                    r.tokens_per_s,
                    r.quality.top1_agreement,
                    r.speed.ttft_ms,
                    r.engine,
                    r.speed.peak_rss_mb,
                ]
                for r in points
            ],
            hovertemplate=(
                "<b>%{customdata[1]}</b> (%{customdata[5]})<br>%{x:.1f} MiB<br>mean KL %{y:.4f}<br>"
                "top-1 %{customdata[3]:.1%}<br>%{customdata[2]:.1f} tokens/s<br>TTFT %{customdata[4]:.0f} ms"
                "<br>peak RSS %{customdata[6]:.0f} MiB<br><i>click: chat with it</i><extra></extra>"
            ),
            marker={
                "symbol": engine_symbol(engine),
                "size": [15 if f else 10 for f in on_front],
                "color": [r.tokens_per_s for r in points],
                "colorscale": "Viridis",
                "cmin": low,
                "cmax": high,
                "colorbar": {"title": "tokens/s", "x": 1.02} if engine == engine_names()[0] else None,
                "showscale": engine == engine_names()[0],
                "line": {
                    "width": [
                        4 if c else 2.5 if f else 0.5 for f, c in zip(on_front, is_chosen, strict=True)
                    ],
                    "color": [CHOSEN_COLOR if c else "black" for c in is_chosen],
                },
            },
        )

    names = list(engine_names()) + sorted({r.engine for r in points_all} - set(engine_names()))
    traces = [points_trace([r for r in points_all if r.engine == name], name) for name in names]
    traces.append(
        go.Scatter(
            x=[r.weights_mib for r in front],
            y=[r.mean_kl for r in front],
            mode="lines",
            name=FRONT_NAME,
            line={"dash": "dot", "color": "gray"},
            hoverinfo="skip",
            customdata=[[r.model_path, r.label] for r in front],  # a click on the line picks the point
        )
    )
    shapes, annotations = [], []
    for index, reference in enumerate(references):
        chat = " · chat" if reference.model_path == chosen else ""
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": reference.weights_mib,
                "x1": reference.weights_mib,
                "y0": 0,
                "y1": 1,
                "line": {"dash": "dash", "color": CHOSEN_COLOR if chat else "#57606a", "width": 1.5},
            }
        )
        annotations.append(
            {
                "xref": "x",
                "yref": "paper",
                "x": math.log10(reference.weights_mib) if reference.weights_mib > 0 else 0,
                "y": 1 - 0.07 * index,
                "xanchor": "right",
                "yanchor": "top",
                "showarrow": False,
                "align": "right",
                "text": (
                    f"{reference.label} (reference, KL 0)<br>{reference.weights_mib:.1f} MiB · "
                    f"{reference.tokens_per_s:.1f} tokens/s{chat}"
                ),
                "font": {"size": 11, "color": "#57606a"},
                "bgcolor": "rgba(255,255,255,0.8)",
            }
        )
    sizes = [r.weights_mib for r in records]
    x_range = _log_range(sizes, 0.08)
    y_range = _log_range([r.mean_kl for r in points_all], 0.25)
    figure = go.Figure(
        traces,
        layout={
            "title": title or "Size vs quality vs speed",
            "xaxis": {"title": "weights on disk (MiB, log scale)", "type": "log", "range": x_range},
            # "power": 10⁻³ rather than plotly's SI "1m", which reads as a unit on a KL axis.
            "yaxis": {
                "title": "mean KL divergence vs float (lower is better)",
                "type": "log",
                "exponentformat": "power",
                "dtick": "D2",  # labels at 1, 2 and 5 of each decade: every label readable
                "range": y_range,
            },
            "shapes": shapes,
            "annotations": annotations,
            "legend": {"orientation": "h", "y": -0.2},
            "template": "plotly_white",
            "height": 480,
            "autosize": True,
            "margin": {"l": 70, "r": 30, "t": 60, "b": 40},
        },
    )
    return figure


# Marks the HTML files write_chart made, so a later run may replace them and nothing else.
CHART_MARKER = '<meta name="generator" content="nbkit sweep chart">'


def check_chart_target(path: Path | str) -> Path:
    """``path`` as a chart target, or :class:`ConfigError` if writing there would replace something
    nbkit did not write (a folder, or a file without :data:`CHART_MARKER`).

    The CLI calls it before a sweep starts, so a bad ``--chart`` fails in a second, not after the sweep.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{target} is a folder; give --chart a file name such as {target / 'sweep.html'}.")
    if target.exists() and not _is_nbkit_chart(target):
        raise ConfigError(
            f"{target} exists and is not a chart nbkit wrote; nbkit does not overwrite it: "
            "give --chart another file name, or move that file away first."
        )
    return target


def write_chart(
    records: Sequence[SweepRecord],
    path: Path | str,
    *,
    title: str | None = None,
    chosen: SweepRecord | None = None,
) -> Path:
    """Write the chart as a self-contained HTML file (plotly.js embedded: works offline).

    The file is written beside the target and renamed into place, so a crash never leaves half
    a chart. An existing file is replaced only when it is a chart nbkit wrote (see
    :func:`check_chart_target`). ``chosen`` (a pick's winner) is ringed.
    """
    target = check_chart_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    chosen_path = chosen.model_path if chosen is not None else None
    page = pareto_figure(records, title=title, chosen=chosen_path).to_html(
        include_plotlyjs=True, full_html=True, config={"responsive": True}
    )
    page = page.replace("<head>", "<head>" + CHART_MARKER, 1)
    partial = target.with_name(f".{target.name}.{os.getpid()}.incomplete")
    try:
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _is_nbkit_chart(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return CHART_MARKER.encode() in handle.read(4096)
    except OSError:
        return False
