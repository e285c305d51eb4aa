"""Per-class (macro) means of a multi-label run, from its (image, class) rows (decision 60).

The callback logs means over pairs (micro): every (image, class) pair counts once, so a class present in many
images weighs more. TorchRay reports the other mean for VOC and COCO: each class's mean over its own pairs, then
the mean over the classes (macro), so a rare class counts as much as ``person``. Both come from the same rows
(:func:`~evet_lightning.evaluation.sample_file.read_rows`): the per-pair values the micro means are computed from
(:func:`~evet_lightning.evaluation.row_metrics.metrics_from_rows`), grouped by the row's ``target``.

A pair's value of a metric is its row's column (``{variant}/{metric}``); a pair's win is 1 when the EVET map's
perturbed-image score ``O`` is higher than the original map's (ties count for neither, as
:func:`~evet_lightning.functional.win`), its average difference ``O(EVET) - O(original)``. A class's mean is over
its finite pairs with a value (a non-finite stability run has none); the macro mean is over the classes with one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from evet_lightning.callbacks.explaining import VARIANTS
from evet_lightning.evaluation.names import PREFIX

__all__ = ["class_means", "pair_values"]

#: Row columns that are not a per-pair metric.
_NOT_METRICS = ("O",)


def pair_values(rows: dict[str, Any]) -> dict[str, Tensor]:
    """Per finite row, every value a micro mean is taken of, keyed as the callback logs the mean
    (``{prefix}/{variant}/{metric}``, ``{prefix}/win``, ``{prefix}/average_difference``), float64 ``(P,)``."""
    finite = rows["finite"]
    names = sorted({key.split("/", 1)[1] for key in rows if key.startswith(f"{VARIANTS[0]}/")} - set(_NOT_METRICS))
    values = {
        f"{PREFIX}/{variant}/{name}": rows[f"{variant}/{name}"][finite].double()
        for variant in VARIANTS
        for name in names
        if f"{variant}/{name}" in rows
    }
    evet_scores, original_scores = rows["evet/O"][finite].double(), rows["original/O"][finite].double()
    values[f"{PREFIX}/win"] = (evet_scores > original_scores).double()
    values[f"{PREFIX}/average_difference"] = evet_scores - original_scores
    return values


def class_means(rows: dict[str, Any], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The per-class and macro means of ``rows`` (one row per (image, class) pair, the class in ``target``).

    Returns:
        ``macro``: per key of :func:`pair_values`, the mean over classes of each class's mean (keys no pair has a
        value of are left out); ``per_class``: per class present (by name when ``class_names`` is given, else by
        index, in class order), ``pairs`` (its finite pairs) and its mean of each key; ``num_pairs`` (finite
        pairs), ``num_images`` (distinct images among them) and ``num_classes`` (classes with a finite pair).

    Example:
        >>> rows = {"index": torch.tensor([0, 0, 1]), "target": torch.tensor([0, 1, 0]),
        ...         "finite": torch.tensor([True, True, True]), "evet/O": torch.tensor([0.9, 0.2, 0.5]),
        ...         "original/O": torch.tensor([0.5, 0.4, 0.5]), "original/average_drop": torch.tensor([0.2, 0.6, 0.4]),
        ...         "evet/average_drop": torch.tensor([0.1, 0.5, 0.3])}
        >>> means = class_means(rows, ["cat", "dog"])
        >>> round(means["macro"]["evet/original/average_drop"], 6)  # ((0.2 + 0.4) / 2 + 0.6) / 2; micro: 0.4
        0.45
        >>> means["per_class"]["cat"]["pairs"], means["num_images"], means["macro"]["evet/win"]
        (2, 2, 0.25)
    """
    finite = rows["finite"]
    targets = rows["target"][finite]
    values = pair_values(rows)
    per_class: dict[str, dict[str, Any]] = {}
    sums: dict[str, list[float]] = {key: [] for key in values}
    for target in torch.unique(targets).tolist():
        members = targets == target
        name = class_names[target] if class_names is not None and 0 <= target < len(class_names) else str(target)
        record: dict[str, Any] = {"class": int(target), "pairs": int(members.sum())}
        for key, column in values.items():
            chosen = column[members]
            chosen = chosen[torch.isfinite(chosen)]
            if chosen.numel():
                record[key] = float(chosen.mean())
                sums[key].append(record[key])
        per_class[name] = record
    return {
        "macro": {key: sum(means) / len(means) for key, means in sums.items() if means},
        "per_class": per_class,
        "num_pairs": int(finite.sum()),
        "num_images": len(set(rows["index"][finite].tolist())),
        "num_classes": len(per_class),
    }
