"""AverageDifference / average_difference: exact values on constructed inputs and input checks."""

from __future__ import annotations

import pytest
import torch

from evet_lightning.functional import average_difference
from evet_lightning.metrics import AverageDifference


def test_hand_computed_values_and_antisymmetry() -> None:
    a = torch.tensor([0.9, 0.25, 0.5, 1.0])
    b = torch.tensor([0.5, 0.75, 0.5, 0.0])
    # (0.4 - 0.5 + 0 + 1) / 4
    assert average_difference(a, b).item() == pytest.approx(0.225)
    assert average_difference(b, a).item() == pytest.approx(-0.225)
    metric = AverageDifference()
    metric.update(a[:1], b[:1])
    metric.update(a[1:], b[1:])
    assert metric.compute().item() == pytest.approx(0.225)


def test_extremes() -> None:
    assert average_difference(torch.ones(3), torch.zeros(3)).item() == 1.0
    assert average_difference(torch.zeros(3), torch.ones(3)).item() == -1.0


def test_nan_sample_skipped_and_counted() -> None:
    metric = AverageDifference()
    metric.update(torch.tensor([0.9, float("inf"), 0.5]), torch.tensor([0.5, 0.5, 0.6]))
    assert metric.compute().item() == pytest.approx(0.15)
    assert metric.num_skipped.item() == 1


@pytest.mark.parametrize(
    ("a", "b", "name"),
    [
        (torch.tensor([0.5, 0.1]), torch.tensor([0.5]), "scores_b"),
        (torch.tensor([-0.5]), torch.tensor([0.5]), "scores_a"),
        (torch.tensor([0.5]), torch.tensor([0], dtype=torch.long), "scores_b"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        average_difference(a, b)
    with pytest.raises(ValueError, match=f"`{name}`"):
        AverageDifference().update(a, b)


def test_contract_attributes() -> None:
    assert AverageDifference.higher_is_better is True
    assert (AverageDifference.plot_lower_bound, AverageDifference.plot_upper_bound) == (-1.0, 1.0)
