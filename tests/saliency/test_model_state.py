"""EVET leaves the model as found (reliability 3-8, 20), resolves layers, and rejects bad input early."""

from __future__ import annotations

import logging
import random
import re

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from evet_lightning import EVET
from evet_lightning.models import SmallCNN
from evet_lightning.saliency.transforms import HorizontalFlip, Rotate, Scale

TRANSFORMS = [HorizontalFlip(), Rotate(10.0), Scale(0.9)]

#: (cam, backend): the native path, the pytorch-grad-cam path for a gradient CAM, native and library Score-CAM, the
#: library methods that find their own layers (FullGrad), need the graph twice (ShapleyCAM), wrap a base CAM
#: (FinerCAM, RefineCAM) or swap every ReLU (guided backpropagation), a CAM that swaps layers (AblationCAM), one
#: that draws from numpy's RNG (RandomCAM), and vanilla gradients.
PATHS = [
    ("GradCAM", "auto"),
    ("GradCAMPlusPlus", "auto"),
    ("GradCAM", "pytorch-grad-cam"),
    ("ScoreCAM", "auto"),
    ("ScoreCAM", "pytorch-grad-cam"),
    ("FasterScoreCAM", "auto"),
    ("FullGrad", "auto"),
    ("ShapleyCAM", "auto"),
    ("FinerCAM", "auto"),
    ("RefineCAM", "auto"),
    ("GuidedBackpropReLUModel", "auto"),
    ("GuidedGradCAM", "auto"),
    ("AblationCAM", "auto"),
    ("RandomCAM", "auto"),
    ("Gradient", "auto"),
]
PATH_IDS = [f"{cam}-{backend}" for cam, backend in PATHS]


class StatefulCNN(nn.Module):
    """Two Conv-BN-ReLU blocks, dropout and a linear head; ``fail_on`` makes the head raise on that call."""

    def __init__(self, fail_on: int | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(6, 3)
        self.fail_on = fail_on
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.body(self.stem(images))
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom: the head failed")
        return self.fc(self.dropout(self.pool(features).flatten(1)))


def _prepared_model(fail_on: int | None = None) -> StatefulCNN:
    """Train mode with one BatchNorm frozen in eval, some grads set, some None, some params frozen, user hooks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = StatefulCNN()
        model.train()
        model.stem[1].eval()  # a BatchNorm frozen on purpose
        model(torch.randn(4, 3, 12, 12)).sum().backward()  # moves body's running stats, sets every .grad
    model.stem[0].weight.grad = None
    model.fc.bias.grad = None
    model.stem[0].bias.requires_grad_(False)
    model.calls, model.fail_on = 0, fail_on
    model.body.register_forward_hook(lambda module, inputs, output: None)
    model.fc.register_forward_pre_hook(lambda module, inputs: None)
    model.fc.register_full_backward_hook(lambda module, grad_input, grad_output: None)
    return model


def _snapshot(model: nn.Module) -> dict:
    return {
        "training": [(name, module.training) for name, module in model.named_modules()],
        "modules": [(name, id(module)) for name, module in model.named_modules()],
        "state": {name: value.clone() for name, value in model.state_dict().items()},
        "buffers": [(name, id(buffer)) for name, buffer in model.named_buffers()],
        "grads": [(name, p.grad, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "hooks": [
            (name, list(m._forward_hooks), list(m._forward_pre_hooks), list(m._backward_hooks))
            for name, m in model.named_modules()
        ],
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),  # noqa: NPY002 (the legacy global RNG is what we guard)
        "python_rng": random.getstate(),
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert after["modules"] == before["modules"]
    assert after["state"].keys() == before["state"].keys()
    assert after["buffers"] == before["buffers"]  # the same tensor objects (an optimizer or EMA may hold them)
    for name, value in before["state"].items():
        assert after["state"][name].dtype == value.dtype, name
        assert torch.equal(after["state"][name], value), name  # bit-identical, incl. num_batches_tracked
    for (name, grad_before, values), (_, grad_after, _) in zip(before["grads"], after["grads"], strict=True):
        if grad_before is None:
            assert grad_after is None, name
        else:
            assert grad_after is grad_before, name  # the same tensor object (an optimizer may hold it) ...
            assert torch.equal(grad_after, values), name  # ... with the same values
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["grad_enabled"] == before["grad_enabled"]
    assert after["inference_mode"] == before["inference_mode"]
    assert torch.equal(after["torch_rng"], before["torch_rng"])
    assert np.array_equal(after["numpy_rng"], before["numpy_rng"])
    assert after["python_rng"] == before["python_rng"]


def _evet(model: nn.Module, cam: str = "GradCAM", backend: str = "auto", **kwargs) -> EVET:
    layers = None if cam == "Gradient" else "body"
    return EVET(model, target_layers=layers, cam=cam, transforms=TRANSFORMS, backend=backend, **kwargs)


def _images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("cam", "backend"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("use_targets", [True, False])
def test_model_state_is_restored(cam, backend, use_targets):
    model = _prepared_model()
    assert model.training and not model.stem[1].training and model.body[1].training
    before = _snapshot(model)
    result = _evet(model, cam, backend, max_batch_size=5)(_images(), torch.tensor([0, 1, 2]) if use_targets else None)
    assert torch.isfinite(result.saliency).all()
    _assert_unchanged(model, before)


@pytest.mark.parametrize(("cam", "backend"), PATHS, ids=PATH_IDS)
def test_model_state_is_restored_when_the_model_raises_half_way(cam, backend):
    for fail_on in (1, 2, 4):
        model = _prepared_model(fail_on=fail_on)
        before = _snapshot(model)
        with pytest.raises(RuntimeError, match="boom"):
            _evet(model, cam, backend, max_batch_size=4)(_images(), None)
        assert model.calls == fail_on
        _assert_unchanged(model, before)
        model.fail_on = None
        model(_images())  # the model still works afterwards


class SharedLayerCNN(nn.Module):
    """A stem and one Conv-BN block applied twice: a CAM cannot tell which of its two outputs to explain."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.shared = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.shared(torch.relu(self.shared(self.stem(images))))
        return self.fc(features.mean(dim=(2, 3)))


@pytest.mark.parametrize("backend", ["auto", "pytorch-grad-cam"])
def test_model_state_is_restored_with_a_reused_target_layer(backend):
    torch.manual_seed(0)  # unseeded, one draw of weights in a full run gave a map without its maximum at 1.0
    model = SharedLayerCNN().train()
    model.stem[1].eval()
    model(_images()).sum().backward()
    model.fc.weight.grad = None
    before = _snapshot(model)
    result = EVET(model, target_layers="shared", transforms=TRANSFORMS, backend=backend)(_images())
    assert torch.isfinite(result.saliency).all() and float(result.original.max()) == 1.0
    _assert_unchanged(model, before)


class CountingCNN(StatefulCNN):
    """Counts its forward passes in a buffer and replaces another buffer's tensor on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("forward_calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_mean", torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        self.last_mean = images.detach().mean()  # a new tensor object in the module's buffers
        return super().forward(images)


@pytest.mark.parametrize(("cam", "backend"), PATHS, ids=PATH_IDS)
def test_buffers_changed_by_forward_are_restored(cam, backend):
    probe = CountingCNN().eval()
    last_mean = probe.last_mean
    probe(_images())  # what the guard must undo: a forward in eval mode changes both buffers
    assert int(probe.forward_calls) == 1 and probe.last_mean is not last_mean
    model = CountingCNN().eval()
    before = _snapshot(model)
    result = _evet(model, cam, backend)(_images(), None)
    assert torch.isfinite(result.saliency).all()
    _assert_unchanged(model, before)
    assert int(model.forward_calls) == 0


class QATNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.fc = nn.Linear(6, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.dequant(self.body(self.quant(images)))
        return self.fc(features.mean(dim=(2, 3)))


def _qat_model() -> QATNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = QATNet()
        model.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
        torch.ao.quantization.prepare_qat(model.train(), inplace=True)
        model(torch.randn(4, 3, 12, 12))  # observers have statistics, as after some training steps
    return model


_QAT_DEPRECATED = pytest.mark.filterwarnings(
    "ignore:torch.ao.quantization is deprecated:DeprecationWarning", "ignore:Please use quant_min:UserWarning"
)


@_QAT_DEPRECATED
@pytest.mark.filterwarnings("ignore::RuntimeWarning:pytorch_grad_cam")  # AblationCAM divides by a 0 score of a QAT head
@pytest.mark.parametrize(("cam", "backend"), PATHS, ids=PATH_IDS)
def test_qat_observers_are_restored(cam, backend):
    model = _qat_model()
    probe = _qat_model().eval()
    before_probe = _snapshot(probe)
    probe(3 * _images())  # FakeQuantize observes in eval mode too: scale, zero_point, min/max change
    changed = [
        name for name, value in probe.state_dict().items() if not torch.equal(value, before_probe["state"][name])
    ]
    assert any("activation_post_process" in name for name in changed)
    before = _snapshot(model)
    layers = None if cam == "Gradient" else "body"
    result = EVET(model, target_layers=layers, cam=cam, transforms=TRANSFORMS, backend=backend)(3 * _images())
    assert torch.isfinite(result.saliency).all()
    _assert_unchanged(model, before)


@_QAT_DEPRECATED
def test_auto_detection_leaves_qat_observers_as_found():
    model = _qat_model()
    before = _snapshot(model)
    assert EVET(model, transforms=TRANSFORMS).resolve_target_layers(3 * _images()) == ["body"]
    _assert_unchanged(model, before)


def test_saliency_is_computed_in_eval_mode():
    model = _prepared_model()
    images = _images()
    in_train_mode = _evet(model)(images)
    model.eval()
    in_eval_mode = _evet(model)(images)
    assert torch.equal(in_train_mode.saliency, in_eval_mode.saliency)
    assert torch.equal(in_train_mode.view_scores, in_eval_mode.view_scores)


def test_model_with_all_parameters_frozen():
    model = _prepared_model().requires_grad_(False)
    before = _snapshot(model)
    result = _evet(model)(_images())
    expected = _evet(_prepared_model())(_images())
    torch.testing.assert_close(result.saliency, expected.saliency)
    assert float(result.original.max()) == 1.0
    _assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("cam", "backend"), [("GradCAM", "auto"), ("GradCAM", "pytorch-grad-cam"), ("Gradient", "auto")]
)
@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_works_under_inference_mode_and_no_grad(cam, backend, context):
    model = _prepared_model()
    images, targets = _images(), torch.tensor([2, 0, 1])
    expected = _evet(model, cam, backend)(images, targets)
    manager = torch.inference_mode() if context == "inference_mode" else torch.no_grad()
    with manager:
        inner_images = images.clone()  # an inference tensor under inference_mode
        before = _snapshot(model)
        result = _evet(model, cam, backend)(inner_images, targets)
        _assert_unchanged(model, before)
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (context == "inference_mode")
    assert torch.equal(result.saliency, expected.saliency)
    assert torch.equal(result.original, expected.original)


def test_auto_detects_layer4_on_resnet18(caplog):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=3)
    evet = EVET(model, transforms=[HorizontalFlip()])
    assert evet.target_layer_names is None
    with caplog.at_level(logging.INFO, logger="evet_lightning"):
        result = evet(torch.randn(1, 3, 64, 64))  # layer4 is 2x2 here (at 32x32 it is 1x1: no spatial map)
    assert evet.target_layer_names == ["layer4"]
    assert "'layer4'" in caplog.text
    assert result.saliency.shape == (1, 64, 64)


def test_auto_detects_last_conv_block_on_small_cnn(caplog):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SmallCNN(num_classes=3, width=4).eval()
    evet = EVET(model, transforms=[HorizontalFlip()])
    with caplog.at_level(logging.INFO, logger="evet_lightning"):
        names = evet.resolve_target_layers(torch.randn(1, 3, 32, 32))
    # `features` ends with block4, so both name the same output: the last conv block's.
    assert names in (["features"], ["features.block4"])
    assert repr(names[0]) in caplog.text
    explicit = EVET(model, target_layers="features.block4", transforms=[HorizontalFlip()])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(evet(images).saliency, explicit(images).saliency)


def test_model_without_spatial_layer_raises_clear_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match=r"4-D spatial output.*cam='Gradient'"):
        EVET(mlp)(torch.randn(2, 3, 8, 8))
    # The message points to the way out, and that way works.
    gradient = EVET(mlp, cam="Gradient", transforms=[HorizontalFlip()])(torch.randn(2, 3, 8, 8))
    assert gradient.saliency.shape == (2, 8, 8)


def test_unknown_layer_name_raises_value_error_naming_it():
    with pytest.raises(ValueError, match=re.escape("'body.7'")):
        EVET(_prepared_model(), target_layers="body.7")
    with pytest.raises(ValueError, match=r"'bdy'.*did you mean 'body'"):
        EVET(_prepared_model(), target_layers=["stem", "bdy"])
    with pytest.raises(ValueError, match="`target_layers`"):
        EVET(_prepared_model(), target_layers=nn.Conv2d(3, 3, 1))  # not part of the model


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"cam": "NoSuchCAM"}, "cam"),
        ({"transforms": []}, "transforms"),
        ({"transforms": [HorizontalFlip(), "flip"]}, "transforms"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 2.5}, "max_batch_size"),
        ({"baseline": "grey"}, "baseline"),
        ({"baseline": 3}, "baseline"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_constructor_rejects_bad_configuration(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        EVET(_prepared_model(), target_layers="body", **kwargs)


@pytest.mark.parametrize(
    ("cam", "backend"), [("GradCAM", "auto"), ("GradCAM", "pytorch-grad-cam"), ("ScoreCAM", "auto")]
)
@pytest.mark.parametrize(
    "targets",
    [
        torch.tensor([0, 1]),
        torch.tensor([0, 1, 2, 0]),
        torch.tensor([[0, 1, 2]]),
        torch.tensor([0.0, 1.0, 2.0]),
        torch.tensor([True, False, True]),
        [0, 1, 2],
        torch.tensor([0, 3, 1]),
        torch.tensor([0, -1, 1]),
    ],
    ids=["short", "long", "2-D", "float", "bool", "list", "too-large", "negative"],
)
def test_bad_targets_raise_value_error(cam, backend, targets):
    model = _prepared_model()
    before = _snapshot(model)
    evet = _evet(model, cam, backend)
    with pytest.raises(ValueError, match="`targets`"):
        evet(_images(), targets)
    _assert_unchanged(model, before)
