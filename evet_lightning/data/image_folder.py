"""An image folder (``root/<class>/<image>``) as evaluation samples, with optional object masks.

Files are decoded lazily, item by item, so a corrupt one would only show up when a data loader reaches it, in
the middle of a long run. :meth:`ImageFolderWithMasks.verify` decodes the files of the samples that will be
used before the run starts, and raises a ``ValueError`` naming the first file that fails. Decoding a few
hundred images takes seconds; explaining one with EVET takes tens of forward and backward passes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from evet_lightning.functional.perturbation import Normalization

__all__ = ["ImageFolderWithMasks"]


class ImageFolderWithMasks(Dataset[tuple[Tensor, ...]]):
    """``ImageFolder`` samples as ``(image, label)`` or ``(image, label, mask)``, resized and centre-cropped.

    Each image is decoded as RGB, its shorter side resized to ``size`` (bilinear, antialiased), the centre
    ``size x size`` square cropped, and normalized with ``normalization`` when given. Labels are the indices of
    the sorted class folders (``classes``). A mask is the PNG at the image's relative path under ``masks``, with
    the suffix ``.png`` (nonzero in any channel = object), resized and cropped like its image (nearest).

    Args:
        root: the folder of class folders.
        masks: the folder of masks, or ``None``.
        size: side of the square images.
        normalization: ``(mean, std)`` per channel, or ``None`` for ``[0, 1]`` pixels.

    Items: ``(3, size, size)`` float32, an int64 scalar label, and with masks a ``(size, size)`` bool mask.

    Raises:
        ValueError: no class folder or no image under ``root``, or an image without its mask.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        masks: str | os.PathLike[str] | None,
        size: int,
        normalization: Normalization,
    ) -> None:
        from torchvision.datasets import ImageFolder

        self.root = Path(root)
        try:
            folder = ImageFolder(os.fspath(self.root))
        except (FileNotFoundError, RuntimeError) as error:  # no class folders / no images
            raise ValueError(" ".join(str(error).split())) from None
        self.samples: list[tuple[str, int]] = list(folder.samples)
        self.classes: list[str] = list(folder.classes)
        self.size = size
        self.normalization = normalization
        self.masks: list[Path] | None = None
        if masks is not None:
            paths = [Path(masks) / Path(path).relative_to(self.root).with_suffix(".png") for path, _ in self.samples]
            missing = [path for path in paths if not path.is_file()]
            if missing:
                raise ValueError(f"no mask for {len(missing)} image(s) in {masks}, e.g. {missing[0]}")
            self.masks = paths

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in item order, without decoding anything."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def verify(self, indices: Iterable[int] | None = None) -> None:
        """Decode the image (and the mask) of each sample in ``indices`` (default: all).

        Raises:
            ValueError: a file that cannot be decoded, or a mask whose size differs from its image's; the
                message names the file.
        """
        for index in range(len(self)) if indices is None else indices:
            path = self.samples[index][0]
            height, width = _decode(path, "image").shape[-2:]
            if self.masks is not None:
                mask = _decode(os.fspath(self.masks[index]), "mask")
                if tuple(mask.shape[-2:]) != (height, width):
                    raise ValueError(
                        f"mask {self.masks[index]} is {mask.shape[-1]}x{mask.shape[-2]} pixels, but its image "
                        f"{path} is {width}x{height}"
                    )

    def _fit(self, image: Tensor, interpolation: Any) -> Tensor:
        from torchvision.transforms.v2 import functional as tf

        image = tf.resize(image, [self.size], interpolation=interpolation, antialias=True)
        return tf.center_crop(image, [self.size, self.size])

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import InterpolationMode

        path, label = self.samples[index]
        image = decode_image(path, mode=ImageReadMode.RGB).float() / 255.0
        image = self._fit(image, InterpolationMode.BILINEAR).clamp(0.0, 1.0)
        if self.normalization is not None:
            mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in self.normalization)
            image = (image - mean) / std
        if self.masks is None:
            return image, torch.tensor(label)
        mask = decode_image(os.fspath(self.masks[index]), mode=ImageReadMode.UNCHANGED)
        mask = self._fit((mask != 0).any(dim=0, keepdim=True).to(torch.uint8), InterpolationMode.NEAREST)
        return image, torch.tensor(label), mask[0] != 0


def _decode(path: str, what: str) -> Tensor:
    """The decoded file ``(C, H, W)``; a ``ValueError`` naming the file when it is not a readable image."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(path, mode=ImageReadMode.UNCHANGED)
    except Exception as error:  # torchvision raises RuntimeError for corrupt data, others for odd formats
        reason = " ".join(str(error).split()) or type(error).__name__
        reason = re.sub(r"^[^,]+, \S+:\d+, ", "", reason)  # torchvision's "function, source.cpp:line, " prefix
        raise ValueError(f"cannot decode {what} {path}: {reason}") from None
