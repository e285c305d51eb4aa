"""EVET end to end: result fields, an independent re-computation, chunking, layouts, baselines and NaN."""

from __future__ import annotations

import pytest
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from evet_lightning import EVET
from evet_lightning.functional.fusion import min_max_normalize
from evet_lightning.saliency.transforms import Compose, HorizontalFlip, Identity, Rotate, Scale, Shear
from tests._helpers.fusion_reference import reference_fuse, reference_min_max
from tests._helpers.models import LeftRightModel, tiny_cnn

TRANSFORMS = [HorizontalFlip(), Rotate(10.0), Scale(0.9), Compose([HorizontalFlip(), Shear(0.2)])]


def _images(batch: int = 3, channels: int = 3, height: int = 16, width: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def _evet(model, **kwargs) -> EVET:
    kwargs.setdefault("target_layers", "features.5")
    kwargs.setdefault("transforms", TRANSFORMS)
    return EVET(model, **kwargs)


def _probability(model, images, targets):
    with torch.no_grad():
        return model(images).softmax(dim=1).gather(1, targets.view(-1, 1)).squeeze(1)


@pytest.mark.parametrize("alpha", ["auto", 0.5])
@pytest.mark.parametrize("score_saliency", [False, True])
def test_result_fields_shapes_dtypes_devices(score_saliency, alpha):
    model = tiny_cnn()
    images = _images()
    result = _evet(model, alpha=alpha)(images, torch.tensor([0, 1, 2]), score_saliency=score_saliency)
    num_views, batch = len(TRANSFORMS) + 1, 3
    expected = {
        "saliency": ((batch, 16, 20), torch.float32),
        "original": ((batch, 16, 20), torch.float32),
        "weights": ((num_views, batch), torch.float32),
        "kept": ((num_views, batch), torch.bool),
        "targets": ((batch,), torch.long),
        "view_scores": ((num_views, batch), torch.float32),
        "clean_scores": ((batch,), torch.float32),
        "finite": ((batch,), torch.bool),
    }
    if score_saliency or alpha == "auto":  # alpha="auto" scores every candidate map anyway
        expected["saliency_scores"] = ((batch,), torch.float32)
    else:
        assert result.saliency_scores is None
    if alpha == "auto":
        num_alphas = len(result.alpha_grid)
        expected["alpha_grid"] = ((num_alphas,), torch.float64)
        expected["alpha_scores"] = ((num_alphas, batch), torch.float32)
        assert result.alpha in result.alpha_grid.tolist()
    else:
        assert result.alpha == 0.5 and result.alpha_grid is None and result.alpha_curve is None
    for name, (shape, dtype) in expected.items():
        value = getattr(result, name)
        assert tuple(value.shape) == shape, name
        assert value.dtype == dtype, name
        assert value.device == images.device, name
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    for maps in (result.saliency, result.original):
        assert maps.min() >= 0 and maps.max() <= 1
        # Min-max normalized: the maximum is 1, or the map is all zeros (a class with no positive evidence).
        assert set(maps.amax(dim=(1, 2)).tolist()) <= {0.0, 1.0}
        assert float(maps.max()) == 1.0
    assert result.finite.all()
    assert result.targets.tolist() == [0, 1, 2]


def test_float64_model_gives_float32_maps():
    model = tiny_cnn().double()
    result = _evet(model)(_images().double())
    assert result.saliency.dtype == torch.float32 and result.original.dtype == torch.float32
    assert torch.isfinite(result.saliency).all()


def test_original_is_the_plain_method_min_max_normalized():
    model = tiny_cnn(seed=1)
    images, targets = _images(seed=1), torch.tensor([2, 0, 1])
    evet = _evet(model)
    explanation = evet.explain(images, targets)
    expected = torch.tensor([reference_min_max(m) for m in explanation.maps.double().tolist()], dtype=torch.float32)
    torch.testing.assert_close(evet(images, targets).original, expected, atol=1e-6, rtol=0)


def test_weights_and_kept():
    model = tiny_cnn(seed=2)
    images = _images(batch=4, seed=2)
    result = _evet(model, threshold=1.0)(images)
    assert result.kept[0].all()
    assert not result.kept.all()  # some view falls below the threshold here, so the next check means something
    assert (result.weights[~result.kept] == 0).all()
    assert (result.weights[result.kept] > 0).all()
    torch.testing.assert_close(result.weights.sum(dim=0), torch.ones(4))
    kept_scores = result.view_scores * result.kept
    torch.testing.assert_close(result.weights, kept_scores / kept_scores.sum(dim=0))
    assert torch.equal(result.kept[1:], result.view_scores[1:] > result.view_scores[:1])


def test_targets_none_is_argmax_of_clean_logits():
    model = tiny_cnn(seed=1)
    generator = torch.Generator().manual_seed(1)
    # Images of different contrast and colour, so the random model predicts more than one class.
    scale = torch.linspace(0.2, 3.0, 6).view(-1, 1, 1, 1)
    images = torch.randn(6, 3, 16, 20, generator=generator) * scale + 2 * torch.randn(6, 3, 1, 1, generator=generator)
    result = _evet(model)(images)
    with torch.no_grad():
        logits = model(images)
    assert torch.equal(result.targets, logits.argmax(dim=1))
    assert len(set(result.targets.tolist())) > 1
    torch.testing.assert_close(result.clean_scores, logits.softmax(dim=1).amax(dim=1))
    given = _evet(model)(images, logits.argmax(dim=1))
    torch.testing.assert_close(result.saliency, given.saliency, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cam", ["GradCAM", "Gradient"])
def test_target_is_fixed_on_the_untransformed_image(cam):
    # Bright left half: class 0 wins on the image, class 1 on its mirror image.
    model = LeftRightModel().eval()
    images = 0.3 + 0.05 * torch.rand(2, 1, 8, 10, generator=torch.Generator().manual_seed(4))
    images[..., :5] += 0.6
    with torch.no_grad():
        assert model(images).argmax(dim=1).tolist() == [0, 0]
        assert model(HorizontalFlip()(images)).argmax(dim=1).tolist() == [1, 1]
    target_layers = None if cam == "Gradient" else "features"
    evet = EVET(model, target_layers=target_layers, cam=cam, transforms=[HorizontalFlip()], threshold=0.5)
    # Guard: the flipped view explained for class 1 is a different map from the same view for class 0.
    flipped = HorizontalFlip()(images)
    maps_0 = evet.explain(flipped, torch.tensor([0, 0])).maps
    maps_1 = evet.explain(flipped, torch.tensor([1, 1])).maps
    assert float((maps_0 - maps_1).abs().max()) > 0.5
    result = evet(images)
    assert result.targets.tolist() == [0, 0]
    fixed = evet(images, torch.tensor([0, 0]))
    assert torch.equal(result.saliency, fixed.saliency)
    assert torch.equal(result.view_scores, fixed.view_scores)
    # With the mirror image's own argmax (class 1) the flipped view would be scored differently.
    assert not torch.allclose(evet(images, torch.tensor([1, 1])).view_scores[1], result.view_scores[1])


def test_end_to_end_against_independent_pipeline():
    """Every view by hand: T_v -> pytorch-grad-cam GradCAM -> min-max -> T_v^-1; scores; plain-loop fusion."""
    model = tiny_cnn(seed=5)
    images, targets = _images(batch=3, height=16, width=20, seed=5), torch.tensor([0, 2, 1])
    threshold, alpha = 0.99, 0.7
    height, width = images.shape[-2:]
    views = [Identity(), *TRANSFORMS]
    view_maps, view_valid = [], []
    for view in views:
        cam = pytorch_grad_cam.GradCAM(model=model, target_layers=[model.features[5]])
        try:
            grayscale = cam(input_tensor=view(images), targets=[ClassifierOutputTarget(int(k)) for k in targets])
        finally:
            cam.activations_and_grads.release()
        normalized = torch.tensor([reference_min_max(m) for m in grayscale.tolist()], dtype=torch.float32)
        view_maps.append(view.inverse(normalized[:, None])[:, 0])
        view_valid.append(view.valid_mask(height, width).expand(3, -1, -1))
    maps, valid = torch.stack(view_maps), torch.stack(view_valid)
    scores = []
    for v in range(len(views)):
        scoring_map = torch.where(valid[v], maps[v], maps[0])  # invalid pixels filled from view 0
        scores.append(_probability(model, images * scoring_map[:, None], targets))  # black baseline: x_d = 0
    scores = torch.stack(scores)
    margins = (scores[1:] - threshold * scores[:1]).abs()
    assert float(margins.min()) > 1e-5  # no filter decision hangs on rounding
    expected, kept, weights = reference_fuse(
        maps.double().tolist(), scores.double().tolist(), valid.tolist(), threshold=threshold, alpha=alpha
    )
    assert not all(all(row) for row in kept)  # the filter acts on this example

    model.zero_grad(set_to_none=True)
    result = _evet(model, threshold=threshold, alpha=alpha)(images, targets)
    torch.testing.assert_close(result.original, maps[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(result.view_scores, scores, atol=1e-5, rtol=0)
    assert result.kept.tolist() == kept
    torch.testing.assert_close(result.weights, torch.tensor(weights, dtype=torch.float32), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.clean_scores, _probability(model, images, targets), atol=1e-6, rtol=0)
    assert float((result.saliency - torch.tensor(expected)).abs().max()) < 1e-4


def test_chunking_is_invisible():
    model = tiny_cnn(seed=6)
    images = _images(batch=5, seed=6)
    results = [_evet(model, max_batch_size=size)(images) for size in (1, 3, 64)]
    for result in results[1:]:
        assert torch.equal(result.targets, results[0].targets)
        assert torch.equal(result.kept, results[0].kept)
        for name in ("saliency", "original", "weights", "view_scores", "clean_scores"):
            torch.testing.assert_close(getattr(result, name), getattr(results[0], name), atol=1e-5, rtol=0)


def test_batch_of_one_equals_the_same_image_in_a_batch():
    model = tiny_cnn(seed=7)
    images = _images(batch=3, seed=7)
    together = _evet(model)(images)
    for index in range(3):
        alone = _evet(model)(images[index : index + 1])
        assert alone.saliency.shape == (1, 16, 20)
        torch.testing.assert_close(alone.saliency[0], together.saliency[index], atol=1e-5, rtol=0)
        assert alone.targets[0] == together.targets[index]


@pytest.mark.parametrize(("height", "width"), [(12, 28), (25, 11)])
def test_non_square_images(height, width):
    model = tiny_cnn(seed=8)
    images = _images(batch=2, height=height, width=width, seed=8)
    result = _evet(model)(images)
    assert result.saliency.shape == (2, height, width)
    torch.testing.assert_close(result.original, min_max_normalize(_evet(model).explain(images, result.targets).maps))
    assert float(result.saliency.amax(dim=(1, 2)).min()) == 1.0


def test_grayscale_model():
    model = tiny_cnn(seed=9, in_channels=1)
    result = _evet(model)(_images(batch=2, channels=1, seed=9))
    assert result.saliency.shape == (2, 16, 20)
    assert torch.isfinite(result.saliency).all() and float(result.saliency.max()) == 1.0


def test_channels_last_input_gives_the_same_result():
    model = tiny_cnn(seed=10)
    images = _images(batch=2, seed=10)
    expected = _evet(model)(images)
    result = _evet(model)(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(result.saliency, expected.saliency, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.view_scores, expected.view_scores, atol=1e-6, rtol=0)


def test_normalization_black_baseline_is_black_in_pixel_space():
    model = tiny_cnn(seed=11)
    images, targets = _images(batch=2, seed=11), torch.tensor([1, 2])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    result = _evet(model, normalization=(mean, std), baseline="black")(images, targets)
    black = ((0.0 - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1)
    saliency_map = result.original[:, None]
    expected = _probability(model, images * saliency_map + black * (1 - saliency_map), targets)
    torch.testing.assert_close(result.view_scores[0], expected, atol=1e-6, rtol=0)
    zeros = _probability(model, images * saliency_map, targets)
    assert float((zeros - expected).abs().max()) > 1e-3  # a zeros baseline would be told apart
    zeros_result = _evet(model, normalization=(mean, std), baseline="zeros")(images, targets)
    torch.testing.assert_close(zeros_result.view_scores[0], zeros, atol=1e-6, rtol=0)


def test_score_saliency_is_target_probability_of_perturbed_image():
    model = tiny_cnn(seed=12)
    images, targets = _images(batch=3, seed=12), torch.tensor([2, 1, 0])
    result = _evet(model)(images, targets, score_saliency=True)
    expected = _probability(model, images * result.saliency[:, None], targets)
    torch.testing.assert_close(result.saliency_scores, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(result.saliency_scores, result.view_scores[0])


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("use_targets", [True, False])
def test_non_finite_image_gets_zero_maps_and_others_are_unaffected(bad_value, use_targets):
    model = tiny_cnn(seed=13)
    images = _images(batch=3, seed=13)
    targets = torch.tensor([0, 1, 2]) if use_targets else None
    clean = _evet(model)(images[[0, 2]], None if targets is None else targets[[0, 2]])
    images[1, 1, 3, 4] = bad_value
    result = _evet(model)(images, targets)
    assert result.finite.tolist() == [True, False, True]
    assert torch.equal(result.saliency[1], torch.zeros(16, 20))
    assert torch.equal(result.original[1], torch.zeros(16, 20))
    for value in (result.saliency, result.original, result.weights, result.view_scores, result.clean_scores):
        assert torch.isfinite(value).all()
    torch.testing.assert_close(result.saliency[[0, 2]], clean.saliency, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.original[[0, 2]], clean.original, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.view_scores[:, [0, 2]], clean.view_scores, atol=1e-6, rtol=0)
