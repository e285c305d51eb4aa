"""PairedDifference: the bootstrap interval's coverage, reproducibility and edge cases (decision 31)."""

from __future__ import annotations

import pytest
import torch

from evet_lightning.functional.paired_difference import paired_difference_interval
from evet_lightning.metrics import PairedDifference


def test_interval_covers_the_true_difference_at_the_promised_rate() -> None:
    """Seeded simulation: 400 experiments of 32 paired samples (a shared per-image level, a true difference of
    0.03 and noise); the 95% interval must cover 0.03 in 92-98% of them (binomial sd ~1.1%)."""
    generator = torch.Generator().manual_seed(2021)
    true_difference, covered, replications = 0.03, 0, 400
    for replication in range(replications):
        level = torch.rand(32, generator=generator)
        values_b = level + 0.05 * torch.randn(32, generator=generator, dtype=torch.float64)
        values_a = level + true_difference + 0.05 * torch.randn(32, generator=generator, dtype=torch.float64)
        _, low, high = paired_difference_interval(values_a, values_b, num_resamples=500, seed=replication).tolist()
        covered += low <= true_difference <= high
    assert 0.92 <= covered / replications <= 0.98, covered


def test_interval_is_reproducible_and_independent_of_order_and_batching() -> None:
    generator = torch.Generator().manual_seed(0)
    values_a, values_b = torch.rand(20, generator=generator), torch.rand(20, generator=generator)
    reference = paired_difference_interval(values_a, values_b, seed=5)
    assert torch.equal(paired_difference_interval(values_a, values_b, seed=5), reference)
    order = torch.randperm(20, generator=generator)
    metric = PairedDifference(seed=5)
    metric.update(values_a[order[:7]], values_b[order[:7]])
    metric.update(values_a[order[7:]], values_b[order[7:]])
    assert torch.equal(metric.compute(), reference)
    assert not torch.equal(paired_difference_interval(values_a, values_b, seed=6), reference)  # the seed matters
    mean, low, high = reference.tolist()
    assert mean == pytest.approx(float((values_a.double() - values_b.double()).mean()))
    assert low < mean < high


def test_non_finite_pairs_are_left_out_and_no_pair_gives_nan() -> None:
    metric = PairedDifference()
    metric.update(torch.tensor([1.0, torch.nan, 0.5]), torch.tensor([0.5, 0.2, 0.5]))
    assert metric.compute()[0].item() == pytest.approx(0.25)
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' own warning
        assert torch.isnan(PairedDifference().compute()).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_resamples": 0}, "num_resamples"), ({"confidence": 1.0}, "confidence"), ({"seed": 1.5}, "seed")],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PairedDifference(**kwargs)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="values_a"):
        PairedDifference().update(torch.zeros(3), torch.zeros(2))
