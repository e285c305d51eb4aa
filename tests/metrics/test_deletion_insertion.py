"""DeletionAUC / InsertionAUC: exact values, the mean curve, the metric protocol (two processes: test_distributed)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from evet_lightning.functional import curve_auc
from evet_lightning.metrics import DeletionAUC, InsertionAUC
from tests.metrics._cases import CURVE_STEPS, random_curves

METRICS = [DeletionAUC, InsertionAUC]
STEPS = CURVE_STEPS


def _reference(curves: torch.Tensor) -> tuple[float, list[float], int]:
    """Mean AUC, mean curve and skipped count in plain Python (trapezoid rule written out)."""
    rows = [row for row in curves.tolist() if all(np.isfinite(row))]
    aucs = [(sum(row) - (row[0] + row[-1]) / 2) / (len(row) - 1) for row in rows]
    mean_curve = [sum(column) / len(rows) for column in zip(*rows, strict=True)]
    return sum(aucs) / len(aucs), mean_curve, curves.shape[0] - len(rows)


@pytest.mark.parametrize("metric_class", METRICS)
def test_values_mean_curve_and_skipped_rows(metric_class) -> None:
    curves = random_curves(9)
    expected_auc, expected_curve, expected_skipped = _reference(curves)
    assert expected_skipped == 2
    metric = metric_class(steps=STEPS)
    for piece in torch.split(curves, [1, 5, 3]):
        metric.update(piece)
    assert metric.compute().item() == pytest.approx(expected_auc, abs=1e-6)
    assert metric.compute().dtype == torch.float32
    assert metric.mean_curve().tolist() == pytest.approx(expected_curve, abs=1e-6)
    assert metric.num_skipped.item() == 2
    assert metric.num_samples.item() == 7
    # one update gives the same value as many
    single = metric_class(steps=STEPS)
    single.update(curves)
    assert single.compute().item() == pytest.approx(metric.compute().item(), abs=1e-7)
    # the mean AUC is the AUC of the mean curve (the trapezoid rule is linear)
    assert curve_auc(metric.mean_curve().unsqueeze(0)).item() == pytest.approx(expected_auc, abs=1e-6)


def test_direction_and_bounds() -> None:
    assert DeletionAUC.higher_is_better is False
    assert InsertionAUC.higher_is_better is True
    for cls in METRICS:
        assert cls.full_state_update is False
        assert (cls.plot_lower_bound, cls.plot_upper_bound) == (0.0, 1.0)
        declared = {name for klass in cls.__mro__ for name in vars(klass).get("__annotations__", {})}
        assert {"sum_auc", "sum_curve", "num_samples", "num_skipped"} <= declared


@pytest.mark.parametrize("metric_class", METRICS)
def test_forward_returns_the_batch_value_and_accumulates(metric_class) -> None:
    metric = metric_class(steps=2)
    first = torch.tensor([[1.0, 0.5, 0.0]])
    second = torch.tensor([[1.0, 1.0, 1.0]])
    assert metric(first).item() == pytest.approx(0.5)
    assert metric(second).item() == pytest.approx(1.0)
    assert metric.compute().item() == pytest.approx(0.75)
    assert metric.mean_curve().tolist() == pytest.approx([1.0, 0.75, 0.5])


@pytest.mark.parametrize("metric_class", METRICS)
def test_compute_before_update_and_all_skipped(metric_class) -> None:
    metric = metric_class(steps=STEPS)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute().item() == 0.0
    assert metric.mean_curve().tolist() == [0.0] * (STEPS + 1)
    metric.update(torch.full((3, STEPS + 1), float("nan")))
    with pytest.warns(UserWarning, match="no samples"):
        assert metric.compute().item() == 0.0
    assert metric.num_skipped.item() == 3


@pytest.mark.parametrize("metric_class", METRICS)
def test_reset_clone_pickle_and_state_dict(metric_class) -> None:
    curves = random_curves(9)
    expected_auc, expected_curve, _ = _reference(curves)
    metric = metric_class(steps=STEPS)
    metric.update(random_curves(6, seed=5))
    metric.reset()
    assert metric.num_samples.item() == 0 and metric.num_skipped.item() == 0
    assert torch.equal(metric.sum_curve, torch.zeros(STEPS + 1, dtype=torch.float64))
    metric.update(curves)
    for other in (metric.clone(), pickle.loads(pickle.dumps(metric))):
        assert other.compute().item() == pytest.approx(expected_auc, abs=1e-6)
        assert other.mean_curve().tolist() == pytest.approx(expected_curve, abs=1e-6)
        assert other.steps == STEPS
    assert metric.state_dict() == {}
    metric.persistent(True)
    assert {"sum_auc", "sum_curve", "num_samples", "num_skipped"} <= set(metric.state_dict())


@pytest.mark.parametrize("metric_class", METRICS)
def test_float_half_keep_the_float64_sums(metric_class) -> None:
    metric = metric_class(steps=STEPS).to("cpu").float().half()
    assert metric.sum_auc.dtype == torch.float64 and metric.sum_curve.dtype == torch.float64
    curves = random_curves(9, seed=3)
    metric.update(curves)
    assert metric.compute().item() == pytest.approx(_reference(curves)[0], abs=1e-6)


@pytest.mark.parametrize("metric_class", METRICS)
def test_gradients_pass_through(metric_class) -> None:
    curves = (torch.rand(3, STEPS + 1, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25).requires_grad_()
    metric_class(steps=STEPS)(curves).backward()
    assert curves.grad is not None
    # d(mean AUC)/d(curve[k]) = 1 / (B S), halved at both ends
    expected = torch.full((3, STEPS + 1), 1.0 / (3 * STEPS))
    expected[:, [0, -1]] /= 2
    torch.testing.assert_close(curves.grad, expected)


@pytest.mark.parametrize(
    ("curves", "match"),
    [
        (torch.rand(2, STEPS + 2), r"`curves` to have shape \(B, 5\) for steps=4"),
        (torch.rand(2, STEPS), r"`curves` to have shape \(B, 5\) for steps=4"),
        (torch.rand(STEPS + 1), r"`curves` to have shape \(B, S \+ 1\)"),
        (torch.ones(2, STEPS + 1, dtype=torch.long), "floating point"),
        (torch.full((2, STEPS + 1), 1.5), r"`curves` to be in \[0.0, 1.0\]"),
        ([[0.0] * (STEPS + 1)], "torch.Tensor"),
    ],
)
@pytest.mark.parametrize("metric_class", METRICS)
def test_bad_curves_raise(metric_class, curves: object, match: str) -> None:
    metric = metric_class(steps=STEPS)
    with pytest.raises(ValueError, match=match):
        metric.update(curves)
    assert metric.num_samples.item() == 0  # nothing was half-added


@pytest.mark.parametrize("metric_class", METRICS)
def test_out_of_range_accepted_without_validate_args(metric_class) -> None:
    metric = metric_class(steps=1, validate_args=False)
    metric.update(torch.tensor([[1.5, 2.5]]))
    assert metric.compute().item() == pytest.approx(2.0)


@pytest.mark.parametrize("steps", [0, -1, True, 2.5, "4", None])
@pytest.mark.parametrize("metric_class", METRICS)
def test_bad_steps_raise(metric_class, steps: object) -> None:
    with pytest.raises(ValueError, match="`steps` to be a positive integer"):
        metric_class(steps=steps)


def test_numpy_integer_steps_accepted() -> None:
    metric = DeletionAUC(steps=np.int64(3))
    assert metric.steps == 3 and isinstance(metric.steps, int)
    assert metric.sum_curve.shape == (4,)


@pytest.mark.parametrize("metric_class", METRICS)
def test_plot_draws_the_mean_curve(metric_class) -> None:
    import matplotlib.pyplot as plt  # here, not at the top: only this test draws (MPLBACKEND=Agg)

    metric = metric_class(steps=2)
    metric.update(torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]))
    fig, ax = metric.plot(score=True)
    try:
        (line,) = ax.get_lines()
        assert line.get_xdata().tolist() == pytest.approx([0.0, 0.5, 1.0])
        assert line.get_ydata().tolist() == pytest.approx([0.5, 0.5, 0.5])
        assert "AUC=0.500" in ax.get_legend().get_texts()[0].get_text()
        assert ax.get_xlabel() == f"Fraction of pixels {'inserted' if metric_class is InsertionAUC else 'deleted'}"
    finally:
        plt.close(fig)
