"""Out-of-fold choice of EVET's alpha for the callback (docs/design.md, decision 11).

The explained samples are split into two folds by their global position (even and odd indices of the samples
chosen, the same with any number of processes). The per-alpha sums of each fold are reduced across processes
(a torchmetrics :class:`~torchmetrics.Metric`), each fold's alpha is chosen on the *other* fold, and each
sample's EVET map is the blend at its fold's alpha, so no logged score grades its own selection.

The stability guard of the default objective (decision 30) needs each alpha's stability index: the stability
runs on ``T(x)`` are made anyway (for the logged stability index), and keep their fusion parts, so each alpha's
``J*_a(T(x))`` is a blend and a warp, never a new view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torchmetrics import Metric

from evet_lightning.functional.alpha import AlphaCurve, AlphaObjective, alpha_curve, choose_alpha, map_energy
from evet_lightning.functional.fusion import blend
from evet_lightning.functional.stability_index import stability_per_sample
from evet_lightning.saliency.evet import EVETResult
from evet_lightning.saliency.transforms import AffineTransform

__all__ = ["FoldAlphaSums", "FoldChoice", "OutOfFoldAlpha", "StabilityRun", "alpha_stability", "sample_folds"]

_NUM_FOLDS = 2
_SUM_FIELDS = ("drop", "increase", "energy", "stability")
_ORIGINAL_FIELDS = ("original_drop", "original_increase", "original_energy", "original_stability")


class StabilityRun(Protocol):
    """One stability transform's run on ``T(x)``, as the callback keeps it (``StabilityMaps``)."""

    @property
    def original(self) -> Tensor:
        """``(B, H, W)`` ``T^-1(J(T(x)))``."""
        ...

    @property
    def valid(self) -> Tensor:
        """``(H, W)`` bool, the pixels with a pre-image under ``T``."""
        ...

    @property
    def transform(self) -> AffineTransform | None: ...

    @property
    def transformed(self) -> EVETResult | None: ...


def alpha_stability(
    result: EVETResult, runs: Sequence[StabilityRun], grid: Sequence[float]
) -> tuple[Tensor, Tensor] | None:
    """``((A, B), (B,))``: the stability index of each alpha's EVET map and of the original map, averaged over
    the stability transforms (NaN where a map is not finite); ``None`` without a run that kept its fusion parts.

    ``J*_a(T(x))`` is the blend of the run's ``M_hat``/``sigma`` at ``a``, mapped back with ``T^-1``.
    """
    usable = [run for run in runs if run.transform is not None and run.transformed is not None]
    if not usable or len(usable) != len(runs):
        return None
    alphas = torch.tensor(list(grid), dtype=result.fused_mean.dtype, device=result.fused_mean.device)
    evet_maps = blend(result.fused_mean, result.fused_sigma, alphas)  # (A, B, H, W)
    per_alpha, original = [], []
    for run in usable:
        assert run.transform is not None and run.transformed is not None
        moved = blend(run.transformed.fused_mean, run.transformed.fused_sigma, alphas)
        back = run.transform.inverse(moved.flatten(0, 1).unsqueeze(1)).squeeze(1).view_as(moved)
        per_alpha.append(stability_per_sample(evet_maps, back, run.valid))
        original.append(stability_per_sample(result.original, run.original, run.valid))
    return torch.stack(per_alpha).mean(0), torch.stack(original).mean(0)


def sample_folds(num_local: int, rank: int, world_size: int, device: torch.device | None = None) -> Tensor:
    """``(num_local,)`` fold (0 or 1) of each of this rank's samples, by global position.

    With Lightning's unshuffled ``DistributedSampler``, this rank's k-th sample is dataset index
    ``k * world_size + rank`` (decision 13); its fold is that index modulo 2, whatever ``world_size`` is.

    Example:
        >>> sample_folds(3, rank=0, world_size=1).tolist(), sample_folds(3, rank=1, world_size=2).tolist()
        ([0, 1, 0], [1, 1, 1])
    """
    positions = torch.arange(num_local, device=device) * world_size + rank
    return positions % _NUM_FOLDS


class FoldAlphaSums(Metric):
    """Per-fold, per-alpha sums of :class:`~evet_lightning.functional.alpha.AlphaCurve`, summed over processes."""

    full_state_update = False
    drop: Tensor
    increase: Tensor
    energy: Tensor
    original_drop: Tensor
    original_increase: Tensor
    original_energy: Tensor
    stability: Tensor
    original_stability: Tensor
    num_samples: Tensor
    masked: Tensor
    stable: Tensor

    def __init__(self, alphas: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alphas = tuple(float(alpha) for alpha in alphas)
        num_alphas = len(self.alphas)
        for name in _SUM_FIELDS:
            self.add_state(name, torch.zeros(_NUM_FOLDS, num_alphas, dtype=torch.float64), dist_reduce_fx="sum")
        for name in (*_ORIGINAL_FIELDS, "num_samples", "masked", "stable"):
            self.add_state(name, torch.zeros(_NUM_FOLDS, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, fold: int, curve: AlphaCurve) -> None:  # type: ignore[override]
        """Add ``curve`` (the sums of some samples of ``fold``) to that fold."""
        for name in (*_SUM_FIELDS, *_ORIGINAL_FIELDS):
            value = getattr(curve, name)
            if value is not None:
                getattr(self, name)[fold] += value.to(self.device, torch.float64)
        self.num_samples[fold] += curve.num_samples.to(self.device, torch.float64)
        if curve.energy is not None:
            self.masked[fold] += curve.num_samples.to(self.device, torch.float64)
        if curve.stability is not None:
            self.stable[fold] += curve.num_samples.to(self.device, torch.float64)

    def compute(self) -> list[AlphaCurve]:
        """One curve per fold; the pointing-game (stability) sums only when every summed sample had a mask
        (a stability run)."""
        curves = []
        alphas = torch.tensor(self.alphas, dtype=torch.float64, device=self.device)
        any_sample = bool((self.num_samples > 0).any())
        with_masks = bool((self.masked == self.num_samples).all()) and any_sample
        with_stability = bool((self.stable == self.num_samples).all()) and any_sample
        for fold in range(_NUM_FOLDS):
            curves.append(
                AlphaCurve(
                    alphas,
                    self.num_samples[fold],
                    self.drop[fold],
                    self.increase[fold],
                    self.energy[fold] if with_masks else None,
                    self.original_drop[fold],
                    self.original_increase[fold],
                    self.original_energy[fold] if with_masks else None,
                    self.stability[fold] if with_stability else None,
                    self.original_stability[fold] if with_stability else None,
                )
            )
        return curves


class FoldChoice(NamedTuple):
    """What :meth:`OutOfFoldAlpha.choose` decided for one epoch."""

    alphas: tuple[float, float]
    """The alpha each fold's maps use (chosen on the other fold)."""
    indices: tuple[int, int]
    """Their indices in the grid."""
    curve: AlphaCurve
    """Both folds' sums together: the epoch's per-alpha trade-off curve (for plots)."""
    objectives: tuple[Tensor, Tensor]
    """The objective values each choice minimized (fold 0's maps: computed on fold 1, and vice versa)."""
    pooled_alpha: float = math.nan
    """The alpha chosen on both folds together (:attr:`curve`): the alpha of every sample after the calibration
    set (``alpha_calibration``, decision 36), which took no part in the choice."""
    pooled_index: int = -1
    """Its index in the grid."""

    @property
    def mean_alpha(self) -> float:
        """The mean of the two folds' alphas: the logged ``{prefix}/alpha``."""
        return (self.alphas[0] + self.alphas[1]) / 2


class OutOfFoldAlpha:
    """Collect per-sample, per-alpha scores of one epoch; choose each fold's alpha on the other fold.

    Usage per epoch: :meth:`add` for each EVET result (``alpha="auto"``) with the samples' folds, then
    :meth:`choose` (every rank, the same number of times: it syncs), then :meth:`saliency` / :meth:`scores` per
    result, then :meth:`reset`. ``alpha_energy`` sums need object masks on every sample.
    """

    def __init__(self, alphas: Sequence[float], objective: AlphaObjective) -> None:
        self.sums = FoldAlphaSums(alphas)
        self.objective = objective

    def to(self, device: torch.device) -> OutOfFoldAlpha:
        self.sums = self.sums.to(device)
        return self

    def add(
        self,
        folds: Tensor,
        result: EVETResult,
        masks: Tensor | None,
        stability: Sequence[StabilityRun] = (),
        valid: Tensor | None = None,
    ) -> None:
        """Sum one chunk's per-alpha scores (an ``alpha="auto"`` EVET result) into each sample's fold; with the
        chunk's stability runs, each alpha's stability index too (for the guard, decision 30). ``valid``: the
        pixels the pointing game counts (decision 47), ``None`` for all."""
        assert result.alpha_scores is not None, "out of fold needs an alpha='auto' run"
        grid = torch.tensor(self.sums.alphas, dtype=torch.float64, device=result.alpha_scores.device)
        original_energy = None if masks is None else map_energy(result.original, masks, valid)
        stable = alpha_stability(result, stability, self.sums.alphas) if stability else None
        alpha_si, original_si = (None, None) if stable is None else stable
        for fold in range(_NUM_FOLDS):
            include = result.finite & (folds == fold)
            curve = alpha_curve(
                grid,
                result.clean_scores,
                result.alpha_scores,
                result.view_scores[0],
                alpha_energy=result.alpha_energy,
                original_energy=original_energy,
                alpha_stability=alpha_si,
                original_stability=original_si,
                include=include,
            )
            self.sums.update(fold, curve)

    def choose(self) -> FoldChoice:
        """Each fold's alpha, chosen on the other fold's sums (reduced across processes)."""
        fold_curves = self.sums.compute()
        choices = [choose_alpha(fold_curves[1 - fold], self.objective) for fold in range(_NUM_FOLDS)]
        alphas = tuple(self.sums.alphas[index] for index, _ in choices)
        pooled = fold_curves[0].merge(fold_curves[1])
        pooled_index = choose_alpha(pooled, self.objective)[0]
        return FoldChoice(
            (alphas[0], alphas[1]),
            (choices[0][0], choices[1][0]),
            pooled,
            (choices[0][1], choices[1][1]),
            self.sums.alphas[pooled_index],
            pooled_index,
        )

    @staticmethod
    def saliency(alphas: Sequence[float], folds: Tensor, mean: Tensor, sigma: Tensor, finite: Tensor) -> Tensor:
        """``(B, H, W)`` each sample's EVET map at ``alphas[fold]`` (zeros for non-finite samples); ``folds`` may
        also index a third alpha (the pooled choice for samples after the calibration set)."""
        groups = folds.to(mean.device)
        out = torch.zeros_like(mean)
        for group, alpha in enumerate(alphas):
            member = (groups == group).view(-1, 1, 1)
            if bool(member.any()):
                out = torch.where(member, blend(mean, sigma, alpha), out)
        return out.masked_fill(~finite.view(-1, 1, 1).to(mean.device), 0.0)

    @staticmethod
    def scores(indices: Sequence[int], folds: Tensor, alpha_scores: Tensor) -> Tensor:
        """``(B,)`` ``f_k(Phi(x, J*))`` of each sample's map at grid index ``indices[fold]`` (computed by EVET)."""
        index = torch.tensor(list(indices), device=alpha_scores.device)[folds.to(alpha_scores.device)]
        return alpha_scores.gather(0, index.view(1, -1)).squeeze(0)

    def reset(self) -> None:
        self.sums.reset()
