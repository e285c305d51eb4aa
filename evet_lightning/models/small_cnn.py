"""A small CNN for the synthetic shapes, and a LightningModule that trains it."""

from __future__ import annotations

import math
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from evet_lightning.functional.augment import background_dropout

__all__ = ["ShapesClassifier", "SmallCNN"]


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 Conv (same padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four Conv-BN-ReLU blocks, global average pooling and a linear classifier.

    Layout: ``features`` is an ``nn.Sequential`` of ``block1, pool, block2, pool, block3, pool, block4``
    (channels ``width, 2*width, 2*width, 4*width``); ``features[-1]`` (also ``features.block4``) is the
    last spatial block and yields ``(B, 4*width, H/8, W/8)``; it is the layer Grad-CAM should target. Then
    ``pool`` (``AdaptiveAvgPool2d(1)``), flatten and ``classifier`` (``Linear``).

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        width: channels of the first block.

    Shapes: input ``(B, in_channels, H, W)`` with ``H`` and ``W`` at least 8; output logits ``(B, num_classes)``.

    Example:
        >>> model = SmallCNN(num_classes=4)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 4])
        >>> model.features[-1](model.features[:-1](torch.zeros(2, 3, 64, 64))).shape
        torch.Size([2, 128, 8, 8])
    """

    def __init__(self, num_classes: int = 4, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Expected `{name}` to be a positive integer, but got {value!r}")
        self.features = nn.Sequential()
        self.features.add_module("block1", _conv_block(in_channels, width))
        self.features.add_module("pool1", nn.MaxPool2d(2))
        self.features.add_module("block2", _conv_block(width, 2 * width))
        self.features.add_module("pool2", nn.MaxPool2d(2))
        self.features.add_module("block3", _conv_block(2 * width, 2 * width))
        self.features.add_module("pool3", nn.MaxPool2d(2))
        self.features.add_module("block4", _conv_block(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    @property
    def target_layer(self) -> nn.Module:
        """The last spatial block, ``features[-1]``: the layer to hand Grad-CAM (``target_layers=[...]``)."""
        return self.features[-1]

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` images -> ``(B, num_classes)`` logits."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ShapesClassifier(pl.LightningModule):
    """Lightning wrapper around :class:`SmallCNN` with cross-entropy and Adam (one-cycle learning rate by default).

    Batches are ``(x, y)`` or ``(x, y, mask)``. With masks, training images go through
    :func:`~evet_lightning.functional.augment.background_dropout` (smooth random parts of the background darkened),
    so the classifier stays meaningful on the perturbed images faithfulness metrics show it. Logs
    ``train_loss``, ``val_loss`` and ``val_acc`` (on the progress bar). Hyperparameters are saved, so
    ``load_from_checkpoint`` rebuilds it.

    Args:
        num_classes: number of classes.
        in_channels: image channels.
        width: width of the :class:`SmallCNN`.
        lr: Adam learning rate (the peak of the one-cycle schedule).
        weight_decay: Adam weight decay.
        background_augmentation: fraction of training images (with masks) given background dropout; 0 disables.
        lr_schedule: ``"onecycle"``: per step, warm up from ``lr / 25`` to ``lr`` over the first 30% of the
            training steps (``trainer.estimated_stepping_batches``), then anneal (cosine) to ~0, so training
            ends on a settled model; ``"constant"``: ``lr`` throughout.

    Example:
        >>> classifier = ShapesClassifier(num_classes=4)
        >>> classifier(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        num_classes: int = 4,
        in_channels: int = 3,
        width: int = 32,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        background_augmentation: float = 0.5,
        lr_schedule: Literal["onecycle", "constant"] = "onecycle",
    ) -> None:
        super().__init__()
        if not isinstance(background_augmentation, (int, float)) or not 0 <= background_augmentation <= 1:
            raise ValueError(
                f"Expected `background_augmentation` to be a float in [0, 1], but got {background_augmentation!r}"
            )
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"Expected `lr` to be a positive float, but got {lr!r}")
        if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) or not weight_decay >= 0:
            raise ValueError(f"Expected `weight_decay` to be a non-negative float, but got {weight_decay!r}")
        if lr_schedule not in ("onecycle", "constant"):
            raise ValueError(f"Expected `lr_schedule` to be 'onecycle' or 'constant', but got {lr_schedule!r}")
        self.save_hyperparameters()
        self.model = SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)
        self.lr = lr
        self.weight_decay = weight_decay
        self.background_augmentation = float(background_augmentation)
        self.lr_schedule = lr_schedule

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` images -> ``(B, num_classes)`` logits."""
        return self.model(x)

    def _loss_and_accuracy(self, batch: tuple[Tensor, ...] | list[Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        return F.cross_entropy(logits, y), (logits.argmax(dim=1) == y).float().mean()

    def training_step(self, batch: tuple[Tensor, ...] | list[Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on one ``(x, y[, mask])`` batch (background dropout when masks come); logs ``train_loss``."""
        if len(batch) >= 3 and self.background_augmentation > 0:
            batch = (background_dropout(batch[0], batch[2], self.background_augmentation), *batch[1:])
        loss, _ = self._loss_and_accuracy(batch)
        self.log("train_loss", loss, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: tuple[Tensor, ...] | list[Tensor], batch_idx: int) -> Tensor:
        """Logs ``val_loss`` and ``val_acc`` (epoch means, synced across processes)."""
        loss, accuracy = self._loss_and_accuracy(batch)
        size = batch[0].shape[0]
        self.log("val_loss", loss, batch_size=size, sync_dist=True)
        self.log("val_acc", accuracy, batch_size=size, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        """Adam with the configured weight decay; its learning rate follows ``lr_schedule`` (stepped per batch)."""
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            rank_zero_warn("lr_schedule='onecycle' needs a finite number of training steps; using a constant lr")
            return optimizer
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.lr, total_steps=max(1, int(total_steps)), pct_start=0.3, cycle_momentum=False
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
