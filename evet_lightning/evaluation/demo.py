"""``evet-lightning demo``: train a small CNN on synthetic shapes with :class:`~evet_lightning.EVETCallback` attached.

Finished work is never lost to a later failure: ``metrics.json`` is rewritten after every validation epoch, and
at the end the metrics, the checkpoint and the plot are written before the logger is closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from evet_lightning.callbacks import EVETCallback
from evet_lightning.callbacks.explaining import SampleView
from evet_lightning.data.synthetic import SHAPE_NAMES
from evet_lightning.evaluation.config import DemoConfig
from evet_lightning.evaluation.devices import check_accelerator
from evet_lightning.evaluation.errors import Interrupted, OutputError, UsageError
from evet_lightning.evaluation.names import METRIC_NAMES, PREFIX
from evet_lightning.evaluation.outputs import check_output, prepare_output, write_text, writing
from evet_lightning.evaluation.runner import keyboard_interrupts, quiet_lightning
from evet_lightning.evaluation.settings import make_callback, settings_from_config
from evet_lightning.saliency.settings import EVETSettings
from evet_lightning.visualization.heatmaps import heatmap_sheet, write_png

__all__ = ["DEMO_EPOCH_KEYS", "DemoResult", "epoch_table_markdown", "last_epoch_intervals", "run_demo"]


@dataclass
class DemoResult:
    """The per-epoch history and the files ``run_demo`` wrote."""

    history: list[dict[str, float]]
    files: dict[str, str]
    seconds: float


#: Keys of each ``metrics.json`` epoch record besides the callback's ``evet/...`` keys.
DEMO_EPOCH_KEYS = ("epoch", "global_step", "val_acc", "val_loss", "train_loss")


class _EpochHistory(pl.Callback):
    """Records every logged scalar after each (non-sanity) validation run, rewrites ``metrics.json`` with the
    epochs so far, and renders the callback's heatmaps."""

    def __init__(
        self,
        evet_callback: EVETCallback,
        images: Tensor,
        folder: Path,
        rows: int,
        settings: dict[str, Any],
        start: float,
    ) -> None:
        self.evet_callback = evet_callback
        self.images = images
        self.folder = folder
        self.rows = rows
        self.settings = settings
        self.start = start
        self.history: list[dict[str, float]] = []

    def write_metrics(self, complete: bool) -> Path:
        """``metrics.json``: the settings, the seconds so far, whether training finished, and the epochs."""
        payload = {
            "config": self.settings,
            "seconds": time.perf_counter() - self.start,
            "complete": complete,
            "epochs": self.history,
        }
        return write_text(self.folder / "metrics.json", json.dumps(payload, indent=2) + "\n")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record: dict[str, float] = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                record[key] = float(value)
        self.history.append(record)
        if not trainer.is_global_zero:
            return
        self.write_metrics(complete=False)
        results = self.evet_callback.last_results
        samples = self.evet_callback.last_samples
        if self.evet_callback.task == "multilabel" and samples is not None and self.rows > 0:
            self._write_pair_sheet(trainer, list(samples.first(self.rows)))
        elif results and self.rows > 0:

            def first(name: str) -> Tensor:
                return torch.cat([getattr(result, name) for result in results])[: self.rows]

            original = first("original")
            sheet = heatmap_sheet(
                self.images[: original.shape[0]],
                original,
                first("saliency"),
                method=self.evet_callback.cam_name,
                targets=first("targets").tolist(),
                class_names=list(SHAPE_NAMES),
                clean_scores=first("clean_scores"),
                original_scores=torch.cat([result.view_scores[0] for result in results])[: self.rows],
                evet_scores=first("saliency_scores"),
            )
            path = self.folder / "heatmaps" / f"epoch_{trainer.current_epoch:03d}.png"
            with writing(path):
                write_png(sheet, path)

    def _write_pair_sheet(self, trainer: pl.Trainer, views: list[SampleView]) -> None:
        """The sheet of the first (image, class) pairs of a multi-label run: each row an image and one class."""
        if not views:
            return
        sheet = heatmap_sheet(
            torch.stack([view.image for view in views]),
            torch.stack([view.original for view in views]),
            torch.stack([view.saliency for view in views]),
            method=self.evet_callback.cam_name,
            targets=[view.target for view in views],
            class_names=list(SHAPE_NAMES),
            clean_scores=torch.tensor([view.clean_score for view in views]),
            original_scores=torch.tensor([view.original_score for view in views]),
            evet_scores=torch.tensor([view.evet_score for view in views]),
        )
        path = self.folder / "heatmaps" / f"epoch_{trainer.current_epoch:03d}.png"
        with writing(path):
            write_png(sheet, path)


def _demo_logger(config: DemoConfig, folder: Path) -> Any:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    if config.logger == "csv":
        return CSVLogger(save_dir=os.fspath(folder), name="csv")
    if config.logger == "tensorboard":
        try:
            return TensorBoardLogger(save_dir=os.fspath(folder), name="tensorboard")
        except ModuleNotFoundError as error:
            raise UsageError(f"--logger tensorboard needs tensorboard: {error}") from None
    if config.logger != "wandb":
        raise UsageError(f"--logger must be wandb, tensorboard or csv, not {config.logger!r}")
    if config.wandb_online:
        import wandb

        if not wandb.login(prompt=False):  # checks for stored credentials, never prompts
            raise UsageError("--wandb-online needs a W&B login: run `wandb login` first (or drop --wandb-online)")
    else:
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = WandbLogger(
        project="evet-lightning", name="demo", save_dir=os.fspath(folder), offline=not config.wandb_online
    )
    # Lightning passes `anonymous` to `wandb.init` (None unless asked for); W&B dropped the setting and warns
    # ("The anonymous setting has no effect") whatever its value, so it is not passed at all.
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict):
        init.pop("anonymous", None)
    return logger


def _check_demo_options(config: DemoConfig) -> EVETSettings:
    """Options that do not apply, invalid EVET settings, a device that is not there and an unwritable output are
    errors before any work (and before the output folder is created); returns the callback's EVET settings."""
    if config.wandb_online and config.logger != "wandb":
        raise UsageError(f"--wandb-online only applies to --logger wandb, not to --logger {config.logger}")
    settings = settings_from_config(config, cam=config.cam, task=config.task)
    check_accelerator(config.accelerator)
    check_output(config.output)
    return settings


def run_demo(config: DemoConfig) -> DemoResult:
    """Train :class:`ShapesClassifier` on synthetic shapes with :class:`EVETCallback` attached; write the results.
    With ``config.task="multilabel"``: :class:`MultiLabelShapesClassifier` on multi-object shapes, the callback
    explaining every positive (image, class) pair (decision 61).

    Writes to ``config.output``: ``metrics.json`` (settings, ``complete`` and one record per epoch: ``epoch``,
    ``global_step``, ``val_acc``, ``val_loss``, ``train_loss`` (last step) and every ``evet/...`` key the
    callback logged; rewritten after every epoch), ``metrics.png`` (every metric over the epochs, original vs
    EVET), ``heatmaps/epoch_XXX.png`` (image | original | EVET for the first samples the callback explained),
    ``model.ckpt`` (``evaluate --model`` loads it) and the logger's folder (``wandb/`` offline run,
    ``tensorboard/`` or ``csv/``). With W&B or TensorBoard the callback also logs its heatmaps there.

    Raises:
        UsageError: an option that does not apply, an accelerator this machine lacks, an output folder that
            cannot be written, or an invalid setting; all before training starts.
        OutputError: a file cannot be written during or after training; the files written before are kept.
        Interrupted: Ctrl+C during training; ``metrics.json`` keeps the finished epochs (``"complete": false``).
    """
    from evet_lightning.data import MultiObjectShapesDataModule, SyntheticShapesDataModule
    from evet_lightning.models import MultiLabelShapesClassifier, ShapesClassifier
    from evet_lightning.visualization.plots import plot_metric_history

    start = time.perf_counter()
    evet_settings = _check_demo_options(config)
    folder = prepare_output(config.output)
    logger = _demo_logger(config, folder)
    try:
        pl.seed_everything(config.seed, verbose=False)
        try:
            # --task multilabel: multi-object shapes, BCE, every positive class a pair (decision 61)
            data_class = MultiObjectShapesDataModule if config.task == "multilabel" else SyntheticShapesDataModule
            datamodule = data_class(
                train_samples=config.train_samples,
                val_samples=config.val_samples,
                image_size=config.image_size,
                batch_size=config.batch_size,
                seed=config.seed,
            )
            model_class = MultiLabelShapesClassifier if config.task == "multilabel" else ShapesClassifier
            classifier = model_class(width=config.width)
            evet_callback = make_callback(
                evet_settings, num_samples=config.num_samples, log_images=min(8, config.num_samples)
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
        rows = min(4, config.num_samples, config.val_samples)
        images = torch.stack([datamodule.val_set[index][0] for index in range(rows)])
        settings = {key: value for key, value in asdict(config).items() if key != "progress"}
        history = _EpochHistory(evet_callback, images, folder, rows, settings, start)
        with quiet_lightning():
            trainer = pl.Trainer(
                max_epochs=config.max_epochs,
                accelerator=config.accelerator,
                devices=1,
                logger=logger,
                callbacks=[evet_callback, history],
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=config.progress,
                default_root_dir=os.fspath(folder),
                log_every_n_steps=1,
            )
            try:
                with keyboard_interrupts():
                    trainer.fit(classifier, datamodule=datamodule)
            except KeyboardInterrupt:
                raise Interrupted(_kept(history, config.max_epochs)) from None
            except OutputError as error:
                raise OutputError(f"{error}; {_kept(history, config.max_epochs)}") from None
            except OSError as error:  # a file the callback or the logger writes in the output folder
                if not _inside(error.filename, folder):
                    raise
                reason = error.strerror or str(error)
                kept = _kept(history, config.max_epochs)
                raise OutputError(f"cannot write {os.fspath(error.filename)}: {reason}; {kept}") from None
        files = {"metrics": os.fspath(history.write_metrics(complete=True))}
        files["checkpoint"] = os.fspath(folder / "model.ckpt")
        with writing(files["checkpoint"]):
            trainer.save_checkpoint(files["checkpoint"], weights_only=False)
        with writing(folder / "metrics.png"):
            files["plot"] = os.fspath(plot_metric_history(history.history, folder / "metrics.png"))
        files["heatmaps"] = os.fspath(folder / "heatmaps")
        if config.logger == "wandb":
            files["wandb"] = os.fspath(Path(logger.experiment.dir).parent)
        else:
            files[config.logger] = os.fspath(logger.log_dir)
    finally:
        if config.logger == "wandb":
            import wandb

            wandb.finish()
    return DemoResult(history=history.history, files=files, seconds=time.perf_counter() - start)


def _inside(path: object, folder: Path) -> bool:
    """Whether ``path`` (an ``OSError``'s ``filename``, maybe ``None``) is inside ``folder``."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(folder)))


def _kept(history: _EpochHistory, max_epochs: int) -> str:
    """What an interrupted or failed training left: ``metrics.json`` with the finished epochs, not complete."""
    with contextlib.suppress(OutputError):  # the epochs so far, also when none finished
        history.write_metrics(complete=False)
    done = len(history.history)
    return (
        f'kept {done} finished epoch{"" if done == 1 else "s"} of {max_epochs} in {history.folder} ("complete": false)'
    )


#: The validation scores the per-epoch table shows, when logged: the multi-class demo's accuracy, the multi-label
#: demo's macro F1 at 0.5 and mAP (torchmetrics' MultilabelF1Score, MultilabelAveragePrecision).
_VALIDATION_COLUMNS = (("val_acc", "val acc (%)"), ("val_f1", "val F1 (%)"), ("val_map", "val mAP (%)"))


def epoch_table_markdown(history: Sequence[Mapping[str, float]], prefix: str = PREFIX) -> str:
    """Per-epoch markdown table: validation accuracy (multi-label: macro F1 and mAP), each metric as
    ``original -> EVET`` (in %), the win, with ``alpha="auto"`` the alpha the callback chose (``{prefix}/alpha``)
    and, for a multi-label run, the (image, class) pairs explained (``{prefix}/num_pairs``)."""
    names = [name for name in METRIC_NAMES if any(f"{prefix}/original/{name}" in record for record in history)]
    chosen = any(f"{prefix}/alpha" in record for record in history)
    pairs = any(f"{prefix}/num_pairs" in record for record in history)
    scores = [(key, label) for key, label in _VALIDATION_COLUMNS if any(key in record for record in history)]
    scores = scores or [_VALIDATION_COLUMNS[0]]
    arrows = {"average_drop": "↓"}
    units = {"stability_index": ""}
    header = [
        "epoch",
        *(label for _, label in scores),
        *(["pairs"] if pairs else []),
        *(f"{name.replace('_', ' ')}{units.get(name, ' (%)')} {arrows.get(name, '↑')}" for name in names),
        "win EVET>orig (%)",
        *(["alpha (chosen)"] if chosen else []),
    ]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---:"] * len(header)) + " |"]
    for record in history:
        cells = [str(int(record["epoch"])), *(_format_percent(record.get(key)) for key, _ in scores)]
        if pairs:
            count = record.get(f"{prefix}/num_pairs")
            cells.append("-" if count is None else str(int(count)))
        for name in names:
            original, enhanced = record.get(f"{prefix}/original/{name}"), record.get(f"{prefix}/evet/{name}")
            show = _format_fraction if name == "stability_index" else _format_percent
            cells.append(f"{show(original)} -> {show(enhanced)}")
        cells.append(_format_percent(record.get(f"{prefix}/win")))
        if chosen:
            alpha = record.get(f"{prefix}/alpha")
            cells.append("-" if alpha is None else f"{alpha:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format_percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def _format_fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


#: The metrics :func:`last_epoch_intervals` reports: faithfulness, localization, stability (percent or not).
_INTERVAL_METRICS = (("average_drop", True, "↓"), ("energy_pointing_game", True, "↑"), ("stability_index", False, "↑"))


def last_epoch_intervals(history: Sequence[Mapping[str, float]], prefix: str = PREFIX) -> str:
    """The last epoch's average drop, energy pointing game and stability index, original -> EVET, with the paired
    difference (EVET minus original) and its 95% interval the callback logged (``{prefix}/diff/{name}``, ``_low``,
    ``_high``, decision 31): one line each; a metric without a logged value is left out."""
    if not history:
        return ""
    record = history[-1]
    lines = []
    for name, percent, arrow in _INTERVAL_METRICS:
        original, enhanced = record.get(f"{prefix}/original/{name}"), record.get(f"{prefix}/evet/{name}")
        if original is None or enhanced is None:
            continue
        scale, digits, unit = (100.0, 1, " (%)") if percent else (1.0, 3, "")
        label = f"{name.replace('_', ' ')}{unit} {arrow}"
        line = f"  {label}: {scale * original:.{digits}f} -> {scale * enhanced:.{digits}f}"
        difference = [record.get(f"{prefix}/diff/{name}{end}") for end in ("", "_low", "_high")]
        if all(value is not None for value in difference):
            mean, low, high = (scale * value for value in difference)  # type: ignore[operator]
            line += f", EVET - original {mean:+.{digits}f} [95% interval {low:+.{digits}f}, {high:+.{digits}f}]"
        lines.append(line)
    return "\n".join(lines)
