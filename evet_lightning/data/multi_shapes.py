"""Multi-object synthetic shapes: a multi-label set whose per-class object masks are known exactly.

Every image shows 2 or 3 objects (``min_objects`` to ``max_objects``) of *different* classes on the textured
background of :class:`~evet_lightning.data.SyntheticShapes`, drawn with the same shapes. The labels are multi-hot:
class ``k`` is positive when an object of class ``k`` is in the image. Objects never overlap or touch (their
boxes are more than one pixel apart), so each pixel belongs to at most one class and the class-index mask is
exact: value ``k`` where class ``k`` was drawn, :data:`BACKGROUND` (-1) elsewhere (decision 50).

Items are generated on the fly from ``(seed, index)`` alone, like :class:`~evet_lightning.data.SyntheticShapes`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from evet_lightning.data.synthetic import (
    _AREA_PER_R2,
    _LAYOUT_ATTEMPTS,
    _PLACEMENT_CANDIDATES,
    SHAPE_NAMES,
    SeededLoaders,
    ShapeSpec,
    _background,
    _check_int,
    _mix,
    _parse_size,
    _pixel_grid,
    _random_colour,
    _shape_mask,
    _uniform,
)

__all__ = ["BACKGROUND", "IGNORE_INDEX", "MultiObjectShapes", "MultiObjectShapesDataModule", "class_masks", "multi_hot"]

#: The value of a class-index mask's pixels that belong to no class (decision 50).
BACKGROUND = -1
#: The value of a class-index mask's pixels that are left out of the scoring: VOC's "void" (decision 51).
IGNORE_INDEX = 255

# Area of each object as a fraction of the image; several must fit, so smaller than the single-object target.
_OBJECT_AREA_RANGE = (0.05, 0.11)
# Each new layout attempt scales the areas by this factor, so a crowded draw always ends with room to spare.
_SHRINK_PER_ATTEMPT = 0.8


def multi_hot(classes: Tensor, num_classes: int) -> Tensor:
    """``(C,)`` float32 with 1 at each class index in ``classes`` (any shape, integers) and 0 elsewhere.

    Example:
        >>> multi_hot(torch.tensor([2, 0]), 4).tolist()
        [1.0, 0.0, 1.0, 0.0]
    """
    labels = torch.zeros(num_classes, dtype=torch.float32)
    labels[classes.reshape(-1).long()] = 1.0
    return labels


def class_masks(index_mask: Tensor, num_classes: int) -> Tensor:
    """Per-class masks ``(..., C, H, W)`` bool from a class-index mask ``(..., H, W)``: ``mask[k] = index_mask == k``.

    :data:`BACKGROUND` and :data:`IGNORE_INDEX` pixels are in no class's mask (the per-class form cannot say that a
    pixel is ignored; keep the class-index mask for that).

    Example:
        >>> class_masks(torch.tensor([[0, -1], [1, 255]]), 2).int().tolist()
        [[[1, 0], [0, 0]], [[0, 0], [1, 0]]]
    """
    classes = torch.arange(num_classes, device=index_mask.device).view(num_classes, 1, 1)
    return index_mask.unsqueeze(-3) == classes


class MultiObjectShapes(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Images of 2-3 non-overlapping objects of different classes; multi-hot labels and an exact class-index mask.

    Each item draws how many objects it shows (uniform in ``[min_objects, max_objects]``), which classes (distinct,
    uniform without replacement), and for each object an area of 5-11% of the image, a colour and a position fully
    inside the frame whose box is more than one pixel away from every other object's box. When the objects do not
    fit, the layout is drawn again with areas scaled by 0.8 per attempt (up to 8 attempts); a draw that still does
    not fit keeps the objects placed (at least one), which has not been seen with the defaults (tested).

    Args:
        num_samples: number of items.
        image_size: ``S`` for ``S x S`` images or ``(H, W)``; each side at least 16.
        num_classes: number of classes, 2 to 6 (:data:`SHAPE_NAMES`, the first ``num_classes``).
        min_objects: fewest objects per image, at least 1.
        max_objects: most objects per image, at most ``num_classes`` (the objects' classes differ).
        seed: dataset seed.

    Returns (per item):
        ``(image, labels, mask)``: image ``(3, H, W)`` float32 in [0, 1]; labels ``(C,)`` float32 multi-hot (ready
        for ``BCEWithLogitsLoss``); mask ``(H, W)`` int64, ``k`` exactly where an object of class ``k`` was drawn,
        :data:`BACKGROUND` elsewhere. :func:`class_masks` turns it into ``(C, H, W)`` bool masks.

    Example:
        >>> dataset = MultiObjectShapes(num_samples=4, image_size=32, seed=0)
        >>> image, labels, mask = dataset[1]
        >>> image.shape, labels.shape, mask.shape, mask.dtype
        (torch.Size([3, 32, 32]), torch.Size([4]), torch.Size([32, 32]), torch.int64)
        >>> sorted(set(mask.unique().tolist()) - {BACKGROUND}) == labels.nonzero().flatten().tolist()
        True
    """

    def __init__(
        self,
        num_samples: int = 512,
        image_size: int | tuple[int, int] = 48,
        num_classes: int = 4,
        min_objects: int = 2,
        max_objects: int = 3,
        seed: int = 0,
    ) -> None:
        _check_int("num_samples", num_samples, 1)
        self.height, self.width = _parse_size(image_size)
        _check_int("num_classes", num_classes, 2, len(SHAPE_NAMES))
        _check_int("min_objects", min_objects, 1, num_classes)
        _check_int("max_objects", max_objects, min_objects, num_classes)
        _check_int("seed", seed, 0)
        self.num_samples = num_samples
        self.image_size = (self.height, self.width)
        self.num_classes = num_classes
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.seed = seed
        self.classes: list[str] = list(SHAPE_NAMES[:num_classes])

    def __len__(self) -> int:
        return self.num_samples

    def _check_index(self, index: int) -> int:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_samples} samples")
        return index % self.num_samples

    def _layout(self, index: int) -> tuple[torch.Generator, list[ShapeSpec]]:
        generator = torch.Generator().manual_seed(_mix(self.seed, self._check_index(index)))
        span = self.max_objects - self.min_objects + 1
        count = self.min_objects + int(torch.randint(span, (1,), generator=generator).item())
        labels = torch.randperm(self.num_classes, generator=generator)[:count].tolist()
        objects: list[ShapeSpec] = []
        for attempt in range(_LAYOUT_ATTEMPTS):
            objects = self._try_layout(generator, labels, _SHRINK_PER_ATTEMPT**attempt)
            if len(objects) == count:
                break
        return generator, objects

    def _try_layout(self, generator: torch.Generator, labels: list[int], scale: float) -> list[ShapeSpec]:
        """Each object of ``labels`` placed clear of the ones before it, or skipped when none of the candidates is."""
        height, width = self.height, self.width
        max_radius = (min(height, width) - 2) / 2.0
        boxes: list[tuple[float, float, float]] = []
        objects: list[ShapeSpec] = []
        for label in labels:
            colour = _random_colour(generator)
            area = _uniform(generator, *_OBJECT_AREA_RANGE, size=_PLACEMENT_CANDIDATES) * (scale * height * width)
            radius = (area / _AREA_PER_R2[SHAPE_NAMES[label]]).sqrt().clamp(max=max_radius)
            span = torch.tensor([width - 1.0, height - 1.0]) - 2 * radius[:, None]
            centres = torch.rand(_PLACEMENT_CANDIDATES, 2, generator=generator) * span + radius[:, None]
            clear = torch.ones(_PLACEMENT_CANDIDATES, dtype=torch.bool)
            if boxes:
                placed = torch.tensor(boxes)
                gap = (centres[:, None, :] - placed[None, :, :2]).abs() - (radius[:, None, None] + placed[None, :, 2:])
                clear = (gap > 1.0).any(dim=2).all(dim=1)
            if bool(clear.any()):
                pick = int(clear.to(torch.uint8).argmax())
                x, y = centres[pick].tolist()
                objects.append(ShapeSpec(label, x, y, radius[pick].item(), colour))
                boxes.append((x, y, radius[pick].item()))
        return objects

    def scene(self, index: int) -> list[ShapeSpec]:
        """The objects of item ``index``, in drawing order."""
        return self._layout(index)[1]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        generator, objects = self._layout(index)
        image = _background(generator, self.height, self.width)
        rows, cols = _pixel_grid(self.height, self.width)
        mask = torch.full((self.height, self.width), BACKGROUND, dtype=torch.int64)
        for spec in objects:
            inside = _shape_mask(spec.label, cols - spec.x, rows - spec.y, spec.radius)
            image = torch.where(inside, torch.tensor(spec.colour).view(3, 1, 1), image)
            mask[inside] = spec.label
        labels = multi_hot(torch.tensor([spec.label for spec in objects], dtype=torch.int64), self.num_classes)
        return image.clamp_(0.0, 1.0), labels, mask


class MultiObjectShapesDataModule(SeededLoaders):
    """Train and validation :class:`MultiObjectShapes` loaders yielding ``(x, y, mask)`` batches.

    Like :class:`~evet_lightning.data.SyntheticShapesDataModule`: train uses ``seed`` and is shuffled with a generator
    seeded by ``seed``; validation uses ``seed + 1`` and is not shuffled.

    Batches: ``x`` ``(B, 3, H, W)`` float32, ``y`` ``(B, C)`` float32 multi-hot, ``mask`` ``(B, H, W)`` int64
    class-index masks (:data:`BACKGROUND` where no object is).
    """

    def __init__(
        self,
        train_samples: int = 1536,
        val_samples: int = 128,
        image_size: int | tuple[int, int] = 48,
        num_classes: int = 4,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
        min_objects: int = 2,
        max_objects: int = 3,
    ) -> None:
        super().__init__()
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        options = {"image_size": image_size, "num_classes": num_classes}
        options |= {"min_objects": min_objects, "max_objects": max_objects}
        self.train_set = MultiObjectShapes(num_samples=train_samples, seed=seed, **options)  # type: ignore[arg-type]
        self.val_set = MultiObjectShapes(num_samples=val_samples, seed=seed + 1, **options)  # type: ignore[arg-type]
