"""Model outputs other than a logits tensor: ``logits_from_output``, ``output_transform`` and every explainer."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from dataclasses import dataclass

import pytest
import pytorch_grad_cam
import torch
from torch import Tensor, nn

from evet_lightning._model_state import model_state_guard
from evet_lightning.saliency.evet import EVET
from evet_lightning.saliency.explainers import GradientExplainer, NativeCAM
from evet_lightning.saliency.grad_cam_adapter import GradCamLibraryExplainer
from evet_lightning.saliency.layers import find_last_spatial_layer
from evet_lightning.saliency.outputs import logits_from_output, not_logits
from tests._helpers.models import TinyCNN, tiny_cnn

LOGITS = torch.arange(6.0).view(2, 3)


class ModelOutput(OrderedDict):
    """Like Hugging Face's ``ModelOutput``: a mapping whose keys are also attributes."""

    def __getattr__(self, name: str) -> object:
        return self[name]


@dataclass
class Prediction:
    logits: Tensor
    features: Tensor


AuxFirst = namedtuple("AuxFirst", ["aux", "logits"])


@pytest.mark.parametrize(
    "output",
    [
        LOGITS,
        (LOGITS, torch.zeros(2, 8)),
        [LOGITS],
        {"logits": LOGITS, "features": torch.zeros(2, 8)},
        ModelOutput(loss=None, logits=LOGITS),
        Prediction(LOGITS, torch.zeros(2, 8)),
        AuxFirst(torch.zeros(2, 8), LOGITS),  # the `logits` field wins over the first position
    ],
    ids=["tensor", "tuple", "list", "dict", "model-output", "dataclass", "named-tuple"],
)
def test_logits_are_found(output):
    assert logits_from_output(output) is LOGITS


@pytest.mark.parametrize(
    ("output", "described"),
    [
        ({"scores": LOGITS}, "dict with keys"),
        ((), "tuple of 0"),
        (("logits",), "tuple of 1 whose first element is str"),
        (None, "NoneType"),
        ("logits", "str"),
        ({"logits": [1.0, 2.0]}, "dict"),
    ],
)
def test_other_outputs_raise_naming_the_type_and_output_transform(output, described):
    with pytest.raises(ValueError, match=rf"{described}.*`output_transform=`"):
        logits_from_output(output)


def test_output_transform_is_used_and_must_return_a_tensor():
    assert logits_from_output({"scores": LOGITS}, lambda out: out["scores"]) is LOGITS
    # It overrides the built-in rules, e.g. to take the second element of a tuple.
    assert logits_from_output((torch.zeros(2, 3), LOGITS), lambda out: out[1]) is LOGITS
    with pytest.raises(ValueError, match=r"`output_transform`.*list"):
        logits_from_output(LOGITS, lambda out: out.tolist())


class Wrapped(nn.Module):
    """:func:`tiny_cnn` whose forward packs the logits as ``kind`` says."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net = tiny_cnn(seed=3)
        self.kind = kind

    def forward(self, images: Tensor) -> object:
        logits = self.net(images)
        features = images.mean(dim=(2, 3))
        if self.kind == "tuple":
            return logits, features
        if self.kind == "dict":
            return {"features": features, "logits": logits}
        if self.kind == "object":
            return Prediction(logits, features)
        return {"scores": logits}  # "custom": needs an output_transform


EXPLAINERS = {
    "native": lambda model, transform: NativeCAM("GradCAM", [model.net.features[5]], output_transform=transform),
    "library": lambda model, transform: GradCamLibraryExplainer(
        pytorch_grad_cam.GradCAM, [model.net.features[5]], output_transform=transform
    ),
    "library-score-cam": lambda model, transform: GradCamLibraryExplainer(
        pytorch_grad_cam.ScoreCAM, [model.net.features[5]], output_transform=transform
    ),
    "gradient": lambda model, transform: GradientExplainer(output_transform=transform),
}


def _explain(explainer, model, images, targets=None):
    with model_state_guard(model, protect_grads=True):
        return explainer(model, images, targets)


@pytest.mark.parametrize("explainer", list(EXPLAINERS))
@pytest.mark.parametrize("kind", ["tuple", "dict", "object", "custom"])
def test_explainers_read_logits_from_any_output(explainer, kind):
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    model = Wrapped(kind)
    transform = (lambda out: out["scores"]) if kind == "custom" else None
    plain = Wrapped("tuple")
    expected = _explain(EXPLAINERS[explainer](plain, lambda out: out[0]), plain, images, torch.tensor([2, 0]))
    result = _explain(EXPLAINERS[explainer](model, transform), model, images, torch.tensor([2, 0]))
    torch.testing.assert_close(result.maps, expected.maps)
    torch.testing.assert_close(result.logits, model.net(images))
    assert float(result.maps.amax(dim=(1, 2)).min()) > 0.5
    # The targets matter here, so equal maps are evidence that the right logits were used.
    other = _explain(EXPLAINERS[explainer](model, transform), model, images, torch.tensor([1, 1]))
    if explainer != "library-score-cam":  # Score-CAM's softmax weights can coincide on a 3-class toy model
        assert float((other.maps - result.maps).abs().max()) > 1e-3


@pytest.mark.parametrize("explainer", list(EXPLAINERS))
def test_explainers_raise_for_an_unknown_output_without_output_transform(explainer):
    model = Wrapped("custom")
    with pytest.raises(ValueError, match=r"dict with keys \['scores'\].*`output_transform=`"):
        _explain(EXPLAINERS[explainer](model, None), model, torch.randn(2, 3, 16, 16))


def test_auto_detection_uses_output_transform():
    model = Wrapped("custom")
    sample = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="`output_transform=`"):
        find_last_spatial_layer(model, sample)
    name, _ = find_last_spatial_layer(model, sample, output_transform=lambda out: out["scores"])
    assert name == "net.features.5"  # the last ReLU (net.features spans two grid sizes)
    assert isinstance(model.net, TinyCNN)


@pytest.mark.parametrize(("cam", "layer"), [("GradCAM", "features.5"), ("ScoreCAM", "features.5"), ("Gradient", None)])
def test_output_transform_with_fewer_rows_than_images_is_a_value_error_naming_it(cam, layer):
    """Issue 21: 1 row for 2 images was a bare RuntimeError ("Size does not match") deep inside the explainer."""
    engine = EVET(tiny_cnn(), cam=cam, target_layers=layer, alpha=0.5, output_transform=lambda out: out[:1])
    with pytest.raises(ValueError, match=r"one row of logits per image, \(2, K\) for 2 images, but `output_transform`"):
        engine(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize(
    ("head", "described"),
    [(nn.LogSoftmax(dim=1), "outputs log-probabilities"), (nn.Softmax(dim=1), "outputs probabilities")],
)
def test_engine_warns_once_for_probabilities_and_log_probabilities(head, described):
    engine = EVET(nn.Sequential(tiny_cnn(), head), target_layers="0.features.5", alpha=0.5)
    with pytest.warns(UserWarning, match=f"EVET: the model {described}") as record:
        engine(torch.rand(2, 3, 16, 16))
        engine(torch.rand(1, 3, 16, 16))
    assert len([w for w in record if "EVET: the model" in str(w.message)]) == 1


def test_not_logits_leaves_logits_alone():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.2, -3.0, -0.1]])  # rows <= 0 in the second, but logsumexp != 0
    assert not_logits(logits) is None
    assert not_logits(torch.tensor([[0.3], [0.9]])) is None  # one column: a binary logit in [0, 1]
    assert not_logits(torch.tensor([[float("nan"), 0.5], [0.5, 0.5]])).startswith("outputs probabilities")
