"""A reproducible random subset of a dataset's indices: the paper's "1000 randomly sampled images" (decision 52)."""

from __future__ import annotations

import torch

__all__ = ["sample_indices"]


def sample_indices(length: int, num_samples: int, seed: int) -> list[int]:
    """``num_samples`` distinct indices of ``range(length)`` drawn with a CPU generator seeded with ``seed``, ascending.

    ``torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:num_samples]``, sorted: the same seed
    gives the same images on every machine and process, the sorted order reads the files in the dataset's order, and
    a larger ``num_samples`` with the same seed keeps every image of a smaller one. ``num_samples >= length`` gives
    every index.

    Example:
        >>> sample_indices(10, 3, seed=0) == sample_indices(10, 3, seed=0)
        True
        >>> sample_indices(4, 9, seed=1)
        [0, 1, 2, 3]
    """
    for name, value, low in (("length", length, 0), ("num_samples", num_samples, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"Expected `{name}` to be an integer >= {low}, but got {value!r}")
    if num_samples >= length:
        return list(range(length))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(length, generator=generator)[:num_samples].tolist())
