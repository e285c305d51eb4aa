"""Per-sample records of an explained epoch: the scalars each finalized sample leaves behind once its images and
maps are dropped (:meth:`~evet_lightning.EVETCallback.sample_records`).

One row per real sample (padding never), in the order the samples were finalized. The metric columns are exactly
the per-sample values the logged metrics and the paired differences are computed from
(:func:`~evet_lightning.callbacks.explanation_metrics.per_sample_values`), so a mean over the finite rows equals
the logged value.
"""

from __future__ import annotations

import bisect

import torch
from torch import Tensor

from evet_lightning.callbacks.explaining import VARIANTS, ExplainedChunk
from evet_lightning.callbacks.explanation_metrics import per_sample_values

__all__ = ["SampleRecords", "chunk_records"]

#: The chunks' rows are concatenated into one part every this many chunks.
_COMPACT_EVERY = 256


def chunk_records(chunk: ExplainedChunk, alphas: Tensor) -> dict[str, Tensor]:
    """The rows of one finalized chunk (its real samples), as CPU columns.

    Args:
        chunk: an explained chunk with its final maps (after the alpha choice) and, when on, its curves.
        alphas: ``(B,)`` the alpha of each sample's EVET map.

    Returns:
        ``sample`` (int64 position in the single-process order), ``target`` (int64), ``finite`` (bool), ``Y``,
        ``original/O``, ``evet/O``, ``alpha`` and ``{variant}/{metric}`` (float64; NaN on a non-finite row, and
        where a sample has no value, e.g. a non-finite stability run).
    """
    result = chunk.result
    real = ~chunk.padding_mask
    finite = result.finite[real].cpu()

    def column(values: Tensor) -> Tensor:
        values = values[real].detach().to("cpu", torch.float64)
        return torch.where(finite, values, torch.nan)

    rows = {
        "sample": chunk.positions[real.cpu()].round().long(),
        "target": result.targets[real].detach().cpu().long(),
        "finite": finite.bool(),
        "Y": column(result.clean_scores),
        "original/O": column(result.view_scores[0]),
        "evet/O": column(chunk.evet_scores),
        "alpha": alphas.to(real.device)[real].detach().to("cpu", torch.float64),
    }
    for variant in VARIANTS:
        for name, values in per_sample_values(chunk, variant).items():
            full = torch.full((finite.shape[0],), torch.nan, dtype=torch.float64)
            full[finite] = values.detach().to("cpu", torch.float64)
            rows[f"{variant}/{name}"] = full
    return rows


class SampleRecords:
    """The rows of one epoch, appended chunk by chunk; :meth:`columns` concatenates them (the whole table cached
    until the next :meth:`append`; from a ``start`` row, only the chunks from there)."""

    def __init__(self) -> None:
        self._parts: list[dict[str, Tensor]] = []
        self._ends: list[int] = []
        self._columns: dict[str, Tensor] | None = None

    def append(self, rows: dict[str, Tensor]) -> None:
        self._parts.append(rows)
        self._ends.append(len(self) + int(rows["sample"].shape[0]))
        self._columns = None
        if len(self._parts) >= _COMPACT_EVERY:  # a few tensors per column, not a few per chunk
            self._parts, self._ends = [_concat(self._parts)], [len(self)]

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def columns(self, start: int = 0) -> dict[str, Tensor]:
        """Every column from row ``start`` on, concatenated over the chunks (empty columns of the base names before
        any row)."""
        if not self._parts:
            empty = {"sample": torch.long, "target": torch.long, "finite": torch.bool}
            empty.update(dict.fromkeys(("Y", "original/O", "evet/O", "alpha"), torch.float64))
            return {name: torch.zeros(0, dtype=dtype) for name, dtype in empty.items()}
        if start <= 0:
            if self._columns is None:
                self._columns = _concat(self._parts)
            return dict(self._columns)
        first = bisect.bisect_right(self._ends, start)
        if first == len(self._parts):
            return {key: column[:0] for key, column in self._parts[-1].items()}
        offset = start - (self._ends[first - 1] if first > 0 else 0)
        columns = _concat(self._parts[first:])
        return {key: column[offset:] for key, column in columns.items()}


def _concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
