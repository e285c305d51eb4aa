"""Which validation samples the callback explains, and a checksum that identifies them across runs.

Rank ``r`` of ``W`` processes keeps the first :func:`rank_quota` samples of its shard. With Lightning's unshuffled
``DistributedSampler`` those are exactly the first ``num_samples`` dataset indices, the same set as one process.
Each kept sample carries its *position* in the single-process order (``r + j * W``), so per-sample results can be
put back in that order, and :func:`fingerprint_terms` sums to the same value for any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from torch import Tensor

__all__ = [
    "SampleBatch",
    "SampleBuffer",
    "fingerprint_terms",
    "first_val_dataset_size",
    "in_validate",
    "new_buffer",
    "rank_quota",
]


@dataclass
class SampleBatch:
    """Samples collected from one validation batch (detached clones), or a chunk of them."""

    images: Tensor
    labels: Tensor | None
    masks: Tensor | None
    positions: Tensor
    """``(B,)`` float64: each sample's position in the single-process order (``rank + j * world_size``)."""


@dataclass
class SampleBuffer:
    """The first ``capacity`` samples this process sees in one validation epoch."""

    capacity: int
    rank: int = 0
    world_size: int = 1
    batches: list[SampleBatch] = field(default_factory=list)
    count: int = 0

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    def add(self, images: Tensor, labels: Tensor | None, masks: Tensor | None) -> None:
        take = min(self.capacity - self.count, images.shape[0])
        if take <= 0:
            return
        index = torch.arange(self.count, self.count + take, dtype=torch.float64)
        positions = self.rank + index * self.world_size
        # Clones outside inference mode: inference tensors could not be used later outside it.
        with torch.inference_mode(False):
            self.batches.append(
                SampleBatch(
                    images[:take].detach().clone(),
                    None if labels is None else labels[:take].detach().clone(),
                    None if masks is None else masks[:take].detach().clone(),
                    positions,
                )
            )
        self.count += take

    def chunks(self, size: int | Callable[[Tensor], int]) -> Iterator[SampleBatch]:
        """The samples in order, in chunks that share image shape and label/mask presence.

        Args:
            size: the most samples in a chunk, or a function of a run of same-shaped images that gives it.
        """
        pending: list[SampleBatch] = []

        def signature(item: SampleBatch) -> tuple[object, ...]:
            return (tuple(item.images.shape[1:]), item.labels is None, item.masks is None)

        def merged() -> Iterator[SampleBatch]:
            images = torch.cat([item.images for item in pending])
            labels = None if pending[0].labels is None else torch.cat([item.labels for item in pending])  # type: ignore[misc]
            masks = None if pending[0].masks is None else torch.cat([item.masks for item in pending])  # type: ignore[misc]
            positions = torch.cat([item.positions for item in pending])
            step = size(images) if callable(size) else size
            for start in range(0, images.shape[0], step):
                stop = start + step
                yield SampleBatch(
                    images[start:stop],
                    None if labels is None else labels[start:stop],
                    None if masks is None else masks[start:stop],
                    positions[start:stop],
                )

        for item in self.batches:
            if pending and signature(item) != signature(pending[0]):
                yield from merged()
                pending = []
            pending.append(item)
        if pending:
            yield from merged()


def rank_quota(num_samples: int, world_size: int, rank: int, dataset_size: int | None = None) -> int:
    """How many samples rank ``rank`` of ``world_size`` keeps so that the ranks together explain each sample once.

    ``DistributedSampler`` (what Lightning injects for validation, unshuffled) gives rank ``r`` the dataset
    indices ``r, r + W, r + 2W, ...``, padded with repeats of the first indices to equal length. Keeping the
    first ``n // W + (r < n % W)`` samples of each rank, with ``n = min(num_samples, dataset_size)``, selects
    exactly the first ``n`` indices, the same set as one process, and never a padding repeat.

    Example:
        >>> [rank_quota(9, 2, rank) for rank in range(2)]
        [5, 4]
        >>> [rank_quota(32, 2, rank, dataset_size=9) for rank in range(2)]  # never a padding repeat
        [5, 4]
    """
    total = num_samples if dataset_size is None else min(num_samples, dataset_size)
    return total // world_size + int(rank < total % world_size)


def in_validate(trainer: pl.Trainer) -> bool:
    """``trainer.validate`` is running (``trainer.validating`` is also true in fit's validation loop)."""
    return str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "validate"


def first_val_dataset_size(trainer: pl.Trainer) -> int | None:
    """Length of the first validation dataloader's dataset of the running stage, or ``None`` when unknown."""
    loop = trainer.validate_loop if in_validate(trainer) else trainer.fit_loop.epoch_loop.val_loop
    combined = getattr(loop, "_combined_loader", None)
    loaders = getattr(combined, "iterables", None)
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    dataset = getattr(loaders, "dataset", None)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return None
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def new_buffer(trainer: pl.Trainer, num_samples: int) -> SampleBuffer:
    """An empty buffer for this process's share of the first ``num_samples`` validation samples."""
    world_size, rank = trainer.world_size, trainer.global_rank
    dataset_size = first_val_dataset_size(trainer) if world_size > 1 else None
    return SampleBuffer(
        capacity=rank_quota(num_samples, world_size, rank, dataset_size), rank=rank, world_size=world_size
    )


def fingerprint_terms(images: Tensor, positions: Tensor) -> Tensor:
    """Per-sample checksums weighted by position; their sum identifies the selected samples (any process count)."""
    flat = torch.nan_to_num(images.detach().flatten(1).to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    pixel_weights = torch.cos(torch.arange(flat.shape[1], dtype=torch.float64, device=flat.device) * 0.7548776662)
    return (flat * pixel_weights).sum(dim=1) * (1.0 + positions.to(flat.device) * 0.6180339887)
