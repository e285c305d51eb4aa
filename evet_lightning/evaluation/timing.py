"""Table 4: seconds per image of Grad-CAM* (the whole EVET pipeline) and of the un-enhanced Score-CAM."""

from __future__ import annotations

import contextlib
import io
import statistics
import time

import torch
from torch import Tensor

from evet_lightning.data.batch import unpack_batch
from evet_lightning.evaluation.data import EvaluationData
from evet_lightning.evaluation.devices import accelerator_device
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.evaluation.records import MethodRun, Timing
from evet_lightning.functional.class_masks import pair_masks
from evet_lightning.saliency.evet import EVET
from evet_lightning.saliency.settings import EVETSettings

__all__ = ["TIMING_SAMPLES", "measure_timing", "time_per_image"]

#: Table 4 times the first this many explained samples (decision 44: a whole dataset's images are never stacked).
TIMING_SAMPLES = 64


def _masks(data: EvaluationData, indices: list[int]) -> Tensor | None:
    """The object masks of the samples ``indices``, stacked ``(N, H, W)`` (multi-label: as the data holds them,
    class-index ``(N, H, W)`` or per-class ``(N, C, H, W)``), or ``None`` when one has none."""
    masks = [unpack_batch(tuple(data.dataset[index]))[2] for index in indices]
    if any(mask is None for mask in masks):
        return None
    if data.multilabel:
        return torch.stack(masks)  # type: ignore[arg-type]
    return torch.stack([mask.reshape(mask.shape[-2:]) for mask in masks])  # type: ignore[union-attr]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_image(
    model: EvaluationModel,
    images: Tensor,
    targets: Tensor,
    *,
    cam: str = "ScoreCAM",
    enhance: bool = False,
    settings: EVETSettings | None = None,
    accelerator: str = "auto",
    masks: Tensor | None = None,
) -> tuple[float, float]:
    """Seconds per image (mean, standard deviation over images) of ``cam`` through the engine, one image per call.

    ``enhance=False`` times the un-enhanced method, ``EVET(...).explain(image, target)`` (view 0 only: one
    Score-CAM); ``enhance=True`` the whole EVET pipeline ``EVET(...)(image, target)`` (with ``alpha="auto"``
    that includes scoring every alpha of the grid). ``settings``: every EVET option but ``cam`` (default: the
    model's target layer, EVET's defaults). One image per call, as in the paper's Table 4; the model runs on the
    accelerator's device. One untimed warm-up call on the first image comes first (lazy initialization,
    allocator), and pytorch-grad-cam's per-call progress bars are hidden. ``masks (N, H, W)``: object masks,
    passed to the enhanced calls (``alpha_objective="energy_pointing_game"`` needs them).
    """
    device = accelerator_device(accelerator)
    module = model.module.to(device)
    settings = (settings or EVETSettings(target_layers=model.target_layer)).replace(cam=cam)
    engine = EVET.from_settings(module, settings)

    def run(index: int) -> None:
        image, target = images[index : index + 1].to(device), targets[index : index + 1].to(device)
        if not enhance:
            engine.explain(image, target)
        else:
            engine(image, target, masks=None if masks is None else masks[index : index + 1].to(device))

    seconds = []
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            run(0)
            for index in range(images.shape[0]):
                _synchronize(device)
                start = time.perf_counter()
                run(index)
                _synchronize(device)
                seconds.append(time.perf_counter() - start)
    finally:
        model.module.to("cpu")
    return statistics.fmean(seconds), statistics.stdev(seconds) if len(seconds) > 1 else 0.0


def measure_timing(
    model: EvaluationModel,
    data: EvaluationData,
    grad_cam: MethodRun,
    *,
    settings: EVETSettings | None = None,
    accelerator: str = "auto",
) -> Timing:
    """Table 4 on the first :data:`TIMING_SAMPLES` samples Grad-CAM explained, with the classes it explained:
    Grad-CAM* and Score-CAM alike, one image per call (so the images of a whole dataset are never held at once).

    ``settings``: the run's EVET settings (default: the model's target layer and the data's normalization).
    Multi-label data: one call per (image, class) pair Grad-CAM explained, so the seconds are per pair.
    """
    count = min(TIMING_SAMPLES, int(grad_cam.targets.numel()))
    indices = list(range(count)) if grad_cam.indices is None else grad_cam.indices[:count].tolist()
    images = torch.stack([unpack_batch(tuple(data.dataset[index]))[0] for index in indices])
    targets = grad_cam.targets[:count]
    masks = _masks(data, indices) if data.has_masks else None
    if data.multilabel and masks is not None:  # one entry per (image, class) pair: that class's object
        masks = pair_masks(masks, torch.arange(count, device=masks.device), targets)[0]
    settings = settings or EVETSettings(target_layers=model.target_layer, normalization=data.normalization)

    def seconds(cam: str, enhance: bool) -> tuple[float, float]:
        return time_per_image(
            model, images, targets, cam=cam, enhance=enhance, settings=settings, accelerator=accelerator, masks=masks
        )

    return Timing(
        grad_cam_star=seconds("GradCAM", enhance=True),
        score_cam=seconds("ScoreCAM", enhance=False),
        callback=grad_cam.seconds_per_image,
    )
