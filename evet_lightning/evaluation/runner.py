"""One method on the evaluation samples: ``trainer.validate`` with :class:`~evet_lightning.EVETCallback` attached."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from evet_lightning.callbacks import EVETCallback
from evet_lightning.data.batch import unpack_batch
from evet_lightning.evaluation.config import DEFAULT_DELETION_STEPS
from evet_lightning.evaluation.data import EvaluationData
from evet_lightning.evaluation.devices import accelerator_device, lightning_accelerator
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.evaluation.names import PREFIX
from evet_lightning.evaluation.records import MethodRun
from evet_lightning.evaluation.settings import make_callback
from evet_lightning.saliency.outputs import OutputTransform, logits_from_output
from evet_lightning.saliency.settings import EVETSettings

__all__ = [
    "EvaluationModule",
    "default_settings",
    "evaluation_callback",
    "keyboard_interrupts",
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

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Top-1 accuracy on the labelled samples of the batch (``val_acc``)."""
        images, labels, _ = unpack_batch(batch)
        if labels is None:
            return
        labels = labels.reshape(-1)
        known = labels >= 0
        if bool(known.any()):
            correct = (self(images[known]).argmax(dim=1) == labels[known]).float().mean()
            self.log("val_acc", correct, batch_size=int(known.sum()))


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
    keep_maps: int | None = None,
    deletion_insertion: bool = False,
    deletion_steps: int = DEFAULT_DELETION_STEPS,
    paper_stability: bool = True,
) -> MethodRun:
    """``trainer.validate`` over ``data`` with an :class:`EVETCallback` for ``method`` explaining every sample.

    ``settings``: every EVET setting of the callback but ``cam`` (which is ``method``); default
    :func:`default_settings`. Its ``target_layers`` are names in ``model.module``, which the callback explains
    (``model="model"`` of the wrapping :class:`EvaluationModule`).
    ``target``: the class explained, the sample's label or the model's prediction (see :class:`EVETCallback`).
    ``keep_maps``: keep the maps of the first ``keep_maps`` explained samples only (``None``: all), so that
    memory does not grow with the number of samples times the number of methods.
    ``deletion_insertion``: also log the deletion and insertion AUCs (``deletion_steps`` steps) of both maps.
    ``paper_stability``: also score the paper's stability protocol (see :func:`evaluation_callback`).

    Raises:
        UsageError: ``accelerator`` names a device this machine does not have.
        KeyboardInterrupt: Ctrl+C (see :func:`keyboard_interrupts`).
    """
    device = accelerator_device(accelerator)
    settings = (settings or default_settings(model, data)).replace(cam=method)
    callback = evaluation_callback(
        settings,
        len(data),
        target=target,
        deletion_insertion=deletion_insertion,
        deletion_steps=deletion_steps,
        paper_stability=paper_stability,
    )
    loader = DataLoader(data.dataset, batch_size=batch_size, shuffle=False)
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=lightning_accelerator(device),
            devices=1,
            logger=False,
            callbacks=[callback],
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            default_root_dir=None if root_dir is None else os.fspath(root_dir),
        )
        module = EvaluationModule(model.module, settings.output_transform)
        with keyboard_interrupts():
            results = trainer.validate(module, dataloaders=loader, verbose=False)
    metrics = {key: float(value) for key, value in results[0].items()}
    seconds = callback.last_timing.get("seconds_per_image")
    return MethodRun(
        method=method,
        metrics=metrics,
        seconds_per_image=None if seconds is None else float(seconds),
        **_alpha_outputs(settings, metrics, callback),
        **_per_sample_outputs(callback, keep_maps),
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
        **options,
    )


def _alpha_outputs(settings: EVETSettings, metrics: dict[str, float], callback: EVETCallback) -> dict[str, Any]:
    """The alpha of the run's EVET maps and, for ``alpha="auto"``, how it was chosen (``MethodRun.alpha_choice``)."""
    if settings.alpha != "auto":
        return {"alpha": float(settings.alpha), "alpha_choice": None}
    choice = callback.last_alpha
    if choice is None:
        return {"alpha": metrics.get(f"{PREFIX}/alpha"), "alpha_choice": None}
    curve = choice.curve
    energy, stability = curve.energy_pointing_game, curve.stability_index

    def floats(values: Tensor) -> list[float]:
        return [float(value) for value in values.reshape(-1).tolist()]

    return {
        "alpha": metrics.get(f"{PREFIX}/alpha", choice.mean_alpha),
        "alpha_choice": {
            "folds": [float(alpha) for alpha in choice.alphas],
            "curve": {
                "alphas": floats(curve.alphas),
                "average_drop": floats(curve.average_drop),
                "increase_in_confidence": floats(curve.increase_in_confidence),
                "energy_pointing_game": None if energy is None else floats(energy),
                "stability_index": None if stability is None else floats(stability),
                "original": curve.original_means(),
                "num_samples": int(curve.num_samples),
            },
        },
    }


def _per_sample_outputs(callback: EVETCallback, keep_maps: int | None = None) -> dict[str, Any]:
    """The per-sample scores and maps of the callback's last explained epoch, explained samples only.

    ``callback.last_results`` holds one :class:`~evet_lightning.EVETResult` per chunk of samples, on the CPU;
    samples with a non-finite image or logits (``finite`` False) were skipped by the metrics and are left out
    here too, so the scores line up with the logged values.
    """
    results = callback.last_results
    if not results:
        raise RuntimeError("EVETCallback explained no sample in trainer.validate")
    finite = torch.cat([result.finite for result in results])
    evet_scores = [result.saliency_scores for result in results]
    if any(scores is None for scores in evet_scores):
        raise RuntimeError("EVETCallback kept no scores of its EVET maps (saliency_scores)")
    maps = slice(None) if keep_maps is None else slice(0, keep_maps)
    return {
        "targets": torch.cat([result.targets for result in results])[finite],
        "clean_scores": torch.cat([result.clean_scores for result in results])[finite],
        "original_scores": torch.cat([result.view_scores[0] for result in results])[finite],
        "evet_scores": torch.cat(evet_scores)[finite],  # type: ignore[arg-type]
        "original_maps": torch.cat([result.original for result in results])[finite][maps].clone(),
        "evet_maps": torch.cat([result.saliency for result in results])[finite][maps].clone(),
    }
