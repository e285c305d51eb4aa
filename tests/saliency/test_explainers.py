"""Explainers: the native CAMs equal pytorch-grad-cam's, Gradient saliency, and the pytorch-grad-cam path."""

from __future__ import annotations

import pytest
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from evet_lightning import EVET
from evet_lightning._model_state import model_state_guard
from evet_lightning.saliency.explainers import NATIVE_CAMS, GradientExplainer, NativeCAM
from evet_lightning.saliency.grad_cam_adapter import GradCamLibraryExplainer
from evet_lightning.saliency.transforms import HorizontalFlip, Rotate
from tests._helpers.models import TinyCNN, shared_activation_cnn, tiny_cnn

NATIVE_NAMES = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"]


def _library_maps(cam_name, model, layers, images, targets):
    """pytorch-grad-cam's own output, as a tensor; the library's hooks are released afterwards."""
    cam = getattr(pytorch_grad_cam, cam_name)(model=model, target_layers=layers)
    try:
        cam_targets = None if targets is None else [ClassifierOutputTarget(int(k)) for k in targets]
        return torch.from_numpy(cam(input_tensor=images, targets=cam_targets))
    finally:
        cam.activations_and_grads.release()


def test_native_cams_cover_the_five_gradient_cams():
    assert sorted(NATIVE_CAMS) == sorted(NATIVE_NAMES)


@pytest.mark.parametrize("cam_name", NATIVE_NAMES)
@pytest.mark.parametrize(
    ("size", "layer_indices", "use_targets"),
    [((16, 16), [5], True), ((12, 20), [5], True), ((16, 16), [0, 5], True), ((14, 10), [5], False)],
    ids=["square", "non-square", "two-layers", "argmax"],
)
def test_native_cam_equals_pytorch_grad_cam(cam_name, size, layer_indices, use_targets):
    model = tiny_cnn(seed=1)
    layers = [model.features[i] for i in layer_indices]
    images = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 2, 1]) if use_targets else None
    native = NativeCAM(cam_name, layers)(model, images, targets)
    expected = _library_maps(cam_name, model, layers, images, targets)
    assert native.maps.shape == (3, *size)
    assert native.maps.dtype == torch.float32
    assert float(native.maps.max()) > 0.5  # a real map, not all zeros
    assert float((native.maps - expected).abs().max()) < 1e-4
    torch.testing.assert_close(native.logits, model(images))


def test_native_cams_differ_between_classes_and_methods():
    # Guards the comparison above: the five methods and the classes really give different maps here.
    model = tiny_cnn(seed=1)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    layers = [model.features[5]]
    by_method = {name: NativeCAM(name, layers)(model, images, torch.tensor([0, 1])).maps for name in NATIVE_NAMES}
    for name in NATIVE_NAMES[1:]:
        assert float((by_method[name] - by_method["GradCAM"]).abs().max()) > 1e-2, name
    other_class = NativeCAM("GradCAM", layers)(model, images, torch.tensor([2, 2])).maps
    assert float((other_class - by_method["GradCAM"]).abs().max()) > 1e-2


@pytest.mark.parametrize("cam_name", NATIVE_NAMES)
def test_native_path_writes_no_parameter_grad(cam_name):
    model = tiny_cnn(seed=3)
    images = torch.randn(2, 3, 16, 16)
    NativeCAM(cam_name, [model.features[5]])(model, images, torch.tensor([0, 1]))
    assert all(param.grad is None for param in model.parameters())
    _library_maps(cam_name, model, [model.features[5]], images, torch.tensor([0, 1]))
    assert any(param.grad is not None for param in model.parameters())  # the library's loss.backward() does


@pytest.mark.parametrize("cam_name", NATIVE_NAMES)
def test_native_cam_on_frozen_model(cam_name):
    model = tiny_cnn(seed=4)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = NativeCAM(cam_name, [model.features[5]])(model, images, torch.tensor([1, 0])).maps
    model.requires_grad_(False)
    frozen = NativeCAM(cam_name, [model.features[5]])(model, images, torch.tensor([1, 0])).maps
    torch.testing.assert_close(frozen, expected)
    assert float(frozen.max()) > 0.5
    assert not any(param.requires_grad for param in model.parameters())


def test_native_cam_on_layer_followed_by_in_place_op():
    # torchvision's VGG and ResNet modify a layer's output in place right after it (ReLU(inplace=True),
    # `out += identity`); the CAM of that layer must not depend on it.
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    out_of_place = tiny_cnn(seed=5)
    in_place = tiny_cnn(seed=5, inplace=True)
    for layer_index in (0, 3):
        expected = NativeCAM("GradCAM", [out_of_place.features[layer_index]])(out_of_place, images, None).maps
        maps = NativeCAM("GradCAM", [in_place.features[layer_index]])(in_place, images, None).maps
        torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)


def _explain(explainer, model, images, targets=None):
    with model_state_guard(model, protect_grads=True):
        return explainer(model, images, targets)


@pytest.mark.parametrize("cam_name", ["GradCAM", "LayerCAM"])
@pytest.mark.parametrize("use_targets", [True, False])
def test_reused_layer_is_explained_at_its_last_call_on_both_backends(cam_name, use_targets):
    # `body.act` runs after the stem and after the head conv; the reference gives the second use its own module.
    shared, separate = shared_activation_cnn(seed=2), shared_activation_cnn(seed=2, separate=True)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([2, 0]) if use_targets else None
    expected = _explain(NativeCAM(cam_name, [separate.body.head_act]), separate, images, targets).maps
    native = _explain(NativeCAM(cam_name, [shared.body.act]), shared, images, targets).maps
    library_class = getattr(pytorch_grad_cam, cam_name)
    library = _explain(GradCamLibraryExplainer(library_class, [shared.body.act]), shared, images, targets).maps
    torch.testing.assert_close(native, expected, atol=1e-6, rtol=0)
    assert float((library - expected).abs().max()) < 1e-4
    # The first call gives another map: the comparisons above can fail.
    first_use = _explain(NativeCAM(cam_name, [separate.body.act]), separate, images, targets).maps
    assert float((first_use - expected).abs().max()) > 0.1


def test_pytorch_grad_cam_alone_explains_the_first_call_of_a_reused_layer():
    # Why the adapter replaces the library's ActivationsAndGradients: on its own, the library weights the first
    # call's activations (4 channels, 16 x 16) with the first gradient it stored.
    model = shared_activation_cnn(seed=2)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    cam = pytorch_grad_cam.GradCAM(model=model, target_layers=[model.body.act])
    try:
        cam(input_tensor=images.clone().requires_grad_(True), targets=None)
        assert cam.activations_and_grads.activations[0].shape == (2, 4, 16, 16)
    finally:
        cam.activations_and_grads.release()
    library = _explain(GradCamLibraryExplainer(pytorch_grad_cam.GradCAM, [model.body.act]), model, images)
    native = _explain(NativeCAM("GradCAM", [model.body.act]), model, images)
    assert float((library.maps - native.maps).abs().max()) < 1e-4


@pytest.mark.parametrize("backend", ["native", "library"])
def test_reused_layer_errors_name_the_dotted_layer(backend):
    # The last call of `body.act` is on the pooled (B, 6) vector: not a feature map.
    model = shared_activation_cnn(vector_last=True)
    layer = model.body.act
    explainer = (
        NativeCAM("GradCAM", [layer])
        if backend == "native"
        else GradCamLibraryExplainer(pytorch_grad_cam.GradCAM, [layer])
    )
    with pytest.raises(ValueError, match=r"'body\.act'") as error:
        _explain(explainer, model, torch.randn(2, 3, 16, 16))
    assert "SiLU" not in str(error.value)


class _SideBranch(torch.nn.Module):
    """``features.5`` runs a second time on a branch the logits do not use."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(seed=3)

    def forward(self, images):
        logits = self.net(images)
        self.net.features(images)
        return logits


@pytest.mark.parametrize("backend", ["native", "library"])
def test_last_call_the_logits_do_not_depend_on_is_an_error_naming_the_layer(backend):
    model = _SideBranch()
    layer = model.net.features[5]
    explainer = (
        NativeCAM("GradCAM", [layer])
        if backend == "native"
        else GradCamLibraryExplainer(pytorch_grad_cam.GradCAM, [layer])
    )
    with pytest.raises(ValueError, match=r"'net\.features\.5'.*last call"):
        _explain(explainer, model, torch.randn(2, 3, 16, 16))


class _WithUnusedLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(seed=3)
        self.net.spare = torch.nn.Conv2d(3, 3, 1)  # registered, never called

    def forward(self, images):
        return self.net(images)


@pytest.mark.parametrize("backend", ["native", "library"])
def test_layer_that_does_not_run_is_an_error_naming_it(backend):
    model = _WithUnusedLayer()
    layers = [model.net.features[5], model.net.spare]
    explainer = (
        NativeCAM("GradCAM", layers)
        if backend == "native"
        else GradCamLibraryExplainer(pytorch_grad_cam.GradCAM, layers)
    )
    with pytest.raises(ValueError, match=r"'net\.spare' did not"):
        _explain(explainer, model, torch.randn(2, 3, 16, 16))


def test_native_cam_unknown_method():
    with pytest.raises(ValueError, match="ScoreCAM"):
        NativeCAM("ScoreCAM", [torch.nn.Conv2d(1, 1, 1)])


@pytest.mark.parametrize("use_targets", [True, False])
def test_gradient_explainer_is_max_abs_input_gradient(use_targets):
    model = tiny_cnn(seed=6)
    images = torch.randn(3, 3, 12, 14, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([2, 0, 1]) if use_targets else None
    explanation = GradientExplainer()(model, images, targets)
    expected = []
    for index in range(3):
        image = images[index : index + 1].clone().requires_grad_(True)
        logits = model(image)
        k = int(targets[index]) if use_targets else int(logits.argmax())
        (grad,) = torch.autograd.grad(logits[0, k], image)
        saliency = grad[0].abs().amax(dim=0)
        expected.append((saliency - saliency.min()) / (saliency.max() - saliency.min()))
    torch.testing.assert_close(explanation.maps, torch.stack(expected), atol=1e-5, rtol=0)
    assert all(param.grad is None for param in model.parameters())


TRANSFORMS = [HorizontalFlip(), Rotate(10.0)]


@pytest.mark.parametrize("cam", ["ScoreCAM", "EigenCAM", "AblationCAM", "RandomCAM", pytorch_grad_cam.ScoreCAM])
def test_pytorch_grad_cam_path_runs(cam):
    model = tiny_cnn(seed=7)
    images = torch.randn(2, 3, 12, 16, generator=torch.Generator().manual_seed(7))
    result = EVET(model, target_layers=[model.features[5]], cam=cam, transforms=TRANSFORMS)(images)
    for maps in (result.saliency, result.original):
        assert maps.shape == (2, 12, 16)
        assert maps.dtype == torch.float32
        assert torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1
    if cam != "RandomCAM":  # random channel weights may legitimately give an all-negative, i.e. zero, map
        assert float(result.original.amax(dim=(1, 2)).min()) > 0.5
    torch.testing.assert_close(result.targets, model(images).argmax(dim=1))


@pytest.mark.parametrize("use_targets", [True, False])
def test_pytorch_grad_cam_backend_equals_native_backend(use_targets):
    model = tiny_cnn(seed=8)
    images = torch.randn(3, 3, 16, 12, generator=torch.Generator().manual_seed(8))
    targets = torch.tensor([1, 0, 2]) if use_targets else None
    layers = [model.features[5]]
    native = EVET(model, target_layers=layers, cam="GradCAM", transforms=TRANSFORMS)
    library = EVET(model, target_layers=layers, cam="GradCAM", transforms=TRANSFORMS, backend="pytorch-grad-cam")
    assert native._native and not library._native
    expected, result = native(images, targets), library(images, targets)
    assert float((result.saliency - expected.saliency).abs().max()) < 1e-4
    assert float((result.original - expected.original).abs().max()) < 1e-4
    assert torch.equal(result.kept, expected.kept)
    torch.testing.assert_close(result.weights, expected.weights, atol=1e-5, rtol=0)


def test_cam_class_is_accepted():
    model = tiny_cnn(seed=9)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    by_class = EVET(model, target_layers="features.5", cam=pytorch_grad_cam.GradCAM, transforms=TRANSFORMS)
    by_name = EVET(model, target_layers="features.5", cam="GradCAM", transforms=TRANSFORMS)
    assert by_class.cam_name == "GradCAM"
    torch.testing.assert_close(by_class(images).saliency, by_name(images).saliency)


class _SubclassedGradCAM(pytorch_grad_cam.GradCAM):
    pass


def test_cam_subclass_runs_through_the_library():
    # A user's subclass may override anything: it must not be replaced by the native GradCAM.
    model = tiny_cnn(seed=9)
    evet = EVET(model, target_layers="features.5", cam=_SubclassedGradCAM, transforms=TRANSFORMS)
    assert not evet._native
    assert evet(torch.randn(1, 3, 16, 16)).saliency.shape == (1, 16, 16)


@pytest.mark.parametrize("cam", ["NotACam", "gradcam", "", 3, TinyCNN, torch.nn.Conv2d(1, 1, 1)])
def test_unknown_cam_raises_value_error(cam):
    with pytest.raises(ValueError, match="`cam`"):
        EVET(tiny_cnn(), target_layers="features.5", cam=cam)


def test_native_backend_refuses_library_only_cam():
    with pytest.raises(ValueError, match="native"):
        EVET(tiny_cnn(), target_layers="features.5", cam="EigenCAM", backend="native")
