"""Speed and memory of the EVET engine, measured side by side in one run (issues 2 and 9).

Prints, on torchvision ResNet-18 (random weights: speed does not depend on them) at 224x224, batch 8:

1. native GradCAM vs pytorch-grad-cam GradCAM on the same batch (target >= 2.5x faster);
2. EVET-GradCAM at default settings (``alpha="auto"``, ``max_batch_size="auto"``) per image vs pytorch-grad-cam
   ScoreCAM per image (target >= 30x faster);
3. EVET at default settings vs its floor: the no-grad forward passes it cannot avoid, ``2 (n + 1)`` = 16 for the
   views plus one per alpha of the grid (5) = 21, in batches of 8 (target <= 1.15x on a CPU);
4. ``alpha="auto"`` vs a fixed alpha, both at the default chunk (target <= 1.3x);
5. a fixed alpha vs 16 no-grad forwards, at the old default ``max_batch_size=64`` and at 8 (the CPU allocator
   cost of 64-image chunks);
6. EVET-GradCAM (8 views) vs pytorch-grad-cam GradCAM with aug_smooth=True (6 views, sequential): faster;
7. peak memory of EVET at max_batch_size 8 vs 64 (CUDA: max_memory_allocated; CPU: peak RSS growth of a
   fresh process, from the kernel's peak-RSS mark);
8. (``--score-cam``) native Score-CAM vs pytorch-grad-cam ScoreCAM on the same ``--scorecam-images`` images
   (target >= 3x on a CPU at 8), and EVET-GradCAM at defaults vs native Score-CAM and vs Faster-Score-CAM
   (the paper's Table 4, made fair: both sides batched in torch), per image.

Usage: ``python benchmarks/bench_saliency.py [--device cpu|cuda] [--repeats 3] [--scorecam-images 1]``;
``--score-cam`` prints only the Score-CAM rows (8), with ``--scorecam-images 8`` by default.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
from collections.abc import Callable

import torch
from _common import build_resnet18, child_peak_memory, print_peak_memory, timed
from pytorch_grad_cam import GradCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from evet_lightning import EVET
from evet_lightning.saliency import NativeCAM
from evet_lightning.saliency.score_cam import FASTER_SCORE_CAM_CHANNELS
from evet_lightning.saliency.score_cam import ScoreCAM as NativeScoreCAM
from evet_lightning.saliency.settings import resolve_max_batch_size


def compare(
    ours: Callable[[], object],
    reference: Callable[[], object],
    device: torch.device,
    repeats: int,
    rounds: int = 3,
    warmup: bool = True,
) -> tuple[float, float]:
    """Median wall times of ``ours`` and ``reference``, measured in alternating blocks.

    Each block runs one function ``repeats`` times after an untimed warm-up run; the two functions alternate
    over ``rounds`` rounds, so a change of machine load during the run hits both, while each timing is taken in the
    function's own steady state (right after a different function, the allocator's first calls cost extra).
    ``warmup=False`` skips the untimed run (for functions that take tens of seconds).
    """
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, bucket in ((ours, times[0]), (reference, times[1])):
            if warmup:
                fn()
            for _ in range(repeats):
                bucket.append(timed(fn, device))
    return statistics.median(times[0]), statistics.median(times[1])


def peak_memory_child(device_name: str, max_batch_size: int) -> None:
    """Run EVET once and print the peak memory it added, in MiB (a fresh process per setting on CPU)."""
    device = torch.device(device_name)
    model, images, targets = build_resnet18(device)
    evet = EVET(model, target_layers=[model.layer4], max_batch_size=max_batch_size)
    print_peak_memory(lambda: evet(images, targets), device)


def peak_memory(device: torch.device, max_batch_size: int) -> float:
    return child_peak_memory(__file__, "--memory-child", str(max_batch_size), "--device", device.type)


def score_cam_rows(device: torch.device, count: int) -> None:
    """Native Score-CAM vs the library's on ``count`` images, and EVET-GradCAM vs both native Score-CAMs."""
    model, images, targets = build_resnet18(device, num_images=count)
    cam_targets = [ClassifierOutputTarget(int(k)) for k in targets]
    chunk = resolve_max_batch_size("auto", images)
    native = NativeScoreCAM([model.layer4], batch_size=chunk)
    faster = NativeScoreCAM([model.layer4], batch_size=chunk, max_channels=FASTER_SCORE_CAM_CHANNELS)
    evet = EVET(model, target_layers=[model.layer4], cam="GradCAM")  # the defaults: alpha and chunk "auto"

    def library_score_cam() -> object:
        # pytorch-grad-cam's default of 16 masked images per forward pass; no tqdm bars in the table.
        with ScoreCAM(model, [model.layer4]) as cam, contextlib.redirect_stderr(io.StringIO()):
            return cam(images, cam_targets)

    print(f"ResNet-18 layer4 (512 channels), 224x224, {count} images, device {device}, masked images per pass {chunk}")
    print("| comparison | ours (s/image) | reference (s/image) | ratio | target |")
    print("| --- | --- | --- | --- | --- |", flush=True)

    def row(name: str, ours: float, reference: float, target: str) -> None:
        print(
            f"| {name} | {ours / count:.4f} | {reference / count:.4f} | {reference / ours:.2f}x | {target} |",
            flush=True,
        )

    t_native, t_library = compare(
        lambda: native(model, images, targets), library_score_cam, device, 1, rounds=1, warmup=False
    )
    row("native Score-CAM vs pytorch-grad-cam ScoreCAM", t_native, t_library, ">= 3x")
    t_evet, t_faster = compare(lambda: evet(images, targets), lambda: faster(model, images, targets), device, 1)
    row("EVET-GradCAM at defaults vs native Score-CAM", t_evet, t_native, "info")
    row(f"EVET-GradCAM at defaults vs Faster-Score-CAM (k = {FASTER_SCORE_CAM_CHANNELS})", t_evet, t_faster, "info")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scorecam-images", type=int, default=None, help="images timed for ScoreCAM (slow)")
    parser.add_argument("--score-cam", action="store_true", help="only the Score-CAM rows")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        peak_memory_child(args.device, args.memory_child)
        return
    device = torch.device(args.device)
    if args.score_cam:
        score_cam_rows(device, args.scorecam_images or 8)
        return
    args.scorecam_images = args.scorecam_images or 1
    model, images, targets = build_resnet18(device)
    batch = images.shape[0]
    cam_targets = [ClassifierOutputTarget(int(k)) for k in targets]
    native = NativeCAM("GradCAM", [model.layer4])
    evet = EVET(model, target_layers=[model.layer4], cam="GradCAM")  # the defaults: alpha and chunk "auto"
    fixed = EVET(model, target_layers=[model.layer4], cam="GradCAM", alpha=0.5)
    fixed_64 = EVET(model, target_layers=[model.layer4], cam="GradCAM", alpha=0.5, max_batch_size=64)
    fixed_8 = EVET(model, target_layers=[model.layer4], cam="GradCAM", alpha=0.5, max_batch_size=batch)
    num_alphas = len(evet.alpha_grid)

    def library_grad_cam() -> object:
        with GradCAM(model, [model.layer4]) as cam:
            return cam(images, cam_targets)

    def library_aug_smooth() -> object:
        with GradCAM(model, [model.layer4]) as cam:
            return cam(images, cam_targets, aug_smooth=True)

    def library_score_cam() -> object:
        count = args.scorecam_images
        # ScoreCAM prints a tqdm bar per image; keep the table readable.
        with ScoreCAM(model, [model.layer4]) as cam, contextlib.redirect_stderr(io.StringIO()):
            return cam(images[:count], cam_targets[:count])

    def forwards(count: int) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                for _ in range(count):
                    model(images)
            return None

        return run

    forwards_16 = forwards(16)
    floor_auto = forwards(16 + num_alphas)

    def run_native() -> object:
        with torch.enable_grad():
            return native(model, images, targets)

    t_native, t_library = compare(run_native, library_grad_cam, device, args.repeats)
    t_evet, t_floor = compare(lambda: evet(images, targets), floor_auto, device, args.repeats)
    t_auto, t_fixed = compare(lambda: evet(images, targets), lambda: fixed(images, targets), device, args.repeats)
    t_fixed_64, t_forwards_64 = compare(lambda: fixed_64(images, targets), forwards_16, device, args.repeats)
    t_fixed_8, t_forwards_8 = compare(lambda: fixed_8(images, targets), forwards_16, device, args.repeats)
    t_evet_2, t_aug = compare(lambda: fixed(images, targets), library_aug_smooth, device, args.repeats)
    t_evet_3, t_score = compare(lambda: evet(images, targets), library_score_cam, device, 1, rounds=1)
    score_per_image = t_score / args.scorecam_images  # pytorch-grad-cam's default batch of 16 masked images
    memory_8 = peak_memory(device, 8)
    memory_64 = peak_memory(device, 64)

    chunk = resolve_max_batch_size("auto", images)
    print(f"ResNet-18, 224x224, batch {batch}, device {device}, torch {torch.__version__}, median of {args.repeats}")
    print(f"defaults: alpha='auto' over {num_alphas} alphas, max_batch_size='auto' = {chunk} here")
    print("| comparison | ours (s) | reference (s) | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    rows = [
        ("native GradCAM vs pytorch-grad-cam GradCAM (batch)", t_native, t_library, t_library / t_native, ">= 2.5x"),
        (
            "EVET-GradCAM at defaults vs ScoreCAM (per image)",
            t_evet_3 / batch,
            score_per_image,
            score_per_image * batch / t_evet_3,
            ">= 30x",
        ),
        (
            f"EVET at defaults vs its floor, {16 + num_alphas} no-grad forwards (per image)",
            t_evet / batch,
            t_floor / batch,
            t_evet / t_floor,
            "<= 1.15x",
        ),
        (
            "alpha='auto' vs alpha=0.5, same chunk (per image)",
            t_auto / batch,
            t_fixed / batch,
            t_auto / t_fixed,
            "<= 1.3x",
        ),
        (
            "alpha=0.5, max_batch_size=64, vs 16 no-grad forwards (per image)",
            t_fixed_64 / batch,
            t_forwards_64 / batch,
            t_fixed_64 / t_forwards_64,
            "info",
        ),
        (
            f"alpha=0.5, max_batch_size={batch}, vs 16 no-grad forwards (per image)",
            t_fixed_8 / batch,
            t_forwards_8 / batch,
            t_fixed_8 / t_forwards_8,
            "<= 1.2x",
        ),
        ("EVET-GradCAM (8 views) vs GradCAM aug_smooth (6 views)", t_evet_2, t_aug, t_aug / t_evet_2, "> 1x"),
    ]
    for name, ours, reference, ratio, target in rows:
        print(f"| {name} | {ours:.4f} | {reference:.4f} | {ratio:.2f}x | {target} |")
    print(
        f"| EVET peak memory, max_batch_size 8 vs 64 (MiB) | {memory_8:.0f} | {memory_64:.0f} | "
        f"{memory_64 / max(memory_8, 1e-9):.2f}x | bounded by the chunk |"
    )


if __name__ == "__main__":
    main()
