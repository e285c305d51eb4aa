"""An image folder (``root/<class>/<image>``) as evaluation samples, with optional object masks.

Files are decoded lazily, item by item, so a corrupt one would only show up when a data loader reaches it, in
the middle of a long run. :meth:`ImageFolderWithMasks.verify` decodes the files of the samples that will be
used before the run starts, and raises a ``ValueError`` naming the first file that fails. Decoding a few
hundred images takes seconds; explaining one with EVET takes tens of forward and backward passes.

A PNG's chunks (their CRCs) and its compressed image data are checked before the decoder sees it: torchvision's
libpng decoder crashes the process (a segmentation fault) on damaged image data, and prints ``libpng error:``
lines. What any native decoder prints to stderr while :meth:`~ImageFolderWithMasks.verify` decodes is caught:
added to the error of a file that fails, a one-line warning naming a file that decodes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from evet_lightning.functional.perturbation import Normalization

__all__ = ["ImageFolderWithMasks", "fit_mask", "fit_square", "load_rgb", "normalize", "prepare_image"]

log = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Bytes of decompressed PNG image data produced at a time while checking it (memory stays bounded).
_INFLATE_STEP = 1 << 20


class ImageFolderWithMasks(Dataset[tuple[Tensor, ...]]):
    """``ImageFolder`` samples as ``(image, label)`` or ``(image, label, mask)``, resized and centre-cropped.

    Each image is decoded as RGB and scaled to [0, 1] by its bit depth (8-bit by 255, 16-bit PNGs by 65535), its
    shorter side resized to ``size`` (bilinear, antialiased), the centre
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
            ValueError: a file that cannot be decoded, or whose pixels cannot be read as [0, 1] (a decoded type other
                than 8 or 16 bits), or a mask whose size differs from its image's; the message names the file.
        """
        for index in range(len(self)) if indices is None else indices:
            path = self.samples[index][0]
            image = _decode(path, "image")
            _unit_range(image, path)
            height, width = image.shape[-2:]
            if self.masks is not None:
                mask = _decode(os.fspath(self.masks[index]), "mask")
                if tuple(mask.shape[-2:]) != (height, width):
                    raise ValueError(
                        f"mask {self.masks[index]} is {mask.shape[-1]}x{mask.shape[-2]} pixels, but its image "
                        f"{path} is {width}x{height}"
                    )

    def _fit(self, image: Tensor, interpolation: Any) -> Tensor:
        return fit_square(image, self.size, interpolation)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import InterpolationMode

        path, label = self.samples[index]
        image = _unit_range(decode_image(path, mode=ImageReadMode.RGB), path)
        image = self._fit(image, InterpolationMode.BILINEAR).clamp(0.0, 1.0)
        image = normalize(image, self.normalization)
        if self.masks is None:
            return image, torch.tensor(label)
        mask = decode_image(os.fspath(self.masks[index]), mode=ImageReadMode.UNCHANGED)
        mask = self._fit((mask != 0).any(dim=0, keepdim=True).to(torch.uint8), InterpolationMode.NEAREST)
        return image, torch.tensor(label), mask[0] != 0


def fit_square(image: Tensor, size: int, interpolation: Any) -> Tensor:
    """``(C, H, W)`` with its shorter side resized to ``size`` (``interpolation``, antialiased), the centre
    ``size x size`` square cropped; an image whose shorter side is already ``size`` is only cropped."""
    from torchvision.transforms.v2 import functional as tf

    if min(image.shape[-2:]) != size:
        image = tf.resize(image, [size], interpolation=interpolation, antialias=True)
    return tf.center_crop(image, [size, size])


def normalize(image: Tensor, normalization: Normalization) -> Tensor:
    """``(image - mean) / std`` per channel of a ``(3, H, W)`` image, or the image itself for ``None``."""
    if normalization is None:
        return image
    mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in normalization)
    return (image - mean) / std


def load_rgb(path: str | os.PathLike[str]) -> Tensor:
    """The image file at ``path`` as ``(3, H, W)`` uint8 RGB (a greyscale file repeated, an alpha channel dropped).

    Raises:
        ValueError: a file that cannot be read or decoded, naming it.
    """
    image = _decode(os.fspath(path), "image")
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]


def prepare_image(image: Tensor, size: int | None, normalization: Normalization) -> Tensor:
    """``(3, H, W)`` uint8 -> float32 in [0, 1], shorter side resized to ``size`` (bilinear, antialiased) and the
    centre square cropped (``size=None``: as it is), then normalized with ``normalization``."""
    from torchvision.transforms.v2 import InterpolationMode

    pixels = image.float() / 255.0
    if size is not None:
        pixels = fit_square(pixels, size, InterpolationMode.BILINEAR).clamp(0.0, 1.0)
    return normalize(pixels, normalization)


def fit_mask(mask: Tensor, size: int | None) -> Tensor:
    """A ``(..., H, W)`` mask resized (nearest) and cropped like its image by :func:`prepare_image`."""
    from torchvision.transforms.v2 import InterpolationMode

    if size is None:
        return mask
    if mask.dtype == torch.bool:  # resizing takes uint8 or float
        return fit_square(mask.to(torch.uint8), size, InterpolationMode.NEAREST).bool()
    return fit_square(mask, size, InterpolationMode.NEAREST)


#: The largest value of each integer type the decoder returns: pixels are divided by it (decision 34).
_FULL_SCALE = {torch.uint8: 255.0, torch.uint16: 65535.0}


def _unit_range(image: Tensor, path: str) -> Tensor:
    """``image`` as float32 in [0, 1], by its bit depth; a ``ValueError`` naming the file for any other type."""
    scale = _FULL_SCALE.get(image.dtype)
    if scale is None:
        raise ValueError(
            f"cannot read image {path} as [0, 1] pixels: it decodes to {image.dtype}, not 8- or 16-bit integers; "
            "convert it to an 8- or 16-bit PNG or JPEG"
        )
    return image.float() / scale


def _decode(path: str, what: str) -> Tensor:
    """The decoded file ``(C, H, W)``; a ``ValueError`` naming the file when it is not a readable image.

    A PNG is checked first (:func:`_png_problem`); what the native decoder prints to stderr is caught (see the
    module docstring).
    """
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror or error}") from None
    problem = _png_problem(data) if data.startswith(_PNG_SIGNATURE) else None
    if problem is not None:
        raise ValueError(f"cannot decode {what} {path}: {problem}")
    printed: list[str] = []
    try:
        with _native_stderr(printed):
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except Exception as error:  # torchvision raises RuntimeError for corrupt data, others for odd formats
        reason = " ".join(str(error).split()) or type(error).__name__
        reason = re.sub(r"^[^,]+, \S+:\d+, ", "", reason)  # torchvision's "function, source.cpp:line, " prefix
        detail = " ".join(" ".join(printed).split())
        raise ValueError(f"cannot decode {what} {path}: {reason}" + (f" ({detail})" if detail else "")) from None
    detail = " ".join(" ".join(printed).split())
    if detail:
        log.warning("%s %s decodes, but its decoder says: %s", what, path, detail)
    return image


def _png_problem(data: bytes) -> str | None:
    """What is wrong with the PNG file ``data`` (signature included), or ``None``: a chunk that is cut off or whose
    CRC does not match, no ``IHDR`` first, no ``IDAT`` or ``IEND``, or image data that does not inflate."""
    position, chunks, ended = len(_PNG_SIGNATURE), 0, False
    inflate = zlib.decompressobj()
    while not ended and position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        name = kind.decode("latin-1")
        end = position + 12 + length
        if end > len(data):
            return f"its {name} chunk is cut off (the file is truncated)"
        body = data[position + 8 : end - 4]
        if zlib.crc32(kind + body) != int.from_bytes(data[end - 4 : end], "big"):
            return f"the CRC of its {name} chunk does not match (the file is damaged)"
        if chunks == 0 and kind != b"IHDR":
            return f"its first chunk is {name}, not IHDR"
        if kind == b"IDAT":
            try:
                inflate.decompress(body, _INFLATE_STEP)
                while inflate.unconsumed_tail:
                    inflate.decompress(inflate.unconsumed_tail, _INFLATE_STEP)
            except zlib.error as error:
                return f"its image data does not inflate ({error}; the file is damaged)"
        ended = kind == b"IEND"
        chunks += 1
        position = end
    if not ended:
        return "it has no IEND chunk (the file is truncated)"
    if not inflate.eof:
        return "its image data is missing or incomplete (the file is damaged)"
    return None


@contextlib.contextmanager
def _native_stderr(printed: list[str]) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 into ``printed`` for the duration (restored after)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to catch
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            printed.append(sink.read().decode(errors="replace"))
