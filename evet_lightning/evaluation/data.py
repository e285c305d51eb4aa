"""Load the samples ``evet-lightning evaluate --data`` names: synthetic shapes, the bundled photos, an image folder,
a PASCAL VOC devkit or a COCO instances file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from evet_lightning.evaluation.errors import UsageError
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.functional.activation import Task, check_task
from evet_lightning.functional.perturbation import Normalization

__all__ = ["DEFAULT_EVALUATION_SEED", "EvaluationData", "load_data", "resolve_task"]

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
        multilabel: items are ``(image, multi-hot labels (C,), mask)``, several classes per image (VOC, COCO); the
            mask a class-index ``(H, W)`` int64 map (VOC: void 255) or per-class ``(C, H, W)`` bool masks (COCO).
    """

    dataset: Dataset[Any]
    name: str
    has_masks: bool
    normalization: Normalization = None
    class_names: list[str] | None = None
    max_label: int | None = None
    multilabel: bool = False

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
    split: str | None = None,
) -> EvaluationData:
    """The first ``num_samples`` samples of the data ``spec`` names (of VOC and COCO: ``num_samples`` drawn at random).

    ``spec``: ``synthetic`` (:class:`~evet_lightning.data.SyntheticShapes` with exact object masks, drawn like the
    demo checkpoint's data when the model is one, from ``seed``), ``photos`` (the bundled photographs,
    :class:`~evet_lightning.data.photos.SamplePhotos`; needs the ``pretrained`` extra) or the path of an
    ``ImageFolder`` (``root/<class>/<image>``), with ``masks`` a folder of PNG object masks at the same relative
    paths (nonzero = object): :class:`~evet_lightning.data.ImageFolderWithMasks`. Folder images are resized
    (shorter side) and centre-cropped to ``image_size`` (the model's own size when known, else 224) and
    normalized like the model's inputs. The folder's files of the samples used are all decoded here, so a
    corrupt one stops the evaluation before it starts, not in the middle of it.

    ``voc:ROOT`` (:class:`~evet_lightning.data.VOCSegmentation`, the image set ``split``, default ``test``) and
    ``coco:IMAGES_DIR,ANNOTATIONS.json`` (:class:`~evet_lightning.data.COCOInstances`) are multi-label: with more
    images than ``num_samples``, :func:`~evet_lightning.data.sample_indices` draws ``num_samples`` of them with
    ``seed`` (decision 52), and their files are decoded and checked here too.

    Raises:
        UsageError: a missing folder, file or mask, an empty folder, a file that cannot be decoded, a mask whose
            size differs from its image's, an annotation file naming an image that is not there, ``masks`` for data
            that is not a folder, ``split`` for data that is not VOC, or a missing optional extra.
    """
    kind = spec.partition(":")[0] if spec.startswith(("voc:", "coco:")) else spec
    if kind in ("synthetic", "photos", "voc", "coco") and masks is not None:
        raise UsageError(f"--masks only applies to an image folder, not to --data {spec}")
    if split is not None and kind != "voc":
        raise UsageError(f"--split only applies to --data voc:ROOT, not to --data {spec}")
    if kind in ("voc", "coco"):
        return _multilabel_data(spec, model, num_samples, image_size, seed, split)
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


def _multilabel_data(
    spec: str, model: EvaluationModel, num_samples: int, image_size: int | None, seed: int, split: str | None
) -> EvaluationData:
    from evet_lightning.data import COCOInstances, VOCSegmentation, sample_indices

    kind, _, location = spec.partition(":")
    size = image_size or model.image_size or 224
    dataset: VOCSegmentation | COCOInstances
    try:
        if kind == "voc":
            root = Path(location).expanduser()
            if not location or not root.is_dir():
                raise UsageError(f"--data {spec}: expected voc:ROOT, a devkit's VOC2007 folder, but no such folder")
            dataset = VOCSegmentation(root, split or "test", size, model.normalization)
        else:
            images, comma, annotations = location.rpartition(",")
            if not comma or not images or not annotations:
                raise UsageError(f"--data {spec}: expected coco:IMAGES_DIR,ANNOTATIONS.json")
            images_dir, annotations_file = Path(images).expanduser(), Path(annotations).expanduser()
            dataset = COCOInstances(images_dir, annotations_file, size, model.normalization)
        indices = sample_indices(len(dataset), num_samples, seed)
        dataset.verify(indices)
    except ValueError as error:
        raise UsageError(f"--data {spec}: {error}") from None
    return EvaluationData(
        Subset(dataset, indices),
        spec,
        has_masks=True,
        normalization=model.normalization,
        class_names=list(dataset.classes),
        multilabel=True,
    )


def resolve_task(task: str, data: EvaluationData) -> Task:
    """The task ``evaluate`` runs with ``--task task`` on ``data`` (decision 59): ``auto`` is ``multilabel`` for
    multi-label data (VOC, COCO) and ``multiclass`` otherwise (today's softmax, so results on single-label data do
    not change); an explicit task is kept when it fits the data.

    Raises:
        UsageError: ``multiclass`` or ``binary`` on multi-label data, ``multilabel`` on single-label data (its
            labels are class indices, not multi-hot), or an unknown task.
    """
    if task == "auto":
        return "multilabel" if data.multilabel else "multiclass"
    try:
        checked = check_task(task)
    except ValueError as error:
        raise UsageError(f"--task: {error}") from None
    if data.multilabel and checked != "multilabel":
        raise UsageError(
            f"--task {task} explains one class per image, but --data {data.name} is multi-label (several classes "
            "per image, multi-hot labels); use --task multilabel (or auto)"
        )
    if not data.multilabel and checked == "multilabel":  # the callback reads multi-hot labels (decision 54)
        raise UsageError(
            f"--task multilabel needs multi-label data (voc:ROOT or coco:IMAGES_DIR,ANNOTATIONS.json), but --data "
            f"{data.name} has one class per image; use --task multiclass (or auto)"
        )
    return checked
