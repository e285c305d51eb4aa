"""Cost of EVETCallback, measured side by side in one run (issue #4).

Prints a table of seconds and ratios:

(a) the callback's work (streamed in the validation batch hooks, then the epoch end) at its defaults (32 samples,
    paper transforms, one stability transform) on SmallCNN at 64x64, against the same work written by hand:
    ``EVET(images, labels, score_saliency=True)`` on the same samples, the stability run (``EVET`` on
    ``Rotate(5)(x)``: view 0 is the original map) and the same metric updates and computes (target: ratio <= 1.2).
    The row "EVET + faithfulness metrics only" shows what the stability index adds on top of EVET alone.
(b) one training epoch of the demo configuration (``SyntheticShapesDataModule()`` defaults: 2048 training and
    256 validation images at 64x64, ``ShapesClassifier()``), with and without ``EVETCallback()``.

Every time is the fastest of several interleaved runs (after a warm-up): on a shared machine, contention only
adds time, so the minimum is the steadiest estimate of the work itself.

Usage: ``python benchmarks/bench_callback.py [--repeats 5] [--fit-repeats 2] [--threads N] [--skip-fit]
[--train-samples 2048]``
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from evet_lightning import EVET, EVETCallback
from evet_lightning.data import SyntheticShapes, SyntheticShapesDataModule
from evet_lightning.functional.fusion import blend
from evet_lightning.metrics import (
    AverageDifference,
    AverageDrop,
    EnergyPointingGame,
    IncreaseInConfidence,
    StabilityIndex,
    Win,
)
from evet_lightning.models import ShapesClassifier
from evet_lightning.saliency.transforms import Rotate

NUM_SAMPLES = 32
CALLBACK_ROW = "(a) callback work (batch ends + epoch end), defaults"


def by_hand(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, stability: bool
) -> None:
    """What the callback computes, written directly against the engine and the metrics."""
    evet = EVET(model)
    metrics: dict[str, Any] = {
        "drop_o": AverageDrop(),
        "drop_e": AverageDrop(),
        "inc_o": IncreaseInConfidence(),
        "inc_e": IncreaseInConfidence(),
        "epg_o": EnergyPointingGame(),
        "epg_e": EnergyPointingGame(),
        "win": Win(),
        "diff": AverageDifference(),
    }
    result = evet(images, labels, masks=masks, score_saliency=True)  # alpha="auto": every alpha scored
    assert result.saliency_scores is not None
    clean, original, enhanced = result.clean_scores, result.view_scores[0], result.saliency_scores
    metrics["drop_o"].update(clean, original)
    metrics["drop_e"].update(clean, enhanced)
    metrics["inc_o"].update(clean, original)
    metrics["inc_e"].update(clean, enhanced)
    metrics["epg_o"].update(result.original, masks)
    metrics["epg_e"].update(result.saliency, masks)
    metrics["win"].update(enhanced, original)
    metrics["diff"].update(enhanced, original)
    if stability:
        metrics["si_o"], metrics["si_e"] = StabilityIndex(), StabilityIndex()
        transform = Rotate(5.0)
        transformed = transform.forward(images)
        # View 0: J(T(x)); J*(T(x)) re-blended at the chosen alpha, as the callback does (no per-alpha scoring).
        transformed_result = evet(transformed, result.targets, alpha=0.0)
        valid = transform.valid_mask(*images.shape[-2:]).expand(images.shape[0], -1, -1)
        back_original = transform.inverse(transformed_result.original.unsqueeze(1)).squeeze(1)
        reblended = blend(transformed_result.fused_mean, transformed_result.fused_sigma, result.alpha)
        back_evet = transform.inverse(reblended.unsqueeze(1)).squeeze(1)
        metrics["si_o"].update(result.original, back_original, valid)
        metrics["si_e"].update(result.saliency, back_evet, valid)
    for metric in metrics.values():
        metric.compute()


def _trainer(callbacks: list[Any], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        **kwargs,
    )


class _EpochEndTimer:
    """Wraps the callback's ``on_validation_batch_end`` (where the streamed work happens) and
    ``on_validation_epoch_end`` and records their wall time per validation run."""

    def __init__(self, callback: EVETCallback) -> None:
        self.times: list[float] = []
        self.batches = 0.0
        batch_hook, epoch_hook = callback.on_validation_batch_end, callback.on_validation_epoch_end

        def timed_batch(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            batch_hook(*args, **kwargs)
            self.batches += time.perf_counter() - start

        def timed(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            start = time.perf_counter()
            epoch_hook(trainer, pl_module)
            self.times.append(self.batches + time.perf_counter() - start)
            self.batches = 0.0

        callback.on_validation_batch_end = timed_batch  # type: ignore[method-assign]
        callback.on_validation_epoch_end = timed  # type: ignore[method-assign]


def bench_epoch_end(repeats: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    module = ShapesClassifier().eval()
    dataset = SyntheticShapes(num_samples=NUM_SAMPLES, image_size=64, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    images, labels, masks = next(iter(loader))
    callback = EVETCallback()  # defaults: also renders and writes 8 heatmap PNGs per epoch
    timer = _EpochEndTimer(callback)
    trainer = _trainer([callback], default_root_dir=tempfile.mkdtemp(prefix="bench_callback_"))
    callback_times, hand_times, faithfulness_times = [], [], []
    for _ in range(repeats + 1):  # interleaved, so load changes hit both alike; the first round is a warm-up
        trainer.validate(module, dataloaders=loader, verbose=False)
        callback_times.append(timer.times[-1])
        start = time.perf_counter()
        by_hand(module, images, labels, masks, stability=True)
        hand_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        by_hand(module, images, labels, masks, stability=False)
        faithfulness_times.append(time.perf_counter() - start)
    return [
        (CALLBACK_ROW, min(callback_times[1:])),
        ("(a) same work by hand (EVET + stability + metrics)", min(hand_times[1:])),
        ("(a) EVET + faithfulness metrics only (no stability)", min(faithfulness_times[1:])),
    ]


class _EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.start = 0.0
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self.start)  # includes the validation run at epoch end


def bench_fit(train_samples: int, repeats: int) -> list[tuple[str, float]]:
    seconds: dict[str, list[float]] = {"without callback": [], "with EVETCallback()": []}
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for name in seconds:
            pl.seed_everything(0, verbose=False)
            timer = _EpochTimer()
            callbacks: list[Any] = [EVETCallback()] if name.startswith("with ") else []
            datamodule = SyntheticShapesDataModule(train_samples=train_samples)
            trainer = _trainer(
                [*callbacks, timer], max_epochs=1, default_root_dir=tempfile.mkdtemp(prefix="bench_callback_")
            )
            trainer.fit(ShapesClassifier(), datamodule)
            seconds[name].append(timer.seconds[0])
    return [(f"(b) demo fit epoch {name}", min(times)) for name, times in seconds.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-fit", action="store_true", help="only part (a)")
    parser.add_argument("--train-samples", type=int, default=2048)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    rows = bench_epoch_end(args.repeats)
    if not args.skip_fit:
        rows += bench_fit(args.train_samples, args.fit_repeats)
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.3f}")
    times = dict(rows)
    print()
    callback_seconds = times[CALLBACK_ROW]
    ratio = callback_seconds / times["(a) same work by hand (EVET + stability + metrics)"]
    print(f"(a) callback / by hand:                      {ratio:5.2f}x  (target <= 1.2)")
    evet_only = times["(a) EVET + faithfulness metrics only (no stability)"]
    print(f"(a) callback / EVET + faithfulness only:     {callback_seconds / evet_only:5.2f}x")
    if not args.skip_fit:
        with_cb, without = times["(b) demo fit epoch with EVETCallback()"], times["(b) demo fit epoch without callback"]
        print(f"(b) fit epoch with / without callback:       {with_cb / without:5.2f}x  (+{with_cb - without:.2f} s)")


if __name__ == "__main__":
    main()
