"""Helpers shared by the benchmarks: timing, the ResNet-18 setup and peak memory in a fresh process.

The benchmarks run as scripts (``python benchmarks/X.py``), which puts this folder on ``sys.path``: they import
this module as ``_common``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn``, in seconds; CUDA work is synchronized before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_resnet18(
    device: torch.device, image_size: int = 224, num_images: int = 8
) -> tuple[torchvision.models.ResNet, torch.Tensor, torch.Tensor]:
    """torchvision ResNet-18 in eval mode (random weights: speed does not depend on them), images and targets."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).to(device).eval()
    images = torch.randn(num_images, 3, image_size, image_size, device=device)
    targets = torch.arange(num_images, device=device) % 1000
    return model, images, targets


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def print_peak_memory(run: Callable[[], object], device: torch.device) -> None:
    """Run ``run`` once and print the peak memory it added, in MiB, as the JSON line :func:`child_peak_memory` reads.

    CUDA: ``max_memory_allocated``; CPU: peak RSS growth, from the kernel's peak-RSS mark (meant for a fresh
    process per setting).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        # Reset the kernel's peak-RSS mark (VmHWM) so it measures this call alone.
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        run()
        peak = (_status_kib("VmHWM") - base) * 1024
    print(json.dumps({"peak_mib": peak / 2**20}))


def child_peak_memory(script: str, *arguments: str) -> float:
    """Run ``python script *arguments`` in a fresh process and return the MiB its :func:`print_peak_memory` printed."""
    command = [sys.executable, script, *arguments]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(output.strip().splitlines()[-1])["peak_mib"])
