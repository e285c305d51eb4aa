"""background_dropout: the object stays, the background only darkens, and probability selects whole images."""

from __future__ import annotations

import pytest
import torch

from evet_lightning.functional.augment import background_dropout


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(1)) + 0.1
    masks = torch.zeros(16, 12, 12, dtype=torch.bool)
    masks[:, 3:8, 4:9] = True
    return images, masks


def test_probability_zero_is_the_identity_and_one_changes_every_image() -> None:
    images, masks = _inputs()
    assert torch.equal(background_dropout(images, masks, 0.0, generator=torch.Generator().manual_seed(0)), images)
    out = background_dropout(images, masks, 1.0, generator=torch.Generator().manual_seed(0))
    assert all(not torch.equal(out[i], images[i]) for i in range(16))


def test_multiplier_is_in_range_and_keeps_at_least_40_percent_of_the_object() -> None:
    images, masks = _inputs()
    out = background_dropout(images, masks, 1.0, generator=torch.Generator().manual_seed(0))
    ratio = out / images
    assert bool((ratio <= 1 + 1e-6).all()) and bool((ratio >= -1e-6).all())
    inside = masks.unsqueeze(1).expand_as(ratio)
    assert float(ratio[inside].min()) >= 0.4 - 1e-6
    # the background is darkened somewhere in every image
    assert all(float(ratio[i][~inside[i]].min()) < 0.4 for i in range(16))


def test_the_same_generator_seed_gives_the_same_images() -> None:
    images, masks = _inputs()
    first = background_dropout(images, masks, 0.5, generator=torch.Generator().manual_seed(3))
    second = background_dropout(images, masks, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    changed = [not torch.equal(first[i], images[i]) for i in range(16)]
    assert 0 < sum(changed) < 16  # a subset of whole images


@pytest.mark.parametrize(("probability", "shape"), [(1.5, (16, 12, 12)), (-0.1, (16, 12, 12)), (0.5, (16, 12, 11))])
def test_bad_arguments_raise(probability: float, shape: tuple[int, ...]) -> None:
    images, _ = _inputs()
    with pytest.raises(ValueError, match=r"`probability`|`masks`"):
        background_dropout(images, torch.zeros(shape, dtype=torch.bool), probability)
