"""Plotly charts of sweep results: size vs quality vs speed per engine, with the Pareto front highlighted.

The same figure feeds the CLI (a self-contained HTML file, offline) and the tuner panel
(wrapped in a ``FigureWidget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbkit.engines.registry import engine_names, engines
from nbkit.measure.sweep import SweepRecord, pareto_front

# One marker per engine, so both engines' points read apart on one chart (and in greyscale).
ENGINE_SYMBOLS = {"openvino": "circle", "ort": "diamond"}
_EXTRA_SYMBOLS = ("square", "triangle-up", "cross", "x")


def engine_symbol(engine: str) -> str:
    if engine in ENGINE_SYMBOLS:
        return ENGINE_SYMBOLS[engine]
    others = [name for name in engine_names() if name not in ENGINE_SYMBOLS]
    return _EXTRA_SYMBOLS[others.index(engine) % len(_EXTRA_SYMBOLS)] if engine in others else "square"


def pareto_figure(records: Sequence[SweepRecord], *, title: str | None = None) -> Any:
    """x: weights (MiB), y: mean KL vs float (log), colour: tokens/s, marker: engine.

    One trace per registered engine (always present, possibly empty, so a panel can update
    the traces in place) plus the Pareto front across all engines, joined by a dotted line
    and ringed. Every point's ``customdata[0]`` is its model folder (what a click picks).
    """
    import plotly.graph_objects as go

    front = pareto_front(records)
    # Labels next to points only while they stay readable; hover always shows them.
    labelled = len(records) <= 8
    speeds = [r.tokens_per_s for r in records]
    low, high = (min(speeds), max(speeds)) if speeds else (0.0, 1.0)

    def points_trace(points: Sequence[SweepRecord], engine: str) -> Any:
        title_of = {e.name: e.title for e in engines()}
        return go.Scatter(
            x=[r.weights_mib for r in points],
            # KL of the float reference is exactly 0; a floor keeps it on a log axis.
            y=[max(r.mean_kl, 1e-6) for r in points],
            mode="markers" + ("+text" if labelled else ""),
            name=title_of.get(engine, engine),
            text=[r.label for r in points],
            textposition="top center",
            customdata=[
                [r.model_path, r.label, r.tokens_per_s, r.quality.top1_agreement, r.speed.ttft_ms, r.engine]
                for r in points
            ],
            hovertemplate=(
                "<b>%{customdata[1]}</b> (%{customdata[5]})<br>%{x:.1f} MiB<br>mean KL %{y:.4f}<br>"
                "top-1 %{customdata[3]:.1%}<br>%{customdata[2]:.1f} tokens/s<br>TTFT %{customdata[4]:.0f} ms"
                "<extra></extra>"
            ),
            marker={
                "symbol": engine_symbol(engine),
                "size": [15 if r in front else 10 for r in points],
                "color": [r.tokens_per_s for r in points],
                "colorscale": "Viridis",
                "cmin": low,
                "cmax": high,
                "colorbar": {"title": "tokens/s", "x": 1.02} if engine == engine_names()[0] else None,
                "showscale": engine == engine_names()[0],
                "line": {"width": [2.5 if r in front else 0.5 for r in points], "color": "black"},
            },
        )

    names = list(engine_names()) + sorted({r.engine for r in records} - set(engine_names()))
    traces = [points_trace([r for r in records if r.engine == name], name) for name in names]
    traces.append(
        go.Scatter(
            x=[r.weights_mib for r in front],
            y=[max(r.mean_kl, 1e-6) for r in front],
            mode="lines",
            name="Pareto front (both engines)",
            line={"dash": "dot", "color": "gray"},
            hoverinfo="skip",
            customdata=[[r.model_path, r.label] for r in front],  # a click on the line picks the point
        )
    )
    figure = go.Figure(
        traces,
        layout={
            "title": title or "Size vs quality vs speed",
            "xaxis": {"title": "weights on disk (MiB, log scale)", "type": "log"},
            # "power": 10⁻⁶ rather than plotly's SI "1µ", which reads as a unit on a KL axis.
            "yaxis": {
                "title": "mean KL divergence vs float (lower is better)",
                "type": "log",
                "exponentformat": "power",
            },
            "legend": {"orientation": "h", "y": -0.2},
            "template": "plotly_white",
            "height": 480,
        },
    )
    return figure


def write_chart(records: Sequence[SweepRecord], path: Path | str, *, title: str | None = None) -> Path:
    """Write the chart as a self-contained HTML file (plotly.js embedded: works offline)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    pareto_figure(records, title=title).write_html(str(target), include_plotlyjs=True, full_html=True)
    return target
