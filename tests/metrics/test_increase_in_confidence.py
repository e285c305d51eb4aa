"""IncreaseInConfidence / increase_in_confidence: exact values on constructed inputs and input checks."""

from __future__ import annotations

import pytest
import torch

from evet_lightning.functional import increase_in_confidence
from evet_lightning.metrics import IncreaseInConfidence


def test_hand_computed_values() -> None:
    scores = torch.tensor([0.8, 0.5, 0.4, 0.1, 0.3])
    masked_scores = torch.tensor([0.2, 0.5, 0.6, 0.9, 0.29])
    # increases at 0.4 -> 0.6 and 0.1 -> 0.9; the tie at 0.5 is not an increase
    assert increase_in_confidence(scores, masked_scores).item() == pytest.approx(0.4)
    metric = IncreaseInConfidence()
    metric.update(scores[:2], masked_scores[:2])
    metric.update(scores[2:], masked_scores[2:])
    assert metric.compute().item() == pytest.approx(0.4)


def test_all_and_none() -> None:
    scores = torch.tensor([0.2, 0.3])
    assert increase_in_confidence(scores, scores + 0.1).item() == 1.0
    assert increase_in_confidence(scores, scores).item() == 0.0
    assert increase_in_confidence(scores, scores - 0.1).item() == 0.0


def test_nan_sample_skipped_and_counted() -> None:
    metric = IncreaseInConfidence()
    metric.update(torch.tensor([0.2, float("nan"), 0.5]), torch.tensor([0.3, 0.9, 0.4]))
    assert metric.compute().item() == pytest.approx(0.5)
    assert metric.num_skipped.item() == 1


@pytest.mark.parametrize(
    ("scores", "masked_scores", "name"),
    [
        (torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5, 0.5]), "masked_scores"),
        (torch.ones(2, 2) / 2, torch.ones(2, 2) / 2, "scores"),
        (torch.tensor([0.5]), torch.tensor([1.01]), "masked_scores"),
        (torch.tensor([True]), torch.tensor([0.5]), "scores"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(scores: torch.Tensor, masked_scores: torch.Tensor, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        increase_in_confidence(scores, masked_scores)
    with pytest.raises(ValueError, match=f"`{name}`"):
        IncreaseInConfidence().update(scores, masked_scores)


def test_contract_attributes() -> None:
    assert IncreaseInConfidence.higher_is_better is True
    assert IncreaseInConfidence.full_state_update is False
