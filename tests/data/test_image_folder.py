"""``ImageFolderWithMasks``: items, masks cropped like their images, and ``verify`` naming the file that fails."""

from __future__ import annotations

import os
import re
import signal
import struct
import time
import zlib
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from evet_lightning.data import ImageFolderWithMasks


def make_folder(root: Path, masks: bool = True) -> tuple[Path, Path]:
    """Two classes (``cat``, ``dog``) of two 40 x 60 images; masks mark columns 20-39 (the central third)."""
    for label in ("cat", "dog"):
        for index in range(2):
            (root / "images" / label).mkdir(parents=True, exist_ok=True)
            write_png(
                torch.full((3, 40, 60), 50 * index, dtype=torch.uint8), str(root / "images" / label / f"{index}.png")
            )
            if masks:
                mask = torch.zeros(1, 40, 60, dtype=torch.uint8)
                mask[:, :, 20:40] = 255
                (root / "masks" / label).mkdir(parents=True, exist_ok=True)
                write_png(mask, str(root / "masks" / label / f"{index}.png"))
    return root / "images", root / "masks"


def test_items_labels_and_centre_cropped_masks(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    dataset = ImageFolderWithMasks(images, masks, size=20, normalization=((0.5,) * 3, (0.5,) * 3))
    assert len(dataset) == 4 and dataset.classes == ["cat", "dog"] and dataset.targets == [0, 0, 1, 1]
    image, label, mask = dataset[3]
    assert image.shape == (3, 20, 20) and image.dtype == torch.float32 and int(label) == 1
    assert torch.allclose(image, torch.full_like(image, (50 / 255 - 0.5) / 0.5), atol=1e-5)
    # 40 x 60 -> 20 x 30, centre crop of columns 5-24: the mask's columns 10-19 of 30 are columns 5-14 of 20
    assert mask.dtype == torch.bool and mask.shape == (20, 20)
    assert mask[:, 5:15].all() and not mask[:, :5].any() and not mask[:, 15:].any()
    dataset.verify()  # every file decodes


def test_without_masks_items_are_pairs(tmp_path: Path) -> None:
    images, _ = make_folder(tmp_path, masks=False)
    assert len(ImageFolderWithMasks(images, None, size=16, normalization=None)[0]) == 2


@pytest.mark.parametrize("which", ["image", "mask"])
def test_verify_names_a_corrupt_file(which: str, tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    broken = (images if which == "image" else masks) / "dog" / "1.png"
    broken.write_bytes(broken.read_bytes()[:60])
    dataset = ImageFolderWithMasks(images, masks, size=16, normalization=None)
    dataset.verify(range(3))  # the broken sample (index 3) is not among these
    with pytest.raises(ValueError, match=re.escape(f"cannot decode {which} {broken}")):
        dataset.verify()


def test_verify_names_a_text_file_with_an_image_suffix(tmp_path: Path) -> None:
    images, _ = make_folder(tmp_path, masks=False)
    (images / "cat" / "readme.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match=r"readme\.jpg"):
        ImageFolderWithMasks(images, None, size=16, normalization=None).verify()


def test_verify_rejects_a_mask_of_another_size(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    write_png(torch.zeros(1, 30, 30, dtype=torch.uint8), str(masks / "cat" / "0.png"))
    with pytest.raises(ValueError, match=r"30x30 pixels, but its image .* is 60x40"):
        ImageFolderWithMasks(images, masks, size=16, normalization=None).verify()


def test_missing_masks_and_empty_folders_are_value_errors(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path)
    (masks / "dog" / "0.png").unlink()
    with pytest.raises(ValueError, match="no mask for 1 image"):
        ImageFolderWithMasks(images, masks, size=16, normalization=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder"):
        ImageFolderWithMasks(tmp_path / "empty", None, size=16, normalization=None)


# --------------------------------------------------------------------------------------------- damaged files


def _chunk(data: bytes, kind: bytes) -> tuple[int, int]:
    """``(start of the chunk's data, its length)`` of the first chunk ``kind`` of the PNG ``data``."""
    position = 8
    while True:
        length, name = struct.unpack(">I4s", data[position : position + 8])
        if name == kind:
            return position + 8, length
        position += 12 + length


def damage(path: Path, how: str) -> None:
    """Damage the PNG at ``path``: flip image-data bytes (``idat_crc``), also fix that chunk's CRC so that only
    the compressed stream is wrong (``idat_inflate``), or break the header's CRC (``ihdr_crc``)."""
    data = bytearray(path.read_bytes())
    kind = b"IHDR" if how == "ihdr_crc" else b"IDAT"
    start, length = _chunk(bytes(data), kind)
    if how == "ihdr_crc":
        data[start + length : start + length + 4] = b"\0\0\0\0"
    else:
        for index in range(start + 20, start + 40):
            data[index] ^= 0xFF
        if how == "idat_inflate":
            crc = zlib.crc32(bytes(data[start - 4 : start + length]))
            data[start + length : start + length + 4] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))


def noisy_png(path: Path) -> Path:
    """A 40 x 60 RGB PNG of noise (an image-data chunk long enough to damage in its middle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = (torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    write_png(image, str(path))
    return path


def _verify_in_a_child(folder: Path) -> tuple[int, str]:
    """``verify()`` of ``folder`` in a forked child: ``(its exit status, the error it reported)``, so that a crash
    (the segmentation fault this guards against) fails the test instead of ending the test run."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the error and leave at once, without pytest's clean-up
        os.close(read_end)
        message = "no error"
        try:
            ImageFolderWithMasks(folder, None, size=16, normalization=None).verify()
        except ValueError as error:
            message = str(error)
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if waited == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return waited[1], pipe.read().decode()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("idat_crc", "the CRC of its IDAT chunk does not match (the file is damaged)"),
        ("idat_inflate", "its image data does not inflate (Error -3 while decompressing data: incorrect data check;"),
    ],
)
def test_damaged_image_data_is_an_error_not_a_crash(how: str, reason: str, tmp_path: Path) -> None:
    """torchvision's libpng decoder dies of a segmentation fault on damaged image data; ``verify`` must reject
    the file before the decoder sees it."""
    path = noisy_png(tmp_path / "cat" / "0.png")
    damage(path, how)
    status, message = _verify_in_a_child(tmp_path)
    assert status == 0, f"the child died: wait status {status}"
    assert message.startswith(f"cannot decode image {path}: {reason}"), message


@pytest.mark.parametrize("how", ["ihdr_crc", "truncated", "jpeg_header"])
def test_a_damaged_file_prints_nothing_but_the_error(
    how: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = noisy_png(tmp_path / "cat" / "0.png")
    if how == "ihdr_crc":
        damage(path, how)
        reason = "the CRC of its IHDR chunk does not match"
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:60])
        reason = "its IDAT chunk is cut off (the file is truncated)"
    else:  # libjpeg prints "Corrupt JPEG data: ..." on the way to its error
        from torchvision.io import decode_image, encode_jpeg

        jpeg = bytearray(bytes(encode_jpeg(decode_image(str(path))).untyped_storage()))
        jpeg[20:22] = b"\xff\xff"
        path.unlink()
        path = path.with_suffix(".jpg")
        path.write_bytes(bytes(jpeg))
        reason = "Corrupt JPEG data"
    with pytest.raises(ValueError, match=re.escape(f"cannot decode image {path}: ")) as raised:
        ImageFolderWithMasks(tmp_path, None, size=16, normalization=None).verify()
    assert reason in str(raised.value)
    assert capfd.readouterr().err == ""


def _gradient_png_16bit(path: Path, height: int = 8, width: int = 64) -> None:
    """A 16-bit grayscale PNG, black (0) to white (65535) from left to right (PIL writes 16 bits as mode I;16)."""
    from PIL import Image

    row = torch.linspace(0, 65535, width).round().to(torch.int32)
    image = Image.new("I;16", (width, height))
    image.putdata([int(value) for value in row.repeat(height)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_a_16_bit_png_is_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    """Issue 21: uint16 pixels divided by 255 and clamped came out almost white (mean 0.998)."""
    _gradient_png_16bit(tmp_path / "images" / "gray" / "gradient.png")
    dataset = ImageFolderWithMasks(tmp_path / "images", None, size=8, normalization=None)
    dataset.verify()
    image, _ = dataset[0]
    assert image.shape == (3, 8, 8)
    assert float(image.mean()) == pytest.approx(0.5, abs=0.01)
    assert float((image >= 1.0).float().mean()) < 0.2  # a gradient, not a white image


def test_pixels_the_decoder_cannot_give_as_8_or_16_bits_are_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, _ = make_folder(tmp_path, masks=False)
    import torchvision.io

    decode = torchvision.io.decode_image
    monkeypatch.setattr(torchvision.io, "decode_image", lambda *args, **kwargs: decode(*args, **kwargs).float())
    dataset = ImageFolderWithMasks(images, None, size=16, normalization=None)
    first = re.escape(str(images / "cat" / "0.png"))
    with pytest.raises(
        ValueError, match=f"cannot read image {first} as \\[0, 1\\] pixels: it decodes to torch.float32"
    ):
        dataset.verify()
    with pytest.raises(ValueError, match=first):
        dataset[0]
