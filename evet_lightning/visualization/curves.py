"""Curves as images: the per-alpha trade-off of ``alpha="auto"`` and mean deletion/insertion curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from evet_lightning.functional.alpha import AlphaCurve

__all__ = ["alpha_curve_rows", "render_alpha_curve", "render_curve_panels", "render_curves"]

_METRICS = (
    ("average_drop", "average drop (%) ↓"),
    ("increase_in_confidence", "increase in confidence (%) ↑"),
    ("energy_pointing_game", "energy pointing game (%) ↑"),
    ("stability_index", "stability index (x100) ↑"),
)


def alpha_curve_rows(curve: AlphaCurve) -> list[list[float | None]]:
    """One row per alpha: ``[alpha, average_drop, increase_in_confidence, energy_pointing_game or None,
    stability_index or None]``."""
    energy, stability = curve.energy_pointing_game, curve.stability_index
    return [
        [
            float(alpha),
            float(curve.average_drop[index]),
            float(curve.increase_in_confidence[index]),
            None if energy is None else float(energy[index]),
            None if stability is None else float(stability[index]),
        ]
        for index, alpha in enumerate(curve.alphas.tolist())
    ]


def _figure(width: float, height: float, columns: int = 1) -> tuple[Any, list[Any]]:
    """A matplotlib figure outside pyplot (no global figure registry, nothing to close, any backend)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _figure_to_tensor(figure: Any) -> Tensor:
    """A matplotlib figure as a ``(3, H, W)`` uint8 tensor."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    width, height = canvas.get_width_height()
    rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
    return rgba.view(int(height), int(width), 4)[..., :3].permute(2, 0, 1).contiguous()


def render_alpha_curve(curve: AlphaCurve, chosen: Sequence[float], title: str = "") -> Tensor:
    """The per-alpha metrics of an epoch, the original map's level dashed, the chosen alphas starred.

    Returns a ``(3, H, W)`` uint8 image (matplotlib, Agg backend).
    """
    originals = curve.original_means()
    alphas = curve.alphas.tolist()
    metrics = [(key, name) for key, name in _METRICS if getattr(curve, key) is not None]
    figure, axes = _figure(3.6 * len(metrics), 3.0, len(metrics))
    for axis, (key, name) in zip(axes, metrics, strict=True):
        values = [100 * float(value) for value in getattr(curve, key)]
        axis.plot(alphas, values, "o-", label="EVET")
        original = originals[key]
        if original is not None:
            axis.axhline(100 * original, color="grey", linestyle="--", label="original map")
        for alpha in sorted(set(chosen)):
            if alpha in alphas:
                axis.plot([alpha], [values[alphas.index(alpha)]], "*", color="tab:red", markersize=13)
        axis.set_xscale("symlog", linthresh=0.1)
        axis.set_xlabel("alpha (star: chosen)")
        axis.set_title(name, fontsize=9)
    axes[0].legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _figure_to_tensor(figure)


def render_curves(curves: Mapping[str, Tensor], title: str, ylabel: str = "target probability") -> Tensor:
    """Mean curves ``{label: (S + 1,)}`` on [0, 1] (deletion or insertion), as a ``(3, H, W)`` uint8 image."""
    figure, (axis,) = _figure(4.2, 3.0)
    _draw_curves(axis, curves, title, ylabel, "fraction of pixels changed", with_auc=False)
    figure.tight_layout()
    return _figure_to_tensor(figure)


def render_curve_panels(
    panels: Mapping[str, Mapping[str, Tensor]],
    title: str = "",
    ylabel: str = "target probability",
    xlabels: Mapping[str, str] | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """Several plots of curves side by side, e.g. ``{"deletion": {label: (S + 1,)}, "insertion": {...}}``.

    Each curve's legend entry carries its area (the trapezoid rule on [0, 1], as
    :func:`~evet_lightning.functional.curve_auc`; the area of a mean curve is the mean of the areas).

    Args:
        panels: ``{panel title: {label: (S + 1,) curve}}``, one plot per panel, in order.
        title: the figure's title.
        ylabel: the y axis label of every plot.
        xlabels: x axis label by panel title; ``"fraction of pixels changed"`` where not given.
        ylim: the y range of every plot (probabilities by default, so a flat curve looks flat); ``None``
            fits the data.

    Returns:
        A ``(3, H, W)`` uint8 image (matplotlib, Agg backend).

    Example:
        >>> image = render_curve_panels({"deletion": {"a": torch.tensor([1.0, 0.5, 0.0])}}, "mean curves")
        >>> image.dtype, image.shape[0]
        (torch.uint8, 3)
    """
    if not panels:
        raise ValueError("Expected `panels` to hold at least one plot, but got none")
    xlabels = xlabels or {}
    figure, axes = _figure(4.2 * len(panels), 3.2, len(panels))
    for axis, (name, curves) in zip(axes, panels.items(), strict=True):
        _draw_curves(axis, curves, name, ylabel, xlabels.get(name, "fraction of pixels changed"), with_auc=True)
        if ylim is not None:
            axis.set_ylim(*ylim)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _figure_to_tensor(figure)


def _draw_curves(
    axis: Any, curves: Mapping[str, Tensor], title: str, ylabel: str, xlabel: str, *, with_auc: bool
) -> None:
    for label, curve in curves.items():
        values = curve.detach().flatten().double().cpu()
        steps = max(values.numel() - 1, 1)
        if with_auc and values.numel() > 1:
            area = float((values.sum() - 0.5 * (values[0] + values[-1])) / steps)
            label = f"{label} (AUC {area:.3f})"
        axis.plot([k / steps for k in range(values.numel())], values.tolist(), label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
