"""Object masks of (image, class) pairs and the pointing game with ignored pixels (issue 23, decision 47).

One constructed class-index mask with VOC's void border (255) and a hand-written map: the pointing game of each
class computed by hand under the documented rule (void left out of the object and the total) and under the other
choice (void counted as background), with exact values.
"""

from __future__ import annotations

import pytest
import torch

from evet_lightning.functional import energy_pointing_game
from evet_lightning.functional.alpha import map_energy
from evet_lightning.functional.class_masks import pair_masks
from evet_lightning.metrics import EnergyPointingGame

V = 255
CLASS_INDEX = torch.tensor(
    [
        [[V, V, V, V], [V, 1, 1, 0], [V, 1, 2, 0], [V, 0, 0, 0]],
        [[0, 0, 0, 0], [0, 3, 3, 0], [0, 3, 3, 0], [0, 0, 0, 0]],
    ],
    dtype=torch.uint8,
)
SALIENCY = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 4.0, 2.0, 0.0], [0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
# Image 0: energy 13 in all, 3 of it on the void (row 0: 2, column 0: 1). Class 1 holds 4 + 2 + 2 = 8, class 2 holds 1.
IMAGE_INDEX = torch.tensor([0, 0, 1])
CLASSES = torch.tensor([1, 2, 3])


def test_class_index_masks_give_each_class_its_pixels_and_leave_out_the_void() -> None:
    obj, valid = pair_masks(CLASS_INDEX, IMAGE_INDEX, CLASSES)
    assert obj.dtype == valid.dtype == torch.bool and obj.shape == valid.shape == (3, 4, 4)
    assert obj[0].nonzero().tolist() == [[1, 1], [1, 2], [2, 1]]
    assert obj[1].nonzero().tolist() == [[2, 2]]
    assert obj[2].sum() == 4
    assert (~valid[0]).sum() == 7 and (~valid[1]).sum() == 7 and bool(valid[2].all())
    assert not bool((obj & ~valid).any())


def test_void_left_out_against_void_as_background_exact_values() -> None:
    obj, valid = pair_masks(CLASS_INDEX[:1], IMAGE_INDEX[:2], CLASSES[:2])
    maps = SALIENCY.expand(2, -1, -1)
    # The documented rule: void pixels count neither in the object nor in the total (10 = 13 - 3).
    assert energy_pointing_game(maps, obj, valid=valid).item() == pytest.approx((8 / 10 + 1 / 10) / 2, abs=1e-7)
    # The other choice, void counted as background: the total keeps the void's energy.
    assert energy_pointing_game(maps, obj).item() == pytest.approx((8 / 13 + 1 / 13) / 2, abs=1e-7)
    # Its effect on this fixture: 0.45 against 9/26 = 0.3462, 10.4 percentage points lower.
    metric = EnergyPointingGame()
    metric.update(maps, obj, valid)
    assert metric.compute().item() == pytest.approx(0.45, abs=1e-7)
    torch.testing.assert_close(map_energy(maps, obj), torch.tensor([8 / 13, 1 / 13], dtype=torch.float64))


def test_zero_map_scores_the_objects_share_of_the_counted_pixels() -> None:
    obj, valid = pair_masks(CLASS_INDEX, IMAGE_INDEX, CLASSES)
    zeros = torch.zeros(3, 4, 4)
    # Class 1: 3 object pixels of 9 valid ones; class 2: 1 of 9; class 3: 4 of 16 (no void in image 1).
    expected = (3 / 9 + 1 / 9 + 4 / 16) / 3
    assert energy_pointing_game(zeros, obj, valid=valid).item() == pytest.approx(expected, abs=1e-7)
    nothing_valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert energy_pointing_game(SALIENCY[None], obj[:1], valid=nothing_valid).item() == 0.0


def test_binary_and_per_class_masks() -> None:
    binary = CLASS_INDEX == 1
    obj, valid = pair_masks(binary, IMAGE_INDEX, CLASSES)  # bool (B, H, W): today's meaning, any class
    assert torch.equal(obj, binary[IMAGE_INDEX]) and bool(valid.all())
    per_class = torch.stack([k == CLASS_INDEX for k in range(4)], dim=1)  # (B, 4, H, W)
    obj, valid = pair_masks(per_class.int(), IMAGE_INDEX, CLASSES)
    torch.testing.assert_close(obj, pair_masks(CLASS_INDEX, IMAGE_INDEX, CLASSES)[0])
    assert bool(valid.all())
    obj, valid = pair_masks(CLASS_INDEX, IMAGE_INDEX, CLASSES, ignore_index=None)
    assert bool(valid.all())


def test_bad_masks_and_pairs_are_errors_naming_them() -> None:
    with pytest.raises(ValueError, match=r"bool or integer, but got torch\.float32"):
        pair_masks(CLASS_INDEX.float(), IMAGE_INDEX, CLASSES)
    with pytest.raises(ValueError, match=r"binary \(B, H, W\).*\(2, 16\)"):
        pair_masks(torch.zeros(2, 16, dtype=torch.long), IMAGE_INDEX, CLASSES)
    with pytest.raises(ValueError, match=r"`image_index`.*\[0, 2\)"):
        pair_masks(CLASS_INDEX, torch.tensor([2]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"`classes` in \[0, 2\)"):
        pair_masks(torch.zeros(2, 2, 4, 4, dtype=torch.bool), IMAGE_INDEX, CLASSES)
    with pytest.raises(ValueError, match="only 0 and 1"):
        pair_masks(torch.full((2, 4, 4, 4), 2), IMAGE_INDEX, CLASSES)
    with pytest.raises(ValueError, match="`ignore_index` \\(255\\)"):
        pair_masks(CLASS_INDEX, torch.tensor([0]), torch.tensor([255]))
    with pytest.raises(ValueError, match="same shape"):
        pair_masks(CLASS_INDEX, torch.tensor([0]), CLASSES)
    with pytest.raises(ValueError, match="`valid`"):
        energy_pointing_game(SALIENCY[None], CLASS_INDEX[:1] == 1, valid=torch.ones(1, 4, 4))
