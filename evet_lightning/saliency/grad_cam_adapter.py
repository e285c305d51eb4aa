"""The one adapter around pytorch-grad-cam: the only module of this package that touches numpy.

It runs every pytorch-grad-cam method through the library itself and turns its numpy output into a tensor on the
images' device: the CAM classes (EigenCAM, AblationCAM, FullGrad, ShapleyCAM, the class ScoreCAM, ...), the methods
that wrap a base CAM (FinerCAM, RefineCAM, SESS; ``cam_kwargs["base_method"]``), ``GuidedBackpropReLUModel`` and
Guided Grad-CAM (docs/design.md, decisions 23-24). FullGrad records the layers it chooses itself (every Conv2d and
BatchNorm2d with a bias), ShapleyCAM the live activations and gradients it differentiates again. The library
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

import inspect
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytorch_grad_cam
import torch
from pytorch_grad_cam import FinerCAM, GuidedBackpropReLUModel, RefineCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.finer_cam import DEFAULT_COMPARISON_CATEGORIES
from pytorch_grad_cam.sess import SESS
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget
from torch import Tensor, nn

from evet_lightning._validation import check_int
from evet_lightning.saliency.explainers import Explanation, _no_gradient_message, _resolve_targets
from evet_lightning.saliency.outputs import LogitsModel, OutputTransform, require_graph
from evet_lightning.saliency.reshape import FeatureMapReader, ReshapeTransform

__all__ = [
    "WRAPPER_CLASSES",
    "GradCamLibraryExplainer",
    "GuidedGradCAM",
    "available_cam_classes",
    "is_cam_class",
    "is_library_method",
    "library_methods",
    "split_cam_kwargs",
]


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


class _LastCallRecorder:
    """Stands in for the library's ``ActivationsAndGradients``: the last call of each target layer, as a feature map.

    ``activations`` and ``gradients`` are lists with one ``(B, C, h, w)`` CPU tensor per target layer, read by
    ``reader``, as the library expects. Only calls made inside :meth:`__call__` (the library's forward pass)
    are recorded, not the extra forward passes of ScoreCAM or AblationCAM.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reader: FeatureMapReader,
        uses_gradients: bool,
        detach: bool = True,
    ) -> None:
        self.model = model
        self.uses_gradients = uses_gradients
        self.target_layers = list(target_layers)
        self.reader = reader
        self.reshape_transform = reader.reshape_transform  # the library's attribute, for code that reads it
        self.detach = detach
        self._recording = False
        self._calls = [0] * len(self.target_layers)
        self._outputs: list[Tensor | None] = [None] * len(self.target_layers)
        self._grads: list[Tensor | None] = [None] * len(self.target_layers)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.target_layers)]

    def _hook(self, index: int) -> Callable[[nn.Module, Any, Any], Tensor | None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
            if not self._recording:
                return None
            self.reader.check(output, module)
            self._calls[index] += 1
            call = self._calls[index]
            if output.requires_grad:
                # Registered before any in-place op, so it receives the gradient of this call's own output.
                output.register_hook(lambda grad: self._store_grad(index, call, grad))
            if not self.detach:
                # ShapleyCAM differentiates the gradient again with respect to this very tensor: keep it in the
                # graph, and hand the network a copy so that an in-place op downstream cannot change it.
                self._outputs[index] = output
                return output.clone()
            # A copy now: an in-place op after the layer must not change the activation the CAM weights.
            self._outputs[index] = output.detach().clone()
            return None

        return record

    def _store_grad(self, index: int, call: int, grad: Tensor) -> None:
        if call == self._calls[index]:  # the last call of a reused layer
            self._grads[index] = grad.detach() if self.detach else grad

    def __call__(self, images: Tensor) -> Tensor:
        if (self.reader.batch_size, self.reader.image_size) != (int(images.shape[0]), tuple(images.shape[-2:])):
            # SESS explains patches of another size and number: read their layer outputs with their own shape.
            self.reader = FeatureMapReader(self.reader.model, images, self.reader.reshape_transform)
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
        if not self.detach:  # the graph's own tensors, read by the library (ShapleyCAM's Hessian term)
            return [output for output in self._outputs if output is not None]
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
                grads.append(grad if not self.detach else self.reader(grad, layer).float().cpu())
            elif self.uses_gradients:
                raise ValueError(_no_gradient_message(self.reader.name(layer)))
        return grads

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._outputs = [None] * len(self.target_layers)
        self._grads = [None] * len(self.target_layers)


class GuidedGradCAM:
    """Guided Grad-CAM (Selvaraju et al.): pytorch-grad-cam's ``GuidedBackpropReLUModel`` map times a CAM's map.

    A marker for :func:`resolve_cam` (``cam="GuidedGradCAM"`` or this class); the work is done by
    :class:`GradCamLibraryExplainer`. The base CAM is ``cam_kwargs["base_method"]`` (default ``GradCAM``).
    """


#: pytorch-grad-cam's methods that wrap a base CAM (``base_method=``), with their own defaults for it.
WRAPPER_CLASSES: dict[str, type] = {"FinerCAM": FinerCAM, "RefineCAM": RefineCAM, "SESS": SESS}
#: Keyword arguments of the call (``cam(input_tensor, targets, **kwargs)``) rather than of the constructor.
_CALL_KWARGS: dict[str, frozenset[str]] = {
    "base": frozenset({"aug_smooth", "eigen_smooth"}),
    "FinerCAM": frozenset({"eigen_smooth", "alpha", "comparison_categories"}),
    "RefineCAM": frozenset({"eigen_smooth"}),
    "SESS": frozenset({"eigen_smooth"}),
    "GuidedBackpropReLUModel": frozenset(),
    "GuidedGradCAM": frozenset({"aug_smooth", "eigen_smooth"}),
}
_LAYER_ARGS = frozenset({"self", "model", "target_layers", "reshape_transform", "args", "kwargs", "device"})


def library_methods() -> dict[str, type]:
    """Every method of pytorch-grad-cam this adapter runs, by name: the CAM classes, the wrappers of a base CAM
    (FinerCAM, RefineCAM, SESS), ``GuidedBackpropReLUModel``, and :class:`GuidedGradCAM`."""
    return {
        **available_cam_classes(),
        **WRAPPER_CLASSES,
        "GuidedBackpropReLUModel": GuidedBackpropReLUModel,
        "GuidedGradCAM": GuidedGradCAM,
    }


def is_library_method(obj: object) -> bool:
    """A CAM class, one of the wrappers, ``GuidedBackpropReLUModel``, :class:`GuidedGradCAM`, or a subclass."""
    return is_cam_class(obj) or (
        isinstance(obj, type) and issubclass(obj, (*WRAPPER_CLASSES.values(), GuidedBackpropReLUModel, GuidedGradCAM))
    )


def _kind(method: type) -> str:
    for name, cls in (*WRAPPER_CLASSES.items(), ("GuidedBackpropReLUModel", GuidedBackpropReLUModel)):
        if issubclass(method, cls):
            return name
    return "GuidedGradCAM" if issubclass(method, GuidedGradCAM) else "base"


def _init_parameters(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    return {name for name, param in params.items() if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)}


def _base_method(value: object) -> type[BaseCAM]:
    classes = available_cam_classes()
    if isinstance(value, str) and value.rsplit(".", 1)[-1] in classes:
        return classes[value.rsplit(".", 1)[-1]]
    if is_cam_class(value):
        return value  # type: ignore[return-value]
    raise ValueError(
        "Expected `cam_kwargs['base_method']` to be a pytorch-grad-cam CAM class or name "
        f"({', '.join(sorted(classes))}), but got {value!r}"
    )


def split_cam_kwargs(method: type, cam_kwargs: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cam_kwargs`` for ``method`` split into ``(constructor kwargs, call kwargs)``; ``ValueError`` for a key the
    method does not take. ``base_method`` (wrappers and Guided Grad-CAM) may be a class or a name; ``batch_size``
    (masked images per forward pass of ScoreCAM and AblationCAM) is accepted by every method."""
    kind = _kind(method)
    init_kwargs: dict[str, Any] = {}
    call_kwargs: dict[str, Any] = {}
    if kind == "base":
        init_names = _init_parameters(method) - _LAYER_ARGS
    elif kind == "GuidedBackpropReLUModel":
        init_names = set()
    else:
        init_names = {"base_method"}
        if kind == "SESS":
            init_names |= _init_parameters(method) - _LAYER_ARGS
    items = dict(cam_kwargs or {})
    base = items.get("base_method")
    if "base_method" in items:
        if "base_method" not in init_names:
            raise ValueError(f"Expected no `base_method` in `cam_kwargs`: {method.__name__} does not wrap a base CAM")
        base = items["base_method"] = _base_method(base)
    elif kind == "GuidedGradCAM":
        base = items["base_method"] = pytorch_grad_cam.GradCAM
    if kind in WRAPPER_CLASSES or kind == "GuidedGradCAM":
        default_base = inspect.signature(method.__init__).parameters.get("base_method")  # type: ignore[misc]
        base_class = base if base is not None else getattr(default_base, "default", pytorch_grad_cam.GradCAM)
        init_names |= _init_parameters(base_class) - _LAYER_ARGS  # the wrappers pass the rest to the base method
    for key, value in items.items():
        if key == "batch_size":
            call_kwargs[key] = check_int("cam_kwargs['batch_size']", value, 1)
        elif key in _CALL_KWARGS[kind]:
            call_kwargs[key] = value
        elif key in init_names:
            init_kwargs[key] = value
        else:
            allowed = sorted(init_names | _CALL_KWARGS[kind] | {"batch_size"})
            raise ValueError(
                f"Expected the keys of `cam_kwargs` for {method.__name__} to be among {allowed}, but got {key!r}"
            )
    if kind == "GuidedGradCAM" and "base_method" not in init_kwargs:
        init_kwargs["base_method"] = base
    return init_kwargs, call_kwargs


def _cams_within(cam: object) -> list[BaseCAM]:
    """The ``BaseCAM`` objects a method runs: itself, a wrapper's ``base_cam``, RefineCAM's one per layer."""
    if isinstance(cam, BaseCAM):
        return [cam]
    found = [getattr(cam, "base_cam", None), *getattr(cam, "base_cam_per_layer", [])]
    return [item for item in found if isinstance(item, BaseCAM)]


def _scale(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` per map: ``(x - min) / (1e-7 + max(x - min))``."""
    flat = maps.reshape(maps.shape[0], -1)
    flat = flat - flat.min(axis=1, keepdims=True)
    flat = flat / (1e-7 + flat.max(axis=1, keepdims=True))
    return flat.reshape(maps.shape).astype(np.float32)


def _finer_targets(logits: np.ndarray, targets: list[int], options: dict[str, Any]) -> list[FinerWeightedTarget]:
    """FinerCAM's targets for the fixed classes: the class against its most similar classes (the smallest
    ``|logit - logit_k|``), as ``FinerCAM.forward`` builds them for the argmax."""
    num_classes = logits.shape[-1]
    comparisons = options.get("comparison_categories")
    if comparisons is None:
        comparisons = list(DEFAULT_COMPARISON_CATEGORIES[: max(num_classes - 1, 0)])
    else:
        comparisons = [int(c) for c in comparisons if int(c) < num_classes]
    alpha = options.get("alpha", 1)
    result = []
    for row, k in zip(logits, targets, strict=True):
        order = np.argsort(np.abs(row - row[k]))
        result.append(FinerWeightedTarget(k, [int(order[idx]) for idx in comparisons], alpha))
    return result


class GradCamLibraryExplainer:
    """Run the pytorch-grad-cam method ``cam_class`` on ``target_layers``; ``batch_size`` feeds its own batching.

    ``cam_class`` is a CAM class, a wrapper (FinerCAM, RefineCAM, SESS: their base CAM in
    ``cam_kwargs["base_method"]``, else the library's default), ``GuidedBackpropReLUModel`` or
    :class:`GuidedGradCAM`; ``cam_kwargs`` are split by :func:`split_cam_kwargs`. ``reshape_transform`` is passed to
    the library (its ``reshape_transform=``) and read as in :class:`~evet_lightning.saliency.explainers.NativeCAM`;
    ``output_transform`` extracts the logits from the model's output. A reused target layer is explained at its
    last call.

    Guided backpropagation's ``(H, W, C)`` input gradient becomes a map as the package's ``"Gradient"`` does:
    the largest absolute value over the channels, then scaled to [0, 1] like pytorch-grad-cam's maps; Guided
    Grad-CAM is that map times the base CAM's map, scaled again.
    """

    def __init__(
        self,
        cam_class: type,
        target_layers: Sequence[nn.Module],
        batch_size: int = 64,
        *,
        reshape_transform: ReshapeTransform | None = None,
        output_transform: OutputTransform | None = None,
        cam_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.cam_class = cam_class
        self.target_layers = list(target_layers)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.reshape_transform = reshape_transform
        self.output_transform = output_transform
        self.init_kwargs, self.call_kwargs = split_cam_kwargs(cam_class, cam_kwargs)
        self.batch_size = self.call_kwargs.pop("batch_size", self.batch_size)
        self.kind = _kind(cam_class)

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        wrapped = LogitsModel(model, self.output_transform)
        logits: Tensor | None = None
        # Check the class range before the library runs: it would index past the logits (IndexError) or, for a
        # negative class, silently explain a class counted from the end. The methods that are not CAM classes need
        # the classes (and FinerCAM the logits) up front.
        if self.kind != "base":
            with torch.no_grad():
                logits = wrapped(images).detach().float()
            targets = _resolve_targets(logits, targets)
        elif targets is not None:
            with torch.no_grad():
                _resolve_targets(wrapped(images[:1]).float(), targets)
        numpy_rng = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what RandomCAM draws from)
        try:
            if self.kind == "GuidedBackpropReLUModel":
                assert targets is not None
                grayscale = _scale(self._guided_backprop(wrapped, images, targets))
            elif self.kind == "GuidedGradCAM":
                assert targets is not None
                base_class = self.init_kwargs["base_method"]
                base_kwargs = {key: value for key, value in self.init_kwargs.items() if key != "base_method"}
                cam_maps, _ = self._run_cam(model, wrapped, base_class, base_kwargs, images, targets)
                guided = self._guided_backprop(wrapped, images, targets)
                grayscale = _scale(_scale(guided) * cam_maps)
            else:
                grayscale, outputs = self._run_cam(model, wrapped, self.cam_class, self.init_kwargs, images, targets)
                if logits is None and isinstance(outputs, Tensor):
                    logits = outputs.detach().float()
        finally:
            np.random.set_state(numpy_rng)  # noqa: NPY002
        if logits is None:
            with torch.no_grad():
                logits = wrapped(images).detach().float()
        maps = torch.from_numpy(np.ascontiguousarray(grayscale, dtype=np.float32)).to(images.device)
        return Explanation(torch.nan_to_num(maps, nan=0.0).clamp(0, 1), logits.to(images.device))

    def _run_cam(
        self,
        model: nn.Module,
        wrapped: nn.Module,
        cam_class: type,
        init_kwargs: dict[str, Any],
        images: Tensor,
        targets: Tensor | None,
    ) -> tuple[np.ndarray, object]:
        """The map of a CAM class or wrapper; each of its base CAMs records through :class:`_LastCallRecorder`."""
        cam = None
        cams: list[BaseCAM] = []
        try:
            # FullGrad picks its own layers (every Conv2d and BatchNorm2d with a bias) and prints a warning
            # when given any: it gets none.
            layers = [] if issubclass(cam_class, pytorch_grad_cam.FullGrad) else self.target_layers
            cam = cam_class(
                model=wrapped, target_layers=layers, reshape_transform=self.reshape_transform, **init_kwargs
            )
            cams = _cams_within(cam)
            reader = FeatureMapReader(model, images, self.reshape_transform)
            for base in cams:
                base.activations_and_grads.release()
                uses_gradients = bool(getattr(base, "uses_gradients", True))
                # The layers the library itself chose (FullGrad's bias layers, RefineCAM's one per base CAM).
                base.activations_and_grads = _LastCallRecorder(
                    wrapped, list(base.target_layers), reader, uses_gradients, detach=bool(base.detach)
                )
                base.batch_size = self.batch_size  # type: ignore[attr-defined]  # ScoreCAM and AblationCAM read it
            # An input that requires grad lets the gradient CAMs run on a model whose parameters are frozen.
            inputs = images.detach().clone().requires_grad_(True)
            call_kwargs = dict(self.call_kwargs)
            cam_targets: list[Any] | None
            if self.kind == "FinerCAM" and cam_class is self.cam_class:
                assert targets is not None
                with torch.no_grad():
                    numpy_logits = wrapped(images).detach().float().cpu().numpy()
                cam_targets = _finer_targets(numpy_logits, [int(k) for k in targets.tolist()], call_kwargs)
                call_kwargs = {key: value for key, value in call_kwargs.items() if key == "eigen_smooth"}
            else:
                cam_targets = None if targets is None else [ClassifierOutputTarget(int(k)) for k in targets.tolist()]
            with _quiet_progress_bars():
                grayscale = cam(inputs, cam_targets, **call_kwargs)
            return np.asarray(grayscale, dtype=np.float32), getattr(cam, "outputs", None)
        finally:
            for base in cams:
                base.activations_and_grads.release()

    def _guided_backprop(self, wrapped: LogitsModel, images: Tensor, targets: Tensor) -> np.ndarray:
        """``GuidedBackpropReLUModel`` per image (the library takes one), reduced to ``(N, H, W)``: max |g| over
        the channels. The library swaps every ``nn.ReLU`` for its guided ReLU and puts back new ReLUs: the module
        tree is restored here (the original modules, hooks on them included), also when it fails."""
        modules = list(wrapped.modules())
        children = [(module, dict(module._modules)) for module in modules]
        try:
            guided = GuidedBackpropReLUModel(wrapped)
            out = []
            for image, k in zip(images, targets.tolist(), strict=True):
                gradient = guided(image[None].detach().clone(), target_category=int(k))
                out.append(np.abs(gradient).max(axis=-1))
                for module, saved in children:
                    module._modules.clear()
                    module._modules.update(saved)
            return np.stack(out).astype(np.float32)
        finally:
            for module, saved in children:
                if module._modules != saved:
                    module._modules.clear()
                    module._modules.update(saved)


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
