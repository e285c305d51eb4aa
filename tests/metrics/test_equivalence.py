"""Class == functional == the plain-loop reference, in one update and in many uneven ones."""

from __future__ import annotations

import pytest
import torch

from tests.metrics._cases import CASE_IDS, CASES, Case, split

SIZES = (40, [1, 0, 13, 2, 17, 7])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_equals_functional_equals_reference(case: Case, seed: int) -> None:
    batch = case.make(torch.Generator().manual_seed(seed), SIZES[0])
    expected = case.reference_value(batch)

    functional_value = case.functional(**batch)
    metric = case.metric()
    metric.update(**batch)
    class_value = metric.compute()

    assert functional_value.dtype == class_value.dtype == torch.float32
    assert functional_value.shape == class_value.shape == ()
    assert functional_value.item() == pytest.approx(expected, abs=1e-6)
    assert class_value.item() == pytest.approx(expected, abs=1e-6)
    # The constructed batches hold two bad samples for scores, one for maps, two for stability.
    assert metric.num_skipped.item() == {"energy_pointing_game": 1}.get(case.name, 2)
    assert metric.num_samples.item() + metric.num_skipped.item() == SIZES[0]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_many_updates_equal_one(case: Case) -> None:
    batch = case.make(torch.Generator().manual_seed(3), SIZES[0])
    whole = case.metric()
    whole.update(**batch)
    chunked = case.metric()
    for chunk in split(batch, SIZES[1]):
        chunked.update(**chunk)

    # float64 sums: the same to rounding in the last bits, whatever the chunking.
    assert getattr(chunked, case.state).dtype == torch.float64
    assert getattr(chunked, case.state).item() == pytest.approx(getattr(whole, case.state).item(), abs=1e-12)
    assert torch.equal(chunked.num_samples, whole.num_samples)
    assert torch.equal(chunked.num_skipped, whole.num_skipped)
    assert chunked.compute().item() == pytest.approx(whole.compute().item(), abs=1e-7)
    assert chunked.compute().item() == pytest.approx(case.reference_value(batch), abs=1e-6)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_returns_the_batch_value_and_accumulates(case: Case) -> None:
    generator = torch.Generator().manual_seed(4)
    first, second = case.make(generator, 9), case.make(generator, 11)
    metric = case.metric()
    batch_value = metric(**first)
    metric(**second)
    assert batch_value.item() == pytest.approx(case.reference_value(first), abs=1e-6)
    combined = {key: torch.cat([first[key], second[key]]) for key in first}
    assert metric.compute().item() == pytest.approx(case.reference_value(combined), abs=1e-6)
