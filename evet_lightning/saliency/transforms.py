"""Invertible geometric image transforms for EVET (paper Sec. 3.1 and 4).

Convention:
    - Pixel coordinates, ``(x, y)`` order: ``x`` is the column (to the right), ``y`` the row (downwards);
      pixel centres sit at integer coordinates ``0 .. W-1`` and ``0 .. H-1``.
    - Every transform is an affine map about the image centre ``((W - 1) / 2, (H - 1) / 2)`` given by a
      3x3 float64 matrix ``dst_from_src`` that sends a point of the original image to the transformed one.
      Working in pixels (not normalized coordinates) makes a rotation a true rotation on non-square images.
    - ``Rotate(angle)`` turns the content counter-clockwise on screen by ``angle`` degrees.
    - ``Scale(factor)`` zooms about the centre (``factor < 1`` shrinks the content).
    - ``Shear(factor)`` shifts each row horizontally by ``factor * (y - cy)`` pixels.
    - ``forward`` resamples the image with the inverse of ``dst_from_src``; ``inverse`` resamples a map of the
      transformed frame with ``dst_from_src`` itself. The inverse is never a second hand-written formula.
    - Pixels whose pre-image lies outside the canvas are filled with 0. :meth:`AffineTransform.valid_mask`
      tells which pixels of the original frame have a pre-image inside the transformed canvas, i.e. which
      pixels of ``inverse(...)`` carry evidence.
    - Sampling is bilinear; when every sampling position is a pixel centre (flips, the identity) the values
      are copied exactly.
    - Transforms are immutable values (equality, hash and repr from their parameters).
    - Shapes: ``(B, C, H, W)`` in, the same shape out, on the input's device and dtype. Differentiable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evet_lightning._validation import real_number

__all__ = [
    "AffineTransform",
    "Compose",
    "HorizontalFlip",
    "Identity",
    "Rotate",
    "Scale",
    "Shear",
    "paper_transforms",
    "warp_affine",
]

_INTEGER_TOLERANCE = 1e-6


def _about_centre(linear: Tensor, height: int, width: int) -> Tensor:
    """Embed a 2x2 linear map acting about the image centre into a 3x3 pixel-space matrix."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[:2, :2] = linear
    centre = torch.tensor([cx, cy], dtype=torch.float64)
    matrix[:2, 2] = centre - linear @ centre
    return matrix


def _inverse(dst_from_src: Tensor, transform: object) -> Tensor:
    """``src_from_dst``; ``ValueError`` when the matrix is singular or it or its inverse overflows float32."""
    src_from_dst, info = torch.linalg.inv_ex(dst_from_src)
    finite = bool(torch.isfinite(dst_from_src.float()).all() and torch.isfinite(src_from_dst.float()).all())
    if int(info) != 0 or not finite:
        raise ValueError(
            f"Expected {transform!r} to be an invertible affine map whose matrix and inverse are finite in float32, "
            f"but its matrix is {dst_from_src[:2].tolist()}"
        )
    return src_from_dst


#: Image sizes (height, width) a transform is checked at when constructed: the matrix's translation, and its
#: inverse's, are linear in the image centre, so they are largest at a corner of this range, which holds every
#: image up to 65536 pixels a side.
_CHECKED_SIZES = ((2, 2), (2, 1 << 16), (1 << 16, 2), (1 << 16, 1 << 16))


def _check_invertible(transform: AffineTransform) -> None:
    """Raise at construction for a transform whose matrix, at some image size up to 65536 pixels a side, cannot be
    inverted or overflows float32 (a composition of extreme shears), rather than when it is first called."""
    for height, width in _CHECKED_SIZES:
        _inverse(transform.matrix(height, width), transform)


def _sample_positions(dst_size: tuple[int, int], src_from_dst: Tensor) -> Tensor:
    """Pixel positions in the source for every destination pixel, ``(H, W, 2)`` float64 in (x, y) order."""
    height, width = dst_size
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # (H, W, 3)
    return (points @ src_from_dst.T)[..., :2]


def warp_affine(images: Tensor, src_from_dst: Tensor) -> Tensor:
    """Resample ``images`` so that ``out[y, x] = images[src_from_dst @ (x, y, 1)]`` (bilinear, zero fill).

    Args:
        images: ``(B, C, H, W)``.
        src_from_dst: ``(3, 3)`` pixel-space matrix from output pixels to input pixels.

    Returns:
        ``(B, C, H, W)`` on the input's device and dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"Expected `images` to have shape (B, C, H, W), but got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    positions = _sample_positions((height, width), src_from_dst)
    rounded = positions.round()
    if bool(((positions - rounded).abs() <= _INTEGER_TOLERANCE).all()):
        # Every sample falls on a pixel centre: copy values exactly instead of interpolating.
        xs, ys = rounded[..., 0].long(), rounded[..., 1].long()
        inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
        flat_index = (ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)).reshape(-1).to(images.device)
        gathered = images.reshape(*images.shape[:2], -1).index_select(-1, flat_index).reshape(images.shape)
        return gathered * inside.to(device=images.device, dtype=images.dtype)
    # align_corners=True: normalized -1 and +1 are the centres of the first and last pixels.
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=torch.float64)
    grid = (positions * scale - 1.0).to(device=images.device, dtype=images.dtype)
    grid = grid.unsqueeze(0).expand(images.shape[0], -1, -1, -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class AffineTransform:
    """Base class: an affine transform about the image centre, defined by :meth:`matrix`.

    Transforms are immutable values: equal when their class and parameters are equal, hashable, with a
    ``Name(param=value)`` repr. They are plain classes rather than dataclasses so that jsonargparse (LightningCLI,
    YAML) accepts any subclass by ``class_path`` where an ``AffineTransform`` is expected.
    """

    __slots__ = ()

    def _params(self) -> dict[str, Any]:
        """The constructor arguments, by name."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._params() == self._params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._params().values()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), tuple(self._params().values())

    def matrix(self, height: int, width: int) -> Tensor:
        """The 3x3 float64 pixel-space matrix ``dst_from_src`` for an image of size ``(height, width)``."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        """Transform ``(B, C, H, W)`` images; pixels with no pre-image are 0."""
        dst_from_src = self.matrix(*images.shape[-2:])
        return warp_affine(images, _inverse(dst_from_src, self))

    def inverse(self, maps: Tensor) -> Tensor:
        """Map ``(B, C, H, W)`` maps of the transformed frame back to the original frame.

        Pixels outside :meth:`valid_mask` are 0 and carry no evidence.
        """
        dst_from_src = self.matrix(*maps.shape[-2:])
        _inverse(dst_from_src, self)
        return warp_affine(maps, dst_from_src)

    def valid_mask(self, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
        """``(H, W)`` bool: original-frame pixels whose image under the transform lies inside the canvas.

        These are exactly the pixels of :meth:`inverse` that were sampled from inside the transformed map.
        """
        positions = _sample_positions((height, width), self.matrix(height, width))
        tolerance = _INTEGER_TOLERANCE
        inside = (
            (positions[..., 0] >= -tolerance)
            & (positions[..., 0] <= width - 1 + tolerance)
            & (positions[..., 1] >= -tolerance)
            & (positions[..., 1] <= height - 1 + tolerance)
        )
        return inside.to(device)

    def __call__(self, images: Tensor) -> Tensor:
        return self.forward(images)


class Identity(AffineTransform):
    """The identity (EVET's view 0)."""

    __slots__ = ()

    def matrix(self, height: int, width: int) -> Tensor:
        return torch.eye(3, dtype=torch.float64)


class HorizontalFlip(AffineTransform):
    """Mirror left-right about the vertical centre line.

    Example:
        >>> HorizontalFlip()(torch.arange(3.0).view(1, 1, 1, 3))
        tensor([[[[2., 1., 0.]]]])
    """

    __slots__ = ()

    def matrix(self, height: int, width: int) -> Tensor:
        return _about_centre(torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), height, width)


class Scale(AffineTransform):
    """Zoom about the centre by ``factor`` (the paper uses 0.9: the content shrinks by 10%)."""

    __slots__ = ("_factor",)
    _factor: float

    def __init__(self, factor: float) -> None:
        number = real_number(factor)
        if number is None or number <= 0:
            raise ValueError(f"Expected `factor` to be a positive finite float, but got {factor!r}")
        object.__setattr__(self, "_factor", number)
        _check_invertible(self)

    @property
    def factor(self) -> float:
        return self._factor

    def _params(self) -> dict[str, Any]:
        return {"factor": self._factor}

    def matrix(self, height: int, width: int) -> Tensor:
        return _about_centre(torch.eye(2, dtype=torch.float64) * self._factor, height, width)


class Rotate(AffineTransform):
    """Rotate about the centre by ``angle`` degrees, counter-clockwise on screen (the paper uses 10)."""

    __slots__ = ("_angle",)
    _angle: float

    def __init__(self, angle: float) -> None:
        number = real_number(angle)
        if number is None:
            raise ValueError(f"Expected `angle` to be a finite float, but got {angle!r}")
        object.__setattr__(self, "_angle", number)

    @property
    def angle(self) -> float:
        return self._angle

    def _params(self) -> dict[str, Any]:
        return {"angle": self._angle}

    def matrix(self, height: int, width: int) -> Tensor:
        theta = math.radians(self._angle)
        cos, sin = math.cos(theta), math.sin(theta)
        # With y pointing down, a counter-clockwise turn on screen sends (1, 0) to (cos, -sin).
        linear = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64)
        return _about_centre(linear, height, width)


class Shear(AffineTransform):
    """Horizontal shear about the centre: ``x' = x + factor * (y - cy)`` (the paper uses 0.2)."""

    __slots__ = ("_factor",)
    _factor: float

    def __init__(self, factor: float) -> None:
        number = real_number(factor)
        if number is None:
            raise ValueError(f"Expected `factor` to be a finite float, but got {factor!r}")
        object.__setattr__(self, "_factor", number)
        _check_invertible(self)

    @property
    def factor(self) -> float:
        return self._factor

    def _params(self) -> dict[str, Any]:
        return {"factor": self._factor}

    def matrix(self, height: int, width: int) -> Tensor:
        linear = torch.tensor([[1.0, self._factor], [0.0, 1.0]], dtype=torch.float64)
        return _about_centre(linear, height, width)


def _transform_tuple(transforms: Iterable[AffineTransform]) -> tuple[AffineTransform, ...]:
    """``transforms`` as a tuple; ``ValueError`` when it is empty or holds anything but an AffineTransform."""
    items = tuple(transforms)
    if not items:
        raise ValueError("Expected `transforms` to be a non-empty sequence of transforms, but got an empty one")
    for transform in items:
        if not isinstance(transform, AffineTransform):
            raise ValueError(f"Expected every item of `transforms` to be an AffineTransform, but got {transform!r}")
    return items


class Compose(AffineTransform):
    """Apply ``transforms`` in order (the first one first); one resampling, from the product matrix.

    Example:
        >>> Compose([HorizontalFlip(), Rotate(10.0)])
        Compose(transforms=(HorizontalFlip(), Rotate(angle=10.0)))
    """

    __slots__ = ("_transforms",)
    _transforms: tuple[AffineTransform, ...]

    def __init__(self, transforms: Sequence[AffineTransform]) -> None:
        object.__setattr__(self, "_transforms", _transform_tuple(transforms))
        _check_invertible(self)

    @property
    def transforms(self) -> tuple[AffineTransform, ...]:
        return self._transforms

    def _params(self) -> dict[str, Any]:
        return {"transforms": self._transforms}

    def matrix(self, height: int, width: int) -> Tensor:
        result = torch.eye(3, dtype=torch.float64)
        for transform in self._transforms:
            result = transform.matrix(height, width) @ result
        return result


def paper_transforms() -> list[AffineTransform]:
    """The paper's 7 transforms (Sec. 4): flip, scale 0.9, rotate 10 deg, shear 0.2, and flip followed by each."""
    flip = HorizontalFlip()
    basic: list[AffineTransform] = [Scale(0.9), Rotate(10.0), Shear(0.2)]
    return [flip, *basic, *(Compose([flip, transform]) for transform in basic)]
