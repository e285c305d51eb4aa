"""A target layer's output as the ``(B, C, h, w)`` feature map a CAM weights.

Convolutional layers output feature maps. Transformers do not: a ViT or DeiT block outputs tokens
``(B, N, C)`` (a class token first, then the ``h x w`` patches row by row), a Swin stage a channels-last map
``(B, h, w, C)``. A ``reshape_transform`` turns such an output into ``(B, C, h, w)``. This is pytorch-grad-cam's
contract: the same callable is applied to the activation and to its gradient, on both backends of this
package. :func:`vit_reshape_transform` and :func:`swin_reshape_transform` build the usual ones.

When no ``reshape_transform`` is given, :func:`infer_layout` reads the layout if it can do so unambiguously.
Otherwise it raises a ``ValueError`` that says to pass ``reshape_transform``. It never guesses. The rule:

1. Candidate readings. For a 4-D output ``(B, d1, d2, d3)``: channels first (grid ``d2 x d3``) or channels
   last (grid ``d1 x d2``). For a 3-D output ``(B, N, C)``: tokens along dim 1, with 0 or 1 prefix (class)
   tokens, on an ``h x w`` grid with ``h * w = N - prefix``. Tokens along dim 2, ``(B, C, N)``, are also a
   reading, but only so that the ambiguity can be detected: that layout is never read automatically.
2. Geometry. A reading is plausible when its grid fits the input image ``H x W``: some stride ``s`` gives
   ``h = floor(H / s)`` and ``w = floor(W / s)``, or ``ceil`` for both (patch embeddings floor, padded
   convolutions ceil). For a square image this means a square grid, so tokens are read exactly when ``N`` or
   ``N - 1`` is a perfect square, and a 4-D output is read as channels last exactly when ``d1 == d2 != d3``.
   Without the image size only square grids are plausible. A reading with a grid larger than the image is not
   plausible. The batch dimension must equal the batch size when that is known (windowed attention internals
   have ``B * windows`` there).
3. Module evidence, only when several readings are plausible (a cube ``(B, k, k, k)``, or ``(B, 197, 1024)``
   whose 1024 could be a 32 x 32 grid). A reading is supported when its channel count equals the width of a
   layer that fixes the channel axis. Channels first: ``Conv2d``, ``BatchNorm2d``, ``GroupNorm``, and
   ``LayerNorm2d`` (the name contains ``2d``). Channels last: ``LayerNorm`` over the last dimension. Channel-first
   tokens: ``Conv1d`` and ``BatchNorm1d``. The search looks in the layer's own submodules, then in its parent's,
   and so on up to the model. It stops at the first level that supports any reading. Exactly one supported
   reading is used; otherwise the output is ambiguous.
4. Prefix tokens (decision 28). Tokens ``(B, N, C)`` of a layer inside a model are read only when the model says
   how many tokens precede the patches: the nearest module at or above the layer with an integer
   ``num_prefix_tokens`` (timm: class, distillation and register tokens), else with a ``class_token`` /
   ``cls_token`` tensor (torchvision's ViT: 1, plus 1 for a ``dist_token``). A module that has register tokens
   (``reg_token``, ``register_tokens``) without ``num_prefix_tokens`` says nothing readable. Without such a
   module a prefix cannot be ruled out (timm's ViT with 8 register tokens and a class token has 9 + 4 x 4 = 25
   tokens, which also reads as a 5 x 5 grid), so tokens are not read. Called with a shape alone (no ``layer``),
   the readings of rule 1 (0 or 1 prefix tokens) stand.
5. No plausible reading, or several with no deciding evidence: ``ValueError``. The message says to pass
   ``reshape_transform``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from torch import Tensor, nn

__all__ = [
    "ChannelsLastToMap",
    "FeatureLayout",
    "FeatureMapReader",
    "ReshapeTransform",
    "TokensToMap",
    "infer_layout",
    "swin_reshape_transform",
    "to_feature_map",
    "vit_reshape_transform",
]

#: ``activation -> (B, C, h, w)``, applied alike to a target layer's output and to its gradient.
ReshapeTransform = Callable[[Tensor], Tensor]

LayoutKind = Literal["channels_first", "channels_last", "tokens", "channels_first_tokens"]

_FIX = "pass `reshape_transform` (e.g. vit_reshape_transform(...) or swin_reshape_transform())"
_CLASS_TOKENS = ("class_token", "cls_token")
_REGISTER_TOKENS = ("reg_token", "register_tokens")


def _optional_positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"Expected `{name}` to be a positive integer or None, but got {value!r}")
    return number


class TokensToMap:
    """``(B, prefix_tokens + h * w, C)`` tokens -> ``(B, C, h, w)``, dropping the prefix (class, distillation) tokens.

    What :func:`vit_reshape_transform` returns. A plain class, so it pickles and a YAML config can name it by
    ``class_path``. ``height``/``width`` ``None``: a square grid (or the other side from the one given).

    Example:
        >>> import torch
        >>> tokens = torch.arange(2 * 5 * 3.0).view(2, 5, 3)  # a class token and a 2 x 2 grid, 3 channels
        >>> TokensToMap()(tokens).shape
        torch.Size([2, 3, 2, 2])
    """

    __slots__ = ("height", "prefix_tokens", "width")

    def __init__(self, height: int | None = None, width: int | None = None, prefix_tokens: int = 1) -> None:
        self.height = _optional_positive_int("height", height)
        self.width = _optional_positive_int("width", width)
        try:
            prefix = None if isinstance(prefix_tokens, bool) else operator.index(prefix_tokens)
        except TypeError:
            prefix = None
        if prefix is None or prefix < 0:
            raise ValueError(f"Expected `prefix_tokens` to be a non-negative integer, but got {prefix_tokens!r}")
        self.prefix_tokens = prefix

    def __repr__(self) -> str:
        return f"TokensToMap(height={self.height!r}, width={self.width!r}, prefix_tokens={self.prefix_tokens!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokensToMap) and repr(other) == repr(self)

    def __hash__(self) -> int:
        return hash(repr(self))

    def grid(self, num_tokens: int) -> tuple[int, int]:
        """``(h, w)`` for ``num_tokens`` tokens including the prefix; ``ValueError`` when they do not fit."""
        patches = num_tokens - self.prefix_tokens
        height, width = self.height, self.width
        if height is None and width is None:
            side = math.isqrt(max(patches, 0))
            height = width = side
        elif height is None:
            height = patches // width if width else 0
        elif width is None:
            width = patches // height
        if patches < 1 or height * width != patches:  # type: ignore[operator]
            raise ValueError(
                f"Expected {num_tokens} tokens to be {self.prefix_tokens} prefix token(s) and a "
                f"{height if self.height else 'h'} x {width if self.width else 'w'} grid, but they are not; "
                "set `height`, `width` and `prefix_tokens` of the reshape transform to the model's patch grid"
            )
        return height, width  # type: ignore[return-value]

    def __call__(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 3:
            raise ValueError(f"Expected tokens of shape (B, N, C), but got {tuple(tokens.shape)}")
        height, width = self.grid(tokens.shape[1])
        patches = tokens[:, self.prefix_tokens :]
        return patches.reshape(tokens.shape[0], height, width, tokens.shape[2]).permute(0, 3, 1, 2)


class ChannelsLastToMap:
    """``(B, h, w, C)`` -> ``(B, C, h, w)``: what :func:`swin_reshape_transform` returns (a picklable class).

    Example:
        >>> import torch
        >>> ChannelsLastToMap()(torch.zeros(2, 7, 7, 96)).shape
        torch.Size([2, 96, 7, 7])
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "ChannelsLastToMap()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChannelsLastToMap)

    def __hash__(self) -> int:
        return hash("ChannelsLastToMap")

    def __call__(self, activation: Tensor) -> Tensor:
        if activation.ndim != 4:
            raise ValueError(f"Expected a channels-last map of shape (B, H, W, C), but got {tuple(activation.shape)}")
        return activation.permute(0, 3, 1, 2)


def vit_reshape_transform(height: int | None = None, width: int | None = None, prefix_tokens: int = 1) -> TokensToMap:
    """Reshape transform for ViT-style tokens ``(B, prefix_tokens + height * width, C)`` -> ``(B, C, height, width)``.

    ``prefix_tokens``: tokens before the patches that are dropped. That is 1 for a class token (ViT, DeiT), 2 for
    DeiT's distilled models (class and distillation tokens), and 0 for models that pool all tokens. ``height``
    and ``width`` are the patch grid; ``None`` assumes a square grid (or derives the missing side).
    """
    return TokensToMap(height=height, width=width, prefix_tokens=prefix_tokens)


def swin_reshape_transform() -> ChannelsLastToMap:
    """Reshape transform for channels-last maps ``(B, H, W, C)`` -> ``(B, C, H, W)``.

    Swin stages (torchvision and timm) and ConvNeXt's inner blocks output this layout. Older Swin ports output
    tokens ``(B, H * W, C)`` instead; use ``vit_reshape_transform(prefix_tokens=0)`` for those.
    """
    return ChannelsLastToMap()


@dataclass(frozen=True)
class FeatureLayout:
    """How to read a layer's output as ``(B, C, h, w)``: its kind, grid and prefix tokens."""

    kind: LayoutKind
    height: int
    width: int
    prefix_tokens: int = 0

    @property
    def channel_dim(self) -> int:
        """The dimension of the output that holds the channels."""
        return {"channels_first": 1, "channels_last": 3, "tokens": 2, "channels_first_tokens": 1}[self.kind]

    def describe(self) -> str:
        """E.g. ``"tokens (B, 1 + 4 x 4, C)"``."""
        grid = f"{self.height} x {self.width}"
        if self.kind == "channels_first":
            return f"channels first (B, C, {self.height}, {self.width})"
        if self.kind == "channels_last":
            return f"channels last (B, {self.height}, {self.width}, C)"
        prefix = f"{self.prefix_tokens} + " if self.prefix_tokens else ""
        if self.kind == "tokens":
            return f"tokens (B, {prefix}{grid}, C)"
        return f"channel-first tokens (B, C, {prefix}{grid})"

    def __call__(self, activation: Tensor) -> Tensor:
        """``activation`` (of the shape this layout was inferred from) as ``(B, C, h, w)``."""
        if self.kind == "channels_first":
            return activation
        if self.kind == "channels_last":
            return activation.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            return TokensToMap(self.height, self.width, self.prefix_tokens)(activation)
        raise ValueError(f"Expected a layout this package reads, but {self.describe()} is not one; {_FIX}")


def _grid_fits(height: int, width: int, image_size: tuple[int, int] | None) -> bool:
    """Whether one stride maps the image onto an ``height x width`` grid (floor or ceil on both sides)."""
    if height < 1 or width < 1:
        return False
    if image_size is None:
        return height == width
    image_height, image_width = image_size
    if height > image_height or width > image_width:
        return False
    big = Fraction(10**12)
    floor_low = max(Fraction(image_height, height + 1), Fraction(image_width, width + 1))
    floor_high = min(Fraction(image_height, height), Fraction(image_width, width))
    ceil_low = max(Fraction(image_height, height), Fraction(image_width, width))
    ceil_high = min(
        Fraction(image_height, height - 1) if height > 1 else big,
        Fraction(image_width, width - 1) if width > 1 else big,
    )
    return floor_low < floor_high or ceil_low < ceil_high


def _token_grids(
    num_tokens: int, image_size: tuple[int, int] | None, prefixes: Sequence[int] = (0, 1)
) -> list[tuple[int, int, int]]:
    """``(prefix, h, w)`` for every plausible split of ``num_tokens`` into ``prefixes`` prefix tokens and a grid."""
    grids = []
    for prefix in prefixes:
        patches = num_tokens - prefix
        if patches < 1:
            continue
        for height in range(1, math.isqrt(patches) + 1):
            if patches % height:
                continue
            for h, w in {(height, patches // height), (patches // height, height)}:
                if _grid_fits(h, w, image_size):
                    grids.append((prefix, h, w))
    return grids


def _readings(
    shape: Sequence[int],
    image_size: tuple[int, int] | None,
    batch_size: int | None,
    prefix_tokens: Sequence[int] = (0, 1),
) -> list[FeatureLayout]:
    if batch_size is not None and shape and shape[0] != batch_size:
        return []
    if len(shape) == 4:
        _, d1, d2, d3 = shape
        layouts = []
        if _grid_fits(d2, d3, image_size):
            layouts.append(FeatureLayout("channels_first", d2, d3))
        if _grid_fits(d1, d2, image_size):
            layouts.append(FeatureLayout("channels_last", d1, d2))
        return layouts
    if len(shape) == 3:
        _, d1, d2 = shape
        tokens = [FeatureLayout("tokens", h, w, p) for p, h, w in _token_grids(d1, image_size, prefix_tokens)]
        first = [FeatureLayout("channels_first_tokens", h, w, p) for p, h, w in _token_grids(d2, image_size)]
        return tokens + first
    return []


class _Evidence:
    """Channel widths fixed by the layers under each module of ``model`` (cached), and each module's parent."""

    def __init__(self, model: nn.Module | None) -> None:
        self._model = model
        self._parents: dict[int, nn.Module] | None = None
        self._widths: dict[int, dict[str, frozenset[int]]] = {}

    def _parent_map(self) -> dict[int, nn.Module]:
        if self._parents is None:
            self._parents = {}
            if self._model is not None:
                for module in self._model.modules():
                    for child in module.children():
                        self._parents.setdefault(id(child), module)
        return self._parents

    def levels(self, layer: nn.Module) -> Iterator[nn.Module]:
        """``layer``, its parent, ..., the model."""
        parents = self._parent_map()
        seen = set()
        module: nn.Module | None = layer
        while module is not None and id(module) not in seen:
            seen.add(id(module))
            yield module
            module = parents.get(id(module))

    def prefix_tokens(self, layer: nn.Module) -> int | None:
        """The prefix-token count the nearest declaring module at or above ``layer`` gives (rule 4), or ``None``."""
        for module in self.levels(layer):
            declared = getattr(module, "num_prefix_tokens", None)
            if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 0:
                return declared
            if any(isinstance(getattr(module, name, None), Tensor) for name in _REGISTER_TOKENS):
                return None  # register tokens, and no count of them
            if any(isinstance(getattr(module, name, None), Tensor) for name in _CLASS_TOKENS):
                return 1 + isinstance(getattr(module, "dist_token", None), Tensor)
        return None

    def widths(self, module: nn.Module) -> dict[str, frozenset[int]]:
        """``{kind: channel counts}`` of the layers in ``module``'s subtree that fix a channel axis."""
        cached = self._widths.get(id(module))
        if cached is not None:
            return cached
        found: dict[str, set[int]] = {"channels_first": set(), "channels_last": set(), "channels_first_tokens": set()}
        for layer in module.modules():
            if isinstance(layer, nn.LayerNorm):
                if len(layer.normalized_shape) == 1:
                    kind = "channels_first" if "2d" in type(layer).__name__.lower() else "channels_last"
                    found[kind].add(int(layer.normalized_shape[0]))
            elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                found["channels_first"].add(layer.out_channels)
            elif isinstance(layer, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                found["channels_first"].add(layer.num_features)
            elif isinstance(layer, nn.GroupNorm):
                found["channels_first"].add(layer.num_channels)
                found["channels_first_tokens"].add(layer.num_channels)
            elif isinstance(layer, nn.Conv1d):
                found["channels_first_tokens"].add(layer.out_channels)
            elif isinstance(layer, (nn.BatchNorm1d, nn.InstanceNorm1d)):
                found["channels_first_tokens"].add(layer.num_features)
        widths = {kind: frozenset(sizes) for kind, sizes in found.items()}
        widths["tokens"] = widths["channels_last"]
        self._widths[id(module)] = widths
        return widths


def _decide(
    shape: Sequence[int], readings: list[FeatureLayout], layer: nn.Module | None, evidence: _Evidence
) -> FeatureLayout | None:
    """The one reading that module evidence supports, or ``None``."""
    if layer is None:
        return None
    for module in evidence.levels(layer):
        widths = evidence.widths(module)
        supported = [r for r in readings if shape[r.channel_dim] in widths[r.kind]]
        if supported:
            return supported[0] if len(supported) == 1 else None
    return None


def infer_layout(
    shape: Sequence[int],
    layer: nn.Module | None = None,
    model: nn.Module | None = None,
    *,
    image_size: tuple[int, int] | None = None,
    batch_size: int | None = None,
    name: str | None = None,
    _evidence: _Evidence | None = None,
) -> FeatureLayout:
    """How to read an output of ``shape`` from ``layer`` (a submodule of ``model``) as ``(B, C, h, w)``.

    Applies the rule of this module's docstring. ``image_size`` is the input's ``(H, W)``; ``name`` is the layer's
    name for the message.

    Raises:
        ValueError: no reading, several readings, or a layout that is never read automatically; the message says
            to pass ``reshape_transform``.

    Example:
        >>> infer_layout((2, 197, 768), image_size=(224, 224)).describe()
        'tokens (B, 1 + 14 x 14, C)'
        >>> infer_layout((2, 7, 7, 768), image_size=(224, 224)).describe()
        'channels last (B, 7, 7, C)'
    """
    shape = tuple(int(size) for size in shape)
    what = f"the output of {name!r}" if name else "an output"
    evidence = _evidence or _Evidence(model)
    prefixes: Sequence[int] = (0, 1)
    if len(shape) == 3 and layer is not None:
        declared = evidence.prefix_tokens(layer)
        prefixes = () if declared is None else (declared,)
    readings = _readings(shape, image_size, batch_size, prefixes)
    image = f" for {image_size[0]} x {image_size[1]} images" if image_size else ""
    if not prefixes and not [r for r in readings if r.kind != "channels_first_tokens"]:
        raise ValueError(
            f"Expected {what}, of shape {shape}, to be tokens of a model that declares its prefix tokens "
            "(`num_prefix_tokens`, as timm's ViTs do, or a `class_token`), but no module at or above the layer "
            "does, so class or register tokens before the patches cannot be ruled out; "
            f"pass `reshape_transform=vit_reshape_transform(prefix_tokens=...)`"
        )
    if not readings:
        raise ValueError(
            f"Expected {what} to be a feature map (B, C, H, W), tokens (B, N, C) or a channels-last map "
            f"(B, H, W, C) whose grid fits the input{image}, but its shape {shape} is none of these; {_FIX}"
        )
    layout = readings[0] if len(readings) == 1 else _decide(shape, readings, layer, evidence)
    if layout is None:
        options = " or ".join(reading.describe() for reading in readings)
        raise ValueError(f"Expected {what}, of shape {shape}, to have one layout, but it can be {options}; {_FIX}")
    if layout.kind == "channels_first_tokens":
        raise ValueError(f"Expected {what} to have tokens along dim 1, but it reads as {layout.describe()}; {_FIX}")
    return layout


def to_feature_map(
    activation: Tensor,
    layer: nn.Module | None = None,
    model: nn.Module | None = None,
    *,
    image_size: tuple[int, int] | None = None,
) -> Tensor:
    """``activation`` as ``(B, C, h, w)`` by :func:`infer_layout`; a feature map comes back as it is.

    Example:
        >>> import torch
        >>> to_feature_map(torch.zeros(2, 17, 48)).shape  # a class token and a 4 x 4 grid of 48 channels
        torch.Size([2, 48, 4, 4])
    """
    return infer_layout(activation.shape, layer, model, image_size=image_size)(activation)


class FeatureMapReader:
    """Reads target layers' outputs (and their gradients) as ``(B, C, h, w)`` during one explainer call.

    Applies ``reshape_transform`` when given and otherwise :func:`infer_layout`, with ``images``' size and batch.
    Messages name the layer by its dotted name in ``model``.
    """

    def __init__(self, model: nn.Module, images: Tensor, reshape_transform: ReshapeTransform | None = None) -> None:
        self.model = model
        self.image_size = (int(images.shape[-2]), int(images.shape[-1]))
        self.batch_size = int(images.shape[0])
        self.reshape_transform = reshape_transform
        self._evidence = _Evidence(model)
        self._layouts: dict[tuple[int, tuple[int, ...]], FeatureLayout] = {}
        self._names: dict[int, str] | None = None

    def name(self, layer: nn.Module) -> str:
        """``layer``'s dotted name in the model (``"<model>"`` for the model itself)."""
        if self._names is None:
            self._names = {id(module): name or "<model>" for name, module in self.model.named_modules()}
        return self._names.get(id(layer), type(layer).__name__)

    def layout(self, tensor: Tensor, layer: nn.Module) -> FeatureLayout:
        """The layout :func:`infer_layout` gives ``layer``'s output ``tensor`` (cached per shape)."""
        key = (id(layer), tuple(tensor.shape))
        if key not in self._layouts:
            self._layouts[key] = infer_layout(
                tensor.shape,
                layer,
                self.model,
                image_size=self.image_size,
                batch_size=self.batch_size,
                name=self.name(layer),
                _evidence=self._evidence,
            )
        return self._layouts[key]

    def check(self, tensor: object, layer: nn.Module) -> None:
        """Raise now (before any backward pass) when ``layer``'s output ``tensor`` cannot be read."""
        if not isinstance(tensor, Tensor):
            raise ValueError(
                f"Expected target layer {self.name(layer)!r} to output a tensor, but it returned "
                f"{type(tensor).__name__}; choose another layer"
            )
        if self.reshape_transform is None:
            self.layout(tensor, layer)

    def __call__(self, tensor: Tensor, layer: nn.Module) -> Tensor:
        if self.reshape_transform is None:
            return self.layout(tensor, layer)(tensor)
        result = self.reshape_transform(tensor)
        if not isinstance(result, Tensor) or result.ndim != 4 or result.shape[0] != tensor.shape[0]:
            shape = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise ValueError(
                f"Expected `reshape_transform` to turn the output of {self.name(layer)!r} "
                f"{tuple(tensor.shape)} into (B, C, H, W) with B = {tensor.shape[0]}, but it returned {shape}"
            )
        return result
