"""Binary classifiers with one logit (issue 15, bug 9) and logits of a wrong shape or without a graph (bug 8).

A ``(N, 1)`` logit z is read as the two classes ``[-z/2, z/2]`` (decision 26): every probability must be the
sigmoid's (class 1 = sigmoid(z), class 0 = 1 - sigmoid(z)), and everything else what the same network with the
explicit two-class head ``[-z/2, z/2]`` gives.
"""

from __future__ import annotations

import re

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from evet_lightning import EVET, EVETCallback
from evet_lightning.saliency.transforms import HorizontalFlip, Rotate
from tests._helpers.models import tiny_cnn
from tests._helpers.trainer import TrainerFactory

TRANSFORMS = [HorizontalFlip(), Rotate(10.0)]


class BinaryHead(nn.Module):
    """``tiny_cnn``'s features with one logit z per image; ``two_classes`` returns ``[-z/2, z/2]`` instead."""

    def __init__(self, two_classes: bool = False, squeeze: bool = False, detach: bool = False) -> None:
        super().__init__()
        self.net = tiny_cnn(num_classes=1)
        self.two_classes, self.squeeze, self.detach = two_classes, squeeze, detach

    def forward(self, images: Tensor) -> Tensor:
        z = self.net(images)
        if self.detach:
            z = z.detach()
        if self.two_classes:
            return torch.cat([-z / 2, z / 2], dim=1)
        return z.squeeze(-1) if self.squeeze else z


def _images() -> Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def test_single_logit_is_a_binary_classifier_in_the_engine() -> None:
    images = _images()
    targets = torch.tensor([0, 1, 1, 0])
    binary = EVET(BinaryHead(), target_layers="net.features.5", transforms=TRANSFORMS, alpha=0.5)
    reference = EVET(BinaryHead(two_classes=True), target_layers="net.features.5", transforms=TRANSFORMS, alpha=0.5)
    result = binary(images, targets, score_saliency=True)
    expected = reference(images, targets, score_saliency=True)
    z = BinaryHead().eval()(images).squeeze(1).detach()
    positive = torch.sigmoid(z)
    torch.testing.assert_close(result.clean_scores, torch.where(targets == 1, positive, 1 - positive))
    assert bool((result.clean_scores < 1).all())  # the old reading: softmax of one logit, every probability 1
    for name in ("clean_scores", "view_scores", "saliency_scores", "saliency", "original", "weights"):
        torch.testing.assert_close(getattr(result, name), getattr(expected, name), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        binary(images, torch.tensor([0, 1, 2, 0]))


class BinaryModule(pl.LightningModule):
    def __init__(self, two_classes: bool) -> None:
        super().__init__()
        self.model = BinaryHead(two_classes=two_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).sum() * 0.0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _logged(make_trainer: TrainerFactory, two_classes: bool) -> dict[str, float]:
    generator = torch.Generator().manual_seed(5)
    dataset = TensorDataset(torch.rand(8, 3, 16, 16, generator=generator), torch.tensor([0, 1] * 4))
    callback = EVETCallback(
        num_samples=8, target_layers="model.net.features.5", transforms=TRANSFORMS, alpha=0.5, log_images=0
    )
    trainer = make_trainer([callback], limit_train_batches=1, num_sanity_val_steps=0)
    trainer.fit(BinaryModule(two_classes), DataLoader(dataset, batch_size=4), DataLoader(dataset, batch_size=4))
    return {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("evet")}


def test_single_logit_is_a_binary_classifier_in_the_callback(make_trainer: TrainerFactory) -> None:
    binary = _logged(make_trainer, two_classes=False)
    reference = _logged(make_trainer, two_classes=True)
    assert binary.keys() == reference.keys()
    assert binary["evet/original/average_drop"] > 0
    for key, value in reference.items():
        assert binary[key] == pytest.approx(value, abs=1e-4), key


def test_squeezed_logits_raise_a_value_error_with_the_fix() -> None:
    evet = EVET(BinaryHead(squeeze=True), target_layers="net.features.5", transforms=TRANSFORMS, alpha=0.5)
    with pytest.raises(ValueError, match=r"shape \(4,\).*out\.unsqueeze\(-1\)"):
        evet(_images())
    fixed = EVET(
        BinaryHead(squeeze=True),
        target_layers="net.features.5",
        transforms=TRANSFORMS,
        alpha=0.5,
        output_transform=lambda out: out.unsqueeze(-1),
    )
    assert fixed(_images()).saliency.shape == (4, 16, 16)


@pytest.mark.parametrize("shape", [(), (4, 3, 2), (4, 0)])
def test_logits_of_a_wrong_shape_raise_a_value_error_naming_it(shape: tuple[int, ...]) -> None:
    class Wrong(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, images: Tensor) -> Tensor:
            return self.net(images).sum() * torch.zeros(shape)

    with pytest.raises(ValueError, match=rf"shape {re.escape(str(shape))}"):
        EVET(Wrong(), target_layers="net.features.5", transforms=TRANSFORMS, alpha=0.5)(_images())


@pytest.mark.parametrize("cam", ["GradCAM", "Gradient", "GradCAMElementWise"])
def test_logits_without_a_graph_raise_a_value_error(cam: str) -> None:
    layers = None if cam == "Gradient" else "net.features.5"
    evet = EVET(BinaryHead(detach=True), cam=cam, target_layers=layers, transforms=TRANSFORMS, alpha=0.5)
    with pytest.raises(ValueError, match=r"do(es)? not require grad"):
        evet(_images())
