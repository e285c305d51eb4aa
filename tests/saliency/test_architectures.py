"""Auto-detection, native CAMs and the pytorch-grad-cam path across torchvision and timm classification families.

For every family, on random weights (fixed seed), batch 2, at the smallest input the model accepts:

- the auto-detected target layer is the one an expert picks (exact dotted name);
- native Grad-CAM maps are finite, in [0, 1] and not constant;
- native Grad-CAM equals pytorch-grad-cam's through the adapter to 1e-4, on the same layer.

Each model is built once per module (the ``models`` fixture), inside the first test that needs it, so the suite's
one-thread fixture applies. The module's tests take about 28 s on 2 CPU cores shared with other jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import pytorch_grad_cam
import torch
import torchvision
from torch import nn

from evet_lightning._model_state import model_state_guard
from evet_lightning.saliency.explainers import NativeCAM
from evet_lightning.saliency.grad_cam_adapter import GradCamLibraryExplainer
from evet_lightning.saliency.layers import find_last_spatial_layer
from evet_lightning.saliency.reshape import ReshapeTransform, swin_reshape_transform, vit_reshape_transform
from evet_lightning.saliency.score_cam import ScoreCAM

NUM_CLASSES = 5


def _timm(name: str, **kwargs: object) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)


def _small_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=48, mlp_dim=96, num_classes=NUM_CLASSES
    )
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero: every map would be zero
    return model


def _small_maxvit() -> nn.Module:
    # maxvit_t fixes partition_size=7, so it needs 224 px; the same architecture with 2 x 2 partitions runs at 64.
    from torchvision.models.maxvit import MaxVit

    return MaxVit(
        input_size=(64, 64),
        stem_channels=16,
        partition_size=2,
        block_channels=[16, 32, 64, 64],
        block_layers=[1, 1, 1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=NUM_CLASSES,
    )


def _vgg11() -> nn.Module:
    # VGG's 102M-parameter classifier takes seconds to initialise and to differentiate; a small one after the same
    # 7 x 7 adaptive pooling keeps everything auto-detection looks at (features, avgpool, classifier).
    with torch.device("meta"):
        model = torchvision.models.vgg11(num_classes=NUM_CLASSES)
    model.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(inplace=True), nn.Linear(32, NUM_CLASSES))
    return model


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]
    size: int
    layer: str
    reshape: Callable[[], ReshapeTransform] | None = None  # an explicit transform that must agree with detection


tv = torchvision.models
FAMILIES: dict[str, Family] = {
    "resnet18": Family(lambda: tv.resnet18(num_classes=NUM_CLASSES), 64, "layer4"),
    "vgg11": Family(_vgg11, 64, "features.19"),
    "densenet121": Family(lambda: tv.densenet121(num_classes=NUM_CLASSES), 64, "features.norm5"),
    "mobilenet_v2": Family(lambda: tv.mobilenet_v2(num_classes=NUM_CLASSES), 64, "features.18"),
    "mobilenet_v3_small": Family(lambda: tv.mobilenet_v3_small(num_classes=NUM_CLASSES), 64, "features.12"),
    "efficientnet_b0": Family(lambda: tv.efficientnet_b0(num_classes=NUM_CLASSES), 64, "features.8"),
    "regnet_y_400mf": Family(lambda: tv.regnet_y_400mf(num_classes=NUM_CLASSES), 64, "trunk_output.block4"),
    "convnext_tiny": Family(lambda: tv.convnext_tiny(num_classes=NUM_CLASSES), 64, "features.7"),
    "shufflenet_v2_x0_5": Family(lambda: tv.shufflenet_v2_x0_5(num_classes=NUM_CLASSES), 64, "conv5"),
    "squeezenet1_0": Family(lambda: tv.squeezenet1_0(num_classes=NUM_CLASSES), 64, "classifier.2"),
    "googlenet": Family(
        lambda: tv.googlenet(num_classes=NUM_CLASSES, aux_logits=False, init_weights=False), 64, "inception5b"
    ),
    # 75 px is inception_v3's minimum; Mixed_7a-7c are 1 x 1 there, so the last block with a grid is Mixed_6e.
    "inception_v3": Family(
        lambda: tv.inception_v3(num_classes=NUM_CLASSES, aux_logits=False, init_weights=False), 75, "Mixed_6e"
    ),
    "mnasnet0_5": Family(lambda: tv.mnasnet0_5(num_classes=NUM_CLASSES), 64, "layers.16"),
    "vit": Family(_small_vit, 64, "encoder.layers.encoder_layer_1.ln_1", vit_reshape_transform),
    "swin_t": Family(lambda: tv.swin_t(num_classes=NUM_CLASSES), 64, "features.7", swin_reshape_transform),
    "maxvit": Family(_small_maxvit, 64, "blocks.3"),
    "timm_vit": Family(
        lambda: _timm("vit_tiny_patch16_224", img_size=64), 64, "blocks.11.norm1", vit_reshape_transform
    ),
    "timm_deit": Family(lambda: _timm("deit_tiny_patch16_224", img_size=64), 64, "blocks.11.norm1"),
    "timm_swin": Family(
        lambda: _timm(
            "swin_tiny_patch4_window7_224", img_size=64, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)
        ),
        64,
        "layers.3",
        swin_reshape_transform,
    ),
    "timm_convnext": Family(lambda: _timm("convnext_atto"), 64, "stages.3"),
    "timm_efficientnet": Family(lambda: _timm("efficientnet_b0"), 64, "bn2"),
}


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, nn.Module]]:
    """The models built so far in this module, by family; released when the module's tests are done."""
    cache: dict[str, nn.Module] = {}
    yield cache
    cache.clear()


def _model(models: dict[str, nn.Module], key: str) -> nn.Module:
    """The family's model with seeded random weights, in eval mode, built once (the global RNG is untouched).

    Built inside the test that first needs it, so the suite's one-thread fixture applies to construction.
    """
    if key not in models:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            models[key] = FAMILIES[key].build().eval()
    return models[key]


def _images(key: str) -> torch.Tensor:
    size = FAMILIES[key].size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _native(model: nn.Module, layer: nn.Module, images: torch.Tensor, reshape: ReshapeTransform | None = None):
    with model_state_guard(model, protect_grads=False):
        return NativeCAM("GradCAM", [layer], reshape_transform=reshape)(model, images, None)


def _library(model: nn.Module, layer: nn.Module, images: torch.Tensor, reshape: ReshapeTransform | None = None):
    with model_state_guard(model, protect_grads=True):
        explainer = GradCamLibraryExplainer(pytorch_grad_cam.GradCAM, [layer], reshape_transform=reshape)
        return explainer(model, images, None)


@pytest.mark.parametrize("key", list(FAMILIES))
def test_auto_detected_layer_and_native_equals_pytorch_grad_cam(models, key, caplog):
    model, images, family = _model(models, key), _images(key), FAMILIES[key]
    with caplog.at_level(logging.INFO, logger="evet_lightning"), model_state_guard(model, protect_grads=False):
        name, layer = find_last_spatial_layer(model, images[:1])
    assert name == family.layer
    assert layer is model.get_submodule(family.layer)
    assert f"target layer {name!r}" in caplog.text

    native = _native(model, layer, images)
    maps = native.maps
    assert maps.shape == (2, *images.shape[-2:])
    assert torch.isfinite(maps).all()
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert bool(((maps.amax(dim=(1, 2)) - maps.amin(dim=(1, 2))) > 0.5).all()), "a constant map"
    torch.testing.assert_close(native.logits, model(images))

    library = _library(model, layer, images)
    assert float((library.maps - maps).abs().max()) < 1e-4


@pytest.mark.parametrize("key", [key for key, family in FAMILIES.items() if family.reshape is not None])
def test_explicit_reshape_transform_agrees_on_both_backends(models, key):
    model, images, family = _model(models, key), _images(key), FAMILIES[key]
    assert family.reshape is not None
    layer = model.get_submodule(family.layer)
    detected = _native(model, layer, images).maps
    native = _native(model, layer, images, family.reshape()).maps
    library = _library(model, layer, images, family.reshape()).maps
    torch.testing.assert_close(native, detected, atol=1e-6, rtol=0)
    assert float((library - native).abs().max()) < 1e-4


def test_in_place_relu_after_densenet_norm5(models):
    # torchvision applies F.relu(inplace=True) to features.norm5. Both backends of this package explain the layer's
    # own output; pytorch-grad-cam on its own weights the mutated (post-ReLU) activations, so its map differs.
    model, images = _model(models, "densenet121"), _images("densenet121")
    layer = model.features.norm5
    native = _native(model, layer, images).maps
    assert float((_library(model, layer, images).maps - native).abs().max()) < 1e-4
    cam = pytorch_grad_cam.GradCAM(model=model, target_layers=[layer])
    try:
        plain = torch.from_numpy(cam(input_tensor=images.clone().requires_grad_(True), targets=None))
    finally:
        cam.activations_and_grads.release()
    assert float((plain - native).abs().max()) > 0.05


def _vgg_like() -> nn.Module:
    # VGG's conv-ReLU-pool stacks at a width Score-CAM can afford (one forward pass per channel of the last layer).
    model = _vgg11()
    model.features = torchvision.models.vgg.make_layers([16, "M", 32, "M", 64, 64, "M"])
    model.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 32), nn.ReLU(inplace=True), nn.Linear(32, NUM_CLASSES))
    return model


#: Score-CAM makes one forward pass per channel: a representative subset, one image each, at (key, layer, size):
#: a ResNet (layer3, 256 channels at 2 x 2), a VGG, two mobile nets, a ViT's tokens and a Swin's (B, H, W, C) map
#: read through their reshape transforms. All 21 families at their detected layers: benchmarks/score_cam_sweep.py.
SCORE_CAM_CASES = {
    "resnet18": ("layer3", 32),
    "vgg_like": ("features.9", 32),
    "mobilenet_v3_small": ("features.12", 64),
    "squeezenet1_0": ("classifier.2", 64),
    "vit": ("encoder.layers.encoder_layer_1.ln_1", 64),
    "timm_swin": ("layers.3", 64),
}


@pytest.mark.parametrize("key", list(SCORE_CAM_CASES))
def test_native_score_cam_equals_pytorch_grad_cam(models, key):
    name, size = SCORE_CAM_CASES[key]
    if key == "vgg_like":
        if key not in models:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                models[key] = _vgg_like().eval()
        model = models[key]
    else:
        model = _model(models, key)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    layer = model.get_submodule(name)
    family = FAMILIES.get(key)
    reshape = family.reshape() if family is not None and family.reshape is not None else None
    with model_state_guard(model, protect_grads=False):
        native = ScoreCAM([layer], batch_size=64, reshape_transform=reshape)(model, images, None)
    with model_state_guard(model, protect_grads=True):
        explainer = GradCamLibraryExplainer(pytorch_grad_cam.ScoreCAM, [layer], 64, reshape_transform=reshape)
        library = explainer(model, images, None)
    assert float(native.maps.max()) > 0.5
    assert float((library.maps - native.maps).abs().max()) < 1e-4
