"""How ``--alpha auto`` chose, as JSON: the two folds' alphas and the per-alpha curve ``tables.json`` shows."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from evet_lightning.callbacks.alpha_selection import FoldChoice

__all__ = ["alpha_choice_record"]


def _floats(values: Tensor) -> list[float]:
    return [float(value) for value in values.reshape(-1).tolist()]


def alpha_choice_record(choice: FoldChoice | None) -> dict[str, Any] | None:
    """``{"folds": [...], "curve": {...}}`` of ``choice`` (``EVETCallback.last_alpha``), ``None`` without one.

    ``curve``: ``alphas``, ``average_drop``, ``increase_in_confidence``, ``energy_pointing_game`` (``None``
    without masks), ``stability_index`` (``None`` without a stability run), ``original`` (the same four for the
    original map) and ``num_samples`` (the calibration samples).
    """
    if choice is None:
        return None
    curve = choice.curve
    energy, stability = curve.energy_pointing_game, curve.stability_index
    return {
        "folds": [float(alpha) for alpha in choice.alphas],
        "curve": {
            "alphas": _floats(curve.alphas),
            "average_drop": _floats(curve.average_drop),
            "increase_in_confidence": _floats(curve.increase_in_confidence),
            "energy_pointing_game": None if energy is None else _floats(energy),
            "stability_index": None if stability is None else _floats(stability),
            "original": curve.original_means(),
            "num_samples": int(curve.num_samples),
        },
    }
