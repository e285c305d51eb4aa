"""Awkward but legal inputs: fast_dev_run, an IterableDataset, grayscale non-square channels-last images, batch 1."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from evet_lightning import EVETCallback
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader


class Stream(IterableDataset[tuple[Tensor, Tensor]]):
    """Five grayscale 24x40 images with labels, as a stream (no length)."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(0)
        for index in range(5):
            yield torch.rand(1, 24, 40, generator=generator), torch.tensor(index % 2)


class GreyClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((3, 5)), nn.Flatten(), nn.Linear(60, 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self(batch[0])


def _values(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: value for key, value in results[0].items() if key.startswith("evet/")}


def test_iterable_grayscale_non_square_batch_of_one(make_trainer: TrainerFactory) -> None:
    callback = EVETCallback(num_samples=4, log_images=2, stability_transforms=[])
    trainer = make_trainer([callback])
    images = DataLoader(Stream(), batch_size=1)
    values = _values(trainer.validate(GreyClassifier(), dataloaders=images, verbose=False))
    assert "evet/evet/stability_index" not in values and "evet/win" in values
    assert all(math.isfinite(value) for value in values.values())
    assert callback.last_num_samples == 4
    (result,) = callback.last_results
    assert result.saliency.shape == (4, 24, 40)


def test_fast_dev_run(make_trainer: TrainerFactory) -> None:
    callback = EVETCallback(num_samples=8, log_images=1)
    trainer = make_trainer([callback], fast_dev_run=True)
    trainer.fit(Classifier(), shapes_loader(4, seed=0), shapes_loader(8))
    assert callback.last_num_samples == 4  # fast_dev_run validates one batch
    assert math.isfinite(float(trainer.callback_metrics["evet/evet/average_drop"]))
