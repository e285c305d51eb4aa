"""Every pytorch-grad-cam method through EVET equals the library called directly (issue 15 bugs 1-2, issue 17).

Each reference below is pytorch-grad-cam used as its README shows, on a fresh copy of the same model, with the same
inputs and classes; EVET's map is that of view 0 (``EVET.explain``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_grad_cam
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from evet_lightning import EVET
from evet_lightning.saliency.grad_cam_adapter import available_cam_classes
from evet_lightning.saliency.transforms import HorizontalFlip, Rotate
from tests._helpers.models import tiny_cnn


def one_conv() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def two_conv() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()


def resnet18() -> nn.Module:
    torch.manual_seed(5)
    return torchvision.models.resnet18(num_classes=5).eval()


#: (model factory, target layer, image size)
MODELS = {
    "one-conv": (one_conv, "1", 16),
    "two-conv": (two_conv, "3", 16),
    "tiny-cnn": (lambda: tiny_cnn(seed=2), "features.5", 16),
    "resnet18": (resnet18, "layer4", 64),
}


def _images(size: int, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(size))


def _scale(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(maps.shape[0], -1)
    flat = flat - flat.min(axis=1, keepdims=True)
    return (flat / (1e-7 + flat.max(axis=1, keepdims=True))).reshape(maps.shape)


def _library(method: str, model: nn.Module, layers: list[nn.Module], images: torch.Tensor, targets, kwargs):
    """pytorch-grad-cam called directly; ``targets`` a list of class indices."""
    cam_targets = [ClassifierOutputTarget(k) for k in targets]
    if method in ("GuidedBackpropReLUModel", "GuidedGradCAM"):
        # Grad-CAM first: guided backpropagation replaces every ReLU (the target layer may be one) by a new one.
        cam = pytorch_grad_cam.GradCAM(model, layers)(images.clone(), cam_targets) if method == "GuidedGradCAM" else 1
        guided = pytorch_grad_cam.GuidedBackpropReLUModel(model)
        gb = np.stack([np.abs(guided(images[i : i + 1].clone(), k)).max(axis=-1) for i, k in enumerate(targets)])
        return _scale(gb) if method == "GuidedBackpropReLUModel" else _scale(_scale(gb) * cam)
    if method == "FinerCAM":
        return pytorch_grad_cam.FinerCAM(model, layers, **kwargs)(images.clone(), None)  # its own targets
    if method == "FullGrad":
        layers = []
    np.random.seed(0)  # noqa: NPY002 (RandomCAM draws from the global RNG)
    cam = getattr(pytorch_grad_cam, method)(model, layers, **kwargs)
    return cam(images.clone(), cam_targets)


#: The methods and the options they are run with here (SESS: 2 scales instead of 12, for time).
METHODS = {name: {} for name in sorted(available_cam_classes())} | {
    "FinerCAM": {},
    "RefineCAM": {},
    "SESS": {"num_scales": 2},
    "GuidedBackpropReLUModel": {},
    "GuidedGradCAM": {},
}
#: 1e-4 for the methods whose maps go through more floating point steps (issue 15 and 17), else 1e-5.
LOOSE = {"FullGrad", "ShapleyCAM", "ScoreCAM"}


def _compare(method: str, key: str, *, evet_cam: object = None, backend: str = "auto") -> float:
    factory, layer, size = MODELS[key]
    model = factory()
    images = _images(size)
    targets = None if method == "FinerCAM" else [0, 2]
    kwargs = METHODS.get(method, {})
    names = [layer]
    if method == "RefineCAM":  # it multiplies the maps of several layers
        names = ["layer3", "layer4"] if key == "resnet18" else ["features.1", "features.5"]
    options = {"cam_kwargs": kwargs} if kwargs else {}
    evet = EVET(model, target_layers=names, cam=evet_cam or method, backend=backend, **options)
    np.random.seed(0)  # noqa: NPY002 (RandomCAM draws from the global RNG)
    ours = evet.explain(images, None if targets is None else torch.tensor(targets)).maps
    reference = copy.deepcopy(model)
    layers = [dict(reference.named_modules())[name] for name in names]
    expected = torch.from_numpy(np.asarray(_library(method, reference, layers, images, targets or [], kwargs)))
    assert ours.shape == expected.shape == (2, size, size)
    # A real map (FEM's is all zeros on the random resnet18, on both sides; it is compared on the tiny CNN too).
    assert float(expected.max()) > 0.5 or method == "RandomCAM" or (method, key) == ("FEM", "resnet18")
    return float((ours - expected).abs().max())


@pytest.mark.parametrize("key", ["one-conv", "two-conv", "resnet18"])
@pytest.mark.parametrize("method", ["FullGrad", "ShapleyCAM"])
def test_fullgrad_and_shapleycam_equal_pytorch_grad_cam(method, key, capsys):
    # Issue 15: FullGrad's own bias layers (not the target layer) and ShapleyCAM's second derivative.
    assert _compare(method, key) < 1e-4
    assert "Warning" not in capsys.readouterr().out  # FullGrad is not handed layers it would ignore with a print


#: ScoreCAM and AblationCAM make 512 masked forward passes per image on resnet18 (seconds, in both the library and
#: EVET): they are compared on the tiny CNN here, native Score-CAM on resnet18 in test_score_cam.py.
CASES = [
    (method, key)
    for key in ("tiny-cnn", "resnet18")
    for method in sorted(METHODS)
    if not (key == "resnet18" and method in ("ScoreCAM", "AblationCAM"))
]


@pytest.mark.parametrize(("method", "key"), CASES)
def test_every_library_method_equals_pytorch_grad_cam(method, key):
    # "ScoreCAM" by name is native; the class runs the library.
    cam = pytorch_grad_cam.ScoreCAM if method == "ScoreCAM" else None
    assert _compare(method, key, evet_cam=cam) < (1e-4 if method in LOOSE else 1e-5)


@pytest.mark.parametrize("method", ["FinerCAM", "RefineCAM", "SESS", "GuidedBackpropReLUModel", "GuidedGradCAM"])
def test_new_library_methods_run_through_evet(method):
    model = tiny_cnn(seed=3)
    images = _images(16)
    kwargs = METHODS[method] or None
    result = EVET(model, target_layers="features.5", cam=method, cam_kwargs=kwargs, transforms=[HorizontalFlip()])(
        images
    )
    assert result.saliency.shape == (2, 16, 16) and torch.isfinite(result.saliency).all()
    assert float(result.original.amax(dim=(1, 2)).min()) > 0.5
    torch.testing.assert_close(result.targets, model(images).argmax(dim=1))


def test_wrappers_take_their_base_method_by_class_or_name():
    model = tiny_cnn(seed=4)
    images = _images(16)
    targets = torch.tensor([1, 2])
    by_name = EVET(
        model, target_layers="features.5", cam="SESS", cam_kwargs={"base_method": "HiResCAM", "num_scales": 2}
    )
    by_class = EVET(
        model,
        target_layers="features.5",
        cam="SESS",
        cam_kwargs={"base_method": pytorch_grad_cam.HiResCAM, "num_scales": 2},
    )
    grad_cam = EVET(model, target_layers="features.5", cam="SESS", cam_kwargs={"num_scales": 2})
    maps = by_name.explain(images, targets).maps
    torch.testing.assert_close(maps, by_class.explain(images, targets).maps)
    copied = copy.deepcopy(model)
    reference = pytorch_grad_cam.SESS(copied, [copied.features[5]], base_method=pytorch_grad_cam.HiResCAM, num_scales=2)
    expected = reference(images.clone(), [ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    assert float((maps - torch.from_numpy(expected)).abs().max()) < 1e-5
    assert float((maps - grad_cam.explain(images, targets).maps).abs().max()) > 1e-3  # the base really changed


@pytest.mark.parametrize(
    ("cam", "cam_kwargs", "match"),
    [
        ("SESS", {"num_scale": 2}, "num_scale"),
        ("GradCAM", {"base_method": "GradCAM"}, "base_method"),
        ("FinerCAM", {"base_method": "NoSuchCAM"}, "base_method"),
        ("FasterScoreCAM", {"max_channels": 0}, "max_channels"),
        ("ScoreCAM", {"k": 3}, "'k'"),
        ("Gradient", {"batch_size": 3}, "no `cam_kwargs`"),
        ("FinerCAM", [("alpha", 1)], "mapping"),
    ],
)
def test_bad_cam_kwargs_raise_at_construction(cam, cam_kwargs, match):
    with pytest.raises(ValueError, match=match):
        EVET(tiny_cnn(), target_layers="features.5", cam=cam, cam_kwargs=cam_kwargs)


def test_finer_cam_compares_the_fixed_class_with_its_most_similar_classes():
    # EVET fixes the class (decision 1); FinerCAM then contrasts it with the classes whose logits are closest.
    model = tiny_cnn(seed=5)
    images = _images(16)
    evet = EVET(model, target_layers="features.5", cam="FinerCAM", cam_kwargs={"alpha": 0.5})
    for target in (0, 1):
        ours = evet.explain(images, torch.tensor([target, target])).maps
        logits = model(images).detach().numpy()
        expected = []
        for row, image in zip(logits, images, strict=True):
            order = np.argsort(np.abs(row - row[target]))
            finer = pytorch_grad_cam.utils.model_targets.FinerWeightedTarget(
                target, [int(order[1]), int(order[2])], 0.5
            )
            copied = copy.deepcopy(model)
            cam = pytorch_grad_cam.GradCAM(copied, [copied.features[5]])
            expected.append(cam(image[None].clone(), [finer])[0])
        assert float((ours - torch.from_numpy(np.stack(expected))).abs().max()) < 1e-5


def test_pytorch_grad_cam_methods_in_the_whole_pipeline_are_finite():
    model = tiny_cnn(seed=6)
    images = _images(16)
    for cam in ("FullGrad", "ShapleyCAM"):
        result = EVET(model, target_layers="features.5", cam=cam, transforms=[HorizontalFlip(), Rotate(10.0)])(images)
        assert torch.isfinite(result.saliency).all() and float(result.original.amax(dim=(1, 2)).min()) > 0.5
