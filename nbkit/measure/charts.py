"""Plotly charts of sweep results: size vs quality vs speed, with the Pareto front highlighted.

The same figure feeds the CLI (a self-contained HTML file, offline) and the tuner panel
(wrapped in a ``FigureWidget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbkit.measure.sweep import SweepRecord, pareto_front


def pareto_figure(records: Sequence[SweepRecord], *, title: str | None = None) -> Any:
    """x: weights (MiB), y: mean KL vs float (log), colour: tokens/s; front joined and starred."""
    import plotly.graph_objects as go

    front = pareto_front(records)
    others = [r for r in records if r not in front]
    # Labels next to points only while they stay readable; hover always shows them.
    labelled = len(records) <= 8

    def trace(points: Sequence[SweepRecord], name: str, symbol: str, line: bool) -> Any:
        return go.Scatter(
            x=[r.weights_mib for r in points],
            # KL of the float reference is exactly 0; a floor keeps it on a log axis.
            y=[max(r.mean_kl, 1e-6) for r in points],
            mode=("lines+markers" if line else "markers") + ("+text" if labelled else ""),
            name=name,
            text=[r.label for r in points],
            textposition="top center",
            customdata=[[r.label, r.tokens_per_s, r.quality.top1_agreement, r.speed.ttft_ms] for r in points],
            hovertemplate=(
                "<b>%{customdata[0]}</b><br>%{x:.1f} MiB<br>mean KL %{y:.4f}<br>"
                "top-1 %{customdata[2]:.1%}<br>%{customdata[1]:.1f} tokens/s<br>TTFT %{customdata[3]:.0f} ms"
                "<extra></extra>"
            ),
            marker={
                "symbol": symbol,
                "size": 14 if line else 10,
                "color": [r.tokens_per_s for r in points],
                "colorscale": "Viridis",
                "cmin": min((r.tokens_per_s for r in records), default=0),
                "cmax": max((r.tokens_per_s for r in records), default=1),
                "colorbar": {"title": "tokens/s"} if line else None,
                "line": {"width": 1, "color": "black"},
            },
            line={"dash": "dot", "color": "gray"} if line else None,
        )

    figure = go.Figure(
        [trace(front, "Pareto front", "star", True), trace(others, "dominated", "circle", False)],
        layout={
            "title": title or "Size vs quality vs speed",
            "xaxis": {"title": "weights on disk (MiB, log scale)", "type": "log"},
            "yaxis": {"title": "mean KL divergence vs float (lower is better)", "type": "log"},
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
