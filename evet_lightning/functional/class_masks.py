"""Object masks of (image, class) pairs from binary, class-index or per-class masks (docs/design.md, decision 47).

Three mask layouts are read:

- binary ``(B, H, W)`` **bool**: nonzero is "the object", whatever class is explained (the meaning they always had);
- class-index ``(B, H, W)`` **integer**: each pixel holds the class index of the object there; pixels equal to
  ``ignore_index`` (default 255, VOC's "void": object borders, unlabelled and difficult regions) are ignored, any
  other value is background for the class explained (VOC's ``SegmentationClass`` PNGs hold 0 for background and
  ``k + 1`` for class k: subtract 1 where the pixel is not 255, or pass ``classes + 1``);
- per-class binary ``(B, C, H, W)`` (bool or integer 0/1): channel k is class k's mask (COCO's instance masks
  unioned per class).

Ignored pixels are left out of both the object and the total energy of the pointing game (Eq. 12): energy on
VOC's void border neither hits nor misses, as VOC's own segmentation scoring ignores it. Counting them as
background instead lowers the score of a map that spills onto the border (the test's fixture shows how much).
"""

from __future__ import annotations

import torch
from torch import Tensor

from evet_lightning._validation import check_index_vector

__all__ = ["VOC_IGNORE_INDEX", "pair_masks"]

#: VOC's "void" label in ``SegmentationClass`` PNGs.
VOC_IGNORE_INDEX = 255


def pair_masks(
    masks: Tensor, image_index: Tensor, classes: Tensor, *, ignore_index: int | None = VOC_IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Pair p's object mask (class ``classes[p]``'s pixels in image ``image_index[p]``) and its valid pixels.

    Args:
        masks: binary ``(B, H, W)`` bool, class-index ``(B, H, W)`` integer, or per-class ``(B, C, H, W)`` bool or
            integer 0/1 (module docstring).
        image_index: ``(P,)`` integer, each pair's image in ``[0, B)``.
        classes: ``(P,)`` integer, each pair's class (in ``[0, C)`` for per-class masks).
        ignore_index: the class-index value that is ignored (default 255); ``None`` ignores nothing. Only
            class-index masks have ignored pixels.

    Returns:
        ``(object, valid)``, both ``(P, H, W)`` bool on the masks' device: ``valid`` is False on ignored pixels
        (``object`` never is True there). Give both to
        :func:`~evet_lightning.functional.energy_pointing_game` (``mask=object, valid=valid``).

    Raises:
        ValueError: a floating-point mask, a shape other than the three layouts, pair vectors of other shapes or
            types, an image index outside ``[0, B)``, a class outside ``[0, C)`` of per-class masks, or a class equal
            to ``ignore_index``.

    Example:
        >>> masks = torch.tensor([[[0, 1, 255], [2, 1, 0]]])  # one 2 x 3 class-index mask, 255 = void
        >>> obj, valid = pair_masks(masks, torch.tensor([0, 0]), torch.tensor([1, 2]))
        >>> obj.int().tolist(), valid.int().tolist()
        ([[[0, 1, 0], [0, 1, 0]], [[0, 0, 0], [1, 0, 0]]], [[[1, 1, 0], [1, 1, 1]], [[1, 1, 0], [1, 1, 1]]])
    """
    if not isinstance(masks, Tensor) or masks.ndim not in (3, 4):
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(
            "Expected `masks` to be binary (B, H, W) bool, class-index (B, H, W) integer or per-class (B, C, H, W) "
            f"masks, but got {shape}"
        )
    if masks.is_floating_point() or masks.is_complex():
        raise ValueError(
            f"Expected `masks` to be bool or integer, but got {masks.dtype}; binary masks are bool (`mask > 0.5`)"
        )
    index = check_index_vector("image_index", image_index, masks.device)
    targets = check_index_vector("classes", classes, masks.device)
    if index.shape != targets.shape:
        raise ValueError(
            f"Expected `image_index` and `classes` to have the same shape (P,), but got {tuple(index.shape)} and "
            f"{tuple(targets.shape)}"
        )
    batch = masks.shape[0]
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch):
        raise ValueError(
            f"Expected `image_index` to hold image indices in [0, {batch}), but got values in "
            f"[{int(index.min())}, {int(index.max())}]"
        )
    if index.numel() and int(targets.min()) < 0:
        raise ValueError(f"Expected `classes` to be non-negative class indices, but got {int(targets.min())}")
    selected = masks.index_select(0, index)
    if masks.ndim == 4:
        num_classes = masks.shape[1]
        if index.numel() and int(targets.max()) >= num_classes:
            raise ValueError(
                f"Expected `classes` in [0, {num_classes}) for per-class masks of shape {tuple(masks.shape)}, but "
                f"got {int(targets.max())}"
            )
        if selected.dtype != torch.bool and bool(((selected != 0) & (selected != 1)).any()):
            raise ValueError("Expected per-class (B, C, H, W) masks to hold only 0 and 1 (or be bool)")
        rows = torch.arange(index.numel(), device=masks.device)
        obj = selected[rows, targets] != 0
        return obj, torch.ones_like(obj)
    if masks.dtype == torch.bool:
        return selected, torch.ones_like(selected)
    if ignore_index is not None and bool((targets == ignore_index).any()):
        raise ValueError(f"Expected no class equal to `ignore_index` ({ignore_index}), but `classes` holds it")
    obj = selected == targets.view(-1, 1, 1)
    valid = torch.ones_like(obj) if ignore_index is None else selected != ignore_index
    return obj, valid
