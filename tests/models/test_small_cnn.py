"""SmallCNN shapes and Grad-CAM layer; ShapesClassifier trains under a Lightning Trainer and reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from evet_lightning.data import SyntheticShapesDataModule
from evet_lightning.models import ShapesClassifier, SmallCNN
from tests._helpers.trainer import TrainerFactory


@pytest.mark.parametrize(("size", "spatial"), [((64, 64), (8, 8)), ((48, 80), (6, 10)), ((8, 8), (1, 1))])
def test_small_cnn_output_and_feature_map_shapes(size: tuple[int, int], spatial: tuple[int, int]) -> None:
    model = SmallCNN(num_classes=5, width=8).eval()
    images = torch.rand(3, 3, *size)
    assert model(images).shape == (3, 5)
    feature_maps: list[torch.Tensor] = []
    handle = model.target_layer.register_forward_hook(lambda module, args, output: feature_maps.append(output))
    try:
        model(images)
    finally:
        handle.remove()
    assert model.target_layer is model.features[-1] is model.features.block4
    assert feature_maps[0].shape == (3, 32, *spatial)


def test_target_layer_holds_the_last_leaf_module_with_a_spatial_output() -> None:
    model = SmallCNN(width=4).eval()
    spatial: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]

    def record(module: nn.Module, args: object, output: torch.Tensor) -> None:
        if output.dim() == 4 and output.shape[-2:] != (1, 1):
            spatial.append(module)

    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        model(torch.rand(1, 3, 32, 32))
    finally:
        for hook in hooks:
            hook.remove()
    assert any(spatial[-1] is m for m in model.target_layer.modules())


def test_small_cnn_in_channels_and_argument_checks() -> None:
    assert SmallCNN(num_classes=2, in_channels=1, width=4)(torch.rand(2, 1, 16, 16)).shape == (2, 2)
    with pytest.raises(ValueError, match="Expected `num_classes`"):
        SmallCNN(num_classes=0)
    with pytest.raises(ValueError, match="Expected `width`"):
        SmallCNN(width=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected `lr`"):
        ShapesClassifier(lr=0.0)


#: Five training and two validation batches, on the CPU (on top of the ``make_trainer`` defaults).
FIT = {"limit_train_batches": 5, "limit_val_batches": 2, "accelerator": "cpu", "devices": 1}


def test_shapes_classifier_fits_and_logs_validation_accuracy(make_trainer: TrainerFactory) -> None:
    pl.seed_everything(0, verbose=False)
    datamodule = SyntheticShapesDataModule(train_samples=160, val_samples=32, image_size=32, batch_size=16)
    classifier = ShapesClassifier(width=8, lr=1e-2)
    before = [p.detach().clone() for p in classifier.parameters()]
    trainer = make_trainer(**FIT)
    trainer.fit(classifier, datamodule=datamodule)
    metrics = trainer.callback_metrics
    assert {"train_loss", "val_loss", "val_acc"} <= set(metrics)
    assert 0.0 <= metrics["val_acc"].item() <= 1.0
    assert "val_acc" in trainer.progress_bar_metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, classifier.parameters(), strict=True))


def test_shapes_classifier_accepts_two_element_batches_and_reloads(
    tmp_path: Path, make_trainer: TrainerFactory
) -> None:
    pl.seed_everything(0, verbose=False)
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    classifier = ShapesClassifier(num_classes=3, width=4, lr=5e-3)
    trainer = make_trainer(**FIT)
    trainer.fit(classifier, train_dataloaders=loader, val_dataloaders=loader)
    assert {"train_loss", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    path = tmp_path / "classifier.ckpt"
    trainer.save_checkpoint(path)
    reloaded = ShapesClassifier.load_from_checkpoint(path)
    assert reloaded.hparams["num_classes"] == 3 and reloaded.hparams["width"] == 4 and reloaded.lr == 5e-3
    classifier.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(images), classifier(images))
