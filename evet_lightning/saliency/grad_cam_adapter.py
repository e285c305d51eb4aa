"""The one adapter around pytorch-grad-cam: the only module of this package that touches numpy.

It runs any pytorch-grad-cam CAM class (ScoreCAM, EigenCAM, AblationCAM, EigenGradCAM, RandomCAM, ...)
through the library itself and turns its numpy output into a tensor on the images' device. The library
flips the model to eval mode in its constructor, writes parameter ``.grad`` through ``loss.backward()``,
registers hooks, may swap layers (AblationCAM) and draws from numpy's global RNG (RandomCAM); the caller
wraps it in :func:`~evet_lightning.saliency._guard.model_state_guard` with ``protect_grads=True``, and this
module releases the hooks and restores numpy's RNG itself. Errors propagate: the library's ``__exit__``,
which prints and swallows ``IndexError``, is never used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_grad_cam
import torch
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from evet_lightning.saliency.explainers import Explanation, _resolve_targets

__all__ = ["GradCamLibraryExplainer", "available_cam_classes", "is_cam_class"]


def available_cam_classes() -> dict[str, type[BaseCAM]]:
    """Every CAM class pytorch-grad-cam exports, by name."""
    return {
        name: obj
        for name, obj in vars(pytorch_grad_cam).items()
        if isinstance(obj, type) and issubclass(obj, BaseCAM) and obj is not BaseCAM
    }


def is_cam_class(obj: object) -> bool:
    """Whether ``obj`` is a pytorch-grad-cam CAM class (a subclass of its ``BaseCAM``)."""
    return isinstance(obj, type) and issubclass(obj, BaseCAM) and obj is not BaseCAM


class GradCamLibraryExplainer:
    """Run the pytorch-grad-cam class ``cam_class`` on ``target_layers``; ``batch_size`` feeds its own batching."""

    def __init__(self, cam_class: type[BaseCAM], target_layers: Sequence[nn.Module], batch_size: int = 64) -> None:
        self.cam_class = cam_class
        self.target_layers = list(target_layers)
        self.batch_size = batch_size

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        if targets is not None:
            # Check the class range before the library runs: it would index past the logits (IndexError) or,
            # for a negative class, silently explain a class counted from the end.
            with torch.no_grad():
                _resolve_targets(model(images[:1]).float(), targets)
        numpy_rng = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what RandomCAM draws from)
        cam = None
        try:
            cam = self.cam_class(model=model, target_layers=self.target_layers)
            cam.batch_size = self.batch_size  # ScoreCAM and AblationCAM read it
            # An input that requires grad lets the gradient CAMs run on a model whose parameters are frozen.
            inputs = images.detach().clone().requires_grad_(True)
            cam_targets = None if targets is None else [ClassifierOutputTarget(int(k)) for k in targets.tolist()]
            grayscale = cam(input_tensor=inputs, targets=cam_targets)
            outputs = getattr(cam, "outputs", None)
            if isinstance(outputs, Tensor):
                logits = outputs.detach().float()
            else:
                with torch.no_grad():
                    logits = model(images).detach().float()
        finally:
            if cam is not None:
                cam.activations_and_grads.release()
            np.random.set_state(numpy_rng)  # noqa: NPY002
        maps = torch.from_numpy(np.ascontiguousarray(grayscale, dtype=np.float32)).to(images.device)
        return Explanation(torch.nan_to_num(maps, nan=0.0).clamp(0, 1), logits.to(images.device))
