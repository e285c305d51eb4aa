"""Tiny PASCAL VOC- and COCO-format folders built on the fly, with the exact masks they were written from.

VOC: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs, VOC's colour map; each object a
rectangle of its class value ringed by a one-pixel void border of 255) and ``ImageSets/Segmentation/<split>.txt``.
COCO: PNG images and an instances JSON with non-contiguous category ids whose annotations use a polygon, an
uncompressed RLE (a crowd) and a compressed RLE string, encoded here from COCO's description of the format.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import write_jpeg, write_png

__all__ = ["CocoFixture", "VocFixture", "encode_rle_string", "make_coco", "make_voc", "palette_png", "rle_of"]


def _voc_palette() -> list[int]:
    """VOC's colour map: class value ``v``'s colour from the bits of ``v`` (devkit's ``VOClabelcolormap``)."""
    palette = []
    for value in range(256):
        red = green = blue = 0
        code = value
        for shift in range(7, -1, -1):
            red |= (code & 1) << shift
            green |= ((code >> 1) & 1) << shift
            blue |= ((code >> 2) & 1) << shift
            code >>= 3
        palette += [red, green, blue]
    return palette


def palette_png(values: Tensor) -> bytes:
    """A palette ("P" mode) PNG whose pixel indices are ``values`` ``(H, W)`` uint8."""
    height, width = values.shape
    image = Image.frombytes("P", (width, height), bytes(values.to(torch.uint8).flatten().tolist()))
    image.putpalette(_voc_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image(height: int, width: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(3, height, width, generator=generator) * 255).to(torch.uint8)


@dataclass
class VocFixture:
    """A VOC devkit folder and, per id, the PNG values written (``(H, W)`` uint8)."""

    root: Path
    ids: list[str]
    values: dict[str, Tensor]


#: Each image: ``(height, width, [(class value, top, left, bottom, right), ...])``, rectangles half-open.
VOC_LAYOUT: tuple[tuple[int, int, list[tuple[int, int, int, int, int]]], ...] = (
    (20, 24, [(1, 2, 2, 8, 9), (15, 10, 12, 18, 22)]),  # aeroplane, person
    (20, 24, [(12, 3, 4, 16, 14)]),  # dog
    (18, 26, [(7, 2, 3, 9, 10), (7, 11, 14, 16, 22), (20, 1, 23, 7, 26)]),  # car twice, tvmonitor at the right edge
)


def make_voc(root: Path, split: str = "test", layout: tuple = VOC_LAYOUT) -> VocFixture:
    """Write a VOC2007 devkit with one image per entry of ``layout`` (ids ``000001``, ...) under ``root``."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids, values = [], {}
    for number, (height, width, objects) in enumerate(layout, start=1):
        name = f"{number:06d}"
        mask = torch.zeros(height, width, dtype=torch.uint8)
        for value, top, left, bottom, right in objects:
            mask[max(top - 1, 0) : bottom + 1, max(left - 1, 0) : right + 1] = 255  # the void border
            mask[top:bottom, left:right] = value
        write_jpeg(_image(height, width, number), str(root / "JPEGImages" / f"{name}.jpg"), quality=95)
        (root / "SegmentationClass" / f"{name}.png").write_bytes(palette_png(mask))
        ids.append(name)
        values[name] = mask
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{name}\n" for name in ids))
    return VocFixture(root, ids, values)


def rle_of(mask: Tensor) -> list[int]:
    """The uncompressed COCO RLE counts of a ``(H, W)`` bool mask: runs of 0s and 1s, column-major, 0s first."""
    flat = mask.t().flatten().tolist()
    counts, current, run = [], False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def encode_rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string of ``counts``: from the third count on, the difference from the count two
    before; each number in 5-bit groups, least significant first, +48, 0x20 on all groups but the last."""
    text = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = not ((value == 0 and not group & 0x10) or (value == -1 and group & 0x10))
            text.append(chr(group + (0x20 if more else 0) + 48))
    return "".join(text)


@dataclass
class CocoFixture:
    """A COCO folder, its JSON, the contiguous classes and, per file name, the exact per-class masks ``(C, H, W)``."""

    images: Path
    annotations: Path
    classes: list[str]
    masks: dict[str, Tensor]


def make_coco(root: Path) -> CocoFixture:
    """Three annotated 16x20 PNG images and one without annotations; categories with ids 1, 3 and 7.

    ``a.png``: a "cat" (id 3) polygon, an axis-aligned rectangle with integer corners (exact under either
    rasterization), and a "dog" (id 7) crowd as an uncompressed RLE overlapping it. ``b.png``: a "person" (id 1)
    compressed RLE and a second, disjoint person polygon (the union). ``c.png``: a "cat" triangle. ``empty.png`` has
    no annotation (not a sample).
    """
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    height, width = 16, 20
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)

    def box(top: int, left: int, bottom: int, right: int) -> Tensor:
        return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)

    crowd = box(5, 8, 12, 16) & ~box(7, 10, 9, 12)  # a hole in the middle
    person_rle = box(1, 1, 6, 4) | box(3, 3, 10, 6)
    triangle = [2.0, 2.0, 14.0, 2.0, 2.0, 14.0]
    centres_y, centres_x = rows + 0.5, cols + 0.5
    triangle_mask = (centres_x >= 2) & (centres_y >= 2) & (centres_x + centres_y < 16)  # below the hypotenuse
    annotations: list[tuple[int, int, dict[str, object]]] = [
        (1, 3, {"segmentation": [[2, 3, 9, 3, 9, 10, 2, 10]], "iscrowd": 0}),
        (1, 7, {"segmentation": {"counts": rle_of(crowd), "size": [height, width]}, "iscrowd": 1}),
        (2, 1, {"segmentation": {"counts": encode_rle_string(rle_of(person_rle)), "size": [height, width]}}),
        (2, 1, {"segmentation": [[12, 12, 18, 12, 18, 15, 12, 15]], "iscrowd": 0}),
        (3, 3, {"segmentation": [triangle], "iscrowd": 0}),
    ]
    files = {1: "a.png", 2: "b.png", 3: "c.png", 4: "empty.png"}
    for image_id, name in files.items():
        write_png(_image(height, width, image_id), str(images / name))
    masks = {name: torch.zeros(3, height, width, dtype=torch.bool) for name in files.values()}
    masks["a.png"][1] = box(3, 2, 10, 9)
    masks["a.png"][2] = crowd
    masks["b.png"][0] = person_rle | box(12, 12, 15, 18)
    masks["c.png"][1] = triangle_mask
    content = {
        "images": [
            {"id": image_id, "file_name": name, "height": height, "width": width} for image_id, name in files.items()
        ],
        "annotations": [
            {"id": number, "image_id": image_id, "category_id": category, "bbox": [0, 0, 1, 1], **extra}
            for number, (image_id, category, extra) in enumerate(annotations, start=1)
        ],
        "categories": categories,
    }
    path = root / "instances.json"
    path.write_text(json.dumps(content))
    return CocoFixture(images, path, ["person", "cat", "dog"], masks)
