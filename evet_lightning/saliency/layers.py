"""Which layer(s) a CAM explains: explicit modules, dotted names, or auto-detection."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["LayerSpec", "check_target_layers", "find_last_spatial_layer", "resolve_target_layers"]

log = logging.getLogger(__name__)

#: A target layer given as a module of the model, its dotted name in ``model.named_modules()``, or a list.
LayerSpec = nn.Module | str | Sequence[nn.Module | str] | None


def _names_by_module(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def check_target_layers(model: nn.Module, target_layers: LayerSpec) -> list[tuple[str, nn.Module]] | None:
    """Resolve explicit target layers to ``(name, module)`` pairs; ``None`` stays ``None`` (auto-detect later).

    Raises:
        ValueError: a name that is not a submodule (with the closest names), a module that is not part of
            ``model``, or an empty list.
    """
    if target_layers is None:
        return None
    items = [target_layers] if isinstance(target_layers, (nn.Module, str)) else list(target_layers)
    if not items:
        raise ValueError("Expected `target_layers` to name at least one layer, but got an empty sequence")
    names = _names_by_module(model)
    modules = dict(model.named_modules())
    resolved = []
    for item in items:
        if isinstance(item, str):
            if item not in modules or item == "":
                close = difflib.get_close_matches(item, [name for name in modules if name], n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(
                    f"Expected `target_layers` to name submodules of the model, but {item!r} is not one{hint}"
                )
            resolved.append((item, modules[item]))
        elif isinstance(item, nn.Module):
            if id(item) not in names:
                raise ValueError(f"Expected `target_layers` to be submodules of the model, but got a foreign {item!r}")
            resolved.append((names[id(item)] or "<model>", item))
        else:
            raise ValueError(f"Expected `target_layers` items to be modules or names, but got {item!r}")
    return resolved


def find_last_spatial_layer(model: nn.Module, sample: Tensor) -> tuple[str, nn.Module]:
    """The last submodule (in execution order) whose output is a 4-D map with more than one spatial position.

    Runs one no-grad forward pass of ``sample`` (the caller sets the model's mode). For a ResNet that is
    ``layer4``; a module called several times is judged by its last call.

    Raises:
        ValueError: no submodule produces such a map.
    """
    names = _names_by_module(model)
    last: list[tuple[str, nn.Module, tuple[int, ...]]] = []

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
            last.append((names[id(module)], module, tuple(output.shape)))

    handles = [module.register_forward_hook(record) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    if not last:
        raise ValueError(
            f"Expected the model to have a layer with a 4-D spatial output (B, C, H, W) for a CAM, but "
            f"{type(model).__name__} has none for input {tuple(sample.shape)}; pass `target_layers` or use "
            "cam='Gradient'"
        )
    name, module, shape = last[-1]
    log.info("EVET: auto-detected target layer %r (%s, output %s)", name, type(module).__name__, shape)
    return name, module


def resolve_target_layers(model: nn.Module, target_layers: LayerSpec, sample: Tensor) -> list[tuple[str, nn.Module]]:
    """:func:`check_target_layers`, falling back to :func:`find_last_spatial_layer` on ``sample``."""
    resolved = check_target_layers(model, target_layers)
    if resolved is not None:
        return resolved
    return [find_last_spatial_layer(model, sample)]
