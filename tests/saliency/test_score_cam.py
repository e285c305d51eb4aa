"""Native Score-CAM equals pytorch-grad-cam's ScoreCAM; Faster-Score-CAM scores the k highest-variance maps."""

from __future__ import annotations

import pytest
import pytorch_grad_cam
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from evet_lightning import EVET
from evet_lightning.evaluation.names import parse_methods
from evet_lightning.saliency.score_cam import FASTER_SCORE_CAM_CHANNELS, ScoreCAM
from evet_lightning.saliency.transforms import HorizontalFlip
from tests._helpers.models import tiny_cnn


def _images(count: int = 3, height: int = 16, width: int = 12) -> torch.Tensor:
    return torch.randn(count, 3, height, width, generator=torch.Generator().manual_seed(11))


def _library(model, layers, images, targets):
    cam = pytorch_grad_cam.ScoreCAM(model, layers)
    try:
        cam_targets = None if targets is None else [ClassifierOutputTarget(int(k)) for k in targets]
        return torch.from_numpy(cam(images.clone(), cam_targets))
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize(
    ("indices", "use_targets", "batch_size"), [([5], True, 16), ([5], False, 3), ([0, 5], True, 5)]
)
def test_native_score_cam_equals_pytorch_grad_cam(indices, use_targets, batch_size, capsys):
    model = tiny_cnn(seed=1, width=6)
    layers = [model.features[i] for i in indices]
    images = _images()
    targets = torch.tensor([0, 2, 1]) if use_targets else None
    native = ScoreCAM(layers, batch_size=batch_size)(model, images, targets)
    expected = _library(model, layers, images, targets)
    capsys.readouterr()
    assert float(native.maps.max()) > 0.5
    assert float((native.maps - expected).abs().max()) < 1e-4
    torch.testing.assert_close(native.logits, model(images))
    assert all(param.grad is None for param in model.parameters())


def _faster_reference(model, layer, images, targets, k):
    """Faster-Score-CAM written from its definition, one image and one channel at a time."""
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output.detach().clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    maps = []
    for image, activation, target in zip(images, captured["a"], targets, strict=True):
        variance = torch.stack([channel.var() for channel in activation])
        chosen = sorted(range(len(variance)), key=lambda c: -float(variance[c]))[:k]
        scores = []
        for c in chosen:
            up = F.interpolate(activation[c][None, None], size=image.shape[-2:], mode="bilinear", align_corners=True)[0]
            up = (up - up.min()) / (up.max() - up.min() + 1e-8)
            with torch.no_grad():
                scores.append(model((image * up)[None])[0, target])
        weights = torch.stack(scores).softmax(dim=0)
        cam = sum(w * activation[c] for w, c in zip(weights, chosen, strict=True)).clamp_min(0)
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        cam = F.interpolate(cam[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        cam = cam - cam.min()
        maps.append(cam / (1e-7 + cam.max()))
    return torch.stack(maps)


@pytest.mark.parametrize("k", [1, 3])
def test_faster_score_cam_uses_the_highest_variance_maps(k):
    model = tiny_cnn(seed=2, width=4)  # 8 channels at features.5
    images = _images()
    targets = torch.tensor([1, 0, 2])
    faster = ScoreCAM([model.features[5]], max_channels=k, batch_size=4)(model, images, targets).maps
    expected = _faster_reference(model, model.features[5], images, targets, k)
    assert float((faster - expected).abs().max()) < 1e-5
    every = ScoreCAM([model.features[5]])(model, images, targets).maps
    assert float((faster - every).abs().max()) > 1e-3  # fewer channels really change the map
    all_channels = ScoreCAM([model.features[5]], max_channels=8)(model, images, targets).maps
    torch.testing.assert_close(all_channels, every)


def test_names_resolve_to_native_and_the_class_to_the_library(capsys):
    model = tiny_cnn(seed=3, width=6)
    images = _images()
    by_name = EVET(model, target_layers="features.5", cam="ScoreCAM")
    by_class = EVET(model, target_layers="features.5", cam=pytorch_grad_cam.ScoreCAM)
    forced = EVET(model, target_layers="features.5", cam="ScoreCAM", backend="pytorch-grad-cam")
    faster = EVET(model, target_layers="features.5", cam="FasterScoreCAM")
    assert by_name._native and faster._native and not by_class._native and not forced._native
    assert by_name.cam_name == by_class.cam_name == forced.cam_name == "ScoreCAM"
    assert FASTER_SCORE_CAM_CHANNELS == 10
    targets = torch.tensor([0, 1, 2])
    native = by_name.explain(images, targets).maps
    assert float((native - by_class.explain(images, targets).maps).abs().max()) < 1e-4
    assert float((native - forced.explain(images, targets).maps).abs().max()) < 1e-4
    # 12 channels: the default k = 10 leaves two out; cam_kwargs sets k.
    assert float((faster.explain(images, targets).maps - native).abs().max()) > 1e-4
    every = EVET(model, target_layers="features.5", cam="FasterScoreCAM", cam_kwargs={"max_channels": 12})
    torch.testing.assert_close(every.explain(images, targets).maps, native)
    capsys.readouterr()
    with pytest.raises(ValueError, match="FasterScoreCAM"):
        EVET(model, target_layers="features.5", cam="FasterScoreCAM", backend="pytorch-grad-cam")
    assert parse_methods("GradCAM,FasterScoreCAM") == ["GradCAM", "FasterScoreCAM"]


def test_native_score_cam_in_the_whole_pipeline():
    model = tiny_cnn(seed=4)
    images = _images(2, 16, 16)
    for cam in ("ScoreCAM", "FasterScoreCAM"):
        result = EVET(model, target_layers="features.5", cam=cam, transforms=[HorizontalFlip()])(images)
        assert torch.isfinite(result.saliency).all() and float(result.original.amax(dim=(1, 2)).min()) > 0.5
        torch.testing.assert_close(result.targets, model(images).argmax(dim=1))
