"""Cost of explaining images with k positive classes: ``EVET.explain_pairs`` against k single-class calls (issue 23).

On the demo's SmallCNN (20 outputs, random weights: speed does not depend on them) at 64 x 64 px, GradCAM, the paper's
7 transforms, on a CPU: ``--images`` images (default 4), each with k = 1, 2, 4 positive classes. Prints, per k and
alpha setting (the default ``"auto"`` and a fixed 0.5), the wall time of

- ``pairs``: one ``explain_pairs`` call on the ``images x k`` pairs (the views of each image go through the model once,
  one head backward per class; decision 46);
- ``k calls``: k EVET calls on the same images, one per class (what explaining each class separately costs);
- ``repeated``: one EVET call on the images repeated k times (batched, but nothing shared),

as ratios to one single-class call on the same images, timed back to back in each of ``--repeats`` rounds (median
of the per-round ratios, so load changes between rounds cancel): the ``k calls`` ratio is about k, sharing makes
``pairs`` lower. The model rows each way takes are printed too (the forward-pass count the sharing saves: V views
per image instead of per pair; each pair's V perturbed images, and with ``"auto"`` its 5 alpha candidates, are its
own).

Usage: ``python benchmarks/bench_multilabel.py [--images 4] [--repeats 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from _common import timed
from torch import nn

from evet_lightning import EVET
from evet_lightning.models import SmallCNN

KS = (1, 2, 4)
CPU = torch.device("cpu")


def paired_ratios(functions: list[Callable[[], object]], repeats: int) -> tuple[float, list[float]]:
    """The first function's best time and, for each other function, the median over rounds of its time divided by
    the first function's time in the same round. The functions run back to back in every round (after one untimed
    run each), so a change of machine load between rounds cancels in the ratios."""
    for fn in functions:
        fn()
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for fn, bucket in zip(functions, times, strict=True):
            bucket.append(timed(fn, CPU))
    reference = times[0]
    ratios = [statistics.median(t / r for t, r in zip(bucket, reference, strict=True)) for bucket in times[1:]]
    return min(reference), ratios


def measure(
    evet: EVET, images: torch.Tensor, k: int, repeats: int, rows: list[int]
) -> tuple[float, list[float], list[int]]:
    """The best time of one single-class call; k separate calls, one repeated-image call and one ``explain_pairs``
    call as paired ratios to it; the model rows of the k calls and of the pairs call."""
    batch = images.shape[0]
    classes = torch.arange(k).repeat(batch)  # image i: classes 0 .. k-1
    image_index = torch.arange(batch).repeat_interleave(k)

    def single() -> None:
        evet(images, torch.zeros(batch, dtype=torch.long))

    def separately() -> None:
        for c in range(k):
            evet(images, torch.full((batch,), c))

    def repeated() -> None:
        evet(images[image_index], classes)

    def pairs() -> None:
        evet.explain_pairs(images, image_index, classes)

    single_time, ratios = paired_ratios([single, separately, repeated, pairs], repeats)
    counts = []
    for fn in (separately, pairs):
        rows[0] = 0
        fn()
        counts.append(rows[0])
    return single_time, ratios, counts


def count_rows(rows: list[int]) -> Callable[[nn.Module, object, torch.Tensor], None]:
    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        rows[0] += output.shape[0]

    return hook


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SmallCNN(num_classes=20).eval()
    images = torch.rand(args.images, 3, 64, 64)
    rows = [0]
    model.features.block4.register_forward_hook(count_rows(rows))
    print(
        f"SmallCNN (20 classes), {args.images} images of 64 x 64 px, GradCAM, 7 transforms, CPU, {args.threads} threads"
    )
    print(
        "ratios to one single-class call (median of per-round ratios); rows: images through the model, k calls / pairs"
    )
    print(f"{'alpha':>6} {'k':>2} {'single (s)':>11} {'k calls':>8} {'repeated':>9} {'pairs':>6}  rows")
    for alpha in ("auto", 0.5):
        evet = EVET(model, target_layers="features.block4", alpha=alpha)
        for k in KS:
            single, ratios, counts = measure(evet, images, k, args.repeats, rows)
            text = " ".join(f"{ratio:>{w}.2f}" for ratio, w in zip(ratios, (8, 9, 6), strict=True))
            print(f"{alpha!s:>6} {k:>2} {single:>11.3f} {text}  {counts[0]} / {counts[1]}")


if __name__ == "__main__":
    main()
