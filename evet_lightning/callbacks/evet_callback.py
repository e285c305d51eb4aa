"""EVETCallback: track explanation quality (original CAM vs EVET) on fixed validation samples during training."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from evet_lightning._validation import check_int
from evet_lightning.callbacks.alpha_selection import FoldChoice, OutOfFoldAlpha
from evet_lightning.callbacks.arguments import (
    check_bool,
    check_callable,
    check_class_names,
    check_layer_names,
    check_model,
    check_prefix,
    check_stability_transforms,
    check_target,
    explained_module,
    settings_property,
    table5_transforms,
)
from evet_lightning.callbacks.cadence import check_monitors, drop_logged_values, explains_run
from evet_lightning.callbacks.explaining import (
    ExplainedChunk,
    ExplainedSamples,
    add_curves,
    explain_chunk,
    module_device,
)
from evet_lightning.callbacks.explanation_metrics import ExplanationMetrics, MetricsAnchor
from evet_lightning.callbacks.image_logging import HeatmapStyle, log_alpha_curve, log_curves, log_heatmaps, log_samples
from evet_lightning.callbacks.sampling import (
    OnceWarnings,
    SampleBuffer,
    chunk_sizes,
    fewer_samples,
    fsdp1_root,
    in_evaluation,
    new_buffer,
    rank_quota,
    warn_if_samples_changed,
)
from evet_lightning.data.batch import BatchUnpacker, check_images, read_batch, unpack_batch, unpack_with, unread_keys
from evet_lightning.functional.alpha import DEFAULT_ALPHA_GRID, DEFAULT_ALPHA_OBJECTIVE, AlphaObjective
from evet_lightning.functional.perturbation import Baseline, Normalization
from evet_lightning.saliency.evet import EVET, CamSpec, EVETResult
from evet_lightning.saliency.settings import EVETSettings
from evet_lightning.saliency.transforms import AffineTransform

__all__ = ["BatchUnpacker", "EVETCallback", "rank_quota", "unpack_batch"]

if TYPE_CHECKING:

    class _LightningCallback:
        """``lightning.pytorch.Callback`` for type checkers (it declares the same hooks as ``pl.Callback``)."""

else:
    try:
        from lightning.pytorch import Callback as _LightningCallback
    except ImportError:  # only the `pytorch_lightning` distribution is installed
        _LightningCallback = object


class EVETCallback(pl.Callback, _LightningCallback):
    """Track explanation quality during training: a CAM's maps against their EVET enhancement (Oh et al., 2021).

    Every ``every_n_epochs``-th validation epoch (and every ``trainer.validate`` and ``trainer.test`` run) the
    callback takes the first ``num_samples`` samples of the first validation (test) dataloader as they pass,
    computes their maps with ``cam`` (view 0 of EVET, the *original* maps) and the EVET maps, scores both, and logs
    with ``pl_module.log`` (so the values are in ``trainer.callback_metrics``, every logger, and the list
    ``trainer.validate`` or ``trainer.test`` returns):

    - ``{prefix}/original/average_drop``, ``{prefix}/evet/average_drop`` (Eq. 10, lower is better) and
      ``.../increase_in_confidence`` (Eq. 11): clean-image probability ``Y = f_k(x)`` against the probability
      of the image perturbed with the map, ``O = f_k(Phi(x, M))``;
    - ``.../energy_pointing_game`` (Eq. 12), only when the batches carry object masks;
    - ``.../stability_index`` (Eq. 8-9) under ``stability_transforms``: ``J(x)`` against
      ``T^-1(J(T(x)))`` and ``J*(x)`` against ``T^-1(J*(T(x)))`` on the valid pixels; empty
      ``stability_transforms`` turns it off;
    - ``{prefix}/win`` and ``{prefix}/average_difference``: EVET against the original map on ``O``;
    - ``{prefix}/num_skipped``: samples left out because the image or its logits were not finite;
    - with ``deletion_insertion=True``, ``.../deletion_auc`` (lower is better) and ``.../insertion_auc`` (higher
      is better) of each map's deletion and insertion curves (Petsiuk et al., RISE, 2018; docs/design.md,
      decision 16), computed on the final maps (with ``alpha="auto"``, the out-of-fold EVET maps).

    All values are fractions in [0, 1] (x100 for the paper's percentages), computed over all processes; no
    NaN is ever logged. Labelled heatmap sheets (columns ``image | Grad-CAM | EVET-Grad-CAM`` with the CAM's
    name; the class explained, ``Y`` and each map's ``O`` under the row; small images enlarged to 192 pixels
    a panel) of the first ``log_images`` samples (rank zero's) go to W&B (``{prefix}/heatmaps``, with the same
    labels as captions), to TensorBoard (``{prefix}/heatmaps/<i>``), or, with any other logger or none, to PNG
    files under ``<log dir>/evet_heatmaps/epoch_XXX/``. Every explained sample of rank zero (all of them with
    one process) goes into a per-sample table, to sort by the worst explanations: ``{prefix}/samples`` in W&B
    (the image and both overlays as images; ``sample``, ``class``, ``Y``, each map's ``O`` and, when computed,
    its AUCs), or, without W&B, ``<log dir>/evet_samples/epoch_XXX_step_XXXXXX.csv`` with the same columns
    minus the images, plus the heatmap's PNG file where one was written. With ``deletion_insertion=True`` the
    epoch's mean curves (original against EVET) are plotted (``{prefix}/deletion_insertion`` in W&B or
    TensorBoard, or ``<log dir>/evet_curves/``). ``log_images=0`` turns every image, table and file off. The
    last epoch's per-sample results are in :attr:`last_samples`.

    The class explained (k) is the sample's label when the batch has one and ``target="label"``, else the
    model's prediction on the untransformed image. The model explained is the LightningModule itself (its
    ``forward`` must return logits) unless ``model`` names or returns a submodule.

    Training is left exactly as it would be without the callback: the work runs at validation epoch end,
    through :class:`~evet_lightning.EVET`, which restores every module's mode, parameters' ``.grad`` and
    ``requires_grad``, hooks and RNG states; BatchNorm statistics are not updated (eval mode); global grad
    and inference mode are restored. It works under ``trainer.validate``'s inference mode and fit's no-grad.
    The metrics ride along on the LightningModule between ``setup`` and ``teardown`` (an attribute
    ``_evet_metrics_<prefix>`` that follows the module's device but holds no parameter, buffer or
    ``state_dict`` entry; see :class:`~evet_lightning.callbacks.explanation_metrics.MetricsAnchor`).

    It derives from ``pytorch_lightning.Callback`` and, when ``lightning`` is installed, ``lightning.pytorch.Callback``
    (both declare the same hooks), so ``pytorch_lightning.Trainer`` and ``lightning.pytorch.Trainer`` accept it.

    Samples: with ``W`` processes the first ``num_samples`` dataset indices, as with one (decision 13; fewer reach
    the callback: a warning, once per run); the same every epoch with an unshuffled loader, and a resumed run warns
    when they differ from the checkpoint's. Under sharded training (FSDP2, DeepSpeed) every rank explains the same
    number of samples, the extra ones padding (decision 29; README "Sharded training"). Every process computes
    every metric (torchmetrics syncs them), so the values are global, logged with ``sync_dist=False`` (Lightning's
    advice to sync is silenced for the ``{prefix}/`` keys only). Heatmaps are written by rank zero only.

    Cost: per sample, one EVET run (about ``2 (n + 1)`` forward passes for ``n`` transforms plus one to score
    the EVET map) and, for *each* stability transform, one more EVET run on the transformed image (its view 0
    is the original map of ``T(x)``), so the default (one stability transform) roughly doubles the work of
    EVET alone; ``stability_transforms=[]`` saves it. ``deletion_insertion=True`` adds ``2 (S + 1)`` forward
    passes per map, ``4 (S + 1) = 84`` per sample at ``deletion_steps=20`` for both maps (no backward), next to
    EVET's ``2 (n + 1) + 5 = 21`` at the defaults: about 4x EVET's own forward passes (3.8x its wall time on the
    demo's SmallCNN, README "Speed and memory"). It is spent only in explained epochs; the rest of the time the
    callback only checks a flag per batch.

    Args:
        cam: a pytorch-grad-cam CAM class, its name (``"GradCAM"``, ``"GradCAMPlusPlus"``, ``"ScoreCAM"``, ...)
            or ``"Gradient"``; also a callable ``(model, images, targets) -> maps`` (module level, so that it
            pickles for ``ddp_spawn``), ``"package.module:function"``, ``"captum:Name"`` or ``"zennit:Composite"``
            (see :class:`~evet_lightning.EVET`).
        target_layers: dotted name(s) of the layer(s) the CAM explains (``model.named_modules()`` of the
            explained model); ``None`` auto-detects the last layer with a spatial output, as early as possible:
            in ``setup`` from ``example_input_array`` if the module has one, else on the first sanity-check
            (or training) batch. Names are checked in ``setup``.
        transforms: EVET's transforms ``T_1 .. T_n``; ``None`` is the paper's 7 (:func:`paper_transforms`).
        threshold: Gamma of Eq. (2), in (0, 1].
        alpha: boost strength of Eq. (5): ``"auto"`` (the default) chooses it *out of fold* every explained
            epoch: the samples are split into two folds by position (even and odd), each fold's EVET maps use the
            alpha chosen on the other fold by ``alpha_objective`` over ``alpha_grid`` (sums over all processes),
            so no logged score grades its own choice. Logs ``{prefix}/alpha`` (the mean of the two folds'
            choices) and the epoch's per-alpha curve (``{prefix}/alpha_curve``: a W&B table and plot, a
            TensorBoard image, or a PNG beside the heatmaps). A number fixes alpha (>= 0).
        alpha_grid: the alphas ``"auto"`` chooses from, ascending.
        alpha_objective: ``"faithful_boost"`` (default), ``"average_drop"``, ``"increase_in_confidence"``,
            ``"energy_pointing_game"`` (needs masks in the batches) or a callable ``AlphaCurve -> (A,)`` (lower
            is better); see :class:`~evet_lightning.EVET` and docs/design.md, decisions 9-11.
        reshape_transform: ``activation -> (B, C, H, W)`` for target layers that output tokens (ViT) or
            channels-last maps; see :class:`~evet_lightning.EVET`.
        output_transform: ``model output -> (B, K) logits`` for models whose forward returns something else.
        cam_kwargs: the method's options (``base_method`` of FinerCAM/RefineCAM/SESS/GuidedGradCAM, Faster-Score-
            CAM's ``max_channels``, a Captum, zennit or callable method's); see :class:`~evet_lightning.EVET`.
        baseline: x_d of Eq. (3) for EVET and the faithfulness scores: ``"black"``, ``"zeros"``, ``"blur"``, a
            tensor or a callable.
        normalization: ``(mean, std)`` the images were normalized with: ``"black"`` is then black in pixels
            and heatmaps show the images in their true colours.
        max_batch_size: at most this many images (views) go through the model at once; also the number of
            samples explained per EVET call. ``"auto"``: see
            :func:`~evet_lightning.saliency.settings.resolve_max_batch_size`.
        num_samples: how many validation samples to explain (in total over all processes), >= 1.
        every_n_epochs: explain validation runs n, 2n, ... of ``trainer.fit`` (Lightning's convention; with
            ``val_check_interval`` every validation run counts), >= 1. ``trainer.validate`` always explains. The
            keys are absent from ``callback_metrics`` after a skipped run: monitor them with
            ``EarlyStopping(strict=False)`` and ``ModelCheckpoint(every_n_epochs=n)`` (decision 33).
        target: ``"label"`` (the batch's label when it has one, else the prediction) or ``"prediction"``.
        stability_transforms: the transforms T of the stability index; default ``[Rotate(5.0)]``, a transform
            EVET itself does not use, so the index measures how EVET generalizes (paper Fig. 4b); ``"paper"``
            for the paper's protocol (Table 5, Fig. 4a): the mean over scale 0.9, rotate 10, shear 0.2 and flip,
            EVET's own transforms. Each one costs another EVET run per sample. With ``alpha="auto"`` the runs
            also give each alpha's stability index for the default objective's stability guard (decision 30).
        log_images: how many samples' heatmaps to log, >= 0. 0 turns every image, table and file off (the
            heatmaps, the per-sample table or CSV, the alpha and the deletion/insertion plots); the metrics are
            logged all the same.
        prefix: the first part of every logged key.
        batch_unpacker: ``batch -> (images, labels or None, masks or None)`` for batches that
            :func:`unpack_batch` does not understand.
        model: the module to explain: ``None`` for the LightningModule itself, a dotted attribute name of it
            (``"model"``), or a callable ``pl_module -> nn.Module`` (use a module-level function, not a lambda,
            if the callback must pickle, e.g. for ``strategy="ddp_spawn"``). Under ``FSDPStrategy`` (FSDP1) only
            ``None``: the LightningModule is explained through FSDP's root wrapper, a submodule cannot run outside it.
        class_names: the name of each class by index, for the heatmaps' row labels (``"class 2: triangle"``)
            and the ``class_name`` column of the per-sample table; ``None`` shows the index only, as does an index
            beyond the names.
        deletion_insertion: also score both maps by deletion and insertion (see above): the curves' baseline
            for deletion is ``baseline`` (with ``normalization``), Phi's x_d; insertion starts from RISE's blur
            (kernel 11, sigma 5). Step images go through the model ``max_batch_size`` at a time (resolved per
            chunk as for EVET) with ``output_transform``. Off by default: it is the most expensive option.
        deletion_steps: ``S`` of the curves, >= 1: the curves have ``S + 1`` points.
        paper_stability: also score the paper's stability protocol (Table 5, Fig. 4a, four more EVET runs per
            sample) besides ``stability_transforms``, logged as ``.../stability_index_paper`` (and its paired
            difference ``{prefix}/diff/stability_index_paper``, ``_low``, ``_high``); the out-of-fold alpha's
            stability guard keeps using ``stability_transforms`` (decision 31). ``evet-lightning evaluate``
            turns it on to report both protocols.

    Raises:
        ValueError: in the constructor for any invalid argument; in ``setup`` for a layer name not in the model, a
            ``model`` that does not give an ``nn.Module``, or a monitor the cadence breaks (decision 33); before the
            first training step (at the latest) when auto-detection finds no spatial layer or a batch is unreadable.

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
        alpha: float | Literal["auto"] = "auto",
        baseline: Baseline = "black",
        normalization: Normalization = None,
        max_batch_size: int | Literal["auto"] = "auto",
        num_samples: int = 32,
        every_n_epochs: int = 1,
        target: Literal["label", "prediction"] = "label",
        stability_transforms: Sequence[AffineTransform] | Literal["paper"] | None = None,
        log_images: int = 8,
        prefix: str = "evet",
        batch_unpacker: BatchUnpacker | None = None,
        model: str | Callable[[Any], nn.Module] | None = None,
        class_names: Sequence[str] | None = None,
        alpha_grid: Sequence[float] = DEFAULT_ALPHA_GRID,
        alpha_objective: AlphaObjective = DEFAULT_ALPHA_OBJECTIVE,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        output_transform: Callable[[Any], Tensor] | None = None,
        deletion_insertion: bool = False,
        deletion_steps: int = 20,
        cam_kwargs: Mapping[str, Any] | None = None,
        paper_stability: bool = False,
    ) -> None:
        super().__init__()
        self.settings = EVETSettings(
            cam=cam,
            target_layers=check_layer_names(target_layers),
            transforms=transforms,
            threshold=threshold,
            alpha=alpha,
            alpha_grid=alpha_grid,
            alpha_objective=alpha_objective,
            baseline=baseline,
            normalization=normalization,
            max_batch_size=max_batch_size,
            reshape_transform=reshape_transform,
            output_transform=output_transform,
            cam_kwargs=cam_kwargs,
        )
        """EVET's settings, validated once: ``EVET(module, **settings.evet_kwargs())`` in ``setup``."""
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        self.log_images = check_int("log_images", log_images, 0)
        self.target = check_target(target)
        self.prefix = check_prefix(prefix)
        self.batch_unpacker = check_callable("batch_unpacker", batch_unpacker)
        self.model = check_model(model)
        self.stability_transforms = check_stability_transforms(stability_transforms)
        self.class_names = check_class_names(class_names)
        self.deletion_insertion = check_bool("deletion_insertion", deletion_insertion)
        self.deletion_steps = check_int("deletion_steps", deletion_steps, 1)
        self.paper_stability = check_bool("paper_stability", paper_stability)
        self._metrics = ExplanationMetrics(
            self.prefix,
            stability=bool(self.stability_transforms),
            deletion_steps=self.deletion_steps if self.deletion_insertion else None,
            paper_stability=self.paper_stability,
        )
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
        self._buffer: SampleBuffer | None = None
        self._warned = OnceWarnings()
        self.last_alpha: FoldChoice | None = None
        """With ``alpha="auto"``: the last explained epoch's out-of-fold choice (both folds' alphas, the curve)."""
        self.last_samples: ExplainedSamples | None = None
        """Per-sample results of the last explained epoch on this process, on the CPU (``None`` before one)."""
        self.last_timing: dict[str, float] = {}
        """Wall seconds of the last explained epoch on this process: ``seconds`` (all the epoch-end work),
        ``evet_seconds`` (the EVET runs on the samples, stability runs excluded), ``curve_seconds`` (the deletion
        and insertion curves, 0 when off), ``num_samples`` and ``seconds_per_image`` (``evet_seconds /
        num_samples``)."""

    # ----------------------------------------------------------------------------- settings and identity

    cam = settings_property("cam")
    threshold = settings_property("threshold")
    alpha = settings_property("alpha")
    baseline = settings_property("baseline")
    normalization = settings_property("normalization")
    max_batch_size = settings_property("max_batch_size")

    @property
    def cam_name(self) -> str:
        return self.settings.cam_name

    @property
    def target_layers(self) -> list[str] | None:
        """The layer names the CAM explains, as a list (``None``: auto-detected in ``setup``)."""
        names = self.settings.target_layers
        return None if names is None else [names] if isinstance(names, str) else list(names)

    @property
    def transforms(self) -> list[AffineTransform]:
        """EVET's transforms ``T_1 .. T_n``."""
        return list(self.settings.transforms or ())

    @property
    def last_results(self) -> list[EVETResult]:
        """The EVET results (on the CPU, one per chunk of samples) of the last explained epoch, this process."""
        return [] if self.last_samples is None else self.last_samples.results

    @property
    def metric_keys(self) -> list[str]:
        """Every key this callback can log (``energy_pointing_game`` only appears when masks are available;
        ``deletion_auc`` and ``insertion_auc`` only with ``deletion_insertion=True``)."""
        keys = self._metrics.keys()
        return [*keys, f"{self.prefix}/alpha"] if self.settings.alpha == "auto" else keys

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
            _evet=None, _layers_resolved=False, _batch_checked=False, _buffer=None, last_samples=None, last_timing={}
        )
        return state

    # ----------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate", "test"):
            return
        if stage == "fit":
            check_monitors(trainer, self.prefix, self.every_n_epochs)
        self._prepare(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release(pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release(pl_module)  # Lightning skips `teardown` when a run fails

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._layers_resolved and self._evet is not None:
            self._resolve_layers_from_training_batch(batch)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._evet is None:
            return
        if not in_evaluation(trainer):
            drop_logged_values(trainer, self.prefix)  # a skipped run must not leave another run's values (decision 33)
        self._buffer = new_buffer(trainer, self.num_samples) if self._explains_this_run(trainer) else None

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
            self._check_sanity_batch(batch)
        elif self._buffer is not None and not self._buffer.full:
            self._buffer.add(*self._read_batch(batch))

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._buffer is None or self._evet is None:
            return
        self._run_explanation(trainer, pl_module)

    # `trainer.test` explains and logs like `trainer.validate` (keys in the list it returns), by the same hooks.
    on_test_epoch_start = on_validation_epoch_start
    on_test_batch_end = on_validation_batch_end
    on_test_epoch_end = on_validation_epoch_end

    # ----------------------------------------------------------------------------- setup and samples

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build EVET for the explained module, register the metrics on the module, resolve the layer early."""
        if self.model is not None and any(cls.__name__ == "FSDPStrategy" for cls in type(trainer.strategy).__mro__):
            raise ValueError(
                "Expected `model=None` under FSDPStrategy: a submodule cannot be run outside FSDP's root wrapper "
                f"(got model={self.model!r}); explain the LightningModule, whose forward returns the logits"
            )
        module = explained_module(pl_module, self.model)
        self._evet = EVET(module, **self.settings.evet_kwargs())
        self._layers_resolved = self._batch_checked = False
        self._warned = OnceWarnings()
        MetricsAnchor.attach(pl_module, self.prefix, self._metrics)
        if trainer.world_size > 1:
            # Our values are already global (torchmetrics syncs on compute), so logging them with sync_dist=False
            # is right; silence Lightning's generic advice to use sync_dist=True, for our keys only.
            warnings.filterwarnings(
                "ignore", message=rf"It is recommended to use `self\.log\('{re.escape(self.prefix)}/"
            )
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor) and example.ndim == 4 and example.is_floating_point():
            self._resolve_layers(example.to(module_device(module)))

    def _release(self, pl_module: pl.LightningModule) -> None:
        self._evet = None  # holds the model: drop it between runs
        self._buffer = None
        MetricsAnchor.detach(pl_module, self.prefix)

    def _resolve_layers(self, images: Tensor) -> None:
        if self._evet is None or self._layers_resolved:
            return
        names = self._evet.resolve_target_layers(images[:1])
        self._layers_resolved = True
        rank_zero_info(f"EVETCallback: explaining {self.cam_name} at layer(s) {names or '(input gradient)'}")

    def _resolve_layers_from_training_batch(self, batch: Any) -> None:
        """No sanity check ran (``num_sanity_val_steps=0``): find the layer before the first training step."""
        try:
            images = check_images(unpack_with(batch, self.batch_unpacker)[0])
        except ValueError:
            return  # a training batch we cannot read: the first validation batch resolves the layer instead
        self._resolve_layers(images)

    def _check_sanity_batch(self, batch: Any) -> None:
        """Fail early, in the sanity check, on a batch we cannot read or a model with no CAM layer."""
        if not self._batch_checked:
            self._resolve_layers(self._read_batch(batch)[0])
            self._batch_checked = True

    def _read_batch(self, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if self.batch_unpacker is None:
            self._warned.warn("keys", unread_keys(batch, use_labels=self.target == "label"))
        return read_batch(batch, self.batch_unpacker, use_labels=self.target == "label")

    def _explains_this_run(self, trainer: pl.Trainer) -> bool:
        """``trainer.validate`` and ``.test`` always explain; fit's validation runs follow ``every_n_epochs``."""
        if in_evaluation(trainer):
            return True
        explains = explains_run(self.validation_runs, self.every_n_epochs)
        self.validation_runs += 1
        return explains

    # ----------------------------------------------------------------------------- explain, score, log

    def _run_explanation(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch-end work: explain the buffered samples, score them, log the values and the heatmaps."""
        assert self._buffer is not None
        buffer, self._buffer = self._buffer, None
        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            samples = self._explain(buffer, fsdp1_root(trainer, pl_module))
            self._update_metrics(samples)
            values, mean_curves = self._compute_metrics()
        if self.last_alpha is not None and self.settings.alpha == "auto":
            values[f"{self.prefix}/alpha"] = torch.tensor(self.last_alpha.mean_alpha)
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)
        self.epochs_explained += 1
        self.last_samples = samples.to_cpu()
        style = HeatmapStyle(self.cam_name, self.class_names, self.settings.normalization)
        log_heatmaps(trainer, self.last_samples, f"{self.prefix}/heatmaps", self.log_images, style)
        if self.log_images > 0:
            log_samples(trainer, self.last_samples, f"{self.prefix}/samples", style, self.log_images)
            if self.last_alpha is not None and self.settings.alpha == "auto":
                log_alpha_curve(trainer, f"{self.prefix}/alpha_curve", self.last_alpha)
            if mean_curves:
                log_curves(trainer, f"{self.prefix}/deletion_insertion", mean_curves, self.cam_name)
        self.last_timing = {
            "evet_seconds": samples.evet_seconds,
            "curve_seconds": samples.curve_seconds,
            "num_samples": float(len(samples)),
            "seconds_per_image": samples.evet_seconds / max(buffer.count, 1),
            "seconds": time.perf_counter() - start,
        }

    def _explain(self, buffer: SampleBuffer, root: nn.Module | None = None) -> ExplainedSamples:
        """EVET on every buffered sample, chunk by chunk, on the explained model's device.

        With several processes every rank first agrees on the work (decision 29): the same number of samples
        (padding a short shard), the same shapes and one chunk size, used for EVET's views and the curves too.
        ``root``: FSDP1's root wrapper of the LightningModule, run instead of the module itself (the target layers
        are the same module objects inside it), so every FSDP unit gathers and frees its parameters as usual.
        """
        assert self._evet is not None
        evet = self._evet
        explained = evet.model
        if root is not None:
            evet.model = root
        device = module_device(evet.model)
        max_batch_size = self.settings.max_batch_size

        chunk_size = chunk_sizes(buffer, max_batch_size, device)

        paper = table5_transforms() if self.paper_stability else []
        previous = evet.max_batch_size
        evet.max_batch_size = max_batch_size if callable(chunk_size) else chunk_size
        try:
            chunks = [
                explain_chunk(evet, batch, device, self.stability_transforms, paper)
                for batch in buffer.chunks(chunk_size)
            ]
            if self.settings.alpha == "auto":
                chunks = self._out_of_fold(chunks, device)
            if self.deletion_insertion:  # on the final maps: after the out-of-fold alpha replaced the EVET maps
                steps, settings = self.deletion_steps, self.settings
                sizes = [chunk_size(c.images) if callable(chunk_size) else chunk_size for c in chunks]
                chunks = [add_curves(c, evet.model, steps, settings, n) for c, n in zip(chunks, sizes, strict=True)]
        finally:
            evet.max_batch_size = previous
            evet.model = explained
        return ExplainedSamples.from_chunks(chunks)

    def _out_of_fold(self, chunks: list[ExplainedChunk], device: torch.device) -> list[ExplainedChunk]:
        """Each fold's maps at the alpha chosen on the other fold, from sums over all processes (decision 11)."""
        selection = OutOfFoldAlpha(self.settings.alpha_grid, self.settings.alpha_objective).to(device)
        for chunk in chunks:  # padding goes into no fold (fold -1), so it never enters a choice
            selection.add(torch.where(chunk.padding_mask, -1, chunk.folds), chunk.result, chunk.masks, chunk.stability)
        self.last_alpha = selection.choose()  # every rank, once per explained epoch: it syncs
        return [chunk.out_of_fold(self.last_alpha) for chunk in chunks]

    def _update_metrics(self, samples: ExplainedSamples) -> None:
        for chunk in samples.chunks:
            self._metrics.update(chunk)
        self._metrics.finish_epoch()

    def _compute_metrics(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Compute every metric (synced across processes, same order everywhere), reset them, check the samples.
        Returns the values to log and the mean deletion/insertion curves (empty when off or nothing explained)."""
        values, counts = self._metrics.compute()
        if counts.explained == 0:
            rank_zero_warn("EVETCallback: no sample could be explained this epoch; only num_skipped is logged")
        self.last_num_samples = counts.explained + counts.skipped
        self._warned.warn("samples", fewer_samples(self.last_num_samples, self.num_samples))
        warn_if_samples_changed(self._loaded_fingerprint, counts.fingerprint)
        self._loaded_fingerprint, self.fingerprint = None, counts.fingerprint
        return values, counts.mean_curves
