"""Target layers: explicit specs and the auto-detection rules, on tiny models built for each rule."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from evet_lightning.saliency.layers import check_target_layers, find_last_spatial_layer, resolve_target_layers
from tests._helpers.models import shared_activation_cnn, tiny_cnn, tiny_vit


@pytest.mark.parametrize("spec", [3, 2.5, {"features"}, b"features", object()])
def test_target_layers_of_another_type_is_a_value_error_naming_it(spec):
    with pytest.raises(ValueError, match="`target_layers`"):
        check_target_layers(tiny_cnn(), spec)
    with pytest.raises(ValueError, match="`target_layers`"):
        resolve_target_layers(tiny_cnn(), spec, torch.randn(1, 3, 8, 8))


def test_explicit_target_layers_resolve_to_names_and_modules():
    model = tiny_cnn()
    assert check_target_layers(model, ("features.0", model.features[5])) == [
        ("features.0", model.features[0]),
        ("features.5", model.features[5]),
    ]


def _detect(model: nn.Module, size: int | tuple[int, int], caplog: pytest.LogCaptureFixture, **kwargs) -> str:
    height, width = (size, size) if isinstance(size, int) else size
    with caplog.at_level(logging.INFO, logger="evet_lightning"):
        name, module = find_last_spatial_layer(model, torch.randn(1, 3, height, width), **kwargs)
    assert module is model.get_submodule(name)
    assert f"target layer {name!r}" in caplog.text
    return name


def test_detection_writes_no_parameter_grad(caplog):
    model = tiny_cnn()
    assert _detect(model, 16, caplog) == "features.5"
    assert all(param.grad is None for param in model.parameters())


class UpsamplingPoolCNN(nn.Module):
    """VGG below 224 px: the features end with a max pool and an adaptive pool blows the 4 x 4 map up to 7 x 7."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Linear(4 * 49, 3)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(images)).flatten(1))


def test_a_pooling_layer_is_never_the_target(caplog):
    assert _detect(UpsamplingPoolCNN(), 8, caplog) == "features.1"


class InceptionLike(nn.Module):
    """A block of two concatenated branches at 4 x 4, then a reduction block whose branches end at 1 x 1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.mixed = _Branches(nn.Conv2d(4, 3, 1), nn.Conv2d(4, 5, 3, padding=1))
        self.reduce = _Branches(nn.Conv2d(8, 3, 4), nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 5, 4)))
        self.fc = nn.Linear(8, 3)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.reduce(self.mixed(self.stem(images))).mean(dim=(2, 3)))


class _Branches(nn.Module):
    def __init__(self, left: nn.Module, right: nn.Module) -> None:
        super().__init__()
        self.left, self.right = left, right

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.left(x), self.right(x)], dim=1)


def test_branch_outputs_are_never_the_target_and_single_position_maps_are_reported(caplog):
    # `reduce.right.0` is the last 4 x 4 map, but only one branch carries it; `mixed` is the last full block.
    name = _detect(InceptionLike(), 8, caplog)
    assert name == "mixed"
    assert "single position" in caplog.text and "'reduce'" in caplog.text
    assert any(record.levelno == logging.WARNING for record in caplog.records)


def test_a_coarse_map_is_reported_at_warning(caplog):
    assert _detect(tiny_cnn(), 4, caplog) == "features.5"  # 2 x 2
    assert "2x2 map" in caplog.text
    caplog.clear()
    assert _detect(tiny_cnn(), 16, caplog) == "features.5"  # 8 x 8
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_reused_module_is_named_at_its_last_call(caplog):
    assert _detect(shared_activation_cnn(), 16, caplog) == "body.act"
    # When its last call is on the pooled vector, its 8 x 8 call cannot be targeted: the explainers would use
    # the last one. The map before it is.
    assert _detect(shared_activation_cnn(vector_last=True), 16, caplog) == "body.head"


@pytest.mark.parametrize("prefix", [0, 1])
def test_vit_target_is_the_last_blocks_first_norm(prefix, caplog):
    assert _detect(tiny_vit(prefix_tokens=prefix), 16, caplog) == "blocks.0.norm1"


def test_vit_with_a_zero_head_still_gets_its_norm1(caplog):
    model = tiny_vit()
    nn.init.zeros_(model.head.weight)  # as torchvision initialises its ViT head
    assert _detect(model, 16, caplog) == "blocks.0.norm1"


class SwinLike(nn.Module):
    """Patch embedding, a channels-last stage, a final LayerNorm, a permute back and global pooling."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.stage = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.permute = _Permute()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(dim, 3)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.patch_embed(images).permute(0, 2, 3, 1)
        return self.head(self.pool(self.permute(self.norm(self.stage(tokens)))).flatten(1))


class _Permute(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


def test_a_final_layer_norm_belongs_to_the_head(caplog):
    # `norm` and `permute` carry the same map as `stage`; the stage is the target.
    assert _detect(SwinLike(), (16, 24), caplog) == "stage"
