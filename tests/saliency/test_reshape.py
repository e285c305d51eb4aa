"""Reading target-layer outputs as feature maps: the reshape helpers, the layout rule, and its errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import pytorch_grad_cam
import torch
from torch import nn

from evet_lightning._model_state import model_state_guard
from evet_lightning.saliency.explainers import NativeCAM
from evet_lightning.saliency.grad_cam_adapter import GradCamLibraryExplainer
from evet_lightning.saliency.layers import find_last_spatial_layer
from evet_lightning.saliency.reshape import (
    ChannelsLastToMap,
    TokensToMap,
    infer_layout,
    swin_reshape_transform,
    to_feature_map,
    vit_reshape_transform,
)
from tests._helpers.models import tiny_vit


def _patch_tokens(batch: int, height: int, width: int, channels: int, prefix: int) -> torch.Tensor:
    """Tokens whose value encodes (sample, row, column, channel); prefix tokens are -1."""
    b, r, c, k = torch.meshgrid(
        torch.arange(batch), torch.arange(height), torch.arange(width), torch.arange(channels), indexing="ij"
    )
    patches = (1000 * b + 100 * r + 10 * c + k).float().reshape(batch, height * width, channels)
    return torch.cat([-torch.ones(batch, prefix, channels), patches], dim=1)


@pytest.mark.parametrize(("height", "width", "prefix"), [(3, 3, 1), (2, 4, 0), (4, 2, 2)])
def test_vit_reshape_transform_puts_patch_r_c_at_row_r_column_c(height, width, prefix):
    tokens = _patch_tokens(2, height, width, 5, prefix)
    square = height == width
    transform = vit_reshape_transform(None if square else height, None if square else width, prefix_tokens=prefix)
    feature_map = transform(tokens)
    assert feature_map.shape == (2, 5, height, width)
    b, k, r, c = 1, 3, height - 1, width - 1
    assert float(feature_map[b, k, r, c]) == 1000 * b + 100 * r + 10 * c + k
    assert float(feature_map.min()) >= 0  # the prefix tokens were dropped


def test_vit_reshape_transform_derives_the_missing_side():
    tokens = _patch_tokens(1, 2, 3, 4, 1)
    assert vit_reshape_transform(height=2)(tokens).shape == (1, 4, 2, 3)
    assert vit_reshape_transform(width=3)(tokens).shape == (1, 4, 2, 3)


def test_vit_reshape_transform_rejects_tokens_that_do_not_fit():
    with pytest.raises(ValueError, match="prefix"):
        vit_reshape_transform()(torch.zeros(1, 18, 4))  # 17 patches are no square grid
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        vit_reshape_transform()(torch.zeros(1, 4, 2, 2))


@pytest.mark.parametrize(
    "kwargs",
    [{"prefix_tokens": -1}, {"prefix_tokens": True}, {"prefix_tokens": 1.5}, {"height": 0}, {"width": 2.5}],
)
def test_vit_reshape_transform_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Expected `"):
        vit_reshape_transform(**kwargs)


def test_reshape_transforms_accept_numpy_integers_pickle_and_compare():
    transform = vit_reshape_transform(np.int64(2), np.int32(3), prefix_tokens=np.int64(1))
    assert transform == TokensToMap(2, 3, 1)
    assert pickle.loads(pickle.dumps(transform)) == transform
    assert pickle.loads(pickle.dumps(swin_reshape_transform())) == ChannelsLastToMap()


def test_swin_reshape_transform_moves_channels_first():
    channels_last = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(swin_reshape_transform()(channels_last), channels_last.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        swin_reshape_transform()(torch.zeros(2, 49, 96))


@pytest.mark.parametrize(
    ("shape", "image_size", "expected"),
    [
        ((2, 197, 768), (224, 224), "tokens (B, 1 + 14 x 14, C)"),
        ((2, 196, 768), (224, 224), "tokens (B, 14 x 14, C)"),
        ((2, 7, 7, 768), (224, 224), "channels last (B, 7, 7, C)"),
        ((2, 768, 7, 7), (224, 224), "channels first (B, C, 7, 7)"),
        ((2, 2048, 1, 1), (75, 75), "channels first (B, C, 1, 1)"),
        ((2, 1 + 4 * 6, 47), (64, 96), "tokens (B, 1 + 4 x 6, C)"),
        ((2, 512, 4, 5), (97, 130), "channels first (B, C, 4, 5)"),  # padded convolutions round up
        ((2, 768, 8, 11), (299, 400), "channels first (B, C, 8, 11)"),  # valid convolutions round down
        ((2, 2, 3, 96), (64, 96), "channels last (B, 2, 3, C)"),
        ((2, 17, 48), None, "tokens (B, 1 + 4 x 4, C)"),  # without the image size: square grids only
    ],
)
def test_layouts_that_are_unambiguous(shape, image_size, expected):
    assert infer_layout(shape, image_size=image_size).describe() == expected


@pytest.mark.parametrize(
    ("shape", "image_size"),
    [
        ((2, 18, 192), (64, 64)),  # DeiT-distilled: 2 prefix tokens and a 4 x 4 grid; no 0/1-prefix reading fits
        ((2, 6, 192), (32, 32)),  # 2 prefix tokens and 2 x 2: read as a 2 x 3 grid only if the image were 2:3
        ((2, 8, 8, 8), (64, 64)),  # a cube: channels first or last
        ((2, 197, 1024), (224, 224)),  # 1 + 14 x 14 tokens, or 197 channels on a 32 x 32 grid
        ((2, 768, 196), (224, 224)),  # tokens along dim 2 (an MLP-Mixer token-mixing output)
        ((8, 49, 96), (224, 224)),  # windows in the batch dimension (batch size 2)
        ((2, 512, 4, 6), None),  # non-square without the image size
        ((2, 3, 4), (64, 64)),
    ],
)
def test_ambiguous_or_unreadable_layouts_raise_and_point_to_reshape_transform(shape, image_size):
    with pytest.raises(ValueError, match="reshape_transform"):
        infer_layout(shape, image_size=image_size, batch_size=2)


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (nn.Conv2d(3, 8, 1), "channels_first"),
        (nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)), "channels_first"),
        (nn.LayerNorm(8), "channels_last"),
        (nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), "channels_last"),
    ],
)
def test_module_evidence_decides_a_cube(layer, expected):
    assert infer_layout((2, 8, 8, 8), layer, image_size=(64, 64)).kind == expected


def test_evidence_comes_from_the_nearest_ancestor_that_has_some():
    # A parameter-free GELU inside a transformer block: its parent has the LayerNorm over the channels.
    block = nn.Sequential(nn.LayerNorm(1024), nn.Linear(1024, 1024), nn.GELU())
    model = nn.Sequential(nn.Conv2d(3, 197, 1), block)
    model.num_prefix_tokens = 1  # type: ignore[assignment]  # as timm's ViTs declare it
    assert (
        infer_layout((2, 197, 1024), block[2], model, image_size=(224, 224)).describe() == "tokens (B, 1 + 14 x 14, C)"
    )
    with pytest.raises(ValueError, match="reshape_transform"):
        infer_layout((2, 197, 1024), nn.GELU(), image_size=(224, 224))  # not in a model: no evidence


def test_to_feature_map():
    tokens = _patch_tokens(2, 4, 4, 3, 1)
    torch.testing.assert_close(to_feature_map(tokens, image_size=(64, 64)), vit_reshape_transform()(tokens))
    feature_map = torch.randn(2, 8, 4, 4)
    assert to_feature_map(feature_map, nn.Conv2d(3, 8, 1), image_size=(64, 64)) is feature_map


def _explain(explainer, model, images):
    with model_state_guard(model, protect_grads=True):
        return explainer(model, images, None)


def test_ambiguous_tokens_at_the_target_layer_raise_naming_it_and_reshape_transform():
    model = tiny_vit(prefix_tokens=2, declare_prefix=False)  # 2 + 16 tokens and no declared prefix: not read
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    layer = model.blocks[0].norm1
    for explainer in (
        NativeCAM("GradCAM", [layer]),
        GradCamLibraryExplainer(pytorch_grad_cam.GradCAM, [layer]),
    ):
        with pytest.raises(ValueError, match=r"'blocks\.0\.norm1'.*reshape_transform"):
            _explain(explainer, model, images)


def test_reshape_transform_reads_what_detection_cannot_on_both_backends():
    model = tiny_vit(prefix_tokens=2, declare_prefix=False)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"'blocks\.0'.*reshape_transform"):
        find_last_spatial_layer(model, images[:1])  # never a silent fallback to the patch embedding
    transform = vit_reshape_transform(prefix_tokens=2)
    name, layer = find_last_spatial_layer(model, images[:1], reshape_transform=transform)
    assert name == "blocks.0.norm1"
    native = _explain(NativeCAM("GradCAM", [layer], reshape_transform=transform), model, images).maps
    library = _explain(
        GradCamLibraryExplainer(pytorch_grad_cam.GradCAM, [layer], reshape_transform=transform), model, images
    ).maps
    assert float((native.amax(dim=(1, 2)) - native.amin(dim=(1, 2))).min()) > 0.5
    assert float((library - native).abs().max()) < 1e-4


def test_reshape_transform_with_a_wrong_result_is_a_value_error_naming_it():
    model = tiny_vit(prefix_tokens=1)
    images = torch.randn(2, 3, 16, 16)
    flatten = NativeCAM("GradCAM", [model.blocks[0].norm1], reshape_transform=lambda tokens: tokens.flatten(1))
    with pytest.raises(ValueError, match=r"`reshape_transform`.*'blocks\.0\.norm1'"):
        _explain(flatten, model, images)


@pytest.mark.parametrize("prefix", [0, 1])
def test_tokens_are_read_automatically_and_match_the_explicit_transform(prefix):
    model = tiny_vit(prefix_tokens=prefix)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    layer = model.blocks[0].norm1
    automatic = _explain(NativeCAM("GradCAM", [layer]), model, images).maps
    explicit = _explain(
        NativeCAM("GradCAM", [layer], reshape_transform=vit_reshape_transform(prefix_tokens=prefix)), model, images
    ).maps
    torch.testing.assert_close(automatic, explicit, atol=0, rtol=0)
    # Reading the tokens with the wrong prefix count gives another map: the comparison above can fail.
    if prefix == 1:
        shifted = TokensToMap(height=4, width=4, prefix_tokens=1)
        wrong = NativeCAM("GradCAM", [layer], reshape_transform=lambda t: shifted(torch.roll(t, 1, dims=1)))
        assert float((_explain(wrong, model, images).maps - automatic).abs().max()) > 0.1


def _timm_vit(**kwargs: object) -> nn.Module:
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return vision_transformer.VisionTransformer(
            img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3, **kwargs
        ).eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reg_tokens": 8},  # 1 + 8 + 4 x 4 = 25 tokens: also a 5 x 5 grid without prefix
        {"reg_tokens": 9, "class_token": False, "global_pool": "avg"},  # 9 + 16 = 25
        {"reg_tokens": 4},  # 1 + 4 + 16 = 21
        {},  # 1 + 16
    ],
)
def test_timm_register_tokens_are_read_from_num_prefix_tokens(kwargs):
    """Issue 15, bug 7: timm's ViT with register tokens, read as its ``num_prefix_tokens`` says."""
    model = _timm_vit(**kwargs)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    layer = model.blocks[0].norm1
    automatic = _explain(NativeCAM("GradCAM", [layer]), model, images).maps
    transform = vit_reshape_transform(prefix_tokens=model.num_prefix_tokens)
    explicit = _explain(NativeCAM("GradCAM", [layer], reshape_transform=transform), model, images).maps
    torch.testing.assert_close(automatic, explicit, atol=0, rtol=0)
    assert float((explicit.amax(dim=(1, 2)) - explicit.amin(dim=(1, 2))).min()) > 0.5
    name, _ = find_last_spatial_layer(model, images[:1])  # read, not refused (avg pooling: the blocks' output)
    assert name == ("blocks" if kwargs.get("global_pool") == "avg" else "blocks.0.norm1")


def test_tokens_are_refused_when_register_tokens_are_not_counted():
    model = _timm_vit(reg_tokens=8)
    del model.num_prefix_tokens  # a port that keeps register tokens but does not say how many prefix tokens it has
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'blocks\.0\.norm1'.*prefix tokens.*reshape_transform"):
        _explain(NativeCAM("GradCAM", [model.blocks[0].norm1]), model, images)


def test_torchvision_class_token_declares_one_prefix_token():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    ).eval()
    layer = model.encoder.layers[0].ln_1
    assert infer_layout((2, 17, 32), layer, model, image_size=(32, 32)).describe() == "tokens (B, 1 + 4 x 4, C)"
