"""Plotly figures of a run's per-epoch metrics: loss, accuracy and learning rate."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from recipe.checkpoint import write_text


def run_figure(history: Sequence[dict], title: str, eval_name: str = "eval") -> go.Figure:
    """Train and evaluation loss and accuracy, and the lr, against the epoch."""
    epochs = [row["epoch"] for row in history]
    fig = make_subplots(
        rows=1, cols=3, subplot_titles=("Loss", "Accuracy", "Learning rate (end of epoch)"), horizontal_spacing=0.08
    )
    series = [
        (1, "train_loss", "train loss (with label smoothing)", 1.0),
        (1, "eval_loss", f"{eval_name} loss (plain cross-entropy)", 1.0),
        (2, "train_acc", "train accuracy", 100.0),
        (2, "eval_acc", f"{eval_name} accuracy", 100.0),
        (3, "lr", "learning rate", 1.0),
    ]
    colors = {"train": "#1f77b4", "lr": "#2ca02c"}
    for col, key, name, scale in series:
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[row[key] * scale for row in history],
                name=name,
                mode="lines+markers" if len(epochs) < 40 else "lines",
                line=dict(color=colors.get(key.split("_")[0], "#d62728")),
            ),
            row=1,
            col=col,
        )
    for col, label in ((1, "loss (nats)"), (2, "accuracy (%)"), (3, "learning rate")):
        fig.update_xaxes(title_text="epoch", row=1, col=col)
        fig.update_yaxes(title_text=label, row=1, col=col)
    fig.update_layout(title=title, height=420, legend=dict(orientation="h", y=-0.25))
    return fig


def write_run_curves(history: Sequence[dict], path: str | Path, title: str, eval_name: str = "eval") -> None:
    """A self-contained HTML page (plotly.js embedded) that opens offline."""
    html = run_figure(history, title, eval_name).to_html(include_plotlyjs=True, full_html=True)
    write_text(path, html)
