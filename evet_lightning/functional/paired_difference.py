"""A 95% interval for the mean paired difference of a metric (EVET minus original) over the same samples.

The interval is a seeded **percentile bootstrap of the mean paired difference** (docs/design.md, decision 31):
``B = 2000`` resamples of the ``n`` differences ``d_i = a_i - b_i`` with replacement, the interval is the
2.5% and 97.5% quantiles of the resampled means. The differences are sorted before resampling: the bootstrap
distribution does not depend on their order, and sorting makes the interval depend only on the multiset of
differences, so one process and several (whose gathered order differs) give exactly the same bounds, and a
fixed seed (a CPU ``torch.Generator``) makes a run reproducible. Paired, because both maps explain the same
images: the per-image spread (easy and hard images) cancels in ``d_i`` and the interval is far narrower than
two separate intervals would be.

torchmetrics' ``BootStrapper`` was considered: it resamples each *update* with a per-process random draw, so
its result depends on the batching and the number of processes and cannot be made equal across them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_NUM_RESAMPLES", "paired_difference_interval"]

#: Resamples of the bootstrap: the Monte Carlo error of a 2.5% quantile is then ~0.3% of the interval width.
DEFAULT_NUM_RESAMPLES = 2000
#: The interval's nominal coverage.
DEFAULT_CONFIDENCE = 0.95
#: Resampled values drawn at once (bounds the memory of a large sample: 8 MiB of indices and values, small next to
#: a streamed epoch's; the draws, hence the interval, do not depend on it, decision 38).
_CHUNK_ELEMENTS = 1 << 19


def _paired_difference_update(values_a: Tensor, values_b: Tensor) -> Tensor:
    """``(M,)`` float64 ``a - b`` of the pairs where both are finite (``values_*``: ``(N,)``)."""
    if not isinstance(values_a, Tensor) or not isinstance(values_b, Tensor):
        raise TypeError("Expected `values_a` and `values_b` to be tensors")
    if values_a.ndim != 1 or values_a.shape != values_b.shape:
        raise ValueError(
            f"Expected `values_a` and `values_b` to be 1-D tensors of one shape, but got {tuple(values_a.shape)} "
            f"and {tuple(values_b.shape)}"
        )
    difference = values_a.double() - values_b.double()
    return difference[torch.isfinite(difference)]


def _paired_difference_compute(
    differences: Tensor,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Tensor:
    """``(3,)`` float64 ``[mean, low, high]`` of the differences; NaN for all three with no difference."""
    if differences.numel() == 0:
        return torch.full((3,), torch.nan, dtype=torch.float64, device=differences.device)
    values = differences.double().sort().values.cpu()
    count = values.numel()
    generator = torch.Generator().manual_seed(seed)
    means = []
    per_chunk = max(1, _CHUNK_ELEMENTS // count)
    for start in range(0, num_resamples, per_chunk):
        rows = min(per_chunk, num_resamples - start)
        indices = torch.randint(count, (rows, count), generator=generator)
        means.append(values[indices].mean(dim=1))
    tail = (1.0 - confidence) / 2
    bounds = torch.quantile(torch.cat(means), torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return torch.cat([values.mean().view(1), bounds]).to(differences.device)


def paired_difference_interval(
    values_a: Tensor,
    values_b: Tensor,
    num_resamples: int = DEFAULT_NUM_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Tensor:
    """``(3,)`` float64 ``[mean(a - b), low, high]``: the mean paired difference and its percentile-bootstrap
    interval over the pairs where both values are finite (see the module docstring).

    Args:
        values_a: ``(N,)`` per-sample values of the metric for method A (EVET).
        values_b: ``(N,)`` the same samples' values for method B (the original map).
        num_resamples: bootstrap resamples ``B``.
        confidence: nominal coverage, in (0, 1).
        seed: seed of the resampling (CPU generator).

    Example:
        >>> a, b = torch.tensor([0.5, 0.6, 0.7, 0.8]), torch.tensor([0.4, 0.5, 0.6, 0.7])
        >>> paired_difference_interval(a, b).tolist() == paired_difference_interval(a, b).tolist()
        True
        >>> [round(value, 6) for value in paired_difference_interval(a, b).tolist()]
        [0.1, 0.1, 0.1]
    """
    _check_options(num_resamples, confidence, seed)
    return _paired_difference_compute(_paired_difference_update(values_a, values_b), num_resamples, confidence, seed)


def _check_options(num_resamples: object, confidence: object, seed: object) -> None:
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) or num_resamples < 1:
        raise ValueError(f"Expected `num_resamples` to be a positive integer, but got {num_resamples!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, float) or not 0.0 < confidence < 1.0:
        raise ValueError(f"Expected `confidence` to be a float in (0, 1), but got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Expected `seed` to be an integer, but got {seed!r}")
