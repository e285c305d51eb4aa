"""Heatmaps of the explained samples to W&B, TensorBoard, or PNG files under the log directory."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from evet_lightning.callbacks.explaining import ExplainedSamples
from evet_lightning.functional.perturbation import Normalization
from evet_lightning.visualization.heatmaps import captions, heatmap_sheet, write_png

__all__ = ["HeatmapStyle", "log_heatmaps", "logger_classes"]

log = logging.getLogger(__name__)


def logger_classes(name: str) -> tuple[type, ...]:
    """A logger class from both Lightning namespaces (``pytorch_lightning`` and ``lightning.pytorch``)."""
    import pytorch_lightning.loggers as pl_loggers

    classes: list[type] = [getattr(pl_loggers, name)]
    try:
        import lightning.pytorch.loggers as lightning_loggers

        classes.append(getattr(lightning_loggers, name))
    except ImportError:
        pass
    return tuple(classes)


@dataclass(frozen=True)
class HeatmapStyle:
    """How the callback draws its heatmaps."""

    method: str
    """The saliency method's name (``"GradCAM"``), for the column titles."""
    class_names: Sequence[str] | None
    """Names of the classes by index, for the row labels; ``None`` shows indices."""
    normalization: Normalization
    """``(mean, std)`` of the images, to show them in pixel colours."""

    def render(self, samples: ExplainedSamples, count: int) -> tuple[list[Tensor], list[str]]:
        """One labelled sheet (one row) and one caption for each of the first ``count`` samples."""
        views = list(samples.first(count))
        sheets = [
            heatmap_sheet(
                view.image.unsqueeze(0),
                view.original.unsqueeze(0),
                view.saliency.unsqueeze(0),
                self.normalization,
                method=self.method,
                targets=[view.target],
                class_names=self.class_names,
                clean_scores=[view.clean_score],
                original_scores=[view.original_score],
                evet_scores=[view.evet_score],
            )
            for view in views
        ]
        texts = captions(
            [view.target for view in views],
            [view.clean_score for view in views],
            [view.original_score for view in views],
            [view.evet_score for view in views],
            method=self.method,
            class_names=self.class_names,
        )
        return sheets, texts


def log_heatmaps(trainer: pl.Trainer, samples: ExplainedSamples, key: str, count: int, style: HeatmapStyle) -> None:
    """Rank zero logs the first ``count`` samples' sheets to every W&B and TensorBoard logger, or, with neither,
    writes them as ``<log dir>/evet_heatmaps/epoch_XXX/step_XXXXXX_sample_XX.png``. Every process must call this
    (finding the log directory is a collective call). A failing logger costs its images, with a warning."""
    if count == 0:
        return
    loggers: list[Any] = list(trainer.loggers)
    wandb_loggers = [logger for logger in loggers if isinstance(logger, logger_classes("WandbLogger"))]
    tensorboard_loggers = [logger for logger in loggers if isinstance(logger, logger_classes("TensorBoardLogger"))]
    # `trainer.log_dir` broadcasts: every process must ask for it, or none.
    directory = None if wandb_loggers or tensorboard_loggers else trainer.log_dir or trainer.default_root_dir
    if not trainer.is_global_zero or len(samples) == 0:
        return
    sheets, texts = style.render(samples, count)
    step = trainer.global_step
    for logger in wandb_loggers:
        _guarded(_to_wandb, logger, key, sheets, texts, step)
    for logger in tensorboard_loggers:
        _guarded(_to_tensorboard, logger, key, sheets, texts, step)
    if directory is not None:
        folder = os.path.join(directory, "evet_heatmaps", f"epoch_{trainer.current_epoch:03d}")
        for index, sheet in enumerate(sheets):
            write_png(sheet, os.path.join(folder, f"step_{step:06d}_sample_{index:02d}.png"))
        log.info("EVETCallback: wrote %d heatmaps to %s", len(sheets), folder)


def _to_wandb(logger: Any, key: str, sheets: list[Tensor], texts: list[str], step: int) -> None:
    logger.log_image(key=key, images=sheets, caption=texts, step=step)


def _to_tensorboard(logger: Any, key: str, sheets: list[Tensor], texts: list[str], step: int) -> None:
    """One image tag per sample, ``{key}/<i>``, with its caption as a text entry under the same tag."""
    writer = logger.experiment
    for index, (sheet, text) in enumerate(zip(sheets, texts, strict=True)):
        writer.add_image(f"{key}/{index}", sheet, global_step=step)
        writer.add_text(f"{key}/{index}", text, global_step=step)


def _guarded(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call a logger; a failing logger costs its images (with a warning), never the metrics or the run."""
    try:
        function(*args, **kwargs)
    except Exception as error:
        rank_zero_warn(f"EVETCallback: logging heatmaps failed and was skipped: {type(error).__name__}: {error}")
