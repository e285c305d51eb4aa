"""Validation batches: split them into ``(images, labels, masks)`` and check each part."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BatchUnpacker",
    "check_class_masks",
    "check_images",
    "check_labels",
    "check_masks",
    "check_multi_hot",
    "is_multi_hot",
    "read_batch",
    "unpack_batch",
    "unpack_with",
]

#: ``batch -> (images (B, C, H, W), labels (B,) or None, masks (B, H, W) or None)``.
BatchUnpacker = Callable[[Any], tuple[Tensor, Tensor | None, Tensor | None]]

_IMAGE_KEYS = ("image", "images", "x", "input", "inputs")
_LABEL_KEYS = ("label", "labels", "target", "targets", "y")
_MASK_KEYS = ("mask", "masks")


def _first_key(batch: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((batch[key] for key in keys if key in batch), None)


def unpack_batch(batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Split a validation batch into ``(images, labels or None, masks or None)``.

    Understands a bare tensor ``x``, a tuple or list ``(x,)``, ``(x, y)`` or ``(x, y, mask, ...)``, and a mapping
    with an ``image`` (or ``images``, ``x``, ``input``, ``inputs``) key and optional ``label`` (``labels``,
    ``target``, ``targets``, ``y``) and ``mask`` (``masks``) keys. Anything else: pass a ``batch_unpacker``.

    Example:
        >>> images, labels, masks = unpack_batch({"image": torch.zeros(2, 3, 4, 4), "label": torch.tensor([0, 1])})
        >>> images.shape, labels.tolist(), masks
        (torch.Size([2, 3, 4, 4]), [0, 1], None)
    """
    if isinstance(batch, Tensor):
        return batch, None, None
    if isinstance(batch, Mapping):
        images = _first_key(batch, _IMAGE_KEYS)
        if images is None:
            raise ValueError(
                f"Expected a batch dict with one of the keys {_IMAGE_KEYS}, but got keys {sorted(map(str, batch))}; "
                "pass `batch_unpacker=` to EVETCallback"
            )
        return images, _first_key(batch, _LABEL_KEYS), _first_key(batch, _MASK_KEYS)
    if isinstance(batch, (tuple, list)) and batch:
        items = [*batch[:3], None, None]
        return items[0], items[1], items[2]
    raise ValueError(
        f"Expected a batch that is a tensor, a tuple (x, y[, mask]) or a dict with an 'image' key, but got "
        f"{type(batch).__name__}; pass `batch_unpacker=` to EVETCallback"
    )


def check_images(images: object) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        found = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"Expected the batch's images to be a float tensor (B, C, H, W), but got {found}; "
            "pass `batch_unpacker=` to EVETCallback"
        )
    return images


def check_labels(labels: object, batch: int) -> Tensor:
    if (
        not isinstance(labels, Tensor)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
        or labels.numel() != batch
    ):
        found = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"Expected the batch's labels to be integer class indices of shape ({batch},), but got {found}; "
            "pass `target='prediction'` or `batch_unpacker=` to EVETCallback (multi-hot (B, C) labels of a "
            "multi-label model: `task='multilabel'`)"
        )
    return labels.reshape(batch).long()


def check_masks(masks: object, images: Tensor) -> Tensor:
    batch, height, width = images.shape[0], *images.shape[-2:]
    if isinstance(masks, Tensor) and masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if not isinstance(masks, Tensor) or tuple(masks.shape) != (batch, height, width):
        found = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(
            f"Expected the batch's object masks to have shape ({batch}, {height}, {width}) like the images, but got "
            f"{found}; pass `batch_unpacker=` to EVETCallback"
        )
    if masks.dtype == torch.bool:
        return masks
    return masks > 0.5 if masks.is_floating_point() else masks != 0


def is_multi_hot(labels: object) -> bool:
    """Whether ``labels`` look like a multi-label batch's: ``(B, C)`` with ``C >= 2`` and every value 0 or 1 (bool,
    integer or float), what ``task="auto"`` reads as multi-label (docs/design.md, decision 54)."""
    if not isinstance(labels, Tensor) or labels.ndim != 2 or labels.shape[1] < 2 or labels.is_complex():
        return False
    return bool(((labels == 0) | (labels == 1)).all())


def check_multi_hot(labels: object, batch: int) -> Tensor:
    """``(B, C)`` multi-hot labels (bool, integer or float 0/1) as bool, else a ``ValueError`` naming ``task``."""
    if not isinstance(labels, Tensor) or labels.shape[:1] != (batch,) or not is_multi_hot(labels):
        found = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"Expected the batch's labels to be multi-hot (0/1) of shape ({batch}, C) with task='multilabel', but "
            f"got {found}; pass `task='multiclass'` for class indices, `target='prediction'` or `batch_unpacker=`"
        )
    return labels.bool()


def check_class_masks(masks: object, images: Tensor) -> Tensor:
    """Masks of a multi-label batch, in the layouts of :func:`~evet_lightning.functional.class_masks.pair_masks`:
    binary ``(B, H, W)`` (bool; float means ``> 0.5``), class-index ``(B, H, W)`` integer (kept as they are:
    ``ignore_index`` is read later) or per-class ``(B, C, H, W)`` (bool, integer or float 0/1, as bool)."""
    batch, height, width = images.shape[0], *images.shape[-2:]
    if isinstance(masks, Tensor) and masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    shape_ok = isinstance(masks, Tensor) and (
        tuple(masks.shape) == (batch, height, width)
        or (masks.ndim == 4 and masks.shape[0] == batch and tuple(masks.shape[2:]) == (height, width))
    )
    if not isinstance(masks, Tensor) or not shape_ok or masks.is_complex():
        found = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(
            f"Expected the batch's masks to be binary or class-index ({batch}, {height}, {width}) or per-class "
            f"({batch}, C, {height}, {width}) like the images, but got {found}; pass `batch_unpacker=` to EVETCallback"
        )
    if masks.ndim == 4 or masks.is_floating_point():
        return masks > 0.5 if masks.is_floating_point() else masks != 0
    return masks


def unpack_with(batch: Any, batch_unpacker: BatchUnpacker | None = None) -> tuple[Any, Any, Any]:
    """``batch_unpacker(batch)`` (or :func:`unpack_batch` without one), checked to be a triple; parts unchecked."""
    unpacked = unpack_batch(batch) if batch_unpacker is None else batch_unpacker(batch)
    if not isinstance(unpacked, tuple) or len(unpacked) != 3:
        raise ValueError(
            f"Expected `batch_unpacker` to return (images, labels or None, masks or None), but got {unpacked!r}"
        )
    return unpacked


def read_batch(
    batch: Any, batch_unpacker: BatchUnpacker | None = None, *, use_labels: bool = True, multilabel: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Unpack ``batch`` (see :func:`unpack_with`) and check each part; ``use_labels=False`` drops the labels.
    ``multilabel=True`` reads multi-hot ``(B, C)`` labels (:func:`check_multi_hot`) and class masks
    (:func:`check_class_masks`); otherwise labels are class indices and masks binary, as always.

    Example:
        >>> images, labels, masks = read_batch((torch.zeros(2, 3, 4, 4), torch.tensor([[0], [1]])))
        >>> labels.tolist(), masks
        ([0, 1], None)
    """
    images, labels, masks = unpack_with(batch, batch_unpacker)
    images = check_images(images)
    if multilabel:
        labels = None if labels is None or not use_labels else check_multi_hot(labels, images.shape[0])
        masks = None if masks is None else check_class_masks(masks, images)
    else:
        labels = None if labels is None or not use_labels else check_labels(labels, images.shape[0])
        masks = None if masks is None else check_masks(masks, images)
    return images, labels, masks
