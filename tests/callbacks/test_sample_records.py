"""``EVETCallback.sample_records()``: one row per explained sample, whose means are the logged values."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from evet_lightning import EVETCallback
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader

METRICS = ("average_drop", "increase_in_confidence", "energy_pointing_game", "stability_index")


def _check_means(records: dict[str, torch.Tensor], values: dict[str, float], keys: list[str]) -> None:
    finite = records["finite"]
    for key in keys:
        assert key in records, key
        column = records[key][finite]
        assert not bool(column.isnan().any()), key
        assert float(column.mean()) == pytest.approx(values[f"evet/{key}"], abs=1e-6), key
    assert not bool(records["Y"][~finite].isfinite().any())


def test_rows_are_the_samples_and_their_means_are_the_logged_values(make_trainer: TrainerFactory) -> None:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=6, log_images=0, deletion_insertion=True, deletion_steps=4)
    (values,) = make_trainer([callback]).validate(
        Classifier(), dataloaders=shapes_loader(8, batch_size=4), verbose=False
    )
    records = callback.sample_records()
    assert records["sample"].tolist() == list(range(6))
    assert records["sample"].dtype == torch.long and records["target"].dtype == torch.long
    assert records["finite"].dtype == torch.bool and records["Y"].dtype == torch.float64
    lengths = {key: column.shape[0] for key, column in records.items()}
    assert set(lengths.values()) == {6}, lengths
    keys = [f"{variant}/{name}" for variant in ("original", "evet") for name in METRICS]
    keys += [f"{variant}/{curve}_auc" for variant in ("original", "evet") for curve in ("deletion", "insertion")]
    _check_means(records, values, keys)
    assert callback.calibration_complete and callback.last_alpha is not None
    fold_alphas = torch.tensor(callback.last_alpha.alphas, dtype=torch.float64)
    assert torch.equal(records["alpha"], fold_alphas[records["sample"] % 2])
    assert values["evet/alpha"] == pytest.approx(callback.last_alpha.mean_alpha)  # N <= K: as before streaming


def test_a_fixed_alpha_is_every_row_s_alpha(make_trainer: TrainerFactory) -> None:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=3, log_images=0, alpha=0.5, stability_transforms=[])
    (values,) = make_trainer([callback]).validate(
        Classifier(), dataloaders=shapes_loader(4, batch_size=2), verbose=False
    )
    records = callback.sample_records()
    assert records["alpha"].tolist() == [0.5, 0.5, 0.5]
    assert "evet/stability_index" not in records and "evet/deletion_auc" not in records
    _check_means(records, values, [f"{v}/{m}" for v in ("original", "evet") for m in METRICS[:3]])


def test_a_non_finite_sample_is_a_row_of_nan_values(make_trainer: TrainerFactory) -> None:
    images = torch.stack([shapes_loader(4).dataset[i][0] for i in range(4)])
    images[1] = float("nan")

    class TensorClassifier(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self(batch)

    pl.seed_everything(0)
    callback = EVETCallback(num_samples=4, log_images=0, alpha=0.5, stability_transforms=[])
    (values,) = make_trainer([callback]).validate(TensorClassifier(), DataLoader(images, batch_size=2), verbose=False)
    records = callback.sample_records()
    assert records["sample"].tolist() == [0, 1, 2, 3] and records["finite"].tolist() == [True, False, True, True]
    assert values["evet/num_skipped"] == 1.0
    for key in ("Y", "original/O", "evet/O", "original/average_drop", "evet/increase_in_confidence"):
        assert records[key][1].isnan() and not bool(records[key][records["finite"]].isnan().any()), key
    _check_means(records, values, [f"{v}/{m}" for v in ("original", "evet") for m in METRICS[:2]])
