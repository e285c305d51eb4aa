"""The callback's metrics: one collection per map variant, the comparisons, and the epoch's counts.

Every process updates, computes and resets the same metrics in the same order (torchmetrics syncs each
``compute`` across processes), so the values are global and no process waits for a collective call that
another one skips.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.aggregation import SumMetric

from evet_lightning.callbacks.explaining import VARIANTS, ExplainedChunk, module_device
from evet_lightning.callbacks.sampling import fingerprint_terms
from evet_lightning.functional.alpha import map_energy
from evet_lightning.functional.average_drop import drop_per_sample
from evet_lightning.functional.stability_index import stability_per_sample
from evet_lightning.metrics import (
    AverageDifference,
    AverageDrop,
    DeletionAUC,
    EnergyPointingGame,
    IncreaseInConfidence,
    InsertionAUC,
    PairedDifference,
    StabilityIndex,
    Win,
)

__all__ = [
    "DIFFERENCE_SUFFIXES",
    "PAPER_STABILITY",
    "VARIANTS",
    "EpochCounts",
    "ExplanationMetrics",
    "MetricsAnchor",
    "per_sample_values",
]

#: The metric name of the paper's stability protocol (``paper_stability=True``), next to ``stability_index``.
PAPER_STABILITY = "stability_index_paper"

#: Each paired difference is logged as ``{prefix}/diff/{metric}{suffix}``: the mean, the interval's bounds.
DIFFERENCE_SUFFIXES = ("", "_low", "_high")


@dataclass(frozen=True)
class EpochCounts:
    """The bookkeeping values of one computed epoch, over all processes."""

    explained: int
    """Samples scored (finite image and logits)."""
    skipped: int
    """Samples left out (non-finite image or logits)."""
    masked: int
    """Scored samples that had an object mask."""
    fingerprint: float
    """Checksum of the samples explained (:func:`~evet_lightning.callbacks.sampling.fingerprint_terms`)."""
    mean_curves: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    """With deletion/insertion on and some sample explained: the mean curve of each AUC metric, ``(S + 1,)``,
    by its key without the prefix (``"original/deletion_auc"``, ``"evet/insertion_auc"``, ...)."""


class ExplanationMetrics(nn.Module):
    """Metrics of one :class:`~evet_lightning.EVETCallback`, logged under ``prefix``.

    - ``variants[v]``, one ``MetricCollection`` per variant ``v`` in :data:`VARIANTS`, cloned from one
      collection with the prefix ``{prefix}/{v}/``: ``average_drop``, ``increase_in_confidence``,
      ``energy_pointing_game``, (with stability transforms) ``stability_index`` and (with ``deletion_steps``)
      ``deletion_auc`` and ``insertion_auc``;
    - ``comparison`` (prefix ``{prefix}/``): ``win`` and ``average_difference`` of ``O`` (EVET against original);
    - ``differences``, one :class:`~evet_lightning.metrics.PairedDifference` per metric of a variant: the mean
      paired difference EVET minus original over the explained samples, logged as ``{prefix}/diff/{metric}``
      with its seeded 95% bootstrap interval ``{prefix}/diff/{metric}_low`` / ``_high`` (decision 31);
    - ``num_skipped`` (logged as ``{prefix}/num_skipped``), and the unlogged ``num_explained``, ``num_masked`` and
      ``fingerprint`` sums.

    A metric is fed by the update arguments it takes (the metrics share argument names on purpose): a chunk
    feeds ``scores``/``masked_scores`` to the faithfulness metrics, ``saliency``/``mask`` (when it has masks) to
    the pointing game, and ``saliency``/``saliency_transformed``/``valid`` once per stability transform to the
    stability index. The two AUC metrics both take ``curves``, so they are fed by name instead: each its own
    curves of the variant's maps. The pointing game is logged only when some sample on some process had a mask.

    Compute groups are off: they would merge the states of metrics whose first updates happened to be equal.
    Keys come out in the order of :meth:`keys`: ``num_skipped``, then each collection's metrics in the
    alphabetical order torchmetrics keeps (the same on every process).
    """

    def __init__(
        self,
        prefix: str,
        stability: bool,
        deletion_steps: int | None = None,
        seed: int = 0,
        paper_stability: bool = False,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.deletion_steps = deletion_steps
        """``S`` of the deletion and insertion curves, or ``None`` for no AUC metrics."""
        curves: dict[str, Metric] = {}
        if deletion_steps is not None:
            curves = {"deletion_auc": DeletionAUC(deletion_steps), "insertion_auc": InsertionAUC(deletion_steps)}
        metrics: dict[str, Metric | MetricCollection] = {
            "average_drop": AverageDrop(),
            "increase_in_confidence": IncreaseInConfidence(),
            "energy_pointing_game": EnergyPointingGame(),
            **({"stability_index": StabilityIndex()} if stability else {}),
            **curves,
        }
        variant = MetricCollection(metrics, compute_groups=False)
        self.variants = nn.ModuleDict({name: variant.clone(prefix=f"{prefix}/{name}/") for name in VARIANTS})
        paper = MetricCollection({PAPER_STABILITY: StabilityIndex()}, compute_groups=False)
        self.paper = nn.ModuleDict(
            {name: paper.clone(prefix=f"{prefix}/{name}/") for name in VARIANTS} if paper_stability else {}
        )
        """With ``paper_stability``: per variant, the stability index under the paper's four transforms
        (fed by name from :attr:`ExplainedChunk.paper_stability`, never by :func:`_feed` of the variant's)."""
        paired = sorted([*metrics, *([PAPER_STABILITY] if paper_stability else [])])
        self.differences = nn.ModuleDict({name: PairedDifference(seed=seed) for name in paired})
        self.comparison = MetricCollection(
            {"win": Win(), "average_difference": AverageDifference()}, prefix=f"{prefix}/", compute_groups=False
        )
        self.num_skipped = SumMetric(nan_strategy="error")
        self.num_explained = SumMetric(nan_strategy="error")
        self.num_masked = SumMetric(nan_strategy="error")
        self.fingerprint = SumMetric(nan_strategy="error").set_dtype(torch.float64)

    def keys(self) -> list[str]:
        """Every key :meth:`compute` can return, in its order."""
        keys = [f"{self.prefix}/num_skipped"]
        for collection in self._logged_collections():
            keys += [str(key) for key in collection.keys(keep_base=False)]
        return keys + [key for name in self._differences() for key in self._difference_keys(name)]

    def _differences(self) -> dict[str, PairedDifference]:
        return {name: cast(PairedDifference, metric) for name, metric in self.differences.items()}

    def _difference_keys(self, name: str) -> list[str]:
        return [f"{self.prefix}/diff/{name}{suffix}" for suffix in DIFFERENCE_SUFFIXES]

    def update(self, chunk: ExplainedChunk) -> None:
        """Add one chunk of explained samples; only its finite samples that are not padding enter the scores."""
        result, keep, padding = chunk.result, chunk.scored, chunk.padding_mask
        scores = result.clean_scores[keep]
        original_scores, evet_scores = result.view_scores[0][keep], chunk.evet_scores[keep]
        maps = {"original": result.original, "evet": result.saliency}
        masked_scores = {"original": original_scores, "evet": evet_scores}
        masks = {} if chunk.masks is None else {"mask": chunk.masks[keep]}
        if chunk.masks is not None and chunk.valid is not None:  # ignored pixels of class-index masks (decision 47)
            masks["valid"] = chunk.valid[keep]
        for name in VARIANTS:
            collection = self.variant(name)
            _feed(collection, scores=scores, masked_scores=masked_scores[name], saliency=maps[name][keep], **masks)
            for stability in chunk.stability:
                both = stability.finite & ~padding
                transformed = stability.original if name == "original" else stability.saliency
                valid = stability.valid.expand(int(both.sum()), -1, -1)
                _feed(collection, saliency=maps[name][both], saliency_transformed=transformed[both], valid=valid)
            if name in self.paper:
                metric = cast(MetricCollection, self.paper[name])[PAPER_STABILITY]
                for stability in chunk.paper_stability:
                    both = stability.finite & ~padding
                    transformed = stability.original if name == "original" else stability.saliency
                    valid = stability.valid.expand(int(both.sum()), -1, -1)
                    metric.update(maps[name][both], transformed[both], valid)
            if self.deletion_steps is not None:
                curves = chunk.curves(name)
                assert curves is not None, "the callback computes the curves whenever the AUC metrics exist"
                collection["deletion_auc"].update(curves.deletion[keep])
                collection["insertion_auc"].update(curves.insertion[keep])
        self.comparison.update(scores_a=evet_scores, scores_b=original_scores)
        per_sample = {name: per_sample_values(chunk, name) for name in VARIANTS}
        for name, metric in self._differences().items():
            if name in per_sample["evet"]:
                metric.update(per_sample["evet"][name], per_sample["original"][name])
        self.num_explained.update(keep.sum())
        self.num_skipped.update((~result.finite & ~padding).sum())
        if chunk.masks is not None:
            self.num_masked.update(keep.sum())
        self.fingerprint.update(fingerprint_terms(chunk.images[~padding], chunk.positions[~padding.cpu()]).sum())

    def finish_epoch(self) -> None:
        """Give every metric an empty update, so that it has seen one on every process (a process may have had
        no sample, or no mask): ``compute`` then syncs without warning. An empty update changes no value.
        A metric added later with other update arguments needs its empty inputs here too."""
        device = self.num_skipped.device
        empty_scores = torch.zeros(0, device=device)
        empty_maps = torch.zeros(0, 1, 1, device=device)
        empty_curves = torch.zeros(0, (self.deletion_steps or 1) + 1, device=device)
        for metric in self._metrics():
            _feed(
                metric,
                scores=empty_scores,
                masked_scores=empty_scores,
                scores_a=empty_scores,
                scores_b=empty_scores,
                saliency=empty_maps,
                saliency_transformed=empty_maps,
                mask=empty_maps.bool(),
                value=empty_scores,
                curves=empty_curves,
            )
        for metric in self._differences().values():
            metric.update(empty_scores, empty_scores)

    def compute(self) -> tuple[dict[str, Tensor], EpochCounts]:
        """The logged values and the counts of the epoch, over all processes; then every metric is reset.

        Without any explained sample only ``{prefix}/num_skipped`` is returned (and no mean curve).
        """
        skipped = self.num_skipped.compute().float()
        explained = int(self.num_explained.compute())
        counts = EpochCounts(
            explained=explained,
            skipped=int(skipped),
            masked=int(self.num_masked.compute()),
            fingerprint=float(self.fingerprint.compute()),
            mean_curves=self._mean_curves() if explained > 0 else {},
        )
        values = {f"{self.prefix}/num_skipped": skipped}
        if counts.explained > 0:
            for collection in self._logged_collections():
                for key, metric in collection.items(keep_base=False, copy_state=False):
                    if counts.masked > 0 or not _takes(metric, "mask"):
                        values[key] = metric.compute().float()
            for name, difference in self._differences().items():
                if counts.masked > 0 or name != "energy_pointing_game":
                    interval = difference.compute().float()
                    if bool(torch.isfinite(interval).all()):  # never log NaN (decision 4)
                        values.update(zip(self._difference_keys(name), interval, strict=True))
        for metric in self._metrics():
            metric.reset()
        return values, counts

    def _mean_curves(self) -> dict[str, Tensor]:
        """Each AUC metric's mean curve (synced: every process calls this the same number of times)."""
        if self.deletion_steps is None:
            return {}
        return {
            f"{name}/{key}": cast(DeletionAUC | InsertionAUC, self.variant(name)[key]).mean_curve()
            for name in VARIANTS
            for key in ("deletion_auc", "insertion_auc")
        }

    def variant(self, name: str) -> MetricCollection:
        """The metrics of the ``"original"`` or the ``"evet"`` maps."""
        return cast(MetricCollection, self.variants[name])

    def _logged_collections(self) -> Iterator[MetricCollection]:
        yield from (self.variant(name) for name in VARIANTS)
        yield self.comparison
        yield from (cast(MetricCollection, collection) for collection in self.paper.values())

    def _metrics(self) -> Iterator[Metric]:
        for collection in self._logged_collections():
            yield from collection.values(copy_state=False)
        yield from self._differences().values()
        yield from (self.num_skipped, self.num_explained, self.num_masked, self.fingerprint)


def per_sample_values(chunk: ExplainedChunk, variant: str) -> dict[str, Tensor]:
    """Each metric's value per scored sample of ``chunk`` (finite, not padding) for the ``variant``'s maps (the
    inputs of the paired differences; NaN where a sample has no value, e.g. a non-finite stability run)."""
    result, keep = chunk.result, chunk.scored
    maps = result.original if variant == "original" else result.saliency
    scores = result.clean_scores[keep]
    masked_scores = (result.view_scores[0] if variant == "original" else chunk.evet_scores)[keep]
    values = {
        "average_drop": drop_per_sample(scores, masked_scores),
        "increase_in_confidence": (masked_scores > scores).double(),
    }
    if chunk.masks is not None:
        valid = None if chunk.valid is None else chunk.valid[keep]
        values["energy_pointing_game"] = map_energy(maps[keep], chunk.masks[keep], valid)
    for name, runs in (("stability_index", chunk.stability), (PAPER_STABILITY, chunk.paper_stability)):
        if runs:
            per_transform = []
            for stability in runs:
                transformed = stability.original if variant == "original" else stability.saliency
                similarity = stability_per_sample(maps, transformed, stability.valid)
                per_transform.append(torch.where(stability.finite, similarity, torch.nan))
            values[name] = torch.stack(per_transform).mean(0)[keep]
    curves = chunk.curves(variant)
    if curves is not None:
        values.update({name: auc.double()[keep] for name, auc in curves.aucs().items()})
    return values


def _takes(metric: Metric, argument: str) -> bool:
    return argument in inspect.signature(metric.update).parameters


def _feed(target: Metric | MetricCollection, **inputs: Tensor) -> None:
    """Update each metric of ``target`` whose required ``update`` arguments are all in ``inputs``, with them."""
    metrics = target.values(copy_state=False) if isinstance(target, MetricCollection) else [target]
    for metric in metrics:
        parameters = inspect.signature(metric.update).parameters.values()
        named = {item.name: item for item in parameters if item.kind not in (item.VAR_POSITIONAL, item.VAR_KEYWORD)}
        required = [name for name, item in named.items() if item.default is item.empty]
        if all(name in inputs for name in required):
            metric.update(**{name: inputs[name] for name in named if name in inputs})


class MetricsAnchor(nn.Module):
    """A leaf module that carries the callback's metrics along whenever its parent module changes device.

    Attached to the LightningModule in ``setup``, it makes the metrics follow the module wherever Lightning (or
    the user) moves it, like a metric attribute of the module would, without being part of the model: it has
    no parameters, buffers or children (the metrics are a plain attribute), so the module's ``state_dict``,
    parameters, optimizer and checkpoints stay exactly as without the callback, and dtype casts
    (``precision="bf16-true"``, ``.double()``) never reach the metrics' float64 sums.
    """

    def __init__(self, metrics: nn.Module) -> None:
        super().__init__()
        self.__dict__["metrics"] = metrics  # not a submodule

    def _apply(self, fn: Any, recurse: bool = True) -> MetricsAnchor:
        moved = fn(torch.zeros(()))  # where the parent's tensors go
        if isinstance(moved, Tensor) and moved.device.type != "meta":
            self.metrics.to(moved.device)
        return self

    def extra_repr(self) -> str:
        return "EVETCallback's metrics (follow this module's device; no parameters, buffers or state)"

    @staticmethod
    def name_for(prefix: str) -> str:
        return "_evet_metrics_" + re.sub(r"\W", "_", prefix)

    @classmethod
    def attach(cls, pl_module: pl.LightningModule, prefix: str, metrics: nn.Module) -> None:
        """Register ``metrics`` on ``pl_module`` (moving them to its device now), replacing a stale anchor."""
        name = cls.name_for(prefix)
        existing = getattr(pl_module, name, None)
        if existing is not None and not isinstance(existing, MetricsAnchor):
            raise ValueError(f"Expected the module to have no attribute {name!r}; choose another `prefix`")
        anchor = cls(metrics)
        anchor.train(pl_module.training)
        pl_module.add_module(name, anchor)
        metrics.to(module_device(pl_module))

    @classmethod
    def detach(cls, pl_module: pl.LightningModule, prefix: str) -> None:
        """Remove the anchor that :meth:`attach` registered, if it is there."""
        name = cls.name_for(prefix)
        if isinstance(pl_module._modules.get(name), MetricsAnchor):
            del pl_module._modules[name]
