"""Resuming from a checkpoint restores the callback's state and explains the same samples."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from evet_lightning import EVETCallback
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader


def _trainer(make_trainer: TrainerFactory, tmp_path: Any, callback: EVETCallback, max_epochs: int) -> pl.Trainer:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    return make_trainer([callback, checkpoints], max_epochs=max_epochs, enable_checkpointing=True)


def _first_run(make_trainer: TrainerFactory, tmp_path: Any) -> EVETCallback:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=5, log_images=0, every_n_epochs=2)
    trainer = _trainer(make_trainer, tmp_path, callback, max_epochs=3)
    trainer.fit(Classifier(), shapes_loader(8, seed=0), shapes_loader(8))
    # validation run 2 was explained (runs 2, 4, ...: decision 33)
    assert callback.state_dict()["validation_runs"] == 3 and callback.state_dict()["epochs_explained"] == 1
    return callback


def test_resume_restores_state_and_explains_the_same_samples(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    first = _first_run(make_trainer, tmp_path)
    resumed = EVETCallback(num_samples=5, log_images=0, every_n_epochs=2)
    loaded: list[dict[str, Any]] = []

    class Spy(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            loaded.append(resumed.state_dict())

    trainer = _trainer(make_trainer, tmp_path, resumed, max_epochs=5)
    trainer.callbacks.append(Spy())
    trainer.fit(Classifier(), shapes_loader(8, seed=0), shapes_loader(8), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert loaded == [first.state_dict()]
    # the cadence continues: run 4 is explained, run 5 skipped
    assert (resumed.validation_runs, resumed.epochs_explained) == (5, 2)
    assert resumed.fingerprint == pytest.approx(first.fingerprint, rel=1e-12)
    assert resumed.last_num_samples == 5
    labels = torch.stack([shapes_loader(8).dataset[i][1] for i in range(5)])
    assert torch.equal(resumed.last_results[0].targets, labels)


def test_resume_with_different_samples_warns(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    first = _first_run(make_trainer, tmp_path)
    resumed = EVETCallback(num_samples=5, log_images=0, every_n_epochs=2)
    trainer = _trainer(make_trainer, tmp_path, resumed, max_epochs=5)
    shuffled = shapes_loader(8, shuffle=True, seed=3)
    with pytest.warns(UserWarning, match="differ from those before the checkpoint"):
        trainer.fit(Classifier(), shapes_loader(8, seed=0), shuffled, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.fingerprint != pytest.approx(first.fingerprint, rel=1e-9)
