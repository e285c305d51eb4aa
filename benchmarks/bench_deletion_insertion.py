"""Speed and memory of the deletion and insertion curves, measured side by side with EVET in one run (issue 11).

Prints, on torchvision ResNet-18 (random weights: speed does not depend on them), for the same images:

1. deletion + insertion curves (``2 * B * (S + 1)`` no-grad forward passes) vs EVET-GradCAM (8 views, the
   paper's 7 transforms), and their ratio;
2. peak memory of the two curves at max_batch_size 8 vs 64 (CUDA: max_memory_allocated; CPU: peak RSS growth of
   a fresh process, from the kernel's peak-RSS mark) on ``--memory-images`` images, which the chunk bounds, not
   ``B * (S + 1)``.

Usage: ``python benchmarks/bench_deletion_insertion.py [--device cpu|cuda] [--image-size 112] [--num-images 32]
[--steps 20] [--repeats 1] [--memory-images 4]``. The defaults take a few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from _common import build_resnet18, child_peak_memory, print_peak_memory, timed

from evet_lightning import EVET
from evet_lightning.functional import deletion_curve, insertion_curve


def compare(
    ours: Callable[[], object],
    reference: Callable[[], object],
    warm_up: Callable[[], object],
    device: torch.device,
    repeats: int,
) -> tuple[float, float]:
    """Median wall times of ``ours`` and ``reference``, each timed ``repeats`` times after ``warm_up`` ran once.

    The warm-up runs both on a couple of images (kernels, allocator), so a full untimed run of each is not
    needed; the two alternate (ours, reference, ours, ...) so a change of machine load during the run hits both.
    """
    times: tuple[list[float], list[float]] = ([], [])
    warm_up()
    for _ in range(repeats):
        for fn, bucket in ((ours, times[0]), (reference, times[1])):
            bucket.append(timed(fn, device))
    return statistics.median(times[0]), statistics.median(times[1])


def peak_memory_child(args: argparse.Namespace) -> None:
    """Run both curves once and print the peak memory they added, in MiB (a fresh process per setting on CPU)."""
    device = torch.device(args.device)
    model, images, targets = build_resnet18(device, args.image_size, args.memory_images)
    saliency = torch.rand(images.shape[0], *images.shape[-2:], device=device)
    kwargs = {"steps": args.steps, "max_batch_size": args.memory_child}

    def run() -> None:
        deletion_curve(model, images, saliency, targets, **kwargs)
        insertion_curve(model, images, saliency, targets, **kwargs)

    print_peak_memory(run, device)


def peak_memory(args: argparse.Namespace, max_batch_size: int) -> float:
    return child_peak_memory(
        __file__,
        "--memory-child",
        str(max_batch_size),
        "--device",
        args.device,
        "--image-size",
        str(args.image_size),
        "--memory-images",
        str(args.memory_images),
        "--steps",
        str(args.steps),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--memory-images", type=int, default=4, help="images for the memory runs (4 x 21 steps fill a chunk of 64)"
    )
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        peak_memory_child(args)
        return
    device = torch.device(args.device)
    model, images, targets = build_resnet18(device, args.image_size, args.num_images)
    evet = EVET(model, cam="GradCAM", max_batch_size=64)
    # The curves' cost does not depend on the map's values: random maps save an untimed EVET run.
    saliency = torch.rand(images.shape[0], *images.shape[-2:], generator=torch.Generator().manual_seed(0))
    saliency = saliency.to(device)

    def curves(count: int) -> object:
        kwargs = {"steps": args.steps, "max_batch_size": 64}
        deletion = deletion_curve(model, images[:count], saliency[:count], targets[:count], **kwargs)
        insertion = insertion_curve(model, images[:count], saliency[:count], targets[:count], **kwargs)
        return deletion, insertion

    def warm_up() -> None:
        curves(2)
        evet(images[:2], targets[:2])

    batch = images.shape[0]
    t_curves, t_evet = compare(lambda: curves(batch), lambda: evet(images, targets), warm_up, device, args.repeats)
    memory_8 = peak_memory(args, 8)
    memory_64 = peak_memory(args, 64)

    size, steps = args.image_size, args.steps
    print(
        f"ResNet-18, {size}x{size}, {batch} images, S = {steps}, max_batch_size 64, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print("| computation | time (s) | per image (s) |")
    print("| --- | --- | --- |")
    rows = [
        (f"deletion + insertion curves ({2 * batch * (steps + 1)} no-grad forwards)", t_curves),
        (f"EVET-GradCAM ({evet.num_views} views: a CAM pass and a scoring forward each)", t_evet),
    ]
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / batch:.4f} |")
    print(f"ratio curves / EVET: {t_curves / t_evet:.2f}x")
    print(
        f"curves' peak memory, max_batch_size 8 vs 64: {memory_8:.0f} MiB vs {memory_64:.0f} MiB "
        f"({memory_64 / max(memory_8, 1e-9):.2f}x; bounded by the chunk; {args.memory_images} images, "
        f"{args.memory_images * (steps + 1)} step images per curve)"
    )


if __name__ == "__main__":
    main()
