"""PASCAL VOC 2007 segmentation from a local devkit: images, multi-hot labels and class-index masks with VOC's void.

The layout is the devkit's (nothing is downloaded)::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png          palette PNG: 0 background, 1..20 the classes, 255 void
    ROOT/ImageSets/Segmentation/<split>.txt  one <id> per line; test.txt is the paper's 210 images

``ROOT`` may also be the folder that holds ``VOC2007/`` or ``VOCdevkit/VOC2007/``. A palette PNG is decoded as its
palette indices (torchvision keeps them), never as colours.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from evet_lightning.data.image_folder import _decode, fit_mask, load_rgb, prepare_image
from evet_lightning.data.multi_shapes import BACKGROUND, IGNORE_INDEX, multi_hot
from evet_lightning.functional.perturbation import Normalization

__all__ = ["VOC_CLASSES", "VOCSegmentation", "voc_index_mask"]

#: The 20 VOC classes in label order (alphabetical); a segmentation PNG's value ``v`` in 1..20 is class ``v - 1``.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_INVALID = -2


def _value_table() -> Tensor:
    """PNG value -> class-index mask value: 0 -> BACKGROUND, v in 1..20 -> v - 1, 255 -> IGNORE_INDEX, else invalid."""
    table = torch.full((256,), _INVALID, dtype=torch.int64)
    table[0] = BACKGROUND
    table[1 : len(VOC_CLASSES) + 1] = torch.arange(len(VOC_CLASSES))
    table[255] = IGNORE_INDEX
    return table


_VALUE_TABLE = _value_table()


def voc_index_mask(png: Tensor, path: str | os.PathLike[str] = "mask") -> Tensor:
    """A VOC segmentation PNG's values ``(1, H, W)`` or ``(H, W)`` uint8 -> the class-index mask ``(H, W)`` int64.

    0 becomes :data:`~evet_lightning.data.multi_shapes.BACKGROUND` (-1), ``v`` in 1..20 class ``v - 1``, 255 stays
    :data:`~evet_lightning.data.multi_shapes.IGNORE_INDEX` (void).

    Raises:
        ValueError: the PNG has colour channels (not a palette or greyscale image) or another value; names ``path``.

    Example:
        >>> voc_index_mask(torch.tensor([[0, 1, 20, 255]], dtype=torch.uint8)).tolist()
        [[-1, 0, 19, 255]]
    """
    if png.ndim == 3:
        if png.shape[0] != 1:
            raise ValueError(
                f"mask {path} has {png.shape[0]} channels; expected a palette (or greyscale) PNG of class indices, "
                "as in VOC's SegmentationClass/"
            )
        png = png[0]
    mask = _VALUE_TABLE[png.long()]
    invalid = mask == _INVALID
    if bool(invalid.any()):
        raise ValueError(
            f"mask {path} holds the value {int(png[invalid][0])}; expected 0 (background), 1..{len(VOC_CLASSES)} "
            f"(the classes) or 255 (void)"
        )
    return mask


def _devkit_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    return root


class VOCSegmentation(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """The images of a VOC segmentation split with multi-hot labels and class-index masks (decision 51).

    Each image is decoded as RGB, its shorter side resized to ``size`` (bilinear, antialiased) and the centre
    ``size x size`` square cropped; its segmentation PNG gets the same resize (nearest) and crop. The labels are the
    classes that have at least one pixel in the cropped mask (background and void are no class), so every positive
    label has an object to point at.

    Args:
        root: the devkit's ``VOC2007`` folder (or a folder holding ``VOC2007/`` or ``VOCdevkit/VOC2007/``).
        split: the image set, ``ImageSets/Segmentation/<split>.txt`` (``test``: the paper's 210 images).
        size: side of the square images; ``None`` keeps each image's own size (batch size 1 then).
        normalization: ``(mean, std)`` per channel for the ``[0, 1]`` pixels, or ``None``.

    Items: ``(image, labels, mask)``: ``(3, S, S)`` float32, ``(20,)`` float32 multi-hot and ``(S, S)`` int64, class
    ``k`` where the PNG holds ``k + 1``, :data:`~evet_lightning.data.multi_shapes.BACKGROUND` (-1) for background
    and :data:`~evet_lightning.data.multi_shapes.IGNORE_INDEX` (255) for void.

    Raises:
        ValueError: the split file, an image or a mask it lists is missing (naming the file); see also
            :meth:`verify`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "test",
        size: int | None = 224,
        normalization: Normalization = None,
    ) -> None:
        if not split or Path(split).name != split:
            raise ValueError(f"Expected `split` to be the name of an image set such as 'test', but got {split!r}")
        self.root = _devkit_root(Path(root))
        self.split = split
        self.classes: list[str] = list(VOC_CLASSES)
        self.size = size
        self.normalization = normalization
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise ValueError(
                f"split file not found: {split_file} (a VOC devkit has ImageSets/Segmentation/<split>.txt; "
                "pass the VOC2007 folder and an existing --split)"
            )
        self.ids: list[str] = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"split file {split_file} lists no image")
        for index in range(len(self.ids)):
            for path, what in ((self.image_path(index), "image"), (self.mask_path(index), "mask")):
                if not path.is_file():
                    raise ValueError(f"{what} not found: {path} (listed in {split_file})")

    def image_path(self, index: int) -> Path:
        """``JPEGImages/<id>.jpg`` of item ``index``."""
        return self.root / "JPEGImages" / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> Path:
        """``SegmentationClass/<id>.png`` of item ``index``."""
        return self.root / "SegmentationClass" / f"{self.ids[index]}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def _png(self, index: int, height: int, width: int) -> Tensor:
        """The segmentation PNG's values ``(C, H, W)`` uint8 of item ``index``, checked against ``height x width``."""
        path = self.mask_path(index)
        png = _decode(os.fspath(path), "mask")
        if png.dtype != torch.uint8:
            raise ValueError(f"mask {path} has {png.dtype} values; expected an 8-bit palette PNG of class indices")
        if tuple(png.shape[-2:]) != (height, width):
            raise ValueError(
                f"mask {path} is {png.shape[-1]}x{png.shape[-2]} pixels, but its image {self.image_path(index)} is "
                f"{width}x{height}"
            )
        return png

    def verify(self, indices: Iterable[int] | None = None) -> None:
        """Decode the image and mask of each item in ``indices`` (default: all) and check them.

        Raises:
            ValueError: a file that cannot be decoded, a mask whose size differs from its image's, or a mask that is
                not a palette PNG of VOC values; the message names the file.
        """
        for index in range(len(self)) if indices is None else indices:
            image = load_rgb(self.image_path(index))
            voc_index_mask(self._png(index, *image.shape[-2:]), self.mask_path(index))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = load_rgb(self.image_path(index))
        png = self._png(index, *image.shape[-2:])
        mask = voc_index_mask(fit_mask(png, self.size), self.mask_path(index))
        present = mask[(mask >= 0) & (mask < len(VOC_CLASSES))].unique()
        return prepare_image(image, self.size, self.normalization), multi_hot(present, len(VOC_CLASSES)), mask
