"""Energy-based pointing game, Eq. (12) of Oh et al. (WACV 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from evet_lightning.functional._checks import (
    _check_binary_mask,
    _check_maps,
    _check_range,
    _finite_samples,
    _safe_mean,
    _sum_kept,
)

__all__ = ["energy_fraction", "energy_pointing_game"]


def energy_fraction(saliency: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-map share of the energy on the object, Eq. (12), in float64, shape ``saliency.shape[:-2]``.

    ``mask`` (and ``valid``) broadcast against ``saliency`` (``(B, H, W)`` masks for ``(A, B, H, W)`` maps). With
    ``valid``, only valid pixels count, in the object and in the total (decision 47: VOC's void label 255 is left
    out of both). A map with no energy on the counted pixels scores as a uniform map would: the object's share of
    the counted pixels (decision 4); with no counted pixel at all, 0.

    Example:
        >>> saliency = torch.tensor([[[1.0, 1.0, 2.0]]])
        >>> mask, valid = torch.tensor([[[True, False, False]]]), torch.tensor([[[True, True, False]]])
        >>> energy_fraction(saliency, mask), energy_fraction(saliency, mask, valid)  # 1/4; 1/2 without the void
        (tensor([0.2500], dtype=torch.float64), tensor([0.5000], dtype=torch.float64))
    """
    energy = saliency.to(torch.float64).flatten(-2)
    inside = mask.flatten(-2).to(torch.float64)
    if valid is None:
        area = inside.mean(dim=-1) if inside.shape[-1] else inside.sum(dim=-1)
    else:
        counted = valid.flatten(-2).to(torch.float64)
        energy, inside = energy * counted, inside * counted
        area = inside.sum(dim=-1) / counted.sum(dim=-1).clamp_min(1.0)
    total = energy.sum(dim=-1)
    on_object = (energy * inside).sum(dim=-1)
    has_energy = total > 0
    share = on_object / torch.where(has_energy, total, torch.ones_like(total))
    return torch.where(has_energy, share, area.expand_as(total))


def _energy_pointing_game_update(
    saliency: Tensor, mask: Tensor, validate_args: bool = True, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum over images of the energy fraction inside ``mask`` (float64), with kept and skipped counts.

    A map with NaN/Inf anywhere is skipped. A map with zero total energy scores as a uniform map would:
    the mask's area fraction. ``valid`` (``(N, H, W)`` bool): only those pixels count (:func:`energy_fraction`).

    Returns:
        ``(sum_energy, num_samples, num_skipped)``, scalar tensors (float64, int64, int64).
    """
    saliency = _check_maps("saliency", saliency)
    mask = _check_binary_mask("mask", mask, "saliency", saliency, validate_args)
    if valid is not None:
        valid = _check_binary_mask("valid", valid, "saliency", saliency, validate_args)
    keep = _finite_samples(saliency)
    if validate_args:
        _check_range("saliency", saliency, keep, 0.0, None)
    # Zero the skipped maps first so their NaN/Inf never reach a sum.
    energy = torch.where(keep.view(-1, 1, 1), saliency, torch.zeros_like(saliency))
    return _sum_kept(energy_fraction(energy, mask, valid), keep)


def _energy_pointing_game_compute(sum_energy: Tensor, num_samples: Tensor, warn: bool = True) -> Tensor:
    """Mean energy fraction, float32; 0.0 with a warning when there are no samples.

    Example:
        >>> saliency = torch.tensor([[[1.0, 3.0]]])
        >>> state = _energy_pointing_game_update(saliency, torch.tensor([[[True, False]]]))
        >>> _energy_pointing_game_compute(state[0], state[1])
        tensor(0.2500)
    """
    return _safe_mean(sum_energy, num_samples, "energy_pointing_game", warn)


def energy_pointing_game(
    saliency: Tensor, mask: Tensor, validate_args: bool = True, valid: Tensor | None = None
) -> Tensor:
    r"""Energy-based pointing game, Eq. (12): the share of each map's energy that falls on the object.

    .. math:: E_{point}(x, J) = \frac{\sum_{(r,c) \in object} J(x)_{r,c}}{\sum_{r,c} J(x)_{r,c}}

    averaged over the images. Higher is better.

    Args:
        saliency: ``(N, H, W)`` float, non-negative saliency maps (any scale; the ratio is scale free).
        mask: ``(N, H, W)`` bool object masks (an integer tensor holding only 0 and 1 is accepted too).
        validate_args: check that ``saliency`` is non-negative and an integer ``mask`` holds only 0/1
            (this synchronizes with the device).
        valid: ``(N, H, W)`` bool or ``None`` (every pixel): the pixels that count, in the object and in the total
            energy. Ignored pixels (VOC's void label 255, see
            :func:`~evet_lightning.functional.class_masks.pair_masks`) are left out of both (decision 47).

    Returns:
        A float32 scalar in [0, 1].

    Edge cases:
        - A map with zero total energy (e.g. all zeros) carries no information and scores as a uniform map
          would: the mask's area fraction, never NaN.
        - An empty mask scores 0; a mask covering the whole image scores 1.
        - A map with NaN/Inf anywhere is skipped (neither in the sum nor in N).
        - No samples left: 0.0 and a warning, never NaN.

    Raises:
        ValueError: if ``saliency`` is not a floating point ``(N, H, W)`` tensor, ``mask`` is not bool or
            integer or has another shape, or, with ``validate_args``, ``saliency`` has a negative value.

    Example:
        >>> import torch
        >>> from evet_lightning.functional import energy_pointing_game
        >>> saliency = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
        >>> mask = torch.tensor([[[True, False], [False, False]], [[True, False], [False, False]]])
        >>> energy_pointing_game(saliency, mask)  # (0.5 + 0.25) / 2: the all-zero map scores its mask's area
        tensor(0.3750)
    """
    sum_energy, num_samples, _ = _energy_pointing_game_update(saliency, mask, validate_args, valid)
    return _energy_pointing_game_compute(sum_energy, num_samples)
