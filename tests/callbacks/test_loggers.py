"""Heatmaps: rendering, and delivery to W&B (offline), TensorBoard, CSVLogger and no logger."""

from __future__ import annotations

import glob
import os
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torchvision.io import decode_png, read_image

from evet_lightning import EVETCallback
from evet_lightning.visualization.heatmaps import captions, denormalize, heatmap_panel, jet_colormap, overlay
from tests.callbacks._modules import Classifier, shapes_loader

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

IMAGE_SIZE = 32
NUM_IMAGES = 3


def _validate(tmp_path: Any, logger: Any, **callback_kwargs: Any) -> pl.Trainer:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=4, log_images=NUM_IMAGES, **callback_kwargs)
    trainer = pl.Trainer(
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    trainer.validate(Classifier(), dataloaders=shapes_loader(4), verbose=False)
    return trainer


def _assert_heatmap(image: torch.Tensor) -> None:
    assert image.dtype == torch.uint8
    assert tuple(image.shape) == (3, IMAGE_SIZE, 3 * IMAGE_SIZE)


def test_jet_colormap_and_panel_values() -> None:
    colours = jet_colormap(torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0, float("nan")]]))[:, 0]
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.5, 1.0, 0.5, 0.0],  # red
            [0.0, 0.5, 1.0, 0.5, 0.0, 0.0],  # green
            [0.5, 1.0, 0.5, 0.0, 0.0, 0.5],  # blue; NaN shows as 0 (dark blue)
        ]
    )
    torch.testing.assert_close(colours, expected)
    image = torch.rand(1, 3, 5, 7)
    saliency = torch.rand(1, 5, 7)
    blended = overlay(image, saliency, opacity=0.25)
    torch.testing.assert_close(blended, 0.75 * image + 0.25 * jet_colormap(saliency))
    panel = heatmap_panel(image, saliency, torch.zeros(1, 5, 7))
    _assert_panel_shape(panel, 5, 7)
    torch.testing.assert_close(panel[0, :, :, :7], (image[0] * 255).round().to(torch.uint8), rtol=0, atol=1)


def _assert_panel_shape(panel: torch.Tensor, height: int, width: int) -> None:
    assert panel.dtype == torch.uint8 and tuple(panel.shape) == (1, 3, height, 3 * width)


def test_panel_denormalizes_and_handles_grey_and_nan() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    pixels = torch.rand(2, 3, 6, 6)
    normalized = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(denormalize(normalized, (mean, std)), pixels)
    panel = heatmap_panel(normalized, torch.rand(2, 6, 6), torch.rand(2, 6, 6), normalization=(mean, std))
    torch.testing.assert_close(panel[:, :, :, :6], (pixels * 255).round().to(torch.uint8), rtol=0, atol=1)
    grey = heatmap_panel(
        torch.full((1, 1, 4, 4), float("nan")), torch.full((1, 4, 4), float("nan")), torch.ones(1, 4, 4)
    )
    assert grey.shape == (1, 3, 4, 12)
    assert captions([2], [0.91234], [0.5], [0.75]) == ["class 2, p(x)=0.912, original 0.500 -> EVET 0.750"]
    with pytest.raises(ValueError, match="same size"):
        heatmap_panel(torch.rand(1, 3, 4, 4), torch.rand(1, 4, 5), torch.rand(1, 4, 5))


@pytest.mark.timeout(120)
def test_wandb_offline_writes_heatmap_pngs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="evet-tests")
    try:
        trainer = _validate(tmp_path, logger)
        run_dir = logger.experiment.dir
    finally:
        wandb.finish()
    assert "evet/evet/average_drop" in trainer.callback_metrics
    images = sorted(
        glob.glob(os.path.join(os.path.dirname(run_dir), "files", "media", "images", "**", "*.png"), recursive=True)
    )
    assert len(images) == NUM_IMAGES
    for path in images:
        _assert_heatmap(read_image(path))


def test_tensorboard_event_file_holds_the_image_tags(tmp_path: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    _validate(tmp_path, logger)
    logger.experiment.flush()
    accumulator = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["images"]
    assert tags == [f"evet/heatmaps/{index}" for index in range(NUM_IMAGES)]
    encoded = accumulator.Images("evet/heatmaps/0")[0].encoded_image_string
    _assert_heatmap(decode_png(torch.frombuffer(bytearray(encoded), dtype=torch.uint8)))


@pytest.mark.parametrize("use_csv", [True, False], ids=["csv_logger", "no_logger"])
def test_png_files_under_the_log_dir(tmp_path: Any, use_csv: bool) -> None:
    logger: Any = CSVLogger(str(tmp_path), name="csv") if use_csv else False
    trainer = _validate(tmp_path, logger, normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    log_dir = logger.log_dir if use_csv else str(tmp_path)
    files = sorted(glob.glob(os.path.join(log_dir, "evet_heatmaps", "epoch_000", "*.png")))
    assert [os.path.basename(path) for path in files] == [f"step_000000_sample_{i:02d}.png" for i in range(NUM_IMAGES)]
    for path in files:
        _assert_heatmap(read_image(path))
    if use_csv:
        with open(os.path.join(log_dir, "metrics.csv")) as handle:
            header = handle.readline()
        assert "evet/evet/average_drop" in header and "evet/win" in header
    assert "evet/win" in trainer.callback_metrics


def test_log_images_zero_writes_nothing(tmp_path: Any) -> None:
    callback = EVETCallback(num_samples=2, log_images=0)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path, callbacks=[callback])
    trainer.validate(Classifier(), dataloaders=shapes_loader(2), verbose=False)
    assert not os.path.exists(os.path.join(tmp_path, "evet_heatmaps"))
    assert "evet/win" in trainer.callback_metrics


def test_a_failing_logger_costs_only_its_images(tmp_path: Any) -> None:
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
        trainer = _validate(tmp_path, BrokenTensorBoard(str(tmp_path)))
    assert "evet/win" in trainer.callback_metrics
