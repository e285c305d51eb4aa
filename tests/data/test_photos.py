"""SamplePhotos: real photographs from installed packages, cropped for ImageNet, with human-chosen labels."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from evet_lightning.data import PHOTOS, SamplePhotos
from evet_lightning.data import photos as photos_module
from evet_lightning.data.photos import load_photo
from evet_lightning.models import IMAGENET_CATEGORIES, LITE0_NORMALIZATION, MissingExtraError

needs_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("skimage", "sklearn")),
    reason="needs evet-lightning[pretrained]",
)


@pytest.fixture(scope="module")
def raw() -> SamplePhotos:
    return SamplePhotos(normalize=False)


def test_labels_are_the_chosen_imagenet_classes() -> None:
    chosen = {photo.name: IMAGENET_CATEGORIES[photo.label] for photo in PHOTOS}
    assert chosen == {
        "chelsea": "tabby",
        "coffee": "espresso",
        "rocket": "missile",
        "motorcycle": "moped",
        "cameraman": "tripod",
        "china": "palace",
        "grace_hopper": "military uniform",
    }


@needs_extra
def test_items_shapes_dtypes_and_labels(raw: SamplePhotos) -> None:
    assert len(raw) == len(PHOTOS) == 7
    assert raw.names == [photo.name for photo in PHOTOS]
    for index, (image, label) in enumerate(raw):
        assert image.shape == (3, 224, 224)
        assert image.dtype == torch.float32
        assert label.dtype == torch.int64 and label.ndim == 0
        assert IMAGENET_CATEGORIES[int(label)] == raw.class_names[index]
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert float(image.std()) > 0.05  # a photograph, not a blank
    cameraman = raw.images[raw.names.index("cameraman")]
    assert torch.equal(cameraman[0], cameraman[1]) and torch.equal(cameraman[1], cameraman[2])  # greyscale file


@needs_extra
def test_normalized_is_raw_shifted_and_scaled(raw: SamplePhotos) -> None:
    normalized = SamplePhotos()
    assert raw.normalization is None
    assert normalized.normalization == LITE0_NORMALIZATION
    mean, std = (torch.tensor(value).view(3, 1, 1) for value in LITE0_NORMALIZATION)
    torch.testing.assert_close(normalized.images, (raw.images - mean) / std)
    assert torch.equal(normalized.labels, raw.labels)


@needs_extra
def test_deterministic(raw: SamplePhotos) -> None:
    again = SamplePhotos(normalize=False)
    assert torch.equal(again.images, raw.images)
    assert torch.equal(raw[3][0], raw[3][0])


def test_size_option() -> None:
    small = SamplePhotos(size=64)
    assert small.images.shape[1:] == (3, 64, 64)
    with pytest.raises(ValueError, match="Expected `size` to be a positive integer, but got 0"):
        SamplePhotos(size=0)


def test_load_photo_resizes_the_short_side_and_crops_the_centre(tmp_path: Path) -> None:
    # 112 x 224, black in the left quarter: resized to 256 x 512, the centre 224 x 224 starts at column 144
    # (original column 63) and so is all white; a top-left crop would be half black.
    image = torch.full((1, 112, 224), 255, dtype=torch.uint8)
    image[:, :, :56] = 0
    path = tmp_path / "grey.png"
    write_png(image, str(path))
    crop = load_photo(path, size=224)
    assert crop.shape == (3, 224, 224)
    assert float(crop.min()) > 0.99
    assert load_photo(path, size=112)[:, :, 0].max() > 0.99  # size 112: shorter side 128, same centre crop


def test_missing_packages_skip_their_photos(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = photos_module._package_dir
    monkeypatch.setattr(photos_module, "_package_dir", lambda name: None if name != "matplotlib" else real(name))
    with caplog.at_level(logging.WARNING, logger=photos_module.__name__):
        only = SamplePhotos(size=32)
    assert only.names == ["grace_hopper"]
    assert "evet-lightning[pretrained]" in caplog.text and "chelsea" in caplog.text


def test_no_photos_at_all_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(photos_module, "_package_dir", lambda name: None)
    with pytest.raises(MissingExtraError, match=r"pip install 'evet-lightning\[pretrained\]'"):
        SamplePhotos()
