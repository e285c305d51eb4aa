"""One method on the evaluation samples: ``trainer.validate`` with :class:`~evet_lightning.EVETCallback` attached."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy, Strategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from evet_lightning.callbacks import EVETCallback
from evet_lightning.data.batch import unpack_batch
from evet_lightning.evaluation.class_means import class_means
from evet_lightning.evaluation.config import DEFAULT_DELETION_STEPS
from evet_lightning.evaluation.data import EvaluationData
from evet_lightning.evaluation.devices import accelerator_device, lightning_accelerator
from evet_lightning.evaluation.errors import UsageError
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.evaluation.names import PREFIX
from evet_lightning.evaluation.records import MethodRun
from evet_lightning.evaluation.resume import plan_method
from evet_lightning.evaluation.row_metrics import metrics_from_rows
from evet_lightning.evaluation.sample_file import (
    SampleFileWriter,
    dataset_files,
    method_state,
    read_rows,
    sample_files,
    write_merged,
    write_method_state,
)
from evet_lightning.evaluation.settings import make_callback
from evet_lightning.saliency.outputs import OutputTransform, logits_from_output
from evet_lightning.saliency.settings import EVETSettings

__all__ = [
    "EvaluationModule",
    "check_devices",
    "default_settings",
    "evaluation_callback",
    "keyboard_interrupts",
    "lightning_strategy",
    "method_run_from_rows",
    "quiet_lightning",
    "run_method",
]


class EvaluationModule(pl.LightningModule):
    """The minimal LightningModule ``trainer.validate`` needs around any classifier.

    ``forward`` is the classifier's, its output read as logits by
    :func:`~evet_lightning.saliency.logits_from_output` (with ``output_transform`` when given); the validation
    step logs the top-1 accuracy (``val_acc``) of the samples that have a label. A LightningModule is wrapped
    too, so its own ``validation_step`` (which may expect another batch format) never runs.
    """

    def __init__(self, model: nn.Module, output_transform: OutputTransform | None = None) -> None:
        super().__init__()
        self.model = model
        self.output_transform = output_transform

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> logits ``(B, K)``."""
        return logits_from_output(self.model(images), self.output_transform, num_images=images.shape[0])

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:
        """Top-1 accuracy on the labelled samples of the batch (``val_acc``); returns ``correct``, ``(B,)`` int64:
        1 / 0 whether each sample's prediction is its label, -1 without a label (the per-sample file's column).

        Multi-hot labels ``(B, C)`` (a multi-label run): ``correct`` is ``(B, C)``, 1 / 0 whether the model's
        decision on each class (logit > 0, i.e. sigmoid > 0.5) is the label's; nothing is logged (the tables
        compute the share over the explained pairs from the rows, decision 59)."""
        images, labels, _ = unpack_batch(batch)
        if labels is None:
            return None
        if labels.ndim == 2 and labels.shape[1] > 1:
            decisions = self(images) > 0
            return {"correct": (decisions == (labels > 0.5)).long().cpu()}
        labels = labels.reshape(-1)
        known = labels >= 0
        correct = torch.full_like(labels, -1, dtype=torch.int64)
        if bool(known.any()):
            hits = self(images[known]).argmax(dim=1) == labels[known]
            correct[known] = hits.long()
            self.log("val_acc", hits.float().mean(), batch_size=int(known.sum()))
        return {"correct": correct.cpu()}


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's set-up chatter (GPU/TPU availability, worker hints) around a run."""
    names = (
        "pytorch_lightning.utilities.rank_zero",
        "lightning.pytorch.utilities.rank_zero",
        "pytorch_lightning.accelerators.cuda",
        "lightning.pytorch.accelerators.cuda",
    )
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        # `check_model_outputs` already warned once, before the runs; each method's engine would repeat it.
        warnings.filterwarnings("ignore", "EVET: the model outputs .*probabilities")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@contextlib.contextmanager
def keyboard_interrupts() -> Iterator[None]:
    """Around a Lightning entry point (``fit``, ``validate``): Ctrl+C comes out as ``KeyboardInterrupt``, and the
    ``SIGINT`` handler is left as it was.

    Lightning catches ``KeyboardInterrupt``, ignores ``SIGINT`` from then on and calls ``sys.exit(1)``
    (``pytorch_lightning/trainer/call.py``), so a caller could not tell Ctrl+C from a failure. That
    ``SystemExit`` is raised while the ``KeyboardInterrupt`` is handled, so it is the exit's ``__context__``;
    any other ``SystemExit`` passes through unchanged.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        yield
    except SystemExit as exit_:
        if isinstance(exit_.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def run_method(
    model: EvaluationModel,
    data: EvaluationData,
    method: str,
    *,
    settings: EVETSettings | None = None,
    batch_size: int = 32,
    accelerator: str = "auto",
    progress: bool = True,
    root_dir: str | os.PathLike[str] | None = None,
    target: Literal["label", "prediction"] = "label",
    deletion_insertion: bool = False,
    deletion_steps: int = DEFAULT_DELETION_STEPS,
    paper_stability: bool = True,
    alpha_calibration: int = 32,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    samples: str | os.PathLike[str] | None = None,
) -> MethodRun:
    """``trainer.validate`` over ``data`` with an :class:`EVETCallback` for ``method`` explaining every sample,
    its rows written to the per-sample file (:mod:`~evet_lightning.evaluation.sample_file`), and the method's
    values computed from those rows (:func:`~evet_lightning.evaluation.row_metrics.metrics_from_rows`).

    ``settings``: every EVET setting of the callback but ``cam`` (which is ``method``); default
    :func:`default_settings`. Its ``target_layers`` are names in ``model.module``, which the callback explains
    (``model="model"`` of the wrapping :class:`EvaluationModule`).
    ``target``: the class explained, the sample's label or the model's prediction (see :class:`EVETCallback`).
    ``deletion_insertion``: also log the deletion and insertion AUCs (``deletion_steps`` steps) of both maps.
    ``paper_stability``: also score the paper's stability protocol (see :func:`evaluation_callback`).
    ``alpha_calibration``: with ``alpha="auto"``, the first samples that calibrate alpha (decision 36).
    ``devices``, ``num_nodes``, ``strategy``: Lightning's; ``strategy="auto"`` is ``ddp_spawn`` with more than
    one process (decision 44).
    ``samples``: the folder of the per-sample files; a method recorded there is continued (see
    :func:`~evet_lightning.evaluation.resume.plan_method`); ``None``: a temporary folder.

    Raises:
        UsageError: ``accelerator`` names a device this machine does not have, or more devices than it has.
        KeyboardInterrupt: Ctrl+C (see :func:`keyboard_interrupts`); the rows written so far stay in ``samples``.
    """
    device = accelerator_device(accelerator)
    check_devices(device, devices)
    settings = (settings or default_settings(model, data)).replace(cam=method)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()) if samples is None else samples)
        folder.mkdir(parents=True, exist_ok=True)
        plan = plan_method(folder, method, len(data), fixed_alpha=settings.alpha != "auto")
        if plan.indices:
            run_settings = settings if plan.alpha is None else settings.replace(alpha=plan.alpha)
            callback = evaluation_callback(
                run_settings,
                len(plan.indices),
                target=target,
                deletion_insertion=deletion_insertion,
                deletion_steps=deletion_steps,
                paper_stability=paper_stability,
                alpha_calibration=alpha_calibration,
            )
            dataset = data.dataset if len(plan.indices) == len(data) else Subset(data.dataset, plan.indices)
            writer = SampleFileWriter(folder, method, plan.attempt, plan.indices, dataset_files(data.dataset))
            with quiet_lightning():
                trainer = pl.Trainer(
                    accelerator=lightning_accelerator(device),
                    devices=devices,
                    num_nodes=num_nodes,
                    strategy=lightning_strategy(strategy, devices * num_nodes),
                    logger=False,
                    callbacks=[callback, writer],  # the writer reads the callback's rows: after it
                    enable_checkpointing=False,
                    enable_model_summary=False,
                    enable_progress_bar=progress,
                    default_root_dir=None if root_dir is None else os.fspath(root_dir),
                )
                module = EvaluationModule(model.module, settings.output_transform)
                loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
                with keyboard_interrupts():
                    trainer.validate(module, dataloaders=loader, verbose=False)
        write_method_state(folder, method, complete=True)
        rows, state = read_rows(sample_files(folder, method)), method_state(folder, method)
        write_merged(folder, method, rows)
    class_names = data.class_names if data.multilabel else None
    return method_run_from_rows(
        method, rows, state, settings, alpha_calibration, multilabel=data.multilabel, class_names=class_names
    )


def lightning_strategy(strategy: str, processes: int) -> str | Strategy:
    """Lightning's ``strategy`` for ``--strategy``: ``auto`` with several processes is ``ddp_spawn`` (gloo on a
    CPU), which keeps ``evaluate`` an ordinary function call (decision 44); any other name is Lightning's."""
    if strategy != "auto" or processes == 1:
        return strategy
    return DDPStrategy(start_method="spawn", timeout=timedelta(minutes=30))


def check_devices(device: torch.device, devices: int) -> None:
    """Raise :class:`UsageError` when ``devices`` asks for more GPUs than this machine has."""
    if device.type == "cuda" and devices > torch.cuda.device_count():
        raise UsageError(f"--devices {devices}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def method_run_from_rows(
    method: str,
    rows: dict[str, Any],
    state: dict[str, Any],
    settings: EVETSettings,
    alpha_calibration: int = 32,
    *,
    multilabel: bool = False,
    class_names: Sequence[str] | None = None,
) -> MethodRun:
    """The :class:`MethodRun` of ``method`` from its merged rows and ``<method>.json`` (``state``); ``multilabel``:
    the rows are (image, class) pairs, and the run carries their per-class and macro means
    (:func:`~evet_lightning.evaluation.class_means.class_means`, class names from ``class_names``)."""
    if rows["index"].numel() == 0:
        raise RuntimeError(f"EVETCallback explained no sample of {method} in trainer.validate")
    calibration = state.get("calibration")
    folds = None if calibration is None else calibration.get("folds")
    metrics = metrics_from_rows(rows, folds=folds, calibration=alpha_calibration)
    if multilabel:  # as the callback logs it: every pair explained, finite or not
        metrics[f"{PREFIX}/num_pairs"] = float(rows["index"].numel())
    finite = rows["finite"]
    auto = settings.alpha == "auto"
    seconds = state.get("seconds_per_image")
    empty = torch.zeros(0, 1, 1)
    return MethodRun(
        method=method,
        metrics=metrics,
        targets=rows["target"][finite],
        clean_scores=rows["Y"][finite].float(),
        original_scores=rows["original/O"][finite].float(),
        evet_scores=rows["evet/O"][finite].float(),
        original_maps=empty,
        evet_maps=empty,
        seconds_per_image=None if seconds is None else float(seconds),
        alpha=metrics.get(f"{PREFIX}/alpha") if auto else float(settings.alpha),  # type: ignore[arg-type]
        alpha_choice=None
        if not auto or calibration is None
        else {key: calibration[key] for key in ("folds", "curve") if key in calibration},
        indices=rows["index"][finite],
        sample_alphas=rows["alpha"][finite],
        class_means=class_means(rows, class_names) if multilabel else None,
    )


def default_settings(model: EvaluationModel, data: EvaluationData) -> EVETSettings:
    """EVET's defaults with the data's ``normalization`` and the model's own target layer (when it names one)."""
    return EVETSettings(normalization=data.normalization, target_layers=model.target_layer)


def evaluation_callback(
    settings: EVETSettings,
    num_samples: int,
    *,
    target: Literal["label", "prediction"] = "label",
    deletion_insertion: bool = False,
    deletion_steps: int = DEFAULT_DELETION_STEPS,
    paper_stability: bool = True,
    alpha_calibration: int = 32,
) -> EVETCallback:
    """The callback :func:`run_method` attaches: ``settings`` (every EVET option), every sample explained, no
    images logged, the model's ``model`` attribute explained (the classifier inside :class:`EvaluationModule`),
    and, unless ``paper_stability=False``, the paper's stability protocol scored next to the default one.

    Raises:
        ValueError: an option the callback rejects.
    """
    options: dict[str, Any] = {}
    if deletion_insertion:  # passed only when on, so that it is the only option that needs the newer callback
        options.update(deletion_insertion=True, deletion_steps=deletion_steps)
    return make_callback(
        settings,
        num_samples=num_samples,
        log_images=0,
        target=target,
        prefix=PREFIX,
        model="model",
        paper_stability=paper_stability,  # Table 5 shows both stability protocols by default (decision 31)
        alpha_calibration=alpha_calibration,
        **options,
    )
