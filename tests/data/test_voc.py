"""VOCSegmentation on a devkit built on the fly: palette PNGs read as class indices, void kept, errors name the file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg, read_file, write_png

from evet_lightning.data import BACKGROUND, IGNORE_INDEX, VOC_CLASSES, VOCSegmentation, sample_indices
from evet_lightning.data.voc import voc_index_mask
from tests._helpers.disk_datasets import make_voc, palette_png


def _expected_mask(values: torch.Tensor) -> torch.Tensor:
    """The documented rule written out: 0 -> -1, v in 1..20 -> v - 1, 255 stays."""
    expected = values.long() - 1
    expected[values == 255] = 255
    return expected


def test_items_at_native_size_are_exact(tmp_path: Path) -> None:
    fixture = make_voc(tmp_path / "VOC2007")
    dataset = VOCSegmentation(tmp_path, split="test", size=None)  # found under ROOT/VOC2007
    assert len(dataset) == 3 and dataset.classes == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    for index, name in enumerate(fixture.ids):
        image, labels, mask = dataset[index]
        values = fixture.values[name]
        assert torch.equal(mask, _expected_mask(values))
        jpeg = decode_jpeg(read_file(str(dataset.image_path(index))))
        assert torch.equal(image, jpeg.float() / 255.0)
        classes = sorted({value - 1 for value in values.unique().tolist()} - {-1, 254})
        assert labels.nonzero().flatten().tolist() == classes
    assert dataset[0][1].nonzero().flatten().tolist() == [0, 14]  # aeroplane, person
    assert dataset[2][1].nonzero().flatten().tolist() == [6, 19]  # car (two of them), tvmonitor
    assert int((dataset[0][2] == IGNORE_INDEX).sum()) > 0 and int((dataset[0][2] == BACKGROUND).sum()) > 0


def test_resize_and_crop_keep_values_and_labels_follow_the_crop(tmp_path: Path) -> None:
    fixture = make_voc(tmp_path)
    normalization = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    dataset = VOCSegmentation(tmp_path, size=10, normalization=normalization)
    raw = VOCSegmentation(tmp_path, size=None)
    for index, name in enumerate(fixture.ids):
        image, labels, mask = dataset[index]
        assert image.shape == (3, 10, 10) and mask.shape == (10, 10)
        assert set(mask.unique().tolist()) <= set(_expected_mask(fixture.values[name]).unique().tolist())
        present = sorted(set(mask.unique().tolist()) - {BACKGROUND, IGNORE_INDEX})
        assert labels.nonzero().flatten().tolist() == present
        assert float(image.min()) >= -2.0 and float(image.max()) <= 2.0  # (x - 0.5) / 0.25 of x in [0, 1]
    # Image 3 (18x26) is resized to 10x14 and its centre 10x10 kept: the tvmonitor at columns 23-25 is cut out.
    assert raw[2][1][19] == 1.0 and dataset[2][1][19] == 0.0


def test_palette_indices_not_colours(tmp_path: Path) -> None:
    values = torch.tensor([[0, 1, 255], [20, 15, 0]], dtype=torch.uint8)
    path = tmp_path / "m.png"
    path.write_bytes(palette_png(values))
    from torchvision.io import ImageReadMode, decode_image

    decoded = decode_image(str(path), mode=ImageReadMode.UNCHANGED)
    assert decoded.shape == (1, 2, 3)
    assert voc_index_mask(decoded).tolist() == [[-1, 0, 255], [19, 14, -1]]


def test_missing_split_image_or_mask_is_an_error_naming_the_file(tmp_path: Path) -> None:
    make_voc(tmp_path)
    with pytest.raises(ValueError, match=r"split file not found: .*ImageSets/Segmentation/val\.txt"):
        VOCSegmentation(tmp_path, split="val")
    with pytest.raises(ValueError, match="`split`"):
        VOCSegmentation(tmp_path, split="../test")
    (tmp_path / "SegmentationClass" / "000002.png").unlink()
    with pytest.raises(ValueError, match=r"mask not found: .*000002\.png \(listed in .*test\.txt\)"):
        VOCSegmentation(tmp_path)
    (tmp_path / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(ValueError, match=r"image not found: .*JPEGImages/000001\.jpg"):
        VOCSegmentation(tmp_path)


def test_bad_masks_are_errors_naming_the_file(tmp_path: Path) -> None:
    fixture = make_voc(tmp_path)
    mask_path = tmp_path / "SegmentationClass" / "000002.png"
    mask_path.write_bytes(palette_png(torch.zeros(20, 23, dtype=torch.uint8)))
    dataset = VOCSegmentation(tmp_path)
    dataset.verify([0, 2])  # the others are fine
    with pytest.raises(ValueError, match=r"mask .*000002\.png is 23x20 pixels, but its image .*000002\.jpg is 24x20"):
        dataset.verify()
    with pytest.raises(ValueError, match=r"000002\.png is 23x20"):
        dataset[1]
    mask_path.write_bytes(palette_png(torch.full((20, 24), 37, dtype=torch.uint8)))
    with pytest.raises(ValueError, match=r"mask .*000002\.png holds the value 37"):
        dataset.verify([1])
    write_png(torch.zeros(3, 20, 24, dtype=torch.uint8), str(mask_path))
    with pytest.raises(ValueError, match=r"mask .*000002\.png has 3 channels"):
        dataset.verify([1])
    write_png(torch.zeros(1, 20, 24, dtype=torch.uint8), str(mask_path))  # greyscale is read like a palette
    assert dataset[1][2].unique().tolist() == [BACKGROUND]
    buffer = io.BytesIO()
    Image.new("I;16", (24, 20)).save(buffer, format="PNG")  # a 16-bit greyscale PNG
    mask_path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"000002\.png has torch.uint16 values"):
        dataset.verify([1])
    assert fixture.ids == dataset.ids


def test_sample_indices_reproducible_and_nested() -> None:
    first = sample_indices(1000, 10, seed=7)
    assert first == sample_indices(1000, 10, seed=7) and first == sorted(first) and len(set(first)) == 10
    assert first != sample_indices(1000, 10, seed=8)
    expected = sorted(torch.randperm(1000, generator=torch.Generator().manual_seed(7))[:10].tolist())
    assert first == expected
    assert set(first) <= set(sample_indices(1000, 50, seed=7))  # a larger draw keeps the smaller one's images
    assert sample_indices(5, 5, seed=0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="`num_samples`"):
        sample_indices(5, 0, seed=0)
