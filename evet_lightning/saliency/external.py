"""Saliency methods from outside this package: a user callable, Captum, zennit (one resolver for all three).

``cam=`` (engine, callback, CLI ``--methods``) takes, besides pytorch-grad-cam CAMs and ``"Gradient"``:

- a callable ``(model, images, targets) -> maps`` (a :data:`~evet_lightning.saliency.explainers.SaliencyFunction`),
  or its import path ``"package.module:function"`` (how the CLI names one);
- ``"captum:Name"`` or a ``captum.attr`` class (``"captum:NoiseTunnel(IntegratedGradients)"``, ``"captum:SmoothGrad"``);
- ``"zennit:Composite"`` (``"zennit:EpsilonPlusFlat"``).

Each becomes a :class:`~evet_lightning.saliency.explainers.CallableExplainer`, so all share one contract, one
guard and one normalization. ``cam_kwargs`` are the method's options: the callable's keyword arguments; for
Captum ``attribute()``'s (``n_steps``, ...) plus the adapter's ``reduction``, ``base`` and ``init_kwargs``; for
zennit the composite's (``epsilon``, ...) plus ``reduction`` and ``canonizers``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from evet_lightning.saliency.explainers import CallableExplainer, function_name
from evet_lightning.saliency.outputs import OutputTransform
from evet_lightning.saliency.reshape import ReshapeTransform

__all__ = ["ExternalMethod", "build_external_explainer", "resolve_external"]

_CAPTUM_KEYS = ("reduction", "base", "init_kwargs")
_ZENNIT_KEYS = ("reduction", "canonizers")


@dataclass(frozen=True)
class ExternalMethod:
    """A resolved outside method: its display ``name``, ``kind`` and what it needs."""

    name: str
    kind: str
    """``"callable"``, ``"captum"`` or ``"zennit"``."""
    target: Any
    """The function; the Captum class or name; the zennit composite class."""
    uses_layer: bool = False
    """Whether it explains a target layer (Captum's layer attributions)."""


def _import_path(text: str) -> Any:
    module_name, _, attribute = text.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Expected `cam` {text!r} to name an importable module and function: {error}") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"Expected `cam` {text!r} to name a function, but {module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj) or isinstance(obj, type):
        raise ValueError(f"Expected `cam` {text!r} to name a function (model, images, targets) -> maps, got {obj!r}")
    return obj


def resolve_external(cam: object, cam_kwargs: Mapping[str, Any] | None = None) -> ExternalMethod | None:
    """The outside method ``cam`` names, or ``None`` when it is not one (a CAM class or name, ``"Gradient"``).

    ``ValueError`` for a prefixed name that does not resolve (an unknown Captum method, a missing extra, ...).
    """
    base = (cam_kwargs or {}).get("base")
    if isinstance(cam, str):
        prefix, colon, rest = cam.partition(":")
        if not colon:
            return None
        if prefix == "captum":
            from evet_lightning.saliency.captum_adapter import CaptumExplainer

            probe = CaptumExplainer(rest, base=base, layer=nn.Identity())  # validates the name; the layer is EVET's
            return ExternalMethod(probe.name, "captum", rest, uses_layer=probe.is_layer_method)
        if prefix == "zennit":
            from evet_lightning.saliency.zennit_adapter import composite_class

            composite = composite_class(rest)
            return ExternalMethod(f"zennit:{composite.__name__}", "zennit", composite)
        return ExternalMethod(cam, "callable", _import_path(cam))
    if isinstance(cam, type):
        from evet_lightning.saliency.captum_adapter import CaptumExplainer, is_captum_class

        if not is_captum_class(cam):
            return None
        probe = CaptumExplainer(cam, base=base, layer=nn.Identity())
        return ExternalMethod(probe.name, "captum", cam, uses_layer=probe.is_layer_method)
    if callable(cam) and not isinstance(cam, nn.Module):  # a module there is a mistake (a layer, the model)
        return ExternalMethod(function_name(cam), "callable", cam)
    return None


def build_external_explainer(
    method: ExternalMethod,
    layers: Sequence[nn.Module],
    cam_kwargs: Mapping[str, Any] | None = None,
    *,
    output_transform: OutputTransform | None = None,
    reshape_transform: ReshapeTransform | None = None,
) -> CallableExplainer:
    """The explainer of ``method`` (with EVET's target ``layers`` for a layer attribution)."""
    kwargs = dict(cam_kwargs or {})
    if method.kind == "callable":
        return CallableExplainer(method.target, name=method.name, output_transform=output_transform, kwargs=kwargs)
    own = {key: kwargs.pop(key) for key in (_CAPTUM_KEYS if method.kind == "captum" else _ZENNIT_KEYS) if key in kwargs}
    if method.kind == "captum":
        from evet_lightning.saliency.captum_adapter import CaptumExplainer

        if method.uses_layer and len(layers) != 1:
            raise ValueError(f"Expected exactly one target layer for {method.name}, but got {len(layers)}")
        function: Any = CaptumExplainer(
            method.target,
            layer=layers[0] if method.uses_layer else None,
            attribute_kwargs=kwargs,
            output_transform=output_transform,
            reshape_transform=reshape_transform,
            **own,
        )
    else:
        from evet_lightning.saliency.zennit_adapter import ZennitExplainer

        function = ZennitExplainer(method.target, composite_kwargs=kwargs, output_transform=output_transform, **own)
    return CallableExplainer(function, name=method.name, output_transform=output_transform)
