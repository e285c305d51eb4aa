"""The per-sample file of one method: every explained sample's row, written as batches finish (decision 41).

Layout in ``<output>/samples/``:

- ``<method>.<attempt>.rank<r>.csv``: the rows process ``r`` wrote in attempt ``attempt`` (0 for the first run,
  one more for each ``--resume``), appended and flushed after every validation batch, so a killed run's file is
  readable up to its last flushed batch (a torn last line is ignored by :func:`read_rows`);
- ``<method>.json``: the calibration outcome once known (the alpha every later sample uses and the alpha curve
  ``tables.json`` shows), the callback's seconds per image, and ``complete`` once the method's run returned.

A row holds ``index`` (the sample's index in the evaluated data), ``file`` (when the dataset knows its files),
the columns of :meth:`~evet_lightning.EVETCallback.sample_records` but ``sample``, and ``correct`` (1 / 0 whether
the model's prediction is the label, empty without a label). A multi-label run has one row per (image, class)
pair: the image's ``index`` on each of its rows, the class in ``target``, and ``correct`` whether the model's
decision on that class (sigmoid > 0.5) is the label's (decision 59). Floats are written with ``repr``, which reads back
to the same float64, so tables computed from a resumed run's rows equal an uninterrupted run's.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import Dataset, Subset
from typing_extensions import override

from evet_lightning.callbacks import EVETCallback
from evet_lightning.evaluation.alpha_record import alpha_choice_record
from evet_lightning.evaluation.outputs import write_text, writing

__all__ = [
    "SAMPLES_FOLDER",
    "SampleFileWriter",
    "dataset_files",
    "method_state",
    "read_rows",
    "sample_files",
    "write_merged",
    "write_method_state",
]

#: The folder of the per-sample files inside ``--output``.
SAMPLES_FOLDER = "samples"
_INTEGER_COLUMNS = ("index", "target", "correct")
_BOOL_COLUMNS = ("finite",)


def _stem(method: str) -> str:
    return method.replace(":", "_")  # ':' is not portable in file names


def sample_files(folder: Path, method: str) -> list[Path]:
    """Every part file of ``method`` in ``folder`` (all attempts and ranks), in name order."""
    return sorted(folder.glob(f"{_stem(method)}.*.rank*.csv"))


def method_state(folder: Path, method: str) -> dict[str, Any]:
    """``<method>.json`` as a dict (empty when the method has not written one)."""
    path = folder / f"{_stem(method)}.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()))


def write_method_state(folder: Path, method: str, **fields: Any) -> None:
    """Update ``<method>.json`` with ``fields`` (atomically: written beside, then renamed)."""
    state = {**method_state(folder, method), **fields}
    write_text(folder / f"{_stem(method)}.json", json.dumps(state, indent=2) + "\n")


def dataset_files(dataset: Dataset[Any]) -> list[str] | None:
    """The file of every item of ``dataset`` when it knows them (an image folder, possibly in a ``Subset``)."""
    if isinstance(dataset, Subset):
        files = dataset_files(dataset.dataset)
        return None if files is None else [files[index] for index in dataset.indices]
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and all(isinstance(item, tuple) and item for item in samples):
        return [os.fspath(item[0]) for item in samples]
    return None


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


class SampleFileWriter(pl.Callback):
    """Writes the rows of the :class:`~evet_lightning.EVETCallback` listed before it to this process's part file.

    After every validation batch (and at the epoch's end) the callback's new rows
    (:meth:`~evet_lightning.EVETCallback.sample_records`) are appended and flushed; their ``sample`` positions
    (in the order of the loader's dataset) become dataset indices through ``indices`` (a resumed run validates a
    ``Subset`` of the remaining samples). Rank zero writes the calibration outcome to ``<method>.json`` as soon as
    the callback has made its choice.

    Args:
        folder: the ``samples`` folder.
        method: the method's name (the file names).
        attempt: 0 for a first run, one more for each resume (a new part file per attempt and rank).
        indices: the dataset index of each position of the validated dataset.
        files: the file of each dataset index, when known.
    """

    def __init__(
        self, folder: Path, method: str, attempt: int, indices: Sequence[int], files: Sequence[str] | None
    ) -> None:
        self.folder, self.method, self.attempt = folder, method, attempt
        self.indices, self.files = list(indices), None if files is None else list(files)
        self._handle: TextIO | None = None
        self._writer: Any = None
        self._written = 0
        self._seen = 0
        self._correct: dict[int, Any] = {}
        self._calibration_written = False

    @staticmethod
    def _evet(trainer: pl.Trainer) -> EVETCallback:
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, EVETCallback):
                return callback
        raise RuntimeError("SampleFileWriter needs an EVETCallback among the trainer's callbacks")

    def _path(self, trainer: pl.Trainer) -> Path:
        return self.folder / f"{_stem(self.method)}.{self.attempt}.rank{trainer.global_rank}.csv"

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._written, self._seen, self._correct = 0, 0, {}
        self._calibration_written = False

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        correct = outputs.get("correct") if isinstance(outputs, dict) else None
        if isinstance(correct, Tensor):
            # this rank's j-th item is position rank + j * world_size (DistributedSampler without shuffling)
            for offset, value in enumerate(correct.tolist()):
                position = trainer.global_rank + (self._seen + offset) * trainer.world_size
                if position < len(self.indices):  # past the end: the sampler's padding
                    self._correct[position] = value  # an int, or one per class (multi-label)
            self._seen += int(correct.shape[0])
        self._write_new_rows(trainer)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._write_new_rows(trainer)
        self._close()
        evet = self._evet(trainer)
        seconds = evet.last_timing.get("seconds_per_image")
        if trainer.global_rank == 0 and seconds is not None:
            self._update_state(seconds_per_image=float(seconds))

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def __getstate__(self) -> dict[str, Any]:  # spawned processes get no open file
        return {**self.__dict__, "_handle": None, "_writer": None}

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle, self._writer = None, None

    @rank_zero_only
    def _update_state(self, **fields: Any) -> None:
        write_method_state(self.folder, self.method, **fields)

    def _write_new_rows(self, trainer: pl.Trainer) -> None:
        evet = self._evet(trainer)
        records = evet.sample_records(start=self._written)  # only the new rows
        count = int(records["sample"].numel())
        if count > 0:
            self._append(trainer, {name: values.tolist() for name, values in records.items()})
            self._written += count
        # a fixed alpha (also a resumed run's recorded one) has no calibration to record, nor one to overwrite
        if not self._calibration_written and evet.calibration_complete and evet.settings.alpha == "auto":
            # the images that calibrate: a multi-label curve counts their pairs, which resume cannot map to indices
            images = min(evet.alpha_calibration, len(self.indices))
            self._update_state(calibration={**calibration_record(evet), "images": images}, complete=False)
            self._calibration_written = True

    def _append(self, trainer: pl.Trainer, columns: dict[str, list[Any]]) -> None:
        names = [name for name in columns if name != "sample"]
        path = self._path(trainer)
        if self._handle is None:
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                fresh = not path.exists()
                self._handle = path.open("a", newline="")
            self._writer = csv.writer(self._handle)
            if fresh:
                self._writer.writerow(["index", *(["file"] if self.files else []), *names, "correct"])
        lines = []
        for row, position in enumerate(columns["sample"]):
            index = self.indices[position]
            correct = self._correct.get(position)
            if isinstance(correct, list):  # multi-label: the decision on this row's class
                correct = int(correct[int(columns["target"][row])])
            cells = [_cell(columns[name][row]) for name in names]
            lines.append(
                [
                    str(index),
                    *([self.files[index]] if self.files else []),
                    *cells,
                    "" if correct is None else str(correct),
                ]
            )
        for position in set(columns["sample"]):  # an image's rows (its pairs) are finalized together
            self._correct.pop(position, None)
        with writing(path):
            self._writer.writerows(lines)
            self._handle.flush()  # type: ignore[union-attr]


def calibration_record(evet: EVETCallback) -> dict[str, Any]:
    """The calibration outcome of ``evet``'s epoch: the alpha later samples use and the alpha curve."""
    choice = evet.last_alpha
    alpha = evet.settings.alpha if choice is None else choice.pooled_alpha
    return {"alpha": float(alpha), **(alpha_choice_record(choice) or {})}  # type: ignore[arg-type]


def read_rows(paths: Sequence[Path]) -> dict[str, Any]:
    """The rows of the part files ``paths``, sorted by ``index`` and ``target`` (each (index, target) once: a later
    part's row wins; a multi-label run has one row per (image, class) pair).

    Returns columns: ``index``, ``target`` and ``correct`` (``-1`` where empty) as int64 tensors, ``finite`` as
    a bool tensor, ``file`` (when written) as a list of strings, every other column as a float64 tensor. A part's
    last line without its newline (a write cut short by a kill) is ignored.
    """
    rows: dict[tuple[int, int], dict[str, str]] = {}
    for path in paths:
        with path.open(newline="") as handle:
            text = handle.read()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        for row in csv.DictReader(io.StringIO(text, newline="")):
            rows[int(row["index"]), int(row.get("target") or -1)] = row
    ordered = [rows[key] for key in sorted(rows)]
    names = list(ordered[0]) if ordered else ["index"]
    columns: dict[str, Any] = {}
    for name in names:
        cells = [row[name] for row in ordered]
        if name == "file":
            columns[name] = cells
        elif name in _INTEGER_COLUMNS:
            columns[name] = torch.tensor([int(cell) if cell else -1 for cell in cells], dtype=torch.int64)
        elif name in _BOOL_COLUMNS:
            columns[name] = torch.tensor([cell == "1" for cell in cells], dtype=torch.bool)
        else:
            columns[name] = torch.tensor([float(cell) if cell else math.nan for cell in cells], dtype=torch.float64)
    return columns


def write_merged(folder: Path, method: str, rows: dict[str, Any]) -> Path:
    """``<method>.csv``: the merged rows of every part (:func:`read_rows`), one file per method, sorted by index
    (written whole, atomically, once the method is complete; the parts stay for ``--resume``)."""
    names = list(rows)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(names)
    count = len(rows["index"])
    columns = {name: values if isinstance(values, list) else values.tolist() for name, values in rows.items()}
    for row in range(count):
        cells = []
        for name in names:
            value = columns[name][row]
            cells.append("" if name == "correct" and value < 0 else _cell(value))
        writer.writerow(cells)
    return write_text(folder / f"{_stem(method)}.csv", text.getvalue())
