"""``evaluate --resume``: what of a recorded run is left to do, and whether the options are the recorded ones.

``<output>/samples/run.json`` holds the options that decide the rows (decision 43): the methods, the model, the
data and its samples, every EVET and metric setting. A resumed run must give the rows the recorded one would have
given, so a different option is a usage error naming it; options that only decide how the work is spread
(``--devices``, ``--strategy``, ``--batch-size``, ``--accelerator``, the progress bar) may change.

Per method (:func:`plan_method`): a method whose ``<method>.json`` says ``complete`` is not run again; one whose
calibration was complete continues on the samples not yet recorded, with alpha fixed to the recorded calibrated
alpha (every sample after the calibration set uses that alpha); one whose calibration was not complete starts
over (its rows are dropped: the alpha of the samples recorded so far is not known yet).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evet_lightning.evaluation.errors import UsageError
from evet_lightning.evaluation.outputs import write_text, writing
from evet_lightning.evaluation.sample_file import method_state, read_rows, sample_files

__all__ = ["RUN_FILE", "MethodPlan", "plan_method", "start_run"]

#: The recorded options of a run, in the ``samples`` folder.
RUN_FILE = "run.json"


@dataclass(frozen=True)
class MethodPlan:
    """What is left of one method: ``indices`` to explain (empty when nothing), in part file ``attempt``, with
    ``alpha`` fixed (the recorded calibrated alpha) or ``None`` (the run's own setting)."""

    indices: list[int]
    attempt: int
    alpha: float | None = None


def start_run(folder: Path, options: dict[str, Any], resume: bool) -> None:
    """Record ``options`` in ``folder/run.json`` (a new run: the previous run's per-sample files are removed), or,
    with ``resume``, check them against the recorded ones.

    Raises:
        UsageError: ``resume`` without a recorded run, or with options that differ from the recorded run's.
        OutputError: a file cannot be written or removed.
    """
    path = folder / RUN_FILE
    if resume:
        if not path.is_file():
            raise UsageError(
                f"--resume: no recorded run in {os.fspath(folder.parent)} (no {path.name} in {folder.name}/)"
            )
        recorded = json.loads(path.read_text())
        differing = [name for name in sorted({*recorded, *options}) if recorded.get(name) != options.get(name)]
        if differing:
            details = "; ".join(
                f"{name}: recorded {recorded.get(name)!r}, now {options.get(name)!r}" for name in differing
            )
            raise UsageError(f"--resume: the options differ from the recorded run's ({details}); pass the same ones")
        return
    with writing(folder):
        for old in folder.glob("*"):
            if old.is_file():
                old.unlink()
    write_text(path, json.dumps(options, indent=2) + "\n")


def _attempt(path: Path) -> int:
    match = re.search(r"\.(\d+)\.rank\d+\.csv$", path.name)
    return int(match.group(1)) if match else 0


def plan_method(folder: Path, method: str, total: int, fixed_alpha: bool) -> MethodPlan:
    """What of ``method`` is left on ``total`` samples (see the module docstring); ``fixed_alpha``: the run's
    alpha is a number (no calibration to wait for)."""
    state, parts = method_state(folder, method), sample_files(folder, method)
    if not parts and not state:
        return MethodPlan(list(range(total)), 0)
    attempt = 1 + max((_attempt(path) for path in parts), default=-1)
    if state.get("complete"):
        return MethodPlan([], attempt)
    calibration = state.get("calibration")
    recorded = set(read_rows(parts)["index"].tolist()) if parts else set()
    # the calibration set is the first samples; one of them missing (another process killed before it wrote its
    # rows) would be explained again at the later samples' alpha, not at its fold's: start over then too
    # (the calibration images; a multi-label curve's num_samples counts pairs, so "images" is read first)
    calibrated = calibration is not None and all(
        index in recorded
        for index in range(int(calibration.get("images", (calibration.get("curve") or {}).get("num_samples", 0))))
    )
    if not fixed_alpha and not calibrated:  # start over: the recorded samples' alpha is not known yet
        with writing(folder):
            for path in parts:
                path.unlink()
            (folder / f"{method.replace(':', '_')}.json").unlink(missing_ok=True)
        return MethodPlan(list(range(total)), 0)
    remaining = [index for index in range(total) if index not in recorded]
    return MethodPlan(remaining, attempt, None if fixed_alpha else float(calibration["alpha"]))  # type: ignore[index]
