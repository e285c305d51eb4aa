"""What the evaluation measures, as plain records: one method's validate run, and Table 4's timings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["MethodRun", "Timing"]


@dataclass
class MethodRun:
    """What one ``trainer.validate`` with :class:`~evet_lightning.EVETCallback` gave for one method.

    The per-sample tensors hold the samples the callback could explain (finite image and logits), in order.

    Args:
        method: the CAM name (``"GradCAM"``, ...).
        metrics: the values ``trainer.validate`` logs (``evet/...`` keys, ``val_acc``), as floats, computed from
            the method's per-sample rows (:func:`~evet_lightning.evaluation.row_metrics.metrics_from_rows`).
        targets: ``(N,)`` the explained class of each sample.
        clean_scores: ``(N,)`` ``Y = f_k(x)``.
        original_scores: ``(N,)`` ``O = f_k(Phi(x, J(x)))`` of the original map.
        evet_scores: ``(N,)`` ``O`` of the EVET map.
        original_maps: ``(M, H, W)`` the original maps of the first ``M <= N`` samples, for a heatmap sheet:
            ``run_method`` keeps none (``(0, 1, 1)``, decision 41), ``sheet_images_and_maps`` explains them.
        evet_maps: ``(M, H, W)`` the EVET maps.
        seconds_per_image: EVET's time per image as the callback measured it (``last_timing``; rank zero's).
        alpha: the alpha of the EVET maps: with ``alpha="auto"`` the logged ``evet/alpha`` (the mean over the
            samples of the alpha each used), else the fixed value.
        alpha_choice: ``alpha="auto"`` only: ``folds`` (the alpha of fold 0's and fold 1's maps) and ``curve``
            (the last epoch's per-alpha curve over both folds: ``alphas``, ``average_drop``,
            ``increase_in_confidence``, ``energy_pointing_game`` or ``None`` without masks, ``stability_index`` or
            ``None`` without a stability run, ``original`` (the same four for the original map), ``num_samples``),
            from ``EVETCallback.last_alpha``.
        indices: ``(N,)`` the index in the data of each sample of the per-sample tensors.
        sample_alphas: ``(N,)`` the alpha each sample's EVET map used.
        class_means: a multi-label run's per-class and macro means over its (image, class) pairs
            (:func:`~evet_lightning.evaluation.class_means.class_means`); ``None`` for one class per image. The
            per-sample tensors then hold one entry per pair (``indices`` repeats an image's index).
    """

    method: str
    metrics: dict[str, float]
    targets: Tensor
    clean_scores: Tensor
    original_scores: Tensor
    evet_scores: Tensor
    original_maps: Tensor
    evet_maps: Tensor
    seconds_per_image: float | None = None
    alpha: float | None = None
    alpha_choice: dict[str, Any] | None = None
    indices: Tensor | None = None
    sample_alphas: Tensor | None = None
    class_means: dict[str, Any] | None = None


@dataclass
class Timing:
    """Table 4: seconds per image ``(mean, std)`` of Grad-CAM* and Score-CAM, timed alike (``time_per_image``).

    ``callback`` is Grad-CAM*'s seconds per image inside :class:`~evet_lightning.EVETCallback` (batched).
    """

    grad_cam_star: tuple[float, float]
    score_cam: tuple[float, float]
    callback: float | None = None
