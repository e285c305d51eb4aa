"""Both Lightning namespaces accept EVETCallback: ``pytorch_lightning`` and ``lightning.pytorch``."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import pytest
import pytorch_lightning as pl
import torch

from evet_lightning import EVETCallback
from tests._helpers.models import Classifier, LitClassifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader

KEYS = ("evet/original/average_drop", "evet/evet/stability_index", "evet/win", "evet/evet/energy_pointing_game")


def test_callback_is_a_callback_of_both_namespaces() -> None:
    callback = EVETCallback()
    assert isinstance(callback, pl.Callback) and isinstance(callback, L.Callback)


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_fit_and_validate_log_the_keys(make_trainer: TrainerFactory, tmp_path: Any, namespace: str) -> None:
    trainer_class: Any = pl.Trainer if namespace == "pytorch_lightning" else L.Trainer
    module: Any = Classifier() if namespace == "pytorch_lightning" else LitClassifier()
    callback = EVETCallback(num_samples=3, log_images=1)
    trainer = make_trainer([callback], trainer_class=trainer_class)
    trainer.fit(module, shapes_loader(8, seed=0), shapes_loader(4))
    assert all(math.isfinite(float(trainer.callback_metrics[key])) for key in KEYS)
    (results,) = trainer.validate(module, dataloaders=shapes_loader(4), verbose=False)
    assert all(math.isfinite(results[key]) for key in KEYS)
    assert callback.epochs_explained == 2
    # the checkpoint code of both namespaces saves the callback's state under its state_key
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["callbacks"][callback.state_key]["epochs_explained"] == 2
