"""The paper's tables from the per-method runs, in its layout (Oh et al., WACV 2021, Sec. 4.2-4.4).

All fractions are shown in % unless said otherwise:

- Table 1, faithfulness: average drop (lower is better), increase in confidence and win (higher is better),
  original method against EVET. "Win" of the *Original* row is the fraction of samples where the original map's
  perturbed image keeps more target probability than the EVET map's; of the *w/ EVET* row, the reverse (ties
  count for neither, so the two need not add up to 100).
- Table 2, localization: energy-based pointing game, when the data carries object masks.
- Table 3, EVET-Grad-CAM (Grad-CAM*) against Score-CAM: mean difference of the perturbed-image target
  probabilities (a raw probability difference, not %) and win, for Grad-CAM and Grad-CAM*. Needs both GradCAM
  and ScoreCAM among the methods; Score-CAM's scores are the un-enhanced ("original") scores of its own run.
- Table 4, seconds per image: Grad-CAM* (the whole EVET pipeline) and the un-enhanced Score-CAM, timed on the
  same samples.
- Table 5, stability index of the original and the EVET maps, per method and stability protocol (Rotate 5, paper).
- Per-class means (multi-label data only, key ``macro``): each metric's mean over the classes of each class's mean
  over its (image, class) pairs, as TorchRay reports VOC and COCO (decision 60); Tables 1, 2, 5 and 6 are then means
  over the pairs (micro), the values the callback logs.
- Table 6, deletion and insertion AUC (Petsiuk et al., RISE, BMVC 2018; docs/design.md, decision 16) of the
  original and the EVET maps: deletion lower is better, insertion higher is better. Only when the callback
  logged them (``evaluate``'s default; ``--no-deletion-insertion`` turns them off).

Table 1 also shows the alpha of each method's EVET maps: with ``--alpha auto`` the one the callback chose
(``evet/alpha``: the mean over the samples of the alpha each was scored with, i.e. the two folds' out-of-fold
choices for the calibration samples, the alpha chosen on all of them for later ones), else the fixed value.

Each *w/ EVET* value that has an *Original* value to compare with is marked in the markdown. Where the callback
logged the paired difference's 95% interval (``evet/diff/{metric}_low`` / ``_high``, decision 31), the interval
of EVET minus original follows in brackets and the mark says what it says: ✓ when it excludes zero on the better
side, ✗ on the worse side, ≈ when it contains zero. Without an interval (Win, older runs): ✓ when EVET goes the
better way as printed, ✗ the other way, = when both print the same.

The values are the ones ``trainer.validate`` logs, computed from the per-sample rows (docs/design.md, decision
42), so a resumed or a multi-device run gives the same tables; the few per-sample comparisons the callback does
not log (the "Original" row of Win, Table 3) use the same functional metrics on the rows' scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from evet_lightning.evaluation.names import PREFIX, display_name
from evet_lightning.evaluation.records import MethodRun, Timing
from evet_lightning.functional import average_difference, win

__all__ = ["Better", "EvaluationResult", "Table", "TableRow", "build_tables", "direction_mark", "interval_mark"]

#: Which way a metric is better.
Better = Literal["lower", "higher"]


def interval_mark(low: float, high: float, better: Better) -> str:
    """``"✓"`` when the interval of EVET minus original excludes zero on the ``better`` side, ``"✗"`` when it
    excludes it on the other side, ``"≈"`` when it contains zero.

    Example:
        >>> interval_mark(-2.0, -0.5, "lower"), interval_mark(-2.0, -0.5, "higher"), interval_mark(-1.0, 0.5, "lower")
        ('✓', '✗', '≈')
    """
    if low > 0 or high < 0:
        return "✓" if (high < 0) == (better == "lower") else "✗"
    return "≈"


def direction_mark(original: float | None, enhanced: float | None, better: Better, digits: int) -> str:
    """``"✓"`` when ``enhanced`` is better than ``original`` (as printed with ``digits`` decimals), ``"✗"`` when it
    is worse, ``"="`` when both print the same, ``""`` when either is missing.

    Example:
        >>> direction_mark(50.8, 32.6, "lower", 1), direction_mark(0.9, 0.8, "higher", 3), direction_mark(1, 1, "lower", 1)
        ('✓', '✗', '=')
    """  # noqa: E501
    if original is None or enhanced is None or not (math.isfinite(original) and math.isfinite(enhanced)):
        return ""
    before, after = round(original, digits), round(enhanced, digits)
    if before == after:
        return "="
    return "✓" if (after < before) == (better == "lower") else "✗"


@dataclass
class TableRow:
    """One row: a label (blank for a metric's continuation rows), a variant (``Original`` / ``w/ EVET``), values.

    ``digits`` overrides the table's number of decimals for this row. ``better``: this row (*w/ EVET*) is compared
    with the row above it (*Original*), column by column, and each cell marked ✓/✗/= (:func:`direction_mark`).
    """

    metric: str
    variant: str
    values: list[float | None]
    digits: int | None = None
    better: Better | None = None
    intervals: list[tuple[float, float] | None] | None = None
    """Per column (Table 5: for the last column), the 95% interval of w/ EVET minus Original, in the row's
    units; a cell with one is marked by :func:`interval_mark` and shows it."""


@dataclass
class Table:
    """A table in the paper's layout. ``digits`` decimals; ``None`` values print as ``-``.

    The variant column is shown only when some row has a variant; ``row_header`` names the first column.
    ``better_column``: the last column (*w/ EVET*) is compared with the first (*Original*) in every row and
    marked ✓/✗/= (Table 5's layout).
    """

    key: str
    title: str
    columns: list[str]
    rows: list[TableRow]
    digits: int = 1
    notes: list[str] = field(default_factory=list)
    row_header: str = "Metric"
    better_column: Better | None = None

    def cell(self, value: float | None, digits: int | None = None) -> str:
        """A value as printed in the markdown table."""
        if value is None or not math.isfinite(value):
            return "-"
        return f"{value:.{self.digits if digits is None else digits}f}"

    def markdown(self) -> str:
        """The table as GitHub markdown, with its title above and its notes below."""
        variants = any(row.variant for row in self.rows)
        header = [self.row_header, *([""] if variants else []), *self.columns]
        lines = [
            f"**{self.title}**",
            "",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join(["---"] * (2 if variants else 1) + ["---:"] * len(self.columns)) + " |",
        ]
        previous: TableRow | None = None
        for row in self.rows:
            labels = [row.metric, row.variant] if variants else [row.metric]
            cells = [self.cell(value, row.digits) for value in row.values]
            digits = self.digits if row.digits is None else row.digits
            if row.better is not None and previous is not None:
                for index, (before, after) in enumerate(zip(previous.values, row.values, strict=True)):
                    interval = row.intervals[index] if row.intervals else None
                    mark = direction_mark(before, after, row.better, digits)
                    cells[index] = _marked(cells[index], mark, interval, row.better, digits)
            if self.better_column is not None and len(row.values) > 1:
                interval = row.intervals[0] if row.intervals else None
                mark = direction_mark(row.values[0], row.values[-1], self.better_column, digits)
                cells[-1] = _marked(cells[-1], mark, interval, self.better_column, digits)
            lines.append("| " + " | ".join([*labels, *cells]) + " |")
            previous = row
        lines.extend(["", *self.notes] if self.notes else [])
        return "\n".join(lines)

    def records(self) -> list[dict[str, Any]]:
        """One flat record per cell: ``table, metric, variant, column, value`` (the CSV rows)."""
        records = []
        metric = ""
        for row in self.rows:
            metric = row.metric or metric
            for column, value in zip(self.columns, row.values, strict=True):
                records.append(
                    {"table": self.key, "metric": metric, "variant": row.variant, "column": column, "value": value}
                )
        return records


def _marked(
    cell: str,
    mark: str,
    interval: tuple[float, float] | None = None,
    better: Better | None = None,
    digits: int = 1,
) -> str:
    if interval is not None and better is not None and mark:
        low, high = interval
        return f"{cell} {interval_mark(low, high, better)} [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{cell} {mark}" if mark else cell


def _intervals(runs: Sequence[MethodRun], name: str, scale: float = 100.0) -> list[tuple[float, float] | None]:
    """Per run, the logged 95% interval of the paired difference of ``name`` (EVET minus original), scaled."""
    out: list[tuple[float, float] | None] = []
    for run in runs:
        low, high = (run.metrics.get(f"{PREFIX}/diff/{name}{end}") for end in ("_low", "_high"))
        out.append(None if low is None or high is None else (scale * float(low), scale * float(high)))
    return out


_INTERVAL_NOTE = (
    "[low, high]: 95% interval of the mean paired difference w/ EVET minus Original over the samples (seeded "
    "percentile bootstrap, docs/design.md decision 31); ✓/✗ only when it excludes zero, ≈ when it contains it."
)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def build_tables(
    runs: Sequence[MethodRun],
    *,
    has_masks: bool,
    timing: Timing | None = None,
    dataset: str = "",
    deletion_steps: int | None = None,
) -> list[Table]:
    """Tables 1-6 from the per-method runs (Table 2 only with masks; 3 and 4 only with GradCAM and ScoreCAM;
    6 only when the runs logged deletion and insertion AUCs, with ``deletion_steps`` steps when given)."""
    columns = [display_name(run.method) for run in runs]
    key = f"{PREFIX}/{{}}/{{}}"

    def metric(name: str, variant: str) -> list[float | None]:
        return [_percent(run.metrics.get(key.format(variant, name))) for run in runs]

    original_wins = [100.0 * float(win(run.original_scores, run.evet_scores)) for run in runs]
    evet_wins = [_percent(run.metrics.get(f"{PREFIX}/win")) for run in runs]
    rows = [
        TableRow("Average drop (%)", "Original", metric("average_drop", "original")),
        TableRow(
            "", "w/ EVET", metric("average_drop", "evet"), better="lower", intervals=_intervals(runs, "average_drop")
        ),
        TableRow("Increase in confidence (%)", "Original", metric("increase_in_confidence", "original")),
        TableRow(
            "",
            "w/ EVET",
            metric("increase_in_confidence", "evet"),
            better="higher",
            intervals=_intervals(runs, "increase_in_confidence"),
        ),
        TableRow("Win (%)", "Original", original_wins),  # type: ignore[arg-type]
        TableRow("", "w/ EVET", evet_wins, better="higher"),
    ]
    notes = [
        "Win: share of samples whose perturbed-image target probability is higher with that map than "
        "with the other (ties count for neither).",
        _INTERVAL_NOTE,
    ]
    if any(run.alpha is not None for run in runs):
        chosen = any(run.alpha_choice is not None for run in runs)
        rows.append(TableRow("Alpha (chosen)" if chosen else "Alpha", "w/ EVET", [run.alpha for run in runs], 3))
        if chosen:
            notes.append(
                "Alpha (chosen): the alpha of the EVET maps, chosen out of fold (each half of the calibration samples "
                "uses the alpha chosen on the other half, every later sample the alpha chosen on all of them; the "
                "mean over the samples is shown)."
            )
    tables = [
        Table(
            "table1",
            "Table 1: faithfulness (%), original vs EVET; average drop lower is better, increase in confidence "
            "and win higher is better",
            columns,
            rows,
            notes=notes,
        )
    ]
    if has_masks:
        tables.append(
            Table(
                "table2",
                "Table 2: localization, energy-based pointing game (%); higher is better",
                columns,
                [
                    TableRow("Energy-based pointing game (%)", "Original", metric("energy_pointing_game", "original")),
                    TableRow(
                        "",
                        "w/ EVET",
                        metric("energy_pointing_game", "evet"),
                        better="higher",
                        intervals=_intervals(runs, "energy_pointing_game"),
                    ),
                ],
                notes=[_INTERVAL_NOTE],
            )
        )
    by_method = {run.method: run for run in runs}
    if "GradCAM" in by_method and "ScoreCAM" in by_method:
        tables.append(_score_cam_table(by_method["GradCAM"], by_method["ScoreCAM"]))
    if timing is not None:
        tables.append(_timing_table(timing, dataset))
    tables.append(_stability_table(runs))
    if any(key.format(variant, name) in run.metrics for run in runs for variant, name in _AUC_KEYS):
        tables.append(_deletion_insertion_table(runs, columns, deletion_steps))
    if any(run.class_means is not None for run in runs):
        tables[0].notes.insert(0, _MICRO_NOTE)
        tables.append(_macro_table(runs, columns))
    return tables


_MICRO_NOTE = (
    "Multi-label data: each value of Tables 1, 2, 5 and 6 is a mean over the (image, class) pairs (micro), as the "
    "callback logs it; the per-class (macro) means are in the last table."
)

#: The macro table's rows: label, logged metric name, which way is better, scale, decimals.
_MACRO_ROWS: tuple[tuple[str, str, Better, float, int], ...] = (
    ("Average drop (%)", "average_drop", "lower", 100.0, 1),
    ("Increase in confidence (%)", "increase_in_confidence", "higher", 100.0, 1),
    ("Energy-based pointing game (%)", "energy_pointing_game", "higher", 100.0, 1),
    ("Stability index (rotate 5)", "stability_index", "higher", 1.0, 3),
    ("Stability index (paper)", "stability_index_paper", "higher", 1.0, 3),
    ("Deletion AUC", "deletion_auc", "lower", 1.0, 3),
    ("Insertion AUC", "insertion_auc", "higher", 1.0, 3),
)


def _macro_table(runs: Sequence[MethodRun], columns: list[str]) -> Table:
    """Per-class means of the multi-label runs: each metric's mean over classes of its per-class means, original
    vs EVET (marked as the w/ EVET rows of Tables 1 and 2), and the macro win."""

    def macro(key: str, scale: float) -> list[float | None]:
        values = [None if run.class_means is None else run.class_means["macro"].get(key) for run in runs]
        return [None if value is None else scale * value for value in values]

    rows = []
    for label, name, better, scale, digits in _MACRO_ROWS:
        original, enhanced = macro(f"{PREFIX}/original/{name}", scale), macro(f"{PREFIX}/evet/{name}", scale)
        if all(value is None for value in (*original, *enhanced)):
            continue
        rows.append(TableRow(label, "Original", original, digits))
        rows.append(TableRow("", "w/ EVET", enhanced, digits, better=better))
    rows.append(TableRow("Win (%)", "w/ EVET", macro(f"{PREFIX}/win", 100.0), 1))
    counts = [
        f"{display_name(run.method)}: {means['num_pairs']} pairs of {means['num_images']} images, "
        f"{means['num_classes']} classes"
        for run in runs
        if (means := run.class_means) is not None
    ]
    return Table(
        "macro",
        "Per-class means (macro): the mean over classes of each class's mean over its (image, class) pairs, "
        "original vs EVET",
        columns,
        rows,
        notes=[
            "Macro: every class counts once, however many images hold it (TorchRay's VOC and COCO report); Tables "
            "1, 2, 5 and 6 weigh every pair once (micro). Win: share of a class's pairs whose perturbed-image "
            "probability is higher with the EVET map, averaged over classes.",
            "; ".join(counts) + ".",
        ],
    )


#: Table 5's rows per method: the protocol's label and the logged metric name (decision 31).
STABILITY_PROTOCOLS = (
    ("Rotate 5 (unseen, Fig. 4b)", "stability_index"),
    ("Paper: mean of 4 (Fig. 4a)", "stability_index_paper"),
)


def _stability_table(runs: Sequence[MethodRun]) -> Table:
    """Table 5: per method, one row per stability protocol the run logged (the default, rotate by 5 degrees,
    always; the paper's four transforms when the callback had ``paper_stability=True``)."""
    rows = []
    for run in runs:
        label = display_name(run.method)
        for protocol, name in STABILITY_PROTOCOLS:
            original, evet = (run.metrics.get(f"{PREFIX}/{variant}/{name}") for variant in ("original", "evet"))
            if name != "stability_index" and original is None and evet is None:
                continue
            rows.append(TableRow(label, protocol, [original, evet], intervals=_intervals([run], name, scale=1.0)))
            label = ""
    return Table(
        "table5",
        "Table 5: stability index, higher is better: under rotate by 5 degrees (not one of EVET's transforms, "
        "the callback's default) and under the paper's protocol (mean over scale 0.9, rotate 10, shear 0.2, flip)",
        ["Original", "w/ EVET"],
        rows,
        digits=3,
        row_header="Method",
        better_column="higher",
        notes=[_INTERVAL_NOTE],
    )


_AUC_KEYS = tuple((variant, name) for name in ("deletion_auc", "insertion_auc") for variant in ("original", "evet"))


def _deletion_insertion_table(runs: Sequence[MethodRun], columns: list[str], steps: int | None) -> Table:
    """Table 6: the deletion and insertion AUCs the callback logged, original vs EVET, per method."""

    def auc(name: str, variant: str) -> list[float | None]:
        return [run.metrics.get(f"{PREFIX}/{variant}/{name}") for run in runs]

    curve = "" if steps is None else f", {steps} steps"
    return Table(
        "table6",
        f"Table 6: deletion / insertion AUC (RISE{curve}), original vs EVET; deletion lower is better, insertion "
        "higher is better",
        columns,
        [
            TableRow("Deletion AUC", "Original", auc("deletion_auc", "original")),
            TableRow(
                "",
                "w/ EVET",
                auc("deletion_auc", "evet"),
                better="lower",
                intervals=_intervals(runs, "deletion_auc", 1.0),
            ),
            TableRow("Insertion AUC", "Original", auc("insertion_auc", "original")),
            TableRow(
                "",
                "w/ EVET",
                auc("insertion_auc", "evet"),
                better="higher",
                intervals=_intervals(runs, "insertion_auc", 1.0),
            ),
        ],
        digits=3,
        notes=[
            "Area under the target-class probability as the most salient pixels are replaced by the baseline "
            "(deletion) or put back into a blurred image (insertion), step by step (docs/design.md, decision 16).",
            _INTERVAL_NOTE,
        ],
    )


def _score_cam_table(grad_cam: MethodRun, score_cam: MethodRun) -> Table:
    """Table 3: O of Grad-CAM and of Grad-CAM* against O of the un-enhanced Score-CAM, sample by sample."""
    if not torch.equal(grad_cam.targets, score_cam.targets):
        raise RuntimeError("Grad-CAM and Score-CAM runs explained different classes; Table 3 needs the same ones")
    reference = score_cam.original_scores
    candidates = (grad_cam.original_scores, grad_cam.evet_scores)
    return Table(
        "table3",
        "Table 3: Grad-CAM and Grad-CAM* (EVET-Grad-CAM) against Score-CAM on the perturbed-image target "
        "probabilities; higher is better",
        ["Grad-CAM", "Grad-CAM*"],
        [
            TableRow("Average difference", "", [float(average_difference(scores, reference)) for scores in candidates]),
            TableRow("Win (%)", "", [100.0 * float(win(scores, reference)) for scores in candidates], digits=1),
        ],
        digits=4,
        notes=["Average difference: mean of O(method) - O(Score-CAM), a probability difference (not %)."],
    )


def _timing_table(timing: Timing, dataset: str) -> Table:
    """Table 4, with a note on the speed-up (or slow-down) of Grad-CAM* against Score-CAM."""
    rows = [
        TableRow("Grad-CAM*", "", list(timing.grad_cam_star)),
        TableRow("Score-CAM", "", list(timing.score_cam)),
    ]
    if timing.callback is not None:
        rows.append(TableRow("Grad-CAM* in EVETCallback (batched)", "", [timing.callback, None]))
    notes = [
        "Grad-CAM*: EVET(...)(image, target), the whole EVET pipeline; Score-CAM: the un-enhanced ScoreCAM, "
        "EVET(...).explain(image, target); one image per call, same samples, same device."
    ]
    ratio = timing.score_cam[0] / timing.grad_cam_star[0] if timing.grad_cam_star[0] > 0 else math.inf
    if ratio >= 1.0:
        reduction = 100.0 * (1.0 - 1.0 / ratio)
        notes.append(f"Grad-CAM* takes {reduction:.1f}% less time than Score-CAM ({ratio:.1f}x faster).")
    else:
        notes.append(
            f"Grad-CAM* takes {100.0 * (1.0 / ratio - 1.0):.1f}% more time than Score-CAM ({1.0 / ratio:.1f}x "
            "slower): Score-CAM's cost grows with the channels of the target layer, Grad-CAM*'s does not."
        )
    return Table(
        "table4",
        "Table 4: execution time (seconds per image)",
        [f"{dataset or 'data'} mean", "std"],
        rows,
        digits=3,
        notes=notes,
        row_header="Method",
    )


@dataclass
class EvaluationResult:
    """Everything ``evaluate`` produced: the runs, the tables, and where it wrote files.

    ``complete`` is ``False`` while methods are still to run: ``methods`` lists all requested, ``runs`` the
    finished ones (``evaluate`` writes such a partial result after each method).
    """

    model: str
    data: str
    num_samples: int
    alpha: float | str
    methods: list[str]
    runs: list[MethodRun]
    tables: list[Table]
    accuracy: float | None
    files: dict[str, str] = field(default_factory=dict)
    accuracy_label: str = "top-1 accuracy"
    """What ``accuracy`` is (multi-label: the share of explained pairs whose class the model decides as labelled)."""
    num_pairs: int | None = None
    """Multi-label data: the (image, class) pairs explained (``num_samples`` counts images)."""
    complete: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    """The EVET and evaluation settings of the run, as written to ``tables.json``."""
    target_layers: list[str] = field(default_factory=list)
    """The layer(s) every CAM method explained (dotted names in the model); empty for Gradient alone."""
    layout: str | None = None
    """How the layer's output was read as a map (e.g. ``"tokens (B, 1 + 14 x 14, C)"``)."""

    def alpha_by_method(self) -> dict[str, dict[str, Any]]:
        """Per finished method: ``alpha`` (the chosen one with ``--alpha auto``, else the fixed one) and, for auto,
        ``folds`` (fold 0's and fold 1's alpha) and ``curve`` (the last epoch's per-alpha curve)."""
        return {run.method: {"alpha": run.alpha, **(run.alpha_choice or {})} for run in self.runs}

    def markdown(self) -> str:
        """The header line and every table, as printed by ``evet-lightning evaluate``."""
        accuracy = "" if self.accuracy is None else f", {self.accuracy_label} {100.0 * self.accuracy:.1f}%"
        alpha = self.alpha if isinstance(self.alpha, str) else f"{self.alpha:g}"
        samples = f"{self.num_samples} samples"
        if self.num_pairs is not None:
            samples = f"{self.num_samples} images, {self.num_pairs} (image, class) pairs"
        header = f"EVET evaluation: model {self.model}, data {self.data}, {samples}{accuracy}, alpha {alpha}"
        if self.target_layers:
            layout = f" ({self.layout})" if self.layout else ""
            header += f", CAM layer {', '.join(self.target_layers)}{layout}"
        if not self.complete:
            header += f" (partial: {len(self.runs)} of {len(self.methods)} methods finished)"
        return "\n\n".join([header, *(table.markdown() for table in self.tables)])
