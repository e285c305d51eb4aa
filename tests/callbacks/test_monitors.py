"""``every_n_epochs > 1`` with Lightning's own EarlyStopping and ModelCheckpoint on the callback's keys: they act only
on values of the epoch's own weights, and a configuration that cannot work is refused at setup (decision 33)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from evet_lightning import EVETCallback
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import RecordingLogger, shapes_loader

STABILITY = "evet/evet/stability_index"
DROP = "evet/evet/average_drop"


class AfterEarlyStopping(pl.Callback):
    """What EarlyStopping saw and decided in every epoch. By default it checks at the training epoch's end (after the
    validation run), as a monitoring callback after all others, so each epoch is recorded when the next starts."""

    def __init__(self, early_stopping: EarlyStopping) -> None:
        self.early_stopping = early_stopping
        self.seen: list[dict[str, Any]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._record(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer)

    def _record(self, trainer: pl.Trainer) -> None:
        best = self.early_stopping.best_score
        self.seen.append(
            {
                "epoch": len(self.seen),
                "keys": sorted(key for key in trainer.callback_metrics if key.startswith("evet/")),
                "wait": self.early_stopping.wait_count,
                "best": float(best) if torch.isfinite(best) else None,
            }
        )


def test_early_stopping_and_checkpoints_see_only_explained_epochs(make_trainer: TrainerFactory, tmp_path: Path) -> None:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=4, log_images=0, every_n_epochs=2, alpha=0.5)
    early_stopping = EarlyStopping(monitor=STABILITY, mode="max", patience=1, strict=False)
    probe = AfterEarlyStopping(early_stopping)
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor=DROP, mode="min", save_top_k=3, every_n_epochs=2, filename="{epoch}"
    )
    logger = RecordingLogger()
    trainer = make_trainer(
        [callback, early_stopping, probe, checkpoints],
        max_epochs=4,
        limit_train_batches=1,
        logger=logger,
        enable_checkpointing=True,
        num_sanity_val_steps=0,
    )
    trainer.fit(Classifier(), shapes_loader(4), shapes_loader(4))
    logged = {int(metrics["epoch"]): metrics for _, metrics in logger.records if DROP in metrics}

    # Validation runs 2 and 4 (epochs 1 and 3) were explained; after the others no evet key is left to read.
    assert sorted(logged) == [1, 3] and callback.epochs_explained == 2
    assert [entry["epoch"] for entry in probe.seen] == [0, 1, 2, 3]
    assert probe.seen[0]["keys"] == [] and probe.seen[2]["keys"] == []
    assert STABILITY in probe.seen[1]["keys"] and STABILITY in probe.seen[3]["keys"]
    # EarlyStopping counted explained epochs only: its first value is epoch 1's, and patience=1 cannot stop the run
    # before a second explanation (with stale values it stopped after the first).
    assert probe.seen[0] == {"epoch": 0, "keys": [], "wait": 0, "best": None}
    assert probe.seen[1]["wait"] == 0 and probe.seen[1]["best"] == pytest.approx(logged[1][STABILITY])
    assert probe.seen[2]["wait"] == 0 and probe.seen[2]["best"] == probe.seen[1]["best"]
    improved = logged[3][STABILITY] > logged[1][STABILITY]
    assert probe.seen[3]["wait"] == (0 if improved else 1)
    assert probe.seen[3]["best"] == pytest.approx(max(logged[1][STABILITY], logged[3][STABILITY]))
    # Each checkpoint is ranked by the value its own weights got.
    scores = {Path(path).name: float(score) for path, score in checkpoints.best_k_models.items()}
    assert scores == {
        "epoch=1.ckpt": pytest.approx(logged[1][DROP]),
        "epoch=3.ckpt": pytest.approx(logged[3][DROP]),
    }


@pytest.mark.parametrize(
    ("monitor", "message"),
    [
        (
            lambda: EarlyStopping(monitor=STABILITY, mode="max"),
            r"EarlyStopping\(monitor='evet/evet/stability_index', strict=False\)",
        ),
        (lambda: ModelCheckpoint(monitor=DROP, every_n_epochs=3), r"every_n_epochs=2\)`"),
    ],
)
def test_monitors_that_would_fail_on_skipped_epochs_are_refused_at_setup(
    make_trainer: TrainerFactory, monitor: Any, message: str
) -> None:
    trainer = make_trainer(
        [EVETCallback(num_samples=2, log_images=0, every_n_epochs=2), monitor()], enable_checkpointing=True
    )
    with pytest.raises(ValueError, match=message):
        trainer.fit(Classifier(), shapes_loader(4), shapes_loader(4))
