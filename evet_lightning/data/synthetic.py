"""Synthetic shapes: a small classification set whose true object masks are known exactly.

Every image shows a textured background, one large *target* object and a few smaller *distractor* objects of
other classes. The label is the class of the target, i.e. of the largest object, so a classifier must find
that object, and a saliency map of a trained classifier should land on it: the returned mask is exactly the
set of pixels where the target was drawn, which makes localization metrics (energy pointing game) meaningful.

Items are generated on the fly from ``(seed, index)`` alone, so item ``i`` is identical whichever order,
worker or process reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["SHAPE_NAMES", "ShapeSpec", "SyntheticShapes", "SyntheticShapesDataModule", "draw_shape"]

#: Class names in label order; a dataset with ``num_classes=k`` uses the first ``k``.
SHAPE_NAMES: tuple[str, ...] = ("square", "disc", "triangle", "cross", "ring", "diamond")

# Area of each shape divided by r**2, where r is its half extent (the shape fits in a 2r x 2r box).
_AREA_PER_R2: dict[str, float] = {
    "square": 4.0,
    "disc": math.pi,
    "triangle": 2.0,
    "cross": 20.0 / 9.0,
    "ring": math.pi * (1.0 - 0.5**2),
    "diamond": 2.0,
}

# Target area as a fraction of the image, and distractor area as a fraction of the target's area. A
# distractor's linear size is therefore at most sqrt(0.3) ~ 0.55 of the target's.
_TARGET_AREA_RANGE = (0.09, 0.18)
_DISTRACTOR_AREA_RANGE = (0.12, 0.30)
# Background values stay in [0.35, 0.65]; object colour channels are in [0, 0.15] or [0.85, 1], so every
# object differs from the background by at least 0.2 in every channel.
_PLACEMENT_CANDIDATES = 128
_LAYOUT_ATTEMPTS = 8


@dataclass(frozen=True)
class ShapeSpec:
    """One drawn object.

    Convention: pixel coordinates, ``x`` is the column and ``y`` the row of the object's centre; the object
    lies inside the box ``[x - radius, x + radius] x [y - radius, y + radius]``, which lies inside the image.

    Args:
        label: class index into :data:`SHAPE_NAMES`.
        x: centre column.
        y: centre row.
        radius: half extent.
        colour: RGB in [0, 1].
    """

    label: int
    x: float
    y: float
    radius: float
    colour: tuple[float, float, float]

    @property
    def name(self) -> str:
        """The class name."""
        return SHAPE_NAMES[self.label]


def _pixel_grid(height: int, width: int) -> tuple[Tensor, Tensor]:
    """Row and column coordinates of the pixel centres, each of shape ``(H, W)``."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)
    return rows, cols


def _shape_mask(label: int, dx: Tensor, dy: Tensor, r: float) -> Tensor:
    """Pixels inside shape ``label`` of half extent ``r``, given offsets from its centre (``dy`` points down)."""
    name = SHAPE_NAMES[label]
    ax, ay = dx.abs(), dy.abs()
    if name == "square":
        return (ax <= r) & (ay <= r)
    if name == "disc":
        return dx * dx + dy * dy <= r * r
    if name == "triangle":  # apex up, base down, base width 2r, height 2r
        return (dy >= -r) & (dy <= r) & (2.0 * ax <= dy + r)
    if name == "cross":  # two bars of thickness 2r/3
        return ((ax <= r) & (ay <= r / 3.0)) | ((ay <= r) & (ax <= r / 3.0))
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    if name == "diamond":
        return ax + ay <= r
    raise AssertionError(f"unknown shape {name}")  # unreachable: labels are validated


def draw_shape(spec: ShapeSpec, height: int, width: int) -> Tensor:
    """Rasterize one object.

    Args:
        spec: the object.
        height: image height ``H``.
        width: image width ``W``.

    Returns:
        ``(H, W)`` bool mask of the pixels whose centre lies inside the object.
    """
    rows, cols = _pixel_grid(height, width)
    return _shape_mask(spec.label, cols - spec.x, rows - spec.y, spec.radius)


def _mix(seed: int, index: int) -> int:
    """A 63-bit generator seed from ``(seed, index)`` (splitmix64 finalizer), stable across processes."""
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def _uniform(generator: torch.Generator, low: float, high: float, size: int = 1) -> Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _random_colour(generator: torch.Generator) -> tuple[float, float, float]:
    """Each channel dark ([0, 0.15]) or bright ([0.85, 1]): high contrast against the background."""
    bright = torch.rand(3, generator=generator) < 0.5
    value = 0.15 * torch.rand(3, generator=generator)
    channels = torch.where(bright, 1.0 - value, value).tolist()
    return (channels[0], channels[1], channels[2])


def _background(generator: torch.Generator, height: int, width: int) -> Tensor:
    """Smooth low-frequency colour noise plus faint oriented stripes, ``(3, H, W)`` in [0.35, 0.65]."""
    coarse = torch.rand(1, 3, 4, 4, generator=generator)
    noise = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)[0]
    rows, cols = _pixel_grid(height, width)
    angle, period, phase = (torch.rand(3, generator=generator) * torch.tensor([math.pi, 6.0, 2 * math.pi])).tolist()
    period += 4.0
    stripes = torch.sin((cols * math.cos(angle) + rows * math.sin(angle)) * (2 * math.pi / period) + phase)
    return 0.4 + 0.2 * noise + 0.05 * stripes


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """Raise a ValueError unless ``value`` is an int (not a bool) in ``[low, high]`` (``high=None``: unbounded)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"Expected `{name}` to be an integer {bounds}, but got {value!r}")


def _parse_size(image_size: object) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)``, each side an int >= 16."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        height, width = size
        if all(isinstance(s, int) and not isinstance(s, bool) and s >= 16 for s in (height, width)):
            return height, width
    raise ValueError(
        f"Expected `image_size` to be an integer >= 16 or a (height, width) pair of them, but got {image_size!r}"
    )


class SyntheticShapes(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Images of one large target shape among smaller distractor shapes; the label is the target's class.

    Each image has a smooth random colour background with faint stripes, one target object of class ``label``
    and ``num_distractors`` smaller objects of other classes. The target is drawn with an area of 9-18% of the
    image (after rasterization 8.6-18.2% at 64x64, within 8-20% for sides of at least 32 unless the image is so
    elongated that its shorter side bounds the target), at a random position fully inside the frame, in a
    random colour. Each distractor's area is 12-30% of the target's (linear size <= 0.55 of it). Distractors
    overlap neither the target nor each other, not even by touching; when a large target leaves no room, the
    layout is drawn anew (up to 8 times, after which a distractor that still does not fit is left out; this
    has not been seen with the default sizes). Shapes: :data:`SHAPE_NAMES`; a dataset with ``num_classes=k``
    uses the first ``k`` and draws distractors from those too.

    Labels are balanced: ``label = (index + seed) % num_classes``. Everything else is drawn from a generator
    seeded with a hash of ``(seed, index)``, so an item does not depend on access order, worker or process.

    Args:
        num_samples: number of items.
        image_size: ``S`` for ``S x S`` images or ``(H, W)``; each side at least 16.
        num_classes: number of classes, 2 to 6.
        num_distractors: number of smaller objects per image, 0 to 4.
        seed: dataset seed; different seeds give different images.

    Returns (per item):
        ``(image, label, mask)``: image ``(3, H, W)`` float32 in [0, 1]; label int64 scalar; mask ``(H, W)``
        bool, exactly the pixels where the target object was drawn.

    Example:
        >>> dataset = SyntheticShapes(num_samples=8, image_size=(48, 64), seed=0)
        >>> image, label, mask = dataset[3]
        >>> image.shape, image.dtype, label.item(), dataset.classes[label]
        (torch.Size([3, 48, 64]), torch.float32, 3, 'cross')
        >>> mask.shape, mask.dtype
        (torch.Size([48, 64]), torch.bool)
        >>> bool(torch.equal(dataset[3][0], image))
        True
    """

    def __init__(
        self,
        num_samples: int = 512,
        image_size: int | tuple[int, int] = 64,
        num_classes: int = 4,
        num_distractors: int = 2,
        seed: int = 0,
    ) -> None:
        _check_int("num_samples", num_samples, 1)
        self.height, self.width = _parse_size(image_size)
        _check_int("num_classes", num_classes, 2, len(SHAPE_NAMES))
        _check_int("num_distractors", num_distractors, 0, 4)
        _check_int("seed", seed, 0)
        self.num_samples = num_samples
        self.image_size = (self.height, self.width)
        self.num_classes = num_classes
        self.num_distractors = num_distractors
        self.seed = seed
        self.classes: list[str] = list(SHAPE_NAMES[:num_classes])

    def __len__(self) -> int:
        return self.num_samples

    def _check_index(self, index: int) -> int:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_samples} samples")
        return index % self.num_samples

    def label(self, index: int) -> int:
        """The class of item ``index``, without rendering it."""
        return (self._check_index(index) + self.seed) % self.num_classes

    def _layout(self, index: int) -> tuple[torch.Generator, list[ShapeSpec]]:
        index = self._check_index(index)
        generator = torch.Generator().manual_seed(_mix(self.seed, index))
        # A large target can leave too little room for the distractors; then draw a new layout (rarely needed).
        for _ in range(_LAYOUT_ATTEMPTS):
            objects = self._try_layout(generator, self.label(index))
            if len(objects) == self.num_distractors + 1:
                break
        return generator, objects

    def _try_layout(self, generator: torch.Generator, label: int) -> list[ShapeSpec]:
        """A target plus as many distractors as fit beside it (each placed or skipped)."""
        height, width = self.height, self.width
        max_radius = (min(height, width) - 2) / 2.0
        area = _uniform(generator, *_TARGET_AREA_RANGE).item() * height * width
        radius = min(math.sqrt(area / _AREA_PER_R2[SHAPE_NAMES[label]]), max_radius)
        u, v = torch.rand(2, generator=generator).tolist()
        x, y = radius + u * (width - 1 - 2 * radius), radius + v * (height - 1 - 2 * radius)
        target = ShapeSpec(label, x, y, radius, _random_colour(generator))

        boxes = [(target.x, target.y, target.radius)]
        objects = [target]
        for _ in range(self.num_distractors):
            other = int(torch.randint(self.num_classes - 1, (1,), generator=generator).item())
            d_label = other + (1 if other >= label else 0)
            colour = _random_colour(generator)
            # A batch of candidates, each with its own size and centre; keep the first whose box is clear of all
            # placed boxes by more than one pixel. Crowded images thereby get smaller (still in-range) distractors.
            fraction = _uniform(generator, *_DISTRACTOR_AREA_RANGE, size=_PLACEMENT_CANDIDATES)
            d_radius = (fraction * _AREA_PER_R2[target.name] / _AREA_PER_R2[SHAPE_NAMES[d_label]]).sqrt() * radius
            span = torch.tensor([width - 1.0, height - 1.0]) - 2 * d_radius[:, None]
            centres = torch.rand(_PLACEMENT_CANDIDATES, 2, generator=generator) * span + d_radius[:, None]
            placed = torch.tensor(boxes)
            gap = (centres[:, None, :] - placed[None, :, :2]).abs() - (d_radius[:, None, None] + placed[None, :, 2:])
            clear = (gap > 1.0).any(dim=2).all(dim=1)
            if bool(clear.any()):
                pick = int(clear.to(torch.uint8).argmax())
                d_x, d_y = centres[pick].tolist()
                objects.append(ShapeSpec(d_label, d_x, d_y, d_radius[pick].item(), colour))
                boxes.append((d_x, d_y, d_radius[pick].item()))
        return objects

    def scene(self, index: int) -> list[ShapeSpec]:
        """The objects of item ``index``: the target first, then the distractors."""
        return self._layout(index)[1]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        generator, objects = self._layout(index)
        height, width = self.height, self.width
        image = _background(generator, height, width)
        rows, cols = _pixel_grid(height, width)
        target, *distractors = objects
        for spec in distractors:
            inside = _shape_mask(spec.label, cols - spec.x, rows - spec.y, spec.radius)
            image = torch.where(inside, torch.tensor(spec.colour).view(3, 1, 1), image)
        # The target is drawn last, so nothing covers it: its mask is exactly what is visible of it.
        mask = _shape_mask(target.label, cols - target.x, rows - target.y, target.radius)
        image = torch.where(mask, torch.tensor(target.colour).view(3, 1, 1), image)
        return image.clamp_(0.0, 1.0), torch.tensor(target.label, dtype=torch.int64), mask


class SeededLoaders(pl.LightningDataModule):
    """The loaders of the shapes data modules: ``train_set`` shuffled by a generator seeded with ``seed``,
    ``val_set`` in index order (identical batches on every pass); subclasses set the five attributes."""

    train_set: Dataset[tuple[Tensor, Tensor, Tensor]]
    val_set: Dataset[tuple[Tensor, Tensor, Tensor]]
    seed: int
    batch_size: int
    num_workers: int

    def train_dataloader(self) -> DataLoader[tuple[Tensor, Tensor, Tensor]]:
        """Shuffled training batches (seeded)."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader[tuple[Tensor, Tensor, Tensor]]:
        """Validation batches in index order."""
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class SyntheticShapesDataModule(SeededLoaders):
    """Train and validation :class:`SyntheticShapes` loaders yielding ``(x, y, mask)`` batches.

    Train uses ``seed`` and is shuffled with a generator seeded by ``seed``; validation uses ``seed + 1`` and is
    not shuffled, so its batches are identical on every pass.

    Args:
        train_samples: number of training items.
        val_samples: number of validation items.
        image_size: ``S`` or ``(H, W)``.
        num_classes: number of classes, 2 to 6.
        batch_size: batch size of both loaders.
        seed: seed of the training set; validation uses ``seed + 1``.
        num_workers: ``DataLoader`` workers.
        num_distractors: distractors per image.

    Batches: ``x`` ``(B, 3, H, W)`` float32, ``y`` ``(B,)`` int64, ``mask`` ``(B, H, W)`` bool.
    """

    def __init__(
        self,
        train_samples: int = 2048,
        val_samples: int = 256,
        image_size: int | tuple[int, int] = 64,
        num_classes: int = 4,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        num_distractors: int = 2,
    ) -> None:
        super().__init__()
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set = SyntheticShapes(
            num_samples=train_samples,
            image_size=image_size,
            num_classes=num_classes,
            num_distractors=num_distractors,
            seed=seed,
        )
        self.val_set = SyntheticShapes(
            num_samples=val_samples,
            image_size=image_size,
            num_classes=num_classes,
            num_distractors=num_distractors,
            seed=seed + 1,
        )
