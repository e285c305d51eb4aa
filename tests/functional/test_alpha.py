"""Choosing alpha (issue 9): per-alpha sums against a plain loop, merging, objectives and the choice rule.

The references below are written from Eq. (10)-(12) of Oh et al. (WACV 2021) in plain Python floats:
average drop ``relu(Y - O) / Y`` (0 when ``Y <= 0``), increase in confidence ``O > Y``, energy pointing game
``sum of J inside the mask / sum of J`` (the mask's area fraction for an all-zero map, decision 4).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evet_lightning.functional.alpha import (
    ALPHA_OBJECTIVES,
    FAITHFUL_BOOST_TOLERANCE,
    AlphaCurve,
    alpha_curve,
    check_alpha_grid,
    check_alpha_objective,
    choose_alpha,
    map_energy,
    objective_values,
)

GRID = (0.0, 0.1, 0.25, 0.5, 1.0)


def _f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _reference_energy(saliency: list[list[float]], mask: list[list[bool]]) -> float:
    """Eq. (12) for one map; an all-zero map scores the mask's area fraction."""
    total = sum(v for row in saliency for v in row)
    inside = sum(
        v for row, mask_row in zip(saliency, mask, strict=True) for v, m in zip(row, mask_row, strict=True) if m
    )
    if total > 0:
        return inside / total
    return sum(m for row in mask for m in row) / sum(len(row) for row in mask)


def _reference_sums(clean, alpha_scores, original, alpha_energy=None, original_energy=None, include=None) -> dict:
    """Plain-loop per-alpha sums over the samples whose scores are all finite (and that ``include`` selects)."""
    num_alphas, batch = len(alpha_scores), len(clean)
    used = [
        b
        for b in range(batch)
        if math.isfinite(clean[b])
        and math.isfinite(original[b])
        and all(math.isfinite(alpha_scores[a][b]) for a in range(num_alphas))
        and (include is None or include[b])
    ]

    def drop(y: float, o: float) -> float:
        return max(y - o, 0.0) / y if y > 0 else 0.0

    sums = {
        "num_samples": float(len(used)),
        "drop": [sum(drop(clean[b], alpha_scores[a][b]) for b in used) for a in range(num_alphas)],
        "increase": [float(sum(alpha_scores[a][b] > clean[b] for b in used)) for a in range(num_alphas)],
        "original_drop": sum(drop(clean[b], original[b]) for b in used),
        "original_increase": float(sum(original[b] > clean[b] for b in used)),
    }
    if alpha_energy is not None:
        sums["energy"] = [sum(alpha_energy[a][b] for b in used) for a in range(num_alphas)]
        sums["original_energy"] = sum(original_energy[b] for b in used)
    return sums


def _assert_curve_matches(curve: AlphaCurve, sums: dict) -> None:
    def close(actual, expected):
        torch.testing.assert_close(actual, _f64(expected), atol=1e-12, rtol=0)

    assert curve.alphas.dtype == torch.float64
    close(curve.num_samples, sums["num_samples"])
    close(curve.drop, sums["drop"])
    close(curve.increase, sums["increase"])
    close(curve.original_drop, sums["original_drop"])
    close(curve.original_increase, sums["original_increase"])
    if "energy" in sums:
        close(curve.energy, sums["energy"])
        close(curve.original_energy, sums["original_energy"])
        close(curve.energy_pointing_game, [e / max(sums["num_samples"], 1) for e in sums["energy"]])
    else:
        assert curve.energy is None and curve.original_energy is None and curve.energy_pointing_game is None
    close(curve.average_drop, [d / max(sums["num_samples"], 1) for d in sums["drop"]])
    close(curve.increase_in_confidence, [i / max(sums["num_samples"], 1) for i in sums["increase"]])


def _random_case(seed: int = 0, batch: int = 7):
    """Scores with a NaN clean score (sample 2), an inf alpha score (sample 4, one alpha only), a NaN original
    score (sample 5), a zero clean score (sample 6), an exact O == Y tie (sample 0, alpha 0) and map energies."""
    generator = torch.Generator().manual_seed(seed)
    num_alphas = len(GRID)
    clean = (0.05 + 0.9 * torch.rand(batch, generator=generator, dtype=torch.float64)).tolist()
    alpha_scores = torch.rand(num_alphas, batch, generator=generator, dtype=torch.float64).tolist()
    original = torch.rand(batch, generator=generator, dtype=torch.float64).tolist()
    alpha_scores[0][0] = clean[0]  # O == Y: no drop, no increase
    clean[2] = math.nan
    alpha_scores[1][4] = math.inf
    original[5] = math.nan
    clean[6] = 0.0
    maps = torch.rand(num_alphas, batch, 4, 5, generator=generator, dtype=torch.float64)
    maps[2, 1] = 0.0  # an all-zero map scores the mask's area
    original_maps = torch.rand(batch, 4, 5, generator=generator, dtype=torch.float64)
    masks = torch.rand(batch, 4, 5, generator=generator) > 0.6
    return clean, alpha_scores, original, maps, original_maps, masks


def test_map_energy_matches_plain_loop_and_broadcasts_masks():
    _, _, _, maps, original_maps, masks = _random_case()
    energy = map_energy(maps, masks)  # (A, B, H, W) maps, (B, H, W) masks
    assert energy.shape == maps.shape[:2] and energy.dtype == torch.float64
    expected = [
        [_reference_energy(maps[a, b].tolist(), masks[b].tolist()) for b in range(maps.shape[1])]
        for a in range(maps.shape[0])
    ]
    torch.testing.assert_close(energy, _f64(expected), atol=1e-12, rtol=0)
    original = map_energy(original_maps.float(), masks)
    expected_original = [_reference_energy(m.tolist(), k.tolist()) for m, k in zip(original_maps, masks, strict=True)]
    torch.testing.assert_close(original, _f64(expected_original), atol=1e-6, rtol=0)


def test_map_energy_of_all_zero_map_is_the_mask_area_fraction():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, :3] = True
    mask[3, 1:3] = True  # 5 of 16 pixels
    saliency = torch.zeros(2, 4, 4)
    saliency[1, 0, 0] = 0.5  # one map with energy, all inside the mask
    energy = map_energy(saliency, mask)
    assert energy.tolist() == [5 / 16, 1.0]
    assert map_energy(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool)).item() == 0.0
    # A float mask counts its non-zero pixels.
    assert map_energy(torch.zeros(1, 4, 4), mask.float()[None] * 0.7).tolist() == [5 / 16]


def test_alpha_curve_exact_values_by_hand():
    # Dyadic values, so every sum is exact. Y = (0.5, 0.25); alpha 0: O = (0.25, 0.5), alpha 1: O = (0.5, 0.125).
    curve = alpha_curve(
        _f64([0.0, 1.0]),
        _f64([0.5, 0.25]),
        _f64([[0.25, 0.5], [0.5, 0.125]]),
        _f64([0.125, 0.25]),
        alpha_energy=_f64([[0.5, 0.25], [1.0, 0.75]]),
        original_energy=_f64([0.5, 0.5]),
    )
    assert curve.num_samples.item() == 2.0
    assert curve.drop.tolist() == [0.5, 0.5]  # 0.25 / 0.5 + 0;  0 + 0.125 / 0.25
    assert curve.increase.tolist() == [1.0, 0.0]  # only sample 1 at alpha 0 rises above Y; O == Y is no increase
    assert curve.energy.tolist() == [0.75, 1.75]
    assert curve.original_drop.item() == 0.75 and curve.original_increase.item() == 0.0
    assert curve.original_energy.item() == 1.0
    assert curve.average_drop.tolist() == [0.25, 0.25]
    assert curve.increase_in_confidence.tolist() == [0.5, 0.0]
    assert curve.energy_pointing_game.tolist() == [0.375, 0.875]


@pytest.mark.parametrize("with_energy", [False, True])
@pytest.mark.parametrize("include", [None, [True, False, True, True, True, True, False]])
def test_alpha_curve_matches_plain_loop_and_excludes_non_finite(with_energy, include):
    clean, alpha_scores, original, maps, original_maps, masks = _random_case()
    alpha_energy = map_energy(maps, masks) if with_energy else None
    original_energy = map_energy(original_maps, masks) if with_energy else None
    curve = alpha_curve(
        _f64(GRID),
        _f64(clean),
        _f64(alpha_scores),
        _f64(original),
        alpha_energy=alpha_energy,
        original_energy=original_energy,
        include=None if include is None else torch.tensor(include),
    )
    sums = _reference_sums(
        clean,
        alpha_scores,
        original,
        None if alpha_energy is None else alpha_energy.tolist(),
        None if original_energy is None else original_energy.tolist(),
        include,
    )
    # Samples 2, 4, 5 are non-finite (0, 1, 3, 6 remain; 6 has Y = 0, so no drop); `include` also drops 1 and 6.
    assert sums["num_samples"] == (4.0 if include is None else 2.0)
    _assert_curve_matches(curve, sums)
    assert torch.isfinite(curve.drop).all() and torch.isfinite(curve.original_drop)


def test_alpha_curve_float32_inputs_are_summed_in_float64():
    clean = torch.tensor([0.3, 0.7], dtype=torch.float32)
    scores = torch.tensor([[0.1, 0.9]], dtype=torch.float32)
    curve = alpha_curve(torch.tensor([0.5]), clean, scores, torch.tensor([0.2, 0.2]))
    assert curve.drop.dtype == torch.float64 and curve.alphas.dtype == torch.float64
    expected = (float(clean[0]) - float(scores[0, 0])) / float(clean[0])
    assert curve.drop.item() == pytest.approx(expected, abs=1e-15)
    assert curve.increase.item() == 1.0


def test_alpha_curve_requires_both_energies_or_neither():
    with pytest.raises(ValueError, match="alpha_energy"):
        alpha_curve(_f64([0.0]), _f64([0.5]), _f64([[0.5]]), _f64([0.5]), alpha_energy=_f64([[0.5]]))
    with pytest.raises(ValueError, match="original_energy"):
        alpha_curve(_f64([0.0]), _f64([0.5]), _f64([[0.5]]), _f64([0.5]), original_energy=_f64([0.5]))


@pytest.mark.parametrize("with_energy", [False, True])
def test_merge_equals_the_curve_of_the_concatenated_samples(with_energy):
    clean, alpha_scores, original, maps, original_maps, masks = _random_case(seed=3, batch=9)
    clean, alpha_scores, original = _f64(clean), _f64(alpha_scores), _f64(original)
    alpha_energy = map_energy(maps, masks) if with_energy else None
    original_energy = map_energy(original_maps, masks) if with_energy else None

    def curve(index: slice) -> AlphaCurve:
        return alpha_curve(
            _f64(GRID),
            clean[index],
            alpha_scores[:, index],
            original[index],
            alpha_energy=None if alpha_energy is None else alpha_energy[:, index],
            original_energy=None if original_energy is None else original_energy[index],
        )

    whole = curve(slice(None))
    merged = curve(slice(0, 4)).merge(curve(slice(4, 9)))
    assert whole.num_samples.item() == 6.0  # samples 2, 4, 5 excluded: the split crosses them
    for name in AlphaCurve._fields:
        expected, actual = getattr(whole, name), getattr(merged, name)
        if expected is None:
            assert actual is None, name
        else:
            torch.testing.assert_close(actual, expected, atol=1e-12, rtol=0, msg=name)


def test_merge_drops_energy_when_one_side_has_no_masks_and_rejects_other_grids():
    args = (_f64([0.5, 0.6]), _f64([[0.4, 0.7], [0.2, 0.3]]), _f64([0.1, 0.2]))
    with_masks = alpha_curve(
        _f64([0.0, 1.0]), *args, alpha_energy=_f64([[0.5, 0.5], [1.0, 1.0]]), original_energy=_f64([0.5, 0.5])
    )
    without = alpha_curve(_f64([0.0, 1.0]), *args)
    merged = with_masks.merge(without)
    assert merged.energy is None and merged.original_energy is None
    assert merged.num_samples.item() == 4.0
    assert merged.increase.tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="masks"):
        choose_alpha(merged, "energy_pointing_game")
    other_grid = alpha_curve(_f64([0.0, 0.5]), *args)
    with pytest.raises(ValueError, match="same alpha grid"):
        without.merge(other_grid)


# ----------------------------------------------------------------------------------------------- choose_alpha


def _curve(drop=None, increase=None, energy=None, alphas=GRID) -> AlphaCurve:
    """A hand-made curve of one sample, so each mean equals the given value exactly.

    The original map's drop is 1 (it removes all evidence), so "no less faithful than the original map" holds for
    every alpha unless a test sets ``original_drop``."""
    zeros = [0.0] * len(alphas)
    return AlphaCurve(
        _f64(alphas),
        _f64(1.0),
        _f64(zeros if drop is None else drop),
        _f64(zeros if increase is None else increase),
        None if energy is None else _f64(energy),
        _f64(1.0),
        _f64(0.0),
        None if energy is None else _f64(0.0),
    )


@pytest.mark.parametrize(
    ("objective", "curve", "expected"),
    [
        ("average_drop", _curve(drop=[0.3, 0.2, 0.1, 0.15, 0.5]), 2),
        ("increase_in_confidence", _curve(increase=[0.0, 0.25, 0.5, 0.75, 0.25]), 3),
        ("energy_pointing_game", _curve(energy=[0.2, 0.9, 0.4, 0.3, 0.1]), 1),
        # Drops: best 0.03 at alpha 0.1; within one point: 0.1 and 0.25 (0.035) and 0.5 (0.04); not 1.0.
        ("faithful_boost", _curve(drop=[0.05, 0.03, 0.035, 0.04, 0.3]), 3),
        ("faithful_boost", _curve(drop=[0.0, 0.2, 0.3, 0.4, 0.5]), 0),
        ("faithful_boost", _curve(drop=[0.2, 0.2, 0.2, 0.2, 0.2]), 4),  # all admissible: the largest alpha
        (lambda curve: (curve.alphas - 0.3).abs(), _curve(), 2),
        (lambda curve: -curve.alphas, _curve(), 4),
    ],
)
def test_choose_alpha_picks_the_known_best(objective, curve, expected):
    index, values = choose_alpha(curve, objective)
    assert index == expected
    torch.testing.assert_close(values, objective_values(curve, objective), atol=0, rtol=0)
    assert values.shape == (len(GRID),)


def test_objective_values_are_the_documented_functions():
    curve = _curve(
        drop=[0.05, 0.03, 0.035, 0.045, 0.3], increase=[0.0, 0.5, 1.0, 0.5, 0.0], energy=[0.1, 0.2, 0.3, 0.4, 0.5]
    )
    assert objective_values(curve, "average_drop").tolist() == [0.05, 0.03, 0.035, 0.045, 0.3]
    assert objective_values(curve, "increase_in_confidence").tolist() == [-0.0, -0.5, -1.0, -0.5, -0.0]
    assert objective_values(curve, "energy_pointing_game").tolist() == [-0.1, -0.2, -0.3, -0.4, -0.5]
    # faithful_boost: admissible alphas (drop <= 0.04) get -index, the rest A + drop.
    expected = _f64([5 + 0.05, -1.0, -2.0, 5 + 0.045, 5 + 0.3])
    torch.testing.assert_close(objective_values(curve, "faithful_boost"), expected, atol=1e-12, rtol=0)
    assert set(ALPHA_OBJECTIVES) == {"faithful_boost", "average_drop", "increase_in_confidence", "energy_pointing_game"}


# (best, best + one point) pairs; for (0.06, 0.07) and (0.09, 0.1) the decimal sum exceeds the float sum
# 0.06 + 0.01, so a rule without slack would reject an alpha that is exactly one point worse.
EDGE_PAIRS = [(0.0, 0.01), (0.03, 0.04), (0.06, 0.07), (0.09, 0.1), (0.14, 0.15), (0.29, 0.3), (0.56, 0.57)]


@pytest.mark.parametrize(("best", "edge"), EDGE_PAIRS)
def test_faithful_boost_tolerance_edge_on_exact_means(best, edge):
    assert FAITHFUL_BOOST_TOLERANCE == 0.01
    beyond = best + 0.0101  # 1.01 points worse: not admissible
    # The largest admissible alpha is the exactly-one-point one, whichever side of the 1.01-point one it is.
    assert choose_alpha(_curve(drop=[best + 0.02, best, edge, beyond, best + 0.3]), "faithful_boost")[0] == 2
    assert choose_alpha(_curve(drop=[best + 0.02, best, beyond, edge, best + 0.3]), "faithful_boost")[0] == 3
    assert choose_alpha(_curve(drop=[best + 0.02, best, beyond, best + 0.3, beyond]), "faithful_boost")[0] == 1


@pytest.mark.parametrize(("best", "edge"), EDGE_PAIRS)
def test_faithful_boost_tolerance_edge_through_alpha_curve(best, edge):
    # Four samples with Y = 0.8 and O = Y (1 - d): every sample's drop is d up to rounding.
    clean = _f64([0.8, 0.8, 0.8, 0.8])

    def scores(drop: float) -> list[float]:
        return [0.8 * (1 - drop)] * 4

    drops = [best + 0.02, best, edge, best + 0.0101, best + 0.3]
    # The original map removes all evidence (drop 1), so every alpha is no less faithful than it.
    curve = alpha_curve(_f64(GRID), clean, _f64([scores(d) for d in drops]), _f64(scores(1.0)))
    torch.testing.assert_close(curve.average_drop, _f64(drops), atol=1e-15, rtol=0)
    assert choose_alpha(curve, "faithful_boost")[0] == 2


@pytest.mark.parametrize(
    ("objective", "curve", "expected"),
    [
        ("average_drop", _curve(drop=[0.2] * 5), 0),
        ("average_drop", _curve(drop=[0.3, 0.1, 0.2, 0.1, 0.1]), 1),
        ("increase_in_confidence", _curve(increase=[0.5] * 5), 0),
        ("increase_in_confidence", _curve(increase=[0.0, 0.75, 0.5, 0.75, 0.75]), 1),
        ("energy_pointing_game", _curve(energy=[0.4] * 5), 0),
        ("energy_pointing_game", _curve(energy=[0.1, 0.7, 0.2, 0.7, 0.7]), 1),
        (lambda curve: torch.zeros(5, dtype=torch.float64), _curve(), 0),
        (lambda curve: _f64([2.0, -1.0, 0.0, -1.0, -1.0]), _curve(), 1),
    ],
)
def test_ties_go_to_the_smaller_alpha(objective, curve, expected):
    assert choose_alpha(curve, objective)[0] == expected


@pytest.mark.parametrize(
    ("objective", "curve", "expected"),
    [
        (lambda curve: _f64([math.nan, 0.5, math.nan, 0.2, math.nan]), _curve(), 3),
        (lambda curve: _f64([math.nan] * 5), _curve(), 0),
        ("average_drop", _curve(drop=[math.nan, 0.3, math.nan, 0.2, 0.25]), 3),
        ("increase_in_confidence", _curve(increase=[0.5, math.nan, 0.75, math.nan, 0.0]), 2),
        ("energy_pointing_game", _curve(energy=[math.nan, 0.1, 0.3, math.nan, 0.2]), 2),
    ],
)
def test_nan_objective_values_never_win(objective, curve, expected):
    assert choose_alpha(curve, objective)[0] == expected


def test_faithful_boost_ignores_a_nan_drop_when_finding_the_best():
    # The grid's best finite drop is 0.05 (alpha 0.1); 0.055 (alpha 0.25) is within one point, 0.3 is not. A NaN
    # drop at alpha 0 must neither win nor change the best the tolerance is measured from.
    curve = _curve(drop=[math.nan, 0.05, 0.055, 0.3], alphas=(0.0, 0.1, 0.25, 0.5))
    assert choose_alpha(curve, "faithful_boost")[0] == 2


def test_energy_pointing_game_without_masks_raises():
    curve = alpha_curve(_f64(GRID), _f64([0.5]), _f64([[0.4]] * 5), _f64([0.3]))
    with pytest.raises(ValueError, match="masks"):
        choose_alpha(curve, "energy_pointing_game")
    with pytest.raises(ValueError, match="masks"):
        objective_values(curve, "energy_pointing_game")


@pytest.mark.parametrize(
    "returned",
    [
        torch.zeros(6, dtype=torch.float64),
        torch.zeros(1, 5, dtype=torch.float64),
        torch.tensor(0.0),
        [0.0] * 5,
        np.zeros(5),
    ],
)
def test_callable_returning_a_wrong_shape_raises(returned):
    with pytest.raises(ValueError, match="alpha_objective"):
        choose_alpha(_curve(), lambda curve: returned)


def test_unknown_objective_name_raises():
    with pytest.raises(ValueError, match="alpha_objective"):
        choose_alpha(_curve(), "averagedrop")


@pytest.mark.parametrize("objective", [*ALPHA_OBJECTIVES, lambda curve: -curve.alphas])
@pytest.mark.parametrize("alphas", [GRID, (0.25, 0.5, 2.0)])
def test_no_samples_picks_index_zero(objective, alphas):
    num_alphas = len(alphas)
    curve = alpha_curve(
        _f64(alphas),
        _f64([0.5, math.nan]),
        _f64([[0.9 - 0.1 * a, 0.2] for a in range(num_alphas)]),
        _f64([0.4, 0.4]),
        alpha_energy=_f64([[0.1 * a, 0.5] for a in range(num_alphas)]),
        original_energy=_f64([0.5, 0.5]),
        include=torch.tensor([False, True]),  # sample 0 left out, sample 1 non-finite
    )
    assert curve.num_samples.item() == 0.0
    assert choose_alpha(curve, objective)[0] == 0


# ------------------------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "grid",
    [
        [],
        (),
        [0.5, 0.25],
        [0.0, 0.5, 0.5],
        [-0.1, 0.5],
        [0.0, math.nan],
        [0.0, math.inf],
        [True, 2.0],
        [0.0, False],
        "0.5",
        ["0.5"],
        [0.0, "1"],
        None,
        0.5,
        {0.0, 0.5},
        [[0.0, 0.5]],
        torch.tensor([0.5, 0.0]),
        torch.tensor([[0.0, 0.5]]),
        torch.tensor([0.0, math.nan]),
    ],
)
def test_check_alpha_grid_rejects(grid):
    with pytest.raises(ValueError, match="alpha_grid"):
        check_alpha_grid(grid)


def test_check_alpha_grid_rejects_a_zero_dim_tensor_with_value_error():
    with pytest.raises(ValueError, match="alpha_grid"):
        check_alpha_grid(torch.tensor(0.5))


def test_check_alpha_grid_accepts_numpy_scalars_and_tensors():
    grid = check_alpha_grid([np.float32(0.25), np.int64(1), np.float64(2.5)])
    assert grid == (0.25, 1.0, 2.5)
    assert all(type(value) is float for value in grid)
    assert check_alpha_grid(torch.tensor([0.0, 0.25, 0.5])) == (0.0, 0.25, 0.5)
    assert check_alpha_grid(torch.tensor([0, 1, 3])) == (0.0, 1.0, 3.0)
    assert check_alpha_grid([0]) == (0.0,)
    assert check_alpha_grid(GRID) == GRID
    assert isinstance(check_alpha_grid([0.0, 1.0]), tuple)


def test_check_alpha_objective():
    for name in ALPHA_OBJECTIVES:
        assert check_alpha_objective(name) == name

    def objective(curve: AlphaCurve) -> torch.Tensor:
        return curve.average_drop

    assert check_alpha_objective(objective) is objective
    for bad in ("x", "Average_drop", 3, None, ["average_drop"]):
        with pytest.raises(ValueError, match="alpha_objective"):
            check_alpha_objective(bad)


def _masked_curve(drop, energy, original_drop, original_energy) -> AlphaCurve:
    """One sample with masks: the original map's drop and pointing game are given too."""
    return _curve(drop=drop, energy=energy)._replace(
        original_drop=_f64(original_drop), original_energy=_f64(original_energy)
    )


@pytest.mark.parametrize(
    ("drop", "energy", "original_drop", "original_energy", "expected"),
    [
        # Gradient on the synthetic shapes: only alpha 0 is within a point of the best drop, but it localizes
        # worse than the original map (0.245 < 0.25): the smallest alpha that does not (0.1) is taken, since its
        # drop (0.297) is no worse than the original map's (0.484).
        ([0.271, 0.297, 0.318, 0.331, 0.386], [0.245, 0.297, 0.346, 0.372, 0.379], 0.484, 0.25, 1),
        # The same, but every alpha that localizes well is less faithful than the original map: no fallback.
        ([0.271, 0.297, 0.318, 0.331, 0.386], [0.245, 0.297, 0.346, 0.372, 0.379], 0.28, 0.25, 0),
        # Admissible alphas 0, 0.1, 0.25 (within a point of 0.05); of those, 0.25 localizes worse than the
        # original map, so the largest admissible one that does not is 0.1.
        ([0.05, 0.055, 0.058, 0.2, 0.3], [0.30, 0.32, 0.10, 0.5, 0.6], 0.07, 0.31, 1),
        # Nothing localizes as well as the original map: the rule without masks (largest admissible alpha).
        ([0.05, 0.055, 0.058, 0.2, 0.3], [0.1, 0.1, 0.1, 0.1, 0.1], 0.07, 0.31, 2),
    ],
)
def test_faithful_boost_keeps_localization_when_masks_tell(drop, energy, original_drop, original_energy, expected):
    curve = _masked_curve(drop, energy, original_drop, original_energy)
    assert choose_alpha(curve, "faithful_boost")[0] == expected


def _stable_curve(drop, stability, original_stability, energy=None, original_energy=None) -> AlphaCurve:
    """One sample with a stability run (and, with ``energy``, a mask)."""
    curve = _curve(drop=drop, energy=energy)
    if energy is not None:
        curve = curve._replace(original_energy=_f64(original_energy))
    return curve._replace(stability=_f64(stability), original_stability=_f64(original_stability))


@pytest.mark.parametrize(
    ("drop", "stability", "original_stability", "expected"),
    [
        # The Grad-CAM row: 0.5 and 1 are within a point of the best drop, only 0.5 is as stable as the
        # original map (0.899): 0.5, not 1.
        ([0.024, 0.025, 0.022, 0.019, 0.018], [0.915, 0.911, 0.906, 0.899, 0.890], 0.899, 3),
        # Every alpha is stable enough: the rule without stability (the largest within a point).
        ([0.024, 0.025, 0.022, 0.019, 0.018], [0.95] * 5, 0.9, 4),
        # Only alphas 0 and 0.1 are stable, neither within a point of the best drop (0.01): the more faithful
        # stable one, 0.1.
        ([0.05, 0.04, 0.02, 0.01, 0.015], [0.92, 0.91, 0.88, 0.87, 0.86], 0.9, 1),
        # No alpha is as stable as the original map: the one that falls least short of it (0.1: 0.89 vs 0.9).
        ([0.024, 0.025, 0.022, 0.019, 0.018], [0.8, 0.89, 0.85, 0.8, 0.7], 0.9, 1),
    ],
)
def test_faithful_boost_stability_guard(drop, stability, original_stability, expected):
    assert choose_alpha(_stable_curve(drop, stability, original_stability), "faithful_boost")[0] == expected


@pytest.mark.parametrize(
    ("original_drop", "expected"),
    [
        (0.035, 2),  # within a point of the best (0.03): 0.1, 0.25, 0.5; no worse than the original: 0.1, 0.25
        (0.04, 3),  # the original's drop is the tolerance's edge: all three are no worse
        (0.02, 3),  # no alpha is as faithful as the original map: the tolerance rule alone
    ],
)
def test_faithful_boost_tolerance_never_costs_faithfulness_against_the_original(original_drop, expected):
    curve = _curve(drop=[0.05, 0.03, 0.035, 0.04, 0.3])._replace(original_drop=_f64(original_drop))
    assert choose_alpha(curve, "faithful_boost")[0] == expected
    stable = _stable_curve([0.05, 0.03, 0.035, 0.04, 0.3], [0.95] * 5, 0.9)._replace(original_drop=_f64(original_drop))
    assert choose_alpha(stable, "faithful_boost")[0] == expected


def test_faithful_boost_stable_and_faithful_alpha_wins_over_a_larger_stable_one():
    # Every alpha up to 0.5 is within a point of the best (0.030) and stable; only 0 and 0.1 are no less faithful
    # than the original map (0.035): 0.1, where the tolerance alone would take 0.5.
    curve = _stable_curve([0.030, 0.031, 0.036, 0.038, 0.05], [0.95] * 5, 0.9)._replace(original_drop=_f64(0.035))
    assert choose_alpha(curve, "faithful_boost")[0] == 1


def test_faithful_boost_when_no_alpha_is_both_stable_and_faithful_keeps_stability():
    # The shipped photos' plain gradients (issue 16, pooled curve): alpha 0 removes far less evidence than the
    # original map (81.0% vs 98.3%) but is less stable (0.930 vs 0.948); every stable alpha is less faithful than
    # the original. Stability is guarded first (the rule), faithfulness among the stable: 0.25.
    curve = _stable_curve([0.810, 0.994, 0.9967, 0.9978, 0.9976], [0.930, 0.936, 0.960, 0.961, 0.960], 0.948)._replace(
        original_drop=_f64(0.983)
    )
    assert choose_alpha(curve, "faithful_boost")[0] == 2


def test_faithful_boost_stability_guard_with_masks_needs_both():
    # Within a point: 0.25, 0.5, 1. Stable: 0, 0.1, 0.25, 0.5; localized: 0.5, 1 -> guarded only 0.5.
    curve = _stable_curve(
        [0.03, 0.03, 0.022, 0.02, 0.015], [0.95, 0.95, 0.95, 0.95, 0.8], 0.9, [0.1, 0.1, 0.1, 0.4, 0.5], 0.3
    )
    assert choose_alpha(curve, "faithful_boost")[0] == 3


def test_faithful_boost_with_stability_and_masks_in_conflict_takes_the_smallest_shortfall():
    # alpha 0 is stable but localizes 10% worse; 0.1 localizes well and is 0.2% less stable: 0.1. alpha 1 is the
    # least short, but less faithful than the original map (drop 0.05 > 0.04): not a candidate.
    curve = _stable_curve(
        [0.02, 0.021, 0.022, 0.03, 0.05], [0.92, 0.898, 0.89, 0.88, 0.899], 0.9, [0.27, 0.31, 0.33, 0.35, 0.4], 0.3
    )._replace(original_drop=_f64(0.04))
    assert choose_alpha(curve, "faithful_boost")[0] == 1


def test_alpha_curve_sums_stability_and_merge_keeps_it():
    grid = torch.tensor([0.0, 1.0])
    clean, scores, original = torch.tensor([0.8, 0.5]), torch.tensor([[0.4, 0.6], [0.2, 0.5]]), torch.tensor([0.4, 0.4])
    stability, original_stability = torch.tensor([[0.9, 0.7], [0.5, 0.3]]), torch.tensor([0.6, 0.8])
    curve = alpha_curve(grid, clean, scores, original, alpha_stability=stability, original_stability=original_stability)
    assert curve.stability_index is not None
    assert curve.stability_index.tolist() == pytest.approx([0.8, 0.4])
    assert float(curve.original_stability) == pytest.approx(1.4)
    merged = curve.merge(curve)
    assert merged.stability is not None and merged.stability.tolist() == pytest.approx([3.2, 1.6])
    assert curve.merge(curve._replace(stability=None, original_stability=None)).stability is None
    with pytest.raises(ValueError, match="alpha_stability"):
        alpha_curve(grid, clean, scores, original, alpha_stability=stability)
