"""Multi-label runs of the callback: the task, which (image, class) pairs are explained, and their chunks
(docs/design.md, decisions 54-58).

With ``task="multilabel"`` every chunk of images becomes a chunk of *pairs*: pair ``(i, k)`` explains class ``k`` of
image ``i`` through :meth:`~evet_lightning.EVET.explain_pairs` (the views of an image are shared between its
classes, decision 46). The chunk that comes out (:class:`~.explaining.ExplainedChunk`) holds one row per pair (the
image repeated, the class's object mask and valid pixels, the image's position), so the metrics, the alpha
choice, the records, the heatmaps and the tables read pairs exactly as they read samples of a multi-class run.

Under several processes the ranks' images hold different numbers of pairs, so before a chunk is explained one
``all_gather_object`` of each image's pair count lets every rank pad each image to the largest count of that
image slot (padding pairs, left out of every result): every rank then explains the same pair layout and makes
the same forward passes (decision 57).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch import Tensor

from evet_lightning._model_state import model_state_guard
from evet_lightning._outputs import logits_from_output
from evet_lightning.callbacks.explaining import ExplainedChunk, stability_maps, synchronized_time
from evet_lightning.callbacks.sampling import SampleBatch
from evet_lightning.data.batch import is_multi_hot
from evet_lightning.functional.activation import Task
from evet_lightning.functional.class_masks import pair_masks
from evet_lightning.saliency.evet import EVET
from evet_lightning.saliency.pairs import select_pairs
from evet_lightning.saliency.settings import EVETSettings
from evet_lightning.saliency.transforms import AffineTransform

__all__ = [
    "PAIR_TARGETS",
    "TASK_OPTIONS",
    "PairPolicy",
    "apply_task",
    "decide_task",
    "check_ignore_index",
    "check_pair_targets",
    "check_prediction_threshold",
    "check_task_option",
    "explain_pair_chunk",
    "infer_task",
    "select_classes",
]

#: ``EVETCallback(task=...)``: torchmetrics' task names, and ``"auto"`` (decision 54).
TASK_OPTIONS = ("auto", "multiclass", "multilabel", "binary")
#: ``EVETCallback(multilabel_targets=...)``: which classes of an image are explained (decision 55).
PAIR_TARGETS = ("positives", "most_confident")

TaskOption = Literal["auto", "multiclass", "multilabel", "binary"]
PairTargets = Literal["positives", "most_confident"]


def check_task_option(task: object) -> TaskOption:
    if not isinstance(task, str) or task not in TASK_OPTIONS:
        raise ValueError(f"Expected `task` to be one of {TASK_OPTIONS}, but got {task!r}")
    return task  # type: ignore[return-value]


def check_pair_targets(targets: object) -> PairTargets:
    if not isinstance(targets, str) or targets not in PAIR_TARGETS:
        raise ValueError(f"Expected `multilabel_targets` to be one of {PAIR_TARGETS}, but got {targets!r}")
    return targets  # type: ignore[return-value]


def check_prediction_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"Expected `prediction_threshold` to be a probability in (0, 1), but got {threshold!r}")
    return float(threshold)


def check_ignore_index(ignore_index: object) -> int | None:
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"Expected `ignore_index` to be an integer or None, but got {ignore_index!r}")
    return ignore_index


def infer_task(labels: object) -> Literal["multiclass", "multilabel"]:
    """``task="auto"`` (decision 54): ``"multilabel"`` for multi-hot ``(B, C)`` labels (``C >= 2``, values 0/1),
    ``"multiclass"`` otherwise, a batch without labels included."""
    return "multilabel" if is_multi_hot(labels) else "multiclass"


def decide_task(labels: object, settings: EVETSettings) -> tuple[Task, EVETSettings]:
    """``task="auto"`` on the first batch read: :func:`infer_task` of its labels, said once at INFO when multilabel,
    and the settings with that task."""
    task = infer_task(labels)
    if task == "multilabel":
        rank_zero_info(
            "EVETCallback: the labels are multi-hot (B, C), so the model is explained as multi-label "
            "(task='multilabel': sigmoid scores, one EVET run per (image, positive class)); pass `task=` to choose"
        )
    return task, settings.replace(task=task)


@dataclass(frozen=True)
class PairPolicy:
    """Which classes of a multi-label image are explained (decision 55)."""

    targets: PairTargets = "positives"
    """``"positives"``: every positive label; ``"most_confident"``: the one of largest logit (highest sigmoid)."""
    use_labels: bool = True
    """``target="label"``: the labels decide when the batch has them; else the predicted classes."""
    prediction_threshold: float = 0.5
    """A class is predicted when its sigmoid is above it (``target="prediction"`` or no labels)."""
    ignore_index: int | None = 255
    """The void value of class-index masks (decision 47)."""

    @classmethod
    def checked(cls, targets: object, target: str, threshold: object, ignore_index: object) -> PairPolicy:
        """The policy of ``EVETCallback``'s arguments, each checked (a ``ValueError`` naming it)."""
        return cls(
            check_pair_targets(targets),
            target == "label",
            check_prediction_threshold(threshold),
            check_ignore_index(ignore_index),
        )


def select_classes(logits: Tensor, labels: Tensor | None, real: Tensor, policy: PairPolicy) -> list[list[int]]:
    """The classes explained of each image, in class order (decision 55), by the engine's
    :func:`~evet_lightning.saliency.pairs.select_pairs` (decision 49).

    Args:
        logits: ``(B, K)`` the model's logits on the clean images.
        labels: ``(B, K)`` bool multi-hot labels, or ``None`` (then the predictions decide).
        real: ``(B,)`` bool, False for padding images (they get no pair of their own).
        policy: the policy.

    With labels: every positive label (``"positives"``) or the positive label of largest logit, i.e. highest
    sigmoid (``"most_confident"``, the lower class on a tie); an image without a positive label has no pair.
    Without labels: the classes whose sigmoid is above ``prediction_threshold``, and for an image with none its
    top class (``"most_confident"``: the top class), so every image is explained (unlike ``select_pairs``).

    Example:
        >>> logits = torch.tensor([[2.0, -1.0, 1.0], [-2.0, -1.0, -1.5]])
        >>> labels = torch.tensor([[True, True, False], [False, False, False]])
        >>> real = torch.tensor([True, True])
        >>> select_classes(logits, labels, real, PairPolicy())
        [[0, 1], []]
        >>> select_classes(logits, None, real, PairPolicy())
        [[0, 2], [1]]
        >>> select_classes(logits, labels, real, PairPolicy(targets="most_confident"))
        [[0], []]
    """
    logits = logits.detach().float().cpu()
    chosen: list[list[int]] = [[] for _ in range(logits.shape[0])]
    rows = torch.nonzero(real.cpu()).flatten()
    if rows.numel() == 0:
        return chosen
    by_labels = labels is not None and policy.use_labels
    if by_labels:
        assert labels is not None
        index, classes = select_pairs(labels.cpu()[rows], logits[rows], policy=policy.targets)
    elif policy.targets == "most_confident":
        index, classes = torch.arange(rows.numel()), logits[rows].argmax(dim=1)
    else:
        index, classes = select_pairs(None, logits[rows], policy="predicted", threshold=policy.prediction_threshold)
    for image, target in zip(index.tolist(), classes.tolist(), strict=True):
        chosen[int(rows[image])].append(int(target))
    if not by_labels:
        for row in rows.tolist():
            chosen[row] = chosen[row] or [int(logits[row].argmax())]
    return chosen


def _agreed_counts(counts: list[int]) -> list[int]:
    """Per image slot, the largest pair count over the ranks (one ``all_gather_object``; one process: as is)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return counts
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, counts)
    if len({len(item) for item in gathered}) > 1:
        raise RuntimeError(
            "EVETCallback: the ranks' chunks hold different numbers of images "
            f"{dict(enumerate(len(item) for item in gathered))}; the sharded forward passes would not line up"
        )
    return [max(slot) for slot in zip(*gathered, strict=True)]


def _clean_logits(evet: EVET, images: Tensor) -> Tensor:
    """``(B, K)`` logits of the clean images (one forward pass, eval mode, no autograd)."""
    with torch.no_grad(), model_state_guard(evet.model, protect_grads=False):
        logits = logits_from_output(evet.model(images), evet.output_transform)
    return logits.detach()


def explain_pair_chunk(
    evet: EVET,
    batch: SampleBatch,
    device: torch.device,
    policy: PairPolicy,
    stability_transforms: Sequence[AffineTransform],
    paper_transforms: Sequence[AffineTransform] = (),
) -> ExplainedChunk | None:
    """Explain the (image, class) pairs of one chunk of images (decisions 55-57); ``None`` when no rank has a pair.

    One forward pass on the clean images gives the logits the policy reads (and checks that the labels have
    one column per logit); each image's pairs are padded to the largest count of its slot over the ranks; the pairs
    go through :meth:`EVET.explain_pairs` (scoring the EVET map) and each stability transform's ``T(x)`` through it
    again. The chunk has one row per pair: ``images[image_index]``, the pair's object mask and valid pixels.
    """
    images = batch.images.to(device)
    logits = _clean_logits(evet, images)
    labels = None if batch.labels is None or not policy.use_labels else batch.labels
    real = ~batch.padding_mask
    if labels is not None and bool(real.any()):
        if not is_multi_hot(labels) or labels.shape[1] != logits.shape[1]:
            raise ValueError(
                f"Expected multi-hot labels with one column per logit ({logits.shape[1]}) with "
                f"task='multilabel', but got labels of shape {tuple(labels.shape)}; pass `task='multiclass'` for a "
                "single-label model"
            )
        labels = labels.bool()
    chosen = select_classes(logits, labels, real, policy)
    counts = _agreed_counts([len(classes) for classes in chosen])
    top = logits.argmax(dim=1).tolist()
    index: list[int] = []
    classes: list[int] = []
    padding: list[bool] = []
    for row, (own, count) in enumerate(zip(chosen, counts, strict=True)):
        fill = own[0] if own else top[row]  # a padding pair repeats a real class of the image
        index += [row] * count
        classes += own + [fill] * (count - len(own))
        padding += [not bool(real[row])] * len(own) + [True] * (count - len(own))
    if not index:
        return None
    image_index = torch.tensor(index, dtype=torch.long, device=device)
    targets = torch.tensor(classes, dtype=torch.long, device=device)
    masks = valid = None
    if batch.masks is not None:
        masks, valid = pair_masks(batch.masks.to(device), image_index, targets, ignore_index=policy.ignore_index)
    start = synchronized_time(device)
    pair_mask_arg = None if masks is None or valid is None else (masks, valid)
    result = evet.explain_pairs(images, image_index, targets, masks=pair_mask_arg, score_saliency=True)
    seconds = synchronized_time(device) - start
    return ExplainedChunk(
        images=images[image_index],
        masks=masks,
        positions=batch.positions[image_index.cpu()],
        result=result,
        stability=tuple(stability_maps(evet, t, images, result, image_index) for t in stability_transforms),
        seconds=seconds,
        padding=torch.tensor(padding, dtype=torch.bool),
        paper_stability=tuple(stability_maps(evet, t, images, result, image_index) for t in paper_transforms),
        valid=valid,
    )


def apply_task(evet: EVET, settings: EVETSettings) -> None:
    """Give a built engine the task ``task="auto"`` decided (its activation follows, decision 45)."""
    evet.settings = settings
    evet.task = settings.task
    evet.activation = settings.score_activation
