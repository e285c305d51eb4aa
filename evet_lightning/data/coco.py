"""COCO instances from disk: images, multi-hot labels and per-class masks, decoded in PyTorch (no pycocotools).

``IMAGES_DIR`` holds the images an instances ``ANNOTATIONS.json`` (COCO's format, e.g. ``instances_val2014.json``)
names. Its categories (80 for COCO, ids 1..90 with gaps) are mapped to contiguous indices in ascending id order,
with the names from the file. An instance's mask comes from its polygons or its RLE, uncompressed (``counts`` a list)
or compressed (COCO's string); a class's mask is the union of its instances' (decision 51 says how polygons are
rasterized and what ``iscrowd`` does). pycocotools is an optional extra (``evet-lightning[coco]``) the tests compare
against; nothing here needs it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from evet_lightning.data.image_folder import fit_mask, load_rgb, prepare_image
from evet_lightning.functional.perturbation import Normalization

__all__ = ["COCOInstances", "decode_rle", "polygon_mask", "rle_counts"]


def rle_counts(counts: str | bytes) -> list[int]:
    """COCO's compressed RLE string -> its run lengths (the inverse of pycocotools' ``rleToString``).

    Each count is a little-endian run of 5-bit groups (character - 48), bit 0x20 set on every group but the last,
    bit 0x10 of the last group the sign; from the third count on, each is stored as its difference from the count
    two places before it (here 0 is stored as 0 - 2, "N", and 3 as 3 - 2, "1").

    Example:
        >>> rle_counts("522N1")
        [5, 2, 2, 0, 3]
    """
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    values: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError(f"compressed RLE counts end in the middle of a number: {text!r}")
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def decode_rle(counts: Sequence[int] | str | bytes, height: int, width: int) -> Tensor:
    """A COCO RLE -> ``(height, width)`` bool mask.

    ``counts``: run lengths (uncompressed RLE) or COCO's compressed string. Runs alternate between 0 and 1,
    starting with 0, over the pixels in column-major order (down the first column, then the next).

    Raises:
        ValueError: a negative run, or runs that do not add up to ``height * width``.

    Example:
        >>> decode_rle([1, 2, 3], 2, 3).int().tolist()
        [[0, 1, 0], [1, 0, 0]]
    """
    runs = rle_counts(counts) if isinstance(counts, (str, bytes)) else [int(count) for count in counts]
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE counts add up to {sum(runs)} pixels with {len(runs)} runs, expected {height}x{width}")
    values = torch.arange(len(runs)) % 2 == 1
    flat = torch.repeat_interleave(values, torch.tensor(runs, dtype=torch.int64))
    return flat.view(width, height).t().contiguous()


def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> Tensor:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` -> ``(height, width)`` bool mask, the union of the polygons.

    Convention: COCO's pixel coordinates, pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``; a pixel is
    inside a polygon when its centre ``(j + 0.5, i + 0.5)`` is, by the even-odd rule (a crossing count along the
    row). A pixel centre exactly on a left or top edge (the smaller x or y) is inside, on a right or bottom edge
    outside, so polygons that share an edge split its pixels without overlap. pycocotools rasterizes differently
    (its outline is traced on a 5x finer grid), so the two can differ along the outline, never inside it.

    Example:
        >>> polygon_mask([[1, 0, 3, 0, 3, 2, 1, 2]], 3, 4).int().tolist()
        [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    for polygon in polygons:
        if len(polygon) % 2:
            raise ValueError(f"a polygon has {len(polygon)} coordinates, expected x, y pairs")
        points = torch.tensor([float(value) for value in polygon], dtype=torch.float64).view(-1, 2)
        if points.shape[0] < 3:
            continue  # a degenerate polygon covers no pixel centre
        # Only the pixels whose centres lie in the polygon's bounding box can be inside: work on those.
        low, high = points.min(dim=0).values, points.max(dim=0).values
        left, top = max(math.floor(low[0].item()), 0), max(math.floor(low[1].item()), 0)
        right, bottom = min(math.ceil(high[0].item()), width), min(math.ceil(high[1].item()), height)
        if right <= left or bottom <= top:
            continue
        centres_y = torch.arange(top, bottom, dtype=torch.float64).view(-1, 1) + 0.5
        centres_x = torch.arange(left, right, dtype=torch.float64).view(1, -1) + 0.5
        start, end = points, points.roll(-1, dims=0)
        slanted = start[:, 1] != end[:, 1]  # a horizontal edge never crosses a row of centres
        start, end = start[slanted], end[slanted]
        lowest, highest = torch.minimum(start[:, 1], end[:, 1]), torch.maximum(start[:, 1], end[:, 1])
        spans = (centres_y >= lowest) & (centres_y < highest)  # (rows, edges)
        crossing_x = start[:, 0] + (centres_y - start[:, 1]) * (end[:, 0] - start[:, 0]) / (end[:, 1] - start[:, 1])
        crossings = torch.where(spans, crossing_x, torch.inf).sort(dim=1).values  # (rows, edges)
        # Even-odd rule: a centre is inside when an odd number of the row's crossings lie at or left of it.
        left_of = torch.searchsorted(crossings, centres_x.expand(len(centres_y), -1).contiguous(), right=True)
        inside = left_of % 2 == 1
        mask[top:bottom, left:right] |= inside
    return mask


def _annotation_mask(segmentation: Any, height: int, width: int, where: str) -> Tensor:
    """The ``(height, width)`` mask of one annotation's polygons or RLE; a ``ValueError`` starting with ``where``."""
    try:
        if isinstance(segmentation, list):
            return polygon_mask(segmentation, height, width)
        if isinstance(segmentation, Mapping) and "counts" in segmentation:
            size = [int(side) for side in segmentation.get("size", (height, width))]
            if size != [height, width]:
                raise ValueError(f"its RLE is {size[1]}x{size[0]} pixels, but the image is {width}x{height}")
            return decode_rle(segmentation["counts"], height, width)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    raise ValueError(f"{where}: expected a segmentation that is a list of polygons or an RLE with 'counts'")


class COCOInstances(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """The images of a COCO instances file with multi-hot labels and per-class masks (decision 51).

    A sample is an image with at least one annotation (an image without any has no class to explain); samples are
    in the file's image order. Each image is decoded as RGB, its shorter side resized to ``size`` and the centre
    square cropped; the masks get the same resize (nearest) and crop. Labels are the classes whose mask has at least
    one pixel in the crop (crowd annotations included: a crowd is its class's pixels), as for
    :class:`~evet_lightning.data.voc.VOCSegmentation`, so every positive label has an object to point at.

    Args:
        images: the folder of the image files (``file_name`` of each image in the JSON).
        annotations: the instances JSON file.
        size: side of the square images; ``None`` keeps each image's own size (batch size 1 then).
        normalization: ``(mean, std)`` per channel for the ``[0, 1]`` pixels, or ``None``.

    Items: ``(image, labels, masks)``: ``(3, S, S)`` float32, ``(C,)`` float32 multi-hot and ``(C, S, S)`` bool, class
    ``k``'s mask the union of its instances (per-class masks, because instances of different classes overlap).

    Raises:
        ValueError: a missing or unreadable JSON, one that is not an instances file, or (in :meth:`verify`) an image
            it names that is not in ``images``; each message names the file.
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        annotations: str | os.PathLike[str],
        size: int | None = 224,
        normalization: Normalization = None,
    ) -> None:
        self.images_dir = Path(images)
        self.annotations_file = Path(annotations)
        self.size = size
        self.normalization = normalization
        if not self.images_dir.is_dir():
            raise ValueError(f"images folder not found: {self.images_dir}")
        try:
            content = json.loads(self.annotations_file.read_text())
        except OSError as error:
            raise ValueError(f"cannot read annotations {self.annotations_file}: {error.strerror or error}") from None
        except ValueError as error:
            raise ValueError(f"annotations {self.annotations_file} are not JSON: {error}") from None
        if not isinstance(content, dict) or not all(key in content for key in ("images", "annotations", "categories")):
            raise ValueError(
                f"annotations {self.annotations_file} are not a COCO instances file "
                "(expected the keys 'images', 'annotations' and 'categories')"
            )
        try:
            categories = sorted(content["categories"], key=lambda category: int(category["id"]))
            self.category_ids: list[int] = [int(category["id"]) for category in categories]
            self.classes: list[str] = [str(category["name"]) for category in categories]
            index_of = {category_id: index for index, category_id in enumerate(self.category_ids)}
            by_image: dict[int, list[dict[str, Any]]] = {}
            for annotation in content["annotations"]:
                by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
                if int(annotation["category_id"]) not in index_of:
                    raise ValueError(f"annotation {annotation.get('id')} has an unknown category_id")
            self._images: list[dict[str, Any]] = [
                {"id": int(image["id"]), "file_name": str(image["file_name"])}
                | {"height": int(image["height"]), "width": int(image["width"])}
                for image in content["images"]
                if int(image["id"]) in by_image
            ]
        except (KeyError, TypeError, ValueError) as error:
            problem = f"{type(error).__name__}: {error}"
            raise ValueError(f"annotations {self.annotations_file} are malformed ({problem})") from None
        self._annotations = by_image
        self._index_of = index_of
        if not self._images:
            raise ValueError(f"annotations {self.annotations_file} annotate no image")

    def __len__(self) -> int:
        return len(self._images)

    def image_path(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self.images_dir / self._images[index]["file_name"]

    def _check_file(self, index: int) -> None:
        path = self.image_path(index)
        if not path.is_file():
            raise ValueError(f"image not found: {path} (named by {self.annotations_file})")

    def _load(self, index: int) -> Tensor:
        """The decoded image ``(3, H, W)`` uint8, checked against the size the JSON gives it."""
        self._check_file(index)
        image = load_rgb(self.image_path(index))
        record = self._images[index]
        if tuple(image.shape[-2:]) != (record["height"], record["width"]):
            raise ValueError(
                f"image {self.image_path(index)} is {image.shape[-1]}x{image.shape[-2]} pixels, but "
                f"{self.annotations_file} says {record['width']}x{record['height']}"
            )
        return image

    def class_masks(self, index: int) -> Tensor:
        """The ``(C, H, W)`` bool masks of sample ``index`` at the image's own size (the union per class)."""
        record = self._images[index]
        height, width = record["height"], record["width"]
        masks = torch.zeros(len(self.classes), height, width, dtype=torch.bool)
        for annotation in self._annotations[record["id"]]:
            where = f"{self.annotations_file}, annotation {annotation.get('id')} of {record['file_name']}"
            mask = _annotation_mask(annotation.get("segmentation"), height, width, where)
            masks[self._index_of[int(annotation["category_id"])]] |= mask
        return masks

    def verify(self, indices: Iterable[int] | None = None) -> None:
        """Decode the image and the masks of each sample in ``indices`` (default: all).

        Raises:
            ValueError: an image that is not there or cannot be decoded, one whose size differs from the JSON's, or a
                segmentation that cannot be decoded; the message names the file.
        """
        chosen = list(range(len(self)) if indices is None else indices)
        for index in chosen:  # every file first: a missing one is the commonest mistake, named before any decoding
            self._check_file(index)
        for index in chosen:
            self._load(index)
            self.class_masks(index)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = prepare_image(self._load(index), self.size, self.normalization)
        masks = fit_mask(self.class_masks(index), self.size)
        return image, masks.flatten(1).any(dim=1).float(), masks
