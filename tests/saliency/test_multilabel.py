"""Multi-label models in the engine (issue 23): task and activation, and (image, class) pairs.

Y and O are checked against the sigmoid of logits computed here; the fused map against the plain-loop reference of
the paper's Eq. (2)-(7) fed with sigmoid scores; every pair of ``explain_pairs`` against a single-class EVET call.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from evet_lightning import EVET
from evet_lightning.functional import deletion_curve, perturb, target_probabilities
from evet_lightning.functional.class_masks import pair_masks
from evet_lightning.functional.energy_pointing_game import energy_fraction
from evet_lightning.functional.fusion import blend, min_max_normalize
from evet_lightning.saliency.explainers import NativeCAM
from evet_lightning.saliency.pairs import select_pairs
from evet_lightning.saliency.settings import EVETSettings
from evet_lightning.saliency.transforms import HorizontalFlip, Identity, Rotate, Scale
from tests._helpers.fusion_reference import reference_fuse
from tests._helpers.models import tiny_cnn
from tests._helpers.saliency import input_times_gradient

TRANSFORMS = [HorizontalFlip(), Rotate(10.0), Scale(0.9)]
LAYER = "net.features.5"


class ShiftedLogits(nn.Module):
    """``tiny_cnn`` with 4 outputs plus a known offset per class: classes 0 and 1 sure (+4), 2 and 3 unsure (-1).

    Two classes near sigmoid 1 at once: their softmax shares are about 1/2 each, their sigmoids about 0.98, so a
    softmax reading cannot pass for the sigmoid one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(num_classes=4)
        self.register_buffer("offset", torch.tensor([4.0, 4.0, -1.0, -1.0]))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images) + self.offset


def _images(batch: int = 3, seed: int = 0, width: int = 16) -> Tensor:
    return torch.rand(batch, 3, 16, width, generator=torch.Generator().manual_seed(seed))


def _sigmoid_of_class(model: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
    with torch.no_grad():
        logits = model.eval()(images).double()
    return (1.0 / (1.0 + torch.exp(-logits.gather(1, classes.view(-1, 1)).squeeze(1)))).float()


def test_task_and_activation_are_validated_and_resolved() -> None:
    assert EVETSettings().score_activation == "softmax"
    assert EVETSettings(task="multilabel").score_activation == "sigmoid"
    assert EVETSettings(task="multilabel", activation="softmax").score_activation == "softmax"
    assert EVETSettings(task="binary").score_activation == "softmax"
    assert EVET(ShiftedLogits(), task="multilabel").activation == "sigmoid"
    with pytest.raises(ValueError, match=r"`task`.*'multi-label'"):
        EVETSettings(task="multi-label")
    with pytest.raises(ValueError, match=r"`activation`.*'relu'"):
        EVET(ShiftedLogits(), activation="relu")
    with pytest.raises(ValueError, match=r"task='binary'.*task='multilabel'"):
        EVETSettings(task="binary", activation="sigmoid")
    with pytest.raises(ValueError, match=r"task='binary'.*returned 4 classes"):
        EVET(ShiftedLogits(), target_layers=LAYER, transforms=TRANSFORMS, task="binary", alpha=0.5)(_images())


def test_multilabel_y_and_o_are_sigmoids_of_the_logits() -> None:
    model = ShiftedLogits()
    images, classes = _images(), torch.tensor([0, 1, 2])
    evet = EVET(model, target_layers=LAYER, transforms=TRANSFORMS, alpha=0.5, task="multilabel")
    result = evet(images, classes, score_saliency=True)
    torch.testing.assert_close(result.clean_scores, _sigmoid_of_class(model, images, classes), atol=1e-6, rtol=0)
    # O of the original map: view 0 is the identity, valid everywhere, so Phi uses J(x) itself (black = zeros).
    original_o = _sigmoid_of_class(model, perturb(images, result.original), classes)
    torch.testing.assert_close(result.view_scores[0], original_o, atol=1e-6, rtol=0)
    evet_o = _sigmoid_of_class(model, perturb(images, result.saliency), classes)
    torch.testing.assert_close(result.saliency_scores, evet_o, atol=1e-6, rtol=0)
    softmax = EVET(model, target_layers=LAYER, transforms=TRANSFORMS, alpha=0.5)(images, classes)
    assert (result.clean_scores[:2] - softmax.clean_scores[:2]).min() > 0.3  # sure classes: ~0.98 against ~0.5
    # The other scorers read the same activation.
    torch.testing.assert_close(
        target_probabilities(model, images, classes, activation="sigmoid"), result.clean_scores, atol=1e-6, rtol=0
    )
    # alpha="auto": every candidate's O, on which the alpha is chosen, is a sigmoid too.
    auto = EVET(model, target_layers=LAYER, transforms=TRANSFORMS, task="multilabel")(images, classes)
    candidates = blend(auto.fused_mean, auto.fused_sigma, auto.alpha_grid)
    for candidate, scores in zip(candidates, auto.alpha_scores, strict=True):
        torch.testing.assert_close(
            scores, _sigmoid_of_class(model, perturb(images, candidate), classes), atol=1e-6, rtol=0
        )
    curves = deletion_curve(model, images, result.saliency, classes, steps=4, activation="sigmoid")
    torch.testing.assert_close(curves[:, 0], result.clean_scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(curves[:, -1], _sigmoid_of_class(model, torch.zeros_like(images), classes))


def test_multilabel_fixed_alpha_map_matches_the_paper_reference_with_sigmoid_scores() -> None:
    model = ShiftedLogits().eval()
    images, classes = _images(2, seed=1), torch.tensor([1, 3])
    threshold, alpha = 0.99, 0.5
    result = EVET(
        model, target_layers=LAYER, transforms=TRANSFORMS, alpha=alpha, threshold=threshold, task="multilabel"
    )(images, classes)
    # Per view: the CAM of T_v(x), min-max, back to the original frame; invalid pixels filled from view 0 to score.
    cam = NativeCAM("GradCAM", [model.net.features[5]])
    views = [Identity(), *TRANSFORMS]
    maps, valid = [], []
    with torch.enable_grad():
        for view in views:
            explained = cam(model, view.forward(images), classes).maps
            maps.append(view.inverse(min_max_normalize(explained).unsqueeze(1)).squeeze(1))
            valid.append(view.valid_mask(16, 16, images.device).expand(2, -1, -1))
    scores = [
        _sigmoid_of_class(model, perturb(images, torch.where(ok, m, maps[0])), classes)
        for m, ok in zip(maps, valid, strict=True)
    ]
    expected, kept, weights = reference_fuse(
        [m.tolist() for m in maps],
        [s.tolist() for s in scores],
        [v.tolist() for v in valid],
        threshold=threshold,
        alpha=alpha,
    )
    torch.testing.assert_close(result.view_scores, torch.stack(scores), atol=1e-6, rtol=0)  # O of every view
    torch.testing.assert_close(result.saliency, torch.tensor(expected), atol=1e-5, rtol=0)
    assert result.kept.tolist() == kept
    torch.testing.assert_close(result.weights.double(), torch.tensor(weights, dtype=torch.float64), atol=1e-6, rtol=0)


PAIR_IMAGES = torch.tensor([2, 0, 2, 0, 1, 2])
PAIR_CLASSES = torch.tensor([0, 1, 1, 3, 2, 3])


@pytest.mark.parametrize(
    ("cam", "kwargs"),
    [
        ("GradCAM", {"target_layers": LAYER}),
        ("Gradient", {}),
        ("ScoreCAM", {"target_layers": LAYER}),
        (input_times_gradient, {}),
    ],
    ids=["GradCAM", "Gradient", "ScoreCAM", "callable"],
)
@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_each_pair_equals_a_single_class_call(cam, kwargs, task) -> None:
    model = ShiftedLogits()
    images = _images()
    evet = EVET(model, cam=cam, transforms=TRANSFORMS, alpha=0.5, task=task, max_batch_size=8, **kwargs)
    result = evet.explain_pairs(images, PAIR_IMAGES, PAIR_CLASSES, score_saliency=True)
    assert result.image_index.tolist() == PAIR_IMAGES.tolist()
    assert result.targets.tolist() == PAIR_CLASSES.tolist()
    for pair, (image, k) in enumerate(zip(PAIR_IMAGES.tolist(), PAIR_CLASSES.tolist(), strict=True)):
        single = evet(images[image : image + 1], torch.tensor([k]), score_saliency=True)
        for name in ("saliency", "original", "fused_mean", "fused_sigma", "clean_scores", "saliency_scores"):
            torch.testing.assert_close(getattr(result, name)[pair], getattr(single, name)[0], atol=1e-6, rtol=0)
        for name in ("weights", "view_scores"):
            torch.testing.assert_close(getattr(result, name)[:, pair], getattr(single, name)[:, 0], atol=1e-6, rtol=0)
        assert result.kept[:, pair].tolist() == single.kept[:, 0].tolist()


class CountRows(nn.Module):
    """Counts the images that reach the target layer."""

    def __init__(self) -> None:
        super().__init__()
        self.model = ShiftedLogits()
        self.rows = 0
        self.model.net.features[5].register_forward_hook(self._count)

    def _count(self, module: nn.Module, inputs: object, output: Tensor) -> None:
        self.rows += output.shape[0]

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


@pytest.mark.parametrize("cam", ["GradCAM", "Gradient", "GradCAMPlusPlus", "ScoreCAM"])
def test_pairs_share_the_views_forward_pass_of_an_image(cam) -> None:
    model = CountRows()
    images = _images(width=20)  # (B, 8, 8, 10) activations: 8 x 8 x 8 x 8 would read as channels-last too
    views, pairs, distinct = len(TRANSFORMS) + 1, PAIR_IMAGES.numel(), 3
    layers = {} if cam == "Gradient" else {"target_layers": "model.net.features.5"}
    evet = EVET(model, cam=cam, transforms=TRANSFORMS, alpha=0.5, task="multilabel", **layers)
    evet.explain_pairs(images, PAIR_IMAGES, PAIR_CLASSES)
    # The views of each distinct image run once (Score-CAM: with its masked images, one per channel of the layer's
    # 8); each pair scores its own V perturbed images.
    per_view = 1 + 8 if cam == "ScoreCAM" else 1
    assert model.rows == views * distinct * per_view + views * pairs
    model.rows = 0
    evet(images[PAIR_IMAGES], PAIR_CLASSES)
    assert model.rows == views * pairs * per_view + views * pairs


def test_pairs_with_auto_alpha_equal_a_call_on_the_repeated_images() -> None:
    model = ShiftedLogits()
    images = _images()
    masks = torch.zeros(PAIR_IMAGES.numel(), 16, 16, dtype=torch.bool)
    masks[:, 4:12, 2:9] = True
    evet = EVET(model, target_layers=LAYER, transforms=TRANSFORMS, task="multilabel", max_batch_size=8)
    result = evet.explain_pairs(images, PAIR_IMAGES, PAIR_CLASSES, masks=masks)
    expected = evet(images[PAIR_IMAGES], PAIR_CLASSES, masks=masks)
    assert result.alpha == expected.alpha
    for name in ("saliency", "alpha_scores", "alpha_energy", "alpha_objective", "clean_scores", "weights"):
        torch.testing.assert_close(getattr(result, name), getattr(expected, name), atol=1e-6, rtol=0)


def test_pair_arguments_are_checked() -> None:
    evet = EVET(ShiftedLogits(), target_layers=LAYER, transforms=TRANSFORMS, alpha=0.5)
    images = _images()
    with pytest.raises(ValueError, match=r"`image_index`.*\[0, 3\).*\[0, 3\]"):
        evet.explain_pairs(images, torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        evet.explain_pairs(images, torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="`classes` to be an integer"):
        evet.explain_pairs(images, torch.tensor([0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="at least one"):
        evet.explain_pairs(images, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        evet.explain_pairs(images, torch.tensor([0]), torch.tensor([4]))
    with pytest.raises(ValueError, match=r"`masks`.*\(2, 16, 16\) like the pairs"):
        evet.explain_pairs(images, torch.tensor([0, 1]), torch.tensor([0, 1]), masks=torch.ones(3, 16, 16))


def test_pairs_alpha_energy_leaves_ignored_pixels_out() -> None:
    model = ShiftedLogits()
    images = _images()
    segmentation = torch.zeros(3, 16, 16, dtype=torch.long)
    segmentation[:, 3:10, 2:8], segmentation[:, 6:14, 9:15] = 1, 3
    segmentation[:, 0, :] = 255  # a void border row
    obj, valid = pair_masks(segmentation, PAIR_IMAGES, PAIR_CLASSES)
    evet = EVET(model, target_layers=LAYER, transforms=TRANSFORMS, task="multilabel")
    result = evet.explain_pairs(images, PAIR_IMAGES, PAIR_CLASSES, masks=(obj, valid))
    candidates = blend(result.fused_mean, result.fused_sigma, result.alpha_grid)
    torch.testing.assert_close(result.alpha_energy, energy_fraction(candidates, obj, valid), atol=1e-6, rtol=0)
    counted_as_background = energy_fraction(candidates, obj)
    assert bool((counted_as_background <= result.alpha_energy + 1e-12).all())
    assert bool((counted_as_background < result.alpha_energy - 1e-4).any())


def test_pair_policies_and_their_errors() -> None:
    labels = torch.tensor([[True, False, True, False], [False, False, False, False], [False, True, True, True]])
    logits = torch.tensor([[-2.0, 5.0, -1.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 1.0, 4.0, 2.0]])
    image_index, classes = select_pairs(labels.float())
    assert image_index.tolist() == [0, 0, 2, 2, 2] and classes.tolist() == [0, 2, 1, 2, 3]
    image_index, classes = select_pairs(labels, logits, policy="most_confident")  # a negative label never wins
    assert image_index.tolist() == [0, 2] and classes.tolist() == [2, 2]
    image_index, classes = select_pairs(None, logits, policy="predicted", threshold=0.9)  # sigmoid(z) > 0.9
    assert image_index.tolist() == [0, 1, 2] and classes.tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match=r"`policy`.*'all'"):
        select_pairs(labels, policy="all")
    with pytest.raises(ValueError, match=r"`logits` of shape \(B, C\) with policy='predicted'"):
        select_pairs(labels, policy="predicted")
    with pytest.raises(ValueError, match="only 0 and 1"):
        select_pairs(labels.long() * 2)
    with pytest.raises(ValueError, match=r"multi-hot `labels` of shape \(B, C\).*\(3,\)"):
        select_pairs(torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"`threshold`"):
        select_pairs(None, logits, policy="predicted", threshold=1.5)


@pytest.mark.parametrize("max_batch_size", [1, 3])
def test_pairs_across_chunks_under_inference_mode_with_a_non_finite_image(max_batch_size) -> None:
    model = ShiftedLogits()
    images = _images()
    images[1, 0, 0, 0] = float("nan")  # pair 4 is image 1's
    evet = EVET(model, target_layers=LAYER, transforms=TRANSFORMS, alpha=0.5, max_batch_size=max_batch_size)
    with torch.inference_mode():
        result = evet.explain_pairs(images, PAIR_IMAGES, PAIR_CLASSES)
    expected = evet(images[PAIR_IMAGES], PAIR_CLASSES)
    assert result.finite.tolist() == [True, True, True, True, False, True]
    assert bool(result.saliency[4].eq(0).all()) and bool(result.saliency.isfinite().all())
    torch.testing.assert_close(result.saliency, expected.saliency, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.view_scores, expected.view_scores, atol=1e-6, rtol=0)
