"""The callback's per-sample results: EVET run on each chunk of samples, and what an epoch keeps of them.

Each chunk goes ``explain (this module) -> final alpha -> curves -> update metrics -> records`` as the validation
batches pass (:mod:`~evet_lightning.callbacks.streaming`). What the explain step produces, :class:`ExplainedChunk`,
is everything known about its samples (images, both maps, the class explained, ``Y``, ``O`` of each map, the
stability maps, and, when asked for, the deletion and insertion curves of both maps), so later steps read and never
recompute; :class:`ExplainedSamples` keeps every sample's values and the first samples' chunks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from evet_lightning.callbacks.alpha_selection import FoldChoice, OutOfFoldAlpha
from evet_lightning.callbacks.sampling import SampleBatch
from evet_lightning.functional.deletion_insertion import curve_auc, deletion_curve, insertion_curve
from evet_lightning.saliency.evet import EVET, EVETResult
from evet_lightning.saliency.settings import EVETSettings
from evet_lightning.saliency.transforms import AffineTransform

__all__ = [
    "VARIANTS",
    "ExplainedChunk",
    "ExplainedSamples",
    "PerturbationCurves",
    "SampleView",
    "StabilityMaps",
    "add_curves",
    "explain_chunk",
    "module_device",
    "stability_maps",
    "synchronized_time",
    "to_cpu",
]

#: The keys of the per-sample AUCs (:attr:`ExplainedSamples.aucs`), ``"{variant}/{curve}_auc"``: the logged
#: metric keys without the prefix.
#: The two maps scored for every sample: ``J(x)`` and EVET's ``J*(x)``.
VARIANTS = ("original", "evet")


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
    transform: AffineTransform | None = None
    """``T``, kept with ``alpha="auto"`` so :meth:`at_alphas` can re-blend ``J*(T(x))`` at each sample's alpha."""
    transformed: EVETResult | None = None
    """The EVET run on ``T(x)`` (with ``alpha="auto"`` only; its ``fused_mean``/``fused_sigma`` are reused)."""

    def at_alphas(self, folds: Tensor, alphas: Sequence[float]) -> StabilityMaps:
        """The same maps with ``J*(T(x))`` blended at ``alphas[fold]`` for each sample (decision 11)."""
        assert self.transform is not None and self.transformed is not None
        fused = OutOfFoldAlpha.saliency(
            alphas, folds, self.transformed.fused_mean, self.transformed.fused_sigma, self.transformed.finite
        )
        saliency = self.transform.inverse(fused.unsqueeze(1)).squeeze(1)
        return dataclasses.replace(self, saliency=saliency)


@dataclass(frozen=True)
class PerturbationCurves:
    """The deletion and insertion curves of one map for a chunk's samples (docs/design.md, decision 16)."""

    deletion: Tensor
    """``(B, S + 1)`` target probability as the top pixels are replaced by the baseline (lower area is better)."""
    insertion: Tensor
    """``(B, S + 1)`` target probability as the top pixels are restored on a blur (higher area is better)."""

    def aucs(self) -> dict[str, Tensor]:
        """``{"deletion_auc": (B,), "insertion_auc": (B,)}``; NaN for a sample whose image or map was not finite."""
        return {"deletion_auc": curve_auc(self.deletion), "insertion_auc": curve_auc(self.insertion)}


@dataclass(frozen=True)
class ExplainedChunk:
    """One EVET call on up to ``max_batch_size`` samples of the same image size, and what goes with it."""

    images: Tensor
    """``(B, C, H, W)`` the samples as the model saw them."""
    masks: Tensor | None
    """``(B, H, W)`` bool object masks, or ``None`` when the batches carried none."""
    positions: Tensor
    """``(B,)`` float64: each sample's position in the single-process order (a pair's: its image's)."""
    result: EVETResult
    stability: tuple[StabilityMaps, ...]
    """One entry per stability transform, in the callback's order."""
    seconds: float
    """Wall seconds of the EVET call on the samples (stability runs excluded)."""
    original_curves: PerturbationCurves | None = None
    """Deletion and insertion curves of the final original maps (``deletion_insertion=True`` only)."""
    evet_curves: PerturbationCurves | None = None
    """Deletion and insertion curves of the final EVET maps (after the out-of-fold alpha, if any)."""
    curve_seconds: float = 0.0
    """Wall seconds spent on the curves of both maps."""
    padding: Tensor | None = None
    """``(B,)`` bool: samples explained only so every rank does the same work (decision 29), left out of every
    metric, the fingerprint, the table and the heatmaps; ``None`` for none."""
    paper_stability: tuple[StabilityMaps, ...] = ()
    """With ``paper_stability=True``: one entry per transform of the paper's protocol (Table 5), scored apart
    from :attr:`stability` (``stability_index_paper``) and never seen by the out-of-fold alpha choice."""
    valid: Tensor | None = None
    """``(B, H, W)`` bool: the pixels the pointing game counts (False on ignored pixels of class-index masks,
    decision 47); ``None``: all. A multi-label chunk's rows are (image, class) pairs (:mod:`~.pairs`)."""

    @property
    def padding_mask(self) -> Tensor:
        """``(B,)`` bool on the images' device, all false when :attr:`padding` is ``None``."""
        if self.padding is None:
            return torch.zeros(self.images.shape[0], dtype=torch.bool, device=self.images.device)
        return self.padding.to(self.images.device)

    @property
    def scored(self) -> Tensor:
        """``(B,)`` bool: the samples that enter the scores, finite and not padding."""
        return self.result.finite & ~self.padding_mask

    def curves(self, variant: str) -> PerturbationCurves | None:
        """The curves of the ``"original"`` or the ``"evet"`` maps (``None`` when they were not computed)."""
        return self.original_curves if variant == "original" else self.evet_curves

    @property
    def evet_scores(self) -> Tensor:
        """``(B,)`` ``O`` of the EVET map: ``f_k(Phi(x, J*(x)))``."""
        assert self.result.saliency_scores is not None, "the callback always asks EVET for score_saliency"
        return self.result.saliency_scores

    @property
    def folds(self) -> Tensor:
        """``(B,)`` long: each sample's fold for the out-of-fold alpha, its position modulo 2 (decision 11)."""
        return (self.positions.round().long() % 2).to(self.images.device)

    def alpha_groups(self, calibration: int | None = None) -> Tensor:
        """``(B,)`` long: the alpha group of each sample: its fold (0 or 1) inside the calibration set (positions
        below ``calibration``; ``None``: every sample), 2 after it (the pooled choice, decision 36)."""
        folds = self.folds
        if calibration is None:
            return folds
        inside = self.positions.to(folds.device) < calibration
        return torch.where(inside, folds, torch.full_like(folds, 2))

    @staticmethod
    def choice_alphas(choice: FoldChoice) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """The alpha of each group of :meth:`alpha_groups` and its grid index: fold 0's, fold 1's, the pooled one."""
        return (*choice.alphas, choice.pooled_alpha), (*choice.indices, choice.pooled_index)

    def out_of_fold(self, choice: FoldChoice, calibration: int | None = None) -> ExplainedChunk:
        """The chunk with each sample's EVET map, its score and its stability maps at its group's alpha
        (:meth:`alpha_groups`): a calibration sample at its fold's out-of-fold alpha, a later one at the pooled."""
        result, groups = self.result, self.alpha_groups(calibration)
        alphas, indices = self.choice_alphas(choice)
        assert result.alpha_scores is not None, "out of fold needs an alpha='auto' run"
        result = dataclasses.replace(
            result,
            saliency=OutOfFoldAlpha.saliency(alphas, groups, result.fused_mean, result.fused_sigma, result.finite),
            saliency_scores=OutOfFoldAlpha.scores(indices, groups, result.alpha_scores),
            alpha=choice.mean_alpha,
        )
        stability = tuple(maps.at_alphas(groups, alphas) for maps in self.stability)
        paper = tuple(maps.at_alphas(groups, alphas) for maps in self.paper_stability)
        return dataclasses.replace(self, result=result, stability=stability, paper_stability=paper)


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
    position: int = -1
    """The sample's position in the single-process order (its dataset index with an unshuffled loader)."""
    aucs: dict[str, float] = {}  # noqa: RUF012 (never mutated; a NamedTuple field needs a plain default)
    """Deletion/insertion AUC of each map, by :attr:`ExplainedSamples.aucs` key (empty when not computed)."""


@dataclass(frozen=True)
class ExplainedSamples:
    """What one explained epoch keeps on this process, sample by sample, in explanation order.

    The per-sample values of every sample are concatenated over the chunks; images and maps stay in their chunks
    (chunks may differ in image size), of which a streamed epoch keeps the first ones only (decision 38).
    Non-finite samples (see ``finite``) are included here and left out of every metric; so are padding samples
    (see ``padding``, decision 29), which :meth:`first` and ``len`` skip.
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
    aucs: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    """``{"original/deletion_auc": (N,), "evet/deletion_auc", "original/insertion_auc", "evet/insertion_auc"}``
    when the curves were computed (NaN for a non-finite sample), else empty."""
    padding: Tensor | None = None
    """``(N,)`` bool: padding samples (decision 29), ``None`` for none."""

    @classmethod
    def from_chunks(cls, chunks: Sequence[ExplainedChunk]) -> ExplainedSamples:
        def cat(values: list[Tensor], dtype: torch.dtype) -> Tensor:
            return torch.cat(values) if values else torch.zeros(0, dtype=dtype)

        aucs: dict[str, list[Tensor]] = {}
        for chunk in chunks:
            for variant in VARIANTS:
                curves = chunk.curves(variant)
                for name, values in ({} if curves is None else curves.aucs()).items():
                    aucs.setdefault(f"{variant}/{name}", []).append(values)
        return cls(
            chunks=tuple(chunks),
            positions=cat([chunk.positions for chunk in chunks], torch.float64),
            targets=cat([chunk.result.targets for chunk in chunks], torch.long),
            finite=cat([chunk.result.finite for chunk in chunks], torch.bool),
            clean_scores=cat([chunk.result.clean_scores for chunk in chunks], torch.float32),
            original_scores=cat([chunk.result.view_scores[0] for chunk in chunks], torch.float32),
            evet_scores=cat([chunk.evet_scores for chunk in chunks], torch.float32),
            aucs={key: torch.cat(values) for key, values in aucs.items()},
            padding=cat([chunk.padding_mask.cpu() for chunk in chunks], torch.bool),
        )

    @classmethod
    def concat(cls, parts: Sequence[ExplainedSamples], chunks: Sequence[ExplainedChunk]) -> ExplainedSamples:
        """The per-sample values of ``parts`` in order, with ``chunks``: the chunks of the first parts only (a
        streamed epoch keeps the images and maps of its first samples, decision 38)."""
        if not parts:
            return cls.from_chunks(chunks)

        def cat(name: str) -> Tensor:
            return torch.cat([getattr(part, name) for part in parts])

        return cls(
            chunks=tuple(chunks),
            positions=cat("positions"),
            targets=cat("targets"),
            finite=cat("finite"),
            clean_scores=cat("clean_scores"),
            original_scores=cat("original_scores"),
            evet_scores=cat("evet_scores"),
            aucs={key: torch.cat([part.aucs[key] for part in parts]) for key in parts[0].aucs},
            padding=torch.cat([part.padding_mask for part in parts]),
        )

    @property
    def padding_mask(self) -> Tensor:
        """``(N,)`` bool, all false when :attr:`padding` is ``None``."""
        return torch.zeros(self.positions.shape[0], dtype=torch.bool) if self.padding is None else self.padding

    def __len__(self) -> int:
        """The number of explained samples, padding excluded."""
        total = int(self.positions.shape[0])
        return total if self.padding is None else total - int(self.padding.sum())

    @property
    def results(self) -> list[EVETResult]:
        """The EVET result of each chunk."""
        return [chunk.result for chunk in self.chunks]

    def first(self, count: int) -> Iterator[SampleView]:
        """The first ``count`` samples, finite or not, one by one (padding skipped)."""
        index = yielded = 0
        for chunk in self.chunks:
            result, padding = chunk.result, chunk.padding_mask
            for row in range(chunk.images.shape[0]):
                if yielded >= count:
                    return
                if padding[row]:
                    index += 1
                    continue
                yield SampleView(
                    chunk.images[row],
                    result.original[row],
                    result.saliency[row],
                    int(result.targets[row]),
                    float(result.clean_scores[row]),
                    float(result.view_scores[0, row]),
                    float(chunk.evet_scores[row]),
                    round(float(chunk.positions[row])),
                    {key: float(values[index]) for key, values in self.aucs.items()},
                )
                index += 1
                yielded += 1

    def to_cpu(self) -> ExplainedSamples:
        """A detached CPU copy (no autograd graph, no device memory kept)."""
        return to_cpu(self)


def explain_chunk(
    evet: EVET,
    batch: SampleBatch,
    device: torch.device,
    stability_transforms: Sequence[AffineTransform],
    paper_transforms: Sequence[AffineTransform] = (),
) -> ExplainedChunk:
    """Run EVET on one chunk of samples on ``device`` (scoring the EVET map too), and on each ``T(x)``.

    With ``alpha="auto"`` the chunk's maps are at the alpha this chunk alone would choose; the callback replaces
    them with the out-of-fold ones (:meth:`ExplainedChunk.out_of_fold`) once every chunk is in.
    """
    images = batch.images.to(device)
    labels = None if batch.labels is None else batch.labels.to(device)
    masks = None if batch.masks is None else batch.masks.to(device)
    start = synchronized_time(device)
    result = evet(images, labels, masks=masks, score_saliency=True)
    seconds = synchronized_time(device) - start
    return ExplainedChunk(
        images=images,
        masks=masks,
        positions=batch.positions,
        result=result,
        stability=tuple(stability_maps(evet, transform, images, result) for transform in stability_transforms),
        seconds=seconds,
        padding=batch.padding,
        paper_stability=tuple(stability_maps(evet, transform, images, result) for transform in paper_transforms),
    )


def add_curves(
    chunk: ExplainedChunk, model: nn.Module, steps: int, settings: EVETSettings, max_batch_size: int
) -> ExplainedChunk:
    """The chunk with the deletion and insertion curves of its (final) original and EVET maps.

    Deletion uses EVET's baseline (``settings.baseline`` and ``normalization``, the x_d of Phi), insertion RISE's
    blur; the class is the one EVET explained. Both maps go through one call per curve (``2 B (S + 1)`` step
    images in chunks of ``max_batch_size``), so ``4 (S + 1)`` forward passes per sample in all.
    """
    device = chunk.images.device
    start = synchronized_time(device)
    images = torch.cat([chunk.images, chunk.images])
    maps = torch.cat([chunk.result.original, chunk.result.saliency])
    targets = torch.cat([chunk.result.targets, chunk.result.targets])
    common: dict[str, Any] = {
        "steps": steps,
        "normalization": settings.normalization,
        "max_batch_size": max_batch_size,
        "output_transform": settings.output_transform,
        "activation": settings.score_activation,
    }
    deletion = deletion_curve(model, images, maps, targets, baseline=settings.baseline, **common)
    insertion = insertion_curve(model, images, maps, targets, **common)
    size = chunk.images.shape[0]
    return dataclasses.replace(
        chunk,
        original_curves=PerturbationCurves(deletion[:size], insertion[:size]),
        evet_curves=PerturbationCurves(deletion[size:], insertion[size:]),
        curve_seconds=synchronized_time(device) - start,
    )


def stability_maps(
    evet: EVET, transform: AffineTransform, images: Tensor, result: EVETResult, image_index: Tensor | None = None
) -> StabilityMaps:
    """Both maps of ``T(x)`` mapped back; with ``image_index``, ``result`` holds (image, class) pairs of ``images``
    and the run on ``T(x)`` explains the same pairs (:meth:`EVET.explain_pairs`, views shared per image)."""
    # One EVET run on T(x) gives both maps: its view 0 is J(T(x)) min-max normalized (as
    # `min_max_normalize(evet.explain(T(x)).maps)` would be, without a second CAM pass), and J*(T(x)). With
    # alpha="auto" the run uses a fixed alpha (no per-alpha scoring) and is re-blended at each sample's alpha.
    auto = evet.alpha == "auto"
    alpha = 0.0 if auto else None
    if image_index is None:
        transformed = evet(transform.forward(images), result.targets, alpha=alpha)
    else:
        transformed = evet.explain_pairs(transform.forward(images), image_index, result.targets, alpha=alpha)
    height, width = images.shape[-2:]
    return StabilityMaps(
        original=transform.inverse(transformed.original.unsqueeze(1)).squeeze(1),
        saliency=transform.inverse(transformed.saliency.unsqueeze(1)).squeeze(1),
        valid=transform.valid_mask(height, width, images.device),
        finite=result.finite & transformed.finite,
        transform=transform if auto else None,
        transformed=transformed if auto else None,
    )


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer); the CPU for a module with neither."""
    tensor: Tensor | None = next(module.parameters(), None)
    tensor = next(module.buffers(), None) if tensor is None else tensor
    return torch.device("cpu") if tensor is None else tensor.device


def synchronized_time(device: torch.device) -> float:
    """``time.perf_counter()`` after the device finished its queued work (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (dataclasses, named tuples, tuples, lists, dicts) detached and on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {item.name: to_cpu(getattr(value, item.name)) for item in dataclasses.fields(value) if item.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(to_cpu(item) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_cpu(item) for item in value)
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    return value
