"""Memory and time per image of a whole-dataset evaluation at two sizes, side by side in one run (issue 22).

Prints, for ``trainer.validate`` + ``EVETCallback(num_samples=N)`` (the callback's defaults otherwise) and for
``evaluate --methods GradCAM`` (the command's defaults: deletion / insertion, both stability protocols, the
per-sample file; no heatmaps), at ``N = 64`` and ``N = 2048`` synthetic images of 224 x 224 px and a cheap 2-conv
CNN (so this measures the harness, not the network): the peak RSS of the process and the seconds per image,
each measurement in a fresh process (``ru_maxrss`` of the child), then the ratios N = 2048 / N = 64. Targets:
peak ratio <= 1.15, time-per-image ratio <= 1.05. On a CUDA device it also prints ``max_memory_allocated``.

Usage: ``python benchmarks/bench_scale.py [--sizes 64 2048] [--accelerator cpu|gpu] [--batch-size 32]
[--image-size 224]`` (a smaller image size makes a quick check on a busy CPU: 2048 images at 224 px take hours
on two shared cores)
(``--child KIND N`` is the fresh process's own entry point).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

DEFAULT_IMAGE_SIZE = 224
NUM_CLASSES = 4
KINDS = ("validate", "evaluate")


def two_conv_cnn() -> nn.Module:
    """The cheap model: two strided convolutions, global pooling and a linear layer (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, NUM_CLASSES),
    ).eval()


def _validate(count: int, accelerator: str, batch_size: int, image_size: int) -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from evet_lightning import EVETCallback
    from evet_lightning.data import SyntheticShapes
    from evet_lightning.evaluation.runner import EvaluationModule

    data = SyntheticShapes(num_samples=count, image_size=image_size, num_classes=NUM_CLASSES, seed=1)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[EVETCallback(num_samples=count, model="model")],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(EvaluationModule(two_conv_cnn()), DataLoader(data, batch_size=batch_size), verbose=False)


def _evaluate(count: int, accelerator: str, batch_size: int, image_size: int) -> None:
    from evet_lightning.evaluation import EvaluateConfig, run_evaluation

    with tempfile.TemporaryDirectory() as output:
        config = EvaluateConfig(
            model="bench_scale:two_conv_cnn",
            num_samples=count,
            image_size=image_size,
            methods="GradCAM",
            output=output,
            heatmaps=0,
            progress=False,
            accelerator=accelerator,  # type: ignore[arg-type]
            batch_size=batch_size,
        )
        run_evaluation(config)


def child(kind: str, count: int, accelerator: str, batch_size: int, image_size: int) -> None:
    """One measurement in this (fresh) process: prints one JSON line."""
    os.chdir(tempfile.mkdtemp())  # the callback's per-sample table (no logger) lands there, not in the checkout
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    cuda = accelerator == "gpu"
    import pytorch_lightning  # noqa: F401  (imported before the clock starts)

    import evet_lightning.evaluation  # noqa: F401

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    (_validate if kind == "validate" else _evaluate)(count, accelerator, batch_size, image_size)
    seconds = time.perf_counter() - start
    result = {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "seconds_per_image": seconds / count,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    print(json.dumps(result))


def measure(kind: str, count: int, accelerator: str, batch_size: int, image_size: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", kind, str(count), "--accelerator", accelerator]
    command += ["--batch-size", str(batch_size), "--image-size", str(image_size)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[64, 2048], metavar=("SMALL", "LARGE"))
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.accelerator, args.batch_size, args.image_size)
        return
    small, large = args.sizes
    cuda = args.accelerator == "gpu"
    print(
        f"{args.image_size} px, 2-conv CNN, {args.accelerator}, batch size {args.batch_size}; each cell a fresh process"
    )
    header = f"| run | peak RSS N={small} | N={large} | ratio | s/image N={small} | N={large} | ratio |"
    if cuda:
        header += f" CUDA peak N={small} | N={large} |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for kind in KINDS:
        first, second = (
            measure(kind, count, args.accelerator, args.batch_size, args.image_size) for count in (small, large)
        )
        memory = second["peak_rss_mib"] / first["peak_rss_mib"]
        speed = second["seconds_per_image"] / first["seconds_per_image"]
        row = (
            f"| {kind} | {first['peak_rss_mib']:.0f} MiB | {second['peak_rss_mib']:.0f} MiB | {memory:.3f} "
            f"{'ok' if memory <= 1.15 else 'OVER 1.15'} | {first['seconds_per_image'] * 1e3:.1f} ms | "
            f"{second['seconds_per_image'] * 1e3:.1f} ms | {speed:.3f} {'ok' if speed <= 1.05 else 'OVER 1.05'} |"
        )
        if cuda:
            row += f" {first['cuda_peak_mib']:.0f} MiB | {second['cuda_peak_mib']:.0f} MiB |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
