"""Real photographs that ship inside installed packages, each with a human-chosen ImageNet label.

scikit-image and scikit-learn (the ``pretrained`` extra) and matplotlib (a dependency) carry a few sample
photographs in their wheels, so an ImageNet classifier can be evaluated on real images with no download.
Each photo that shows something ImageNet-1k has a class for is listed in :data:`PHOTOS` with that class,
chosen by looking at the photo, not by asking a model. Left out, for want of a sensible class: scikit-image's
``astronaut`` (no astronaut or space-suit class), ``horse`` (a black silhouette), ``coins``,
``hubble_deep_field``, ``retina``, ``clock_motion`` (synthetically blurred) and ``motorcycle_right`` (the
stereo twin of ``motorcycle_left``); scikit-learn's ``flower`` (a dahlia, which ImageNet lacks).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from evet_lightning import imagenet

__all__ = ["PHOTOS", "Photo", "SamplePhotos", "load_photo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Photo:
    """One bundled photograph.

    Args:
        name: short identifier.
        package: the importable package that ships the file.
        path: the file's path inside that package's directory.
        category: the ImageNet-1k class name (an entry of ``IMAGENET_CATEGORIES``) of what the photo shows.
        description: what the photo shows, and why ``category`` fits.
    """

    name: str
    package: str
    path: str
    category: str
    description: str

    @property
    def label(self) -> int:
        """Index of :attr:`category` in ``IMAGENET_CATEGORIES``."""
        return imagenet.IMAGENET_CATEGORIES.index(self.category)


#: The photographs, in dataset order.
PHOTOS: tuple[Photo, ...] = (
    Photo("chelsea", "skimage", "data/chelsea.png", "tabby", "Chelsea the cat, a short-haired tabby"),
    Photo("coffee", "skimage", "data/coffee.png", "espresso", "a cup of espresso on a saucer"),
    Photo(
        "rocket",
        "skimage",
        "data/rocket.jpg",
        "missile",
        "a Falcon 9 rocket on its launch pad; ImageNet's rocket class is 'missile' (a rocket with a warhead)",
    ),
    Photo(
        "motorcycle",
        "skimage",
        "data/motorcycle_left.png",
        "moped",
        "a motorcycle in a workshop; ImageNet has no 'motorcycle', and 'moped' is the motorbike class",
    ),
    Photo(
        "cameraman", "skimage", "data/camera.png", "tripod", "a photographer behind a camera on a tripod (greyscale)"
    ),
    Photo(
        "china",
        "sklearn",
        "datasets/images/china.jpg",
        "palace",
        "the Tower of Buddhist Incense in Beijing's Summer Palace",
    ),
    Photo(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "military uniform",
        "Rear Admiral Grace Hopper in US Navy uniform",
    ),
)


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it; ``None`` when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _photo_file(photo: Photo) -> Path | None:
    directory = _package_dir(photo.package)
    if directory is None or not (directory / photo.path).is_file():
        return None
    return directory / photo.path


def load_photo(path: Path, size: int = imagenet.LITE0_INPUT_SIZE) -> Tensor:
    """Decode an image file as RGB, resize its shorter side to ``size * 8 / 7`` and crop the centre square.

    This is the usual ImageNet evaluation crop (256 then 224 for ``size=224``); greyscale files are repeated
    over the three channels.

    Returns:
        ``(3, size, size)`` float32 in ``[0, 1]``.
    """
    image = decode_image(str(path), mode=ImageReadMode.RGB)
    image = TF.to_dtype(image, torch.float32, scale=True)
    image = TF.resize(image, [round(size * 8 / 7)], antialias=True)
    return TF.center_crop(image, [size, size]).clamp_(0.0, 1.0)


class SamplePhotos(Dataset[tuple[Tensor, Tensor]]):
    """The :data:`PHOTOS` whose packages are installed, as ImageNet-ready tensors with their labels.

    Photos are decoded and cropped once, when the dataset is built (seven photos, about 4 MB); items are
    therefore identical on every access. A photo whose package is missing is skipped with a warning.

    Args:
        size: side of the square crop (the classifier's input size).
        normalize: apply ``(image - mean) / std`` with EfficientNet-Lite0's statistics; ``False`` keeps
            ``[0, 1]``. :attr:`normalization` says which, in the form ``EVET(normalization=...)`` takes.

    Items: ``(image, label)``: ``(3, size, size)`` float32 and an int64 scalar, the ImageNet-1k class index.

    Raises:
        MissingExtraError: none of the photos' packages is installed.

    Example:
        >>> photos = SamplePhotos()
        >>> image, label = photos[len(photos) - 1]  # Grace Hopper, shipped by matplotlib
        >>> image.shape, image.dtype, photos.class_names[-1]
        (torch.Size([3, 224, 224]), torch.float32, 'military uniform')
    """

    def __init__(self, size: int = imagenet.LITE0_INPUT_SIZE, normalize: bool = True) -> None:
        if size < 1:
            raise ValueError(f"Expected `size` to be a positive integer, but got {size}")
        found = [(photo, _photo_file(photo)) for photo in PHOTOS]
        missing = [photo.name for photo, path in found if path is None]
        if len(missing) == len(PHOTOS):
            raise imagenet.MissingExtraError(f"The sample photos need the optional extra: {imagenet.EXTRA_HINT}")
        if missing:
            log.warning("SamplePhotos: skipping %s (not installed); install them with %s", missing, imagenet.EXTRA_HINT)
        available = [(photo, path) for photo, path in found if path is not None]
        self.photos: tuple[Photo, ...] = tuple(photo for photo, _ in available)
        self.normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = (
            imagenet.LITE0_NORMALIZATION if normalize else None
        )
        images = torch.stack([load_photo(path, size) for _, path in available])
        if normalize:
            images = TF.normalize(images, list(imagenet.LITE0_MEAN), list(imagenet.LITE0_STD))
        self.images: Tensor = images
        self.labels: Tensor = torch.tensor([photo.label for photo in self.photos], dtype=torch.int64)

    @property
    def names(self) -> list[str]:
        """Photo names, in item order."""
        return [photo.name for photo in self.photos]

    @property
    def class_names(self) -> list[str]:
        """ImageNet class name of each item's label, in item order."""
        return [photo.category for photo in self.photos]

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]
