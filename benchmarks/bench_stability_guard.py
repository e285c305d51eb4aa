"""Cost of the stability guard of ``alpha="auto"`` (issue 16): the callback's explained epoch with the guard
against the same epoch without it (today's ``alpha="auto"``: the per-alpha stability sums switched off).

The guard computes no view: it blends each stability run's fusion parts at every alpha of the grid and warps
them back (``alpha_stability``). Target: ratio <= 1.05. Every time is the fastest of interleaved runs.

Usage: ``python benchmarks/bench_stability_guard.py [--repeats 5] [--samples 32] [--paper]``
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from evet_lightning import EVETCallback
from evet_lightning.callbacks import alpha_selection
from evet_lightning.data import SyntheticShapes
from evet_lightning.models import ShapesClassifier


def _epoch_seconds(callback: EVETCallback, module: pl.LightningModule, loader: Any) -> float:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback],
    )
    start = time.perf_counter()
    trainer.validate(module, dataloaders=loader, verbose=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--paper", action="store_true", help="the four Table 5 stability transforms")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    module = ShapesClassifier().eval()
    loader = torch.utils.data.DataLoader(SyntheticShapes(num_samples=args.samples, image_size=64, seed=1), 64)
    stability = "paper" if args.paper else None
    original = alpha_selection.alpha_stability
    times: dict[str, list[float]] = {"guard": [], "no guard": []}
    for round_index in range(args.repeats + 1):  # interleaved; the first round is a warm-up
        for name in times:
            callback = EVETCallback(num_samples=args.samples, log_images=0, stability_transforms=stability)
            alpha_selection.alpha_stability = original if name == "guard" else (lambda *_: None)  # type: ignore
            try:
                seconds = _epoch_seconds(callback, module, loader)
            finally:
                alpha_selection.alpha_stability = original
            if round_index > 0:
                times[name].append(seconds)
    best = {name: min(values) for name, values in times.items()}
    print(f"alpha='auto' callback epoch, {args.samples} samples, stability {'paper' if args.paper else 'Rotate(5)'}")
    for name, seconds in best.items():
        print(f"  {name:>8}: {seconds:.3f} s")
    print(f"  ratio guard / no guard: {best['guard'] / best['no guard']:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
