"""A LightningModule that trains :class:`~evet_lightning.models.SmallCNN` as a multi-label classifier (BCE)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from evet_lightning.functional.augment import background_dropout
from evet_lightning.models.small_cnn import ShapesClassifier

__all__ = ["MultiLabelShapesClassifier"]

#: Class-index mask values at or above this are no object (VOC's void, 255); below 0 is background (-1).
_VOID = 255


class MultiLabelShapesClassifier(ShapesClassifier):
    """:class:`ShapesClassifier` for multi-hot labels: ``BCEWithLogitsLoss`` on ``(B, C)`` float labels, one
    independent sigmoid per class (what ``EVETCallback(task="multilabel")`` scores).

    Batches are ``(x, y)`` or ``(x, y, mask)`` with ``y`` ``(B, C)`` multi-hot and ``mask`` a class-index
    ``(B, H, W)`` map (``k`` for class ``k``, negative for background; :class:`~evet_lightning.data.MultiObjectShapes`);
    with masks, training images get the same background dropout as :class:`ShapesClassifier` (every object kept).
    Logs ``train_loss``, ``val_loss``, ``val_f1`` (torchmetrics' macro ``MultilabelF1Score`` at ``threshold``) and
    ``val_map`` (macro ``MultilabelAveragePrecision``, the mean over classes of each class's average precision).
    The optimizer and learning-rate schedule are :class:`ShapesClassifier`'s.

    Args:
        num_classes: number of labels (one logit each).
        threshold: the sigmoid probability above which a label is predicted (for the F1 score).
        Others: as :class:`ShapesClassifier`.

    Example:
        >>> import torch
        >>> classifier = MultiLabelShapesClassifier(num_classes=4, width=4)
        >>> classifier(torch.zeros(2, 3, 32, 32)).shape
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
        threshold: float = 0.5,
    ) -> None:
        super().__init__(num_classes, in_channels, width, lr, weight_decay, background_augmentation, lr_schedule)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 1:
            raise ValueError(f"Expected `threshold` to be a float in (0, 1), but got {threshold!r}")
        self.val_f1 = MultilabelF1Score(num_labels=num_classes, threshold=threshold, average="macro")
        self.val_map = MultilabelAveragePrecision(num_labels=num_classes, average="macro")

    def _loss_and_logits(self, batch: tuple[Tensor, ...] | list[Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch[0], batch[1]
        if y.ndim != 2 or y.shape != (x.shape[0], self.hparams["num_classes"]):
            raise ValueError(
                f"Expected multi-hot labels of shape ({x.shape[0]}, {self.hparams['num_classes']}), but got "
                f"{tuple(y.shape)}"
            )
        logits = self(x)
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype)), logits

    def training_step(self, batch: tuple[Tensor, ...] | list[Tensor], batch_idx: int) -> Tensor:
        """BCE on one ``(x, y[, mask])`` batch (background dropout when masks come); logs ``train_loss``."""
        if len(batch) >= 3 and self.background_augmentation > 0:
            objects = (batch[2] >= 0) & (batch[2] < _VOID)
            batch = (background_dropout(batch[0], objects, self.background_augmentation), *batch[1:])
        loss, _ = self._loss_and_logits(batch)
        self.log("train_loss", loss, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: tuple[Tensor, ...] | list[Tensor], batch_idx: int) -> Tensor:
        """Logs ``val_loss``, ``val_f1`` and ``val_map`` (epoch values, synced across processes)."""
        loss, logits = self._loss_and_logits(batch)
        labels = batch[1].round().long()
        probabilities = logits.sigmoid()
        self.val_f1.update(probabilities, labels)
        self.val_map.update(probabilities, labels)
        size = batch[0].shape[0]
        self.log("val_loss", loss, batch_size=size, sync_dist=True)
        self.log("val_f1", self.val_f1, batch_size=size, prog_bar=True)
        self.log("val_map", self.val_map, batch_size=size)
        return loss
