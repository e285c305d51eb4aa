"""Names the evaluation shares: the saliency methods, their display names, the callback's logged metric keys."""

from __future__ import annotations

from evet_lightning.evaluation.errors import UsageError
from evet_lightning.saliency.settings import resolve_cam

__all__ = [
    "DEFAULT_METHODS",
    "LIGHT_METHODS",
    "METRIC_NAMES",
    "PREFIX",
    "default_methods",
    "display_name",
    "parse_methods",
]

#: The four methods of the paper's Tables 1 and 2, in its column order.
DEFAULT_METHODS: tuple[str, ...] = ("Gradient", "GradCAM", "GradCAMPlusPlus", "ScoreCAM")
#: The default for the pretrained EfficientNet-Lite0: Score-CAM needs one forward pass per channel of the
#: target layer (1280 for Lite0) for each of EVET's 8 views, minutes per photo on a laptop CPU.
LIGHT_METHODS: tuple[str, ...] = ("Gradient", "GradCAM", "GradCAMPlusPlus")
#: The metrics the callback logs for both the original and the EVET map, in table order.
METRIC_NAMES: tuple[str, ...] = ("average_drop", "increase_in_confidence", "energy_pointing_game", "stability_index")
#: The first part of every key the evaluation's callback logs (``evet/original/average_drop``, ...).
PREFIX = "evet"

_DISPLAY_NAMES = {
    "GradCAM": "Grad-CAM",
    "GradCAMPlusPlus": "Grad-CAM++",
    "ScoreCAM": "Score-CAM",
    "FasterScoreCAM": "Faster-Score-CAM",
}


def display_name(method: str) -> str:
    """The paper's name of a method: ``"GradCAMPlusPlus"`` -> ``"Grad-CAM++"``; others unchanged."""
    return _DISPLAY_NAMES.get(method, method)


def parse_methods(text: str) -> list[str]:
    """``"GradCAM,ScoreCAM"`` -> ``["GradCAM", "ScoreCAM"]``, each checked by the engine's own argument check.

    Raises:
        UsageError: an empty list, a repeated method or an unknown one.
    """
    methods = [part.strip() for part in text.split(",") if part.strip()]
    if not methods:
        raise UsageError("--methods is empty")
    repeated = sorted({method for method in methods if methods.count(method) > 1})
    if repeated:
        raise UsageError(f"--methods names {', '.join(repeated)} more than once")
    for method in methods:
        try:
            resolve_cam(method, "auto")
        except ValueError as error:
            raise UsageError(f"unknown method {method!r} in --methods: {error}") from None
    return methods


def default_methods(model_spec: str, data_spec: str) -> list[str]:
    """The methods ``evaluate`` runs when ``--methods`` is not given.

    All four of the paper's methods, except for the pretrained EfficientNet-Lite0 (or the photos), where
    Score-CAM costs minutes per photo on a CPU: there :data:`LIGHT_METHODS` (add ScoreCAM for Tables 3-4).
    """
    heavy = model_spec == "efficientnet_lite0" or data_spec == "photos"
    return list(LIGHT_METHODS if heavy else DEFAULT_METHODS)
