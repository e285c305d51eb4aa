"""Heatmaps delivered to W&B (offline), TensorBoard, CSVLogger and no logger: labelled, enlarged sheets."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torchvision.io import decode_png, read_image

from evet_lightning import EVETCallback
from evet_lightning.data import SyntheticShapes
from evet_lightning.visualization.heatmaps import MIN_PANEL_SIZE, SheetLayout, class_label
from tests._helpers.models import NUM_CLASSES, Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

IMAGE_SIZE = 32
NUM_IMAGES = 3
CLASS_NAMES = SyntheticShapes(num_samples=1, num_classes=NUM_CLASSES).classes
#: One labelled row per sample: 32-pixel images enlarged 6x to 192-pixel panels, the class and Y under the
#: image, O under each map, and the footnote.
SHEET = SheetLayout.for_panels(rows=1, panel_height=192, panel_width=192, caption_lines=2, footnote_lines=2)


def _validate(make_trainer: TrainerFactory, logger: Any, **callback_kwargs: Any) -> pl.Trainer:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=4, log_images=NUM_IMAGES, **callback_kwargs)
    trainer = make_trainer([callback], logger=logger)
    trainer.validate(Classifier(), dataloaders=shapes_loader(4), verbose=False)
    return trainer


def _row_labels() -> list[str]:
    """The row labels of the logged samples: the first validation samples' classes, by name."""
    dataset = shapes_loader(4).dataset
    return [class_label(int(dataset[index][1]), CLASS_NAMES) for index in range(NUM_IMAGES)]


def _assert_heatmap(image: torch.Tensor) -> None:
    """A labelled sheet: 192-pixel panels for the 32-pixel images, whose pixels are 6 x 6 blocks."""
    assert SHEET.panel_width == MIN_PANEL_SIZE
    assert image.dtype == torch.uint8
    assert tuple(image.shape) == (3, SHEET.height, SHEET.width)
    top, left = SHEET.panel_box(0, 0)
    panel = image[:, top : top + SHEET.panel_height, left : left + SHEET.panel_width]
    blocks = panel.reshape(3, IMAGE_SIZE, 6, IMAGE_SIZE, 6)
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))


@pytest.mark.timeout(120)
def test_wandb_offline_writes_heatmap_pngs(make_trainer: TrainerFactory, offline_wandb_logger: Any) -> None:
    import wandb

    trainer = _validate(make_trainer, offline_wandb_logger, class_names=CLASS_NAMES)
    run_dir = offline_wandb_logger.experiment.dir
    wandb.finish()  # flushes the run's files (the fixture finishing it again is harmless)
    assert "evet/evet/average_drop" in trainer.callback_metrics
    media = os.path.join(os.path.dirname(run_dir), "files", "media")
    images = sorted(glob.glob(os.path.join(media, "images", "**", "*.png"), recursive=True))
    heatmaps = [path for path in images if "heatmaps" in os.path.basename(path)]
    assert len(heatmaps) == NUM_IMAGES
    for path in heatmaps:
        _assert_heatmap(read_image(path))
    # alpha="auto": the epoch's per-alpha curve as a plot and a table.
    assert [os.path.basename(path).startswith("alpha_curve") for path in images if path not in heatmaps] == [True]
    (table_file,) = glob.glob(os.path.join(media, "table", "**", "alpha_curve_table*.json"), recursive=True)
    with open(table_file) as handle:
        table = json.load(handle)
    assert table["columns"][4] == "stability_index"  # the guard's column (decision 30), a number per alpha
    assert all(isinstance(row[4], float) and 0 < row[4] <= 1 for row in table["data"])
    (run_file,) = glob.glob(os.path.join(os.path.dirname(run_dir), "*.wandb"))
    with open(run_file, "rb") as handle:
        logged = handle.read()
    for label in _row_labels():  # the captions label the columns and each row
        assert b"image | Grad-CAM (O = " in logged and f"; {label}, Y = ".encode() in logged


def test_tensorboard_event_file_holds_the_image_tags(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    _validate(make_trainer, logger, class_names=CLASS_NAMES)
    logger.experiment.flush()
    accumulator = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert sorted(tags) == ["evet/alpha_curve/0", *(f"evet/heatmaps/{index}" for index in range(NUM_IMAGES))]
    encoded = accumulator.Images("evet/heatmaps/0")[0].encoded_image_string
    _assert_heatmap(decode_png(torch.frombuffer(bytearray(encoded), dtype=torch.uint8)))
    for index, label in enumerate(_row_labels()):
        (text,) = accumulator.Tensors(f"evet/heatmaps/{index}/text_summary")
        caption = text.tensor_proto.string_val[0].decode()
        assert caption.startswith("image | Grad-CAM (O = ") and caption.endswith(f"; {label}, Y = {caption[-5:]}")


@pytest.mark.parametrize("use_csv", [True, False], ids=["csv_logger", "no_logger"])
def test_png_files_under_the_log_dir(make_trainer: TrainerFactory, tmp_path: Any, use_csv: bool) -> None:
    logger: Any = CSVLogger(str(tmp_path), name="csv") if use_csv else False
    trainer = _validate(make_trainer, logger, normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    log_dir = logger.log_dir if use_csv else str(tmp_path)
    files = sorted(glob.glob(os.path.join(log_dir, "evet_heatmaps", "epoch_000", "*.png")))
    assert [os.path.basename(path) for path in files] == [f"step_000000_sample_{i:02d}.png" for i in range(NUM_IMAGES)]
    for path in files:
        _assert_heatmap(read_image(path))
    (curve,) = glob.glob(os.path.join(log_dir, "evet_alpha_curves", "*.png"))
    assert os.path.basename(curve) == "epoch_000_step_000000.png" and read_image(curve).shape[0] == 3
    if use_csv:
        with open(os.path.join(log_dir, "metrics.csv")) as handle:
            header = handle.readline()
        assert "evet/evet/average_drop" in header and "evet/win" in header
    assert "evet/win" in trainer.callback_metrics


def test_log_images_zero_writes_nothing(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    callback = EVETCallback(num_samples=2, log_images=0)
    trainer = make_trainer([callback])
    trainer.validate(Classifier(), dataloaders=shapes_loader(2), verbose=False)
    assert not os.path.exists(os.path.join(tmp_path, "evet_heatmaps"))
    assert not os.path.exists(os.path.join(tmp_path, "evet_alpha_curves"))
    assert "evet/win" in trainer.callback_metrics


def test_a_failing_logger_costs_only_its_images(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    class BrokenWriter:
        """Lightning's own calls succeed; writing an image fails."""

        def __getattr__(self, name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> None:
                if name in ("add_image", "add_text"):
                    raise RuntimeError("no disk")

            return call

    class BrokenTensorBoard(TensorBoardLogger):
        @property
        def experiment(self) -> Any:
            return BrokenWriter()

    with pytest.warns(UserWarning, match="no disk"):
        trainer = _validate(make_trainer, BrokenTensorBoard(str(tmp_path)))
    assert "evet/win" in trainer.callback_metrics
