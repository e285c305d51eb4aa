"""Checks of :class:`~evet_lightning.EVETCallback`'s own arguments (EVET's are checked by ``EVETSettings``)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from evet_lightning.saliency.transforms import AffineTransform, HorizontalFlip, Rotate, Scale, Shear

__all__ = [
    "TARGET_CHOICES",
    "check_bool",
    "check_callable",
    "check_class_names",
    "check_layer_names",
    "check_model",
    "check_prefix",
    "check_stability_transforms",
    "check_target",
    "explained_module",
    "settings_property",
    "table5_transforms",
]

TARGET_CHOICES = ("label", "prediction")


def check_layer_names(target_layers: object) -> list[str] | None:
    """Layer names only: the callback keeps no reference to a model; the names are checked in ``setup``."""
    if target_layers is None:
        return None
    names = [target_layers] if isinstance(target_layers, str) else target_layers
    if not isinstance(names, Sequence) or not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(
            "Expected `target_layers` to be None or a non-empty layer name or sequence of layer names (dotted, as in "
            f"`model.named_modules()`), but got {target_layers!r}"
        )
    return list(names)


def table5_transforms() -> list[AffineTransform]:
    """The paper's stability protocol (Table 5, Fig. 4a): EVET's own four basic transforms, scale 0.9, rotate
    10 degrees, shear 0.2 and the horizontal flip; the stability index is their mean."""
    return [Scale(0.9), Rotate(10.0), Shear(0.2), HorizontalFlip()]


def check_stability_transforms(transforms: Sequence[AffineTransform] | str | None) -> list[AffineTransform]:
    """``None``: ``[Rotate(5.0)]`` (a transform EVET does not use, Fig. 4b); ``"paper"``: :func:`table5_transforms`;
    else a sequence of transforms."""
    if transforms is None:
        return [Rotate(5.0)]
    if transforms == "paper":
        return table5_transforms()
    if isinstance(transforms, str):
        raise ValueError(
            f"Expected `stability_transforms` to be 'paper' or a sequence of transforms, got {transforms!r}"
        )
    if isinstance(transforms, AffineTransform) or not isinstance(transforms, Sequence):
        raise ValueError(f"Expected `stability_transforms` to be a sequence of transforms, but got {transforms!r}")
    for transform in transforms:
        if not isinstance(transform, AffineTransform):
            raise ValueError(
                f"Expected every item of `stability_transforms` to be an AffineTransform, but got {transform!r}"
            )
    return [transform for transform in transforms if isinstance(transform, AffineTransform)]


def check_class_names(class_names: Sequence[str] | None) -> tuple[str, ...] | None:
    """``None``, or a non-empty sequence of strings (index ``k`` names class ``k``), as a tuple."""
    if class_names is None:
        return None
    if (
        isinstance(class_names, (str, bytes))
        or not isinstance(class_names, Sequence)
        or not class_names
        or not all(isinstance(name, str) for name in class_names)
    ):
        raise ValueError(
            f"Expected `class_names` to be None or a non-empty sequence of strings (by class index), but got "
            f"{class_names!r}"
        )
    return tuple(class_names)


def check_target(target: str) -> str:
    if target not in TARGET_CHOICES:
        raise ValueError(f"Expected `target` to be one of {TARGET_CHOICES}, but got {target!r}")
    return target


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise ValueError(f"Expected `prefix` to be a non-empty string, but got {prefix!r}")
    return prefix.strip("/")


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"Expected `{name}` to be a bool, but got {value!r}")
    return value


def check_callable(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise ValueError(f"Expected `{name}` to be callable or None, but got {value!r}")
    return value


def check_model(model: object) -> str | Callable[[Any], nn.Module] | None:
    if model is not None and not isinstance(model, str) and not callable(model):
        raise ValueError(
            f"Expected `model` to be None, an attribute name or a callable pl_module -> nn.Module, but got {model!r}"
        )
    return model  # type: ignore[return-value]


def explained_module(pl_module: nn.Module, model: str | Callable[[Any], nn.Module] | None) -> nn.Module:
    """The module to explain: ``pl_module``, its attribute named ``model``, or ``model(pl_module)``."""
    if model is None:
        module: object = pl_module
    elif isinstance(model, str):
        try:
            module = operator.attrgetter(model)(pl_module)
        except AttributeError as error:
            raise ValueError(f"Expected `model={model!r}` to name an attribute of the module: {error}") from None
    else:
        module = model(pl_module)
    if not isinstance(module, nn.Module):
        raise ValueError(f"Expected `model` to give an nn.Module, but got {type(module).__name__}")
    return module


def settings_property(name: str) -> Any:
    """A property that reads ``self.settings.<name>``; setting it replaces ``self.settings`` (validated)."""

    def get(self: Any) -> Any:
        return getattr(self.settings, name)

    def assign(self: Any, value: Any) -> None:
        self.settings = self.settings.replace(**{name: value})

    return property(
        get, assign, doc=f"EVET's ``{name}`` (see :class:`~evet_lightning.saliency.settings.EVETSettings`)."
    )
