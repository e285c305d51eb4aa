"""The guard leaves a model as the user's own code would find it (issue 15, bugs 3-5): autograd's saved buffers keep
their versions, numpy's RNG is restored, and modes are restored with ``train(mode)`` calls."""

from __future__ import annotations

import numpy as np
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


@pytest.mark.parametrize("cam", ["GradCAM", "Gradient", "ScoreCAM"])
def test_backward_after_an_evet_call_between_forward_and_backward(cam: str) -> None:
    """Train-mode forward (BatchNorm saves its running statistics for backward), EVET, then ``loss.backward()``."""
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0])
    grads = []
    for with_evet in (False, True):
        model = tiny_cnn().train()
        loss = nn.functional.cross_entropy(model(images), labels)
        if with_evet:
            layers = None if cam == "Gradient" else "features.5"
            EVET(model, cam=cam, target_layers=layers, transforms=TRANSFORMS, alpha=0.5)(images[:2])
        loss.backward()
        grads.append([param.grad.clone() for param in model.parameters()])
    for without, with_ in zip(*grads, strict=True):
        assert torch.equal(without, with_)


class MergeOnEval(nn.Module):
    """A loralib-style linear layer: ``train(False)`` merges a low-rank update into ``weight``, ``train(True)``
    unmerges it (exactly: the unmerged weight is kept)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, features))
        self.lora_a = nn.Parameter(torch.randn(1, features))
        self.lora_b = nn.Parameter(torch.full((classes, 1), 1.5))
        self.merged = False
        self._unmerged: Tensor | None = None

    def train(self, mode: bool = True) -> MergeOnEval:
        super().train(mode)
        with torch.no_grad():
            if not mode and not self.merged:
                self._unmerged = self.weight.detach().clone()
                self.weight += self.lora_b @ self.lora_a
                self.merged = True
            elif mode and self.merged:
                assert self._unmerged is not None
                self.weight.copy_(self._unmerged)
                self.merged = False
        return self

    def forward(self, features: Tensor) -> Tensor:
        weight = self.weight if self.merged else self.weight + self.lora_b @ self.lora_a
        return features @ weight.T


class LoraCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = MergeOnEval(4, 3)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.pool(self.features(images)).flatten(1))


def test_modes_are_restored_by_train_calls_so_side_effects_are_undone() -> None:
    with torch.random.fork_rng(devices=[]):
        model = LoraCNN().train()
    model.features[1].eval()  # a BatchNorm frozen on purpose stays in eval
    weights = {name: param.detach().clone() for name, param in model.named_parameters()}
    flags = {name: module.training for name, module in model.named_modules()}
    EVET(model, target_layers="features.2", transforms=TRANSFORMS, alpha=0.5)(torch.rand(2, 3, 8, 8))
    assert not model.head.merged
    assert {name: module.training for name, module in model.named_modules()} == flags
    for name, param in model.named_parameters():
        assert torch.equal(param, weights[name]), name


class NumpyNoise(nn.Module):
    """Draws from numpy's global RNG in eval mode (test-time noise), so a guard that misses numpy changes training."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, images: Tensor) -> Tensor:
        noise = torch.from_numpy(np.random.standard_normal(images.shape[1:]).astype(np.float32))  # noqa: NPY002
        features = torch.relu(self.conv(images + 0.01 * noise))
        return self.fc(features.mean(dim=(2, 3)))


class NumpyNoiseModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = NumpyNoise()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self(images), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _fit_with_numpy_noise(make_trainer: TrainerFactory, with_callback: bool) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(1)
    dataset = TensorDataset(
        torch.rand(16, 3, 16, 16, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    )
    np.random.seed(0)  # noqa: NPY002
    module = NumpyNoiseModule()
    callbacks = (
        [EVETCallback(num_samples=4, target_layers="model.conv", transforms=TRANSFORMS, alpha=0.5, log_images=0)]
        if with_callback
        else []
    )
    trainer = make_trainer(callbacks, max_epochs=2, limit_train_batches=None, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(dataset, batch_size=4), DataLoader(dataset, batch_size=4))
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def test_numpy_rng_is_restored_so_a_fit_is_bit_identical(make_trainer: TrainerFactory) -> None:
    without = _fit_with_numpy_noise(make_trainer, with_callback=False)
    with_ = _fit_with_numpy_noise(make_trainer, with_callback=True)
    for name, value in without.items():
        assert torch.equal(value, with_[name]), name
