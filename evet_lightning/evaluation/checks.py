"""Checks before the long run: each turns a mistake that would fail (or mislead) later into an error now.

- a CAM method with no spatial layer to explain, and a ``--reshape-transform`` that does not turn that layer's
  output into a plausible ``(B, C, h, w)`` map (tried on one sample);
- labels the model has no output for (a 4-class model on ImageNet photos): an error, unless the explained
  class is the prediction (``target="prediction"``);
- a model that outputs probabilities or log-probabilities instead of logits: a warning
  (:func:`~evet_lightning.saliency.outputs.not_logits`, which EVET itself also checks once per engine);
- more samples than memory can hold: the callback keeps every sample and both maps of each until the end of
  its ``validate`` run (the evaluation itself keeps only the maps its heatmap sheets show).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from evet_lightning._model_state import model_state_guard
from evet_lightning.data.batch import unpack_batch
from evet_lightning.evaluation.data import EvaluationData
from evet_lightning.evaluation.errors import UsageError
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.saliency.evet import EVET
from evet_lightning.saliency.outputs import OutputTransform, logits_from_output, not_logits
from evet_lightning.saliency.reshape import FeatureLayout, infer_layout
from evet_lightning.saliency.settings import EVETSettings

__all__ = [
    "ExplainedLayer",
    "available_memory",
    "check_memory",
    "check_model_outputs",
    "check_reshape_transform",
    "check_spatial_layer",
    "estimate_memory",
]

log = logging.getLogger(__name__)

#: Samples the output check runs the model on.
_PROBE_SAMPLES = 4


@dataclass(frozen=True)
class ExplainedLayer:
    """The layer every CAM method explains, as found before the run.

    ``names``: dotted names in the model (empty when no CAM method runs). ``layout``: how its output is read as a
    ``(B, C, h, w)`` map, e.g. ``"tokens (B, 1 + 14 x 14, C)"`` when read automatically, or
    ``"--reshape-transform"`` when given.
    """

    names: list[str]
    layout: str | None = None


def check_spatial_layer(
    model: EvaluationModel,
    data: EvaluationData,
    methods: Sequence[str],
    settings: EVETSettings | None = None,
    transform_name: str | None = None,
) -> ExplainedLayer:
    """Find the layer the CAM methods explain (the model's own, or auto-detected as :class:`EVET` does) and how its
    output reads as a map; fail before any work when there is none (a user error, e.g. an MLP).

    ``settings``: the run's EVET settings (``target_layers``, ``reshape_transform`` and ``output_transform`` are
    used); default: the model's own target layer. ``transform_name``: how the user named the reshape transform
    (``"vit"``), for the error message; default: its import path.

    Raises:
        UsageError: no spatial layer, an output that cannot be read as a map, or a model that fails on the data.
    """
    settings = settings or EVETSettings(target_layers=model.target_layer)
    sample = unpack_batch(tuple(data.dataset[0]))[0].unsqueeze(0)
    cams = [method for method in methods if method != "Gradient"]
    if not cams:
        return _no_layer(settings, methods, transform_name)
    names: list[str] = []
    method = cams[0]
    try:
        for method in cams:  # every CAM resolves the same layer; input attributions (captum:Saliency, ...) none
            names = _target_layers(model.module, sample, settings.replace(cam=method), transform_name)
            if names:
                break
        if not names:
            return _no_layer(settings, methods, transform_name)
        layout = _layout(model.module, names, sample, settings, transform_name)
    except UsageError:
        raise
    except ValueError as error:
        raise UsageError(f"{method} cannot explain {model.name}: {error}") from None
    except Exception as error:
        raise UsageError(
            f"{model.name} fails on the data ({tuple(sample.shape)}): {type(error).__name__}: {error}"
        ) from None
    return ExplainedLayer(names, layout)


def _no_layer(settings: EVETSettings, methods: Sequence[str], transform_name: str | None) -> ExplainedLayer:
    """No method explains a layer (only input attributions): a reshape transform would go unused, so it is refused."""
    if settings.reshape_transform is not None:
        name = transform_name or _callable_name(settings.reshape_transform)
        raise UsageError(
            f"--reshape-transform {name} applies only to methods that explain a layer (the CAMs, Captum's layer "
            f"methods), and --methods {','.join(methods)} has none"
        )
    return ExplainedLayer([])


def _target_layers(module: nn.Module, sample: Tensor, settings: EVETSettings, transform_name: str | None) -> list[str]:
    """The layers :class:`EVET` explains with ``settings``.

    Auto-detection reads every candidate layer with the reshape transform, so a broken transform leaves no layer
    to explain; the transform is then tried on the layer found without it, whose error says what is wrong.

    Raises:
        ValueError: no layer to explain.
        UsageError: the reshape transform fails on the layer found without it.
    """
    try:
        return EVET.from_settings(module, settings).resolve_target_layers(sample)
    except ValueError:
        if settings.reshape_transform is None:
            raise
        plain = EVET.from_settings(module, settings.replace(reshape_transform=None))
        with contextlib.suppress(ValueError):
            plain_names = plain.resolve_target_layers(sample)
            if plain_names:
                _layout(module, plain_names, sample, settings, transform_name)
        raise


def _layout(
    module: nn.Module, names: Sequence[str], sample: Tensor, settings: EVETSettings, transform_name: str | None = None
) -> str:
    """How the output of the layers ``names`` reads as a map (the first one's reading), from one forward pass of
    ``sample``; with ``settings.reshape_transform``, that transform tried on each layer's output.

    Raises:
        ValueError: a layer outputs no tensor, or no reading of its output is unambiguous.
        UsageError: the reshape transform fails, or gives something other than a plausible map.
    """
    outputs = _layer_outputs(module, names, sample)
    size = (int(sample.shape[-2]), int(sample.shape[-1]))
    if settings.reshape_transform is None:
        layer = module.get_submodule(names[0])
        return infer_layout(outputs[0].shape, layer, module, image_size=size, batch_size=1, name=names[0]).describe()
    for name, output in zip(names, outputs, strict=True):
        try:
            reading: FeatureLayout | None = infer_layout(
                output.shape, module.get_submodule(name), module, image_size=size, batch_size=1, name=name
            )
        except ValueError:
            reading = None  # ambiguous or unknown: what the transform is for
        check_reshape_transform(settings.reshape_transform, output, size, name, reading, transform_name)
    return "--reshape-transform"


def _layer_outputs(module: nn.Module, names: Sequence[str], sample: Tensor) -> list[Tensor]:
    """The output of each layer ``names`` for ``sample`` (at its last call, as a CAM explains it)."""
    outputs: dict[str, Tensor] = {}
    handles = []

    def keeper(name: str) -> Callable[[nn.Module, object, object], None]:
        def keep(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                outputs[name] = output  # a module called several times is explained at its last call

        return keep

    with model_state_guard(module, protect_grads=False), torch.no_grad():  # eval mode; the model left as found
        try:
            for name in names:
                handles.append(module.get_submodule(name).register_forward_hook(keeper(name)))
            module(sample)
        finally:
            for handle in handles:
                handle.remove()
    missing = [name for name in names if name not in outputs]
    if missing:
        raise ValueError(f"Expected the layer {missing[0]!r} to output a tensor")
    return [outputs[name] for name in names]


def check_reshape_transform(
    transform: Callable[..., Any],
    output: Tensor,
    image_size: tuple[int, int],
    name: str,
    reading: FeatureLayout | None = None,
    transform_name: str | None = None,
    flag: str = "--reshape-transform",
) -> None:
    """Apply ``transform`` to ``output``, the layer ``name``'s output for one image of ``image_size``, and check
    that the result is a map a CAM can weight: a tensor ``(B, C, h, w)`` with the batch of ``output``, a grid
    of at least two cells that fits in the image, ``C`` one of ``output``'s sizes and no more values than
    ``output`` has (a reshape transform rearranges, and may drop prefix tokens). When the output reads
    unambiguously without a transform (``reading``), the result must have the shape of that reading: ``swin`` on
    a convolution's ``(B, C, h, w)`` map would otherwise garble it into ``(B, w, C, h)`` without an error.

    Raises:
        UsageError: ``transform`` is a class or fails, returns something else than a tensor (a callable: a
            factory that builds the transform), or a result that fails the checks above.
    """
    what = f"{flag} {transform_name or _callable_name(transform)}"
    shape = tuple(output.shape)
    if isinstance(transform, type):
        raise UsageError(f"{what} is a class; name a function activation -> (B, C, h, w) (or vit or swin)")
    try:
        result = transform(output)
    except Exception as error:
        message = " ".join(str(error).split())
        raise UsageError(
            f"{what} fails on the output {shape} of layer {name!r}: {type(error).__name__}: {message}"
        ) from None
    if not isinstance(result, Tensor):
        hint = "; it looks like a factory: name the function it returns (or vit or swin)" if callable(result) else ""
        raise UsageError(
            f"{what} returned {type(result).__name__} for the output {shape} of layer {name!r}, not a tensor{hint}"
        )
    got = tuple(result.shape)
    prefix = f"{what} turns the output {shape} of layer {name!r} into {got}"
    if result.ndim != 4 or got[0] != shape[0]:
        raise UsageError(f"{prefix}, not a (B, C, h, w) map with B = {shape[0]}")
    if reading is not None:
        expected = tuple(reading(output).shape)
        if got != expected:
            raise UsageError(
                f"{prefix}, but that output reads unambiguously as {reading.describe()}, a map {expected}; drop {flag}"
            )
        return
    channels, height, width = got[1:]
    fits = 1 <= height <= image_size[0] and 1 <= width <= image_size[1] and height * width >= 2
    if not fits or channels not in shape[1:] or result.numel() > output.numel():
        raise UsageError(
            f"{prefix}, not a map of its values: expected C among {shape[1:]} and an h x w grid of at least 2 cells "
            f"within the {image_size[0]} x {image_size[1]} image"
        )


def _callable_name(value: object) -> str:
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(value)


def check_model_outputs(
    model: EvaluationModel,
    data: EvaluationData,
    target: str = "label",
    output_transform: OutputTransform | None = None,
    task: str = "multiclass",
) -> None:
    """Run the model on the first samples: labels must be among its classes; warn when it outputs (log-)probabilities.

    The output is read as logits by :func:`~evet_lightning.saliency.logits_from_output` (``output_transform``
    when given), as everywhere else. Multi-label data (VOC, COCO) needs one logit per class of the data, whatever
    ``target``: a pair's class indexes both the logits and the masks.

    Raises:
        UsageError: the output holds no logits ``(B, K)``, (with ``target="label"``) a label is ``>= K``, or
            multi-label data has another number of classes than ``K``.
    """
    count = min(_PROBE_SAMPLES, len(data))
    images = torch.stack([unpack_batch(tuple(data.dataset[index]))[0] for index in range(count)])
    try:
        with torch.no_grad():
            raw = model.module(images)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        raise UsageError(f"{model.name} fails on the data ({tuple(images.shape)}): {message}") from None
    try:
        outputs = logits_from_output(raw, output_transform)
    except Exception as error:
        raise UsageError(f"{model.name}: {error}") from None
    if outputs.ndim != 2 or outputs.shape[0] != count:
        raise UsageError(f"{model.name} must return logits (B, K) = ({count}, K), but returned {tuple(outputs.shape)}")
    classes = outputs.shape[1]
    if data.multilabel and data.class_names is not None and len(data.class_names) != classes:
        raise UsageError(
            f"--data {data.name} has {len(data.class_names)} classes, but {model.name} has {classes} outputs; a "
            "multi-label model needs one logit per class of the data, in the data's class order"
        )
    if target == "label" and data.max_label is not None and data.max_label >= classes:
        raise UsageError(
            f"--data {data.name} has labels up to {data.max_label}, but {model.name} has {classes} classes; "
            "use data labelled with the model's classes, or --target prediction to explain its predictions"
        )
    if task == "multilabel":
        probabilities = outputs.float()
        if classes > 1 and bool(((probabilities >= 0) & (probabilities <= 1)).all()):
            log.warning(
                "%s outputs values in [0, 1] only, which look like sigmoid probabilities, not logits; EVET applies "
                "the sigmoid itself, so every score below would be the sigmoid of those probabilities",
                model.name,
            )
        return
    problem = not_logits(outputs)
    if problem is not None:
        log.warning("%s %s", model.name, problem)


#: Bytes of per-sample values a method's run keeps for every sample, generously: its row in the callback (about
#: 30 float64 columns), the metrics' per-sample states (paired differences, deletion / insertion curves) and the
#: per-sample tensors ``evaluate`` reads back from the per-sample file (decision 41).
SCALAR_BYTES_PER_SAMPLE = 2048
#: Maps one in-flight sample has at once (EVET's views, the stability runs, the out-of-fold blends), without and
#: with the paper's four stability transforms.
MAPS_PER_SAMPLE = (10, 34)


def estimate_memory(
    data: EvaluationData, *, batch_size: int = 32, calibration: int = 32, paper_stability: bool = True
) -> int:
    """Bytes one method's streamed run holds at its peak, about: the images (float32, with masks) and maps of one
    validation batch and of the ``calibration`` samples the alpha choice keeps until it is made, counted twice
    (the previous method's may not be garbage-collected yet), plus :data:`SCALAR_BYTES_PER_SAMPLE` per sample."""
    item = unpack_batch(tuple(data.dataset[0]))
    image, mask = item[0], item[2]
    pixels = image.shape[-2] * image.shape[-1]
    per_image = 4 * image.numel() + (0 if mask is None else mask.numel())
    per_image += 4 * pixels * MAPS_PER_SAMPLE[int(paper_stability)]
    held = (min(len(data), batch_size) + min(len(data), calibration)) * per_image * 2
    return held + len(data) * SCALAR_BYTES_PER_SAMPLE


def available_memory() -> int | None:
    """Bytes of memory available to this process (Linux: ``MemAvailable``, capped by a cgroup limit); ``None``
    when unknown."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            cgroup = int(limit) - used
            available = cgroup if available is None else min(available, cgroup)
    except (OSError, ValueError):
        pass
    return available


def check_memory(
    data: EvaluationData, *, batch_size: int = 32, paper_stability: bool = True, flag: str = "--num-samples"
) -> None:
    """Raise :class:`UsageError` when the evaluation would need more memory than is available
    (:func:`estimate_memory`): what grows with the samples is their per-sample values, so the advice is fewer
    samples when those are what does not fit, else a smaller ``--batch-size``."""
    available = available_memory()
    if available is None:
        return
    needed = estimate_memory(data, batch_size=batch_size, paper_stability=paper_stability)
    if needed <= available:
        return
    scalars = len(data) * SCALAR_BYTES_PER_SAMPLE
    held = needed - scalars
    if held < available:
        fitting = max(1, math.floor((available - held) / SCALAR_BYTES_PER_SAMPLE))
        advice = f"use {flag} {fitting} or fewer"
    else:
        advice = "use a smaller --batch-size"
    raise UsageError(
        f"{flag} {len(data)} needs about {_size(needed)} of memory ({_size(held)} for the images and maps of one "
        f"batch and of the alpha calibration samples, {_size(scalars)} for every sample's per-sample values), "
        f"more than the {_size(available)} available; {advice}"
    )


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
