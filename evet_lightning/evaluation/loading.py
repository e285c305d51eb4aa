"""Load the classifier ``evet-lightning evaluate --model`` names, with what data loading needs to know about it."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from evet_lightning.evaluation.errors import UsageError
from evet_lightning.functional.perturbation import Normalization
from evet_lightning.imagenet import IMAGENET_NORMALIZATION
from evet_lightning.saliency.reshape import swin_reshape_transform, vit_reshape_transform

__all__ = [
    "RESHAPE_SHORTCUTS",
    "EvaluationModel",
    "ModelKind",
    "import_callable",
    "load_model",
    "load_transform",
    "model_kind",
]

ModelKind = Literal["demo", "efficientnet_lite0", "factory", "torchvision"]


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


def model_kind(spec: str) -> ModelKind:
    """Which of the four ``--model`` forms ``spec`` is (see :func:`load_model`), from its text alone."""
    if spec.startswith("demo:") or spec.endswith(".ckpt"):
        return "demo"
    if spec == "efficientnet_lite0":
        return "efficientnet_lite0"
    if ":" in spec:
        return "factory"
    return "torchvision"


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None) -> EvaluationModel:
    """Load the model ``spec`` names (see ``evet-lightning evaluate --help``), in eval mode on the CPU.

    ``spec`` is one of: ``demo:PATH`` or a path ending in ``.ckpt`` (a :class:`ShapesClassifier` checkpoint, as
    ``evet-lightning demo`` writes); ``efficientnet_lite0`` (ImageNet-pretrained, needs the ``pretrained`` extra);
    a torchvision classification architecture name with ``weights`` (a ``state_dict`` file; nothing is
    downloaded); or ``package.module:factory``, a callable returning an ``nn.Module`` or ``LightningModule``.
    ``weights`` and ``num_classes`` apply to a torchvision architecture only.

    Raises:
        UsageError: a missing file, an unknown name, a factory that cannot be imported or returns something
            else, a missing optional extra, or ``weights``/``num_classes`` for another kind of model.
    """
    kind = model_kind(spec)
    if kind != "torchvision":
        for value, flag in ((weights, "--weights"), (num_classes, "--num-classes")):
            if value is not None:
                raise UsageError(f"{flag} only applies to a torchvision architecture name, not to --model {spec}")
    if kind == "demo":
        return _load_demo_checkpoint(spec.removeprefix("demo:"))
    if kind == "efficientnet_lite0":
        return _load_efficientnet_lite0()
    if kind == "factory":
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
    factory = import_callable(spec, "--model", "package.module:factory")
    attribute = spec.partition(":")[2]
    try:
        module = factory()
    except Exception as error:
        raise UsageError(f"--model {spec}: calling {attribute}() failed: {type(error).__name__}: {error}") from None
    if not isinstance(module, nn.Module):
        raise UsageError(f"--model {spec}: {attribute}() returned {type(module).__name__}, not an nn.Module")
    return EvaluationModel(module=module.eval(), name=spec)


def import_callable(spec: str, flag: str, form: str = "package.module:name") -> Callable[..., Any]:
    """The callable ``package.module:name`` names (``name`` may be dotted: ``module:Class.method``).

    Raises:
        UsageError: ``spec`` is not of that form, the module cannot be imported (or fails while importing), it has
            no such attribute, or the attribute is not callable; the message names ``flag``.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"expected {flag} {form}, but got {spec!r}")
    try:
        imported = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import {module_name!r} for {flag} {spec}: {error}") from None
    except Exception as error:  # the user's module failed while importing: their code, one line
        raise UsageError(
            f"importing {module_name!r} for {flag} {spec} failed: {type(error).__name__}: {error}"
        ) from None
    try:
        value = _attribute_path(imported, attribute)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r} ({flag} {spec})") from None
    if not callable(value):
        raise UsageError(f"{flag} {spec}: {attribute!r} is not callable")
    return value  # type: ignore[no-any-return]


#: ``--reshape-transform`` shortcuts: the package's own reshape transforms, built with their defaults.
RESHAPE_SHORTCUTS: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {
    "vit": vit_reshape_transform,
    "swin": swin_reshape_transform,
}


def load_transform(
    spec: str | None, flag: str, shortcuts: Mapping[str, Callable[[], Callable[..., Any]]] | None = None
) -> Callable[..., Any] | None:
    """The transform ``spec`` names: ``None`` for none, a shortcut's transform (``"vit"`` ->
    ``vit_reshape_transform()``), or the callable at ``package.module:name``, used as the transform itself.

    Raises:
        UsageError: an unknown shortcut, or a ``package.module:name`` that :func:`import_callable` rejects.
    """
    if spec is None:
        return None
    shortcuts = shortcuts or {}
    if spec in shortcuts:
        return shortcuts[spec]()
    if ":" not in spec:
        forms = [*shortcuts, "package.module:name"]
        expected = forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"
        raise UsageError(f"unknown {flag} {spec!r}: expected {expected}")
    return import_callable(spec, flag)


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
    image_size = _vit_image_size(name, state)
    options: dict[str, Any] = {} if image_size is None else {"image_size": image_size}
    module = torchvision.models.get_model(
        name, weights=None, num_classes=num_classes or _classes_in(state) or 1000, **options
    )
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise UsageError(f"--weights {weights} do not fit {name}: {' '.join(first[:2])}") from None
    return EvaluationModel(
        module=module.eval(), name=name, normalization=IMAGENET_NORMALIZATION, image_size=image_size or 224
    )


def _vit_image_size(name: str, state: Mapping[str, Any]) -> int | None:
    """The input side a torchvision ViT's weights were made for, from its position embedding and patch size.

    ``encoder.pos_embedding`` is ``(1, 1 + (S / p)^2, D)`` and ``conv_proj.weight`` ``(D, 3, p, p)``, so a ViT
    built at another ``image_size`` (e.g. 64 px for a quick test) loads with that size. ``None`` for other models.
    """
    if not name.startswith("vit_"):
        return None
    position, projection = state.get("encoder.pos_embedding"), state.get("conv_proj.weight")
    if getattr(position, "ndim", 0) != 3 or getattr(projection, "ndim", 0) != 4:
        return None
    patches = int(position.shape[1]) - 1  # type: ignore[union-attr]
    side = math.isqrt(max(patches, 0))
    if side < 1 or side * side != patches:
        return None
    return side * int(projection.shape[-1])  # type: ignore[union-attr]


def _classes_in(state: Mapping[str, Any]) -> int | None:
    """The number of outputs of the last 2-D weight in a state dict (a classifier's ``Linear``), if any."""
    matrices = [value for key, value in state.items() if key.endswith("weight") and getattr(value, "ndim", 0) == 2]
    return int(matrices[-1].shape[0]) if matrices else None
