"""Where results go: the output folder (checked before any work), the tables files and the heatmap sheets.

Every file is written whole or not at all (written beside, then renamed), so a failure while writing never
leaves a half-written table, and the previous version of the file survives. A file that cannot be written
(``OSError``: a full disk, one turned read-only) raises :class:`~evet_lightning.evaluation.OutputError` naming it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from torch import Tensor

from evet_lightning.evaluation.errors import OutputError, UsageError
from evet_lightning.evaluation.records import MethodRun
from evet_lightning.evaluation.tables import EvaluationResult
from evet_lightning.functional.perturbation import Normalization
from evet_lightning.visualization.heatmaps import heatmap_sheet, write_png

__all__ = ["check_output", "prepare_output", "write_heatmap_sheet", "write_tables", "write_text", "writing"]


def check_output(path: str | os.PathLike[str], flag: str = "--output") -> Path:
    """Check, without creating anything, that the folder ``path`` exists or can be created, and can be written.

    Raises:
        UsageError: ``path`` (or a parent) is an existing file, or the folder (or its nearest existing parent)
            cannot be written to.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {os.fspath(path)} is a file, not a folder")
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {os.fspath(path)} cannot be created: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {os.fspath(path)} cannot be written: {error.strerror or error}") from None
    return folder


def prepare_output(path: str | os.PathLike[str], flag: str = "--output") -> Path:
    """:func:`check_output`, then create the folder (and its parents).

    Raises:
        UsageError: as :func:`check_output`, or the folder cannot be created.
    """
    folder = check_output(path, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {os.fspath(path)} cannot be created: {error.strerror or error}") from None
    return folder


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into an :class:`OutputError` that names the file and why."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise OutputError(f"cannot write {os.fspath(path)}: {reason}") from None


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically: into a temporary file beside it, then renamed over it.

    Raises:
        OutputError: the file cannot be written; an earlier version of it is left as it was.
    """
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # open() keeps the umask's permissions
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with temporary.open("w", newline="") as file:
                file.write(text)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise
    return target


def write_tables(result: EvaluationResult, output: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``tables.json`` (tables, per-method validate dicts, settings), ``tables.csv`` and ``tables.md``.

    ``tables.json`` says whether the result is ``complete``; ``methods`` lists the requested methods and
    ``validate`` those that finished. ``alpha`` is the setting (``"auto"`` or the fixed number);
    ``alpha_by_method`` holds each finished method's alpha (the chosen one for auto, with both folds' alphas and
    the last epoch's per-alpha curve); ``target_layers`` and ``layout`` say which layer the CAMs explained and
    how its output was read as a map. Multi-label data: ``num_pairs`` (the (image, class) pairs explained; ``validate``
    holds their micro means) and ``class_means``, per method the ``macro`` means, the ``per_class`` means and counts
    (:func:`~evet_lightning.evaluation.class_means.class_means`).
    """
    folder = Path(output)
    payload = {
        "model": result.model,
        "data": result.data,
        "num_samples": result.num_samples,
        "alpha": result.alpha,
        "methods": result.methods,
        "complete": result.complete,
        "accuracy": result.accuracy,
        "settings": result.settings,
        "target_layers": result.target_layers,
        "layout": result.layout,
        "alpha_by_method": result.alpha_by_method(),
        "validate": {run.method: run.metrics for run in result.runs},
        "num_pairs": result.num_pairs,
        "class_means": {run.method: run.class_means for run in result.runs if run.class_means is not None},
        "tables": [asdict(table) for table in result.tables],
    }
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=["table", "metric", "variant", "column", "value"])
    writer.writeheader()
    for table in result.tables:
        writer.writerows(table.records())
    paths = {
        "json": write_text(folder / "tables.json", json.dumps(payload, indent=2) + "\n"),
        "csv": write_text(folder / "tables.csv", rows.getvalue()),
        "markdown": write_text(folder / "tables.md", result.markdown() + "\n"),
    }
    return {name: os.fspath(path) for name, path in paths.items()}


def write_heatmap_sheet(
    run: MethodRun,
    images: Tensor,
    output: str | os.PathLike[str],
    normalization: Normalization = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """``<output>/heatmaps/<method>.png`` (a ``:`` of ``captum:Name`` written as ``_``): the labelled sheet
    (image | original | EVET, each row with its class, Y and O of each map;
    :func:`~evet_lightning.visualization.heatmaps.heatmap_sheet`) of the first samples.

    Raises:
        OutputError: the file cannot be written.
    """
    rows = min(run.original_maps.shape[0], images.shape[0])
    path = Path(output) / "heatmaps" / f"{run.method.replace(':', '_')}.png"  # ':' is not portable in file names
    sheet = heatmap_sheet(
        images[:rows],
        run.original_maps[:rows],
        run.evet_maps[:rows],
        normalization,
        method=run.method,
        targets=run.targets[:rows].tolist(),
        class_names=class_names,
        clean_scores=run.clean_scores[:rows],
        original_scores=run.original_scores[:rows],
        evet_scores=run.evet_scores[:rows],
    )
    with writing(path):
        write_png(sheet, path)
    return path
