"""The main jobs behind ``evet-lightning``: the demo training run and the paper-style evaluation (Tables 1-5).

Both go through :class:`~evet_lightning.EVETCallback` and a Lightning ``Trainer``: the demo attaches the callback
to ``trainer.fit`` (:mod:`.demo`); the evaluation runs ``trainer.validate`` once per saliency method with the
callback attached (:mod:`.runner`) and reads the scores from the list ``validate`` returns (:mod:`.tables`).
There is no second code path for the metrics.

Modules, bottom to top: :mod:`.errors` (:class:`UsageError`), :mod:`.options` (command-line metadata of
configuration fields), :mod:`.devices`, :mod:`.names`, :mod:`.loading` (``--model``), :mod:`.data` (``--data``),
:mod:`.records`, :mod:`.tables`, :mod:`.outputs` (files), :mod:`.checks` (before the run), :mod:`.config`
(:class:`DemoConfig`, :class:`EvaluateConfig`), :mod:`.settings` (one ``EVETSettings`` from a config, and the
callback from it), :mod:`.runner`, :mod:`.timing` (Table 4), :mod:`.pipeline` (:func:`evaluate`,
:func:`run_evaluation`) and :mod:`.demo` (:func:`run_demo`).

A user mistake (a missing path, an unknown method, a model without a spatial layer, a missing optional extra, a
bad ``package.module:factory``, an option that does not apply, a device that is not there, an unwritable
output folder, a corrupt image) raises :class:`UsageError`, which the CLI prints as one line (exit code 2). A
file that cannot be written mid-run raises :class:`OutputError` (exit code 74), Ctrl+C :class:`Interrupted`
(exit code 130); both keep what finished.
"""

from evet_lightning.evaluation.checks import ExplainedLayer, check_memory, check_model_outputs, check_spatial_layer
from evet_lightning.evaluation.config import DemoConfig, EvaluateConfig
from evet_lightning.evaluation.data import DEFAULT_EVALUATION_SEED, EvaluationData, load_data
from evet_lightning.evaluation.demo import (
    DEMO_EPOCH_KEYS,
    DemoResult,
    epoch_table_markdown,
    last_epoch_intervals,
    run_demo,
)
from evet_lightning.evaluation.devices import ACCELERATORS, Accelerator, accelerator_device, check_accelerator
from evet_lightning.evaluation.errors import Interrupted, OutputError, UsageError
from evet_lightning.evaluation.loading import (
    RESHAPE_SHORTCUTS,
    EvaluationModel,
    import_callable,
    load_model,
    load_transform,
    model_kind,
)
from evet_lightning.evaluation.names import (
    DEFAULT_METHODS,
    LIGHT_METHODS,
    METRIC_NAMES,
    PREFIX,
    default_methods,
    display_name,
    parse_methods,
)
from evet_lightning.evaluation.outputs import (
    check_output,
    prepare_output,
    write_heatmap_sheet,
    write_tables,
)
from evet_lightning.evaluation.pipeline import evaluate, run_evaluation
from evet_lightning.evaluation.records import MethodRun, Timing
from evet_lightning.evaluation.runner import EvaluationModule, default_settings, evaluation_callback, run_method
from evet_lightning.evaluation.settings import make_callback, settings_from_config
from evet_lightning.evaluation.tables import EvaluationResult, Table, TableRow, build_tables, direction_mark
from evet_lightning.evaluation.timing import time_per_image

__all__ = [
    "ACCELERATORS",
    "DEFAULT_EVALUATION_SEED",
    "DEFAULT_METHODS",
    "DEMO_EPOCH_KEYS",
    "LIGHT_METHODS",
    "METRIC_NAMES",
    "PREFIX",
    "RESHAPE_SHORTCUTS",
    "Accelerator",
    "DemoConfig",
    "DemoResult",
    "EvaluateConfig",
    "EvaluationData",
    "EvaluationModel",
    "EvaluationModule",
    "EvaluationResult",
    "ExplainedLayer",
    "Interrupted",
    "MethodRun",
    "OutputError",
    "Table",
    "TableRow",
    "Timing",
    "UsageError",
    "accelerator_device",
    "build_tables",
    "check_accelerator",
    "check_memory",
    "check_output",
    "check_model_outputs",
    "check_spatial_layer",
    "default_methods",
    "default_settings",
    "direction_mark",
    "display_name",
    "epoch_table_markdown",
    "last_epoch_intervals",
    "evaluate",
    "evaluation_callback",
    "import_callable",
    "load_data",
    "load_model",
    "load_transform",
    "make_callback",
    "model_kind",
    "parse_methods",
    "prepare_output",
    "run_demo",
    "run_evaluation",
    "run_method",
    "settings_from_config",
    "time_per_image",
    "write_heatmap_sheet",
    "write_tables",
]
