"""Win / win: exact values on constructed inputs and input checks."""

from __future__ import annotations

import pytest
import torch

from evet_lightning.functional import win
from evet_lightning.metrics import Win


def test_hand_computed_values_and_ties() -> None:
    a = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.3])
    b = torch.tensor([0.5, 0.4, 0.5, 0.1, 0.3])
    assert win(a, b).item() == pytest.approx(0.4)
    assert win(b, a).item() == pytest.approx(0.2)
    # ties count for neither side
    assert win(a, b).item() + win(b, a).item() == pytest.approx(0.6)
    metric = Win()
    metric.update(scores_a=a, scores_b=b)
    assert metric.compute().item() == pytest.approx(0.4)


def test_nan_sample_skipped_and_counted() -> None:
    metric = Win()
    metric.update(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([0.5, float("nan"), 0.6]))
    assert metric.compute().item() == pytest.approx(0.5)
    assert metric.num_skipped.item() == 1


@pytest.mark.parametrize(
    ("a", "b", "name"),
    [
        (torch.tensor([0.5]), torch.tensor([0.5, 0.5]), "scores_b"),
        (torch.tensor([[0.5]]), torch.tensor([0.5]), "scores_a"),
        (torch.tensor([0.5]), torch.tensor([2.0]), "scores_b"),
        (torch.tensor([1]), torch.tensor([0.5]), "scores_a"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        win(a, b)
    with pytest.raises(ValueError, match=f"`{name}`"):
        Win().update(a, b)


def test_contract_attributes() -> None:
    assert Win.higher_is_better is True
    assert Win.is_differentiable is False
