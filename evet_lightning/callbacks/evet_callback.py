"""EVETCallback: track explanation quality (original CAM vs EVET) on fixed validation samples during training."""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.aggregation import SumMetric
from typing_extensions import override

from evet_lightning.data.batch import BatchUnpacker, check_images, check_labels, check_masks, unpack_batch
from evet_lightning.functional.fusion import DEFAULT_ALPHA
from evet_lightning.functional.perturbation import Baseline, Normalization
from evet_lightning.metrics import (
    AverageDifference,
    AverageDrop,
    EnergyPointingGame,
    IncreaseInConfidence,
    StabilityIndex,
    Win,
)
from evet_lightning.saliency.evet import EVET, CamSpec, EVETResult, check_evet_arguments
from evet_lightning.saliency.transforms import AffineTransform, Rotate
from evet_lightning.visualization.heatmaps import captions, heatmap_panel, write_png

__all__ = ["BatchUnpacker", "EVETCallback", "unpack_batch"]

log = logging.getLogger(__name__)

_TARGET_CHOICES = ("label", "prediction")
_RESULT_TENSORS = ("saliency", "original", "weights", "kept", "targets", "view_scores", "clean_scores", "finite")

if TYPE_CHECKING:

    class _LightningCallback:
        """``lightning.pytorch.Callback`` for type checkers (it declares the same hooks as ``pl.Callback``)."""

else:
    try:
        from lightning.pytorch import Callback as _LightningCallback
    except ImportError:  # only the `pytorch_lightning` distribution is installed
        _LightningCallback = object


def _logger_classes(name: str) -> tuple[type, ...]:
    """A logger class from both Lightning namespaces (``pytorch_lightning`` and ``lightning.pytorch``)."""
    import pytorch_lightning.loggers as pl_loggers

    classes: list[type] = [getattr(pl_loggers, name)]
    try:
        import lightning.pytorch.loggers as lightning_loggers

        classes.append(getattr(lightning_loggers, name))
    except ImportError:
        pass
    return tuple(classes)


# --------------------------------------------------------------------------------------------- samples


@dataclass
class _Batch:
    """Samples collected from one validation batch (detached clones)."""

    images: Tensor
    labels: Tensor | None
    masks: Tensor | None
    positions: Tensor
    """``(B,)`` float64: each sample's position in the single-process order (``rank + j * world_size``)."""


@dataclass
class _SampleBuffer:
    """The first ``capacity`` samples this process sees in one validation epoch."""

    capacity: int
    rank: int = 0
    world_size: int = 1
    batches: list[_Batch] = field(default_factory=list)
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
                _Batch(
                    images[:take].detach().clone(),
                    None if labels is None else labels[:take].detach().clone(),
                    None if masks is None else masks[:take].detach().clone(),
                    positions,
                )
            )
        self.count += take

    def chunks(self, size: int) -> Iterator[_Batch]:
        """The samples in order, in chunks of at most ``size`` that share image shape and label/mask presence."""
        pending: list[_Batch] = []

        def signature(item: _Batch) -> tuple[object, ...]:
            return (tuple(item.images.shape[1:]), item.labels is None, item.masks is None)

        def merged() -> Iterator[_Batch]:
            images = torch.cat([item.images for item in pending])
            labels = None if pending[0].labels is None else torch.cat([item.labels for item in pending])  # type: ignore[misc]
            masks = None if pending[0].masks is None else torch.cat([item.masks for item in pending])  # type: ignore[misc]
            positions = torch.cat([item.positions for item in pending])
            for start in range(0, images.shape[0], size):
                stop = start + size
                yield _Batch(
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


def _first_val_dataset_size(trainer: pl.Trainer) -> int | None:
    """Length of the first validation dataloader's dataset of the running stage, or ``None`` when unknown."""
    loop = trainer.validate_loop if _in_validate(trainer) else trainer.fit_loop.epoch_loop.val_loop
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


def _in_validate(trainer: pl.Trainer) -> bool:
    """``trainer.validate`` is running (``trainer.validating`` is also true in fit's validation loop)."""
    return str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "validate"


def _fingerprint_terms(images: Tensor, positions: Tensor) -> Tensor:
    """Per-sample checksums weighted by position; their sum identifies the selected samples (any process count)."""
    flat = torch.nan_to_num(images.detach().flatten(1).to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    pixel_weights = torch.cos(torch.arange(flat.shape[1], dtype=torch.float64, device=flat.device) * 0.7548776662)
    return (flat * pixel_weights).sum(dim=1) * (1.0 + positions.to(flat.device) * 0.6180339887)


def _to_cpu(result: EVETResult) -> EVETResult:
    """A detached CPU copy of ``result`` (no autograd graph, no device memory kept)."""
    saliency_scores = result.saliency_scores
    return dataclasses.replace(
        result,
        **{name: getattr(result, name).detach().cpu() for name in _RESULT_TENSORS},
        saliency_scores=None if saliency_scores is None else saliency_scores.detach().cpu(),
    )


@dataclass
class _Heatmaps:
    """What rank zero renders: the first ``log_images`` explained samples, on the CPU."""

    images: list[Tensor] = field(default_factory=list)
    original: list[Tensor] = field(default_factory=list)
    saliency: list[Tensor] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    clean: list[float] = field(default_factory=list)
    original_scores: list[float] = field(default_factory=list)
    evet_scores: list[float] = field(default_factory=list)

    def add(self, images: Tensor, result: EVETResult, limit: int) -> None:
        take = min(limit - len(self.images), images.shape[0])
        if take <= 0:
            return
        assert result.saliency_scores is not None
        self.images.extend(images[:take].detach().cpu())
        self.original.extend(result.original[:take].detach().cpu())
        self.saliency.extend(result.saliency[:take].detach().cpu())
        self.targets.extend(result.targets[:take].tolist())
        self.clean.extend(result.clean_scores[:take].tolist())
        self.original_scores.extend(result.view_scores[0, :take].tolist())
        self.evet_scores.extend(result.saliency_scores[:take].tolist())


# --------------------------------------------------------------------------------------------- callback


class EVETCallback(pl.Callback, _LightningCallback):
    """Track explanation quality during training: a CAM's maps against their EVET enhancement (Oh et al., 2021).

    Every ``every_n_epochs``-th validation epoch (and in every ``trainer.validate`` run) the callback takes the
    first ``num_samples`` samples of the first validation dataloader as they pass, computes their saliency maps
    with ``cam`` (view 0 of EVET, the *original* maps) and the EVET maps, scores both, and logs with
    ``pl_module.log`` (so the values appear in ``trainer.callback_metrics``, in every logger, and in the list
    ``trainer.validate`` returns):

    - ``{prefix}/original/average_drop``, ``{prefix}/evet/average_drop`` (Eq. 10, lower is better) and
      ``.../increase_in_confidence`` (Eq. 11): clean-image probability ``Y = f_k(x)`` against the probability
      of the image perturbed with the map, ``O = f_k(Phi(x, M))``;
    - ``.../energy_pointing_game`` (Eq. 12), only when the batches carry object masks;
    - ``.../stability_index`` (Eq. 8-9) under ``stability_transforms``: ``J(x)`` against
      ``T^-1(J(T(x)))`` and ``J*(x)`` against ``T^-1(J*(T(x)))`` on the valid pixels; empty
      ``stability_transforms`` turns it off;
    - ``{prefix}/win`` and ``{prefix}/average_difference``: EVET against the original map on ``O``;
    - ``{prefix}/num_skipped``: samples left out because the image or its logits were not finite.

    All values are fractions in [0, 1] (x100 for the paper's percentages), computed over all processes; no
    NaN is ever logged. Heatmaps ``image | original overlay | EVET overlay`` of the first ``log_images``
    samples (rank zero's) go to W&B (``{prefix}/heatmaps``), to TensorBoard (``{prefix}/heatmaps/<i>``), or,
    with any other logger or none, to PNG files under ``<log dir>/evet_heatmaps/epoch_XXX/``.

    The class explained (k) is the sample's label when the batch has one and ``target="label"``, else the
    model's prediction on the untransformed image. The model explained is the LightningModule itself (its
    ``forward`` must return logits) unless ``model`` names or returns a submodule.

    Training is left exactly as it would be without the callback: the work runs at validation epoch end,
    through :class:`~evet_lightning.EVET`, which restores every module's mode, parameters' ``.grad`` and
    ``requires_grad``, hooks and RNG states; BatchNorm statistics are not updated (eval mode); global grad
    and inference mode are restored. It works under ``trainer.validate``'s inference mode and fit's no-grad.

    The class derives from ``pytorch_lightning.Callback`` and, when the ``lightning`` package is installed, also
    from ``lightning.pytorch.Callback`` (both declare the same hooks), so ``pytorch_lightning.Trainer`` and
    ``lightning.pytorch.Trainer`` both accept it.

    Samples: rank ``r`` of ``W`` processes keeps the first ``num_samples // W + (r < num_samples % W)`` samples
    of its shard (capped by the dataset size when it is known), which with Lightning's unshuffled
    ``DistributedSampler`` are exactly the first ``num_samples`` dataset indices, as with one process. The
    samples are the same every epoch when the validation loader is deterministic (not shuffled); their
    fingerprint is saved in :meth:`state_dict` and a resumed run warns when it explains different samples.
    Every process computes every metric (torchmetrics syncs them), so the logged values are global and are
    logged with ``sync_dist=False``; Lightning's generic advice to use ``sync_dist=True`` is silenced for the
    ``{prefix}/`` keys only. Heatmaps are rendered and written by rank zero only.

    Cost: per sample, one EVET run (about ``2 (n + 1)`` forward passes for ``n`` transforms plus one to score
    the EVET map) and, for *each* stability transform, one more EVET run on the transformed image (its view 0
    is the original map of ``T(x)``), so the default (one stability transform) roughly doubles the work of
    EVET alone; ``stability_transforms=[]`` saves it. It is spent only in explained epochs; the rest of the
    time the callback only checks a flag per batch.

    Args:
        cam: a pytorch-grad-cam CAM class, its name (``"GradCAM"``, ``"GradCAMPlusPlus"``, ``"ScoreCAM"``, ...)
            or ``"Gradient"``.
        target_layers: dotted name(s) of the layer(s) the CAM explains (``model.named_modules()`` of the
            explained model); ``None`` auto-detects the last layer with a spatial output, as early as possible:
            in ``setup`` from ``example_input_array`` if the module has one, else on the first sanity-check
            (or training) batch. Names are checked in ``setup``.
        transforms: EVET's transforms ``T_1 .. T_n``; ``None`` is the paper's 7 (:func:`paper_transforms`).
        threshold: Gamma of Eq. (2), in (0, 1].
        alpha: boost strength of Eq. (5), >= 0.
        baseline: x_d of Eq. (3) for EVET and the faithfulness scores: ``"black"``, ``"zeros"``, ``"blur"``, a
            tensor or a callable.
        normalization: ``(mean, std)`` the images were normalized with: ``"black"`` is then black in pixels
            and heatmaps show the images in their true colours.
        max_batch_size: at most this many images (views) go through the model at once; also the number of
            samples explained per EVET call.
        num_samples: how many validation samples to explain (in total over all processes), >= 1.
        every_n_epochs: explain every n-th validation run of ``trainer.fit`` (the first one included; with
            ``val_check_interval`` every validation run counts), >= 1. ``trainer.validate`` always explains.
        target: ``"label"`` (the batch's label when it has one, else the prediction) or ``"prediction"``.
        stability_transforms: the transforms T of the stability index; default ``[Rotate(5.0)]``, a transform
            EVET itself does not use, so the index measures how EVET generalizes (paper Fig. 4b). Each one
            costs another EVET run per sample.
        log_images: how many samples' heatmaps to log, >= 0 (0 turns images off).
        prefix: the first part of every logged key.
        batch_unpacker: ``batch -> (images, labels or None, masks or None)`` for batches that
            :func:`unpack_batch` does not understand.
        model: the module to explain: ``None`` for the LightningModule itself, a dotted attribute name of it
            (``"model"``), or a callable ``pl_module -> nn.Module`` (use a module-level function, not a lambda,
            if the callback must pickle, e.g. for ``strategy="ddp_spawn"``).

    Raises:
        ValueError: in the constructor for any invalid argument; in ``setup`` for a layer name that is not in
            the model or a ``model`` that does not give an ``nn.Module``; before the first training step (at
            the latest) when auto-detection finds no spatial layer or a batch cannot be unpacked.

    Example:
        >>> from evet_lightning import EVETCallback
        >>> callback = EVETCallback(num_samples=16, log_images=4)
        >>> callback.state_key
        "EVETCallback{'prefix': 'evet', 'cam': 'GradCAM', 'target_layers': None, 'num_samples': 16}"
        >>> EVETCallback(threshold=0.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `threshold` to be a float in (0, 1], but got 0.0

        In a run: ``Trainer(callbacks=[EVETCallback()]).fit(model, datamodule)``; for an evaluation table:
        ``trainer.validate(model, dataloaders=loader)[0]["evet/evet/average_drop"]``.
    """

    def __init__(
        self,
        *,
        cam: CamSpec = "GradCAM",
        target_layers: str | Sequence[str] | None = None,
        transforms: Sequence[AffineTransform] | None = None,
        threshold: float = 0.99,
        alpha: float = DEFAULT_ALPHA,
        baseline: Baseline = "black",
        normalization: Normalization = None,
        max_batch_size: int = 64,
        num_samples: int = 32,
        every_n_epochs: int = 1,
        target: Literal["label", "prediction"] = "label",
        stability_transforms: Sequence[AffineTransform] | None = None,
        log_images: int = 8,
        prefix: str = "evet",
        batch_unpacker: BatchUnpacker | None = None,
        model: str | Callable[[Any], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.transforms = check_evet_arguments(
            cam=cam,
            transforms=transforms,
            threshold=threshold,
            alpha=alpha,
            baseline=baseline,
            normalization=normalization,
            max_batch_size=max_batch_size,
        )
        _check_int("num_samples", num_samples, 1)
        _check_int("every_n_epochs", every_n_epochs, 1)
        _check_int("log_images", log_images, 0)
        if target not in _TARGET_CHOICES:
            raise ValueError(f"Expected `target` to be one of {_TARGET_CHOICES}, but got {target!r}")
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"Expected `prefix` to be a non-empty string, but got {prefix!r}")
        if batch_unpacker is not None and not callable(batch_unpacker):
            raise ValueError(f"Expected `batch_unpacker` to be callable or None, but got {batch_unpacker!r}")
        if model is not None and not isinstance(model, str) and not callable(model):
            raise ValueError(
                "Expected `model` to be None, an attribute name or a callable pl_module -> nn.Module, "
                f"but got {model!r}"
            )
        self.cam = cam
        self.cam_name = cam if isinstance(cam, str) else cam.__name__
        self.target_layers = _check_layer_names(target_layers)
        self.threshold = threshold
        self.alpha = alpha
        self.baseline = baseline
        self.normalization = normalization
        self.max_batch_size = max_batch_size
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.target = target
        self.stability_transforms = _check_stability_transforms(stability_transforms)
        self.log_images = log_images
        self.prefix = prefix.strip("/")
        self.batch_unpacker = batch_unpacker
        self.model = model
        self._metrics = self._build_metrics()
        # Run state (plain values, saved in `state_dict`).
        self.validation_runs = 0
        self.epochs_explained = 0
        self.last_num_samples = 0
        self.fingerprint: float | None = None
        self._loaded_fingerprint: float | None = None
        # Per-run objects, dropped in `teardown` and when pickled.
        self._evet: EVET | None = None
        self._layers_resolved = False
        self._batch_checked = False
        self._buffer: _SampleBuffer | None = None
        self.last_results: list[EVETResult] = []
        """The EVET results (on the CPU, one per chunk of samples) of the last explained epoch, this process."""
        self.last_timing: dict[str, float] = {}
        """Wall seconds of the last explained epoch on this process: ``seconds`` (all the epoch-end work),
        ``evet_seconds`` (the EVET runs on the samples, stability runs excluded), ``num_samples`` and
        ``seconds_per_image`` (``evet_seconds / num_samples``)."""

    # ----------------------------------------------------------------------------- identity and state

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            prefix=self.prefix, cam=self.cam_name, target_layers=self.target_layers, num_samples=self.num_samples
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "validation_runs": self.validation_runs,
            "epochs_explained": self.epochs_explained,
            "num_samples": self.last_num_samples,
            "fingerprint": self.fingerprint,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validation_runs = int(state_dict.get("validation_runs", 0))
        self.epochs_explained = int(state_dict.get("epochs_explained", 0))
        self.last_num_samples = int(state_dict.get("num_samples", 0))
        fingerprint = state_dict.get("fingerprint")
        self.fingerprint = None if fingerprint is None else float(fingerprint)
        self._loaded_fingerprint = self.fingerprint

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _evet=None, _layers_resolved=False, _batch_checked=False, _buffer=None, last_results=[], last_timing={}
        )
        return state

    @property
    def metric_keys(self) -> list[str]:
        """Every key this callback can log (``energy_pointing_game`` only appears when masks are available)."""
        return [f"{self.prefix}/{name}" for name in self._metrics if not name.startswith("_")]

    # ----------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        module = self._explained_module(pl_module)
        self._evet = EVET(
            module,
            target_layers=self.target_layers,
            cam=self.cam,
            transforms=self.transforms,
            threshold=self.threshold,
            alpha=self.alpha,
            baseline=self.baseline,
            normalization=self.normalization,
            max_batch_size=self.max_batch_size,
        )
        self._layers_resolved = self._batch_checked = False
        if trainer.world_size > 1:
            # Our values are already global (torchmetrics syncs on compute), so logging them with sync_dist=False
            # is right; silence Lightning's generic advice to use sync_dist=True, for our keys only.
            warnings.filterwarnings(
                "ignore", message=rf"It is recommended to use `self\.log\('{re.escape(self.prefix)}/"
            )
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor) and example.ndim == 4 and example.is_floating_point():
            self._resolve_layers(example.to(_module_device(module)))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._evet = None  # holds the model: drop it between runs
        self._buffer = None

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._layers_resolved or self._evet is None:
            return
        # No sanity check ran (num_sanity_val_steps=0): find the layer before the first training step.
        try:
            images = check_images(self._unpack(batch)[0])
        except ValueError:
            return  # a training batch we cannot read: the first validation batch resolves the layer instead
        self._resolve_layers(images)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._evet is None:
            return
        if _in_validate(trainer):
            explain = True  # an evaluation run always explains; the cadence counts fit's validation runs
        else:
            explain = self.validation_runs % self.every_n_epochs == 0
            self.validation_runs += 1
        self._buffer = None
        if not explain:
            return
        world_size, rank = trainer.world_size, trainer.global_rank
        dataset_size = _first_val_dataset_size(trainer) if world_size > 1 else None
        capacity = rank_quota(self.num_samples, world_size, rank, dataset_size)
        self._buffer = _SampleBuffer(capacity=capacity, rank=rank, world_size=world_size)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0 or self._evet is None:
            return
        if trainer.sanity_checking:
            if not self._batch_checked:  # fail early on a batch we cannot read or a model with no CAM layer
                images, _, _ = self._read_batch(batch)
                self._resolve_layers(images)
                self._batch_checked = True
            return
        if self._buffer is None or self._buffer.full:
            return
        self._buffer.add(*self._read_batch(batch))

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._buffer is None or self._evet is None:
            return
        buffer, self._buffer = self._buffer, None
        start = time.perf_counter()
        heatmaps = _Heatmaps()
        with torch.inference_mode(False), torch.no_grad():
            for metric in self._metrics.values():
                metric.to(_module_device(self._evet.model))
            self._explain(buffer, heatmaps if trainer.is_global_zero else None)
            values = self._compute_and_reset()
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)
        self.epochs_explained += 1
        self._log_heatmaps(trainer, heatmaps)
        self.last_timing["seconds"] = time.perf_counter() - start

    # ----------------------------------------------------------------------------- helpers

    def _build_metrics(self) -> dict[str, Metric]:
        """Ordered metrics; every process computes them in this order. ``_``-names are bookkeeping, not logged."""
        metrics: dict[str, Metric] = {
            "_explained": SumMetric(nan_strategy="error"),
            "_masked": SumMetric(nan_strategy="error"),
            "_fingerprint": SumMetric(nan_strategy="error").set_dtype(torch.float64),
            "num_skipped": SumMetric(nan_strategy="error"),
        }
        for method in ("original", "evet"):
            metrics[f"{method}/average_drop"] = AverageDrop()
            metrics[f"{method}/increase_in_confidence"] = IncreaseInConfidence()
            metrics[f"{method}/energy_pointing_game"] = EnergyPointingGame()
            if self.stability_transforms:
                metrics[f"{method}/stability_index"] = StabilityIndex()
        metrics["win"] = Win()
        metrics["average_difference"] = AverageDifference()
        return metrics

    def _explained_module(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.model is None:
            module: object = pl_module
        elif isinstance(self.model, str):
            try:
                module = operator.attrgetter(self.model)(pl_module)
            except AttributeError as error:
                raise ValueError(
                    f"Expected `model={self.model!r}` to name an attribute of the module: {error}"
                ) from None
        else:
            module = self.model(pl_module)
        if not isinstance(module, nn.Module):
            raise ValueError(f"Expected `model` to give an nn.Module, but got {type(module).__name__}")
        return module

    def _unpack(self, batch: Any) -> tuple[Any, Any, Any]:
        unpacked = unpack_batch(batch) if self.batch_unpacker is None else self.batch_unpacker(batch)
        if not isinstance(unpacked, tuple) or len(unpacked) != 3:
            raise ValueError(
                f"Expected `batch_unpacker` to return (images, labels or None, masks or None), but got {unpacked!r}"
            )
        return unpacked

    def _read_batch(self, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        images, labels, masks = self._unpack(batch)
        images = check_images(images)
        labels = None if labels is None or self.target == "prediction" else check_labels(labels, images.shape[0])
        masks = None if masks is None else check_masks(masks, images)
        return images, labels, masks

    def _resolve_layers(self, images: Tensor) -> None:
        if self._evet is None or self._layers_resolved:
            return
        names = self._evet.resolve_target_layers(images[:1])
        self._layers_resolved = True
        rank_zero_info(f"EVETCallback: explaining {self.cam_name} at layer(s) {names or '(input gradient)'}")

    def _explain(self, buffer: _SampleBuffer, heatmaps: _Heatmaps | None) -> None:
        """Run EVET on the buffered samples chunk by chunk and update every metric (empty updates included)."""
        assert self._evet is not None
        device = _module_device(self._evet.model)
        metrics = self._metrics
        self.last_results = []
        explained = skipped = masked = 0
        evet_seconds = 0.0
        fingerprint = torch.zeros((), dtype=torch.float64, device=device)
        for chunk in buffer.chunks(self.max_batch_size):
            images = chunk.images.to(device)
            labels = None if chunk.labels is None else chunk.labels.to(device)
            start = _synchronized_time(device)
            result = self._evet(images, labels, score_saliency=True)
            evet_seconds += _synchronized_time(device) - start
            assert result.saliency_scores is not None
            keep = result.finite
            fingerprint += _fingerprint_terms(images, chunk.positions).sum()
            explained += int(keep.sum())
            skipped += int((~keep).sum())
            scores, original_scores, evet_scores = result.clean_scores, result.view_scores[0], result.saliency_scores
            for method, masked_scores in (("original", original_scores), ("evet", evet_scores)):
                metrics[f"{method}/average_drop"].update(scores[keep], masked_scores[keep])
                metrics[f"{method}/increase_in_confidence"].update(scores[keep], masked_scores[keep])
            metrics["win"].update(evet_scores[keep], original_scores[keep])
            metrics["average_difference"].update(evet_scores[keep], original_scores[keep])
            if chunk.masks is not None:
                mask = chunk.masks.to(device)[keep]
                masked += int(keep.sum())
                metrics["original/energy_pointing_game"].update(result.original[keep], mask)
                metrics["evet/energy_pointing_game"].update(result.saliency[keep], mask)
            self._update_stability(images, result)
            self.last_results.append(_to_cpu(result))
            if heatmaps is not None:
                heatmaps.add(chunk.images, result, self.log_images)
        self.last_timing = {
            "evet_seconds": evet_seconds,
            "num_samples": float(buffer.count),
            "seconds_per_image": evet_seconds / max(buffer.count, 1),
        }
        self._update_empty_metrics(device)
        metrics["_explained"].update(torch.tensor(float(explained), device=device))
        metrics["_masked"].update(torch.tensor(float(masked), device=device))
        metrics["_fingerprint"].update(fingerprint)
        metrics["num_skipped"].update(torch.tensor(float(skipped), device=device))

    def _update_stability(self, images: Tensor, result: EVETResult) -> None:
        """Stability index of J and J* under each stability transform T, on T's valid pixels."""
        assert self._evet is not None
        height, width = images.shape[-2:]
        for transform in self.stability_transforms:
            # One EVET run on T(x) gives both maps: its view 0 is J(T(x)) min-max normalized (as
            # `min_max_normalize(evet.explain(T(x)).maps)` would be, without a second CAM pass), and J*(T(x)).
            transformed = self._evet(transform.forward(images), result.targets)
            keep = result.finite & transformed.finite
            back_original = transform.inverse(transformed.original.unsqueeze(1)).squeeze(1)
            back_evet = transform.inverse(transformed.saliency.unsqueeze(1)).squeeze(1)
            valid = transform.valid_mask(height, width, images.device).expand(int(keep.sum()), -1, -1)
            self._metrics["original/stability_index"].update(result.original[keep], back_original[keep], valid)
            self._metrics["evet/stability_index"].update(result.saliency[keep], back_evet[keep], valid)

    def _update_empty_metrics(self, device: torch.device) -> None:
        """Give metrics that saw no sample on this process an empty update: they still sync, without a warning."""
        empty_scores = torch.zeros(0, device=device)
        empty_maps = torch.zeros(0, 1, 1, device=device)
        for name, metric in self._metrics.items():
            if metric.update_called or name.startswith("_") or name == "num_skipped":
                continue
            if isinstance(metric, (AverageDrop, IncreaseInConfidence, Win, AverageDifference)):
                metric.update(empty_scores, empty_scores)
            elif isinstance(metric, EnergyPointingGame):
                metric.update(empty_maps, empty_maps.bool())
            elif isinstance(metric, StabilityIndex):
                metric.update(empty_maps, empty_maps)

    def _compute_and_reset(self) -> dict[str, Tensor]:
        """Compute every metric (synced across processes, same order everywhere), then reset them all."""
        metrics = self._metrics
        explained = float(metrics["_explained"].compute())
        masked = float(metrics["_masked"].compute())
        fingerprint = float(metrics["_fingerprint"].compute())
        values = {f"{self.prefix}/num_skipped": metrics["num_skipped"].compute().float()}
        if explained > 0:
            for name, metric in metrics.items():
                if name.startswith("_") or name == "num_skipped":
                    continue
                if name.endswith("energy_pointing_game") and masked == 0:
                    continue
                values[f"{self.prefix}/{name}"] = metric.compute().float()
        else:
            rank_zero_warn("EVETCallback: no sample could be explained this epoch; only num_skipped is logged")
        for metric in metrics.values():
            metric.reset()
        self.last_num_samples = int(explained + float(values[f"{self.prefix}/num_skipped"]))
        self._check_fingerprint(fingerprint)
        return values

    def _check_fingerprint(self, fingerprint: float) -> None:
        loaded, self._loaded_fingerprint = self._loaded_fingerprint, None
        if loaded is not None and not math.isclose(loaded, fingerprint, rel_tol=1e-9, abs_tol=1e-9):
            rank_zero_warn(
                "EVETCallback: the samples explained now differ from those before the checkpoint was saved; "
                "is the first validation dataloader shuffled or changed?"
            )
        self.fingerprint = fingerprint

    def _log_heatmaps(self, trainer: pl.Trainer, heatmaps: _Heatmaps) -> None:
        if self.log_images == 0:
            return
        loggers: list[Any] = list(trainer.loggers)
        wandb_loggers: list[Any] = [lg for lg in loggers if isinstance(lg, _logger_classes("WandbLogger"))]
        tensorboard_loggers: list[Any] = [lg for lg in loggers if isinstance(lg, _logger_classes("TensorBoardLogger"))]
        # `trainer.log_dir` broadcasts: every process must ask for it, or none.
        directory = None if wandb_loggers or tensorboard_loggers else trainer.log_dir or trainer.default_root_dir
        if not trainer.is_global_zero or not heatmaps.images:
            return
        panels = _render(heatmaps, self.normalization)
        texts = captions(heatmaps.targets, heatmaps.clean, heatmaps.original_scores, heatmaps.evet_scores)
        step = trainer.global_step
        for logger in wandb_loggers:
            _guarded(_to_wandb, logger, f"{self.prefix}/heatmaps", panels, texts, step)
        for logger in tensorboard_loggers:
            _guarded(_to_tensorboard, logger, f"{self.prefix}/heatmaps", panels, texts, step)
        if directory is not None:
            folder = os.path.join(directory, "evet_heatmaps", f"epoch_{trainer.current_epoch:03d}")
            for index, panel in enumerate(panels):
                write_png(panel, os.path.join(folder, f"step_{step:06d}_sample_{index:02d}.png"))
            log.info("EVETCallback: wrote %d heatmaps to %s", len(panels), folder)


# --------------------------------------------------------------------------------------------- small helpers


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"Expected `{name}` to be an integer >= {low}, but got {value!r}")


def _check_layer_names(target_layers: object) -> list[str] | None:
    """Layer names only: the callback keeps no reference to a model; the names are checked in ``setup``."""
    if target_layers is None:
        return None
    names = [target_layers] if isinstance(target_layers, str) else target_layers
    if not isinstance(names, Sequence) or not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(
            "Expected `target_layers` to be None or a non-empty layer name or sequence of layer names (dotted, as in "
            f"`model.named_modules()`), but got {target_layers!r}"
        )
    return list(names)


def _check_stability_transforms(transforms: Sequence[AffineTransform] | None) -> list[AffineTransform]:
    if transforms is None:
        return [Rotate(5.0)]
    if isinstance(transforms, AffineTransform) or not isinstance(transforms, Sequence):
        raise ValueError(f"Expected `stability_transforms` to be a sequence of transforms, but got {transforms!r}")
    for transform in transforms:
        if not isinstance(transform, AffineTransform):
            raise ValueError(
                f"Expected every item of `stability_transforms` to be an AffineTransform, but got {transform!r}"
            )
    return list(transforms)


def _module_device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    buffer = next(module.buffers(), None) if tensor is None else tensor
    return torch.device("cpu") if buffer is None else buffer.device


def _synchronized_time(device: torch.device) -> float:
    """``time.perf_counter()`` after the device finished its queued work (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _render(heatmaps: _Heatmaps, normalization: Normalization) -> list[Tensor]:
    """One ``(3, H, 3W)`` uint8 panel per sample (samples may differ in size)."""
    return [
        heatmap_panel(image.unsqueeze(0), original.unsqueeze(0), saliency.unsqueeze(0), normalization)[0]
        for image, original, saliency in zip(heatmaps.images, heatmaps.original, heatmaps.saliency, strict=True)
    ]


def _to_wandb(logger: Any, key: str, panels: list[Tensor], texts: list[str], step: int) -> None:
    logger.log_image(key=key, images=panels, caption=texts, step=step)


def _to_tensorboard(logger: Any, key: str, panels: list[Tensor], texts: list[str], step: int) -> None:
    """One image tag per sample, ``{key}/<i>``, with its caption as a text entry under the same tag."""
    writer = logger.experiment
    for index, (panel, text) in enumerate(zip(panels, texts, strict=True)):
        writer.add_image(f"{key}/{index}", panel, global_step=step)
        writer.add_text(f"{key}/{index}", text, global_step=step)


def _guarded(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call a logger; a failing logger costs its images (with a warning), never the metrics or the run."""
    try:
        function(*args, **kwargs)
    except Exception as error:
        rank_zero_warn(f"EVETCallback: logging heatmaps failed and was skipped: {type(error).__name__}: {error}")
