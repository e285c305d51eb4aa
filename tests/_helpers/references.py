"""Independent plain-Python references for the metrics, written straight from Eq. (8)-(12) of Oh et al.

Plain loops over samples and pixels in Python floats (float64); no library code is reused. Samples with a
NaN/Inf input are skipped, as the metrics document; an empty result is 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Scores = Sequence[float]
Map = Sequence[Sequence[float]]


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _map_finite(*maps: Map) -> bool:
    return all(math.isfinite(v) for m in maps for row in m for v in row)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def average_drop(scores: Scores, masked_scores: Scores) -> float:
    """Eq. (10): mean of max(0, Y - O) / Y; Y = 0 counts as no drop."""
    drops = []
    for y, o in zip(scores, masked_scores, strict=True):
        if not _finite(y, o):
            continue
        drops.append(max(0.0, y - o) / y if y > 0 else 0.0)
    return _mean(drops)


def increase_in_confidence(scores: Scores, masked_scores: Scores) -> float:
    """Eq. (11): fraction of samples with Y < O."""
    flags = [1.0 if y < o else 0.0 for y, o in zip(scores, masked_scores, strict=True) if _finite(y, o)]
    return _mean(flags)


def win(scores_a: Scores, scores_b: Scores) -> float:
    """Fraction of samples with a > b; ties count for neither."""
    flags = [1.0 if a > b else 0.0 for a, b in zip(scores_a, scores_b, strict=True) if _finite(a, b)]
    return _mean(flags)


def average_difference(scores_a: Scores, scores_b: Scores) -> float:
    """Mean of a - b."""
    return _mean([a - b for a, b in zip(scores_a, scores_b, strict=True) if _finite(a, b)])


def energy_pointing_game(saliency: Sequence[Map], mask: Sequence[Sequence[Sequence[bool]]]) -> float:
    """Eq. (12): energy inside the object over total energy; zero energy scores the mask's area fraction."""
    fractions = []
    for sal, obj in zip(saliency, mask, strict=True):
        if not _map_finite(sal):
            continue
        inside = 0.0
        total = 0.0
        object_pixels = 0
        pixels = 0
        for r in range(len(sal)):
            for c in range(len(sal[r])):
                total += sal[r][c]
                pixels += 1
                if obj[r][c]:
                    inside += sal[r][c]
                    object_pixels += 1
        fractions.append(inside / total if total > 0 else object_pixels / pixels)
    return _mean(fractions)


def stability_index(
    saliency: Sequence[Map], saliency_transformed: Sequence[Map], valid: Sequence[Sequence[Sequence[bool]]] | None
) -> float:
    """Eq. (8)-(9): mean over samples of 1 - ||M1 - M2||_F / d_max over the valid pixels, d_max = sqrt(#valid)."""
    similarities = []
    for n, (m1, m2) in enumerate(zip(saliency, saliency_transformed, strict=True)):
        if not _map_finite(m1, m2):
            continue
        squared = 0.0
        count = 0
        for r in range(len(m1)):
            for c in range(len(m1[r])):
                if valid is None or valid[n][r][c]:
                    squared += (m1[r][c] - m2[r][c]) ** 2
                    count += 1
        if count == 0:
            continue
        similarities.append(1.0 - math.sqrt(squared) / math.sqrt(count))
    return _mean(similarities)
