"""EVET with ``alpha="auto"`` (issue 9): one run, every grid alpha blended and scored, the choice recomputed.

alpha enters only Eq. (5)-(7), so ``result.fused_mean`` (M_hat) and ``result.fused_sigma`` (sigma) must give the
map at any alpha; these tests check the engine against that, against a fixed-alpha run, against scores computed
with the model directly, and on a constructed model where the alpha each objective picks is known exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from evet_lightning import EVET
from evet_lightning.functional.alpha import DEFAULT_ALPHA_GRID, objective_values
from evet_lightning.functional.fusion import blend, fuse_maps, min_max_normalize
from evet_lightning.functional.perturbation import perturb
from evet_lightning.saliency.transforms import HorizontalFlip, Identity, Rotate, Scale
from tests._helpers.fusion_reference import reference_fuse
from tests._helpers.models import tiny_cnn

TRANSFORMS = [HorizontalFlip(), Rotate(10.0), Scale(0.9)]
SIZE = 12


def _images(batch: int = 3, seed: int = 0, channels: int = 3) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 2.0, batch).view(-1, 1, 1, 1)
    return torch.randn(batch, channels, SIZE, SIZE, generator=generator) * scale


def _evet(model: nn.Module, **kwargs) -> EVET:
    kwargs.setdefault("target_layers", "features.5")
    kwargs.setdefault("transforms", TRANSFORMS)
    return EVET(model, **kwargs)


def _probabilities(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    with torch.no_grad():
        return model(images).softmax(dim=1).gather(1, targets.view(-1, 1)).squeeze(1)


def _blend_masked(result, alpha: float) -> Tensor:
    return blend(result.fused_mean, result.fused_sigma, alpha).masked_fill(~result.finite.view(-1, 1, 1), 0.0)


def _reference_choice(grid: list[float], clean: list[float], scores: list[list[float]], objective: str) -> int:
    """The chosen index from Eq. (10)-(11), written out: first minimum drop / first maximum increase, or the
    largest alpha whose average drop is within one percentage point of the grid's best."""
    n = len(clean)
    drops = [sum(max(y - o, 0.0) / y for y, o in zip(clean, row, strict=True)) / n for row in scores]
    increases = [sum(o > y for y, o in zip(clean, row, strict=True)) / n for row in scores]
    if objective == "average_drop":
        return drops.index(min(drops))
    if objective == "increase_in_confidence":
        return increases.index(max(increases))
    assert objective == "faithful_boost"
    best = min(drops)
    return max(a for a in range(len(grid)) if drops[a] - best <= 0.01 + 1e-9)


def test_auto_saliency_is_the_blend_at_the_chosen_alpha_and_equals_the_fixed_run():
    model = tiny_cnn(seed=1)
    images, targets = _images(batch=4, seed=1), torch.tensor([0, 1, 2, 0])
    images[2, 0, 3, 3] = math.nan  # a non-finite image: zero maps, left out of the choice
    auto = _evet(model)(images, targets)
    assert auto.finite.tolist() == [True, True, False, True]
    torch.testing.assert_close(auto.alpha_grid, torch.tensor(DEFAULT_ALPHA_GRID, dtype=torch.float64), atol=0, rtol=0)
    assert auto.alpha in DEFAULT_ALPHA_GRID
    assert torch.equal(auto.saliency, _blend_masked(auto, auto.alpha))
    assert torch.equal(auto.saliency[2], torch.zeros(SIZE, SIZE))
    assert auto.alpha_curve.num_samples.item() == 3.0
    for alpha in DEFAULT_ALPHA_GRID:
        fixed = _evet(model, alpha=alpha)(images, targets)
        assert fixed.alpha == alpha and fixed.alpha_grid is None and fixed.alpha_scores is None
        assert fixed.alpha_curve is None and fixed.alpha_objective is None
        # The alpha-free parts are the same run's; the map is the blend at that alpha.
        torch.testing.assert_close(fixed.fused_mean, auto.fused_mean, atol=0, rtol=0, equal_nan=True)
        torch.testing.assert_close(fixed.fused_sigma, auto.fused_sigma, atol=0, rtol=0, equal_nan=True)
        assert torch.equal(fixed.saliency, _blend_masked(auto, alpha)), alpha
        if alpha == auto.alpha:
            assert torch.equal(fixed.saliency, auto.saliency)
    # The grid's maps really differ, so the equalities above pin the alpha.
    assert not torch.equal(_blend_masked(auto, 0.0), _blend_masked(auto, 1.0))


def test_alpha_scores_are_the_target_probabilities_of_each_blended_map():
    model = tiny_cnn(seed=2)
    images, targets = _images(batch=3, seed=2), torch.tensor([2, 0, 1])
    normalization = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    grid = (0.0, 0.3, 0.75, 1.5, 4.0)
    result = _evet(model, alpha_grid=grid, normalization=normalization)(images, targets)
    assert result.alpha_scores.shape == (len(grid), 3)
    expected = []
    for alpha in grid:
        saliency = blend(result.fused_mean, result.fused_sigma, alpha)
        perturbed = perturb(images, saliency, "black", normalization)
        expected.append(_probabilities(model, perturbed, targets))
    expected = torch.stack(expected)
    torch.testing.assert_close(result.alpha_scores, expected, atol=1e-6, rtol=0)
    # Each alpha's scores are told apart from its neighbours' at that tolerance.
    assert float((expected[1:] - expected[:-1]).abs().amax(dim=1).min()) > 1e-5
    chosen = grid.index(result.alpha)
    assert torch.equal(result.saliency_scores, result.alpha_scores[chosen])
    torch.testing.assert_close(result.clean_scores, _probabilities(model, images, targets), atol=1e-6, rtol=0)
    # A "zeros" baseline would be told apart: the normalization reaches the scoring of the candidates.
    zeros = _probabilities(model, perturb(images, result.saliency, "zeros"), targets)
    assert float((zeros - result.saliency_scores).abs().max()) > 1e-3


@pytest.mark.parametrize("objective", ["faithful_boost", "average_drop", "increase_in_confidence"])
@pytest.mark.parametrize("seed", [10, 18])
def test_chosen_alpha_is_the_objectives_first_minimum_recomputed(objective, seed):
    model = tiny_cnn(seed=seed)
    images = _images(batch=6, seed=seed)
    grid = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
    result = _evet(model, alpha_grid=grid, alpha_objective=objective)(images)
    clean = result.clean_scores.double().tolist()
    scores = result.alpha_scores.double().tolist()
    original = result.view_scores[0].double().tolist()
    assert all(y > 0 for y in clean)
    expected = _reference_choice(list(grid), clean, scores, objective)
    assert result.alpha == grid[expected]
    # The curve the choice was made on, from the same scores (Eq. 10-11).
    n = len(clean)
    drops = [sum(max(y - o, 0.0) / y for y, o in zip(clean, row, strict=True)) / n for row in scores]
    increases = [sum(o > y for y, o in zip(clean, row, strict=True)) / n for row in scores]
    curve = result.alpha_curve
    torch.testing.assert_close(curve.average_drop, torch.tensor(drops, dtype=torch.float64), atol=1e-12, rtol=0)
    assert curve.increase_in_confidence.tolist() == increases
    original_drop = sum(max(y - o, 0.0) / y for y, o in zip(clean, original, strict=True))
    assert curve.original_drop.item() == pytest.approx(original_drop, abs=1e-12)
    assert curve.original_increase.item() == sum(o > y for y, o in zip(clean, original, strict=True))
    assert curve.energy is None and result.alpha_energy is None
    torch.testing.assert_close(result.alpha_objective, objective_values(curve, objective), atol=0, rtol=0)
    if objective == "faithful_boost":  # no decision hangs on rounding at the tolerance edge
        margins = [abs(d - min(drops) - 0.01) for d in drops]
        assert min(margins) > 1e-6


def test_the_recomputed_choices_are_not_all_the_same():
    # Guards the test above: over its objectives and seeds the chosen alphas differ (faithful_boost picks an
    # interior alpha for seed 10).
    chosen = set()
    grid = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
    for seed in (10, 18):
        model, images = tiny_cnn(seed=seed), _images(batch=6, seed=seed)
        for objective in ("faithful_boost", "average_drop", "increase_in_confidence"):
            chosen.add(_evet(model, alpha_grid=grid, alpha_objective=objective)(images).alpha)
    assert len(chosen) >= 3, chosen  # 0, 0.25, 1 and 4 here


@pytest.mark.parametrize("alpha", [0.5, "auto"])
def test_fixed_alpha_map_is_bit_identical_to_fuse_maps_of_the_same_views(alpha):
    model = tiny_cnn(seed=5)
    images, targets = _images(batch=3, seed=5), torch.tensor([0, 2, 1])
    evet = _evet(model, alpha=alpha, max_batch_size=64)
    result = evet(images, targets)
    # The per-view maps, rebuilt as the engine defines them: the plain method on every view in one batch,
    # min-max normalized, mapped back with T_v^-1; the valid masks of Eq. (1).
    views = [Identity(), *TRANSFORMS]
    num_views, batch = len(views), images.shape[0]
    transformed = torch.cat([view(images) for view in views])
    explanation = evet.explain(transformed, targets.repeat(num_views))
    normalized = min_max_normalize(explanation.maps).view(num_views, batch, SIZE, SIZE)
    maps = torch.stack([view.inverse(m[:, None])[:, 0] for view, m in zip(views, normalized, strict=True)])
    valid = torch.stack([view.valid_mask(SIZE, SIZE).expand(batch, -1, -1) for view in views])
    expected = fuse_maps(maps, result.view_scores, valid, threshold=0.99, alpha=0.5)
    if alpha == 0.5:
        assert torch.equal(result.saliency, expected)
    assert torch.equal(blend(result.fused_mean, result.fused_sigma, 0.5), expected)
    # And the plain-loop reference of Eq. (2)-(7).
    reference, kept, _ = reference_fuse(
        maps.double().tolist(), result.view_scores.double().tolist(), valid.tolist(), threshold=0.99, alpha=0.5
    )
    assert result.kept.tolist() == kept
    torch.testing.assert_close(expected, torch.tensor(reference, dtype=torch.float32), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ a case with known answers

GAIN = 4.0
BOX_VALUE, DISTRACTOR_VALUE = 0.8, 0.2
GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


class BoxModel(nn.Module):
    """Two classes on 8x8 grayscale images: ``logit_0 = GAIN * (mean(a over box) - 0.5 * mean(a over distractor))``
    with ``a = features(x) = x`` (a 1x1 identity conv), ``logit_1 = 0``; so ``f_0 = sigmoid(logit_0)``."""

    def __init__(self, box: Tensor, distractor: Tensor) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.features.bias.zero_()
        self.register_buffer("box", box.float())
        self.register_buffer("distractor", distractor.float())

    def forward(self, images: Tensor) -> Tensor:
        activation = self.features(images)[:, 0]
        inside = (activation * self.box).sum(dim=(1, 2)) / self.box.sum()
        outside = (activation * self.distractor).sum(dim=(1, 2)) / self.distractor.sum()
        logit = GAIN * (inside - 0.5 * outside)
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def _box_case() -> tuple[BoxModel, Tensor, Tensor, Tensor]:
    box = torch.zeros(8, 8, dtype=torch.bool)
    box[0:2, 0:4] = True
    distractor = torch.zeros(8, 8, dtype=torch.bool)
    distractor[4:6, 0:4] = True
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0][box] = BOX_VALUE
    image[0, 0][distractor] = DISTRACTOR_VALUE
    image[0, 0, 7, 7] = 1.0
    return BoxModel(box, distractor).eval(), image, box, distractor


def _box_expectations() -> dict[str, list[float]]:
    """Closed forms of the docstring of :func:`test_constructed_case_each_objective_picks_the_known_alpha`."""
    box_map = [min(BOX_VALUE + a * (BOX_VALUE - 0.5), 1.0) for a in GRID]
    distractor_map = [max(DISTRACTOR_VALUE + a * (DISTRACTOR_VALUE - 0.5), 0.0) for a in GRID]
    logits = [GAIN * (BOX_VALUE * b - 0.5 * DISTRACTOR_VALUE * d) for b, d in zip(box_map, distractor_map, strict=True)]
    return {
        "scores": [1 / (1 + math.exp(-logit)) for logit in logits],
        "clean": [1 / (1 + math.exp(-GAIN * (BOX_VALUE - 0.5 * DISTRACTOR_VALUE)))],
        "energy_box": [8 * b / (8 * b + 8 * d + 1) for b, d in zip(box_map, distractor_map, strict=True)],
        "energy_distractor": [8 * d / (8 * b + 8 * d + 1) for b, d in zip(box_map, distractor_map, strict=True)],
    }


@pytest.mark.parametrize(
    ("objective", "mask", "expected"),
    [
        ("faithful_boost", None, 2.0),
        (None, None, 2.0),  # the default objective
        ("average_drop", None, 0.5),
        ("increase_in_confidence", None, 0.5),
        ("energy_pointing_game", "box", 1.0),
        ("energy_pointing_game", "distractor", 0.0),
        ("faithful_boost", "box", 2.0),
    ],
)
def test_constructed_case_each_objective_picks_the_known_alpha(objective, mask, expected):
    """An 8x8 image: a 2x4 box of 0.8, a 2x4 distractor of 0.2, one pixel of 1 (7, 7), zeros elsewhere.

    Grad-CAM on ``features`` (the image itself): the channel weight is the spatial mean of the gradient,
    ``GAIN (1 - 0.5) / 64 > 0``, so every view's map is the min-max normalized image; with only a horizontal
    flip both views give the same map: ``sigma = 0`` and ``M_hat = x``. Eq. (5)-(7) at alpha ``a``: the box
    becomes ``J_B = min(0.8 + 0.3 a, 1)``, the distractor ``J_D = max(0.2 - 0.3 a, 0)``, 0 and 1 stay (so the
    min-max is a no-op). Black baseline: ``O_a = sigmoid(4 (0.8 J_B - 0.1 J_D))``, ``Y = sigmoid(4 * 0.7)``.

    - alpha 0, 0.1, 0.25: ``O < Y`` with drops 2.1%, 1.3%, 0.29%; alpha 0.5, 1, 2: ``O > Y`` (drop 0, an increase).
      ``average_drop`` and ``increase_in_confidence``: first of the ties, 0.5.
    - ``faithful_boost``: best drop 0; 0.25 (0.29%) and 0.5, 1, 2 are within one point: the largest, 2.
    - Energy in the box ``8 J_B / (8 J_B + 8 J_D + 1)`` rises to 8/9 at alpha 1 and stays (maps at 1 and 2 are
      equal): 1.0. Energy in the distractor falls with alpha: 0.0.
    """
    model, image, box, distractor = _box_case()
    kwargs = {} if objective is None else {"alpha_objective": objective}
    evet = EVET(model, target_layers="features", transforms=[HorizontalFlip()], alpha_grid=GRID, **kwargs)
    masks = {"box": box, "distractor": distractor, None: None}[mask]
    result = evet(image, masks=None if masks is None else masks[None])
    assert result.alpha == expected
    # The closed forms behind the choice.
    closed = _box_expectations()
    assert result.targets.tolist() == [0]
    assert torch.equal(result.fused_sigma, torch.zeros(1, 8, 8))
    torch.testing.assert_close(result.fused_mean, image[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(result.clean_scores, torch.tensor(closed["clean"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.alpha_scores[:, 0], torch.tensor(closed["scores"]), atol=1e-5, rtol=0)
    assert torch.equal(result.alpha_scores[4], result.alpha_scores[5])  # alpha 1 and 2 give the same map
    if mask is not None:
        energy = closed["energy_box" if mask == "box" else "energy_distractor"]
        torch.testing.assert_close(
            result.alpha_energy[:, 0], torch.tensor(energy, dtype=torch.float64), atol=1e-5, rtol=0
        )
        assert result.alpha_curve.energy is not None
    else:
        assert result.alpha_energy is None and result.alpha_curve.energy is None


def test_energy_pointing_game_objective_needs_masks_in_the_call():
    model, image, box, _ = _box_case()
    evet = EVET(model, target_layers="features", transforms=[HorizontalFlip()], alpha_objective="energy_pointing_game")
    with pytest.raises(ValueError, match="masks"):
        evet(image)
    assert evet(image, masks=box[None].float()).alpha == 1.0  # float masks count where > 0.5
    with pytest.raises(ValueError, match="masks"):
        evet(image, masks=box)  # (H, W) instead of (B, H, W)
    # A fixed alpha does not use the objective: no masks needed.
    fixed = EVET(model, "features", transforms=[HorizontalFlip()], alpha=0.5, alpha_objective="energy_pointing_game")
    assert fixed(image).alpha == 0.5


def test_max_batch_size_auto_gives_the_same_maps_as_an_explicit_chunk():
    model = tiny_cnn(seed=6)
    images = _images(batch=5, seed=6)
    auto = _evet(model, max_batch_size="auto")(images)
    for size in (1, 3):
        chunked = _evet(model, max_batch_size=size)(images)
        assert chunked.alpha == auto.alpha
        assert torch.equal(chunked.targets, auto.targets)
        for name in ("saliency", "original", "fused_mean", "fused_sigma"):
            torch.testing.assert_close(getattr(chunked, name), getattr(auto, name), atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(chunked.alpha_scores, auto.alpha_scores, atol=1e-6, rtol=0)


def test_auto_leaves_the_model_as_found():
    model = tiny_cnn(seed=7)
    model.train()
    model.features[0].eval()
    model.head[2].bias.requires_grad_(False)
    grad = torch.full_like(model.head[2].weight, 0.25)
    model.head[2].weight.grad = grad
    bn = model.features[4]
    running = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    training = {name: module.training for name, module in model.named_modules()}
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {name: value.clone() for name, value in model.state_dict().items()}
    result = _evet(model)(_images(seed=7), score_saliency=True)
    assert result.alpha_scores is not None
    assert {name: module.training for name, module in model.named_modules()} == training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == requires
    assert model.head[2].weight.grad is grad and torch.equal(grad, torch.full_like(grad, 0.25))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "head.2.weight")
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert torch.equal(bn.num_batches_tracked, running[2])
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("alpha", ["auto", 0.5])
def test_empty_batch_raises(alpha):
    with pytest.raises(ValueError, match="`images`"):
        _evet(tiny_cnn(), alpha=alpha)(torch.zeros(0, 3, SIZE, SIZE))


def test_auto_works_under_inference_mode_and_no_grad():
    model = tiny_cnn(seed=8)
    images, targets = _images(seed=8), torch.tensor([1, 0, 2])
    evet = _evet(model)
    expected = evet(images, targets)
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            result = evet(images, targets)
        assert result.alpha == expected.alpha
        torch.testing.assert_close(result.saliency, expected.saliency, atol=0, rtol=0)
        torch.testing.assert_close(result.alpha_scores, expected.alpha_scores, atol=0, rtol=0)
    with torch.inference_mode():
        inference_images = images.clone()
    assert inference_images.is_inference()
    result = evet(inference_images, targets)
    torch.testing.assert_close(result.saliency, expected.saliency, atol=0, rtol=0)
