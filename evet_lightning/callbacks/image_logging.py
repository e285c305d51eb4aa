"""Heatmaps, curves and per-sample tables of the explained samples to W&B, TensorBoard, or files under the
log directory."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from evet_lightning.callbacks.alpha_selection import FoldChoice
from evet_lightning.callbacks.explaining import ExplainedSamples, SampleView
from evet_lightning.functional.perturbation import Normalization
from evet_lightning.visualization.curves import alpha_curve_rows, render_alpha_curve, render_curve_panels
from evet_lightning.visualization.heatmaps import (
    captions,
    display_name,
    heatmap_panel,
    heatmap_sheet,
    panel_scale,
    write_png,
)

__all__ = [
    "HeatmapStyle",
    "heatmap_file",
    "log_alpha_curve",
    "log_curves",
    "log_epoch",
    "log_figure",
    "log_heatmaps",
    "log_samples",
    "logger_classes",
    "sample_columns",
]

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
    wandb_loggers, tensorboard_loggers, directory = _loggers(trainer)
    if not trainer.is_global_zero or len(samples) == 0:
        return
    sheets, texts = style.render(samples, count)
    step = trainer.global_step
    for logger in wandb_loggers:
        _guarded(_to_wandb, logger, key, sheets, texts, step)
    for logger in tensorboard_loggers:
        _guarded(_to_tensorboard, logger, key, sheets, texts, step)
    if directory is not None:
        for index, sheet in enumerate(sheets):
            write_png(sheet, os.path.join(directory, heatmap_file(trainer, index)))
        log.info("EVETCallback: wrote %d heatmaps to %s", len(sheets), os.path.join(directory, "evet_heatmaps"))


def heatmap_file(trainer: pl.Trainer, index: int) -> str:
    """The PNG file of the ``index``-th heatmap of this epoch, relative to the log directory."""
    folder = os.path.join("evet_heatmaps", f"epoch_{trainer.current_epoch:03d}")
    return os.path.join(folder, f"step_{trainer.global_step:06d}_sample_{index:02d}.png")


def _loggers(trainer: pl.Trainer) -> tuple[list[Any], list[Any], str | None]:
    """``(W&B loggers, TensorBoard loggers, folder for PNG files or None)``; a collective call (every process)."""
    wandb_loggers, tensorboard_loggers = _image_loggers(trainer)
    # `trainer.log_dir` broadcasts: every process must ask for it, or none.
    directory = None if wandb_loggers or tensorboard_loggers else trainer.log_dir or trainer.default_root_dir
    return wandb_loggers, tensorboard_loggers, directory


def _image_loggers(trainer: pl.Trainer) -> tuple[list[Any], list[Any]]:
    """``(W&B loggers, TensorBoard loggers)`` of the trainer."""
    loggers: list[Any] = list(trainer.loggers)
    wandb_loggers = [logger for logger in loggers if isinstance(logger, logger_classes("WandbLogger"))]
    tensorboard_loggers = [logger for logger in loggers if isinstance(logger, logger_classes("TensorBoardLogger"))]
    return wandb_loggers, tensorboard_loggers


def log_figure(trainer: pl.Trainer, key: str, image: Tensor, file_name: str, caption: str) -> None:
    """Rank zero logs one rendered figure to W&B and TensorBoard, or writes ``<log dir>/<file_name>``.
    Every process must call this."""
    wandb_loggers, tensorboard_loggers, directory = _loggers(trainer)
    if not trainer.is_global_zero:
        return
    step = trainer.global_step
    for logger in wandb_loggers:
        _guarded(_to_wandb, logger, key, [image], [caption], step)
    for logger in tensorboard_loggers:
        _guarded(_to_tensorboard, logger, key, [image], [caption], step)
    if directory is not None:
        write_png(image, os.path.join(directory, file_name))


def log_alpha_curve(trainer: pl.Trainer, key: str, choice: FoldChoice) -> None:
    """The epoch's per-alpha curve of ``alpha="auto"``: a W&B table (``{key}_table``) and a plot (W&B,
    TensorBoard, or a PNG beside the heatmaps). Every process must call this (only rank zero writes)."""
    caption = f"alpha chosen out of fold: {choice.alphas[0]:g} (fold 0), {choice.alphas[1]:g} (fold 1)"
    image = render_alpha_curve(choice.curve, choice.alphas, caption) if trainer.is_global_zero else torch.zeros(0)
    file_name = os.path.join(
        "evet_alpha_curves", f"epoch_{trainer.current_epoch:03d}_step_{trainer.global_step:06d}.png"
    )
    log_figure(trainer, key, image, file_name, caption)
    if not trainer.is_global_zero:
        return
    columns = [
        "alpha",
        "average_drop",
        "increase_in_confidence",
        "energy_pointing_game",
        "stability_index",
        "folds_using_it",
    ]
    data = [[*row, sum(alpha == row[0] for alpha in choice.alphas)] for row in alpha_curve_rows(choice.curve)]
    for logger in trainer.loggers:
        if isinstance(logger, logger_classes("WandbLogger")):
            _guarded(_table_to_wandb, logger, f"{key}_table", columns, data, trainer.global_step)


def log_curves(trainer: pl.Trainer, key: str, mean_curves: dict[str, Tensor], method: str) -> None:
    """The epoch's mean deletion and insertion curves, original against EVET maps, side by side: a W&B or
    TensorBoard image, or ``<log dir>/evet_curves/epoch_XXX_step_XXXXXX.png``. Every process must call this.

    ``mean_curves`` is keyed like the metrics without the prefix (``"original/deletion_auc"``, ...).
    """
    name = display_name(method)
    labels = {"original": name, "evet": f"EVET-{name}"}

    def panel(curve: str) -> dict[str, Tensor]:
        return {labels[variant]: mean_curves[f"{variant}/{curve}_auc"] for variant in ("original", "evet")}

    panels = {"deletion (lower is better)": panel("deletion"), "insertion (higher is better)": panel("insertion")}
    xlabels = dict(zip(panels, ("fraction of pixels deleted", "fraction of pixels inserted"), strict=True))
    caption = f"mean deletion and insertion curves, {name} vs EVET-{name}"
    image = render_curve_panels(panels, caption, xlabels=xlabels) if trainer.is_global_zero else torch.zeros(0)
    file_name = os.path.join("evet_curves", f"epoch_{trainer.current_epoch:03d}_step_{trainer.global_step:06d}.png")
    log_figure(trainer, key, image, file_name, caption)


def sample_columns(style: HeatmapStyle, auc_keys: Sequence[str], images: bool) -> list[str]:
    """The columns of the per-sample table: ``sample`` (the position in the single-process order), the image and
    both overlays (W&B only), ``class`` (and ``class_name`` with class names), ``Y``, ``O`` of each map, then the
    deletion/insertion AUCs when computed."""
    columns = ["sample", *(("image", "original", "evet") if images else ()), "class"]
    columns += ["class_name"] if style.class_names is not None else []
    return [*columns, "Y", "original/O", "evet/O", *auc_keys]


def log_samples(trainer: pl.Trainer, samples: ExplainedSamples, key: str, style: HeatmapStyle, heatmaps: int) -> None:
    """Every explained sample of rank zero, one row each (sort it to find the worst explanations): a W&B table
    (``key``, with the image and both overlays as ``wandb.Image`` cells for the first rows, whose maps were kept,
    and empty cells after them, decision 38) for each W&B logger; without one,
    ``<log dir>/evet_samples/epoch_XXX_step_XXXXXX.csv`` with the same columns minus the images, plus
    ``heatmap_png``, the file of the sample's heatmap (relative to the log directory) where :func:`log_heatmaps`
    wrote one (its first ``heatmaps`` samples, without W&B and TensorBoard). Every process must call this."""
    wandb_loggers, tensorboard_loggers = _image_loggers(trainer)
    # `trainer.log_dir` broadcasts: every process must ask for it, or none (the loggers are the same everywhere).
    directory = None if wandb_loggers else trainer.log_dir or trainer.default_root_dir
    if not trainer.is_global_zero or len(samples) == 0:
        return
    views = list(samples.first(len(samples)))  # the samples whose maps were kept
    auc_keys = list(samples.aucs)
    rows = _rows(samples, style, auc_keys)
    for logger in wandb_loggers:
        _guarded(_samples_to_wandb, logger, key, views, rows, style, auc_keys, trainer.global_step)
    if directory is not None:
        wrote_pngs = not tensorboard_loggers  # log_heatmaps wrote PNG files (W&B is ruled out here)
        files = [heatmap_file(trainer, index) if wrote_pngs and index < heatmaps else "" for index in range(len(rows))]
        path = os.path.join(
            directory, "evet_samples", f"epoch_{trainer.current_epoch:03d}_step_{trainer.global_step:06d}.csv"
        )
        columns = [*sample_columns(style, auc_keys, images=False), "heatmap_png"]
        _guarded(_write_csv, path, columns, [[*row, file] for row, file in zip(rows, files, strict=True)])


def _rows(samples: ExplainedSamples, style: HeatmapStyle, auc_keys: Sequence[str]) -> list[list[Any]]:
    """The table rows without the images, one per real sample: sample, class (and name), Y, O of each map, the
    AUCs (NaN: not finite)."""
    real = ~samples.padding_mask
    columns = [
        samples.positions[real].round().long().tolist(),
        samples.targets[real].tolist(),
        samples.clean_scores[real].tolist(),
        samples.original_scores[real].tolist(),
        samples.evet_scores[real].tolist(),
        *(samples.aucs[key][real].tolist() for key in auc_keys),
    ]
    rows = []
    for position, target, *values in zip(*columns, strict=True):
        row: list[Any] = [position, target]
        if style.class_names is not None:
            row.append(style.class_names[target] if 0 <= target < len(style.class_names) else "")
        rows.append(row + values)
    return rows


def _samples_to_wandb(
    logger: Any,
    key: str,
    views: list[SampleView],
    rows: list[list[Any]],
    style: HeatmapStyle,
    auc_keys: list[str],
    step: int,
) -> None:
    import wandb

    data = []
    for view, row in zip(views, rows, strict=False):
        height, width = view.image.shape[-2:]
        panel = heatmap_panel(
            view.image.unsqueeze(0),
            view.original.unsqueeze(0),
            view.saliency.unsqueeze(0),
            style.normalization,
            scale=panel_scale(height, width),
        )[0]
        image, original, evet = (wandb.Image(part.contiguous()) for part in panel.chunk(3, dim=-1))
        data.append([row[0], image, original, evet, *row[1:]])
    data += [[row[0], None, None, None, *row[1:]] for row in rows[len(views) :]]
    logger.log_table(key=key, columns=sample_columns(style, auc_keys, images=True), data=data, step=step)


def _write_csv(path: str, columns: list[str], rows: list[list[Any]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    log.info("EVETCallback: wrote %d samples to %s", len(rows), path)


def _table_to_wandb(logger: Any, key: str, columns: list[str], data: list[list[Any]], step: int) -> None:
    logger.log_table(key=key, columns=columns, data=data, step=step)


def _to_wandb(logger: Any, key: str, sheets: list[Tensor], texts: list[str], step: int) -> None:
    logger.log_image(key=key, images=sheets, caption=texts, step=step)


def _to_tensorboard(logger: Any, key: str, sheets: list[Tensor], texts: list[str], step: int) -> None:
    """One image tag per sample, ``{key}/<i>``, with its caption as a text entry under the same tag."""
    writer = logger.experiment
    for index, (sheet, text) in enumerate(zip(sheets, texts, strict=True)):
        writer.add_image(f"{key}/{index}", sheet, global_step=step)
        writer.add_text(f"{key}/{index}", text, global_step=step)


def _guarded(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call a logger (or write a file); a failure costs that output (with a warning), never the metrics or the run."""
    try:
        function(*args, **kwargs)
    except Exception as error:
        what = function.__name__.strip("_").replace("_", " ")
        rank_zero_warn(f"EVETCallback: logging failed and was skipped ({what}): {type(error).__name__}: {error}")


def log_epoch(
    trainer: pl.Trainer,
    prefix: str,
    samples: ExplainedSamples,
    log_images: int,
    style: HeatmapStyle,
    alpha_choice: FoldChoice | None,
    mean_curves: dict[str, Tensor],
) -> None:
    """Everything an explained epoch logs besides its values: the heatmaps, and (``log_images > 0``) the
    per-sample table, the alpha curve (``alpha="auto"``) and the mean deletion/insertion curves (when computed)."""
    log_heatmaps(trainer, samples, f"{prefix}/heatmaps", log_images, style)
    if log_images > 0:
        log_samples(trainer, samples, f"{prefix}/samples", style, log_images)
        if alpha_choice is not None:
            log_alpha_curve(trainer, f"{prefix}/alpha_curve", alpha_choice)
        if mean_curves:
            log_curves(trainer, f"{prefix}/deletion_insertion", mean_curves, style.method)
