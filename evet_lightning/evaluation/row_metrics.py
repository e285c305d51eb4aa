"""The values ``trainer.validate`` logs, computed again from the per-sample rows (decision 42).

``evaluate``'s tables come from these, not from the values one ``trainer.validate`` returned: a run resumed
after a kill, or spread over several processes, has its rows in files, and the same rows in the same
(index) order give the same tables, whoever explained them. The computation is the callback's: a metric's value
is the mean of its per-sample values over the explained (finite) samples, the win and average difference come
from the same functional metrics, and the paired intervals from the same seeded bootstrap (decision 31).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from evet_lightning.callbacks.explaining import VARIANTS
from evet_lightning.evaluation.names import PREFIX
from evet_lightning.functional import average_difference, win
from evet_lightning.functional.paired_difference import paired_difference_interval

__all__ = ["metrics_from_rows"]

#: Columns of a row that are not a per-sample metric of a variant.
_SCORE_NAME = "O"


def _mean(values: Tensor) -> float | None:
    values = values[torch.isfinite(values)]
    return None if values.numel() == 0 else float(values.mean())


def metrics_from_rows(
    rows: dict[str, Any], seed: int = 0, folds: list[float] | None = None, calibration: int = 0
) -> dict[str, float]:
    """``{prefix}/...`` values (and ``val_acc``) from rows of :func:`~.sample_file.read_rows`.

    Keys as the callback logs them: ``num_skipped``, ``{variant}/{metric}`` (mean over the finite samples; a
    metric no sample has, such as the pointing game without masks, is left out), ``win`` and
    ``average_difference`` of the two maps' ``O``, ``diff/{metric}`` with ``_low`` / ``_high`` (the bootstrap of
    decision 31 with ``seed``), and, with ``folds`` (the two folds' alphas of ``alpha="auto"``), ``alpha``: the
    folds' mean for the first ``calibration`` samples and the later samples' (pooled) alpha for the others,
    weighted by their numbers, as the callback logs it.
    """
    finite = rows["finite"]
    values: dict[str, float] = {f"{PREFIX}/num_skipped": float((~finite).sum())}
    if bool(finite.any()):
        names = sorted({key.split("/", 1)[1] for key in rows if key.startswith(f"{VARIANTS[0]}/")} - {_SCORE_NAME})
        for variant in VARIANTS:
            for name in names:
                mean = _mean(rows[f"{variant}/{name}"][finite])
                if mean is not None:
                    values[f"{PREFIX}/{variant}/{name}"] = mean
        evet_scores, original_scores = rows["evet/O"][finite], rows["original/O"][finite]
        values[f"{PREFIX}/win"] = float(win(evet_scores, original_scores))
        values[f"{PREFIX}/average_difference"] = float(average_difference(evet_scores, original_scores))
        for name in names:
            if f"{PREFIX}/evet/{name}" not in values:
                continue
            interval = paired_difference_interval(
                rows[f"evet/{name}"][finite], rows[f"original/{name}"][finite], seed=seed
            )
            if bool(torch.isfinite(interval).all()):
                for suffix, value in zip(("", "_low", "_high"), interval.tolist(), strict=True):
                    values[f"{PREFIX}/diff/{name}{suffix}"] = float(value)
        if folds is not None:  # alpha="auto" (a fixed alpha is not logged), weighted as the callback weighs it
            count = finite.numel()  # rows: samples, or (image, class) pairs whose image is a sample
            calibrating = rows["index"] < calibration  # the first `calibration` images calibrate
            inside = int(calibrating.sum())
            later = float(rows["alpha"][~calibrating].nanmean()) if count > inside else 0.0
            values[f"{PREFIX}/alpha"] = (inside * sum(folds) / len(folds) + (count - inside) * later) / count
    correct = rows.get("correct")
    if correct is not None and bool((correct >= 0).any()):
        values["val_acc"] = float(correct[correct >= 0].double().mean())
    return values
