"""EVET's fusion step (Eq. 2-7): `fuse_maps` against the plain-loop reference and hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from evet_lightning.functional.fusion import fuse_maps, fuse_maps_detailed
from tests._helpers.fusion_reference import reference_fuse, reference_min_max


def _random_case(
    num_views: int, batch: int, height: int, width: int, threshold: float, seed: int, with_valid: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(num_views, batch, height, width, generator=generator)
    # Scores around s_0 so that some views pass the filter and some do not, none near the decision boundary.
    scores = 0.2 + 0.6 * torch.rand(num_views, batch, generator=generator)
    for _ in range(100):
        close = (scores - threshold * scores[:1]).abs() < 1e-4
        close[0] = False
        if not bool(close.any()):
            break
        scores = torch.where(close, scores + 0.01, scores)
    valid = None
    if with_valid:
        valid = torch.rand(num_views, batch, height, width, generator=generator) > 0.3
        valid[0, :, 0, 0] = False  # view 0 counts everywhere, even where a caller marks it invalid
    return maps, scores, valid


@pytest.mark.parametrize(
    ("num_views", "batch", "height", "width"), [(1, 1, 3, 3), (2, 3, 4, 5), (5, 2, 6, 3), (8, 2, 5, 7)]
)
@pytest.mark.parametrize("with_valid", [False, True])
@pytest.mark.parametrize(("threshold", "alpha"), [(0.99, 0.5), (0.5, 2.0), (1.0, 0.0), (0.8, 10.0)])
def test_fuse_maps_matches_plain_loop_reference(num_views, batch, height, width, with_valid, threshold, alpha):
    maps, scores, valid = _random_case(
        num_views, batch, height, width, threshold, seed=height * width, with_valid=with_valid
    )
    fused = fuse_maps_detailed(maps, scores, valid, threshold=threshold, alpha=alpha)
    expected, kept, weights = reference_fuse(
        maps.double().tolist(),
        scores.double().tolist(),
        None if valid is None else valid.tolist(),
        threshold=threshold,
        alpha=alpha,
    )
    assert fused.saliency.shape == (batch, height, width)
    assert fused.saliency.dtype == torch.float32
    torch.testing.assert_close(fused.saliency, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)
    assert fused.kept.tolist() == kept
    torch.testing.assert_close(fused.weights, torch.tensor(weights, dtype=torch.float32), atol=1e-6, rtol=0)
    torch.testing.assert_close(fuse_maps(maps, scores, valid, threshold=threshold, alpha=alpha), fused.saliency)


def test_random_cases_exercise_both_filter_outcomes():
    # Guards the parametrized comparison above against testing only the "everything kept" path.
    maps, scores, _ = _random_case(8, 2, 5, 7, 0.99, seed=35, with_valid=False)
    kept = fuse_maps_detailed(maps, scores, threshold=0.99).kept
    assert bool(kept[1:].any()) and not bool(kept[1:].all())


def test_identical_views_give_min_max_of_boosted_map():
    view = torch.tensor([[0.1, 0.4, 0.5], [0.55, 0.7, 0.95]])
    maps = view.expand(4, 1, 2, 3).clone()
    scores = torch.tensor([[0.6], [0.7], [0.65], [0.9]])
    alpha = 0.8
    boosted = (view + alpha * (view - 0.5)).clamp(0, 1)  # sigma = 0 everywhere: J* is the boosted map
    expected = (boosted - boosted.min()) / (boosted.max() - boosted.min())
    torch.testing.assert_close(fuse_maps(maps, scores, alpha=alpha)[0], expected, atol=1e-6, rtol=0)


def test_hand_computed_sigma_weights_and_boost():
    # Pixel 0: views agree on 0.8 (sigma 0, boosted to 1); pixel 1: views 0 and 1 (sigma = 1, J* = M_hat);
    # pixel 2: views agree on 0.1 (boosted to 0).
    maps = torch.tensor([[[[0.8, 0.0, 0.1]]], [[[0.8, 1.0, 0.1]]]])
    scores = torch.tensor([[0.3], [0.6]])  # w = (1/3, 2/3): M_hat at pixel 1 is 2/3, boosted would be 1
    fused = fuse_maps_detailed(maps, scores, threshold=0.99, alpha=1.0)
    torch.testing.assert_close(fused.weights, torch.tensor([[1 / 3], [2 / 3]]))
    torch.testing.assert_close(fused.saliency, torch.tensor([[[1.0, 2 / 3, 0.0]]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_views", [2, 3, 4, 5])
def test_sigma_is_normalized_by_its_upper_bound(num_views):
    # A pixel whose views split as evenly as possible between 0 and 1 has the largest possible sample
    # standard deviation, so its normalized sigma is 1 and J* there is the unboosted weighted mean.
    scores = (0.3 + 0.2 * torch.arange(num_views, dtype=torch.float32)).view(num_views, 1)  # all kept
    split = torch.tensor([float(v % 2) for v in range(num_views)])
    maps = torch.stack([torch.zeros(num_views), torch.ones(num_views), split], dim=1).view(num_views, 1, 1, 3)
    fused = fuse_maps_detailed(maps, scores, threshold=0.99, alpha=3.0)
    assert bool(fused.kept.all())
    weighted_mean = float((fused.weights[:, 0] * split).sum())
    assert not math.isclose(weighted_mean, 0.5, abs_tol=0.05)  # the boost would move it
    torch.testing.assert_close(fused.saliency[0, 0], torch.tensor([0.0, 1.0, weighted_mean]), atol=1e-6, rtol=0)


def test_filtered_view_is_excluded_and_has_zero_weight():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 2, 5, 6, generator=generator)
    scores = torch.tensor([[0.8, 0.5], [0.9, 0.6], [0.79, 0.1], [0.85, 0.55]])  # view 2 below 0.99 * s_0
    fused = fuse_maps_detailed(maps, scores, threshold=0.99, alpha=0.5)
    assert fused.kept[2].tolist() == [False, False]
    assert fused.kept[[0, 1, 3]].all()
    assert fused.weights[2].tolist() == [0.0, 0.0]
    changed = maps.clone()
    changed[2] = torch.rand(2, 5, 6, generator=generator)
    assert torch.equal(fuse_maps(changed, scores, threshold=0.99, alpha=0.5), fused.saliency)
    # The same view kept (a lower threshold) does change the result: the comparison above can fail.
    assert not torch.equal(fuse_maps(changed, scores, threshold=0.1), fuse_maps(maps, scores, threshold=0.1))


def test_view_zero_is_always_kept():
    maps = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    scores = torch.tensor([[0.5, 0.0], [0.2, 0.0], [0.9, 0.0]])
    fused = fuse_maps_detailed(maps, scores, threshold=1.0)
    assert fused.kept[0].all()
    assert fused.kept[:, 0].tolist() == [True, False, True]
    assert fused.kept[:, 1].tolist() == [True, False, False]  # s_v > s_0 is strict: equal scores are dropped
    torch.testing.assert_close(fused.weights.sum(dim=0), torch.ones(2))
    assert fused.weights[:, 1].tolist() == [1.0, 0.0, 0.0]  # all kept scores 0: uniform over the kept views


@pytest.mark.parametrize("seed", range(4))
def test_weights_sum_to_one_and_follow_scores(seed):
    maps, scores, valid = _random_case(6, 3, 4, 4, 0.7, seed=seed, with_valid=True)
    fused = fuse_maps_detailed(maps, scores, valid, threshold=0.7)
    torch.testing.assert_close(fused.weights.sum(dim=0), torch.ones(3))
    kept_scores = scores * fused.kept
    torch.testing.assert_close(fused.weights, kept_scores / kept_scores.sum(dim=0, keepdim=True))


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_constant_maps_become_zeros(value):
    maps = torch.full((3, 2, 4, 5), value)
    fused = fuse_maps(maps, torch.tensor([[0.5, 0.2], [0.6, 0.3], [0.7, 0.4]]), alpha=1.0)
    assert torch.equal(fused, torch.zeros(2, 4, 5))


def test_invalid_pixels_are_left_out():
    maps = torch.zeros(2, 1, 2, 2)
    maps[0, 0] = torch.tensor([[0.2, 0.9], [0.4, 0.6]])
    maps[1, 0] = torch.tensor([[0.2, 0.0], [0.4, 0.6]])  # pixel (0, 1) is a zero-filled corner of view 1
    valid = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    valid[1, 0, 0, 1] = False
    scores = torch.tensor([[0.5], [0.5]])
    with_mask = fuse_maps(maps, scores, valid, alpha=0.0)
    view0_only = reference_min_max([[0.2, 0.9], [0.4, 0.6]])  # the views agree wherever view 1 is valid
    torch.testing.assert_close(with_mask[0], torch.tensor(view0_only), atol=1e-6, rtol=0)
    assert not torch.allclose(fuse_maps(maps, scores, alpha=0.0), with_mask)


def test_alpha_zero_is_min_max_of_weighted_mean():
    maps, scores, _ = _random_case(5, 2, 4, 6, 0.5, seed=3, with_valid=False)
    fused = fuse_maps_detailed(maps, scores, threshold=0.5, alpha=0.0)
    mean = (fused.weights[:, :, None, None] * maps).sum(dim=0)
    low = mean.flatten(1).min(dim=1).values[:, None, None]
    high = mean.flatten(1).max(dim=1).values[:, None, None]
    torch.testing.assert_close(fused.saliency, (mean - low) / (high - low), atol=1e-6, rtol=0)


def test_output_is_finite_and_in_unit_interval():
    maps, scores, valid = _random_case(8, 4, 7, 9, 0.99, seed=11, with_valid=True)
    for alpha in (0.0, 0.5, 5.0):
        fused = fuse_maps(maps, scores, valid, alpha=alpha)
        assert torch.isfinite(fused).all()
        assert fused.min() >= 0 and fused.max() <= 1
        assert torch.allclose(fused.flatten(1).amax(dim=1), torch.ones(4))


_MAPS = torch.rand(3, 2, 4, 4)
_SCORES = torch.rand(3, 2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"maps": _MAPS[0]}, "maps"),
        ({"maps": _MAPS[None]}, "maps"),
        ({"scores": _SCORES[:2]}, "scores"),
        ({"scores": _SCORES[:, :1]}, "scores"),
        ({"scores": _SCORES[:, :, None]}, "scores"),
        ({"valid": torch.ones(3, 2, 4, 3, dtype=torch.bool)}, "valid"),
        ({"valid": torch.ones(3, 2, 4, 4)}, "valid"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    arguments = {"maps": _MAPS, "scores": _SCORES, "valid": None, "threshold": 0.99, "alpha": 0.5, **kwargs}
    maps, scores, valid = arguments.pop("maps"), arguments.pop("scores"), arguments.pop("valid")
    with pytest.raises(ValueError, match=f"`{name}`"):
        fuse_maps(maps, scores, valid, **arguments)
    with pytest.raises(ValueError, match=f"`{name}`"):
        fuse_maps_detailed(maps, scores, valid, **arguments)


def test_fuse_maps_is_public_api():
    # The public API contract fixes `from evet_lightning.functional import fuse_maps`.
    import evet_lightning.functional as functional

    assert functional.fuse_maps is fuse_maps
    assert "fuse_maps" in functional.__all__
