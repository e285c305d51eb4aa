"""Saliency explainers: ``(model, images, targets) -> Explanation(maps, logits)``.

- :class:`NativeCAM` computes pytorch-grad-cam's gradient CAMs (GradCAM, GradCAMPlusPlus, XGradCAM,
  HiResCAM, LayerCAM) in torch on the images' device. The body of the network below the target layer runs
  without autograd; the layer's output becomes a leaf and ``torch.autograd.grad`` differentiates the head
  only, so no parameter's ``.grad`` is written and nothing is copied to numpy. Its maps equal
  pytorch-grad-cam's own for the same class (tested to 1e-4).
- :class:`GradientExplainer` is vanilla gradient saliency, ``max_c |d score / d x_c|`` (the paper's
  "Gradient").
- Every other pytorch-grad-cam class runs through the library itself, see
  :mod:`evet_lightning.saliency.grad_cam_adapter`.

The score of class k is its logit (pytorch-grad-cam's ``ClassifierOutputTarget``). Explainers expect to be
called with gradients enabled, outside inference mode, inside :func:`~evet_lightning._model_state.model_state_guard`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evet_lightning.functional.fusion import min_max_normalize
from evet_lightning.saliency.outputs import OutputTransform, logits_from_output, require_graph
from evet_lightning.saliency.reshape import FeatureMapReader, ReshapeTransform

__all__ = ["NATIVE_CAMS", "Explainer", "Explanation", "GradientExplainer", "NativeCAM"]


class Explanation(NamedTuple):
    """What an explainer returns for ``N`` images."""

    maps: Tensor
    """``(N, H, W)`` float32 saliency in [0, 1]."""
    logits: Tensor
    """``(N, K)`` float32 logits of the images as given (the forward pass the maps came from)."""


class Explainer(Protocol):
    """``(model, images (N, C, H, W), targets (N,) or None = argmax) -> Explanation``."""

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation: ...


def _scale_like_grad_cam(cams: Tensor) -> Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` without resizing: ``(x - min) / (1e-7 + max(x - min))``."""
    flat = cams.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (1e-7 + flat.max(dim=1, keepdim=True).values)
    return flat.reshape(cams.shape)


def _grad_cam(activations: Tensor, grads: Tensor) -> Tensor:
    return (grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1)


def _grad_cam_plus_plus(activations: Tensor, grads: Tensor) -> Tensor:
    grads_2 = grads**2
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    aij = grads_2 / (2 * grads_2 + sum_activations * grads_2 * grads + 1e-6)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    weights = (grads.clamp_min(0) * aij).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1)


def _x_grad_cam(activations: Tensor, grads: Tensor) -> Tensor:
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    weights = (grads * activations / (sum_activations + 1e-7)).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1)


def _hires_cam(activations: Tensor, grads: Tensor) -> Tensor:
    return (grads * activations).sum(dim=1)


def _layer_cam(activations: Tensor, grads: Tensor) -> Tensor:
    return (grads.clamp_min(0) * activations).sum(dim=1)


#: The gradient CAMs computed natively: name -> ``(activations, grads) -> (N, h, w)`` map before ReLU.
NATIVE_CAMS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "GradCAM": _grad_cam,
    "GradCAMPlusPlus": _grad_cam_plus_plus,
    "XGradCAM": _x_grad_cam,
    "HiResCAM": _hires_cam,
    "LayerCAM": _layer_cam,
}


def _resolve_targets(logits: Tensor, targets: Tensor | None) -> Tensor:
    if targets is None:
        return logits.detach().argmax(dim=1)
    num_classes = logits.shape[1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"Expected `targets` to be class indices in [0, {num_classes}), but got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    return targets.to(logits.device)


def _target_scores(logits: Tensor, targets: Tensor) -> Tensor:
    if logits.ndim != 2:
        raise ValueError(f"Expected the model to return logits of shape (N, K), but got {tuple(logits.shape)}")
    return logits.gather(1, targets.view(-1, 1)).sum()


def _no_gradient_message(name: str) -> str:
    return (
        f"Expected the logits to depend on the output of target layer {name!r} (on its last call, if it runs several "
        "times per forward pass), but they do not; choose a layer the logits are computed from"
    )


class NativeCAM:
    """A gradient CAM computed in torch; ``method`` is one of :data:`NATIVE_CAMS`.

    The map is that of each target layer's own output: the hook hands the rest of the network a copy, so an
    in-place operation right after the layer cannot change the activation the CAM weights. torchvision's
    DenseNet applies ``F.relu(..., inplace=True)`` to ``features.norm5``, so there it is the map of the
    BatchNorm output, and so are its gradients. pytorch-grad-cam keeps a reference instead: it weights
    the post-ReLU values with the gradient of the pre-ReLU ones. The two maps differ by 0.1 to 0.3 (largest
    absolute difference) on densenet121. This package's pytorch-grad-cam adapter hands the library the
    layer's own output, so both backends agree.

    A target layer that runs several times in one forward pass (an activation module shared by every block) is
    explained at its last call, on both backends. To explain an earlier call, target a module that produces that
    tensor. Outputs that are not ``(B, C, H, W)`` feature maps are read with ``reshape_transform``, or without one
    by :func:`~evet_lightning.saliency.reshape.infer_layout`. ``output_transform`` extracts the logits from the
    model's output (:func:`~evet_lightning.saliency.outputs.logits_from_output`).
    """

    def __init__(
        self,
        method: str,
        target_layers: Sequence[nn.Module],
        *,
        reshape_transform: ReshapeTransform | None = None,
        output_transform: OutputTransform | None = None,
    ) -> None:
        if method not in NATIVE_CAMS:
            raise ValueError(f"Expected `method` to be one of {sorted(NATIVE_CAMS)}, but got {method!r}")
        self.method = method
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.output_transform = output_transform

    def _forward(self, model: nn.Module, images: Tensor, reader: FeatureMapReader) -> tuple[Tensor, list[Tensor]]:
        """Forward pass whose graph starts at the first target layer's output (a leaf requiring grad).

        Returns the logits and each target layer's output at its last call.
        """
        activations: dict[int, Tensor] = {}

        def hook(index: int) -> Callable[[nn.Module, object, object], Tensor]:
            def capture(module: nn.Module, inputs: object, output: object) -> Tensor:
                reader.check(output, module)
                assert isinstance(output, Tensor)
                if not (torch.is_grad_enabled() and output.requires_grad):
                    # The layers below ran without autograd: start the graph here, for the head only. A later call of
                    # a reused layer already requires grad; its gradient then flows through the calls after it.
                    output = output.detach().requires_grad_(True)
                    torch.set_grad_enabled(True)
                activations[index] = output  # a reused layer: the last call wins
                # The network gets a copy: an in-place op downstream (ReLU(inplace=True), `out += identity`)
                # must neither fail on the leaf nor change the activation the CAM is computed from.
                return output.clone()

            return capture

        handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(self.target_layers)]
        try:
            with torch.no_grad():  # restores the caller's grad mode on exit, whatever the hooks set
                logits = logits_from_output(model(images), self.output_transform)
        finally:
            for handle in handles:
                handle.remove()
        missing = [reader.name(layer) for i, layer in enumerate(self.target_layers) if i not in activations]
        if missing:
            raise ValueError(
                f"Expected every target layer to run in the forward pass, but {', '.join(map(repr, missing))} did not"
            )
        return logits, [activations[i] for i in range(len(self.target_layers))]

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        reader = FeatureMapReader(model, images, self.reshape_transform)
        logits, activations = self._forward(model, images, reader)
        targets = _resolve_targets(logits, targets)
        score = _target_scores(logits, targets)
        if not score.requires_grad:
            raise ValueError(
                "Expected the model's logits to depend on the target layer with autograd, but they do not require "
                "grad (does the model's forward detach its output or run under torch.no_grad()?)"
            )
        grads = torch.autograd.grad(score, activations, allow_unused=True)
        height, width = images.shape[-2:]
        per_layer = []
        with torch.no_grad():
            for layer, activation, grad in zip(self.target_layers, activations, grads, strict=True):
                if grad is None:
                    raise ValueError(_no_gradient_message(reader.name(layer)))
                activation = activation.detach()
                feature_map = reader(activation, layer).float()
                feature_grad = reader(grad, layer).float()
                cam = NATIVE_CAMS[self.method](feature_map, feature_grad).clamp_min(0)
                cam = _scale_like_grad_cam(cam)
                if cam.shape[-2:] != (height, width):
                    cam = F.interpolate(cam.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
                    cam = cam.squeeze(1)
                per_layer.append(cam)
            maps = _scale_like_grad_cam(torch.stack(per_layer, dim=1).clamp_min(0).mean(dim=1))
        return Explanation(torch.nan_to_num(maps, nan=0.0).clamp(0, 1), logits.detach().float())


class GradientExplainer:
    """Vanilla gradient saliency (Simonyan et al.): ``max_c |d logit_k / d x_c|``, min-max normalized.

    ``output_transform`` extracts the logits from the model's output, as in :class:`NativeCAM`.
    """

    def __init__(self, *, output_transform: OutputTransform | None = None) -> None:
        self.output_transform = output_transform

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        inputs = images.detach().clone().requires_grad_(True)
        logits = require_graph(logits_from_output(model(inputs), self.output_transform))
        targets = _resolve_targets(logits, targets)
        (grad,) = torch.autograd.grad(_target_scores(logits, targets), inputs)
        maps = min_max_normalize(grad.detach().abs().amax(dim=1).float())
        return Explanation(torch.nan_to_num(maps, nan=0.0), logits.detach().float())
