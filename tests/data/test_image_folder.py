"""``ImageFolderWithMasks``: items, masks cropped like their images, and ``verify`` naming the file that fails."""

from __future__ import annotations

import re
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
