"""EnergyPointingGame / energy_pointing_game: exact values on constructed inputs and input checks."""

from __future__ import annotations

import pytest
import torch

from evet_lightning.functional import energy_pointing_game
from evet_lightning.metrics import EnergyPointingGame


def _left_half_mask(n: int = 1, h: int = 4, w: int = 6) -> torch.Tensor:
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    mask[..., : w // 2] = True
    return mask


def test_map_inside_outside_and_half_inside() -> None:
    mask = _left_half_mask()
    inside = torch.zeros(1, 4, 6)
    inside[0, 1:3, 0:2] = 0.7
    outside = torch.zeros(1, 4, 6)
    outside[0, :, 4:] = 1.0
    half = torch.zeros(1, 4, 6)
    half[0, 2, 1:5] = 0.5  # two pixels on each side of the boundary
    assert energy_pointing_game(inside, mask).item() == 1.0
    assert energy_pointing_game(outside, mask).item() == 0.0
    assert energy_pointing_game(half, mask).item() == pytest.approx(0.5)
    metric = EnergyPointingGame()
    metric.update(torch.cat([inside, outside, half]), mask.expand(3, -1, -1))
    assert metric.compute().item() == pytest.approx(0.5)


def test_scale_free() -> None:
    generator = torch.Generator().manual_seed(0)
    saliency = torch.rand(3, 5, 5, generator=generator)
    mask = torch.rand(3, 5, 5, generator=generator) > 0.5
    assert energy_pointing_game(saliency * 37.0, mask).item() == pytest.approx(
        energy_pointing_game(saliency, mask).item(), abs=1e-7
    )


def test_zero_map_scores_the_mask_area_fraction() -> None:
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, :2, :] = True  # 10 of 20 pixels
    mask[1, 0, :3] = True  # 3 of 20 pixels
    assert energy_pointing_game(torch.zeros(2, 4, 5), mask).item() == pytest.approx((0.5 + 0.15) / 2)
    # ... which is exactly what a uniform map scores
    assert energy_pointing_game(torch.full((2, 4, 5), 0.3), mask).item() == pytest.approx((0.5 + 0.15) / 2)


def test_empty_and_full_masks() -> None:
    saliency = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    assert energy_pointing_game(saliency, torch.zeros(2, 4, 4, dtype=torch.bool)).item() == 0.0
    assert energy_pointing_game(saliency, torch.ones(2, 4, 4, dtype=torch.bool)).item() == pytest.approx(1.0)
    assert energy_pointing_game(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)).item() == 0.0
    assert energy_pointing_game(torch.zeros(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool)).item() == 1.0


def test_integer_mask_accepted() -> None:
    saliency = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(3)) > 0.5
    expected = energy_pointing_game(saliency, mask)
    assert torch.equal(energy_pointing_game(saliency, mask.long()), expected)
    assert torch.equal(energy_pointing_game(saliency, mask.to(torch.uint8)), expected)


def test_nan_map_skipped_and_counted() -> None:
    mask = _left_half_mask(2)
    saliency = torch.zeros(2, 4, 6)
    saliency[0, 0, 0] = 1.0  # inside: 1
    saliency[1, 0, 0] = float("nan")
    metric = EnergyPointingGame()
    metric.update(saliency, mask)
    assert metric.compute().item() == 1.0
    assert metric.num_skipped.item() == 1


@pytest.mark.parametrize(
    ("saliency", "mask", "name"),
    [
        (torch.rand(2, 4, 4), torch.ones(2, 4, 5, dtype=torch.bool), "mask"),
        (torch.rand(2, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), "mask"),
        (torch.rand(2, 4, 4), torch.ones(2, 4, 4), "mask"),  # float masks are ambiguous
        (torch.rand(2, 4, 4), torch.full((2, 4, 4), 2), "mask"),  # integer, but not 0/1
        (torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 4, dtype=torch.bool), "saliency"),
        (torch.ones(2, 4, 4, dtype=torch.long), torch.ones(2, 4, 4, dtype=torch.bool), "saliency"),
        (-torch.rand(2, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool), "saliency"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(saliency: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        energy_pointing_game(saliency, mask)
    with pytest.raises(ValueError, match=f"`{name}`"):
        EnergyPointingGame().update(saliency, mask)


def test_contract_attributes() -> None:
    assert EnergyPointingGame.higher_is_better is True
    assert (EnergyPointingGame.plot_lower_bound, EnergyPointingGame.plot_upper_bound) == (0.0, 1.0)
