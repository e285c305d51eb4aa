"""One explained validation epoch, streamed: each batch's share is explained as the batch passes, scored, and
dropped, keeping per-sample scalars only (docs/design.md, decisions 36-38).

Per batch, :meth:`EpochStream.add` takes this process's share (the first :func:`~.sampling.rank_quota` samples,
padded to :func:`~.sampling.padded_quota` under several processes, decision 29), explains every full chunk of
the chunk size (a partial chunk waits for the next batch, so the chunks are those an epoch-end pass would make),
and finalizes each chunk: its EVET maps at the chosen alpha, its deletion/insertion curves, the metrics' update,
its :mod:`~.records` rows. Only the chunks of the first ``keep`` samples stay, for the heatmaps.

With ``alpha="auto"`` the first ``calibration`` samples (by position, over all processes) calibrate alpha: their
chunks are held until all of them are explained, then the out-of-fold rule runs inside them (decision 11), and
every later sample uses the alpha chosen on all of them together (:attr:`FoldChoice.pooled_alpha`). A later
sample explained before that choice (in the same chunk as the last calibration samples) is held with them.

Under several processes every rank calls the same collectives in the same order: one ``all_gather_object`` per
batch while the stream is active (each rank's count, sample signatures and chunk size), from which every rank
takes the same decisions; the alpha choice happens at the same explained count on every rank.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.aggregation import SumMetric

from evet_lightning.callbacks.alpha_selection import FoldChoice, OutOfFoldAlpha
from evet_lightning.callbacks.explaining import (
    ExplainedChunk,
    ExplainedSamples,
    add_curves,
    explain_chunk,
    module_device,
    to_cpu,
)
from evet_lightning.callbacks.explanation_metrics import ExplanationMetrics
from evet_lightning.callbacks.pairs import PairPolicy, explain_pair_chunk
from evet_lightning.callbacks.records import SampleRecords, chunk_records
from evet_lightning.callbacks.sampling import (
    SampleBatch,
    SampleBuffer,
    agree_across_ranks,
    describe_runs,
    first_val_dataset_size,
    padded_quota,
)
from evet_lightning.saliency.evet import EVET
from evet_lightning.saliency.settings import EVETSettings, resolve_max_batch_size
from evet_lightning.saliency.transforms import AffineTransform

__all__ = ["ChunkWork", "EpochStream", "StreamLayout", "new_layout"]

ChunkSize = int | Callable[[Tensor], int]

#: Per-chunk scalars are concatenated into one part every this many chunks.
_COMPACT_EVERY = 256


@dataclass(frozen=True)
class StreamLayout:
    """Which samples this process explains in one epoch, and what becomes of them."""

    capacity: int
    """Samples this process explains, padding included."""
    rank: int
    world_size: int
    total: int | None
    """Real samples over all processes (positions ``>= total`` are padding); ``None``: no padding by position."""
    calibration: int | None
    """``alpha="auto"``: the samples at positions below it calibrate alpha; ``None`` with a fixed alpha."""
    keep: int
    """This process's first ``keep`` samples keep their chunks (images and maps) for the heatmaps."""

    @property
    def calibration_quota(self) -> int:
        """Samples every process has explained once all calibration samples are: ``ceil(calibration / W)``."""
        return padded_quota(self.calibration or 0, self.world_size)


def new_layout(trainer: pl.Trainer, num_samples: int, calibration: int | None, keep: int) -> StreamLayout:
    """The layout of this process's share of the first ``num_samples`` validation samples (decision 29)."""
    world_size, rank = trainer.world_size, trainer.global_rank
    if world_size == 1:
        total, capacity = None, num_samples
    else:
        dataset_size = first_val_dataset_size(trainer)
        total = num_samples if dataset_size is None else min(num_samples, dataset_size)
        capacity = padded_quota(num_samples, world_size, dataset_size)
    calibrated = None if calibration is None else min(calibration, num_samples if total is None else total)
    return StreamLayout(capacity, rank, world_size, total, calibrated, keep)


@dataclass(frozen=True)
class ChunkWork:
    """What explaining and finalizing one chunk takes (the same for every chunk of an epoch)."""

    evet: EVET
    settings: EVETSettings
    stability_transforms: Sequence[AffineTransform]
    paper_transforms: Sequence[AffineTransform]
    deletion_steps: int | None
    pairs: PairPolicy | None = None
    """Multi-label runs: the (image, class) pairs explained of each image (decisions 55-57); ``None``: one class
    per image (multiclass, binary)."""


class EpochStream:
    """One explained epoch on this process: :meth:`add` per validation batch, :meth:`finish` at epoch end.

    Every process must call both the same number of times (their collectives line up, decision 29).
    """

    def __init__(
        self,
        layout: StreamLayout,
        work: ChunkWork,
        metrics: ExplanationMetrics,
        records: SampleRecords,
        selection: OutOfFoldAlpha | None,
    ) -> None:
        self.layout = layout
        self.work = work
        self.metrics = metrics
        self.records = records
        self.selection = selection
        self.intake = SampleBuffer(layout.capacity, layout.rank, layout.world_size, total=layout.total)
        self.explained = 0
        """Samples explained so far on this process, padding included."""
        self.held: list[tuple[ExplainedChunk, int]] = []
        """Explained calibration chunks (and later samples explained with them) waiting for the alpha choice."""
        self.choice: FoldChoice | None = None
        self.active = True
        """False once every process has explained all its samples and the alpha is chosen."""
        self.kept: list[ExplainedChunk] = []
        self.kept_samples = 0
        self.parts: list[ExplainedSamples] = []
        self.evet_seconds = self.curve_seconds = self.seconds = 0.0
        self.counts: tuple[SumMetric, SumMetric] | None = None
        """With ``alpha="auto"``: the real samples finalized and those after the calibration set (all processes)."""

    @classmethod
    def start(
        cls,
        trainer: pl.Trainer,
        work: ChunkWork,
        metrics: ExplanationMetrics,
        records: SampleRecords,
        num_samples: int,
        calibration: int,
        keep: int,
    ) -> EpochStream:
        """A stream of this process's share of the first ``num_samples`` samples; with ``alpha="auto"`` the first
        ``calibration`` calibrate alpha; the chunks of this process's first ``keep`` samples are kept."""
        auto = work.settings.alpha == "auto"
        layout = new_layout(trainer, num_samples, calibration if auto else None, keep)
        stream = cls(layout, work, metrics, records, None)
        if auto:
            device = module_device(work.evet.model)
            with torch.inference_mode(False):  # their sums are updated outside inference mode
                selection = OutOfFoldAlpha(work.settings.alpha_grid, work.settings.alpha_objective)
                stream.selection = selection.to(device)
                stream.counts = (SumMetric().to(device), SumMetric().to(device))
        return stream

    @property
    def calibration_complete(self) -> bool:
        """The alpha of every sample is known (always with a fixed alpha)."""
        return self.selection is None or self.choice is not None

    def add(self, images: Tensor, labels: Tensor | None, masks: Tensor | None, root: nn.Module | None) -> None:
        """One validation batch: take this process's share, explain the full chunks, finalize what can be."""
        if self.active:
            self.intake.add(images, labels, masks)
            self._step(final=False, root=root)

    def finish(self, root: nn.Module | None) -> ExplainedSamples:
        """The epoch ends: explain what is left (padding a short shard), choose alpha if still pending, and return
        the epoch's samples (scalars of all, chunks of the first ``keep``), on the CPU."""
        if self.active:
            self._step(final=True, root=root)
        return ExplainedSamples.concat(self.parts, self.kept)

    def timing(self, num_samples: int, extra_seconds: float) -> dict[str, float]:
        """``EVETCallback.last_timing``: the stream's wall seconds (plus ``extra_seconds`` of epoch-end work)."""
        return {
            "evet_seconds": self.evet_seconds,
            "curve_seconds": self.curve_seconds,
            "num_samples": float(num_samples),
            "seconds_per_image": self.evet_seconds / max(self.explained, 1),
            "seconds": self.seconds + extra_seconds,
        }

    def total_rows(self) -> int:
        """Real rows (samples, or pairs of a multi-label run) finalized over all processes: ``{prefix}/num_pairs``
        (one ``all_reduce``; every process calls it)."""
        count = torch.tensor([float(len(self.records))], device=self.metrics.num_skipped.device)
        if _distributed():
            import torch.distributed as dist

            dist.all_reduce(count)
        return round(float(count.item()))

    def logged_alpha(self) -> float | None:
        """``{prefix}/alpha`` (decision 36): the mean of the two folds' alphas for the calibration samples and the
        pooled alpha for the later ones, weighted by their shares of the samples (over all processes, a
        collective); with no later sample the folds' mean, as before streaming. ``None`` with a fixed alpha."""
        if self.counts is None or self.choice is None:
            return None
        for count in self.counts:  # every process has updated each count once: compute syncs without warning
            count.update(torch.zeros((), device=count.device))
        total, later = (float(count.compute()) for count in self.counts)
        if later <= 0:
            return self.choice.mean_alpha
        share = later / total
        return (1.0 - share) * self.choice.mean_alpha + share * self.choice.pooled_alpha

    # ------------------------------------------------------------------------------------------ one step

    def _step(self, final: bool, root: nn.Module | None) -> None:
        start = time.perf_counter()
        with self._model(root) as device:
            size, ready, complete = self._plan(final, device)
            if ready:
                for batch in self.intake.take_chunks(size, complete=complete):
                    self._explain(batch, size, device)
            pending = self.selection is not None and self.choice is None
            if pending and (complete or self.explained >= self.layout.calibration_quota):
                assert self.selection is not None
                self.choice = self.selection.choose()  # every process at the same count: it syncs
                held, self.held = self.held, []
                for chunk, chunk_size in held:
                    self._finalize(chunk, chunk_size)
        self.active = not complete
        self.seconds += time.perf_counter() - start

    @contextmanager
    def _model(self, root: nn.Module | None) -> Iterator[torch.device]:
        """Run FSDP1's root wrapper instead of the explained module, when there is one (decision 29)."""
        evet = self.work.evet
        explained = evet.model
        if root is not None:
            evet.model = root
        try:
            yield module_device(evet.model)
        finally:
            evet.model = explained

    def _plan(self, final: bool, device: torch.device) -> tuple[ChunkSize, bool, bool]:
        """``(chunk size, explain now?, flush partial chunks?)``, the same on every process."""
        max_batch_size = self.work.settings.max_batch_size

        def resolved(images: Tensor) -> int:
            return resolve_max_batch_size(max_batch_size, images[:0].to(device))  # type: ignore[arg-type]

        if not _distributed():
            return resolved, True, final or self.intake.full
        local = min((resolved(batch.images) for batch in self.intake.batches), default=1 << 30)
        if final:  # pads a short shard and checks the samples line up, as an epoch-end pass does
            return agree_across_ranks(self.intake, local), True, True
        return _agree_batch(self.intake, local)

    def _explain(self, batch: SampleBatch, size: ChunkSize, device: torch.device) -> None:
        evet = self.work.evet
        chunk_size = size(batch.images) if callable(size) else size
        previous = evet.max_batch_size
        evet.max_batch_size = previous if callable(size) else size
        chunk: ExplainedChunk | None
        try:
            work = self.work
            if work.pairs is None:
                chunk = explain_chunk(evet, batch, device, work.stability_transforms, work.paper_transforms)
            else:  # (image, class) pairs (decision 56); None when no rank has a pair in this chunk
                chunk = explain_pair_chunk(
                    evet, batch, device, work.pairs, work.stability_transforms, work.paper_transforms
                )
        finally:
            evet.max_batch_size = previous
        self.explained += batch.images.shape[0]  # images: `alpha_calibration` counts images (decision 56)
        if chunk is None:
            return
        self.evet_seconds += chunk.seconds
        if self.selection is not None and self.choice is None:
            # Only calibration samples enter a fold; padding and later samples go into none (fold -1).
            outside = chunk.padding_mask | (chunk.positions.to(chunk.images.device) >= (self.layout.calibration or 0))
            folds = torch.where(outside, -1, chunk.folds)
            self.selection.add(folds, chunk.result, chunk.masks, chunk.stability, chunk.valid)
            self.held.append((chunk, chunk_size))
        else:
            self._finalize(chunk, chunk_size)

    def _finalize(self, chunk: ExplainedChunk, chunk_size: int) -> None:
        """The chunk's final maps, curves, metrics and rows; its images and maps are dropped unless kept."""
        if self.choice is not None:
            chunk = chunk.out_of_fold(self.choice, self.layout.calibration)
            alphas, _ = chunk.choice_alphas(self.choice)
            per_sample = torch.tensor(alphas, dtype=torch.float64)[chunk.alpha_groups(self.layout.calibration).cpu()]
        else:
            fixed = float(self.work.settings.alpha)  # type: ignore[arg-type]
            per_sample = torch.full((chunk.images.shape[0],), fixed, dtype=torch.float64)
        work, steps = self.work, self.work.deletion_steps
        if steps is not None:  # on the final maps: after the alpha choice
            chunk = add_curves(chunk, work.evet.model, steps, work.settings, chunk_size)
            self.curve_seconds += chunk.curve_seconds
        self.metrics.update(chunk)
        if self.counts is not None:
            real = ~chunk.padding_mask
            later = chunk.positions.to(real.device) >= (self.layout.calibration or 0)
            self.counts[0].update(real.sum())
            self.counts[1].update((real & later).sum())
        self.records.append(chunk_records(chunk, per_sample))
        part = to_cpu(dataclasses.replace(ExplainedSamples.from_chunks([chunk]), chunks=()))
        if self.kept_samples < self.layout.keep:
            self.kept.append(to_cpu(chunk))
            self.kept_samples += len(part)
        self.parts.append(part)
        if len(self.parts) >= _COMPACT_EVERY:  # a few tensors per sample, not a few per chunk
            self.parts = [ExplainedSamples.concat(self.parts, ())]


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _agree_batch(intake: SampleBuffer, local_size: int) -> tuple[int, bool, bool]:
    """One ``all_gather_object`` per batch (decision 37): every process's capacity, count, sample runs and chunk
    size. The same runs everywhere: explain (the smallest chunk size), flushing when every process is full. The
    same counts but other runs: a ``RuntimeError`` naming the ranks. Other counts (a shard ran short): wait; the
    epoch end pads it."""
    import torch.distributed as dist

    local = (intake.capacity, intake.count, intake.runs(), local_size)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    capacities = [item[0] for item in gathered]
    if len(set(capacities)) > 1:
        raise RuntimeError(
            f"EVETCallback: the ranks would explain different numbers of samples {dict(enumerate(capacities))}; "
            "do all ranks see validation datasets of the same length?"
        )
    size = min(int(item[3]) for item in gathered)
    counts = [item[1] for item in gathered]
    if all(item[2] == gathered[0][2] for item in gathered):
        return size, True, counts[0] >= capacities[0]
    if len(set(counts)) == 1:
        rank = next(rank for rank, item in enumerate(gathered) if item[2] != gathered[0][2])
        raise RuntimeError(
            "EVETCallback: the ranks' samples to explain differ, so the sharded forward passes would not line "
            f"up: rank 0 has {describe_runs(gathered[0][2])}, rank {rank} has {describe_runs(gathered[rank][2])}. "
            "Every rank's first validation batches must have the same image shape and dtype and carry labels and "
            "masks alike."
        )
    return size, False, False
