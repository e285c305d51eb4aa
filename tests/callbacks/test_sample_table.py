"""The per-sample table: a W&B table with image cells, or a CSV file under the log directory, one row a sample."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger
from torchvision.io import read_image

from evet_lightning import EVETCallback
from evet_lightning.data import SyntheticShapes
from tests._helpers.models import NUM_CLASSES, Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

NUM_SAMPLES = 4
LOG_IMAGES = 2
CLASS_NAMES = SyntheticShapes(num_samples=1, num_classes=NUM_CLASSES).classes
AUC_COLUMNS = ["original/deletion_auc", "original/insertion_auc", "evet/deletion_auc", "evet/insertion_auc"]
VALUE_COLUMNS = ["class", "class_name", "Y", "original/O", "evet/O", *AUC_COLUMNS]


def _validate(make_trainer: TrainerFactory, logger: Any) -> EVETCallback:
    pl.seed_everything(0)
    callback = EVETCallback(
        num_samples=NUM_SAMPLES,
        log_images=LOG_IMAGES,
        deletion_insertion=True,
        deletion_steps=3,
        stability_transforms=[],
        class_names=CLASS_NAMES,
    )
    trainer = make_trainer([callback], logger=logger)
    trainer.validate(Classifier(), dataloaders=shapes_loader(NUM_SAMPLES), verbose=False)
    return callback


def _expected_rows(callback: EVETCallback) -> list[dict[str, Any]]:
    """What each row must hold, read from ``last_samples``."""
    samples = callback.last_samples
    assert samples is not None and len(samples) == NUM_SAMPLES
    rows = []
    for index in range(NUM_SAMPLES):
        target = int(samples.targets[index])
        rows.append(
            {
                "sample": index,
                "class": target,
                "class_name": CLASS_NAMES[target],
                "Y": float(samples.clean_scores[index]),
                "original/O": float(samples.original_scores[index]),
                "evet/O": float(samples.evet_scores[index]),
                **{key: float(samples.aucs[key][index]) for key in AUC_COLUMNS},
            }
        )
    return rows


def _assert_row(row: dict[str, Any], expected: dict[str, Any]) -> None:
    assert int(row["sample"]) == expected["sample"] and int(row["class"]) == expected["class"]
    assert row["class_name"] == expected["class_name"]
    for key in ("Y", "original/O", "evet/O", *AUC_COLUMNS):
        assert math.isfinite(float(row[key])) and float(row[key]) == pytest.approx(expected[key], abs=1e-7), key


def test_csv_logger_gets_one_row_per_sample(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    logger = CSVLogger(str(tmp_path), name="csv")
    callback = _validate(make_trainer, logger)
    with open(os.path.join(logger.log_dir, "evet_samples", "epoch_000_step_000000.csv"), newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["sample", *VALUE_COLUMNS, "heatmap_png"]
        rows = list(reader)
    assert len(rows) == NUM_SAMPLES
    for index, (row, expected) in enumerate(zip(rows, _expected_rows(callback), strict=True)):
        _assert_row(row, expected)
        if index < LOG_IMAGES:  # the heatmap written for it, by its path under the log directory
            assert row["heatmap_png"] == os.path.join(
                "evet_heatmaps", "epoch_000", f"step_000000_sample_{index:02d}.png"
            )
            assert os.path.isfile(os.path.join(logger.log_dir, row["heatmap_png"]))
        else:
            assert row["heatmap_png"] == ""
    (plot,) = glob.glob(os.path.join(logger.log_dir, "evet_curves", "*.png"))
    assert os.path.basename(plot) == "epoch_000_step_000000.png" and read_image(plot).shape[0] == 3


@pytest.mark.timeout(120)
def test_wandb_offline_run_holds_the_samples_table(
    make_trainer: TrainerFactory, offline_wandb_logger: Any, tmp_path: Any
) -> None:
    import wandb

    callback = _validate(make_trainer, offline_wandb_logger)
    run_dir = offline_wandb_logger.experiment.dir
    wandb.finish()  # flushes the run's files (the fixture finishing it again is harmless)
    media = os.path.join(os.path.dirname(run_dir), "files", "media")
    (table_file,) = glob.glob(os.path.join(media, "table", "**", "samples*.table.json"), recursive=True)
    with open(table_file) as handle:
        table = json.load(handle)
    assert table["columns"] == ["sample", "image", "original", "evet", *VALUE_COLUMNS]
    assert len(table["data"]) == NUM_SAMPLES
    for cells, expected in zip(table["data"], _expected_rows(callback), strict=True):
        row = dict(zip(table["columns"], cells, strict=True))
        _assert_row(row, expected)
        assert [row[column] for column in ("image", "original", "evet")] == ["Image"] * 3
    # The table with its images is the run's `run_table` artifact: 3 PNG files (content-named) per row.
    (run_file,) = glob.glob(os.path.join(os.path.dirname(run_dir), "*.wandb"))
    with open(run_file, "rb") as handle:
        logged = handle.read()
    assert re.search(rb"run-\w+-evetsamples", logged) and b"run_table" in logged
    assert len(set(re.findall(rb"media/images/[0-9a-f]{20}\.png", logged))) == 3 * NUM_SAMPLES
    assert not os.path.exists(os.path.join(tmp_path, "evet_samples"))  # W&B gets a table, not a CSV file
    images = glob.glob(os.path.join(media, "images", "**", "deletion_insertion*.png"), recursive=True)
    assert len(images) == 1  # the mean curves


def test_log_images_zero_writes_no_table_and_no_plot(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    callback = EVETCallback(num_samples=2, log_images=0, deletion_insertion=True, deletion_steps=2)
    trainer = make_trainer([callback])
    trainer.validate(Classifier(), dataloaders=shapes_loader(2), verbose=False)
    assert "evet/evet/deletion_auc" in trainer.callback_metrics
    assert sorted(os.listdir(tmp_path)) == []
