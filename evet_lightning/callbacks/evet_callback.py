"""EVETCallback: track explanation quality (original CAM vs EVET) on fixed validation samples during training."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from evet_lightning._validation import check_int
from evet_lightning.callbacks.alpha_selection import FoldChoice
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
from evet_lightning.callbacks.base import LightningCallback
from evet_lightning.callbacks.explaining import ExplainedSamples, module_device
from evet_lightning.callbacks.explanation_metrics import ExplanationMetrics, MetricsAnchor
from evet_lightning.callbacks.image_logging import HeatmapStyle, log_epoch
from evet_lightning.callbacks.pairs import PairPolicy, apply_task, check_task_option, decide_task
from evet_lightning.callbacks.records import SampleRecords
from evet_lightning.callbacks.sampling import (
    check_fsdp1_model,
    fsdp1_root,
    in_validate,
    rank_quota,
    silence_sync_dist_advice,
    warn_if_samples_changed,
)
from evet_lightning.callbacks.streaming import ChunkWork, EpochStream
from evet_lightning.data.batch import BatchUnpacker, check_images, read_batch, unpack_batch, unpack_with
from evet_lightning.functional.activation import Activation, Task
from evet_lightning.functional.alpha import DEFAULT_ALPHA_GRID, DEFAULT_ALPHA_OBJECTIVE, AlphaObjective
from evet_lightning.functional.perturbation import Baseline, Normalization
from evet_lightning.saliency.evet import EVET, CamSpec, EVETResult
from evet_lightning.saliency.settings import EVETSettings
from evet_lightning.saliency.transforms import AffineTransform

__all__ = ["BatchUnpacker", "EVETCallback", "rank_quota", "unpack_batch"]


class EVETCallback(pl.Callback, LightningCallback):
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
    - ``{prefix}/num_skipped``: samples left out because the image or its logits were not finite;
    - with ``deletion_insertion=True``, ``.../deletion_auc`` (lower is better) and ``.../insertion_auc`` (higher
      is better) of each map's deletion and insertion curves (Petsiuk et al., RISE, 2018; docs/design.md,
      decision 16), computed on the final maps (with ``alpha="auto"``, the out-of-fold EVET maps).

    All values are fractions in [0, 1] (x100 for the paper's percentages), computed over all processes; no
    NaN is ever logged. Labelled heatmap sheets (``image | Grad-CAM | EVET-Grad-CAM``; the class, ``Y`` and
    each map's ``O`` under the row; small images enlarged to 192 pixels) of the first ``log_images`` samples
    (rank zero's) go to W&B (``{prefix}/heatmaps``), TensorBoard (``{prefix}/heatmaps/<i>``) or PNG files under
    ``<log dir>/evet_heatmaps/epoch_XXX/``. Every explained sample of rank zero goes into a per-sample table, to
    sort by the worst explanations: ``{prefix}/samples`` in W&B (the image and both overlays for the samples
    whose maps are kept, decision 38; ``sample``, ``class``, ``Y``, each map's ``O``, its AUCs when computed),
    or ``<log dir>/evet_samples/epoch_XXX_step_XXXXXX.csv`` (no images; the heatmap's PNG file where written).
    With ``deletion_insertion=True`` the epoch's mean curves are plotted (``{prefix}/deletion_insertion`` in W&B
    or TensorBoard, or ``<log dir>/evet_curves/``).
    ``log_images=0`` turns every image, table and file off. Each sample's values are in :meth:`sample_records`
    as soon as it is scored; the last epoch's are also in :attr:`last_samples`.

    Streaming (decisions 36-38): each validation batch's share of the samples is explained in
    ``on_validation_batch_end`` as the batch passes (so the progress bar moves with the work), scored, and
    dropped: memory holds the current chunk, the calibration samples (``alpha_calibration``) until alpha is
    chosen, the maps of the first ``max(log_images, alpha_calibration)`` samples, and a few scalars per sample.

    The class explained (k) is the sample's label when the batch has one and ``target="label"``, else the
    model's prediction on the untransformed image; a multi-label model's (``task``) images are explained as
    (image, class) pairs, each pair a row wherever a sample is (decisions 54-58). The model explained is the
    LightningModule itself (its ``forward`` must return logits) unless ``model`` names or returns a submodule.

    Training is left exactly as it would be without the callback: the work runs in the validation hooks,
    through :class:`~evet_lightning.EVET`, which restores every module's mode, parameters' ``.grad`` and
    ``requires_grad``, hooks and RNG states; BatchNorm statistics are not updated (eval mode); global grad
    and inference mode are restored. It works under ``trainer.validate``'s inference mode and fit's no-grad.
    The metrics ride along on the LightningModule between ``setup`` and ``teardown`` (an attribute
    ``_evet_metrics_<prefix>`` that follows the module's device but holds no parameter, buffer or
    ``state_dict`` entry; see :class:`~evet_lightning.callbacks.explanation_metrics.MetricsAnchor`).

    ``pytorch_lightning.Trainer`` and ``lightning.pytorch.Trainer`` both accept it (:mod:`~.base`).

    Samples: rank ``r`` of ``W`` keeps the first ``num_samples // W + (r < num_samples % W)`` of its shard: with
    the unshuffled ``DistributedSampler``, the first ``num_samples`` dataset indices, as with one process (their
    fingerprint is saved in :meth:`state_dict`; a resumed run warns when they differ). Every rank explains
    ``ceil(n / W)`` samples (and pairs) in chunks of one agreed size, the extra ones padding, left out of every
    result; ranks whose samples differ in shape, dtype or label/mask presence raise a ``RuntimeError`` before a
    forward pass (decisions 29, 37 and 57; README "Sharded training").
    Every process computes every metric (torchmetrics syncs them), so the logged values are global and are
    logged with ``sync_dist=False``; Lightning's generic advice to use ``sync_dist=True`` is silenced for the
    ``{prefix}/`` keys only. Heatmaps are rendered and written by rank zero only.

    Cost: per sample (per pair in a multi-label run), one EVET run (about ``2 (n + 1)`` forward passes for ``n``
    transforms plus one to score the EVET map) and, for *each* stability transform, one more EVET run on the
    transformed image (its view 0 is the original map of ``T(x)``), so the default roughly doubles the work of
    EVET alone; ``stability_transforms=[]`` saves it. ``deletion_insertion=True`` adds ``2 (S + 1)`` forward
    passes per map, ``4 (S + 1) = 84`` per sample at ``deletion_steps=20`` for both maps (no backward), next to
    EVET's ``2 (n + 1) + 5 = 21`` at the defaults (measured: 1.9x to 3.8x EVET's wall time on the demo's
    SmallCNN, README). It is spent only in explained epochs; otherwise the callback checks a flag per batch.

    Args:
        cam: a pytorch-grad-cam CAM class, its name (``"GradCAM"``, ``"GradCAMPlusPlus"``, ``"ScoreCAM"``, ...)
            or ``"Gradient"``; also a callable ``(model, images, targets) -> maps`` (module level, so that it
            pickles for ``ddp_spawn``), ``"package.module:function"``, ``"captum:Name"`` or ``"zennit:Composite"``
            (see :class:`~evet_lightning.EVET`).
        cam_kwargs: the method's options (``base_method`` of FinerCAM/RefineCAM/SESS/GuidedGradCAM,
            Faster-Score-CAM's ``max_channels``, a Captum, zennit or callable method's; see ``EVET``).
        target_layers: dotted name(s) of the layer(s) the CAM explains (``model.named_modules()`` of the
            explained model); ``None`` auto-detects the last layer with a spatial output, as early as possible:
            in ``setup`` from ``example_input_array`` if the module has one, else on the first sanity-check
            (or training) batch. Names are checked in ``setup``.
        transforms: EVET's transforms ``T_1 .. T_n``; ``None`` is the paper's 7 (:func:`paper_transforms`).
        threshold: Gamma of Eq. (2), in (0, 1].
        alpha: boost strength of Eq. (5): ``"auto"`` (the default) chooses it *out of fold* every explained
            epoch: the samples are split into two folds by position (even and odd), each fold's EVET maps use the
            alpha chosen on the other fold by ``alpha_objective`` over ``alpha_grid`` (sums over all processes),
            so no logged score grades its own choice; only the first ``alpha_calibration`` samples are folded, later
            ones use the alpha chosen on all of those. Logs ``{prefix}/alpha`` (the mean of the two folds'
            choices, later samples counted at theirs, decision 36) and the epoch's per-alpha curve
            (``{prefix}/alpha_curve``: a W&B table and plot, a TensorBoard image, or a PNG beside the heatmaps).
            A number fixes alpha (>= 0).
        alpha_grid: the alphas ``"auto"`` chooses from, ascending.
        alpha_objective: ``"faithful_boost"`` (default), ``"average_drop"``, ``"increase_in_confidence"``,
            ``"energy_pointing_game"`` (needs masks in the batches) or a callable ``AlphaCurve -> (A,)`` (lower
            is better); see :class:`~evet_lightning.EVET` and docs/design.md, decisions 9-11.
        reshape_transform: ``activation -> (B, C, H, W)`` for target layers that output tokens (ViT) or
            channels-last maps; see :class:`~evet_lightning.EVET`.
        output_transform: ``model output -> (B, K) logits`` for models whose forward returns something else.
        baseline: x_d of Eq. (3) for EVET and the faithfulness scores: ``"black"``, ``"zeros"``, ``"blur"``, a
            tensor or a callable.
        normalization: ``(mean, std)`` the images were normalized with: ``"black"`` is then black in pixels
            and heatmaps show the images in their true colours.
        max_batch_size: at most this many images (views) go through the model at once; also the number of
            samples explained per EVET call. ``"auto"``: see
            :func:`~evet_lightning.saliency.settings.resolve_max_batch_size`.
        num_samples: how many validation samples to explain (in total over all processes), >= 1.
        every_n_epochs: explain every n-th validation run of ``trainer.fit`` (the first one included; with
            ``val_check_interval`` every validation run counts), >= 1. ``trainer.validate`` always explains.
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
        task: ``"auto"``, ``"multiclass"`` (softmax, one class per image), ``"multilabel"`` (sigmoid, (image,
            class) pairs: ``num_samples`` counts images, metrics are means over pairs, ``{prefix}/num_pairs`` is
            logged, rows of :meth:`sample_records`, tables and heatmaps are pairs) or ``"binary"``. ``"auto"``:
            multilabel when the first batch has multi-hot ``(B, C)`` labels (said at INFO), else multiclass; a run
            without labels needs ``task="multilabel"`` (decision 54). ``activation`` overrides (``EVET``'s).
        multilabel_targets: ``"positives"`` (every positive label) or ``"most_confident"`` (the positive label of
            highest probability); without labels or with ``target="prediction"``, the classes above
            ``prediction_threshold`` (none: the top class) or the top class (decision 55).
        ignore_index: the void value of class-index masks, left out of the pointing game (decision 47).
        alpha_calibration: with ``alpha="auto"``, how many samples (the first ones, over all processes, >= 2)
            calibrate alpha: inside them the out-of-fold rule above; every later sample's EVET map uses the alpha
            chosen on all of them together, so it streams (decision 36). ``num_samples <= alpha_calibration`` is
            the out-of-fold rule on every sample.

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
        alpha_calibration: int = 32,
        task: Literal["auto"] | Task = "auto",
        multilabel_targets: Literal["positives", "most_confident"] = "positives",
        prediction_threshold: float = 0.5,
        ignore_index: int | None = 255,
        activation: Activation | None = None,
    ) -> None:
        super().__init__()
        task_option = check_task_option(task)
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
            task="multiclass" if task_option == "auto" else task_option,
            activation=activation,
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
        self.alpha_calibration = check_int("alpha_calibration", alpha_calibration, 2)
        self.task_option = task_option
        self.pair_policy = PairPolicy.checked(multilabel_targets, self.target, prediction_threshold, ignore_index)
        self._task: Task | None = None if task_option == "auto" else task_option
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
        self._stream: EpochStream | None = None
        self.last_alpha: FoldChoice | None = None
        """With ``alpha="auto"``: the last explained epoch's out-of-fold choice (both folds' alphas, the curve)."""
        self._records = SampleRecords()
        self.calibration_complete = False
        """With ``alpha="auto"``: whether this epoch's alpha is chosen (:attr:`last_alpha`); always true with a
        fixed alpha once an epoch is explained."""
        self.last_samples: ExplainedSamples | None = None
        """Per-sample results of the last explained epoch on this process, on the CPU (``None`` before one): the
        values of every sample, the chunks (images, maps) of the first ``max(log_images, alpha_calibration)``."""
        self.last_timing: dict[str, float] = {}
        """Wall seconds of the last explained epoch on this process: ``seconds`` (all the callback's work),
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
        """The EVET results (CPU, one per chunk) of the last explained epoch's kept chunks on this process (the first
        ``max(log_images, alpha_calibration)`` samples, decision 38); every sample's values: :meth:`sample_records`."""
        return [] if self.last_samples is None else self.last_samples.results

    def sample_records(self, start: int = 0) -> dict[str, Tensor]:
        """The per-sample records of the current (or last) explained epoch on this process, as CPU columns of
        equal length: one row per finalized real sample (padding never; per (image, class) pair in a multi-label
        run), in the order finalized; rows only grow during an epoch (read new rows in a later callback's
        ``on_validation_batch_end``).

        Columns: ``sample`` (int64, the position in the single-process order: the dataset index with an
        unshuffled loader; a pair's image), ``target`` (int64, the class explained), ``finite`` (bool; a
        non-finite row has NaN values), ``Y``, ``original/O``, ``evet/O``, ``alpha`` (float64, the alpha of the
        sample's EVET map), and for each variant ``original``/``evet`` the per-sample values the logged metrics
        are the means of: ``average_drop``, ``increase_in_confidence``, ``energy_pointing_game`` (with masks),
        ``stability_index`` (with stability transforms), ``stability_index_paper`` (``paper_stability``),
        ``deletion_auc``, ``insertion_auc`` (``deletion_insertion``), keyed ``"{variant}/{metric}"``. ``start``:
        only the rows from that one on (the new rows since a previous call, without concatenating earlier ones).
        """
        return self._records.columns(start)

    @property
    def metric_keys(self) -> list[str]:
        """Every key this callback can log (``energy_pointing_game`` only appears when masks are available;
        ``deletion_auc`` and ``insertion_auc`` only with ``deletion_insertion=True``)."""
        keys = self._metrics.keys() + ([f"{self.prefix}/alpha"] if self.settings.alpha == "auto" else [])
        return keys + ([f"{self.prefix}/num_pairs"] if self._task == "multilabel" else [])

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
            _evet=None,
            _layers_resolved=False,
            _batch_checked=False,
            _stream=None,
            last_samples=None,
            last_timing={},
            _records=SampleRecords(),
        )
        return state

    # ----------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
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
        if self._layers_resolved or self._evet is None:
            return
        self._resolve_layers_from_training_batch(batch)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._evet is None:
            return
        self._stream = self._new_stream(trainer) if self._explains_this_run(trainer) else None

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
        elif self._stream is not None and self._stream.active:
            self._explain_batch(trainer, pl_module, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._stream is None or self._evet is None:
            return
        self._run_explanation(trainer, pl_module)

    # ----------------------------------------------------------------------------- setup and samples

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build EVET for the explained module, register the metrics on the module, resolve the layer early."""
        check_fsdp1_model(trainer, self.model)
        module = explained_module(pl_module, self.model)
        self._evet = EVET(module, **self.settings.evet_kwargs())
        self._layers_resolved = self._batch_checked = False
        MetricsAnchor.attach(pl_module, self.prefix, self._metrics)
        silence_sync_dist_advice(trainer, self.prefix)
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor) and example.ndim == 4 and example.is_floating_point():
            self._resolve_layers(example.to(module_device(module)))

    def _release(self, pl_module: pl.LightningModule) -> None:
        self._evet = None  # holds the model: drop it between runs
        self._stream = None
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

    @property
    def task(self) -> Task | None:
        """The task explained: the one given, or what ``task="auto"`` read from the first batch (``None`` before)."""
        return self._task

    def _read_batch(self, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if self._task is None:  # task="auto" (decision 54): decided once, from the first batch read
            self._task, self.settings = decide_task(unpack_with(batch, self.batch_unpacker)[1], self.settings)
            if self._evet is not None:
                apply_task(self._evet, self.settings)
        multilabel = self._task == "multilabel"
        return read_batch(batch, self.batch_unpacker, use_labels=self.target == "label", multilabel=multilabel)

    def _explains_this_run(self, trainer: pl.Trainer) -> bool:
        """``trainer.validate`` always explains; fit's validation runs follow ``every_n_epochs``."""
        if in_validate(trainer):
            return True
        explains = self.validation_runs % self.every_n_epochs == 0
        self.validation_runs += 1
        return explains

    # ----------------------------------------------------------------------------- explain, score, log

    def _new_stream(self, trainer: pl.Trainer) -> EpochStream:
        """This epoch's stream: the samples of this process, explained batch by batch (decisions 36-38)."""
        assert self._evet is not None
        self._records, self.calibration_complete = SampleRecords(), False
        self.last_alpha = None if self.settings.alpha == "auto" else self.last_alpha
        paper = table5_transforms() if self.paper_stability else []
        steps = self.deletion_steps if self.deletion_insertion else None
        pairs = self.pair_policy if self._task == "multilabel" else None
        work = ChunkWork(self._evet, self.settings, self.stability_transforms, paper, steps, pairs)
        keep = max(self.log_images, self.alpha_calibration)  # decision 38
        calibration = self.alpha_calibration
        return EpochStream.start(trainer, work, self._metrics, self._records, self.num_samples, calibration, keep)

    def _explain_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        """Explain this process's share of one validation batch, score it and keep its scalars (decision 36)."""
        stream = self._stream
        assert stream is not None
        images, labels, masks = self._read_batch(batch)
        if self._task == "multilabel" and stream.work.pairs is None:  # task="auto" decided on this batch
            stream.work = dataclasses.replace(stream.work, settings=self.settings, pairs=self.pair_policy)
        with torch.inference_mode(False), torch.no_grad():
            stream.add(images, labels, masks, root=fsdp1_root(trainer, pl_module))
        self.calibration_complete, self.last_alpha = stream.calibration_complete, stream.choice or self.last_alpha

    def _run_explanation(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch-end work: explain what is left, compute and log the values, the heatmaps and the table."""
        assert self._stream is not None
        stream, self._stream = self._stream, None
        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            samples = stream.finish(fsdp1_root(trainer, pl_module))
            self.calibration_complete, self.last_alpha = stream.calibration_complete, stream.choice or self.last_alpha
            self._metrics.finish_epoch()
            values, mean_curves = self._compute_metrics()
            alpha = stream.logged_alpha()  # every process (it syncs)
            pairs = stream.total_rows() if self._task == "multilabel" else None  # (decision 56)
        auto = self.last_alpha is not None and alpha is not None
        if alpha is not None:
            values[f"{self.prefix}/alpha"] = torch.tensor(alpha)
        if pairs is not None:
            values[f"{self.prefix}/num_pairs"] = torch.tensor(float(pairs))
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)
        self.epochs_explained += 1
        self.last_samples = samples
        style = HeatmapStyle(self.cam_name, self.class_names, self.settings.normalization)
        log_epoch(trainer, self.prefix, samples, self.log_images, style, self.last_alpha if auto else None, mean_curves)
        self.last_timing = stream.timing(len(samples), time.perf_counter() - start)

    def _compute_metrics(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Compute every metric (synced across processes, same order everywhere), reset them, check the samples.
        Returns the values to log and the mean deletion/insertion curves (empty when off or nothing explained)."""
        values, counts = self._metrics.compute()
        if counts.explained == 0:
            rank_zero_warn("EVETCallback: no sample could be explained this epoch; only num_skipped is logged")
        self.last_num_samples = counts.explained + counts.skipped
        warn_if_samples_changed(self._loaded_fingerprint, counts.fingerprint)
        self._loaded_fingerprint, self.fingerprint = None, counts.fingerprint
        return values, counts.mean_curves
