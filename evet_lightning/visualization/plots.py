"""Plots for the CLI, with matplotlib's Agg canvas (no display, no pyplot global state).

matplotlib receives Python floats only; nothing here touches numpy directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["METRIC_TITLES", "plot_metric_history"]

#: Panel titles of the paired metrics (original vs EVET), in panel order, with the better direction.
METRIC_TITLES: dict[str, str] = {
    "average_drop": "Average drop (%), lower is better",
    "increase_in_confidence": "Increase in confidence (%), higher is better",
    "energy_pointing_game": "Energy pointing game (%), higher is better",
    "stability_index": "Stability index, higher is better",
}


def plot_metric_history(
    history: Sequence[Mapping[str, float]], path: str | os.PathLike[str], prefix: str = "evet"
) -> Path:
    """Plot every metric over the epochs, original vs EVET, one panel per metric; save as PNG.

    Args:
        history: one record per epoch with an ``epoch`` key and the callback's logged keys
            (``{prefix}/original/<metric>``, ``{prefix}/evet/<metric>``, ``{prefix}/win``) and ``val_acc``.
        path: the PNG file to write (parent folders are created).
        prefix: the callback's key prefix.

    Returns:
        The path written.

    Panels: each metric of :data:`METRIC_TITLES` the history has (fractions shown in %, the stability index as
    is), then "win" (EVET beats the original on the perturbed-image probability, %) and the validation
    accuracy when logged.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [float(record["epoch"]) for record in history]
    panels: list[tuple[str, list[tuple[str, str]], float]] = []
    for name, title in METRIC_TITLES.items():
        keys = [(f"{prefix}/original/{name}", "original"), (f"{prefix}/evet/{name}", "EVET")]
        if any(key in record for record in history for key, _ in keys):
            panels.append((title, keys, 1.0 if name == "stability_index" else 100.0))
    if any(f"{prefix}/win" in record for record in history):
        panels.append(("Win of EVET over the original (%)", [(f"{prefix}/win", "EVET wins")], 100.0))
    if any("val_acc" in record for record in history):
        panels.append(("Validation accuracy (%)", [("val_acc", "val_acc")], 100.0))
    if not panels:
        raise ValueError("Expected a history with at least one logged metric, but got none")

    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, (title, keys, scale) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        for key, label in keys:
            points = [
                (epoch, scale * float(record[key]))
                for epoch, record in zip(epochs, history, strict=True)
                if key in record
            ]
            if points:
                axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        if epochs:
            axis.set_xticks(sorted(set(epochs)))
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(os.fspath(target), dpi=100)
    return target
