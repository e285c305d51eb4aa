"""The callback's per-sample results: EVET run on each chunk of buffered samples, kept in one place per epoch.

An explained epoch goes ``buffer -> explain (this module) -> update metrics -> compute and log``. What the
explain step produces, :class:`ExplainedSamples`, is everything known about each sample (its image, both maps,
the class explained, ``Y``, ``O`` of each map, the stability maps), so later steps read and never recompute.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from evet_lightning.callbacks.sampling import SampleBatch
from evet_lightning.saliency.evet import EVET, EVETResult
from evet_lightning.saliency.transforms import AffineTransform

__all__ = [
    "ExplainedChunk",
    "ExplainedSamples",
    "SampleView",
    "StabilityMaps",
    "explain_chunk",
    "module_device",
    "to_cpu",
]


@dataclass(frozen=True)
class StabilityMaps:
    """Both maps of ``T(x)`` mapped back to the frame of ``x``, for one stability transform ``T``."""

    original: Tensor
    """``(B, H, W)`` ``T^-1(J(T(x)))``: view 0 of the EVET run on ``T(x)`` (``J(T(x))`` min-max normalized)."""
    saliency: Tensor
    """``(B, H, W)`` ``T^-1(J*(T(x)))``."""
    valid: Tensor
    """``(H, W)`` bool: the pixels whose pre-image under ``T`` lies inside the canvas."""
    finite: Tensor
    """``(B,)`` bool: both EVET runs (on ``x`` and on ``T(x)``) were finite."""


@dataclass(frozen=True)
class ExplainedChunk:
    """One EVET call on up to ``max_batch_size`` samples of the same image size, and what goes with it."""

    images: Tensor
    """``(B, C, H, W)`` the samples as the model saw them."""
    masks: Tensor | None
    """``(B, H, W)`` bool object masks, or ``None`` when the batches carried none."""
    positions: Tensor
    """``(B,)`` float64: each sample's position in the single-process order."""
    result: EVETResult
    stability: tuple[StabilityMaps, ...]
    """One entry per stability transform, in the callback's order."""
    seconds: float
    """Wall seconds of the EVET call on the samples (stability runs excluded)."""

    @property
    def evet_scores(self) -> Tensor:
        """``(B,)`` ``O`` of the EVET map: ``f_k(Phi(x, J*(x)))``."""
        assert self.result.saliency_scores is not None, "the callback always asks EVET for score_saliency"
        return self.result.saliency_scores


class SampleView(NamedTuple):
    """One explained sample, for a heatmap or a table row."""

    image: Tensor
    """``(C, H, W)``."""
    original: Tensor
    """``(H, W)`` the original map ``J(x)``."""
    saliency: Tensor
    """``(H, W)`` the EVET map ``J*(x)``."""
    target: int
    clean_score: float
    """``Y = f_k(x)``."""
    original_score: float
    """``O`` of the original map."""
    evet_score: float
    """``O`` of the EVET map."""


@dataclass(frozen=True)
class ExplainedSamples:
    """Everything one explained epoch produced on this process, sample by sample, in explanation order.

    The per-sample values are concatenated over the chunks; images and maps stay in their chunks, because
    chunks may differ in image size. Non-finite samples (see ``finite``) are included here and left out of
    every metric.
    """

    chunks: tuple[ExplainedChunk, ...]
    positions: Tensor
    """``(N,)`` float64: each sample's position in the single-process order (``rank + j * world_size``)."""
    targets: Tensor
    """``(N,)`` the class explained."""
    finite: Tensor
    """``(N,)`` bool: the image and its logits were finite."""
    clean_scores: Tensor
    """``(N,)`` ``Y``."""
    original_scores: Tensor
    """``(N,)`` ``O`` of the original maps."""
    evet_scores: Tensor
    """``(N,)`` ``O`` of the EVET maps."""

    @classmethod
    def from_chunks(cls, chunks: Sequence[ExplainedChunk]) -> ExplainedSamples:
        def cat(values: list[Tensor], dtype: torch.dtype) -> Tensor:
            return torch.cat(values) if values else torch.zeros(0, dtype=dtype)

        return cls(
            chunks=tuple(chunks),
            positions=cat([chunk.positions for chunk in chunks], torch.float64),
            targets=cat([chunk.result.targets for chunk in chunks], torch.long),
            finite=cat([chunk.result.finite for chunk in chunks], torch.bool),
            clean_scores=cat([chunk.result.clean_scores for chunk in chunks], torch.float32),
            original_scores=cat([chunk.result.view_scores[0] for chunk in chunks], torch.float32),
            evet_scores=cat([chunk.evet_scores for chunk in chunks], torch.float32),
        )

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def results(self) -> list[EVETResult]:
        """The EVET result of each chunk."""
        return [chunk.result for chunk in self.chunks]

    @property
    def evet_seconds(self) -> float:
        return sum(chunk.seconds for chunk in self.chunks)

    def first(self, count: int) -> Iterator[SampleView]:
        """The first ``count`` samples, finite or not, one by one."""
        index = 0
        for chunk in self.chunks:
            result = chunk.result
            for row in range(chunk.images.shape[0]):
                if index >= count:
                    return
                yield SampleView(
                    chunk.images[row],
                    result.original[row],
                    result.saliency[row],
                    int(result.targets[row]),
                    float(result.clean_scores[row]),
                    float(result.view_scores[0, row]),
                    float(chunk.evet_scores[row]),
                )
                index += 1

    def to_cpu(self) -> ExplainedSamples:
        """A detached CPU copy (no autograd graph, no device memory kept)."""
        return to_cpu(self)


def explain_chunk(
    evet: EVET, batch: SampleBatch, device: torch.device, stability_transforms: Sequence[AffineTransform]
) -> ExplainedChunk:
    """Run EVET on one chunk of samples on ``device`` (scoring the EVET map too), and on each ``T(x)``."""
    images = batch.images.to(device)
    labels = None if batch.labels is None else batch.labels.to(device)
    start = _synchronized_time(device)
    result = evet(images, labels, score_saliency=True)
    seconds = _synchronized_time(device) - start
    return ExplainedChunk(
        images=images,
        masks=None if batch.masks is None else batch.masks.to(device),
        positions=batch.positions,
        result=result,
        stability=tuple(_stability_maps(evet, transform, images, result) for transform in stability_transforms),
        seconds=seconds,
    )


def _stability_maps(evet: EVET, transform: AffineTransform, images: Tensor, result: EVETResult) -> StabilityMaps:
    # One EVET run on T(x) gives both maps: its view 0 is J(T(x)) min-max normalized (as
    # `min_max_normalize(evet.explain(T(x)).maps)` would be, without a second CAM pass), and J*(T(x)).
    transformed = evet(transform.forward(images), result.targets)
    height, width = images.shape[-2:]
    return StabilityMaps(
        original=transform.inverse(transformed.original.unsqueeze(1)).squeeze(1),
        saliency=transform.inverse(transformed.saliency.unsqueeze(1)).squeeze(1),
        valid=transform.valid_mask(height, width, images.device),
        finite=result.finite & transformed.finite,
    )


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer); the CPU for a module with neither."""
    tensor: Tensor | None = next(module.parameters(), None)
    tensor = next(module.buffers(), None) if tensor is None else tensor
    return torch.device("cpu") if tensor is None else tensor.device


def _synchronized_time(device: torch.device) -> float:
    """``time.perf_counter()`` after the device finished its queued work (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (dataclasses, named tuples, tuples, lists) detached and on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {item.name: to_cpu(getattr(value, item.name)) for item in dataclasses.fields(value) if item.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(to_cpu(item) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_cpu(item) for item in value)
    return value
