"""The main jobs behind ``evet-lightning``: the demo training run and the paper-style evaluation (Tables 1-5).

Both go through :class:`~evet_lightning.EVETCallback` and a Lightning ``Trainer``: the demo attaches the callback
to ``trainer.fit``; the evaluation runs ``trainer.validate`` once per saliency method with the callback attached
and reads the scores from the list ``validate`` returns. There is no second code path for the metrics: the
tables are the callback's logged values, and the few per-sample comparisons the callback does not log (the
"Original" row of Win, Table 3) use the same functional metrics on the per-sample scores the callback kept.

Tables (Oh et al., WACV 2021, Sec. 4.2-4.4), all fractions shown in % unless said otherwise:

- Table 1, faithfulness: average drop (lower is better), increase in confidence and win (higher is better),
  original method against EVET. "Win" of the *Original* row is the fraction of samples where the original map's
  perturbed image keeps more target probability than the EVET map's; of the *w/ EVET* row, the reverse (ties
  count for neither, so the two need not add up to 100).
- Table 2, localization: energy-based pointing game, when the data carries object masks.
- Table 3, EVET-Grad-CAM (Grad-CAM*) against Score-CAM: mean difference of the perturbed-image target
  probabilities (a raw probability difference, not %) and win, for Grad-CAM and Grad-CAM*. Needs both GradCAM
  and ScoreCAM among the methods; Score-CAM's scores are the un-enhanced ("original") scores of its own run.
- Table 4, seconds per image: Grad-CAM* (the whole EVET pipeline) and the un-enhanced Score-CAM, timed on the
  same samples: see :func:`time_per_image`.
- Table 5, stability index of the original and the EVET maps, per method.

A user mistake (a missing path, an unknown method, a model without a spatial layer, a missing optional extra, a
bad ``package.module:factory``) raises :class:`UsageError`, which the CLI prints as one line (exit code 2).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from evet_lightning.callbacks.evet_callback import EVETCallback
from evet_lightning.data.batch import unpack_batch
from evet_lightning.functional import average_difference, win
from evet_lightning.functional.fusion import DEFAULT_ALPHA
from evet_lightning.functional.perturbation import Normalization
from evet_lightning.saliency.evet import EVET, check_evet_arguments
from evet_lightning.visualization.heatmaps import heatmap_panel, write_png

__all__ = [
    "DEFAULT_EVALUATION_SEED",
    "DEFAULT_METHODS",
    "LIGHT_METHODS",
    "METRIC_NAMES",
    "DemoConfig",
    "DemoResult",
    "EvaluationData",
    "EvaluationModel",
    "EvaluationModule",
    "EvaluationResult",
    "MethodRun",
    "Table",
    "TableRow",
    "Timing",
    "UsageError",
    "build_tables",
    "default_methods",
    "display_name",
    "epoch_table_markdown",
    "evaluate",
    "load_data",
    "load_model",
    "parse_methods",
    "run_demo",
    "run_method",
    "time_per_image",
    "write_tables",
]

log = logging.getLogger(__name__)

#: The four methods of the paper's Tables 1 and 2, in its column order.
DEFAULT_METHODS: tuple[str, ...] = ("Gradient", "GradCAM", "GradCAMPlusPlus", "ScoreCAM")
#: The default for the pretrained EfficientNet-Lite0: Score-CAM needs one forward pass per channel of the
#: target layer (1280 for Lite0) for each of EVET's 8 views, minutes per photo on a laptop CPU.
LIGHT_METHODS: tuple[str, ...] = ("Gradient", "GradCAM", "GradCAMPlusPlus")
#: Seed of the synthetic evaluation set; the demo trains on seed 0 and validates on seed 1, so these images
#: are new to the model.
DEFAULT_EVALUATION_SEED = 2021
#: The metrics the callback logs for both the original and the EVET map, in table order.
METRIC_NAMES: tuple[str, ...] = ("average_drop", "increase_in_confidence", "energy_pointing_game", "stability_index")

_DISPLAY_NAMES = {"GradCAM": "Grad-CAM", "GradCAMPlusPlus": "Grad-CAM++", "ScoreCAM": "Score-CAM"}
_PREFIX = "evet"


class UsageError(Exception):
    """A problem the user caused and can fix (bad path, name or option); the CLI prints it as one line."""


def display_name(method: str) -> str:
    """The paper's name of a method: ``"GradCAMPlusPlus"`` -> ``"Grad-CAM++"``; others unchanged."""
    return _DISPLAY_NAMES.get(method, method)


# --------------------------------------------------------------------------------------------- models


@dataclass
class EvaluationModel:
    """A classifier to explain, with what the data loading needs to know about it.

    Args:
        module: returns logits ``(B, K)`` for images ``(B, C, H, W)``.
        name: how the user named it (for the report).
        normalization: ``(mean, std)`` its inputs are normalized with, or ``None`` for ``[0, 1]`` pixels.
        image_size: the input side it was trained on, when known.
        synthetic: :class:`~evet_lightning.data.SyntheticShapes` options it was trained with (from a demo
            checkpoint), so ``--data synthetic`` draws images of the same kind.
        target_layer: the layer a CAM should explain, relative to ``module``, when the model names one.
    """

    module: nn.Module
    name: str
    normalization: Normalization = None
    image_size: int | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)
    target_layer: str | None = None


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None) -> EvaluationModel:
    """Load the model ``spec`` names (see ``evet-lightning evaluate --help``), in eval mode on the CPU.

    ``spec`` is one of: ``demo:PATH`` or a path ending in ``.ckpt`` (a :class:`ShapesClassifier` checkpoint, as
    ``evet-lightning demo`` writes); ``efficientnet_lite0`` (ImageNet-pretrained, needs the ``pretrained`` extra);
    a torchvision classification architecture name with ``weights`` (a ``state_dict`` file; nothing is
    downloaded); or ``package.module:factory``, a callable returning an ``nn.Module`` or ``LightningModule``.

    Raises:
        UsageError: a missing file, an unknown name, a factory that cannot be imported or returns something
            else, or a missing optional extra.
    """
    if spec.startswith("demo:") or spec.endswith(".ckpt"):
        return _load_demo_checkpoint(spec.removeprefix("demo:"))
    if spec == "efficientnet_lite0":
        return _load_efficientnet_lite0()
    if ":" in spec:
        return _load_factory(spec)
    return _load_torchvision(spec, weights, num_classes)


def _existing_file(path: str, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{what} not found: {path}")
    return file


def _load_demo_checkpoint(path: str) -> EvaluationModel:
    from evet_lightning.models import ShapesClassifier

    file = _existing_file(path, "checkpoint")
    try:
        module = ShapesClassifier.load_from_checkpoint(file, map_location="cpu")
        checkpoint = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as error:  # any failure to read it is the file's fault, not ours
        raise UsageError(f"{path} is not a ShapesClassifier checkpoint: {type(error).__name__}: {error}") from None
    options = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    synthetic = {key: options[key] for key in ("image_size", "num_classes", "num_distractors") if key in options}
    synthetic.setdefault("num_classes", int(module.hparams.get("num_classes", 4)))
    image_size = synthetic.get("image_size")
    return EvaluationModel(
        module=module.eval(),
        name=f"demo:{path}",
        image_size=image_size if isinstance(image_size, int) else None,
        synthetic=synthetic,
        target_layer="model.features",
    )


def _load_efficientnet_lite0() -> EvaluationModel:
    try:
        from evet_lightning.models.efficientnet_lite import (
            CAM_TARGET_LAYER,
            LITE0_INPUT_SIZE,
            LITE0_NORMALIZATION,
            efficientnet_lite0,
        )

        module = efficientnet_lite0(pretrained=True)
    except ImportError as error:  # MissingExtraError is an ImportError
        raise UsageError(f"efficientnet_lite0 is not available: {error}") from None
    return EvaluationModel(
        module=module.eval(),
        name="efficientnet_lite0",
        normalization=LITE0_NORMALIZATION,
        image_size=LITE0_INPUT_SIZE,
        target_layer=CAM_TARGET_LAYER,
    )


def _load_factory(spec: str) -> EvaluationModel:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"expected --model package.module:factory, but got {spec!r}")
    try:
        imported = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import {module_name!r} for --model {spec}: {error}") from None
    try:
        factory = _attribute_path(imported, attribute)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r} (--model {spec})") from None
    if not callable(factory):
        raise UsageError(f"--model {spec}: {attribute!r} is not callable")
    try:
        module = factory()
    except Exception as error:
        raise UsageError(f"--model {spec}: calling {attribute}() failed: {type(error).__name__}: {error}") from None
    if not isinstance(module, nn.Module):
        raise UsageError(f"--model {spec}: {attribute}() returned {type(module).__name__}, not an nn.Module")
    return EvaluationModel(module=module.eval(), name=spec)


def _attribute_path(root: object, dotted: str) -> Any:
    value = root
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _load_torchvision(name: str, weights: str | None, num_classes: int | None) -> EvaluationModel:
    import torchvision

    architectures = set(torchvision.models.list_models(module=torchvision.models))
    if name not in architectures:
        raise UsageError(
            f"unknown --model {name!r}: expected demo:PATH, a .ckpt file, efficientnet_lite0, package.module:factory "
            "or a torchvision classification architecture (e.g. resnet18) with --weights"
        )
    if weights is None:
        raise UsageError(f"--model {name} needs --weights PATH (a state_dict file); nothing is downloaded")
    file = _existing_file(weights, "weights file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UsageError(f"cannot read --weights {weights}: {type(error).__name__}: {error}") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise UsageError(f"--weights {weights} does not hold a state_dict")
    module = torchvision.models.get_model(name, weights=None, num_classes=num_classes or _classes_in(state) or 1000)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise UsageError(f"--weights {weights} do not fit {name}: {' '.join(first[:2])}") from None
    return EvaluationModel(module=module.eval(), name=name, normalization=_IMAGENET_NORMALIZATION, image_size=224)


_IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _classes_in(state: Mapping[str, Any]) -> int | None:
    """The number of outputs of the last 2-D weight in a state dict (a classifier's ``Linear``), if any."""
    matrices = [value for key, value in state.items() if key.endswith("weight") and getattr(value, "ndim", 0) == 2]
    return int(matrices[-1].shape[0]) if matrices else None


# --------------------------------------------------------------------------------------------- data


@dataclass
class EvaluationData:
    """The evaluation samples: items ``(image, label)`` or ``(image, label, mask)``.

    Args:
        dataset: the samples, already cut to the requested number.
        name: how the user named the data.
        has_masks: whether items carry object masks (Table 2).
        normalization: ``(mean, std)`` the images are normalized with (passed on to EVET's baseline).
        class_names: names of the labels, when known.
    """

    dataset: Dataset[Any]
    name: str
    has_masks: bool
    normalization: Normalization = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def load_data(
    spec: str,
    model: EvaluationModel,
    num_samples: int,
    *,
    masks: str | None = None,
    image_size: int | None = None,
    seed: int = DEFAULT_EVALUATION_SEED,
) -> EvaluationData:
    """The first ``num_samples`` samples of the data ``spec`` names.

    ``spec``: ``synthetic`` (:class:`~evet_lightning.data.SyntheticShapes` with exact object masks, drawn like the
    demo checkpoint's data when the model is one, from ``seed``), ``photos`` (the bundled photographs,
    :class:`~evet_lightning.data.photos.SamplePhotos`; needs the ``pretrained`` extra) or the path of an
    ``ImageFolder`` (``root/<class>/<image>``), with ``masks`` a folder of PNG object masks at the same relative
    paths (nonzero = object). Folder images are resized (shorter side) and centre-cropped to ``image_size`` (the
    model's own size when known, else 224) and normalized like the model's inputs.

    Raises:
        UsageError: a missing folder or mask, an empty folder, or a missing optional extra.
    """
    if spec == "synthetic":
        data = _synthetic_data(model, image_size, seed, num_samples)
    elif spec == "photos":
        if masks is not None:
            raise UsageError("--masks only applies to an image folder, not to --data photos")
        data = _photo_data(model, image_size)
    else:
        data = _folder_data(spec, model, masks, image_size)
    count = min(num_samples, len(data))
    if count < len(data):
        data.dataset = Subset(data.dataset, range(count))
    return data


def _synthetic_data(model: EvaluationModel, image_size: int | None, seed: int, num_samples: int) -> EvaluationData:
    from evet_lightning.data import SyntheticShapes

    options = dict(model.synthetic)
    if image_size is not None:
        options["image_size"] = image_size
    options.setdefault("image_size", model.image_size or 64)
    try:
        dataset = SyntheticShapes(num_samples=num_samples, seed=seed, **options)
    except ValueError as error:
        raise UsageError(f"--data synthetic: {error}") from None
    return EvaluationData(
        dataset, "synthetic", has_masks=True, normalization=model.normalization, class_names=dataset.classes
    )


def _photo_data(model: EvaluationModel, image_size: int | None) -> EvaluationData:
    try:
        from evet_lightning.data.photos import SamplePhotos
        from evet_lightning.models.efficientnet_lite import LITE0_INPUT_SIZE
    except ImportError as error:
        raise UsageError(f"--data photos is not available: {error}") from None
    normalize = model.normalization is not None
    try:
        photos = SamplePhotos(size=image_size or model.image_size or LITE0_INPUT_SIZE, normalize=False)
    except ImportError as error:  # MissingExtraError
        raise UsageError(f"--data photos is not available: {error}") from None
    if normalize:  # the model's own normalization, whatever it is
        mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in model.normalization)  # type: ignore[union-attr]
        photos.images = (photos.images - mean) / std
    return EvaluationData(
        photos, "photos", has_masks=False, normalization=model.normalization, class_names=photos.class_names
    )


class _ImageFolderWithMasks(Dataset[tuple[Tensor, ...]]):
    """``ImageFolder`` items as ``(image, label[, mask])``, resized and centre-cropped, with optional PNG masks."""

    def __init__(self, root: Path, masks: Path | None, size: int, normalization: Normalization) -> None:
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(os.fspath(root))
        except (FileNotFoundError, RuntimeError) as error:  # no class folders / no images
            raise UsageError(f"--data {root}: {error}") from None
        self.size = size
        self.normalization = normalization
        self.masks: list[Path] | None = None
        if masks is not None:
            paths = [masks / Path(path).relative_to(root).with_suffix(".png") for path, _ in self.folder.samples]
            missing = [path for path in paths if not path.is_file()]
            if missing:
                raise UsageError(f"--masks {masks}: no mask for {len(missing)} image(s), e.g. {missing[0]}")
            self.masks = paths

    def __len__(self) -> int:
        return len(self.folder)

    def _fit(self, image: Tensor, interpolation: Any) -> Tensor:
        from torchvision.transforms.v2 import functional as tf

        image = tf.resize(image, [self.size], interpolation=interpolation, antialias=True)
        return tf.center_crop(image, [self.size, self.size])

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import InterpolationMode

        path, label = self.folder.samples[index]
        image = decode_image(path, mode=ImageReadMode.RGB).float() / 255.0
        image = self._fit(image, InterpolationMode.BILINEAR).clamp(0.0, 1.0)
        if self.normalization is not None:
            mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in self.normalization)
            image = (image - mean) / std
        if self.masks is None:
            return image, torch.tensor(label)
        mask = decode_image(os.fspath(self.masks[index]), mode=ImageReadMode.UNCHANGED)
        mask = self._fit((mask != 0).any(dim=0, keepdim=True).to(torch.uint8), InterpolationMode.NEAREST)
        return image, torch.tensor(label), mask[0] != 0


def _folder_data(spec: str, model: EvaluationModel, masks: str | None, image_size: int | None) -> EvaluationData:
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise UsageError(f"--data {spec}: expected 'synthetic', 'photos' or an image folder, but no such folder")
    mask_root = None
    if masks is not None:
        mask_root = Path(masks).expanduser()
        if not mask_root.is_dir():
            raise UsageError(f"--masks folder not found: {masks}")
    dataset = _ImageFolderWithMasks(root, mask_root, image_size or model.image_size or 224, model.normalization)
    return EvaluationData(
        dataset,
        spec,
        has_masks=mask_root is not None,
        normalization=model.normalization,
        class_names=list(dataset.folder.classes),
    )


# --------------------------------------------------------------------------------------------- one method


class EvaluationModule(pl.LightningModule):
    """The minimal LightningModule ``trainer.validate`` needs around any classifier.

    ``forward`` is the classifier's; the validation step logs the top-1 accuracy (``val_acc``) of the samples
    that have a label. A LightningModule is wrapped too, so its own ``validation_step`` (which may expect
    another batch format) never runs.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> logits ``(B, K)``."""
        return self.model(images)  # type: ignore[no-any-return]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Top-1 accuracy on the labelled samples of the batch (``val_acc``)."""
        images, labels, _ = unpack_batch(batch)
        if labels is None:
            return
        labels = labels.reshape(-1)
        known = labels >= 0
        if bool(known.any()):
            correct = (self(images[known]).argmax(dim=1) == labels[known]).float().mean()
            self.log("val_acc", correct, batch_size=int(known.sum()))


@dataclass
class MethodRun:
    """What one ``trainer.validate`` with :class:`EVETCallback` gave for one method.

    Args:
        method: the CAM name (``"GradCAM"``, ...).
        metrics: the dict ``trainer.validate`` returned (``evet/...`` keys, ``val_acc``), as floats.
        targets: ``(N,)`` the explained class of each sample.
        clean_scores: ``(N,)`` ``Y = f_k(x)``.
        original_scores: ``(N,)`` ``O = f_k(Phi(x, J(x)))`` of the original map.
        evet_scores: ``(N,)`` ``O`` of the EVET map.
        original_maps: ``(N, H, W)`` the original maps (for heatmaps).
        evet_maps: ``(N, H, W)`` the EVET maps.
        seconds_per_image: EVET's time per image as the callback measured it (``last_timing``), when it does.
    """

    method: str
    metrics: dict[str, float]
    targets: Tensor
    clean_scores: Tensor
    original_scores: Tensor
    evet_scores: Tensor
    original_maps: Tensor
    evet_maps: Tensor
    seconds_per_image: float | None = None


def _accelerator_device(accelerator: str) -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's set-up chatter (GPU/TPU availability, worker hints) around an evaluation run."""
    names = (
        "pytorch_lightning.utilities.rank_zero",
        "lightning.pytorch.utilities.rank_zero",
        "pytorch_lightning.accelerators.cuda",
        "lightning.pytorch.accelerators.cuda",
    )
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def run_method(
    model: EvaluationModel,
    data: EvaluationData,
    method: str,
    *,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = 32,
    max_batch_size: int = 64,
    accelerator: str = "auto",
    progress: bool = True,
    root_dir: str | os.PathLike[str] | None = None,
    target: Literal["label", "prediction"] = "label",
) -> MethodRun:
    """``trainer.validate`` over ``data`` with an :class:`EVETCallback` for ``method`` explaining every sample.

    ``target``: the class explained, the sample's label or the model's prediction (see :class:`EVETCallback`).
    """
    target_layer = None if model.target_layer is None or method == "Gradient" else f"model.{model.target_layer}"
    callback = EVETCallback(
        cam=method,
        target_layers=target_layer,
        alpha=alpha,
        normalization=data.normalization,
        max_batch_size=max_batch_size,
        num_samples=len(data),
        log_images=0,
        target=target,
        prefix=_PREFIX,
    )
    loader = DataLoader(data.dataset, batch_size=batch_size, shuffle=False)
    with _quiet_lightning():
        trainer = pl.Trainer(
            accelerator="cpu" if _accelerator_device(accelerator).type == "cpu" else accelerator,
            devices=1,
            logger=False,
            callbacks=[callback],
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            default_root_dir=None if root_dir is None else os.fspath(root_dir),
        )
        results = trainer.validate(EvaluationModule(model.module), dataloaders=loader, verbose=False)
    metrics = {key: float(value) for key, value in results[0].items()}
    outputs = _per_sample_outputs(callback)
    return MethodRun(
        method=method,
        metrics=metrics,
        targets=outputs["targets"],
        clean_scores=outputs["clean_scores"],
        original_scores=outputs["original_scores"],
        evet_scores=outputs["evet_scores"],
        original_maps=outputs["original_maps"],
        evet_maps=outputs["evet_maps"],
        seconds_per_image=_callback_timing(callback),
    )


def _per_sample_outputs(callback: EVETCallback) -> dict[str, Tensor]:
    """The per-sample scores and maps of the callback's last explained epoch (finite samples only)."""
    results = callback.last_results
    if not results:
        raise RuntimeError("EVETCallback explained no sample in trainer.validate")
    finite = torch.cat([result.finite for result in results])
    maps = {
        "original_maps": torch.cat([result.original for result in results])[finite],
        "evet_maps": torch.cat([result.saliency for result in results])[finite],
    }
    outputs = getattr(callback, "last_outputs", None)
    if isinstance(outputs, Mapping):
        keys = ("targets", "clean_scores", "original_scores", "evet_scores")
        return {**{key: outputs[key].detach().cpu() for key in keys}, **maps}
    evet_scores = [result.saliency_scores for result in results]
    assert all(scores is not None for scores in evet_scores)
    return {
        "targets": torch.cat([result.targets for result in results])[finite],
        "clean_scores": torch.cat([result.clean_scores for result in results])[finite],
        "original_scores": torch.cat([result.view_scores[0] for result in results])[finite],
        "evet_scores": torch.cat(evet_scores)[finite],  # type: ignore[arg-type]
        **maps,
    }


def _callback_timing(callback: EVETCallback) -> float | None:
    """EVET's seconds per image in the callback's last run, when the callback measures it."""
    timing = getattr(callback, "last_timing", None)
    if isinstance(timing, Mapping) and timing.get("seconds_per_image") is not None:
        return float(timing["seconds_per_image"])
    return None


def _images(data: EvaluationData) -> Tensor:
    return torch.stack([unpack_batch(tuple(data.dataset[index]))[0] for index in range(len(data))])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_image(
    model: EvaluationModel,
    images: Tensor,
    targets: Tensor,
    *,
    cam: str = "ScoreCAM",
    enhance: bool = False,
    normalization: Normalization = None,
    alpha: float = DEFAULT_ALPHA,
    max_batch_size: int = 64,
    accelerator: str = "auto",
) -> tuple[float, float]:
    """Seconds per image (mean, standard deviation over images) of ``cam`` through the engine, one image per call.

    ``enhance=False`` times the un-enhanced method, ``EVET(...).explain(image, target)`` (view 0 only: one
    Score-CAM); ``enhance=True`` the whole EVET pipeline ``EVET(...)(image, target)``. One image per call, as in
    the paper's Table 4; the model runs on the accelerator's device. One untimed warm-up call on the first image
    comes first (lazy initialization, allocator), and pytorch-grad-cam's per-call progress bars are hidden.
    """
    device = _accelerator_device(accelerator)
    module = model.module.to(device)
    target_layer = None if model.target_layer is None or cam == "Gradient" else model.target_layer
    engine = EVET(
        module,
        target_layers=target_layer,
        cam=cam,
        alpha=alpha,
        normalization=normalization,
        max_batch_size=max_batch_size,
    )
    run = engine.__call__ if enhance else engine.explain
    seconds = []
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            run(images[:1].to(device), targets[:1].to(device))
            for index in range(images.shape[0]):
                image, target = images[index : index + 1].to(device), targets[index : index + 1].to(device)
                _synchronize(device)
                start = time.perf_counter()
                run(image, target)
                _synchronize(device)
                seconds.append(time.perf_counter() - start)
    finally:
        model.module.to("cpu")
    return statistics.fmean(seconds), statistics.stdev(seconds) if len(seconds) > 1 else 0.0


# --------------------------------------------------------------------------------------------- tables


@dataclass
class TableRow:
    """One row: a label (blank for a metric's continuation rows), a variant (``Original`` / ``w/ EVET``), values.

    ``digits`` overrides the table's number of decimals for this row.
    """

    metric: str
    variant: str
    values: list[float | None]
    digits: int | None = None


@dataclass
class Table:
    """A table in the paper's layout. ``digits`` decimals; ``None`` values print as ``-``.

    The variant column is shown only when some row has a variant; ``row_header`` names the first column.
    """

    key: str
    title: str
    columns: list[str]
    rows: list[TableRow]
    digits: int = 1
    notes: list[str] = field(default_factory=list)
    row_header: str = "Metric"

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
        for row in self.rows:
            labels = [row.metric, row.variant] if variants else [row.metric]
            cells = [self.cell(value, row.digits) for value in row.values]
            lines.append("| " + " | ".join([*labels, *cells]) + " |")
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


@dataclass
class Timing:
    """Table 4: seconds per image ``(mean, std)`` of Grad-CAM* and Score-CAM, timed alike (:func:`time_per_image`).

    ``callback`` is Grad-CAM*'s seconds per image inside :class:`EVETCallback` (batched), when it measures it.
    """

    grad_cam_star: tuple[float, float]
    score_cam: tuple[float, float]
    callback: float | None = None


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def build_tables(
    runs: Sequence[MethodRun],
    *,
    has_masks: bool,
    timing: Timing | None = None,
    dataset: str = "",
) -> list[Table]:
    """Tables 1-5 from the per-method runs (Table 2 only with masks; 3 and 4 only with GradCAM and ScoreCAM)."""
    columns = [display_name(run.method) for run in runs]
    key = f"{_PREFIX}/{{}}/{{}}"

    def metric(name: str, variant: str) -> list[float | None]:
        return [_percent(run.metrics.get(key.format(variant, name))) for run in runs]

    original_wins = [100.0 * float(win(run.original_scores, run.evet_scores)) for run in runs]
    evet_wins = [_percent(run.metrics.get(f"{_PREFIX}/win")) for run in runs]
    tables = [
        Table(
            "table1",
            "Table 1: faithfulness (%), original vs EVET; average drop lower is better, increase in confidence "
            "and win higher is better",
            columns,
            [
                TableRow("Average drop (%)", "Original", metric("average_drop", "original")),
                TableRow("", "w/ EVET", metric("average_drop", "evet")),
                TableRow("Increase in confidence (%)", "Original", metric("increase_in_confidence", "original")),
                TableRow("", "w/ EVET", metric("increase_in_confidence", "evet")),
                TableRow("Win (%)", "Original", original_wins),  # type: ignore[arg-type]
                TableRow("", "w/ EVET", evet_wins),
            ],
            notes=[
                "Win: share of samples whose perturbed-image target probability is higher with that map than "
                "with the other (ties count for neither)."
            ],
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
                    TableRow("", "w/ EVET", metric("energy_pointing_game", "evet")),
                ],
            )
        )
    by_method = {run.method: run for run in runs}
    if "GradCAM" in by_method and "ScoreCAM" in by_method:
        tables.append(_score_cam_table(by_method["GradCAM"], by_method["ScoreCAM"]))
    if timing is not None:
        tables.append(_timing_table(timing, dataset))
    tables.append(
        Table(
            "table5",
            "Table 5: stability index under the callback's stability transforms (default: rotate by 5 degrees, "
            "not one of EVET's); higher is better",
            ["Original", "w/ EVET"],
            [
                TableRow(
                    display_name(run.method),
                    "",
                    [
                        run.metrics.get(key.format("original", "stability_index")),
                        run.metrics.get(key.format("evet", "stability_index")),
                    ],
                )
                for run in runs
            ],
            digits=3,
            row_header="Method",
        )
    )
    return tables


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


# --------------------------------------------------------------------------------------------- evaluate


@dataclass
class EvaluationResult:
    """Everything ``evaluate`` produced: the runs, the tables, and where it wrote files."""

    model: str
    data: str
    num_samples: int
    alpha: float
    methods: list[str]
    runs: list[MethodRun]
    tables: list[Table]
    accuracy: float | None
    files: dict[str, str] = field(default_factory=dict)

    def markdown(self) -> str:
        """The header line and every table, as printed by ``evet-lightning evaluate``."""
        accuracy = "" if self.accuracy is None else f", top-1 accuracy {100.0 * self.accuracy:.1f}%"
        header = (
            f"EVET evaluation: model {self.model}, data {self.data}, {self.num_samples} samples{accuracy}, "
            f"alpha {self.alpha:g}"
        )
        return "\n\n".join([header, *(table.markdown() for table in self.tables)])


def parse_methods(text: str) -> list[str]:
    """``"GradCAM,ScoreCAM"`` -> ``["GradCAM", "ScoreCAM"]``, each checked by the engine's own argument check.

    Raises:
        UsageError: an empty list, a repeated method or an unknown one.
    """
    methods = [part.strip() for part in text.split(",") if part.strip()]
    if not methods:
        raise UsageError("--methods is empty")
    repeated = sorted({method for method in methods if methods.count(method) > 1})
    if repeated:
        raise UsageError(f"--methods names {', '.join(repeated)} more than once")
    for method in methods:
        try:
            check_evet_arguments(cam=method)
        except ValueError as error:
            raise UsageError(f"unknown method {method!r} in --methods: {error}") from None
    return methods


def default_methods(model_spec: str, data_spec: str) -> list[str]:
    """The methods ``evaluate`` runs when ``--methods`` is not given.

    All four of the paper's methods, except for the pretrained EfficientNet-Lite0 (or the photos), where
    Score-CAM costs minutes per photo on a CPU: there :data:`LIGHT_METHODS` (add ScoreCAM for Tables 3-4).
    """
    heavy = model_spec == "efficientnet_lite0" or data_spec == "photos"
    return list(LIGHT_METHODS if heavy else DEFAULT_METHODS)


def _check_spatial_layer(model: EvaluationModel, data: EvaluationData, methods: Sequence[str]) -> None:
    """Fail before any work when a CAM method has no spatial layer to explain (a user error, e.g. an MLP)."""
    sample = unpack_batch(tuple(data.dataset[0]))[0].unsqueeze(0)
    for method in methods:
        if method == "Gradient":
            continue
        try:
            EVET(model.module, target_layers=model.target_layer, cam=method).resolve_target_layers(sample)
        except ValueError as error:
            raise UsageError(f"{method} cannot explain {model.name}: {error}") from None
        except Exception as error:
            raise UsageError(
                f"{model.name} fails on the data ({tuple(sample.shape)}): {type(error).__name__}: {error}"
            ) from None
        return  # every CAM resolves the same layer


def evaluate(
    model: EvaluationModel,
    data: EvaluationData,
    methods: Sequence[str],
    *,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = 32,
    max_batch_size: int = 64,
    accelerator: str = "auto",
    progress: bool = True,
    output: str | os.PathLike[str] | None = None,
    heatmaps: int = 4,
    target: Literal["label", "prediction"] = "label",
    time_score_cam: bool = False,
) -> EvaluationResult:
    """Run ``trainer.validate`` with :class:`EVETCallback` once per method and build Tables 1-5.

    With GradCAM among the methods and ScoreCAM too (or ``time_score_cam``, which skips Score-CAM's own,
    costly, EVET run: no Table 3 then), Table 4 times Grad-CAM* and the un-enhanced Score-CAM alike
    (:func:`time_per_image`) on the same samples. With ``output``, writes ``tables.json``, ``tables.csv``,
    ``tables.md`` and one heatmap sheet per method (``heatmaps/<method>.png``, the first ``heatmaps`` samples:
    image | original | EVET).
    """
    if len(data) == 0:
        raise UsageError(f"--data {data.name} has no samples")
    _check_spatial_layer(model, data, methods)
    runs = []
    for method in methods:
        log.info("evaluate: %s on %d samples", method, len(data))
        runs.append(
            run_method(
                model,
                data,
                method,
                alpha=alpha,
                batch_size=batch_size,
                max_batch_size=max_batch_size,
                accelerator=accelerator,
                progress=progress,
                root_dir=output,
                target=target,
            )
        )
    by_method = {run.method: run for run in runs}
    timing = None
    if "GradCAM" in by_method and ("ScoreCAM" in by_method or time_score_cam):
        images, targets = _images(data), by_method["GradCAM"].targets
        options: dict[str, Any] = {
            "normalization": data.normalization,
            "max_batch_size": max_batch_size,
            "accelerator": accelerator,
        }
        timing = Timing(
            grad_cam_star=time_per_image(model, images, targets, cam="GradCAM", enhance=True, alpha=alpha, **options),
            score_cam=time_per_image(model, images, targets, cam="ScoreCAM", **options),
            callback=by_method["GradCAM"].seconds_per_image,
        )
    accuracies = [run.metrics["val_acc"] for run in runs if "val_acc" in run.metrics]
    result = EvaluationResult(
        model=model.name,
        data=data.name,
        num_samples=len(data),
        alpha=alpha,
        methods=list(methods),
        runs=runs,
        tables=build_tables(runs, has_masks=data.has_masks, timing=timing, dataset=data.name),
        accuracy=accuracies[0] if accuracies else None,
    )
    if output is not None:
        result.files = write_tables(result, output)
        if heatmaps > 0:
            result.files.update(_write_heatmap_sheets(result, data, output, heatmaps))
    return result


def write_tables(result: EvaluationResult, output: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``tables.json`` (tables, per-method validate dicts, settings), ``tables.csv`` and ``tables.md``."""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": result.model,
        "data": result.data,
        "num_samples": result.num_samples,
        "alpha": result.alpha,
        "methods": result.methods,
        "accuracy": result.accuracy,
        "validate": {run.method: run.metrics for run in result.runs},
        "tables": [asdict(table) for table in result.tables],
    }
    paths = {"json": folder / "tables.json", "csv": folder / "tables.csv", "markdown": folder / "tables.md"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["table", "metric", "variant", "column", "value"])
        writer.writeheader()
        for table in result.tables:
            writer.writerows(table.records())
    paths["markdown"].write_text(result.markdown() + "\n")
    return {name: os.fspath(path) for name, path in paths.items()}


def heatmap_sheet(
    images: Tensor, original: Tensor, saliency: Tensor, normalization: Normalization = None, min_height: int = 128
) -> Tensor:
    """Rows ``image | original overlay | EVET overlay`` stacked vertically, ``(3, rows * H, 3 W)`` uint8.

    Small images are enlarged (nearest neighbour) to at least ``min_height`` pixels per row.
    """
    panels = heatmap_panel(images, original, saliency, normalization)
    factor = max(1, math.ceil(min_height / panels.shape[-2]))
    panels = panels.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return torch.cat(list(panels), dim=-2)


def _write_heatmap_sheets(
    result: EvaluationResult, data: EvaluationData, output: str | os.PathLike[str], count: int
) -> dict[str, str]:
    images = _images(data)
    paths = {}
    for run in result.runs:
        rows = min(count, run.original_maps.shape[0], images.shape[0])
        path = Path(output) / "heatmaps" / f"{run.method}.png"
        write_png(
            heatmap_sheet(images[:rows], run.original_maps[:rows], run.evet_maps[:rows], data.normalization), path
        )
        paths[f"heatmaps/{run.method}"] = os.fspath(path)
    return paths


# --------------------------------------------------------------------------------------------- demo


@dataclass
class DemoConfig:
    """Settings of ``evet-lightning demo``; the defaults finish in about a minute on 2 CPU cores.

    Args:
        output: folder for everything the run writes.
        max_epochs: training epochs; the callback explains after every one.
        logger: ``"wandb"`` (offline unless ``wandb_online``), ``"tensorboard"`` or ``"csv"``.
        num_samples: validation samples the callback explains per epoch.
        seed: training seed (weights, data order, training images; validation uses ``seed + 1``).
        train_samples: synthetic training images.
        val_samples: synthetic validation images.
        image_size: image side in pixels.
        width: channels of the first block of the :class:`~evet_lightning.models.SmallCNN`.
        batch_size: training and validation batch size.
        cam: the CAM the callback enhances.
        alpha: EVET's boost strength.
        wandb_online: sync the W&B run (needs ``wandb login``).
        accelerator: Lightning accelerator.
        progress: show Lightning's progress bar.
    """

    output: str = "evet_demo"
    max_epochs: int = 3
    logger: Literal["wandb", "tensorboard", "csv"] = "wandb"
    num_samples: int = 32
    seed: int = 0
    train_samples: int = 1536
    val_samples: int = 128
    image_size: int = 48
    width: int = 16
    batch_size: int = 32
    cam: str = "GradCAM"
    alpha: float = DEFAULT_ALPHA
    wandb_online: bool = False
    accelerator: str = "auto"
    progress: bool = True


@dataclass
class DemoResult:
    """The per-epoch history and the files ``run_demo`` wrote."""

    history: list[dict[str, float]]
    files: dict[str, str]
    seconds: float


#: Keys of each ``metrics.json`` epoch record besides the callback's ``evet/...`` keys.
DEMO_EPOCH_KEYS = ("epoch", "global_step", "val_acc", "val_loss", "train_loss")


class _EpochHistory(pl.Callback):
    """Records every logged scalar after each (non-sanity) validation run, and renders the callback's heatmaps."""

    def __init__(self, evet_callback: EVETCallback, images: Tensor, folder: Path, rows: int) -> None:
        self.evet_callback = evet_callback
        self.images = images
        self.folder = folder
        self.rows = rows
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record: dict[str, float] = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                record[key] = float(value)
        self.history.append(record)
        results = self.evet_callback.last_results
        if trainer.is_global_zero and results and self.rows > 0:
            original = torch.cat([result.original for result in results])[: self.rows]
            saliency = torch.cat([result.saliency for result in results])[: self.rows]
            sheet = heatmap_sheet(self.images[: original.shape[0]], original, saliency)
            write_png(sheet, self.folder / f"epoch_{trainer.current_epoch:03d}.png")


def _demo_logger(config: DemoConfig, folder: Path) -> Any:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    if config.logger == "csv":
        return CSVLogger(save_dir=os.fspath(folder), name="csv")
    if config.logger == "tensorboard":
        try:
            return TensorBoardLogger(save_dir=os.fspath(folder), name="tensorboard")
        except ModuleNotFoundError as error:
            raise UsageError(f"--logger tensorboard needs tensorboard: {error}") from None
    if config.logger != "wandb":
        raise UsageError(f"--logger must be wandb, tensorboard or csv, not {config.logger!r}")
    if config.wandb_online:
        import wandb

        if not wandb.login(prompt=False):  # checks for stored credentials, never prompts
            raise UsageError("--wandb-online needs a W&B login: run `wandb login` first (or drop --wandb-online)")
    else:
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        project="evet-lightning", name="demo", save_dir=os.fspath(folder), offline=not config.wandb_online
    )


def run_demo(config: DemoConfig) -> DemoResult:
    """Train :class:`ShapesClassifier` on synthetic shapes with :class:`EVETCallback` attached; write the results.

    Writes to ``config.output``: ``metrics.json`` (settings and one record per epoch: ``epoch``, ``global_step``,
    ``val_acc``, ``val_loss``, ``train_loss`` (last step) and every ``evet/...`` key the callback logged),
    ``metrics.png`` (every metric over the epochs, original vs EVET), ``heatmaps/epoch_XXX.png`` (image |
    original | EVET for the first samples the callback explained), ``model.ckpt`` (``evaluate --model`` loads
    it) and the logger's folder (``wandb/`` offline run, ``tensorboard/`` or ``csv/``). With W&B or TensorBoard
    the callback also logs its heatmaps there.
    """
    from evet_lightning.data import SyntheticShapesDataModule
    from evet_lightning.models import ShapesClassifier
    from evet_lightning.visualization.plots import plot_metric_history

    start = time.perf_counter()
    folder = Path(config.output)
    folder.mkdir(parents=True, exist_ok=True)
    logger = _demo_logger(config, folder)
    pl.seed_everything(config.seed, verbose=False)
    try:
        datamodule = SyntheticShapesDataModule(
            train_samples=config.train_samples,
            val_samples=config.val_samples,
            image_size=config.image_size,
            batch_size=config.batch_size,
            seed=config.seed,
        )
        classifier = ShapesClassifier(width=config.width)
        evet_callback = EVETCallback(
            cam=config.cam, alpha=config.alpha, num_samples=config.num_samples, log_images=min(8, config.num_samples)
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    rows = min(4, config.num_samples, config.val_samples)
    images = torch.stack([datamodule.val_set[index][0] for index in range(rows)])
    history = _EpochHistory(evet_callback, images, folder / "heatmaps", rows)
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=config.max_epochs,
            accelerator=config.accelerator,
            devices=1,
            logger=logger,
            callbacks=[evet_callback, history],
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=config.progress,
            default_root_dir=os.fspath(folder),
            log_every_n_steps=1,
        )
        trainer.fit(classifier, datamodule=datamodule)
    files = {"checkpoint": os.fspath(folder / "model.ckpt")}
    trainer.save_checkpoint(files["checkpoint"], weights_only=False)
    if config.logger == "wandb":
        import wandb

        files["wandb"] = os.fspath(Path(logger.experiment.dir).parent)
        wandb.finish()
    else:
        files[config.logger] = os.fspath(logger.log_dir)
    seconds = time.perf_counter() - start
    settings = {key: value for key, value in asdict(config).items() if key != "progress"}
    files["metrics"] = os.fspath(folder / "metrics.json")
    Path(files["metrics"]).write_text(
        json.dumps({"config": settings, "seconds": seconds, "epochs": history.history}, indent=2) + "\n"
    )
    files["plot"] = os.fspath(plot_metric_history(history.history, folder / "metrics.png"))
    files["heatmaps"] = os.fspath(folder / "heatmaps")
    return DemoResult(history=history.history, files=files, seconds=seconds)


def epoch_table_markdown(history: Sequence[Mapping[str, float]], prefix: str = _PREFIX) -> str:
    """Per-epoch markdown table: validation accuracy and each metric as ``original -> EVET`` (in %)."""
    names = [name for name in METRIC_NAMES if any(f"{prefix}/original/{name}" in record for record in history)]
    arrows = {"average_drop": "↓"}
    units = {"stability_index": ""}
    header = [
        "epoch",
        "val acc (%)",
        *(f"{name.replace('_', ' ')}{units.get(name, ' (%)')} {arrows.get(name, '↑')}" for name in names),
        "win EVET>orig (%)",
    ]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---:"] * len(header)) + " |"]
    for record in history:
        cells = [str(int(record["epoch"])), _format_percent(record.get("val_acc"))]
        for name in names:
            original, enhanced = record.get(f"{prefix}/original/{name}"), record.get(f"{prefix}/evet/{name}")
            show = _format_fraction if name == "stability_index" else _format_percent
            cells.append(f"{show(original)} -> {show(enhanced)}")
        cells.append(_format_percent(record.get(f"{prefix}/win")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format_percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def _format_fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
