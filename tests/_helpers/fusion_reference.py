"""An independent plain-loop reference of EVET's fusion step, written straight from the paper.

Oh et al. (WACV 2021) Eq. (2)-(7) plus docs/design.md, decisions 2-4 and 7. Python floats (float64) and
``math`` only, loops over images ``b``, pixels ``(r, c)`` and views ``v``; no library code is reused.

- Eq. (2): view ``v`` is kept when ``s_v > threshold * s_0``; view 0 is always kept.
- Eq. (4): ``w_v = s_v / sum of the kept s`` (uniform over the kept views if they all score 0).
- Decision 3: per pixel, only the views that are kept AND valid there count (view 0 is always valid); the
  weights are renormalized over those views.
- Decision 5: ``sigma`` is the sample standard deviation (ddof=1) of those values divided by its upper bound
  for ``m`` values in [0, 1], ``sqrt(floor(m/2) * ceil(m/2) / (m * (m - 1)))``; ``sigma = 0`` when ``m <= 1``.
- Eq. (5)-(7): ``M_tilde = clamp(M_hat + alpha * (M_hat - 0.5), 0, 1)``,
  ``J* = sigma * M_hat + (1 - sigma) * M_tilde``; then min-max per image (a constant map becomes zeros).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["reference_fuse", "reference_min_max", "reference_weights"]

Map = list[list[float]]


def reference_min_max(image_map: Sequence[Sequence[float]]) -> Map:
    """Min-max normalize one ``H x W`` map to [0, 1]; a constant map becomes all zeros."""
    values = [v for row in image_map for v in row]
    low, high = min(values), max(values)
    if high <= low:
        return [[0.0 for _ in row] for row in image_map]
    return [[(v - low) / (high - low) for v in row] for row in image_map]


def reference_weights(scores: Sequence[float], threshold: float) -> tuple[list[bool], list[float]]:
    """Eq. (2) and (4) for one image: ``(kept, weights)`` over its ``V`` view scores."""
    kept = [v == 0 or scores[v] > threshold * scores[0] for v in range(len(scores))]
    total = sum(s for s, k in zip(scores, kept, strict=True) if k)
    num_kept = sum(kept)
    if total > 0:
        weights = [s / total if k else 0.0 for s, k in zip(scores, kept, strict=True)]
    else:
        weights = [1.0 / num_kept if k else 0.0 for k in kept]
    return kept, weights


def _sigma(values: list[float]) -> float:
    m = len(values)
    if m <= 1:
        return 0.0
    mean = sum(values) / m
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (m - 1))
    bound = math.sqrt(math.floor(m / 2) * math.ceil(m / 2) / (m * (m - 1)))
    return std / bound


def reference_fuse(
    maps: Sequence[Sequence[Sequence[Sequence[float]]]],
    scores: Sequence[Sequence[float]],
    valid: Sequence[Sequence[Sequence[Sequence[bool]]]] | None = None,
    *,
    threshold: float,
    alpha: float,
) -> tuple[list[Map], list[list[bool]], list[list[float]]]:
    """Fuse ``maps[v][b][r][c]`` with ``scores[v][b]`` (and ``valid[v][b][r][c]``), view 0 untransformed.

    Returns ``(saliency[b][r][c], kept[v][b], weights[v][b])``.
    """
    num_views, batch = len(maps), len(maps[0])
    saliency: list[Map] = []
    kept_vb = [[False] * batch for _ in range(num_views)]
    weights_vb = [[0.0] * batch for _ in range(num_views)]
    for b in range(batch):
        kept, weights = reference_weights([float(scores[v][b]) for v in range(num_views)], threshold)
        for v in range(num_views):
            kept_vb[v][b], weights_vb[v][b] = kept[v], weights[v]
        height, width = len(maps[0][b]), len(maps[0][b][0])
        fused: Map = []
        for r in range(height):
            row = []
            for c in range(width):
                views = [
                    v for v in range(num_views) if kept[v] and (v == 0 or valid is None or bool(valid[v][b][r][c]))
                ]
                values = [float(maps[v][b][r][c]) for v in views]
                pixel_weights = [weights[v] for v in views]
                total = sum(pixel_weights)
                if total > 0:
                    m_hat = sum(w * x for w, x in zip(pixel_weights, values, strict=True)) / total
                else:
                    m_hat = sum(values) / len(values)
                sigma = _sigma(values)
                m_tilde = max(min(m_hat + alpha * (m_hat - 0.5), 1.0), 0.0)
                row.append(sigma * m_hat + (1.0 - sigma) * m_tilde)
            fused.append(row)
        saliency.append(reference_min_max(fused))
    return saliency, kept_vb, weights_vb
