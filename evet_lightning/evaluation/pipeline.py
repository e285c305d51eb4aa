"""``evet-lightning evaluate``: every check first, then one ``trainer.validate`` per method, then Tables 1-5.

Order of work, so that a mistake costs nothing and a failure loses nothing:

1. the methods, the accelerator and the output folder (can it be written?) are checked; nothing is created
   until every check has passed, so a mistake leaves no empty folder behind;
2. the model and the data are loaded, which rejects options that do not apply to them (``--weights`` or
   ``--num-classes`` without a torchvision architecture, ``--masks`` without an image folder); an image
   folder's files are decoded (a corrupt one is an error now);
3. the memory the run will hold is estimated against what is available; the model runs on the first samples:
   a spatial layer for each CAM (found once, with how its output reads as a map, and then given to every
   method), labels among its classes, logits rather than probabilities (a warning); the callback is built once,
   so an option it rejects is an error now;
4. each method runs; right after it, the tables of the methods finished so far (``complete: false``) and its
   heatmap sheet are written, so a later failure (or Ctrl+C) keeps every finished method on disk;
5. Table 4's timing runs, and the complete tables are written.

Every EVET option travels as one :class:`~evet_lightning.saliency.EVETSettings` (built from the config by
:func:`~evet_lightning.evaluation.settings.settings_from_config`) to each method's callback and to Table 4's
engine, so an option is never spelled out twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from evet_lightning.evaluation.checks import ExplainedLayer, check_memory, check_model_outputs, check_spatial_layer
from evet_lightning.evaluation.config import DEFAULT_DELETION_STEPS, EvaluateConfig
from evet_lightning.evaluation.data import EvaluationData, load_data, resolve_task
from evet_lightning.evaluation.devices import check_accelerator
from evet_lightning.evaluation.errors import Interrupted, OutputError, UsageError
from evet_lightning.evaluation.loading import EvaluationModel, load_model
from evet_lightning.evaluation.names import PREFIX, default_methods, parse_methods
from evet_lightning.evaluation.options import parse_normalization
from evet_lightning.evaluation.outputs import check_output, prepare_output, write_heatmap_sheet, write_tables, writing
from evet_lightning.evaluation.records import MethodRun, Timing
from evet_lightning.evaluation.resume import start_run
from evet_lightning.evaluation.runner import evaluation_callback, run_method
from evet_lightning.evaluation.sample_file import SAMPLES_FOLDER
from evet_lightning.evaluation.settings import settings_from_config
from evet_lightning.evaluation.sheet_maps import sheet_images_and_maps
from evet_lightning.evaluation.tables import EvaluationResult, build_tables
from evet_lightning.evaluation.timing import measure_timing
from evet_lightning.saliency.settings import EVETSettings

__all__ = ["evaluate", "run_evaluation"]

log = logging.getLogger(__name__)


def run_evaluation(config: EvaluateConfig) -> EvaluationResult:
    """Everything ``evet-lightning evaluate`` does with ``config``: check, load, :func:`evaluate`, write.

    Raises:
        UsageError: any mistake in ``config`` (see the module docstring), before the first method runs.
    """
    methods = (  # `--methods ''` is an empty list (an error), not the default
        default_methods(config.model, config.data) if config.methods is None else parse_methods(config.methods)
    )
    if config.time_score_cam and "GradCAM" not in methods:
        raise UsageError("--time-score-cam needs GradCAM in --methods")
    if not config.deletion_insertion and config.deletion_steps != DEFAULT_DELETION_STEPS:
        raise UsageError("--deletion-steps does not apply with --no-deletion-insertion")
    check_accelerator(config.accelerator)
    check_output(config.output)
    settings = settings_from_config(config)  # imports --reshape-transform and --output-transform
    if config.normalization is not None and config.data == "synthetic":
        raise UsageError("--normalization applies to images read from files, not to --data synthetic")
    model = load_model(config.model, weights=config.weights, num_classes=config.num_classes)
    if config.normalization is not None:  # the data is normalized with it, and EVET's baseline follows (decision 53)
        model = dataclasses.replace(model, normalization=parse_normalization(config.normalization))
    data = load_data(
        config.data,
        model,
        config.num_samples,
        masks=config.masks,
        image_size=config.image_size,
        seed=config.seed,
        split=config.split,
    )
    settings = settings.replace(task=resolve_task(config.task, data))  # auto: by the data (decision 59)
    specs = {"reshape_transform": config.reshape_transform, "output_transform": config.output_transform}
    return evaluate(
        model,
        data,
        methods,
        settings=settings,
        batch_size=config.batch_size,
        accelerator=config.accelerator,
        progress=config.progress,
        output=config.output,
        heatmaps=config.heatmaps,
        target=config.target,
        time_score_cam=config.time_score_cam,
        deletion_insertion=config.deletion_insertion,
        deletion_steps=config.deletion_steps,
        paper_stability=config.paper_stability,
        record={key: value for key, value in specs.items() if value is not None},
        alpha_calibration=config.alpha_calibration,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        resume=config.resume,
        identity={
            name: getattr(config, name)
            for name in (
                "model",
                "weights",
                "num_classes",
                "data",
                "split",
                "normalization",
                "masks",
                "num_samples",
                "image_size",
                "seed",
            )
        },
    )


def evaluate(
    model: EvaluationModel,
    data: EvaluationData,
    methods: Sequence[str],
    *,
    settings: EVETSettings | None = None,
    batch_size: int = 32,
    accelerator: str = "auto",
    progress: bool = True,
    output: str | os.PathLike[str] | None = None,
    heatmaps: int = 4,
    target: Literal["label", "prediction"] = "label",
    time_score_cam: bool = False,
    deletion_insertion: bool = True,
    deletion_steps: int = DEFAULT_DELETION_STEPS,
    paper_stability: bool = True,
    record: dict[str, Any] | None = None,
    alpha_calibration: int = 32,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    resume: bool = False,
    identity: dict[str, Any] | None = None,
) -> EvaluationResult:
    """Run ``trainer.validate`` with :class:`~evet_lightning.EVETCallback` once per method and build Tables 1-6.

    ``settings``: every EVET option (alpha, its grid and objective, chunk size, transforms, ...) but ``cam``, the
    method; ``normalization`` is always the data's, and ``target_layers`` default to the model's own layer, else
    to the layer auto-detected before the run (every CAM method explains that same layer). With GradCAM among the
    methods and ScoreCAM too (or ``time_score_cam``, which skips Score-CAM's own, costly, EVET run: no Table 3
    then), Table 4 times Grad-CAM* and the un-enhanced Score-CAM alike
    (:func:`~evet_lightning.evaluation.time_per_image`) on the same samples. ``deletion_insertion``: Table 6, the
    deletion and insertion AUCs (``deletion_steps`` steps) the callback logs. ``paper_stability``: Table 5's
    second protocol, the paper's four stability transforms (``EVETCallback(paper_stability=True)``). With
    ``output``, writes ``tables.json``, ``tables.csv``, ``tables.md`` after every method (``complete`` says whether
    all ran) and one heatmap sheet per method (``heatmaps/<method>.png``, the first ``heatmaps`` samples: image |
    original | EVET).
    ``record``: more settings to write to ``tables.json`` (the command line's transform specs).
    ``alpha_calibration``: with ``alpha="auto"``, the first samples that calibrate alpha (decision 36).
    ``devices``, ``num_nodes``, ``strategy``: where each ``trainer.validate`` runs (Lightning's; ``auto`` is
    ``ddp_spawn`` with several processes, decision 44). With ``output``, each method's rows go to
    ``samples/<method>.*.csv`` as batches finish and the tables are computed from them (decisions 41, 42);
    ``resume`` continues the run recorded there (decision 43): the options (``identity``: what the command line
    loaded the model and data from, plus the methods and every setting) must be the recorded ones.

    Raises:
        UsageError: no samples, a CAM with no spatial layer, labels outside the model's classes (with
            ``target="label"``), more samples than memory holds, an unwritable ``output``, a missing device, an
            objective that needs masks on data without them, or an option the callback rejects.
        OutputError: a file that cannot be written mid-run; the files written before are kept (the message
            says how many methods they hold).
        Interrupted: Ctrl+C during the run; the finished methods' tables are kept (``"complete": false``), and
            the rows of the method that was running (``--resume`` continues from them).
    """
    if len(data) == 0:
        raise UsageError(f"--data {data.name} has no samples")
    if not methods:
        raise UsageError("--methods is empty")
    settings = settings or EVETSettings(task="multilabel" if data.multilabel else "multiclass")
    if data.multilabel and settings.task != "multilabel":
        raise UsageError(
            f"--data {data.name} is multi-label (several classes per image), but the task is {settings.task}; "
            "use --task multilabel (or auto)"
        )
    target_layers = model.target_layer if settings.target_layers is None else settings.target_layers
    settings = settings.replace(normalization=data.normalization, target_layers=target_layers)
    if settings.alpha == "auto" and settings.alpha_objective == "energy_pointing_game" and not data.has_masks:
        raise UsageError(f"--alpha-objective energy_pointing_game needs object masks, and --data {data.name} has none")
    check_accelerator(accelerator)
    if output is not None:
        check_output(output)
    elif resume:
        raise UsageError("--resume needs the --output folder of the run to continue")
    check_memory(data, batch_size=batch_size, paper_stability=paper_stability)
    layer = check_spatial_layer(model, data, methods, settings, (record or {}).get("reshape_transform"))
    if layer.names:
        settings = settings.replace(target_layers=layer.names)  # every CAM and Table 4 explain this layer
        log.info("evaluate: the CAM methods explain %s, read as %s", ", ".join(layer.names), layer.layout)
    check_model_outputs(model, data, target, settings.output_transform, settings.task)
    try:  # the callback's own checks (e.g. deletion_steps), before any work
        evaluation_callback(
            settings.replace(cam=methods[0]),
            len(data),
            target=target,
            deletion_insertion=deletion_insertion,
            deletion_steps=deletion_steps,
            paper_stability=paper_stability,
            alpha_calibration=alpha_calibration,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    folder = None if output is None else prepare_output(output)  # created once every check has passed
    context = _Context(
        model,
        data,
        list(methods),
        settings,
        layer,
        {
            **_settings_record(settings, target, deletion_insertion, deletion_steps, paper_stability),
            "alpha_calibration": alpha_calibration,
            **(record or {}),
        },
        deletion_steps if deletion_insertion else None,
    )
    samples = None if folder is None else folder / SAMPLES_FOLDER
    if samples is not None:
        with writing(samples):
            samples.mkdir(exist_ok=True)
        start_run(samples, {**(identity or {}), "methods": list(methods), **context.record}, resume)
    runs: list[MethodRun] = []
    files: dict[str, str] = {}
    saved = 0  # methods whose tables are on disk
    try:
        for method in methods:
            log.info("evaluate: %s on %d samples", method, len(data))
            run = run_method(
                model,
                data,
                method,
                settings=settings,
                batch_size=batch_size,
                accelerator=accelerator,
                progress=progress,
                root_dir=output,
                target=target,
                deletion_insertion=deletion_insertion,
                deletion_steps=deletion_steps,
                paper_stability=paper_stability,
                alpha_calibration=alpha_calibration,
                devices=devices,
                num_nodes=num_nodes,
                strategy=strategy,
                samples=samples,
            )
            runs.append(run)
            if folder is not None:
                files.update(write_tables(context.result(runs, complete=False), folder))
                saved = len(runs)
                if heatmaps > 0:
                    images, sheet = sheet_images_and_maps(
                        model, data, run, heatmaps, settings=settings, accelerator=accelerator
                    )
                    path = write_heatmap_sheet(sheet, images, folder, data.normalization, _index_names(data))
                    files[f"heatmaps/{method}"] = os.fspath(path)
        timing = _timing(model, data, runs, time_score_cam, settings, accelerator)
        result = context.result(runs, timing=timing)
        if folder is not None:
            result.files = {**files, **write_tables(result, folder)}  # the same keys: tables first, then heatmaps
    except KeyboardInterrupt:
        raise Interrupted(_kept(saved, len(methods), folder)) from None
    except OutputError as error:
        raise OutputError(f"{error}; {_kept(saved, len(methods), folder)}") from None
    return result


def _kept(saved: int, requested: int, folder: os.PathLike[str] | None) -> str:
    """What an interrupted or failed run left on disk: the tables of the ``saved`` methods, not complete."""
    if folder is None:
        return "no --output folder, nothing kept"
    rows = f"the rows explained so far in {os.fspath(Path(folder) / SAMPLES_FOLDER)} (--resume continues)"
    if saved == 0:
        return f"no method finished; kept {rows}"
    methods = f"{saved} finished method{'' if saved == 1 else 's'} of {requested}"
    return f'kept {methods} in {os.fspath(folder)} ("complete": false) and {rows}'


def _timing(
    model: EvaluationModel,
    data: EvaluationData,
    runs: Sequence[MethodRun],
    time_score_cam: bool,
    settings: EVETSettings,
    accelerator: str,
) -> Timing | None:
    """Table 4, when GradCAM ran and ScoreCAM ran too (or ``time_score_cam`` asks for it without a run)."""
    by_method = {run.method: run for run in runs}
    if "GradCAM" not in by_method or not ("ScoreCAM" in by_method or time_score_cam):
        return None
    return measure_timing(model, data, by_method["GradCAM"], settings=settings, accelerator=accelerator)


def _name(value: object) -> Any:
    """A setting as JSON: numbers, text and lists as they are, a callable by its import path, else its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_name(item) for item in value]
    qualname = getattr(value, "__qualname__", None)
    if callable(value) and qualname is not None:
        return f"{getattr(value, '__module__', '?')}:{qualname}"
    return repr(value)


def _settings_record(
    settings: EVETSettings, target: str, deletion_insertion: bool, deletion_steps: int, paper_stability: bool
) -> dict[str, Any]:
    """What ``tables.json`` records of the run's settings."""
    names = (
        "task",
        "activation",
        "alpha",
        "alpha_grid",
        "alpha_objective",
        "threshold",
        "baseline",
        "max_batch_size",
        "target_layers",
    )
    return {
        **{name: _name(getattr(settings, name)) for name in names},
        "transforms": len(settings.transforms or ()),
        "reshape_transform": _name(settings.reshape_transform),
        "output_transform": _name(settings.output_transform),
        "target": target,
        "deletion_insertion": deletion_insertion,
        "deletion_steps": deletion_steps if deletion_insertion else None,
        "paper_stability": paper_stability,
    }


@dataclass
class _Context:
    """What every (partial or final) result of one :func:`evaluate` call shares."""

    model: EvaluationModel
    data: EvaluationData
    methods: list[str]
    settings: EVETSettings
    layer: ExplainedLayer
    record: dict[str, Any]
    deletion_steps: int | None

    def result(
        self, runs: Sequence[MethodRun], *, timing: Timing | None = None, complete: bool = True
    ) -> EvaluationResult:
        accuracies = [run.metrics["val_acc"] for run in runs if "val_acc" in run.metrics]
        pairs = [int(run.metrics[f"{PREFIX}/num_pairs"]) for run in runs if f"{PREFIX}/num_pairs" in run.metrics]
        tables = build_tables(
            runs,
            has_masks=self.data.has_masks,
            timing=timing,
            dataset=self.data.name,
            deletion_steps=self.deletion_steps,
        )
        return EvaluationResult(
            model=self.model.name,
            data=self.data.name,
            num_samples=len(self.data),
            alpha=self.settings.alpha,
            methods=list(self.methods),
            runs=list(runs),
            tables=tables,
            accuracy=accuracies[0] if accuracies else None,
            accuracy_label="explained classes decided as labelled" if self.data.multilabel else "top-1 accuracy",
            num_pairs=pairs[0] if pairs else None,
            complete=complete,
            settings=self.record,
            target_layers=list(self.layer.names),
            layout=self.layer.layout,
        )


def _index_names(data: EvaluationData) -> list[str] | None:
    """Class names by class index, for heatmap labels (the photos' labels are ImageNet indices)."""
    if data.name == "photos":
        from evet_lightning.imagenet import IMAGENET_CATEGORIES

        return list(IMAGENET_CATEGORIES)
    return data.class_names
