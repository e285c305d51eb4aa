"""The settings of ``evet-lightning demo`` and ``evet-lightning evaluate``, one field per command-line option.

Each field's ``metadata=cli_option(...)`` holds its help text, metavar and converter; the command line is
generated from these dataclasses (:mod:`evet_lightning.cli.arguments`), so an option is added, renamed or
documented in one place: its field. Checks that involve several fields (an option that does not apply to the
chosen model or data) happen when the run starts, in :func:`~evet_lightning.evaluation.run_demo` and
:func:`~evet_lightning.evaluation.run_evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evet_lightning.evaluation.data import DEFAULT_EVALUATION_SEED
from evet_lightning.evaluation.devices import Accelerator
from evet_lightning.evaluation.options import (
    alpha_grid_value,
    alpha_value,
    auto_or_positive_int,
    cli_option,
    non_negative_int,
    normalization_value,
    positive_int,
)
from evet_lightning.functional.alpha import DEFAULT_ALPHA_GRID

__all__ = ["DEFAULT_DELETION_STEPS", "AlphaObjectiveName", "DemoConfig", "EvaluateConfig"]

_ACCELERATOR_HELP = "Lightning accelerator (default {default}); a device this machine lacks is an error"

#: Steps of the deletion and insertion curves (docs/design.md, decision 16).
DEFAULT_DELETION_STEPS = 20

#: The objectives ``--alpha-objective`` offers (``evet_lightning.functional.alpha.ALPHA_OBJECTIVES``).
AlphaObjectiveName = Literal["faithful_boost", "average_drop", "increase_in_confidence", "energy_pointing_game"]


_ALPHA_OPTION = cli_option(
    "EVET's boost strength alpha: auto (default) chooses it every explained epoch from --alpha-grid by "
    "--alpha-objective, out of fold (each half of the samples uses the alpha chosen on the other half); a number "
    "fixes it",
    metavar="auto|A",
    convert=alpha_value,
)
_ALPHA_GRID_OPTION = cli_option(
    "the alphas --alpha auto chooses from, comma-separated, ascending (default "
    + ",".join(f"{alpha:g}" for alpha in DEFAULT_ALPHA_GRID)
    + ")",
    metavar="LIST",
    convert=alpha_grid_value,
)
_ALPHA_OBJECTIVE_OPTION = cli_option(
    "what --alpha auto optimizes: faithful_boost (default: the largest alpha whose average drop is within one point "
    "of the grid's best), average_drop, increase_in_confidence or energy_pointing_game (needs object masks)",
    metavar="NAME",
)


@dataclass
class DemoConfig:
    """Settings of ``evet-lightning demo``; the defaults finish in about 30 s on 2 idle CPU cores.

    ``seed`` seeds the weights, the data order and the training images; validation images use ``seed + 1``.
    ``wandb_online`` applies to ``logger="wandb"`` only.
    """

    output: str = field(default="evet_demo", metadata=cli_option("output folder (default ./{default})", metavar="DIR"))
    max_epochs: int = field(
        default=3, metadata=cli_option("training epochs (default {default})", metavar="N", convert=positive_int)
    )
    logger: Literal["wandb", "tensorboard", "csv"] = field(
        default="wandb", metadata=cli_option("where the callback logs (default wandb, offline)")
    )
    num_samples: int = field(
        default=32,
        metadata=cli_option(
            "validation samples the callback explains per epoch (default {default})", metavar="N", convert=positive_int
        ),
    )
    seed: int = field(
        default=0,
        metadata=cli_option(
            "seed of weights, data order and training images (default {default})", metavar="S", convert=non_negative_int
        ),
    )
    train_samples: int = field(
        default=1536, metadata=cli_option("training images (default {default})", metavar="N", convert=positive_int)
    )
    val_samples: int = field(
        default=128, metadata=cli_option("validation images (default {default})", metavar="N", convert=positive_int)
    )
    image_size: int = field(
        default=48,
        metadata=cli_option("image side, at least 16 (default {default})", metavar="PX", convert=positive_int),
    )
    width: int = field(
        default=16,
        metadata=cli_option("channels of the CNN's first block (default {default})", metavar="C", convert=positive_int),
    )
    batch_size: int = field(
        default=16, metadata=cli_option("batch size (default {default})", metavar="B", convert=positive_int)
    )
    cam: str = field(default="GradCAM", metadata=cli_option("the CAM EVET enhances (default {default})"))
    alpha: float | Literal["auto"] = field(default="auto", metadata=_ALPHA_OPTION)
    alpha_grid: tuple[float, ...] = field(default=DEFAULT_ALPHA_GRID, metadata=_ALPHA_GRID_OPTION)
    alpha_objective: AlphaObjectiveName = field(default="faithful_boost", metadata=_ALPHA_OBJECTIVE_OPTION)
    wandb_online: bool = field(
        default=False,
        metadata=cli_option("sync the W&B run online (needs `wandb login`; --logger wandb only); default offline"),
    )
    accelerator: Accelerator = field(default="auto", metadata=cli_option(_ACCELERATOR_HELP))
    progress: bool = field(default=True, metadata=cli_option("hide Lightning's progress bar"))
    task: Literal["multiclass", "multilabel"] = field(
        default="multiclass",
        metadata=cli_option(
            "multiclass (default): one shape per image, cross-entropy, softmax scores; multilabel: 2-3 shapes of "
            "different classes per image, BCEWithLogitsLoss, sigmoid scores, every positive class explained as an "
            "(image, class) pair"
        ),
    )


@dataclass
class EvaluateConfig:
    """Settings of ``evet-lightning evaluate`` (see :func:`~evet_lightning.evaluation.run_evaluation`)."""

    model: str = field(metadata=cli_option("the classifier to explain (see below)"))
    weights: str | None = field(
        default=None, metadata=cli_option("state_dict file for a torchvision architecture", metavar="FILE")
    )
    num_classes: int | None = field(
        default=None,
        metadata=cli_option(
            "outputs of a torchvision architecture (default: read from --weights)", metavar="K", convert=positive_int
        ),
    )
    data: str = field(
        default="synthetic",
        metadata=cli_option(
            "synthetic (default), photos, an image folder, voc:ROOT or coco:IMAGES_DIR,ANNOTATIONS.json (see below)"
        ),
    )
    split: str | None = field(
        default=None,
        metadata=cli_option(
            "the image set of --data voc:ROOT, ImageSets/Segmentation/SPLIT.txt (default test: the paper's 210 images)",
            metavar="SPLIT",
        ),
    )
    normalization: str | None = field(
        default=None,
        metadata=cli_option(
            "the inputs' per-channel normalization, instead of the model's own: imagenet, caffe (RGB 0-255 minus the "
            "mean, no std: TorchRay's VOC and COCO ResNet-50s), none ([0, 1] pixels) or MEAN/STD as R,G,B/R,G,B for "
            "[0, 1] pixels; default: the model's (imagenet for a torchvision architecture, none for a factory)",
            metavar="NAME",
            convert=normalization_value,
        ),
    )
    masks: str | None = field(
        default=None,
        metadata=cli_option("object masks for an image folder (PNG, nonzero = object)", metavar="DIR"),
    )
    methods: str | None = field(
        default=None, metadata=cli_option("comma-separated methods (default: see below)", metavar="LIST")
    )
    num_samples: int = field(
        default=64,
        metadata=cli_option(
            "samples to evaluate: the first N of the data; of voc: and coco: N drawn at random with --seed "
            "(default {default})",
            metavar="N",
            convert=positive_int,
        ),
    )
    output: str = field(
        default="evet_evaluation", metadata=cli_option("output folder (default ./{default})", metavar="DIR")
    )
    alpha: float | Literal["auto"] = field(default="auto", metadata=_ALPHA_OPTION)
    alpha_grid: tuple[float, ...] = field(default=DEFAULT_ALPHA_GRID, metadata=_ALPHA_GRID_OPTION)
    alpha_objective: AlphaObjectiveName = field(default="faithful_boost", metadata=_ALPHA_OBJECTIVE_OPTION)
    alpha_calibration: int = field(
        default=32,
        metadata=cli_option(
            "with --alpha auto, the first K samples calibrate alpha (out of fold inside them); every later sample "
            "uses the alpha chosen on all K (default {default}, at least 2)",
            metavar="K",
            convert=positive_int,
        ),
    )
    image_size: int | None = field(
        default=None,
        metadata=cli_option(
            "image side (default: the model's, e.g. the demo's or 224)", metavar="PX", convert=positive_int
        ),
    )
    seed: int = field(
        default=DEFAULT_EVALUATION_SEED,
        metadata=cli_option(
            "seed of the synthetic images, and of the draw of --num-samples images from voc: or coco: (default "
            "{default})",
            metavar="S",
            convert=non_negative_int,
        ),
    )
    batch_size: int = field(
        default=32, metadata=cli_option("validation batch size (default {default})", metavar="B", convert=positive_int)
    )
    max_batch_size: int | Literal["auto"] = field(
        default="auto",
        metadata=cli_option(
            "at most this many images (views) through the model at once; auto (default): 64 on an accelerator, "
            "on a CPU as many as fit 8 x 224 x 224 pixels",
            metavar="auto|B",
            convert=auto_or_positive_int,
        ),
    )
    reshape_transform: str | None = field(
        default=None,
        metadata=cli_option(
            "how the CAM layer's output becomes a (B, C, h, w) map: vit (tokens with a class token, square grid), "
            "swin (channels last) or package.module:name, a callable activation -> map; default: read the layout "
            "automatically where it is unambiguous",
            metavar="SPEC",
        ),
    )
    output_transform: str | None = field(
        default=None,
        metadata=cli_option(
            "package.module:name, a callable model output -> (B, K) logits, for a model that returns something "
            "other than a tensor, a tuple (logits first), a mapping or an object with .logits",
            metavar="SPEC",
        ),
    )
    deletion_insertion: bool = field(
        default=True,
        metadata=cli_option(
            "skip the deletion / insertion AUC table (RISE; 2 x (steps + 1) forward passes per sample and map)"
        ),
    )
    paper_stability: bool = field(
        default=True,
        metadata=cli_option(
            "skip Table 5's second protocol, the paper's four stability transforms (4 more EVET runs per sample); "
            "the default one, rotate by 5 degrees, stays"
        ),
    )
    deletion_steps: int = field(
        default=DEFAULT_DELETION_STEPS,
        metadata=cli_option(
            "steps of the deletion and insertion curves (default {default})", metavar="S", convert=positive_int
        ),
    )
    heatmaps: int = field(
        default=4,
        metadata=cli_option(
            "samples per heatmap sheet, 0 for none (default {default})", metavar="N", convert=non_negative_int
        ),
    )
    time_score_cam: bool = field(
        default=False,
        metadata=cli_option(
            "Table 4 without a ScoreCAM run: time Grad-CAM* and the un-enhanced Score-CAM on the samples "
            "(needs GradCAM in --methods); Table 3 still needs ScoreCAM in --methods"
        ),
    )
    target: Literal["label", "prediction"] = field(
        default="label",
        metadata=cli_option(
            "the class explained: the sample's label (default) or the model's prediction; use prediction when a "
            "folder's class indices are not the model's (e.g. an ImageNet model on your own folder)"
        ),
    )
    task: Literal["auto", "multiclass", "multilabel", "binary"] = field(
        default="auto",
        metadata=cli_option(
            "how logits become the probability f_k and which classes are explained: multiclass (softmax, one class "
            "per image), multilabel (a sigmoid per class; every positive label, or with --target prediction every "
            "class with sigmoid > 0.5, is one (image, class) pair), binary (one logit); auto (default): multilabel "
            "for voc: and coco:, else multiclass"
        ),
    )
    activation: Literal["sigmoid", "softmax"] | None = field(
        default=None,
        metadata=cli_option(
            "how logits become f_k, instead of the task's: softmax with --task multilabel reproduces the paper's "
            "text (f_k a softmax output on every dataset), sigmoid (multilabel's default) how TorchRay's VOC/COCO "
            "models were trained and are scored"
        ),
    )
    accelerator: Accelerator = field(default="auto", metadata=cli_option(_ACCELERATOR_HELP))
    progress: bool = field(default=True, metadata=cli_option("hide Lightning's progress bar"))
    devices: int = field(
        default=1,
        metadata=cli_option(
            "devices (processes on a CPU) trainer.validate runs on per node (default {default}); more than one "
            "runs Lightning's DDP, one process per device",
            metavar="N",
            convert=positive_int,
        ),
    )
    num_nodes: int = field(
        default=1,
        metadata=cli_option("machines trainer.validate runs on (default {default})", metavar="N", convert=positive_int),
    )
    strategy: str = field(
        default="auto",
        metadata=cli_option(
            "Lightning strategy: auto (default) is ddp_spawn with several devices or nodes (gloo on a CPU), else "
            "one process; or a Lightning strategy name (ddp, ddp_spawn, ...)",
            metavar="NAME",
        ),
    )
    resume: bool = field(
        default=False,
        metadata=cli_option(
            "continue the run recorded in --output: finished methods are not run again, a method's recorded "
            "samples are not explained again; the options must be the recorded run's"
        ),
    )
