"""Checks before the long run: each turns a mistake that would fail (or mislead) later into an error now.

- a CAM method with no spatial layer to explain;
- labels the model has no output for (a 4-class model on ImageNet photos): an error, unless the explained
  class is the prediction (``target="prediction"``);
- a model that outputs probabilities instead of logits: a warning, since EVET applies the softmax itself, so
  every score (and so every table value) would then be the softmax of probabilities;
- more samples than memory can hold: the callback keeps every sample and both maps of each until the end of
  its ``validate`` run (the evaluation itself keeps only the maps its heatmap sheets show).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from evet_lightning._model_state import model_state_guard
from evet_lightning.data.batch import unpack_batch
from evet_lightning.evaluation.data import EvaluationData
from evet_lightning.evaluation.errors import UsageError
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.saliency.evet import EVET
from evet_lightning.saliency.outputs import OutputTransform, logits_from_output
from evet_lightning.saliency.reshape import infer_layout
from evet_lightning.saliency.settings import EVETSettings

__all__ = [
    "ExplainedLayer",
    "available_memory",
    "check_memory",
    "check_model_outputs",
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
    model: EvaluationModel, data: EvaluationData, methods: Sequence[str], settings: EVETSettings | None = None
) -> ExplainedLayer:
    """Find the layer the CAM methods explain (the model's own, or auto-detected as :class:`EVET` does) and how its
    output reads as a map; fail before any work when there is none (a user error, e.g. an MLP).

    ``settings``: the run's EVET settings (``target_layers``, ``reshape_transform`` and ``output_transform`` are
    used); default: the model's own target layer.

    Raises:
        UsageError: no spatial layer, an output that cannot be read as a map, or a model that fails on the data.
    """
    settings = settings or EVETSettings(target_layers=model.target_layer)
    sample = unpack_batch(tuple(data.dataset[0]))[0].unsqueeze(0)
    cams = [method for method in methods if method != "Gradient"]
    if not cams:
        return ExplainedLayer([])
    names: list[str] = []
    try:
        for method in cams:  # every CAM resolves the same layer; input attributions (captum:Saliency, ...) none
            engine = EVET.from_settings(model.module, settings.replace(cam=method))
            names = engine.resolve_target_layers(sample)
            if names:
                break
        if not names:
            return ExplainedLayer([])
        layout = _layout(model.module, names, sample, settings)
    except ValueError as error:
        raise UsageError(f"{method} cannot explain {model.name}: {error}") from None
    except Exception as error:
        raise UsageError(
            f"{model.name} fails on the data ({tuple(sample.shape)}): {type(error).__name__}: {error}"
        ) from None
    return ExplainedLayer(names, layout)


def _layout(module: nn.Module, names: Sequence[str], sample: Tensor, settings: EVETSettings) -> str:
    """How the output of the (first) layer ``names`` reads as a map, from one forward pass of ``sample``."""
    if settings.reshape_transform is not None:
        return "--reshape-transform"
    layer = module.get_submodule(names[0])
    outputs: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            outputs[:] = [output]  # a module called several times is explained at its last call

    with model_state_guard(module, protect_grads=False), torch.no_grad():  # eval mode; the model left as found
        handle = layer.register_forward_hook(keep)
        try:
            module(sample)
        finally:
            handle.remove()
    if not outputs:
        raise ValueError(f"Expected the layer {names[0]!r} to output a tensor")
    size = (int(sample.shape[-2]), int(sample.shape[-1]))
    layout = infer_layout(outputs[0].shape, layer, module, image_size=size, batch_size=1, name=names[0])
    return layout.describe()


def check_model_outputs(
    model: EvaluationModel,
    data: EvaluationData,
    target: str = "label",
    output_transform: OutputTransform | None = None,
) -> None:
    """Run the model on the first samples: labels must be among its classes; warn when it outputs probabilities.

    The output is read as logits by :func:`~evet_lightning.saliency.logits_from_output` (``output_transform``
    when given), as everywhere else.

    Raises:
        UsageError: the output holds no logits ``(B, K)``, or (with ``target="label"``) a label is ``>= K``.
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
    if target == "label" and data.max_label is not None and data.max_label >= classes:
        raise UsageError(
            f"--data {data.name} has labels up to {data.max_label}, but {model.name} has {classes} classes; "
            "use data labelled with the model's classes, or --target prediction to explain its predictions"
        )
    outputs = outputs.float()
    in_unit_range = bool(((outputs >= 0) & (outputs <= 1)).all())
    if classes > 1 and in_unit_range and bool(torch.allclose(outputs.sum(dim=1), torch.ones(count), atol=1e-4)):
        log.warning(
            "%s outputs probabilities (rows in [0, 1] summing to 1), not logits; EVET applies the softmax "
            "itself, so every score below is the softmax of those probabilities",
            model.name,
        )


def estimate_memory(data: EvaluationData) -> int:
    """Bytes one method's run holds at its peak, about: every sample (float32 image, bool mask) and its two
    float32 maps in the callback, counted twice for the maps because the previous method's callback may not be
    garbage-collected yet."""
    item = unpack_batch(tuple(data.dataset[0]))
    image, mask = item[0], item[2]
    pixels = image.shape[-2] * image.shape[-1]
    per_sample = 4 * image.numel() + (0 if mask is None else mask.numel()) + 4 * pixels * 2 * 2
    return len(data) * per_sample


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


def check_memory(data: EvaluationData, flag: str = "--num-samples") -> None:
    """Raise :class:`UsageError` when the evaluation would need more memory than is available."""
    available = available_memory()
    if available is None:
        return
    needed = estimate_memory(data)
    if needed > available:
        fitting = max(1, math.floor(len(data) * available / needed))
        raise UsageError(
            f"{flag} {len(data)} needs about {_size(needed)} of memory (every sample and its maps are kept until "
            f"its method's run ends), more than the {_size(available)} available; use {flag} {fitting} or fewer"
        )


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
