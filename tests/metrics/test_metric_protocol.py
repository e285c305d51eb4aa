"""What every metric class owes torchmetrics users: clone, pickle, reset, devices/dtypes, collections."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torchmetrics import MetricCollection

from evet_lightning.metrics import AverageDrop, IncreaseInConfidence
from tests.metrics._cases import CASE_IDS, CASES, Case


def _batch(case: Case, seed: int = 0, n: int = 12) -> dict[str, torch.Tensor]:
    return case.make(torch.Generator().manual_seed(seed), n)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_compute_before_update_is_zero_without_exception(case: Case) -> None:
    metric = case.metric()
    with pytest.warns(UserWarning, match="before the ``update``"):
        value = metric.compute()
    assert value.item() == 0.0
    assert value.dtype == torch.float32


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_sample_skipped_is_zero_with_a_warning(case: Case) -> None:
    batch = _batch(case)
    first = next(iter(batch))
    batch[first] = torch.full_like(batch[first], float("nan"))
    metric = case.metric()
    metric.update(**batch)
    with pytest.warns(UserWarning, match="no samples"):
        assert metric.compute().item() == 0.0
    assert metric.num_skipped.item() == 12
    assert metric.num_samples.item() == 0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reset_clone_and_pickle(case: Case) -> None:
    batch = _batch(case)
    expected = case.reference_value(batch)
    metric = case.metric()
    metric.update(**_batch(case, seed=5))
    metric.reset()
    assert metric.num_samples.item() == 0
    assert metric.num_skipped.item() == 0
    metric.update(**batch)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)

    clone = metric.clone()
    restored = pickle.loads(pickle.dumps(metric))
    for other in (clone, restored):
        assert other.compute().item() == pytest.approx(expected, abs=1e-6)
        assert torch.equal(other.num_skipped, metric.num_skipped)
    # the clone is independent
    clone.update(**_batch(case, seed=6))
    assert metric.num_samples.item() < clone.num_samples.item()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_to_device_and_dtype(case: Case) -> None:
    batch = _batch(case)
    expected = case.reference_value(batch)
    metric = case.metric().to("cpu")
    # torchmetrics makes .float()/.double()/.half() no-ops on states: the float64 sums survive them
    metric = metric.float().half()
    assert getattr(metric, case.state).dtype == torch.float64
    metric.update(**batch)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    # set_dtype is the explicit way to change the state dtype; values stay correct to float32 precision
    single = case.metric()
    single.set_dtype(torch.float32)
    assert getattr(single, case.state).dtype == torch.float32
    single.update(**batch)
    assert single.compute().item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_states_not_in_state_dict_by_default(case: Case) -> None:
    metric = case.metric()
    metric.update(**_batch(case))
    assert metric.state_dict() == {}
    metric.persistent(True)
    assert {case.state, "num_samples", "num_skipped"} <= set(metric.state_dict())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_contract_attributes_are_declared(case: Case) -> None:
    cls = case.metric
    assert cls.full_state_update is False
    assert isinstance(cls.higher_is_better, bool)
    assert isinstance(cls.is_differentiable, bool)
    assert cls.plot_lower_bound is not None
    assert cls.plot_upper_bound is not None
    declared = {name for klass in cls.__mro__ for name in vars(klass).get("__annotations__", {})}
    assert {case.state, "num_samples", "num_skipped"} <= declared


def test_one_collection_update_feeds_drop_and_increase() -> None:
    scores = torch.tensor([0.8, 0.5, 0.4, 0.2])
    masked_scores = torch.tensor([0.4, 0.6, 0.4, float("nan")])
    collection = MetricCollection({"average_drop": AverageDrop(), "increase_in_confidence": IncreaseInConfidence()})
    batch = {"scores": scores, "masked_scores": masked_scores}
    collection.update(**batch)
    values = collection.compute()
    assert values["average_drop"].item() == pytest.approx(0.5 / 3)
    assert values["increase_in_confidence"].item() == pytest.approx(1 / 3)


def test_collection_of_all_six_ignores_other_metrics_arguments() -> None:
    collection = MetricCollection({case.name: case.metric() for case in CASES}, compute_groups=False)
    batch: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(7)
    for case in CASES:
        batch.update(case.make(generator, 12))
    # the pointing game and the stability index share `saliency`: use one tensor for both
    batch["saliency_transformed"] = batch["saliency"].clamp(0, 1)
    batch["saliency"] = batch["saliency"].clamp(0, 1)
    collection.update(**batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = collection.compute()
    assert set(values) == set(CASE_IDS)
    assert all(torch.isfinite(value) for value in values.values())
    assert values["stability_index"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("case", [case for case in CASES if case.metric.is_differentiable], ids=lambda case: case.name)
def test_differentiable_metrics_pass_gradients(case: Case) -> None:
    generator = torch.Generator().manual_seed(8)
    batch = case.make(generator, 3)  # too small for the constructed NaN/Inf samples
    first = next(iter(batch))
    batch[first] = (batch[first] * 0.5 + 0.25).requires_grad_()
    value = case.metric()(**batch)
    value.backward()
    grad = batch[first].grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
