"""EVETSettings: every option validated once (ValueError naming it), normalized, frozen; the auto chunk size."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from evet_lightning import EVET
from evet_lightning.functional.alpha import DEFAULT_ALPHA_GRID, DEFAULT_ALPHA_OBJECTIVE
from evet_lightning.saliency.settings import (
    AUTO_CPU_PIXELS,
    AUTO_MAX_BATCH_SIZE,
    EVETSettings,
    resolve_max_batch_size,
)
from evet_lightning.saliency.transforms import HorizontalFlip, Rotate, paper_transforms
from tests._helpers.models import tiny_cnn


def test_defaults():
    settings = EVETSettings()
    assert settings.cam == "GradCAM" and settings.target_layers is None
    assert settings.transforms == tuple(paper_transforms()) and len(settings.transforms) == 7
    assert settings.threshold == 0.99
    assert settings.alpha == "auto"
    assert settings.alpha_grid == DEFAULT_ALPHA_GRID == (0.0, 0.1, 0.25, 0.5, 1.0)
    assert settings.alpha_objective == DEFAULT_ALPHA_OBJECTIVE == "faithful_boost"
    assert settings.baseline == "black" and settings.normalization is None
    assert settings.max_batch_size == "auto" and settings.backend == "auto"
    assert settings.reshape_transform is None and settings.output_transform is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("threshold", True),
        ("threshold", 0),
        ("threshold", 0.0),
        ("threshold", 1.5),
        ("threshold", -0.5),
        ("threshold", math.nan),
        ("threshold", "0.9"),
        ("alpha", -1),
        ("alpha", -0.1),
        ("alpha", "fast"),
        ("alpha", "Auto"),
        ("alpha", math.nan),
        ("alpha", math.inf),
        ("alpha", True),
        ("alpha", None),
        ("alpha", torch.tensor([0.5, 1.0])),
        ("alpha_grid", []),
        ("alpha_grid", [0.5, 0.1]),
        ("alpha_grid", [0.1, 0.1]),
        ("alpha_grid", [-1.0, 0.0]),
        ("alpha_grid", [0.0, math.nan]),
        ("alpha_grid", [False, 1.0]),
        ("alpha_grid", "0.5"),
        ("alpha_grid", 0.5),
        ("alpha_objective", "x"),
        ("alpha_objective", 3),
        ("alpha_objective", None),
        ("max_batch_size", 0),
        ("max_batch_size", -2),
        ("max_batch_size", True),
        ("max_batch_size", 1.5),
        ("max_batch_size", 2.0),
        ("max_batch_size", "fast"),
        ("max_batch_size", None),
        ("backend", "x"),
        ("backend", None),
        ("target_layers", 3),
        ("target_layers", [3]),
        ("target_layers", []),
        ("target_layers", ["features.5", 3.0]),
        ("transforms", []),
        ("transforms", ()),
        ("transforms", [HorizontalFlip(), "flip"]),
        ("transforms", [lambda images: images]),
        ("transforms", HorizontalFlip()),
        ("transforms", "flip"),
        ("normalization", "imagenet"),
        ("normalization", (0.5,)),
        ("normalization", ((0.5,), (0.2,), (0.1,))),
        ("normalization", 0.5),
        ("normalization", ([], [0.2])),
        ("normalization", ([[0.5, 0.5], [0.5]], [0.2])),
        ("normalization", (["a"], [0.2])),
        ("normalization", ([0.5], [0.0])),
        ("normalization", ([0.5, 0.5, 0.5], [0.2, 0.0, 0.2])),
        ("normalization", ([0.5], [-0.2])),
        ("normalization", ([math.nan], [0.2])),
        ("normalization", ([0.5], [math.inf])),
        ("baseline", "white"),
        ("baseline", 3),
        ("reshape_transform", 3),
        ("output_transform", 3),
        ("output_transform", "logits"),
        ("cam", "NoSuchCAM"),
        ("cam", 3),
    ],
)
def test_bad_argument_raises_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        EVETSettings(**{name: value})


@pytest.mark.parametrize(("name", "value"), [("threshold", 0), ("alpha", "fast"), ("max_batch_size", 0), ("cam", "X")])
def test_engine_raises_the_same_error(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        EVET(tiny_cnn(), **{name: value})


def test_native_backend_rejects_a_cam_without_native_implementation():
    with pytest.raises(ValueError, match="native"):
        EVETSettings(cam="EigenCAM", backend="native")


def test_numpy_and_tensor_scalars_are_accepted_and_normalized():
    settings = EVETSettings(
        alpha=np.float32(0.3), max_batch_size=np.int64(4), threshold=np.float64(0.5), alpha_grid=[np.float32(0.5)]
    )
    assert type(settings.alpha) is float and settings.alpha == float(np.float32(0.3))
    assert type(settings.max_batch_size) is int and settings.max_batch_size == 4
    assert type(settings.threshold) is float and settings.threshold == 0.5
    assert settings.alpha_grid == (0.5,) and type(settings.alpha_grid[0]) is float
    tensors = EVETSettings(alpha=torch.tensor(0.25), max_batch_size=torch.tensor(3), threshold=torch.tensor(1.0))
    assert type(tensors.alpha) is float and tensors.alpha == 0.25
    assert type(tensors.max_batch_size) is int and tensors.max_batch_size == 3
    assert type(tensors.threshold) is float and tensors.threshold == 1.0
    integer = EVETSettings(alpha=2, threshold=1)
    assert type(integer.alpha) is float and integer.alpha == 2.0
    assert type(integer.threshold) is float and integer.threshold == 1.0


def test_sequences_become_tuples():
    settings = EVETSettings(
        transforms=[HorizontalFlip(), Rotate(10.0)], alpha_grid=[0, 0.5], target_layers=["features.5"]
    )
    assert settings.transforms == (HorizontalFlip(), Rotate(10.0))
    assert settings.alpha_grid == (0.0, 0.5)
    assert settings.target_layers == ("features.5",)
    assert EVETSettings(alpha_grid=torch.tensor([0.0, 0.25])).alpha_grid == (0.0, 0.25)


def test_valid_values_pass():
    def objective(curve):
        return curve.average_drop

    settings = EVETSettings(
        cam="GradCAMPlusPlus",
        threshold=1.0,
        alpha=0,
        alpha_objective=objective,
        baseline="blur",
        normalization=((0.5, 0.4, 0.3), (0.2, 0.25, 0.5)),
        max_batch_size=1,
        backend="pytorch-grad-cam",
        reshape_transform=lambda activation: activation,
        output_transform=lambda output: output,
    )
    assert settings.alpha == 0.0 and settings.alpha_objective is objective
    assert settings.max_batch_size == 1 and settings.backend == "pytorch-grad-cam"
    assert EVETSettings(cam="pytorch_grad_cam.GradCAM").cam == "pytorch_grad_cam.GradCAM"
    assert EVETSettings(baseline=torch.zeros(3, 1, 1)).baseline.shape == (3, 1, 1)
    assert EVETSettings(normalization=([0.5], [0.2])).normalization == ([0.5], [0.2])


def test_evet_kwargs_round_trip_into_evet():
    settings = EVETSettings(
        cam="GradCAM",
        target_layers="features.5",
        transforms=[HorizontalFlip()],
        threshold=0.9,
        alpha="auto",
        alpha_grid=(0.0, 0.5, 2.0),
        alpha_objective="average_drop",
        normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        max_batch_size=np.int64(5),
    )
    kwargs = settings.evet_kwargs()
    assert set(kwargs) == {field.name for field in dataclasses.fields(EVETSettings)}
    model = tiny_cnn(seed=3)
    evet = EVET(model, **kwargs)
    assert evet.settings == settings
    assert EVETSettings(**evet.settings.evet_kwargs()) == settings
    assert evet.alpha_grid == (0.0, 0.5, 2.0) and evet.alpha_objective == "average_drop"
    assert evet.threshold == 0.9 and evet.max_batch_size == 5 and evet.transforms == [HorizontalFlip()]
    assert evet.num_views == 2
    from_settings = EVET.from_settings(model, settings)
    assert from_settings.settings == settings
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    direct = EVET(
        model,
        target_layers="features.5",
        transforms=[HorizontalFlip()],
        threshold=0.9,
        alpha_grid=(0.0, 0.5, 2.0),
        alpha_objective="average_drop",
        normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        max_batch_size=5,
    )(images)
    result = from_settings(images)
    assert result.alpha == direct.alpha
    assert torch.equal(result.saliency, direct.saliency)
    assert torch.equal(result.alpha_scores, direct.alpha_scores)


def test_replace_validates_again():
    settings = EVETSettings(alpha=0.25)
    assert settings.replace(alpha=0.5).alpha == 0.5
    assert settings.replace(alpha=0.5) != settings
    with pytest.raises(ValueError, match="`alpha`"):
        settings.replace(alpha=-1)


def test_settings_are_frozen():
    settings = EVETSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.alpha = 0.3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_batch_size = 4  # type: ignore[misc]
    assert settings.alpha == "auto"


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (224, 224, 8),
        (48, 48, 64),
        (1000, 1000, 1),
        (8, 8, 64),
        (100, 300, 13),  # 401408 // 30000
        (224, 112, 16),
        (633, 634, 1),  # 401322 pixels: one image fits
        (634, 634, 1),  # 401956 > 8 x 224 x 224: still at least 1
    ],
)
def test_resolve_max_batch_size_auto_on_cpu(height, width, expected):
    images = torch.empty(1, 1, height, width)
    assert AUTO_CPU_PIXELS == 8 * 224 * 224 and AUTO_MAX_BATCH_SIZE == 64
    assert resolve_max_batch_size("auto", images) == expected


def test_resolve_max_batch_size_auto_off_cpu_and_explicit():
    assert resolve_max_batch_size("auto", torch.empty(1, 3, 1000, 1000, device="meta")) == 64
    assert resolve_max_batch_size(5, torch.empty(1, 3, 224, 224)) == 5
    assert resolve_max_batch_size(1000, torch.empty(1, 3, 8, 8)) == 1000
    assert type(resolve_max_batch_size(3, torch.empty(1, 3, 8, 8))) is int
