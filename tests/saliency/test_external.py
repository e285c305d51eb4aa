"""Outside saliency methods (issue 17): a user callable, every listed Captum method and every zennit composite.

For each, the map EVET computes for view 0 equals the library called directly on the same images and targets
(after the documented reduction, then min-max) to 1e-5, on a small CNN and a torchvision resnet18 (random
weights); the model is left as found (the state checks of test_model_state.py).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from evet_lightning import EVET
from evet_lightning.functional.fusion import min_max_normalize
from evet_lightning.models import SmallCNN
from evet_lightning.saliency.explainers import attribution_to_map, maps_from_output
from evet_lightning.saliency.settings import resolve_cam
from evet_lightning.saliency.transforms import HorizontalFlip, Rotate
from tests._helpers.saliency import coarse_input_gradient, input_times_gradient
from tests.saliency.test_model_state import _assert_unchanged, _images, _prepared_model, _snapshot

TRANSFORMS = [HorizontalFlip(), Rotate(10.0)]


#: One transform and a fixed alpha keep the equality tests cheap (view 0 is what they check).


def _small_cnn() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SmallCNN(num_classes=3, width=4).eval()


def _resnet18() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=3).eval()


#: (model factory, image size, name of the layer a layer attribution explains); resnet18's layer4 is 1 x 1 at
#: 32 px, so LayerGradCam runs it at 64 px.
MODELS = {"small_cnn": (_small_cnn, 32, "features.block4"), "resnet18": (_resnet18, 32, "layer4")}


def _inputs(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))


def _view0(model: nn.Module, images: torch.Tensor, cam: object, **kwargs: object) -> torch.Tensor:
    """EVET's un-enhanced map (view 0) with targets = argmax (the guard leaves the RNG as found)."""
    result = EVET(model, cam=cam, transforms=[HorizontalFlip()], alpha=0.0, **kwargs)(images)
    return result.original


def _reference(attribution: torch.Tensor, size: int, rule: str) -> torch.Tensor:
    """The documented reduction, written out: abs-sum over channels (input attributions) or ReLU of the sum
    (layer attributions), bilinear to the image size, min-max per image."""
    maps = attribution.detach().abs().sum(1) if rule == "abs_sum" else attribution.detach().sum(1).clamp_min(0)
    if maps.shape[-1] != size:
        maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(maps)


# ----------------------------------------------------------------------------------------------------- Captum

#: name -> (EVET cam_kwargs, direct call: (captum.attr, model, layer, images, size) -> attribution, reduction)
CAPTUM = {
    "IntegratedGradients": ({"n_steps": 4}, lambda ca, m, layer, x, s: ca.IntegratedGradients(m), "abs_sum"),
    "Saliency": ({}, lambda ca, m, layer, x, s: ca.Saliency(m), "abs_sum"),
    "InputXGradient": ({}, lambda ca, m, layer, x, s: ca.InputXGradient(m), "abs_sum"),
    "GuidedBackprop": ({}, lambda ca, m, layer, x, s: ca.GuidedBackprop(m), "abs_sum"),
    "DeepLift": ({}, lambda ca, m, layer, x, s: ca.DeepLift(m), "abs_sum"),
    "GradientShap": ({"n_samples": 2}, lambda ca, m, layer, x, s: ca.GradientShap(m), "abs_sum"),
    "Occlusion": ({}, lambda ca, m, layer, x, s: ca.Occlusion(m), "abs_sum"),  # the default window (small CNN)
    "NoiseTunnel(Saliency)": ({"nt_samples": 2}, lambda ca, m, layer, x, s: ca.NoiseTunnel(ca.Saliency(m)), "abs_sum"),
    "NoiseTunnel(IntegratedGradients)": (
        {"nt_samples": 2, "n_steps": 4},
        lambda ca, m, layer, x, s: ca.NoiseTunnel(ca.IntegratedGradients(m)),
        "abs_sum",
    ),
    "LayerGradCam": ({}, lambda ca, m, layer, x, s: ca.LayerGradCam(m, layer), "relu_sum"),
    "LRP": ({}, lambda ca, m, layer, x, s: ca.LRP(m), "abs_sum"),
}


#: Occlusion on the 64-px resnet18: a 16-px window (16 forward passes per image, not the default's 225).
OCCLUSION_16 = {"sliding_window_shapes": (3, 16, 16), "strides": (3, 16, 16)}


def _direct_kwargs(name: str, images: torch.Tensor) -> dict[str, object]:
    """What the test passes Captum directly: the same options as EVET's, and the adapter's documented defaults
    written out (zeros baselines for GradientShap; Occlusion's window of ceil(H/8) moved by half of it)."""
    kwargs = dict(CAPTUM[name][0])
    size = images.shape[-1]
    if name == "GradientShap":
        kwargs["baselines"] = torch.zeros(1, 3, size, size)
    if name == "Occlusion":
        window = -(-size // 8)
        kwargs.update(sliding_window_shapes=(3, window, window), strides=(3, window // 2, window // 2))
    return kwargs


@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", list(CAPTUM))
def test_captum_view0_equals_captum_called_directly(name, model_name):
    ca = pytest.importorskip("captum.attr")
    factory, size, layer_name = MODELS[model_name]
    if name == "LayerGradCam" and model_name == "resnet18":
        size = 64
    model = factory()
    images = _inputs(size)
    cam_kwargs, build, rule = CAPTUM[name]
    if name == "Occlusion" and model_name == "resnet18":
        cam_kwargs = OCCLUSION_16
    if name == "DeepLift" and model_name == "resnet18":
        # Captum's own limit: DeepLift cannot explain a ReLU module called twice (torchvision's BasicBlock).
        before = _snapshot(model)
        with pytest.raises(RuntimeError, match="DeepLift"):
            _view0(model, images, f"captum:{name}", cam_kwargs=cam_kwargs)
        _assert_unchanged(model, before)  # incl. the `input`/`output` attributes Captum leaves on a failure
        return
    layers = {"target_layers": layer_name} if name == "LayerGradCam" else {}
    torch.manual_seed(11)  # the same noise for the noise tunnels and GradientShap as the direct call's
    before = _snapshot(model)
    maps = _view0(model, images, f"captum:{name}", cam_kwargs=cam_kwargs, **layers)
    _assert_unchanged(model, before)
    targets = model(images).argmax(1)
    torch.manual_seed(11)
    layer = dict(model.named_modules())[layer_name]
    direct = OCCLUSION_16 if name == "Occlusion" and model_name == "resnet18" else _direct_kwargs(name, images)
    attribution = build(ca, model, layer, images, size).attribute(
        images.clone().requires_grad_(True), target=targets, **direct
    )
    expected = _reference(attribution, size, rule)
    assert maps.shape == expected.shape and bool((expected.flatten(1).amax(1) == 1).all())
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::UserWarning:captum")
def test_captum_by_class_with_kwargs_and_layer_grad_cam_is_grad_cam():
    ca = pytest.importorskip("captum.attr")
    model, images = _small_cnn(), _inputs(32)
    by_class = _view0(model, images, ca.IntegratedGradients, cam_kwargs={"n_steps": 4})
    torch.testing.assert_close(by_class, _view0(model, images, "captum:IntegratedGradients", cam_kwargs={"n_steps": 4}))
    # every other key reaches `attribute()`: a baseline of ones instead of Captum's zeros
    ones = _view0(model, images, ca.IntegratedGradients, cam_kwargs={"n_steps": 4, "baselines": 1.0})
    targets = model(images).argmax(1)
    direct = ca.IntegratedGradients(model).attribute(images.clone(), baselines=1.0, target=targets, n_steps=4)
    torch.testing.assert_close(ones, _reference(direct, 32, "abs_sum"), atol=1e-5, rtol=0)
    assert not torch.allclose(ones, by_class, atol=1e-2)
    # ReLU of the channel sum (the documented layer rule) makes Captum's LayerGradCam this package's Grad-CAM.
    grad_cam = _view0(model, images, "GradCAM", target_layers="features.block4")
    layer_grad_cam = _view0(model, images, ca.LayerGradCam, target_layers="features.block4")
    torch.testing.assert_close(layer_grad_cam, grad_cam, atol=1e-5, rtol=0)
    # the reduction is changeable: "sum" keeps the sign of InputXGradient
    signed = _view0(model, images, "captum:InputXGradient", cam_kwargs={"reduction": "sum"})
    attribution = ca.InputXGradient(model).attribute(images.clone().requires_grad_(True), target=targets)
    torch.testing.assert_close(signed, min_max_normalize(attribution.detach().sum(1)), atol=1e-5, rtol=0)
    assert resolve_cam("captum:SmoothGrad", "auto")[0] == "captum:NoiseTunnel(Saliency)"


# ----------------------------------------------------------------------------------------------------- zennit


def _composites() -> list[str]:
    try:
        from evet_lightning.saliency.zennit_adapter import composite_names

        return composite_names()
    except ValueError:  # zennit missing: the test below skips with its reason
        return ["EpsilonPlusFlat"]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("composite", _composites())
def test_zennit_view0_equals_zennit_called_directly(composite, model_name):
    pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import COMPOSITES
    from zennit.torchvision import ResNetCanonizer

    factory, size, _ = MODELS[model_name]
    model, images = factory(), _inputs(size)
    before = _snapshot(model)
    maps = _view0(model, images, f"zennit:{composite}")
    _assert_unchanged(model, before)
    targets = model(images).argmax(1)
    cls = next(cls for cls in COMPOSITES.values() if cls.__name__ == composite)
    kwargs = {"low": float(images.min()), "high": float(images.max())} if composite == "EpsilonGammaBox" else {}
    canonizers = [ResNetCanonizer()] if model_name == "resnet18" else [SequentialMergeBatchNorm()]
    with Gradient(model=model, composite=cls(canonizers=canonizers, **kwargs)) as attributor:
        _, relevance = attributor(images.clone(), torch.eye(3)[targets])
    expected = _reference(relevance, size, "abs_sum")
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)
    _assert_unchanged(model, before)  # calling zennit directly restored it too: the snapshot is still right


# ----------------------------------------------------------------------------------------------- user callable


def test_user_callable_maps_are_normalized_and_resized():
    model, images = _small_cnn(), _inputs(32)
    targets = model(images).argmax(1)
    full = _view0(model, images, input_times_gradient)
    inputs = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inputs).gather(1, targets[:, None]).sum(), inputs)
    torch.testing.assert_close(full, min_max_normalize((images * grad).abs().sum(1)), atol=1e-5, rtol=0)
    # (B, 1, h, w) at a quarter of the size: bilinear to 32 x 32, then min-max; keyword arguments from cam_kwargs
    coarse = _view0(model, images, coarse_input_gradient, cam_kwargs={"pool": 8})
    small = F.avg_pool2d(grad.abs().sum(1, keepdim=True), 8)
    expected = min_max_normalize(F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)[:, 0])
    torch.testing.assert_close(coarse, expected, atol=1e-5, rtol=0)
    # the same function by its import path (how the CLI names it)
    by_path = _view0(model, images, "tests._helpers.saliency:input_times_gradient")
    assert torch.equal(by_path, full)
    assert resolve_cam("tests._helpers.saliency:input_times_gradient", "auto")[0] == (
        "tests._helpers.saliency:input_times_gradient"
    )


@pytest.mark.parametrize("use_targets", [True, False])
def test_user_callable_that_writes_grads_leaves_the_model_as_found(use_targets):
    model = _prepared_model()
    before = _snapshot(model)
    targets = torch.tensor([0, 1, 2]) if use_targets else None
    result = EVET(model, cam=input_times_gradient, transforms=TRANSFORMS, max_batch_size=5)(_images(), targets)
    assert torch.isfinite(result.saliency).all() and float(result.original.amax()) == 1.0
    _assert_unchanged(model, before)


@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize(
    "cam", ["captum:GuidedBackprop", "captum:DeepLift", "captum:LRP", "captum:LayerGradCam", "zennit:EpsilonPlusFlat"]
)
def test_hook_based_methods_leave_a_prepared_model_as_found(cam):
    """Train mode, frozen BN, some .grad set, frozen params, user hooks: all as found (StatefulCNN)."""
    pytest.importorskip(cam.split(":")[0])
    model = _prepared_model()
    before = _snapshot(model)
    layers = {"target_layers": "body"} if cam == "captum:LayerGradCam" else {}
    result = EVET(model, cam=cam, transforms=TRANSFORMS, **layers)(_images())
    assert torch.isfinite(result.saliency).all()
    _assert_unchanged(model, before)


@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_outside_methods_under_inference_mode_and_no_grad(context):
    pytest.importorskip("captum")
    model, images = _small_cnn(), _inputs(32)
    expected = [_view0(model, images, cam) for cam in ("captum:Saliency", input_times_gradient)]
    with torch.inference_mode() if context == "inference_mode" else torch.no_grad():
        inner = images.clone()
        before = _snapshot(model)
        maps = [_view0(model, inner, cam) for cam in ("captum:Saliency", input_times_gradient)]
        _assert_unchanged(model, before)
    for got, want in zip(maps, expected, strict=True):
        assert torch.equal(got, want)


class _Boom(RuntimeError):
    pass


def _failing(model, images, targets):
    model.fc.register_forward_hook(lambda *args: None)
    model.stem[0].weight.requires_grad_(False)
    model.leftover = torch.zeros(1)
    raise _Boom("the method failed half-way")


def test_a_failing_callable_leaves_the_model_as_found():
    model = _prepared_model()
    before = _snapshot(model)
    with pytest.raises(_Boom):
        EVET(model, cam=_failing, transforms=TRANSFORMS)(_images())
    _assert_unchanged(model, before)
    assert not hasattr(model, "leftover")


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        ([1, 2], TypeError, "returned <class 'list'>"),
        (torch.zeros(3, 3, 12, 12), ValueError, r"shape \(3, 3, 12, 12\)"),
        (torch.zeros(2, 12, 12), ValueError, r"N = 3 .* shape \(2, 12, 12\)"),
        (torch.zeros(3, 12), ValueError, r"shape \(3, 12\)"),
    ],
    ids=["list", "channels", "batch", "2-D"],
)
def test_bad_callable_output_names_what_it_returned(returned, error, message):
    def method(model, images, targets):
        return returned

    model = _prepared_model()
    before = _snapshot(model)
    with pytest.raises(error, match=rf"'method'.*{message}"):
        EVET(model, cam=method, transforms=TRANSFORMS)(_images())
    _assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("cam", "kwargs", "message"),
    [
        ("captum:NoSuchMethod", {}, "captum.attr attribution class or name"),
        ("captum:NeuronGradient", {}, "single neuron"),
        ("zennit:NoSuchComposite", {}, "zennit composite"),
        ("no_such_module_xyz:f", {}, "importable module"),
        ("tests._helpers.saliency:missing", {}, "has no 'missing'"),
        ("GradCAM", {"cam_kwargs": {"n_steps": 4}}, "Expected no `cam_kwargs` for GradCAM"),
        ("captum:Saliency", {"cam_kwargs": {"reduction": "median"}}, "`reduction`"),
    ],
)
def test_bad_outside_methods_raise_value_error(cam, kwargs, message):
    pytest.importorskip("captum")
    pytest.importorskip("zennit")
    with pytest.raises(ValueError, match=re.escape(message)):
        EVET(_prepared_model(), cam=cam, transforms=TRANSFORMS, **kwargs)(_images())


def test_attribution_to_map_rules():
    attribution = torch.tensor([[[[1.0, -2.0]], [[-3.0, 1.0]]]])
    assert attribution_to_map(attribution, (1, 2)).tolist() == [[[4.0, 3.0]]]
    assert attribution_to_map(attribution, (1, 2), "sum").tolist() == [[[-2.0, -1.0]]]
    assert attribution_to_map(attribution, (1, 2), "relu_sum").tolist() == [[[0.0, 0.0]]]
    assert attribution_to_map(attribution, (1, 2), "max_abs").tolist() == [[[3.0, 2.0]]]
    assert attribution_to_map(attribution, (1, 2), lambda a: a[:, 0]).tolist() == [[[1.0, -2.0]]]
    assert attribution_to_map(attribution, (2, 4)).shape == (1, 2, 4)
    with pytest.raises(ValueError, match="`reduction`"):
        attribution_to_map(attribution, (1, 2), "mean")
    images = torch.zeros(1, 3, 4, 4)
    constant = maps_from_output(torch.full((1, 1, 2, 2), 5.0), images)
    assert constant.shape == (1, 4, 4) and not constant.any()
    with_nan = maps_from_output(torch.tensor([[[float("nan"), 2.0], [1.0, 0.0]]]), torch.zeros(1, 3, 2, 2))
    assert with_nan.tolist() == [[[0.0, 1.0], [0.5, 0.0]]]
