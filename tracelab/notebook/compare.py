"""The side-by-side figure of a `Comparison`: run A's and run B's steps on one time axis, one
alignment row per line (A just above, B just below), each aligned pair linked by a line.

Segments are drawn as one `scattergl` trace per side and change (`None` breaks the line), so
the figure stays a handful of traces whatever the number of steps.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

if TYPE_CHECKING:
    from tracelab.analysis.compare import Comparison

COLORS = {"same": "#7f8c8d", "changed": "#e67e22", "only_a": "#c0392b", "only_b": "#27ae60"}
OFFSET = 0.18


def _segments(df, side: str, offset: float) -> dict[str, tuple[list, list, list]]:
    out: dict[str, tuple[list, list, list]] = {}
    for row, item in enumerate(df.itertuples(index=False)):
        start = getattr(item, f"started_ms_{side}")
        if start != start:  # NaN: this side has no step on this row
            continue
        duration = getattr(item, f"duration_{side}")
        end = start + (duration if duration == duration else 0.0)
        xs, ys, text = out.setdefault(item.change, ([], [], []))
        label = f"{side.upper()}: {item.kind} {item.target} {item.endpoint} ({item.change})"
        xs.extend([start, end, None])
        ys.extend([row + offset, row + offset, None])
        text.extend([label, label, None])
    return out


def comparison_figure(comparison: Comparison) -> go.Figure:
    """A Plotly figure of the aligned runs (x: ms since each run's first step)."""
    df = comparison.df
    figure = go.Figure()
    for side, offset, name in (("a", -OFFSET, comparison.a), ("b", OFFSET, comparison.b)):
        for change, (xs, ys, text) in _segments(df, side, offset).items():
            figure.add_trace(go.Scattergl(
                x=xs, y=ys, text=text, mode="lines", hoverinfo="text",
                line={"color": COLORS[change], "width": 8 if side == "a" else 5},
                name=f"{name}: {change}", legendgroup=change))
    paired = df[df["a_event_id"].notna() & df["b_event_id"].notna()]
    link_x: list = []
    link_y: list = []
    for row, item in zip(paired.index, paired.itertuples(index=False)):
        link_x.extend([item.started_ms_a, item.started_ms_b, None])
        link_y.extend([row - OFFSET, row + OFFSET, None])
    figure.add_trace(go.Scattergl(x=link_x, y=link_y, mode="lines", hoverinfo="skip",
                                  line={"color": "#bdc3c7", "width": 1}, name="aligned pairs"))
    labels = [f"{k} {t} {e}" for k, t, e in zip(df["kind"], df["target"], df["endpoint"])]
    figure.update_layout(
        title=f"{comparison.a} (A, thick) vs {comparison.b} (B, thin)",
        xaxis_title="ms since the run's first step", height=max(300, 24 * len(df) + 120),
        yaxis={"autorange": "reversed", "tickvals": list(range(len(df))), "ticktext": labels})
    return figure
