"""Captum attributions as saliency functions (the optional ``captum`` extra: ``pip install evet-lightning[captum]``).

Any ``captum.attr`` attribution class works, by class or by name (``"captum:IntegratedGradients"``):

- input attributions (IntegratedGradients, Saliency, InputXGradient, GuidedBackprop, DeepLift, GradientShap,
  Occlusion, LRP, ...) are built on the model (``Class(model)``); layer attributions (LayerGradCam, ...) on the
  model and EVET's target layer (``Class(model, layer)``); ``NoiseTunnel`` wraps another method
  (``"captum:NoiseTunnel(IntegratedGradients)"``, ``"captum:SmoothGrad"`` = ``NoiseTunnel(Saliency)``).
- ``attribute(images, target=targets, **attribute_kwargs)`` is called with the class EVET explains. Defaults only
  where Captum has none: ``baselines`` = zeros for methods that require them (GradientShap), and for Occlusion
  a window of ``(C, ceil(H / 8), ceil(W / 8))`` moved by half its size.
- The attribution becomes a map by :func:`~evet_lightning.saliency.explainers.attribution_to_map`: ``"abs_sum"``
  for input attributions, ``"relu_sum"`` for layer attributions (Grad-CAM's ReLU, so ``LayerGradCam`` needs no
  ``relu_attributions=True``), resized bilinearly; ``reduction=`` changes it.

For LRP, parameter-free layers Captum has no rule for (``Flatten``, ``Identity``) pass relevance through
(Captum's ``IdentityRule``) instead of failing. Captum's hooks and ``requires_grad`` changes, the ``.grad`` it
writes and the attributes it leaves on modules (DeepLift's ``input``/``output``, LRP's ``activations``) are undone
by the engine's guard (decision 6); numpy's global RNG, which GradientShap draws from, is restored here (the only
use of numpy outside the pytorch-grad-cam adapter).
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

from torch import Tensor, nn

from evet_lightning.saliency.explainers import Reduction, attribution_to_map
from evet_lightning.saliency.outputs import LogitsModel, OutputTransform
from evet_lightning.saliency.reshape import ReshapeTransform

__all__ = ["CaptumExplainer", "captum_class", "is_captum_class"]

_INSTALL = "install the `captum` extra: pip install 'evet-lightning[captum]'"
#: Names that stand for a configured method.
_ALIASES = {"SmoothGrad": ("NoiseTunnel", "Saliency")}


def _captum_attr() -> Any:
    try:
        import captum.attr
    except ImportError as error:
        raise ValueError(f"Expected Captum to be installed for a Captum method ({_INSTALL}): {error}") from None
    return captum.attr


def is_captum_class(obj: object) -> bool:
    """Whether ``obj`` is a Captum attribution class (without importing Captum when it is not one)."""
    if not isinstance(obj, type) or not obj.__module__.startswith("captum."):
        return False
    attr = _captum_attr()
    return issubclass(obj, attr.Attribution)


def captum_class(method: str | type) -> type:
    """The ``captum.attr`` attribution class named ``method`` (or ``method`` itself); ``ValueError`` otherwise."""
    attr = _captum_attr()
    if isinstance(method, type) and issubclass(method, attr.Attribution):
        return method
    names = sorted(
        name
        for name, obj in vars(attr).items()
        if isinstance(obj, type) and issubclass(obj, attr.Attribution) and not inspect.isabstract(obj)
    )
    obj = getattr(attr, method, None) if isinstance(method, str) else None
    if not (isinstance(obj, type) and issubclass(obj, attr.Attribution)) or method in {
        "Attribution",
        "GradientAttribution",
        "LayerAttribution",
        "NeuronAttribution",
        "PerturbationAttribution",
    }:
        raise ValueError(f"Expected a captum.attr attribution class or name ({', '.join(names)}), but got {method!r}")
    if issubclass(obj, attr.NeuronAttribution):
        raise ValueError(f"Expected a Captum input or layer attribution, but {method!r} explains a single neuron")
    return obj


def parse_captum_name(text: str) -> tuple[type, type | None]:
    """``"IntegratedGradients"`` -> (class, None); ``"NoiseTunnel(Saliency)"``, ``"SmoothGrad"`` -> (NoiseTunnel,
    Saliency)."""
    text = text.strip()
    if text in _ALIASES:
        outer, inner = _ALIASES[text]
        return captum_class(outer), captum_class(inner)
    match = re.fullmatch(r"(\w+)\((\w+)\)", text)
    if match:
        return captum_class(match.group(1)), captum_class(match.group(2))
    return captum_class(text), None


class CaptumExplainer:
    """A Captum attribution as a saliency function ``(model, images, targets) -> maps (N, h, w)``.

    Args:
        method: a ``captum.attr`` class or its name (see :func:`parse_captum_name`).
        layer: the layer of a layer attribution (EVET passes its target layer).
        base: for ``NoiseTunnel``, the method it wraps (class or name); default ``Saliency`` (SmoothGrad).
        init_kwargs: keyword arguments of the Captum class's constructor (``multiply_by_inputs=False``, ...).
        attribute_kwargs: keyword arguments of ``attribute()`` (``n_steps``, ``nt_samples``, ``baselines``, ...).
        reduction: how the attribution becomes a map; ``"auto"``: ``"abs_sum"`` for input attributions,
            ``"relu_sum"`` for layer attributions (:func:`~evet_lightning.saliency.explainers.attribution_to_map`).
        output_transform: extracts the logits from the model's output.
        reshape_transform: turns a layer attribution that is not ``(N, C, h, w)`` (tokens) into one.
    """

    def __init__(
        self,
        method: str | type,
        *,
        layer: nn.Module | None = None,
        base: str | type | None = None,
        init_kwargs: dict[str, Any] | None = None,
        attribute_kwargs: dict[str, Any] | None = None,
        reduction: Reduction = "auto",
        output_transform: OutputTransform | None = None,
        reshape_transform: ReshapeTransform | None = None,
    ) -> None:
        attr = _captum_attr()
        if isinstance(method, str):
            self.method, parsed_base = parse_captum_name(method)
            base = base if base is not None else parsed_base
        else:
            self.method = captum_class(method)
        self.base = None
        if issubclass(self.method, attr.NoiseTunnel):
            self.base = captum_class(base if base is not None else "Saliency")
        elif base is not None:
            raise ValueError(f"Expected `base` only for NoiseTunnel, but got base={base!r} for {self.method.__name__}")
        explained = self.base if self.base is not None else self.method
        self.is_layer_method = issubclass(explained, attr.LayerAttribution)
        if self.is_layer_method and layer is None:
            raise ValueError(f"Expected a target layer for the Captum layer attribution {explained.__name__}")
        self.layer = layer
        self.init_kwargs = dict(init_kwargs or {})
        self.attribute_kwargs = dict(attribute_kwargs or {})
        if reduction == "auto":
            reduction = "relu_sum" if self.is_layer_method else "abs_sum"
        self.reduction = reduction
        self.output_transform = output_transform
        self.reshape_transform = reshape_transform
        self.__name__ = self.name

    @property
    def name(self) -> str:
        """``"captum:IntegratedGradients"``, ``"captum:NoiseTunnel(Saliency)"``."""
        inner = f"({self.base.__name__})" if self.base is not None else ""
        return f"captum:{self.method.__name__}{inner}"

    def build(self, model: nn.Module) -> Any:
        """The Captum attribution object for ``model`` (what calling Captum directly constructs)."""
        forward = model if self.output_transform is None else LogitsModel(model, self.output_transform)
        explained = self.base if self.base is not None else self.method
        init = self.init_kwargs
        instance = explained(forward, self.layer, **init) if self.is_layer_method else explained(forward, **init)
        return self.method(instance) if self.base is not None else instance

    def attribute_arguments(self, images: Tensor) -> dict[str, Any]:
        """``attribute()``'s keyword arguments for ``images`` (the given ones plus the defaults Captum lacks)."""
        kwargs = dict(self.attribute_kwargs)
        explained = self.base if self.base is not None else self.method
        parameters = inspect.signature(getattr(explained, "attribute")).parameters  # noqa: B009
        needs_baselines = "baselines" in parameters and parameters["baselines"].default is inspect.Parameter.empty
        if needs_baselines and "baselines" not in kwargs:
            kwargs["baselines"] = images.new_zeros((1, *images.shape[1:]))
        if "sliding_window_shapes" in parameters and "sliding_window_shapes" not in kwargs:
            channels, height, width = images.shape[1:]
            window = (int(channels), math.ceil(height / 8), math.ceil(width / 8))
            kwargs["sliding_window_shapes"] = window
            kwargs.setdefault("strides", (int(channels), max(1, window[1] // 2), max(1, window[2] // 2)))
        return kwargs

    def _pass_through_rules(self, model: nn.Module) -> list[nn.Module]:
        """For LRP: Captum's ``IdentityRule`` on the parameter-free leaf modules it has no rule for (``Flatten``,
        ``Identity``, the callback's metrics anchor), which it would otherwise refuse; returns those modules."""
        from captum.attr._core import lrp
        from captum.attr._utils.lrp_rules import IdentityRule

        explained = self.base if self.base is not None else self.method
        if not issubclass(explained, (lrp.LRP, _captum_attr().LayerLRP)):
            return []
        known = (*lrp.SUPPORTED_LAYERS_WITH_RULES, *lrp.SUPPORTED_NON_LINEAR_LAYERS)
        given = []
        for module in model.modules():
            leaf = not module._modules and not module._parameters and not module._buffers
            if leaf and module is not model and type(module) not in known and not hasattr(module, "rule"):
                module.rule = IdentityRule()
                given.append(module)
        return given

    def attribution(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """Captum's attribution of ``targets`` for ``images`` (the layer's shape for layer methods)."""
        import numpy as np  # Captum's dependency; its GradientShap draws baselines from numpy's global RNG

        inputs = images.detach().clone().requires_grad_(True)
        numpy_rng = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what Captum draws from)
        given_rules = self._pass_through_rules(model)
        try:
            result = self.build(model).attribute(inputs, target=targets, **self.attribute_arguments(images))
        finally:
            np.random.set_state(numpy_rng)  # noqa: NPY002
            for module in given_rules:
                vars(module).pop("rule", None)
        if isinstance(result, tuple):  # return_convergence_delta=True: (attributions, delta)
            result = result[0]
        if not isinstance(result, Tensor):
            raise ValueError(f"Expected {self.name} to return one attribution tensor, but it returned {type(result)}")
        return result

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        attribution = self.attribution(model, images, targets).detach()
        if self.is_layer_method and self.reshape_transform is not None and attribution.ndim != 4:
            attribution = self.reshape_transform(attribution)
        if attribution.ndim == 3:
            attribution = attribution.unsqueeze(1)
        return attribution_to_map(attribution, (int(images.shape[-2]), int(images.shape[-1])), self.reduction)
