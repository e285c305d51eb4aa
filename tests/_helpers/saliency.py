"""Saliency functions ``(model, images, targets) -> maps`` for the tests of the public explainer contract.

Module level, so that they pickle (``ddp_spawn``) and the CLI can name them (``tests._helpers.saliency:...``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["coarse_input_gradient", "input_times_gradient"]


def input_times_gradient(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """``sum_c |x_c * d logit_k / d x_c|`` as ``(N, H, W)``: writes ``.grad`` of the parameters (``backward``)."""
    inputs = images.clone().requires_grad_(True)
    model(inputs).gather(1, targets.view(-1, 1)).sum().backward()
    assert inputs.grad is not None
    return (inputs * inputs.grad).abs().sum(dim=1)


def coarse_input_gradient(model: nn.Module, images: Tensor, targets: Tensor, *, pool: int = 4) -> Tensor:
    """``|d logit_k / d x|`` summed over channels and average-pooled by ``pool``: ``(N, 1, H / pool, W / pool)``."""
    inputs = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inputs).gather(1, targets.view(-1, 1)).sum(), inputs)
    return F.avg_pool2d(grad.abs().sum(dim=1, keepdim=True), pool)
