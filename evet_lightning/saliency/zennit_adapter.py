"""zennit's LRP composites as saliency functions (the optional extra: ``pip install evet-lightning[zennit]``).

``"zennit:EpsilonPlusFlat"`` (any named composite of ``zennit.composites``, see :func:`composite_names`) computes
the relevance of the input with ``zennit.attribution.Gradient`` and the composite, starting from the one-hot
output of the class explained. Canonizers (``canonizers="auto"``): zennit's ``ResNetCanonizer`` when the model has
torchvision ResNet blocks, else ``SequentialMergeBatchNorm`` (zennit's ``VGGCanonizer``: BatchNorm merged into the
layer before it); a list replaces them. ``EpsilonGammaBox`` needs the input's bounds: ``low``/``high`` default to
the smallest and largest value of the images given. The relevance ``(N, C, H, W)`` becomes a map by
:func:`~evet_lightning.saliency.explainers.attribution_to_map` (``"abs_sum"``; ``reduction="sum"`` keeps the sign).

zennit's hooks, its canonizers' changes (merged BatchNorm parameters, replaced ``forward`` methods) are undone by
zennit on exit and, should it fail half-way, by the engine's guard (decision 6).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from evet_lightning.saliency.explainers import Reduction, attribution_to_map
from evet_lightning.saliency.outputs import LogitsModel, OutputTransform

__all__ = ["ZennitExplainer", "composite_class", "composite_names", "default_canonizers"]

_INSTALL = "install the `zennit` extra: pip install 'evet-lightning[zennit]'"


def _composites() -> Any:
    try:
        import zennit.composites
    except ImportError as error:
        raise ValueError(f"Expected zennit to be installed for a zennit method ({_INSTALL}): {error}") from None
    return zennit.composites


def composite_names() -> list[str]:
    """The named composites zennit offers (``zennit.composites.COMPOSITES``), by class name."""
    return sorted(cls.__name__ for cls in _composites().COMPOSITES.values())


def composite_class(composite: str | type) -> type:
    """The zennit composite class named ``composite`` (class name or zennit's snake-case name)."""
    composites = _composites()
    if isinstance(composite, type) and issubclass(composite, composites.Composite):
        return composite
    by_name = {cls.__name__: cls for cls in composites.COMPOSITES.values()}
    if isinstance(composite, str) and composite in composites.COMPOSITES:
        return composites.COMPOSITES[composite]  # type: ignore[no-any-return]
    if not isinstance(composite, str) or composite not in by_name:
        raise ValueError(f"Expected a zennit composite ({', '.join(sorted(by_name))}), but got {composite!r}")
    return by_name[composite]


def default_canonizers(model: nn.Module) -> list[Any]:
    """``[ResNetCanonizer()]`` for a model with torchvision ResNet blocks, else ``[SequentialMergeBatchNorm()]``."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    if any(isinstance(module, (BasicBlock, Bottleneck)) for module in model.modules()):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


class ZennitExplainer:
    """An LRP composite of zennit as a saliency function ``(model, images, targets) -> maps (N, H, W)``.

    Args:
        composite: a zennit composite class or name (``"EpsilonPlusFlat"``, ``"epsilon_plus_flat"``).
        canonizers: ``"auto"`` (:func:`default_canonizers`), or a list of zennit canonizers (``[]`` for none).
        composite_kwargs: keyword arguments of the composite (``epsilon``, ``low``/``high`` for EpsilonGammaBox).
        reduction: how the relevance becomes a map (default ``"abs_sum"``).
        output_transform: extracts the logits from the model's output.
    """

    def __init__(
        self,
        composite: str | type,
        *,
        canonizers: str | list[Any] = "auto",
        composite_kwargs: dict[str, Any] | None = None,
        reduction: Reduction = "abs_sum",
        output_transform: OutputTransform | None = None,
    ) -> None:
        self.composite = composite_class(composite)
        if not (canonizers == "auto" or isinstance(canonizers, (list, tuple))):
            raise ValueError(f"Expected `canonizers` to be 'auto' or a list of zennit canonizers, got {canonizers!r}")
        self.canonizers = canonizers
        self.composite_kwargs = dict(composite_kwargs or {})
        self.reduction = "abs_sum" if reduction == "auto" else reduction
        self.output_transform = output_transform
        self.__name__ = self.name

    @property
    def name(self) -> str:
        return f"zennit:{self.composite.__name__}"

    def build(self, model: nn.Module, images: Tensor) -> Any:
        """The composite for ``model`` and ``images`` (what calling zennit directly constructs)."""
        kwargs = dict(self.composite_kwargs)
        if self.composite.__name__ == "EpsilonGammaBox":
            kwargs.setdefault("low", float(images.min()))
            kwargs.setdefault("high", float(images.max()))
        canonizers = default_canonizers(model) if self.canonizers == "auto" else list(self.canonizers)
        return self.composite(canonizers=canonizers, **kwargs)

    def relevance(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        """The input relevance ``(N, C, H, W)`` of ``targets``."""
        from zennit.attribution import Gradient

        forward = model if self.output_transform is None else LogitsModel(model, self.output_transform)

        def one_hot(output: Tensor) -> Tensor:
            return torch.nn.functional.one_hot(targets, output.shape[1]).to(output.dtype)

        with Gradient(model=forward, composite=self.build(model, images)) as attributor:
            _, relevance = attributor(images.detach().clone(), one_hot)
        return relevance  # type: ignore[no-any-return]

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        relevance = self.relevance(model, images, targets).detach()
        return attribution_to_map(relevance, (int(images.shape[-2]), int(images.shape[-1])), self.reduction)
