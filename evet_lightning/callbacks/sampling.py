"""Which validation samples the callback explains, and a checksum that identifies them across runs.

Rank ``r`` of ``W`` processes keeps the first :func:`rank_quota` samples of its shard. With Lightning's unshuffled
``DistributedSampler`` those are exactly the first ``num_samples`` dataset indices, the same set as one process.
Each kept sample carries its *position* in the single-process order (``r + j * W``), so per-sample results can be
put back in that order, and :func:`fingerprint_terms` sums to the same value for any number of processes.

Under sharded training every forward pass is a collective, so every rank explains the same number of samples,
:func:`padded_quota`, in the same chunks (docs/design.md, decision 29): the samples past a rank's quota are
*padding*, explained so that the collectives line up and left out of every result.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

__all__ = [
    "SampleBatch",
    "agree_across_ranks",
    "check_fsdp1_model",
    "describe_runs",
    "fsdp1_root",
    "SampleBuffer",
    "fingerprint_terms",
    "first_val_dataset_size",
    "in_validate",
    "padded_quota",
    "padded_runs",
    "rank_quota",
    "silence_sync_dist_advice",
    "warn_if_samples_changed",
]


@dataclass
class SampleBatch:
    """Samples collected from one validation batch (detached clones), or a chunk of them."""

    images: Tensor
    labels: Tensor | None
    masks: Tensor | None
    positions: Tensor
    """``(B,)`` float64: each sample's position in the single-process order (``rank + j * world_size``)."""
    padding: Tensor | None = None
    """``(B,)`` bool: explained only so that every rank does the same work, left out of every result; ``None``
    for none."""

    @property
    def padding_mask(self) -> Tensor:
        """``(B,)`` bool, all false when :attr:`padding` is ``None``."""
        if self.padding is None:
            return torch.zeros(self.images.shape[0], dtype=torch.bool)
        return self.padding


@dataclass
class SampleBuffer:
    """The first ``capacity`` samples this process sees in one validation epoch.

    ``total`` is the number of samples explained over all ranks (``n``); a sample whose position is ``>= total``
    is padding (kept so every rank explains ``capacity`` samples). ``total=None`` means no padding by position.
    """

    capacity: int
    rank: int = 0
    world_size: int = 1
    batches: list[SampleBatch] = field(default_factory=list)
    count: int = 0
    total: int | None = None

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    def add(self, images: Tensor, labels: Tensor | None, masks: Tensor | None) -> None:
        take = min(self.capacity - self.count, images.shape[0])
        if take <= 0:
            return
        index = torch.arange(self.count, self.count + take, dtype=torch.float64)
        positions = self.rank + index * self.world_size
        padding = None if self.total is None else positions >= self.total
        # Clones outside inference mode: inference tensors could not be used later outside it.
        with torch.inference_mode(False):
            self.batches.append(
                SampleBatch(
                    images[:take].detach().clone(),
                    None if labels is None else labels[:take].detach().clone(),
                    None if masks is None else masks[:take].detach().clone(),
                    positions,
                    padding,
                )
            )
        self.count += take

    def pad_to(self, count: int, images: Tensor, labels: bool, masks: bool) -> None:
        """Fill the buffer up to ``count`` samples with padding: copies of its last sample, or, when it is empty,
        zeros shaped like ``images`` (``(1, C, H, W)``, another rank's), with zero labels/masks when asked."""
        missing = count - self.count
        if missing <= 0:
            return
        if self.batches:
            last = self.batches[-1]
            image = last.images[-1:]
            label = None if last.labels is None else last.labels[-1:]
            mask = None if last.masks is None else last.masks[-1:]
        else:
            image = torch.zeros_like(images[:1], device="cpu")
            label = torch.zeros(1, dtype=torch.long) if labels else None
            mask = torch.zeros(1, *image.shape[-2:], dtype=torch.bool) if masks else None
        index = torch.arange(self.count, count, dtype=torch.float64)
        self.batches.append(
            SampleBatch(
                image.expand(missing, *image.shape[1:]).clone(),
                None if label is None else label.expand(missing, *label.shape[1:]).clone(),
                None if mask is None else mask.expand(missing, *mask.shape[1:]).clone(),
                self.rank + index * self.world_size,
                torch.ones(missing, dtype=torch.bool),
            )
        )
        self.count = count

    def runs(self) -> list[tuple[tuple[int, ...], str, bool, bool, int]]:
        """The buffer as runs of same-signature samples: ``(image shape, dtype, labels?, masks?, length)``."""
        runs: list[tuple[tuple[int, ...], str, bool, bool, int]] = []
        for item in self.batches:
            key = (
                tuple(item.images.shape[1:]),
                str(item.images.dtype),
                item.labels is not None,
                item.masks is not None,
            )
            if runs and runs[-1][:4] == key:
                runs[-1] = (*key, runs[-1][4] + item.images.shape[0])
            else:
                runs.append((*key, item.images.shape[0]))
        return runs

    def chunks(self, size: int | Callable[[Tensor], int]) -> Iterator[SampleBatch]:
        """The samples in order, in chunks that share image shape and label/mask presence.

        Args:
            size: the most samples in a chunk, or a function of a run of same-shaped images that gives it.
        """
        pending: list[SampleBatch] = []

        def signature(item: SampleBatch) -> tuple[object, ...]:
            return (tuple(item.images.shape[1:]), str(item.images.dtype), item.labels is None, item.masks is None)

        def merged() -> Iterator[SampleBatch]:
            images = torch.cat([item.images for item in pending])
            labels = None if pending[0].labels is None else torch.cat([item.labels for item in pending])  # type: ignore[misc]
            masks = None if pending[0].masks is None else torch.cat([item.masks for item in pending])  # type: ignore[misc]
            positions = torch.cat([item.positions for item in pending])
            padding = torch.cat([item.padding_mask for item in pending])
            step = size(images) if callable(size) else size
            for start in range(0, images.shape[0], step):
                stop = start + step
                yield SampleBatch(
                    images[start:stop],
                    None if labels is None else labels[start:stop],
                    None if masks is None else masks[start:stop],
                    positions[start:stop],
                    padding[start:stop],
                )

        for item in self.batches:
            if pending and signature(item) != signature(pending[0]):
                yield from merged()
                pending = []
            pending.append(item)
        if pending:
            yield from merged()

    def take_chunks(self, size: int | Callable[[Tensor], int], complete: bool) -> list[SampleBatch]:
        """Remove and return the buffered samples as :meth:`chunks`; unless ``complete``, a last chunk shorter than
        its size stays buffered (copied, so the rest is freed) to be filled by the next batch. Taken this way batch
        by batch, the chunks are exactly those :meth:`chunks` makes of all the samples at once."""
        chunks = list(self.chunks(size))
        self.batches = []
        if not complete and chunks:
            last = chunks[-1]
            step = size(last.images) if callable(size) else size
            if last.images.shape[0] < step:
                chunks.pop()
                self.batches = [
                    SampleBatch(
                        last.images.clone(),
                        None if last.labels is None else last.labels.clone(),
                        None if last.masks is None else last.masks.clone(),
                        last.positions.clone(),
                        None if last.padding is None else last.padding.clone(),
                    )
                ]
        return chunks


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


def padded_quota(num_samples: int, world_size: int, dataset_size: int | None = None) -> int:
    """How many samples *every* rank explains: ``ceil(n / W)``, ``n = min(num_samples, dataset_size)``.

    Rank ``r``'s first :func:`rank_quota` samples are real, the rest padding (decision 29).

    Example:
        >>> padded_quota(9, 2), padded_quota(1, 2), padded_quota(32, 2, dataset_size=7)
        (5, 1, 4)
    """
    total = num_samples if dataset_size is None else min(num_samples, dataset_size)
    return -(-total // world_size)


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


def fingerprint_terms(images: Tensor, positions: Tensor) -> Tensor:
    """Per-sample checksums weighted by position; their sum identifies the selected samples (any process count)."""
    flat = torch.nan_to_num(images.detach().flatten(1).to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    pixel_weights = torch.cos(torch.arange(flat.shape[1], dtype=torch.float64, device=flat.device) * 0.7548776662)
    return (flat * pixel_weights).sum(dim=1) * (1.0 + positions.to(flat.device) * 0.6180339887)


Run = tuple[tuple[int, ...], str, bool, bool, int]


def agree_across_ranks(buffer: SampleBuffer, chunk_size: int) -> int:
    """Make every rank's work identical before explaining (decision 29); returns the agreed chunk size.

    One small ``all_gather_object`` of (capacity, count, runs of (image shape, dtype, labels present, masks
    present, length), the locally resolved chunk size). A rank whose shard was short or empty is padded to the
    common capacity (:meth:`SampleBuffer.pad_to`); the padded runs must then be equal on every rank, else a
    ``RuntimeError`` names the ranks and what differs (instead of a collective that hangs or crashes later).
    The chunk size is the smallest rank's, so ``max_batch_size="auto"`` cannot diverge across devices.
    Without an initialized process group (one process) nothing is gathered and ``chunk_size`` is returned.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return chunk_size
    local = (buffer.capacity, buffer.count, buffer.runs(), chunk_size)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    capacities = [item[0] for item in gathered]
    if len(set(capacities)) > 1:
        raise RuntimeError(
            f"EVETCallback: the ranks would explain different numbers of samples {dict(enumerate(capacities))}; "
            "do all ranks see validation datasets of the same length?"
        )
    capacity = capacities[0]
    template = next((runs[-1] for _, _, runs, _ in gathered if runs), None)
    padded = [padded_runs(runs, count, capacity, template) for _, count, runs, _ in gathered]
    for rank, runs in enumerate(padded[1:], start=1):
        if runs != padded[0]:
            raise RuntimeError(
                "EVETCallback: the ranks' samples to explain differ, so the sharded forward passes would not line "
                f"up: rank 0 has {describe_runs(padded[0])}, rank {rank} has {describe_runs(runs)}. Every rank's first "
                "validation batches must have the same image shape and dtype and carry labels and masks alike."
            )
    if buffer.count < capacity:
        assert template is not None
        shape, dtype, labels, masks, _ = template
        buffer.pad_to(capacity, torch.zeros(1, *shape, dtype=getattr(torch, dtype.split(".")[-1])), labels, masks)
    return min(int(item[3]) for item in gathered)


def padded_runs(runs: list[Run], count: int, capacity: int, template: Run | None) -> list[Run]:
    missing = capacity - count
    if missing <= 0:
        return list(runs)
    if runs:
        return [*runs[:-1], (*runs[-1][:4], runs[-1][4] + missing)]  # type: ignore[list-item]
    return [] if template is None else [(*template[:4], missing)]  # type: ignore[list-item]


def describe_runs(runs: list[Run]) -> str:
    if not runs:
        return "no samples"
    return ", ".join(
        f"{length} x {list(shape)} {dtype} (labels {'yes' if labels else 'no'}, masks {'yes' if masks else 'no'})"
        for shape, dtype, labels, masks, length in runs
    )


def check_fsdp1_model(trainer: pl.Trainer, model: object) -> None:
    """Under ``FSDPStrategy`` (FSDP1) only ``model=None``: a submodule cannot run outside the root wrapper."""
    if model is not None and any(cls.__name__ == "FSDPStrategy" for cls in type(trainer.strategy).__mro__):
        raise ValueError(
            "Expected `model=None` under FSDPStrategy: a submodule cannot be run outside FSDP's root wrapper "
            f"(got model={model!r}); explain the LightningModule, whose forward returns the logits"
        )


def silence_sync_dist_advice(trainer: pl.Trainer, prefix: str) -> None:
    """Our values are already global (torchmetrics syncs on compute), so logging them with ``sync_dist=False`` is
    right; silence Lightning's generic advice to use ``sync_dist=True``, for the ``{prefix}/`` keys only."""
    if trainer.world_size > 1:
        warnings.filterwarnings("ignore", message=rf"It is recommended to use `self\.log\('{re.escape(prefix)}/")


def fsdp1_root(trainer: pl.Trainer, pl_module: pl.LightningModule) -> nn.Module | None:
    """FSDP1's root wrapper of ``pl_module`` (``FSDPStrategy``), or ``None`` for any other strategy."""
    root = getattr(trainer.strategy, "model", None)
    if root is None or root is pl_module:
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(root, FullyShardedDataParallel) and root.module is pl_module:
        return root
    return None


def warn_if_samples_changed(loaded: float | None, fingerprint: float) -> None:
    """Warn when the samples' fingerprint differs from the one a checkpoint saved (``None``: nothing loaded)."""
    if loaded is not None and not math.isclose(loaded, fingerprint, rel_tol=1e-9, abs_tol=1e-9):
        rank_zero_warn(
            "EVETCallback: the samples explained now differ from those before the checkpoint was saved; "
            "is the first validation dataloader shuffled or changed?"
        )
