"""Load the samples ``evet-lightning evaluate --data`` names: synthetic shapes, the bundled photos, an image folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from evet_lightning.evaluation.errors import UsageError
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.functional.perturbation import Normalization

__all__ = ["DEFAULT_EVALUATION_SEED", "EvaluationData", "load_data"]

#: Seed of the synthetic evaluation set; the demo trains on seed 0 and validates on seed 1, so these images
#: are new to the model.
DEFAULT_EVALUATION_SEED = 2021


@dataclass
class EvaluationData:
    """The evaluation samples: items ``(image, label)`` or ``(image, label, mask)``.

    Args:
        dataset: the samples, already cut to the requested number.
        name: how the user named the data.
        has_masks: whether items carry object masks (Table 2).
        normalization: ``(mean, std)`` the images are normalized with (passed on to EVET's baseline).
        class_names: names of the labels, when known.
        max_label: the largest label among the samples, when known without decoding them (checked against
            the model's number of classes before any work).
    """

    dataset: Dataset[Any]
    name: str
    has_masks: bool
    normalization: Normalization = None
    class_names: list[str] | None = None
    max_label: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def load_data(
    spec: str,
    model: EvaluationModel,
    num_samples: int,
    *,
    masks: str | None = None,
    image_size: int | None = None,
    seed: int = DEFAULT_EVALUATION_SEED,
) -> EvaluationData:
    """The first ``num_samples`` samples of the data ``spec`` names.

    ``spec``: ``synthetic`` (:class:`~evet_lightning.data.SyntheticShapes` with exact object masks, drawn like the
    demo checkpoint's data when the model is one, from ``seed``), ``photos`` (the bundled photographs,
    :class:`~evet_lightning.data.photos.SamplePhotos`; needs the ``pretrained`` extra) or the path of an
    ``ImageFolder`` (``root/<class>/<image>``), with ``masks`` a folder of PNG object masks at the same relative
    paths (nonzero = object): :class:`~evet_lightning.data.ImageFolderWithMasks`. Folder images are resized
    (shorter side) and centre-cropped to ``image_size`` (the model's own size when known, else 224) and
    normalized like the model's inputs. The folder's files of the samples used are all decoded here, so a
    corrupt one stops the evaluation before it starts, not in the middle of it.

    Raises:
        UsageError: a missing folder or mask, an empty folder, a file that cannot be decoded, ``masks`` for data
            that is not a folder, or a missing optional extra.
    """
    if spec in ("synthetic", "photos") and masks is not None:
        raise UsageError(f"--masks only applies to an image folder, not to --data {spec}")
    if spec == "synthetic":
        data = _synthetic_data(model, image_size, seed, num_samples)
    elif spec == "photos":
        data = _photo_data(model, image_size)
    else:
        data = _folder_data(spec, model, masks, image_size, num_samples)
    count = min(num_samples, len(data))
    if count < len(data):
        data.dataset = Subset(data.dataset, range(count))
    return data


def _synthetic_data(model: EvaluationModel, image_size: int | None, seed: int, num_samples: int) -> EvaluationData:
    from evet_lightning.data import SyntheticShapes

    options = dict(model.synthetic)
    if image_size is not None:
        options["image_size"] = image_size
    options.setdefault("image_size", model.image_size or 64)
    try:
        dataset = SyntheticShapes(num_samples=num_samples, seed=seed, **options)
    except ValueError as error:
        raise UsageError(f"--data synthetic: {error}") from None
    # Labels cycle through the classes: (index + seed) % num_classes.
    max_label = max(dataset.label(index) for index in range(min(num_samples, dataset.num_classes)))
    return EvaluationData(
        dataset,
        "synthetic",
        has_masks=True,
        normalization=model.normalization,
        class_names=dataset.classes,
        max_label=max_label,
    )


def _photo_data(model: EvaluationModel, image_size: int | None) -> EvaluationData:
    try:
        from evet_lightning.data.photos import SamplePhotos
        from evet_lightning.imagenet import LITE0_INPUT_SIZE
    except ImportError as error:
        raise UsageError(f"--data photos is not available: {error}") from None
    try:
        photos = SamplePhotos(size=image_size or model.image_size or LITE0_INPUT_SIZE, normalize=False)
    except ImportError as error:  # MissingExtraError
        raise UsageError(f"--data photos is not available: {error}") from None
    if model.normalization is not None:  # the model's own normalization, whatever it is
        mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in model.normalization)
        photos.images = (photos.images - mean) / std
    return EvaluationData(
        photos,
        "photos",
        has_masks=False,
        normalization=model.normalization,
        class_names=photos.class_names,
        max_label=int(photos.labels.max()),
    )


def _folder_data(
    spec: str, model: EvaluationModel, masks: str | None, image_size: int | None, num_samples: int
) -> EvaluationData:
    from evet_lightning.data.image_folder import ImageFolderWithMasks

    root = Path(spec).expanduser()
    if not root.is_dir():
        raise UsageError(f"--data {spec}: expected 'synthetic', 'photos' or an image folder, but no such folder")
    mask_root = None
    if masks is not None:
        mask_root = Path(masks).expanduser()
        if not mask_root.is_dir():
            raise UsageError(f"--masks folder not found: {masks}")
    try:
        dataset = ImageFolderWithMasks(root, mask_root, image_size or model.image_size or 224, model.normalization)
        count = min(num_samples, len(dataset))
        dataset.verify(range(count))  # only the samples used: the first `count`
    except ValueError as error:
        raise UsageError(f"--data {spec}: {error}") from None
    return EvaluationData(
        dataset,
        spec,
        has_masks=mask_root is not None,
        normalization=model.normalization,
        class_names=list(dataset.classes),
        max_label=max(dataset.targets[:count]),
    )
