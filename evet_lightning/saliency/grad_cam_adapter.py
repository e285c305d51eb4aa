"""The one adapter around pytorch-grad-cam: the only module of this package that touches numpy.

It runs any pytorch-grad-cam CAM class (ScoreCAM, EigenCAM, AblationCAM, EigenGradCAM, RandomCAM, ...)
through the library itself and turns its numpy output into a tensor on the images' device. The library
flips the model to eval mode in its constructor, writes parameter ``.grad`` through ``loss.backward()``,
registers hooks, may swap layers (AblationCAM) and draws from numpy's global RNG (RandomCAM); the caller
wraps it in :func:`~evet_lightning._model_state.model_state_guard` with ``protect_grads=True``, and this
module releases the hooks and restores numpy's RNG itself. Errors propagate: the library's ``__exit__``,
which prints and swallows ``IndexError``, is never used.

Two things differ from calling the library directly, so that both backends explain the same thing:

- The library's ``ActivationsAndGradients`` is replaced by :class:`_LastCallRecorder`. The library keeps the
  first call of a reused layer and a reference to the output, which an in-place op after the layer then
  mutates. The recorder keeps a copy of the layer's own output at its last call, with that output's gradient.
  It reads outputs with ``reshape_transform``, or with :func:`~evet_lightning.saliency.reshape.infer_layout`
  when there is none.
- The model is wrapped so that the library sees a logits tensor whatever the model returns
  (:func:`~evet_lightning.saliency.outputs.logits_from_output`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytorch_grad_cam
import torch
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from evet_lightning._validation import check_int
from evet_lightning.saliency.explainers import Explanation, _no_gradient_message, _resolve_targets
from evet_lightning.saliency.outputs import OutputTransform, logits_from_output, require_graph
from evet_lightning.saliency.reshape import FeatureMapReader, ReshapeTransform

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


class _LogitsModel(nn.Module):
    """``model`` whose forward returns the logits tensor, for the library's targets and argmax."""

    def __init__(self, model: nn.Module, output_transform: OutputTransform | None) -> None:
        super().__init__()
        self.model = model
        self.output_transform = output_transform

    def forward(self, images: Tensor) -> Tensor:
        return logits_from_output(self.model(images), self.output_transform)


class _LastCallRecorder:
    """Stands in for the library's ``ActivationsAndGradients``: the last call of each target layer, as a feature map.

    ``activations`` and ``gradients`` are lists with one ``(B, C, h, w)`` CPU tensor per target layer, read by
    ``reader``, as the library expects. Only calls made inside :meth:`__call__` (the library's forward pass)
    are recorded, not the extra forward passes of ScoreCAM or AblationCAM.
    """

    def __init__(
        self, model: nn.Module, target_layers: Sequence[nn.Module], reader: FeatureMapReader, uses_gradients: bool
    ) -> None:
        self.model = model
        self.uses_gradients = uses_gradients
        self.target_layers = list(target_layers)
        self.reader = reader
        self.reshape_transform = reader.reshape_transform  # the library's attribute, for code that reads it
        self.detach = True
        self._recording = False
        self._calls = [0] * len(self.target_layers)
        self._outputs: list[Tensor | None] = [None] * len(self.target_layers)
        self._grads: list[Tensor | None] = [None] * len(self.target_layers)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.target_layers)]

    def _hook(self, index: int) -> Callable[[nn.Module, Any, Any], None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._recording:
                return
            self.reader.check(output, module)
            self._calls[index] += 1
            call = self._calls[index]
            # A copy now: an in-place op after the layer must not change the activation the CAM weights.
            self._outputs[index] = output.detach().clone()
            if output.requires_grad:
                # Registered before any in-place op, so it receives the gradient of this call's own output.
                output.register_hook(lambda grad: self._store_grad(index, call, grad))

        return record

    def _store_grad(self, index: int, call: int, grad: Tensor) -> None:
        if call == self._calls[index]:  # the last call of a reused layer
            self._grads[index] = grad.detach()

    def __call__(self, images: Tensor) -> Tensor:
        self._calls = [0] * len(self.target_layers)
        self._outputs = [None] * len(self.target_layers)
        self._grads = [None] * len(self.target_layers)
        self._recording = True
        try:
            outputs = self.model(images)
        finally:
            self._recording = False
        missing = [
            self.reader.name(layer)
            for layer, output in zip(self.target_layers, self._outputs, strict=True)
            if output is None
        ]
        if missing:
            raise ValueError(
                f"Expected every target layer to run in the forward pass, but {', '.join(map(repr, missing))} did not"
            )
        if self.uses_gradients and torch.is_grad_enabled():  # the library differentiates these logits next
            require_graph(outputs)
        return outputs

    @property
    def activations(self) -> list[Tensor]:
        return [
            self.reader(output, layer).float().cpu()
            for layer, output in zip(self.target_layers, self._outputs, strict=True)
            if output is not None
        ]

    @property
    def gradients(self) -> list[Tensor]:
        grads = []
        for layer, grad in zip(self.target_layers, self._grads, strict=True):
            if grad is not None:
                grads.append(self.reader(grad, layer).float().cpu())
            elif self.uses_gradients:
                raise ValueError(_no_gradient_message(self.reader.name(layer)))
        return grads

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._outputs = [None] * len(self.target_layers)
        self._grads = [None] * len(self.target_layers)


class GradCamLibraryExplainer:
    """Run the pytorch-grad-cam class ``cam_class`` on ``target_layers``; ``batch_size`` feeds its own batching.

    ``reshape_transform`` is passed to the library (its ``reshape_transform=``) and read as in
    :class:`~evet_lightning.saliency.explainers.NativeCAM`; ``output_transform`` extracts the logits from the
    model's output. A reused target layer is explained at its last call.
    """

    def __init__(
        self,
        cam_class: type[BaseCAM],
        target_layers: Sequence[nn.Module],
        batch_size: int = 64,
        *,
        reshape_transform: ReshapeTransform | None = None,
        output_transform: OutputTransform | None = None,
    ) -> None:
        self.cam_class = cam_class
        self.target_layers = list(target_layers)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.reshape_transform = reshape_transform
        self.output_transform = output_transform

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        wrapped = _LogitsModel(model, self.output_transform)
        if targets is not None:
            # Check the class range before the library runs: it would index past the logits (IndexError) or,
            # for a negative class, silently explain a class counted from the end.
            with torch.no_grad():
                _resolve_targets(wrapped(images[:1]).float(), targets)
        numpy_rng = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what RandomCAM draws from)
        cam = None
        try:
            cam = self.cam_class(
                model=wrapped, target_layers=self.target_layers, reshape_transform=self.reshape_transform
            )
            cam.activations_and_grads.release()
            reader = FeatureMapReader(model, images, self.reshape_transform)
            uses_gradients = bool(getattr(cam, "uses_gradients", True))
            cam.activations_and_grads = _LastCallRecorder(wrapped, self.target_layers, reader, uses_gradients)
            cam.batch_size = self.batch_size  # ScoreCAM and AblationCAM read it
            # An input that requires grad lets the gradient CAMs run on a model whose parameters are frozen.
            inputs = images.detach().clone().requires_grad_(True)
            cam_targets = None if targets is None else [ClassifierOutputTarget(int(k)) for k in targets.tolist()]
            with _quiet_progress_bars():
                grayscale = cam(input_tensor=inputs, targets=cam_targets)
            outputs = getattr(cam, "outputs", None)
            if isinstance(outputs, Tensor):
                logits = outputs.detach().float()
            else:
                with torch.no_grad():
                    logits = wrapped(images).detach().float()
        finally:
            if cam is not None:
                cam.activations_and_grads.release()
            np.random.set_state(numpy_rng)  # noqa: NPY002
        maps = torch.from_numpy(np.ascontiguousarray(grayscale, dtype=np.float32)).to(images.device)
        return Explanation(torch.nan_to_num(maps, nan=0.0).clamp(0, 1), logits.to(images.device))


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """ScoreCAM and AblationCAM draw a tqdm bar per batch of masked images on stderr: hundreds of lines in a
    Lightning run. For the call, the library's own ``tqdm`` name (in its modules only) yields the items without a
    bar; it is put back afterwards, also on error."""
    silent = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    patched = []
    for name in ("score_cam", "ablation_cam", "ablation_cam_multilayer"):
        module = sys.modules.get(f"pytorch_grad_cam.{name}")
        if module is not None and hasattr(module, "tqdm"):
            patched.append((module, module.tqdm))
            module.tqdm = silent  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in patched:
            module.tqdm = original  # type: ignore[attr-defined]
