"""StabilityIndex / stability_index: exact values on constructed inputs and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from evet_lightning.functional import stability_index
from evet_lightning.metrics import StabilityIndex


def test_identical_maps_score_one() -> None:
    maps = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0))
    assert stability_index(maps, maps.clone()).item() == pytest.approx(1.0)


def test_maximally_different_maps_score_zero() -> None:
    assert stability_index(torch.ones(2, 4, 7), torch.zeros(2, 4, 7)).item() == pytest.approx(0.0, abs=1e-7)
    checker = (torch.arange(16).view(4, 4) % 2).float().unsqueeze(0)
    assert stability_index(checker, 1 - checker).item() == pytest.approx(0.0, abs=1e-7)


def test_hand_computed_value() -> None:
    first = torch.zeros(1, 3, 3)
    second = torch.zeros(1, 3, 3)
    second[0, 0, 0] = 1.0
    second[0, 1, 1] = 0.5
    # ||d||_F = sqrt(1 + 0.25), d_max = sqrt(9) = 3
    assert stability_index(first, second).item() == pytest.approx(1 - math.sqrt(1.25) / 3, abs=1e-7)


def test_validity_mask_excluding_the_differing_pixels_scores_one() -> None:
    first = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(1))
    second = first.clone()
    second[:, 0, :] = 1 - second[:, 0, :]  # lost border row, as after a rotation
    second[:, :, -1] = 0.0
    valid = torch.ones(2, 5, 5, dtype=torch.bool)
    valid[:, 0, :] = False
    valid[:, :, -1] = False
    assert stability_index(first, second).item() < 0.9
    assert stability_index(first, second, valid).item() == pytest.approx(1.0)


def test_d_max_counts_valid_pixels_only() -> None:
    first = torch.zeros(1, 4, 4)
    second = torch.zeros(1, 4, 4)
    second[0, 0, 0] = 1.0
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[0, 0, :] = True  # 4 valid pixels, one of them differs by 1: 1 - 1/2
    assert stability_index(first, second, valid).item() == pytest.approx(0.5)
    assert stability_index(first, second, valid.long()).item() == pytest.approx(0.5)


def test_sample_without_valid_pixels_is_skipped_and_counted() -> None:
    first = torch.zeros(2, 3, 3)
    second = torch.ones(2, 3, 3)
    second[0] = 0.0
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    valid[1] = False
    metric = StabilityIndex()
    metric.update(first, second, valid)
    assert metric.compute().item() == pytest.approx(1.0)
    assert metric.num_skipped.item() == 1


def test_nan_anywhere_skips_the_sample() -> None:
    first = torch.zeros(2, 3, 3)
    second = torch.zeros(2, 3, 3)
    second[1, 2, 2] = float("nan")
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    valid[1, 2, 2] = False  # even on an invalid pixel
    metric = StabilityIndex()
    metric.update(first, second, valid)
    metric.update(torch.ones(1, 3, 3), torch.zeros(1, 3, 3))
    assert metric.compute().item() == pytest.approx(0.5)
    assert metric.num_skipped.item() == 1
    assert metric.num_samples.item() == 2


@pytest.mark.parametrize(
    ("first", "second", "valid", "name"),
    [
        (torch.rand(2, 4, 4), torch.rand(2, 4, 5), None, "saliency_transformed"),
        (torch.rand(4, 4), torch.rand(4, 4), None, "saliency"),
        (torch.rand(2, 4, 4), torch.rand(2, 4, 4), torch.ones(2, 4, 5, dtype=torch.bool), "valid"),
        (torch.rand(2, 4, 4), torch.rand(2, 4, 4), torch.ones(2, 4, 4), "valid"),
        (torch.rand(2, 4, 4) + 1.0, torch.rand(2, 4, 4), None, "saliency"),
        (torch.rand(2, 4, 4), -torch.rand(2, 4, 4) - 0.01, None, "saliency_transformed"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(
    first: torch.Tensor, second: torch.Tensor, valid: torch.Tensor | None, name: str
) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        stability_index(first, second, valid)
    with pytest.raises(ValueError, match=f"`{name}`"):
        StabilityIndex().update(first, second, valid)


def test_contract_attributes() -> None:
    assert StabilityIndex.higher_is_better is True
    assert (StabilityIndex.plot_lower_bound, StabilityIndex.plot_upper_bound) == (0.0, 1.0)
