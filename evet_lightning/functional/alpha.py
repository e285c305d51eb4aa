"""Choosing EVET's boost strength alpha (Eq. 5) from data: per-alpha sums, objectives, the choice.

alpha enters only Eqs. (5)-(7): the views' maps, validity masks, scores, ``M_hat`` and ``sigma`` do not depend
on it, so one EVET run yields the EVET map for every alpha of a grid at the cost of the blend arithmetic and
one forward pass per alpha and image (to score ``Phi(x, J*_alpha(x))``). This module holds the pure part:
the per-alpha sums of the faithfulness and localization scores (:class:`AlphaCurve`, additive, so sums from
several processes or batches can be added before choosing), the objectives, and :func:`choose_alpha`.

The rule behind the default objective, ``"faithful_boost"`` (docs/design.md, decision 10): *faithfulness
first, then the largest boost that costs none.* Among the grid's alphas whose average drop is within
``FAITHFUL_BOOST_TOLERANCE`` (one percentage point) of the grid's best, and no worse than the original map's
where any of them is, take the largest. With object masks,
localization must not get worse either: only those admissible alphas whose energy pointing game is at least the
original map's count; if none is, the smallest alpha that localizes as well as the original map and has an
average drop no worse than the original map's is taken (else the rule without masks). The boost of Eq. (5)
sharpens maps (the pointing game rises with alpha) and removes context the classifier needs (average drop
rises with alpha); this rule keeps the sharpening only while the model does not notice it.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from evet_lightning._validation import check_alpha
from evet_lightning.functional.energy_pointing_game import energy_fraction

__all__ = [
    "ALPHA_OBJECTIVES",
    "DEFAULT_ALPHA_GRID",
    "DEFAULT_ALPHA_OBJECTIVE",
    "FAITHFUL_BOOST_TOLERANCE",
    "AlphaCurve",
    "AlphaObjective",
    "alpha_curve",
    "check_alpha_grid",
    "check_alpha_objective",
    "choose_alpha",
    "map_energy",
    "objective_values",
]

#: The default grid: no boost, three small boosts where pretrained models still keep their average drop, the
#: first default (0.5) and a strong one. Five points keep ``alpha="auto"`` within 1.3x of a fixed alpha
#: (five extra forward passes per image next to EVET's own 2 (n + 1) = 16; ``benchmarks/bench_saliency.py``).
DEFAULT_ALPHA_GRID: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)
#: The default objective (see the module docstring and README "Choosing alpha").
DEFAULT_ALPHA_OBJECTIVE = "faithful_boost"
#: How much average drop (a fraction: 0.01 is one percentage point) the ``"faithful_boost"`` rule gives up for
#: a larger alpha.
FAITHFUL_BOOST_TOLERANCE = 0.01

ALPHA_OBJECTIVES = ("faithful_boost", "average_drop", "increase_in_confidence", "energy_pointing_game")


class AlphaCurve(NamedTuple):
    """Per-alpha sums over ``num_samples`` samples (float64; add two curves with :meth:`merge`).

    ``O_a`` is the target probability of the image perturbed with the EVET map at ``alphas[a]``, ``Y`` that of
    the clean image, ``O`` (no index) that of the image perturbed with the original, un-enhanced map.
    """

    alphas: Tensor
    """``(A,)`` the grid, ascending."""
    num_samples: Tensor
    """``()`` samples summed (non-finite samples are left out)."""
    drop: Tensor
    """``(A,)`` sum of ``relu(Y - O_a) / Y`` (Eq. 10)."""
    increase: Tensor
    """``(A,)`` number of samples with ``O_a > Y`` (Eq. 11)."""
    energy: Tensor | None
    """``(A,)`` sum of the energy pointing game of each map (Eq. 12); ``None`` without object masks."""
    original_drop: Tensor
    """``()`` the same sum for the original map."""
    original_increase: Tensor
    """``()`` the same count for the original map."""
    original_energy: Tensor | None
    """``()`` the same sum for the original map; ``None`` without object masks."""
    stability: Tensor | None = None
    """``(A,)`` sum of the stability index of each alpha's map (Eq. 8-9, averaged over the stability
    transforms); ``None`` where no stability run was made (an :class:`~evet_lightning.EVET` call alone)."""
    original_stability: Tensor | None = None
    """``()`` the same sum for the original map; ``None`` with ``stability``."""

    def _mean(self, total: Tensor) -> Tensor:
        return total / self.num_samples.clamp_min(1)

    @property
    def average_drop(self) -> Tensor:
        """``(A,)`` average drop of the EVET map at each alpha (a fraction, lower is better)."""
        return self._mean(self.drop)

    @property
    def increase_in_confidence(self) -> Tensor:
        """``(A,)`` increase in confidence at each alpha (a fraction, higher is better)."""
        return self._mean(self.increase)

    @property
    def energy_pointing_game(self) -> Tensor | None:
        """``(A,)`` energy pointing game at each alpha, or ``None`` without masks (higher is better)."""
        return None if self.energy is None else self._mean(self.energy)

    @property
    def stability_index(self) -> Tensor | None:
        """``(A,)`` stability index at each alpha, or ``None`` without a stability run (higher is better)."""
        return None if self.stability is None else self._mean(self.stability)

    def original_means(self) -> dict[str, float | None]:
        """The original map's mean of each metric, keyed like the per-alpha properties (``None``: not measured)."""
        count = float(self.num_samples.clamp_min(1))

        def mean(total: Tensor | None) -> float | None:
            return None if total is None else float(total) / count

        return {
            "average_drop": mean(self.original_drop),
            "increase_in_confidence": mean(self.original_increase),
            "energy_pointing_game": mean(self.original_energy),
            "stability_index": mean(self.original_stability),
        }

    def merge(self, other: AlphaCurve) -> AlphaCurve:
        """The curve of both sample sets (the grids must be equal)."""
        if not torch.equal(self.alphas.cpu(), other.alphas.cpu()):
            raise ValueError(f"Expected curves on the same alpha grid, but got {self.alphas} and {other.alphas}")
        with_masks = self.energy is not None and other.energy is not None
        with_stability = self.stability is not None and other.stability is not None
        return AlphaCurve(
            self.alphas,
            self.num_samples + other.num_samples,
            self.drop + other.drop,
            self.increase + other.increase,
            self.energy + other.energy if with_masks else None,  # type: ignore[operator]
            self.original_drop + other.original_drop,
            self.original_increase + other.original_increase,
            self.original_energy + other.original_energy if with_masks else None,  # type: ignore[operator]
            self.stability + other.stability if with_stability else None,  # type: ignore[operator]
            self.original_stability + other.original_stability if with_stability else None,  # type: ignore[operator]
        )


#: ``curve -> (A,)`` values, **lower is better**; the chosen alpha is the first minimum (ties: smaller alpha).
AlphaObjective = str | Callable[[AlphaCurve], Tensor]


def map_energy(saliency: Tensor, masks: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-map share of the saliency inside the mask, Eq. (12), float64, shape ``saliency.shape[:-2]``.

    ``masks`` broadcasts against ``saliency`` (``(B, H, W)`` masks for ``(A, B, H, W)`` maps); an all-zero map
    scores the mask's area fraction, as a uniform map would (decision 4).
    """
    return energy_fraction(saliency, masks.bool(), valid)


def alpha_curve(
    alphas: Tensor,
    clean_scores: Tensor,
    alpha_scores: Tensor,
    original_scores: Tensor,
    *,
    alpha_energy: Tensor | None = None,
    original_energy: Tensor | None = None,
    alpha_stability: Tensor | None = None,
    original_stability: Tensor | None = None,
    include: Tensor | None = None,
) -> AlphaCurve:
    """Sum the per-alpha scores of ``B`` samples.

    Args:
        alphas: ``(A,)`` the grid.
        clean_scores: ``(B,)`` ``Y = f_k(x)``.
        alpha_scores: ``(A, B)`` ``O_a = f_k(Phi(x, J*_a(x)))``.
        original_scores: ``(B,)`` ``O = f_k(Phi(x, J(x)))`` of the original map.
        alpha_energy: ``(A, B)`` energy pointing game of each EVET map (:func:`map_energy`), or ``None``.
        original_energy: ``(B,)`` the same for the original maps; given together with ``alpha_energy``.
        alpha_stability: ``(A, B)`` stability index of each EVET map, or ``None``.
        original_stability: ``(B,)`` the same for the original maps; given together with ``alpha_stability``.
        include: ``(B,)`` bool, the samples to sum (default: all); samples with non-finite scores never count.

    Example:
        >>> curve = alpha_curve(torch.tensor([0.0, 1.0]), torch.tensor([0.8, 0.5]),
        ...                     torch.tensor([[0.4, 0.6], [0.2, 0.5]]), torch.tensor([0.4, 0.4]))
        >>> curve.average_drop.tolist(), curve.increase_in_confidence.tolist()
        ([0.25, 0.375], [0.5, 0.0])
    """
    if (alpha_energy is None) != (original_energy is None):
        raise ValueError("Expected `alpha_energy` and `original_energy` together, or neither")
    if (alpha_stability is None) != (original_stability is None):
        raise ValueError("Expected `alpha_stability` and `original_stability` together, or neither")
    finite = torch.isfinite(clean_scores) & torch.isfinite(alpha_scores).all(0) & torch.isfinite(original_scores)
    include = finite if include is None else include.bool() & finite
    weight = include.double()
    clean = clean_scores.double()

    def drop(scores: Tensor) -> Tensor:
        values = torch.where(clean > 0, (clean - scores.double()).clamp_min(0) / clean.clamp_min(1e-300), 0.0)
        return (torch.nan_to_num(values) * weight).sum(-1)

    def increase(scores: Tensor) -> Tensor:
        return ((scores.double() > clean).double() * weight).sum(-1)

    def energy(values: Tensor | None) -> Tensor | None:
        return None if values is None else (torch.nan_to_num(values.double()) * weight).sum(-1)

    return AlphaCurve(
        alphas.double(),
        weight.sum(),
        drop(alpha_scores),
        increase(alpha_scores),
        energy(alpha_energy),
        drop(original_scores),
        increase(original_scores),
        energy(original_energy),
        energy(alpha_stability),
        energy(original_stability),
    )


def _faithful_boost(curve: AlphaCurve) -> Tensor:
    drop = curve.average_drop
    finite = torch.isfinite(drop)
    best = drop[finite].min() if bool(finite.any()) else drop.new_tensor(0.0)
    admissible = finite & (drop <= best + FAITHFUL_BOOST_TOLERANCE + 1e-12)
    order = torch.arange(drop.numel(), dtype=torch.float64, device=drop.device)
    count = curve.num_samples.clamp_min(1)
    # The tolerance buys a larger boost only while it costs no faithfulness against the original map either.
    faithful = finite & (drop <= curve.original_drop / count + 1e-12)
    if bool((admissible & faithful).any()):
        admissible = admissible & faithful
    localized = torch.ones_like(finite)
    energy = curve.energy_pointing_game
    if energy is not None and curve.original_energy is not None:
        localized = torch.isfinite(energy) & (energy >= curve.original_energy / count - 1e-12)
    guarded = finite & localized
    stability = curve.stability_index
    if stability is not None and curve.original_stability is not None:
        # The stability guard (decision 30): never less stable (nor, with masks, less localized) than the
        # original map when some alpha of the grid is both.
        guarded = guarded & torch.isfinite(stability) & (stability >= curve.original_stability / count - 1e-12)
        if bool((admissible & guarded).any()):
            admissible = admissible & guarded
        elif bool(guarded.any()):
            # No guarded alpha is within the tolerance (or as faithful as the original map where one is): the
            # most faithful guarded one (ties: the smaller).
            guarded_drop = torch.where(guarded, drop, math.inf)
            admissible = order == order[guarded_drop == guarded_drop.min()][0]
            return torch.where(admissible, -order, drop.numel() + torch.nan_to_num(drop, nan=math.inf))
        else:
            # No alpha is both as stable and as localized as the original map: the one that falls least short of
            # it (the larger relative shortfall of the two, smallest), among those no less faithful than the
            # original map if any; ties to the smaller alpha.
            shortfall = (curve.original_stability / count - stability).clamp_min(0) / (
                curve.original_stability / count
            ).clamp_min(1e-12)
            if energy is not None and curve.original_energy is not None:
                energy_short = (curve.original_energy / count - energy).clamp_min(0)
                shortfall = torch.maximum(shortfall, energy_short / (curve.original_energy / count).clamp_min(1e-12))
            pool = faithful if bool(faithful.any()) else finite
            ranked = torch.where(pool, torch.nan_to_num(shortfall, nan=math.inf), math.inf)
            admissible = order == order[ranked == ranked.min()][0]
            return torch.where(admissible, -order, drop.numel() + torch.nan_to_num(drop, nan=math.inf))
    if energy is not None and curve.original_energy is not None:
        # With object masks, localization must not fall below the original map's either.
        if bool((admissible & localized).any()):
            admissible = admissible & localized
        else:
            # The smallest boost that localizes as well as the original map, if it is no less faithful than it.
            fallback = faithful & localized
            if bool(fallback.any()):
                admissible = order == order[fallback][0]
    # Rank: admissible alphas first, the largest of them first; the values are what `choose_alpha` minimizes.
    return torch.where(admissible, -order, drop.numel() + torch.nan_to_num(drop, nan=math.inf))


def objective_values(curve: AlphaCurve, objective: AlphaObjective) -> Tensor:
    """``(A,)`` the objective's values on ``curve`` (lower is better), as :func:`choose_alpha` minimizes them.

    ``"average_drop"``: the average drop; ``"increase_in_confidence"`` and ``"energy_pointing_game"``: minus the
    metric; ``"faithful_boost"``: a rank (admissible alphas get ``-index``, the rest ``A + average drop``; see
    the module docstring for which alphas are admissible).
    """
    if callable(objective):
        values = objective(curve)
        if not isinstance(values, Tensor) or values.shape != curve.alphas.shape:
            found = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"Expected the `alpha_objective` callable to return a tensor of shape {tuple(curve.alphas.shape)} "
                f"(one value per alpha, lower is better), but got {found}"
            )
        return values.double()
    if objective == "faithful_boost":
        return _faithful_boost(curve)
    if objective == "average_drop":
        return curve.average_drop
    if objective == "increase_in_confidence":
        return -curve.increase_in_confidence
    if objective == "energy_pointing_game":
        energy = curve.energy_pointing_game
        if energy is None:
            raise ValueError(
                "Expected object masks for `alpha_objective='energy_pointing_game'`, but the samples have none"
            )
        return -energy
    raise ValueError(f"Expected `alpha_objective` to be one of {ALPHA_OBJECTIVES} or a callable, got {objective!r}")


def choose_alpha(curve: AlphaCurve, objective: AlphaObjective = DEFAULT_ALPHA_OBJECTIVE) -> tuple[int, Tensor]:
    """``(index into curve.alphas, objective values (A,))``: the first alpha minimizing the objective.

    Ties go to the smaller alpha (the grid is ascending). NaN values never win. With no samples
    (``num_samples == 0``) the choice is alpha = 0's index if the grid has 0, else the smallest alpha.

    Example:
        >>> curve = alpha_curve(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.5, 0.5]),
        ...                     torch.tensor([[0.5, 0.5], [0.496, 0.5], [0.3, 0.5]]), torch.tensor([0.4, 0.4]))
        >>> choose_alpha(curve, "average_drop")[0], choose_alpha(curve, "faithful_boost")[0]
        (0, 1)
    """
    values = objective_values(curve, objective)
    if float(curve.num_samples) == 0:
        return 0, values
    safe = torch.nan_to_num(values, nan=math.inf)
    best = safe.min()
    return int((safe == best).nonzero()[0, 0]), values


def check_alpha_grid(alpha_grid: object) -> tuple[float, ...]:
    """A non-empty, strictly ascending tuple of finite, non-negative real numbers (``ValueError`` otherwise)."""
    if isinstance(alpha_grid, Tensor) and alpha_grid.ndim == 1:
        alpha_grid = alpha_grid.tolist()
    if isinstance(alpha_grid, (str, bytes)) or not isinstance(alpha_grid, Sequence):
        raise ValueError(
            f"Expected `alpha_grid` to be a sequence (or 1-D tensor) of non-negative floats, but got {alpha_grid!r}"
        )
    values = list(alpha_grid)
    if not values:
        raise ValueError("Expected `alpha_grid` to hold at least one alpha, but got an empty sequence")
    grid = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"Expected every `alpha_grid` value to be a non-negative float, but got {value!r}")
        grid.append(check_alpha(value, "alpha_grid"))  # at most MAX_ALPHA
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise ValueError(f"Expected `alpha_grid` to be strictly ascending, but got {grid}")
    return tuple(grid)


def check_alpha_objective(alpha_objective: object) -> AlphaObjective:
    """A known objective name or a callable (``ValueError`` otherwise)."""
    if callable(alpha_objective) or alpha_objective in ALPHA_OBJECTIVES:
        return alpha_objective  # type: ignore[return-value]
    raise ValueError(
        f"Expected `alpha_objective` to be one of {ALPHA_OBJECTIVES} or a callable curve -> (A,) values, "
        f"but got {alpha_objective!r}"
    )
