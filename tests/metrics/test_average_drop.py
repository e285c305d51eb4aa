"""AverageDrop / average_drop: exact values on constructed inputs and input checks."""

from __future__ import annotations

import pytest
import torch

from evet_lightning.functional import average_drop
from evet_lightning.metrics import AverageDrop


def test_hand_computed_values() -> None:
    scores = torch.tensor([0.8, 0.5, 0.4, 1.0])
    masked_scores = torch.tensor([0.2, 0.5, 0.6, 0.0])
    # drops: 0.6/0.8 = 0.75, 0 (equal), 0 (increase), 1 (all lost) -> mean 0.4375
    assert average_drop(scores, masked_scores).item() == pytest.approx(0.4375, abs=1e-7)
    metric = AverageDrop()
    metric.update(scores, masked_scores)
    assert metric.compute().item() == pytest.approx(0.4375, abs=1e-7)


def test_perfect_and_worst_maps() -> None:
    scores = torch.tensor([0.3, 0.9, 0.6])
    # an all-ones map keeps the image: O == Y, no drop
    assert average_drop(scores, scores.clone()).item() == 0.0
    # a map that destroys all evidence for the class: O == 0, the drop is 1 for every image
    assert average_drop(scores, torch.zeros(3)).item() == pytest.approx(1.0)


def test_zero_clean_score_is_no_drop() -> None:
    assert average_drop(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.7])).item() == 0.0
    assert average_drop(torch.tensor([0.0, 0.5]), torch.tensor([0.0, 0.25])).item() == pytest.approx(0.25)


def test_nan_sample_skipped_and_counted() -> None:
    metric = AverageDrop()
    metric.update(torch.tensor([0.5, float("nan"), 0.5]), torch.tensor([0.25, 0.1, float("inf")]))
    metric.update(torch.tensor([0.8]), torch.tensor([0.8]))
    assert metric.compute().item() == pytest.approx(0.25)
    assert metric.num_skipped.item() == 2
    assert metric.num_samples.item() == 2


def test_all_samples_skipped_gives_zero_with_warning() -> None:
    metric = AverageDrop()
    metric.update(torch.tensor([float("nan")]), torch.tensor([0.5]))
    with pytest.warns(UserWarning, match="no samples"):
        assert metric.compute().item() == 0.0
    assert metric.num_skipped.item() == 1


@pytest.mark.parametrize(
    ("scores", "masked_scores", "name"),
    [
        (torch.tensor([0.5, 0.5]), torch.tensor([0.5]), "masked_scores"),
        (torch.tensor([[0.5]]), torch.tensor([[0.5]]), "scores"),
        (torch.tensor(0.5), torch.tensor(0.5), "scores"),
        (torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), "scores"),
        (torch.tensor([0.5, 0.5]), torch.tensor([1, 0]), "masked_scores"),
        (torch.tensor([1.5, 0.5]), torch.tensor([0.5, 0.5]), "scores"),
        (torch.tensor([0.5, 0.5]), torch.tensor([-0.1, 0.5]), "masked_scores"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(scores: torch.Tensor, masked_scores: torch.Tensor, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        average_drop(scores, masked_scores)
    with pytest.raises(ValueError, match=f"`{name}`"):
        AverageDrop().update(scores, masked_scores)


def test_range_check_can_be_switched_off() -> None:
    # Y = 2 is not a probability; without validation the formula is applied as is.
    assert average_drop(torch.tensor([2.0]), torch.tensor([1.0]), validate_args=False).item() == pytest.approx(0.5)
    metric = AverageDrop(validate_args=False)
    metric.update(torch.tensor([2.0]), torch.tensor([1.0]))
    assert metric.compute().item() == pytest.approx(0.5)


def test_constructor_rejects_non_bool_validate_args() -> None:
    with pytest.raises(ValueError, match="`validate_args`"):
        AverageDrop(validate_args="yes")  # type: ignore[arg-type]


def test_contract_attributes() -> None:
    assert AverageDrop.higher_is_better is False
    assert AverageDrop.full_state_update is False
    assert (AverageDrop.plot_lower_bound, AverageDrop.plot_upper_bound) == (0.0, 1.0)
