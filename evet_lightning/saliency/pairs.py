"""(image, class) pairs: checking them, grouping them by image, and explaining several classes of one image from one
forward pass (docs/design.md, decision 46).

A multi-label image is explained once per class: each pair ``(i, k)`` is one EVET run, so its views ``T_v(x_i)``
are the same for every class of the image. :func:`explain_rows` runs the views of each image once; an explainer
with an ``explain_rows`` method (:class:`~evet_lightning.saliency.explainers.NativeCAM`,
:class:`~evet_lightning.saliency.explainers.GradientExplainer`) keeps that forward pass's graph and differentiates
it once per class (:func:`~evet_lightning.saliency.explainers.occurrence_rounds`); native Score-CAM
(:class:`~evet_lightning.saliency.score_cam.ScoreCAM`) reads every class's channel scores from the same masked
images. Any other explainer gets each view repeated per pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from evet_lightning._validation import check_index_vector
from evet_lightning.saliency.explainers import Explainer, Explanation
from evet_lightning.saliency.transforms import AffineTransform

__all__ = [
    "PAIR_POLICIES",
    "RowExplainer",
    "check_pairs",
    "explain_pair_views",
    "explain_rows",
    "pair_groups",
    "select_pairs",
]

#: Which classes of a multi-label image are explained (decision 49).
PAIR_POLICIES = ("positives", "most_confident", "predicted")


class RowExplainer(Protocol):
    """An explainer that explains ``(row, class)`` pairs of one batch of images from a single forward pass."""

    def explain_rows(self, model: nn.Module, images: Tensor, rows: Tensor, targets: Tensor) -> Explanation:
        """Maps ``(Q, H, W)`` of ``targets[q]`` on ``images[rows[q]]``; logits ``(Q, K)`` of ``images[rows[q]]``."""
        ...


def check_pairs(images: Tensor, image_index: object, classes: object) -> tuple[Tensor, Tensor]:
    """``(image_index, classes)`` as long tensors on the images' device, checked: both ``(P,)`` with ``P >= 1``,
    every image index in ``[0, B)`` and every class non-negative (the model's class count is checked by the
    explainer); a ``ValueError`` naming the argument otherwise."""
    index = check_index_vector("image_index", image_index, images.device)
    targets = check_index_vector("classes", classes, images.device)
    if index.shape != targets.shape:
        raise ValueError(
            f"Expected `image_index` and `classes` to have the same shape (P,), but got {tuple(index.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if index.numel() == 0:
        raise ValueError("Expected at least one (image, class) pair, but `image_index` is empty")
    batch = images.shape[0]
    if int(index.min()) < 0 or int(index.max()) >= batch:
        raise ValueError(
            f"Expected `image_index` to hold image indices in [0, {batch}), but got values in "
            f"[{int(index.min())}, {int(index.max())}]"
        )
    if int(targets.min()) < 0:
        raise ValueError(f"Expected `classes` to be non-negative class indices, but got {int(targets.min())}")
    return index, targets


def select_pairs(
    labels: Tensor | None, logits: Tensor | None = None, *, policy: str = "positives", threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """The (image, class) pairs to explain, as ``(image_index, classes)`` in row-major order (decision 49).

    Policies: ``"positives"`` every positive label of multi-hot ``labels (B, C)`` (TorchRay's protocol, the default);
    ``"most_confident"`` per image the positive label with the largest logit (``logits (B, C)`` needed); and
    ``"predicted"`` every class whose sigmoid exceeds ``threshold`` (``labels`` unused, may be ``None``). An image
    with no positive label (or no class above the threshold) gives no pair. ``labels`` are bool, or numbers that are
    0 or 1.

    Example:
        >>> labels = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 1]])
        >>> logits = torch.tensor([[0.0, 3.0, 2.0], [1.0, -1.0, -2.0], [-1.0, 0.5, 0.2]])
        >>> [t.tolist() for t in select_pairs(labels)]
        [[0, 0, 2, 2], [0, 2, 1, 2]]
        >>> [t.tolist() for t in select_pairs(labels, logits, policy="most_confident")]
        [[0, 2], [2, 1]]
        >>> [t.tolist() for t in select_pairs(None, logits, policy="predicted")]  # sigmoid > 0.5: logit > 0
        [[0, 0, 1, 2, 2], [1, 2, 0, 1, 2]]
    """
    if policy not in PAIR_POLICIES:
        raise ValueError(f"Expected `policy` to be one of {PAIR_POLICIES}, but got {policy!r}")
    if policy != "positives" and (not isinstance(logits, Tensor) or logits.ndim != 2):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected `logits` of shape (B, C) with policy={policy!r}, but got {shape}")
    if policy == "predicted":
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"Expected `threshold` to be a probability in [0, 1], but got {threshold!r}")
        assert logits is not None
        return _rows_and_columns(logits.detach().float().sigmoid() > threshold)
    if not isinstance(labels, Tensor) or labels.ndim != 2:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"Expected multi-hot `labels` of shape (B, C), but got {shape}")
    if labels.dtype != torch.bool and bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError("Expected multi-hot `labels` to hold only 0 and 1 (or be bool)")
    positive = labels != 0
    if policy == "positives":
        return _rows_and_columns(positive)
    assert logits is not None
    if logits.shape != labels.shape:
        raise ValueError(f"Expected `logits` of shape {tuple(labels.shape)} like the labels, got {tuple(logits.shape)}")
    masked = logits.detach().float().masked_fill(~positive.to(logits.device), float("-inf"))
    has_positive = positive.any(dim=1).to(logits.device)
    image_index = torch.nonzero(has_positive).squeeze(1)
    return image_index, masked.argmax(dim=1)[image_index]


def _rows_and_columns(selected: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column indices of the True entries of ``selected (B, C)``, row-major."""
    found = torch.nonzero(selected)
    return found[:, 0], found[:, 1]


def pair_groups(image_index: Tensor, group_size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Split pairs into groups of whole images: ``[(images, local_index, pairs), ...]``.

    ``pairs`` are positions into ``image_index`` (sorted by image, stably), ``images`` the distinct images of the
    group and ``local_index[j]`` the position in ``images`` of pair ``pairs[j]``'s image. A group holds at most
    ``group_size`` pairs unless one image has more; an image's pairs are never split.

    Example:
        >>> groups = pair_groups(torch.tensor([1, 0, 1, 2]), group_size=3)
        >>> [(g[0].tolist(), g[1].tolist(), g[2].tolist()) for g in groups]
        [([0, 1], [0, 1, 1], [1, 0, 2]), ([2], [0], [3])]
    """
    order = torch.sort(image_index, stable=True).indices
    images, counts = torch.unique_consecutive(image_index[order], return_counts=True)
    groups: list[tuple[Tensor, Tensor, Tensor]] = []
    start, size = 0, 0
    members: list[tuple[int, int]] = []
    for image, count in zip(images.tolist(), counts.tolist(), strict=True):
        if members and size + count > group_size:
            groups.append(_group(order, start, members))
            start, members, size = start + size, [], 0
        members.append((image, count))
        size += count
    groups.append(_group(order, start, members))
    return groups


def _group(order: Tensor, start: int, members: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    device = order.device
    images = torch.tensor([image for image, _ in members], device=device, dtype=torch.long)
    counts = torch.tensor([count for _, count in members], device=device, dtype=torch.long)
    local = torch.repeat_interleave(torch.arange(len(members), device=device), counts)
    return images, local, order[start : start + int(counts.sum())]


def explain_rows(
    explainer: Explainer,
    model: nn.Module,
    images: Tensor,
    rows: Tensor,
    targets: Tensor,
    chunk: int,
    run_explainer: Callable[[Explainer, Tensor, Tensor], Explanation],
) -> Explanation:
    """Maps of ``targets[q]`` on ``images[rows[q]]`` and those images' logits, ``Q = rows.numel()``.

    An explainer with ``explain_rows`` gets the images in chunks of ``chunk`` (one forward pass each) with the
    pairs whose row lies in the chunk; any other is run by ``run_explainer`` on ``images[rows]`` (each image
    repeated once per pair: correct, not cheaper).
    """
    method = getattr(explainer, "explain_rows", None)
    if method is None:
        return run_explainer(explainer, images[rows], targets)
    maps: list[Tensor] = []
    logits: list[Tensor] = []
    positions: list[Tensor] = []
    for start in range(0, images.shape[0], chunk):
        selected = torch.nonzero((rows >= start) & (rows < start + chunk)).squeeze(1)
        if selected.numel() == 0:
            continue
        explanation = method(model, images[start : start + chunk], rows[selected] - start, targets[selected])
        maps.append(explanation.maps)
        logits.append(explanation.logits)
        positions.append(selected)
    inverse = torch.empty_like(rows)
    inverse[torch.cat(positions)] = torch.arange(rows.numel(), device=rows.device)
    return Explanation(torch.cat(maps)[inverse], torch.cat(logits)[inverse])


def explain_pair_views(
    explainer: Explainer,
    model: nn.Module,
    views: Sequence[AffineTransform],
    images: Tensor,
    local_index: Tensor,
    classes: Tensor,
    chunk: int,
    run: Callable[[Explainer, Tensor, Tensor], Explanation],
) -> tuple[Tensor, Tensor]:
    """Every view's map of pair j (class ``classes[j]`` of image ``local_index[j]`` of the distinct ``images``),
    view-major ``(V * P, H, W)``, and the pairs' clean logits ``(P, K)``: each image's views are built once and,
    where the explainer allows, run once (decision 46)."""
    num_views, count, num_pairs = len(views), images.shape[0], classes.numel()
    transformed = torch.cat([images, *(view.forward(images) for view in views[1:])])  # view-major, V * count
    offsets = torch.arange(num_views, device=images.device).view(-1, 1) * count
    rows = (offsets + local_index.view(1, -1)).flatten()  # view-major, V * num_pairs
    explanation = explain_rows(explainer, model, transformed, rows, classes.repeat(num_views), chunk, run)
    return explanation.maps, explanation.logits[:num_pairs]
