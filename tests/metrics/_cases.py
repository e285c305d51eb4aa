"""One description per metric: its class, functional and reference, and a random-input generator.

Shared by the equivalence, protocol and multi-process tests so each runs over all six metrics; the curves of
DeletionAUC / InsertionAUC (:func:`random_curves`) by their own tests and the multi-process test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from evet_lightning import functional as F
from evet_lightning import metrics as M
from tests._helpers import references as R

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class Case:
    name: str
    metric: type[Any]  # a Metric subclass; Any so tests can read its states without casts
    functional: Callable[..., Tensor]
    reference: Callable[..., float]
    make: Callable[[torch.Generator, int], Batch]
    state: str

    def reference_value(self, batch: Batch) -> float:
        args: list[Any] = [value.tolist() if value is not None else None for value in batch.values()]
        return self.reference(*args)


def _scores(generator: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
    first = torch.rand(n, generator=generator)
    second = torch.rand(n, generator=generator)
    if n >= 6:
        second[1] = first[1]  # a tie
        first[2] = 0.0  # Y = 0
        second[3] = first[3] * 0.5  # an exactly representable drop of one half
        first[4] = float("nan")  # skipped
        second[5] = float("inf")  # skipped
    return first, second


def make_score_pair(generator: torch.Generator, n: int) -> Batch:
    scores, masked_scores = _scores(generator, n)
    return {"scores": scores, "masked_scores": masked_scores}


def make_method_pair(generator: torch.Generator, n: int) -> Batch:
    scores_a, scores_b = _scores(generator, n)
    return {"scores_a": scores_a, "scores_b": scores_b}


def make_pointing(generator: torch.Generator, n: int, size: tuple[int, int] = (5, 7)) -> Batch:
    saliency = torch.rand(n, *size, generator=generator) ** 2
    mask = torch.rand(n, *size, generator=generator) > 0.6
    if n >= 5:
        saliency[0] = 0.0  # no energy: the mask's area fraction
        mask[1] = False  # empty mask
        mask[2] = True  # full mask
        saliency[3, 1, 2] = float("nan")  # skipped
        saliency[4] = saliency[4] * 1e-30  # tiny but positive energy
    return {"saliency": saliency, "mask": mask}


def make_stability(generator: torch.Generator, n: int, size: tuple[int, int] = (5, 7)) -> Batch:
    saliency = torch.rand(n, *size, generator=generator)
    saliency_transformed = (saliency + 0.3 * torch.randn(n, *size, generator=generator)).clamp(0, 1)
    valid = torch.rand(n, *size, generator=generator) > 0.2
    if n >= 4:
        valid[0] = False  # no valid pixel: skipped
        valid[1] = True
        saliency_transformed[2, 0, 0] = float("-inf")  # skipped, even though...
        valid[2, 0, 0] = False  # ...the pixel is invalid
        saliency_transformed[3] = saliency[3]  # identical: 1
    return {"saliency": saliency, "saliency_transformed": saliency_transformed, "valid": valid}


#: ``steps`` of the DeletionAUC / InsertionAUC tests: curves have ``CURVE_STEPS + 1`` points.
CURVE_STEPS = 4


def random_curves(n: int, seed: int = 0, steps: int = CURVE_STEPS) -> Tensor:
    """``(n, steps + 1)`` curves in [0, 1] with a NaN row (1) and an Inf row (4) when ``n`` allows."""
    curves = torch.rand(n, steps + 1, generator=torch.Generator().manual_seed(seed))
    if n > 1:
        curves[1, 2] = float("nan")
    if n > 4:
        curves[4, 0] = float("inf")
    return curves


CASES = (
    Case("average_drop", M.AverageDrop, F.average_drop, R.average_drop, make_score_pair, "sum_drop"),
    Case(
        "increase_in_confidence",
        M.IncreaseInConfidence,
        F.increase_in_confidence,
        R.increase_in_confidence,
        make_score_pair,
        "num_increased",
    ),
    Case("win", M.Win, F.win, R.win, make_method_pair, "num_wins"),
    Case(
        "average_difference",
        M.AverageDifference,
        F.average_difference,
        R.average_difference,
        make_method_pair,
        "sum_difference",
    ),
    Case(
        "energy_pointing_game",
        M.EnergyPointingGame,
        F.energy_pointing_game,
        R.energy_pointing_game,
        make_pointing,
        "sum_energy",
    ),
    Case("stability_index", M.StabilityIndex, F.stability_index, R.stability_index, make_stability, "sum_similarity"),
)
CASE_IDS = [case.name for case in CASES]


def split(batch: Batch, sizes: list[int]) -> list[Batch]:
    """Split a batch along the sample axis into chunks of the given sizes (which may be 0)."""
    chunks = []
    start = 0
    for size in sizes:
        chunks.append({key: value[start : start + size] for key, value in batch.items()})
        start += size
    assert start == next(iter(batch.values())).shape[0]
    return chunks
