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
- :class:`CallableExplainer` turns any *saliency function* ``(model, images, targets) -> maps`` into an
  explainer (the public contract for your own method, and what the Captum and zennit adapters are built on):
  it runs one forward pass without autograd for the logits and the class (the given target or the argmax),
  calls the function, and reads its maps with :func:`maps_from_output` (``(B, H, W)`` or ``(B, 1, h, w)``,
  any range: bilinear to the image size, then min-max per image). :func:`attribution_to_map` is the one rule
  by which an attribution ``(B, C, h, w)`` becomes a map (docs/design.md, decision 25).

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

__all__ = [
    "NATIVE_CAMS",
    "REDUCTIONS",
    "CallableExplainer",
    "Explainer",
    "Explanation",
    "GradientExplainer",
    "NativeCAM",
    "Reduction",
    "SaliencyFunction",
    "attribution_to_map",
    "maps_from_output",
    "occurrence_rounds",
]


class Explanation(NamedTuple):
    """What an explainer returns for ``N`` images."""

    maps: Tensor
    """``(N, H, W)`` float32 saliency in [0, 1]."""
    logits: Tensor
    """``(N, K)`` float32 logits of the images as given (the forward pass the maps came from)."""


class Explainer(Protocol):
    """``(model, images (N, C, H, W), targets (N,) or None = argmax) -> Explanation``.

    What the EVET engine calls for every chunk of views, inside the model-state guard, with gradients enabled
    and the model in eval mode. ``maps`` must be ``(N, H, W)`` in [0, 1]; ``logits`` those of ``images``.
    To plug in a method of your own, write a :data:`SaliencyFunction` instead and pass it as ``cam=``:
    :class:`CallableExplainer` makes it an explainer.
    """

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation: ...


#: A saliency method of your own: ``(model, images (N, C, H, W), targets (N,) long) -> maps``, the maps
#: ``(N, H, W)`` or ``(N, 1, h, w)`` in any range (:func:`maps_from_output` reads them). ``targets`` are always
#: given: the label, or the argmax of ``model(images)``. The function may call ``backward()``, register hooks
#: or change ``requires_grad``: the engine's guard undoes all of it (decision 6).
SaliencyFunction = Callable[[nn.Module, Tensor, Tensor], Tensor]

#: The reductions of :func:`attribution_to_map`.
REDUCTIONS = ("abs_sum", "sum", "relu_sum", "max_abs")
#: One of :data:`REDUCTIONS`, or a callable ``attribution (N, C, h, w) -> (N, h, w)``.
Reduction = str | Callable[[Tensor], Tensor]


def attribution_to_map(attribution: Tensor, size: tuple[int, int], reduction: Reduction = "abs_sum") -> Tensor:
    """How an attribution ``(N, C, h, w)`` becomes a saliency map ``(N, H, W)`` (float32, not normalized).

    The channels are reduced by ``reduction``: ``"abs_sum"`` (sum of absolute values; the default for input
    attributions), ``"sum"`` (signed sum, e.g. to keep LRP's negative relevance low), ``"relu_sum"``
    (``max(0, sum)``: Grad-CAM's rule, the default for layer attributions), ``"max_abs"`` (the largest absolute
    value, this package's ``"Gradient"``), or a callable ``(N, C, h, w) -> (N, h, w)``. A map smaller than
    ``size`` is then resized bilinearly (``align_corners=False``), as the CAMs are.

    Example:
        >>> attribution = torch.tensor([[[[1.0, -2.0]], [[-3.0, 1.0]]]])  # (1, 2, 1, 2)
        >>> attribution_to_map(attribution, (1, 2)), attribution_to_map(attribution, (1, 2), "relu_sum")
        (tensor([[[4., 3.]]]), tensor([[[0., 0.]]]))
    """
    if not isinstance(attribution, Tensor) or attribution.ndim != 4:
        shape = tuple(attribution.shape) if isinstance(attribution, Tensor) else type(attribution).__name__
        raise ValueError(f"Expected an attribution of shape (N, C, h, w), but got {shape}")
    attribution = attribution.detach().float()
    if callable(reduction):
        maps = reduction(attribution)
        if not isinstance(maps, Tensor) or maps.shape != (attribution.shape[0], *attribution.shape[-2:]):
            shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
            raise ValueError(
                f"Expected the `reduction` callable to return ({attribution.shape[0]}, h, w) maps for an attribution "
                f"of shape {tuple(attribution.shape)}, but it returned {shape}"
            )
    elif reduction == "abs_sum":
        maps = attribution.abs().sum(dim=1)
    elif reduction == "sum":
        maps = attribution.sum(dim=1)
    elif reduction == "relu_sum":
        maps = attribution.sum(dim=1).clamp_min(0)
    elif reduction == "max_abs":
        maps = attribution.abs().amax(dim=1)
    else:
        raise ValueError(f"Expected `reduction` to be one of {REDUCTIONS} or a callable, but got {reduction!r}")
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return maps.float()


def maps_from_output(output: object, images: Tensor, name: str = "cam") -> Tensor:
    """Read what a saliency function returned as ``(N, H, W)`` float32 maps in [0, 1] on the images' device.

    Accepts ``(N, H, W)``, ``(N, h, w)`` or ``(N, 1, h, w)`` in any range: resized bilinearly to the images'
    size, non-finite values set to 0, then min-max normalized per map (a constant map becomes zeros).
    ``TypeError``/``ValueError`` name the method and what it returned.
    """
    expected = "a tensor of maps (N, H, W) or (N, 1, h, w)"
    if isinstance(output, Explanation):
        output = output.maps
    if not isinstance(output, Tensor):
        raise TypeError(f"Expected the saliency method {name!r} to return {expected}, but it returned {type(output)}")
    batch = images.shape[0]
    shape = tuple(output.shape)
    if output.ndim == 4 and output.shape[1] == 1:
        output = output[:, 0]
    if output.ndim != 3 or output.shape[0] != batch or output.is_complex() or 0 in output.shape:
        raise ValueError(
            f"Expected the saliency method {name!r} to return {expected} with N = {batch} for images of shape "
            f"{tuple(images.shape)}, but it returned a tensor of shape {shape} and dtype {output.dtype}"
        )
    maps = output.detach().to(device=images.device, dtype=torch.float32)
    maps = torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps))
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return min_max_normalize(maps)


def function_name(function: object) -> str:
    """A readable name of a saliency function: its ``__name__``, or its class's."""
    name = getattr(function, "__name__", None)
    return name if isinstance(name, str) else type(function).__name__


class CallableExplainer:
    """A :data:`SaliencyFunction` as an :class:`Explainer`.

    Per call: one forward pass without autograd gives the logits (``output_transform`` extracts them) and the
    class explained (``targets``, or the argmax); the function gets a detached copy of the images and those
    targets; its output goes through :func:`maps_from_output`. ``kwargs`` are passed to the function.
    """

    def __init__(
        self,
        function: Callable[..., object],
        *,
        name: str | None = None,
        output_transform: OutputTransform | None = None,
        kwargs: dict[str, object] | None = None,
    ) -> None:
        if not callable(function):
            raise TypeError(f"Expected a callable (model, images, targets) -> maps, but got {function!r}")
        self.function = function
        self.name = name or function_name(function)
        self.output_transform = output_transform
        self.kwargs = dict(kwargs or {})

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        with torch.no_grad():
            logits = logits_from_output(model(images), self.output_transform, num_images=images.shape[0])
            logits = logits.detach().float()
        if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
            raise ValueError(f"Expected the model to return logits of shape (N, K), but got {tuple(logits.shape)}")
        targets = _resolve_targets(logits, targets)
        output = self.function(model, images.detach().clone(), targets.clone(), **self.kwargs)
        return Explanation(maps_from_output(output, images, self.name), logits)


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


def occurrence_rounds(rows: Tensor) -> list[Tensor]:
    """Positions of ``rows`` split into rounds in which every row occurs at most once: round r holds each row's
    (r+1)-th occurrence. One backward pass per round gives every pair its own gradient.

    Example:
        >>> [r.tolist() for r in occurrence_rounds(torch.tensor([0, 1, 0, 0, 2]))]
        [[0, 1, 4], [2], [3]]
    """
    count = rows.numel()
    order = torch.sort(rows, stable=True).indices
    ranked = rows[order]
    positions = torch.arange(count, device=rows.device)
    starts = torch.ones(count, dtype=torch.bool, device=rows.device)
    starts[1:] = ranked[1:] != ranked[:-1]
    first = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=0).values
    rank = torch.empty_like(positions)
    rank[order] = positions - first
    return [torch.nonzero(rank == r).squeeze(1) for r in range(int(rank.max()) + 1 if count else 0)]


def _checked_score(score: Tensor) -> Tensor:
    if not score.requires_grad:
        raise ValueError(
            "Expected the model's logits to depend on the target layer with autograd, but they do not require "
            "grad (does the model's forward detach its output or run under torch.no_grad()?)"
        )
    return score


def _no_gradient_message(name: str) -> str:
    return (
        f"Expected the logits to depend on the output of target layer {name!r} (on its last call, if it runs several "
        "times per forward pass), but they do not; choose a layer the logits are computed from"
    )


def forward_capturing(
    model: nn.Module,
    images: Tensor,
    target_layers: Sequence[nn.Module],
    reader: FeatureMapReader,
    output_transform: OutputTransform | None,
    capture: Callable[[Tensor], tuple[Tensor, Tensor | None]],
) -> tuple[Tensor, list[Tensor]]:
    """One forward pass under ``no_grad`` (the caller's grad mode is restored on exit, whatever a hook sets) with
    ``capture(output) -> (kept, replacement or None)`` on each target layer's output; returns the logits and what
    was kept of each layer at its last call. ``ValueError`` when a target layer did not run."""
    activations: dict[int, Tensor] = {}

    def hook(index: int) -> Callable[[nn.Module, object, object], Tensor | None]:
        def run(module: nn.Module, inputs: object, output: object) -> Tensor | None:
            reader.check(output, module)
            assert isinstance(output, Tensor)
            activations[index], replacement = capture(output)  # a reused layer: the last call wins
            return replacement

        return run

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(target_layers)]
    try:
        with torch.no_grad():
            logits = logits_from_output(model(images), output_transform, num_images=images.shape[0])
    finally:
        for handle in handles:
            handle.remove()
    missing = [reader.name(layer) for i, layer in enumerate(target_layers) if i not in activations]
    if missing:
        raise ValueError(
            f"Expected every target layer to run in the forward pass, but {', '.join(map(repr, missing))} did not"
        )
    return logits, [activations[i] for i in range(len(target_layers))]


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

        def capture(output: Tensor) -> tuple[Tensor, Tensor]:
            if not (torch.is_grad_enabled() and output.requires_grad):
                # The layers below ran without autograd: start the graph here, for the head only. A later call of
                # a reused layer already requires grad; its gradient then flows through the calls after it.
                output = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            # The network gets a copy: an in-place op downstream (ReLU(inplace=True), `out += identity`)
            # must neither fail on the leaf nor change the activation the CAM is computed from.
            return output, output.clone()

        return forward_capturing(model, images, self.target_layers, reader, self.output_transform, capture)

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        reader = FeatureMapReader(model, images, self.reshape_transform)
        logits, activations = self._forward(model, images, reader)
        targets = _resolve_targets(logits, targets)
        grads = torch.autograd.grad(_checked_score(_target_scores(logits, targets)), activations, allow_unused=True)
        maps = self._maps(reader, images.shape[-2:], activations, grads, None)
        return Explanation(maps, logits.detach().float())

    def explain_rows(self, model: nn.Module, images: Tensor, rows: Tensor, targets: Tensor) -> Explanation:
        """Class ``targets[q]``'s map of ``images[rows[q]]`` for every pair q, from one forward pass.

        The head is differentiated once per round of :func:`occurrence_rounds`
        (each image at most once per round, so the summed score's gradient is each image's own), keeping the graph
        between rounds: several classes of one image cost one forward pass and one head backward each
        (decision 46). The maps equal those of ``self(model, images[rows], targets)``.
        """
        reader = FeatureMapReader(model, images, self.reshape_transform)
        logits, activations = self._forward(model, images, reader)
        targets = _resolve_targets(logits, targets)
        maps = images.new_zeros((rows.numel(), *images.shape[-2:]), dtype=torch.float32)
        rounds = occurrence_rounds(rows)
        for number, selected in enumerate(rounds):
            score = _checked_score(logits[rows[selected], targets[selected]].sum())
            last = number == len(rounds) - 1
            grads = torch.autograd.grad(score, activations, allow_unused=True, retain_graph=not last)
            maps[selected] = self._maps(reader, images.shape[-2:], activations, grads, rows[selected])
        return Explanation(maps, logits.detach().float()[rows])

    def _maps(
        self,
        reader: FeatureMapReader,
        size: tuple[int, ...],
        activations: Sequence[Tensor],
        grads: Sequence[Tensor | None],
        rows: Tensor | None,
    ) -> Tensor:
        """The CAM of each image (of ``rows`` when given) from the target layers' outputs and their gradients."""
        height, width = size
        per_layer = []
        with torch.no_grad():
            for layer, activation, grad in zip(self.target_layers, activations, grads, strict=True):
                if grad is None:
                    raise ValueError(_no_gradient_message(reader.name(layer)))
                feature_map = reader(activation.detach(), layer).float()
                feature_grad = reader(grad, layer).float()
                if rows is not None:  # read as the whole batch (the reader knows its size), then the pairs' images
                    feature_map, feature_grad = feature_map[rows], feature_grad[rows]
                cam = NATIVE_CAMS[self.method](feature_map, feature_grad).clamp_min(0)
                cam = _scale_like_grad_cam(cam)
                if cam.shape[-2:] != (height, width):
                    cam = F.interpolate(cam.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
                    cam = cam.squeeze(1)
                per_layer.append(cam)
            maps = _scale_like_grad_cam(torch.stack(per_layer, dim=1).clamp_min(0).mean(dim=1))
        return torch.nan_to_num(maps, nan=0.0).clamp(0, 1)


class GradientExplainer:
    """Vanilla gradient saliency (Simonyan et al.): ``max_c |d logit_k / d x_c|``, min-max normalized.

    ``output_transform`` extracts the logits from the model's output, as in :class:`NativeCAM`.
    """

    def __init__(self, *, output_transform: OutputTransform | None = None) -> None:
        self.output_transform = output_transform

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        inputs = images.detach().clone().requires_grad_(True)
        logits = require_graph(logits_from_output(model(inputs), self.output_transform, num_images=inputs.shape[0]))
        targets = _resolve_targets(logits, targets)
        (grad,) = torch.autograd.grad(_target_scores(logits, targets), inputs)
        return Explanation(_gradient_maps(grad), logits.detach().float())

    def explain_rows(self, model: nn.Module, images: Tensor, rows: Tensor, targets: Tensor) -> Explanation:
        """Class ``targets[q]``'s gradient map of ``images[rows[q]]``: one forward pass, one backward per round of
        :func:`occurrence_rounds` (decision 46)."""
        inputs = images.detach().clone().requires_grad_(True)
        logits = require_graph(logits_from_output(model(inputs), self.output_transform))
        targets = _resolve_targets(logits, targets)
        maps = images.new_zeros((rows.numel(), *images.shape[-2:]), dtype=torch.float32)
        rounds = occurrence_rounds(rows)
        for number, selected in enumerate(rounds):
            score = logits[rows[selected], targets[selected]].sum()
            (grad,) = torch.autograd.grad(score, inputs, retain_graph=number < len(rounds) - 1)
            maps[selected] = _gradient_maps(grad[rows[selected]])
        return Explanation(maps, logits.detach().float()[rows])


def _gradient_maps(grad: Tensor) -> Tensor:
    """``max_c |g_c|`` per pixel, min-max normalized, NaN set to 0."""
    return torch.nan_to_num(min_max_normalize(grad.detach().abs().amax(dim=1).float()), nan=0.0)
