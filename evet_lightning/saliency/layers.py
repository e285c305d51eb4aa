"""Which layer(s) a CAM explains: explicit modules, dotted names, or auto-detection.

Auto-detection (:func:`find_last_spatial_layer`) runs one forward and backward pass of a sample image and picks
the layer an expert would pick. It does not use a list of architectures. The rule:

1. A *map* is a submodule output that reads as a spatial grid with more than one position: a
   ``(B, C, H, W)`` feature map, ViT tokens or a channels-last Swin map, read by
   :func:`~evet_lightning.saliency.reshape.infer_layout` (or by ``reshape_transform`` when given). A map made by a
   pooling layer is never used. A map must have a name that can be targeted: a module that is not an attention
   block or inside one, not a pure relayout (``Permute``, ``Flatten``), and not a pass-through that returns its
   input (``Identity``, ``Dropout`` in eval). A module called several times names its output only at its last
   call, because that is the call the explainers use.
2. The *trunk* is the last map that meets two conditions. The top logit depends on it at two or more positions
   (non-zero gradient there). And every path from the image to the logits in the autograd graph passes through
   it. In a CNN, Swin, ConvNeXt or MaxViT this is the output of the last stage before global pooling. The
   convolutions inside one branch of an Inception block fail the second condition. So when Inception-v3's last
   blocks are 1 x 1 (75 px inputs), the trunk is the last block with a grid, ``Mixed_6e``, not a branch of
   ``Mixed_7a``.
3. When the trunk is the output of a LayerNorm, that norm is the model's final per-position normalization
   (Swin's ``norm``). It belongs to the head, so its input is the trunk instead.
4. In a ViT or DeiT, the class token reads the patches only in the last block's attention. Its input is
   ``norm1`` of that block: a LayerNorm of the residual stream that the residual path bypasses. Later outputs
   (the block's output, the final norm) have zero gradient on every patch token. So the target is the last
   LayerNorm after the trunk whose input every path passes through, which the residual path bypasses, and which
   depends on two or more positions. That is ``blocks[-1].norm1``, the choice of pytorch-grad-cam's ViT tutorial.
5. Among the modules that output the chosen tensor, the name is the outermost one whose own children output
   a single grid size. That is a stage (``layer4``, ``features.7``, ``stages.3``), not the whole backbone
   (``features``, ``stages``) and not a block inside the stage.

The pick is logged at INFO. It is logged at WARNING when later maps have one position (the input is too small
for the last stage), when the pick's grid is smaller than 3 along a side, and when no map meets the conditions
of 2, so the last one that depends on two positions is used. Outputs that cannot be read are skipped. If one
after the pick carries the whole prediction, the result is a ``ValueError`` that says to pass
``reshape_transform``, so auto-detection never quietly falls back to an early layer.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from evet_lightning.saliency.outputs import OutputTransform, logits_from_output
from evet_lightning.saliency.reshape import ReshapeTransform, _Evidence, infer_layout

__all__ = ["LayerSpec", "check_target_layers", "find_last_spatial_layer", "resolve_target_layers"]

log = logging.getLogger(__name__)

#: A target layer given as a module of the model, its dotted name in ``model.named_modules()``, or a list.
LayerSpec = nn.Module | str | Sequence[nn.Module | str] | None

#: Maps smaller than this along a side are logged at WARNING as coarse.
_TINY = 3


def _names_by_module(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def check_target_layers(model: nn.Module, target_layers: LayerSpec) -> list[tuple[str, nn.Module]] | None:
    """Resolve explicit target layers to ``(name, module)`` pairs; ``None`` stays ``None`` (auto-detect later).

    Raises:
        ValueError: ``target_layers`` of another type (an int, a set), a name that is not a submodule (with the
            closest names), a module that is not part of ``model``, or an empty list. Names inside a compiled
            submodule may leave out its ``_orig_mod`` step.
    """
    if target_layers is None:
        return None
    if isinstance(target_layers, (nn.Module, str)):
        items: list[Any] = [target_layers]
    elif isinstance(target_layers, Sequence) and not isinstance(target_layers, bytes):
        items = list(target_layers)
    else:
        raise ValueError(
            "Expected `target_layers` to be None, a module, a dotted name or a sequence of them, but got "
            f"{target_layers!r}"
        )
    if not items:
        raise ValueError("Expected `target_layers` to name at least one layer, but got an empty sequence")
    names = _names_by_module(model)
    modules = dict(model.named_modules())
    # A submodule compiled with `torch.compile` holds the original under `_orig_mod`; its layers may be named
    # without that step, as in the uncompiled model (decision 32).
    uncompiled = {re.sub(r"(^|\.)_orig_mod(?=\.|$)", "", name).lstrip("."): module for name, module in modules.items()}
    modules = {**uncompiled, **modules}
    resolved = []
    for item in items:
        if isinstance(item, str):
            if item not in modules or item == "":
                close = difflib.get_close_matches(item, [name for name in modules if name], n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(
                    f"Expected `target_layers` to name submodules of the model, but {item!r} is not one{hint}"
                )
            resolved.append((item, modules[item]))
        elif isinstance(item, nn.Module):
            if id(item) not in names:
                raise ValueError(f"Expected `target_layers` to be submodules of the model, but got a foreign {item!r}")
            resolved.append((names[id(item)] or "<model>", item))
        else:
            raise ValueError(f"Expected `target_layers` items to be modules or names, but got {item!r}")
    return resolved


@dataclass(eq=False)
class _Output:
    """One distinct tensor value that submodules output during the detection pass (an identity, not a value)."""

    tensor: Tensor
    node: Any  # its grad_fn when it was produced
    order: int
    producer: nn.Module
    source: _Output | None  # the recorded output the producer received as its first input
    first_input: Tensor | None  # that input, recorded or not
    first_input_node: Any  # its grad_fn when the producer received it
    read: Callable[[Tensor], Tensor] | None  # -> (B, C, h, w); None when the output cannot be read
    why_unreadable: str = ""
    grid: tuple[int, int] = (0, 0)
    names: list[tuple[str, nn.Module, int, bool]] = field(default_factory=list)  # name, module, call, targetable

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]


_POOLING = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._LPPoolNd,
)


def _is_pooling(module: nn.Module) -> bool:
    return isinstance(module, _POOLING) or "pool" in type(module).__name__.lower()


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


def _is_layer_norm(module: nn.Module) -> bool:
    """A LayerNorm over the channels at each position (not a channels-first ``LayerNorm2d``)."""
    return isinstance(module, nn.LayerNorm) and "2d" not in type(module).__name__.lower()


class _Recorder:
    """Forward hooks on every submodule that collect :class:`_Output` records during one forward pass."""

    def __init__(self, model: nn.Module, sample: Tensor, reshape_transform: ReshapeTransform | None) -> None:
        self.model = model
        self.image_size = (int(sample.shape[-2]), int(sample.shape[-1]))
        self.batch_size = int(sample.shape[0])
        self.reshape_transform = reshape_transform
        self.names = {id(module): name for name, module in model.named_modules() if name}
        attention = [name for name, module in model.named_modules() if name and _is_attention(module)]
        self.in_attention = {
            id(module)
            for name, module in model.named_modules()
            if any(name == prefix or name.startswith(prefix + ".") for prefix in attention)
        }
        self.evidence = _Evidence(model)
        self.outputs: list[_Output] = []
        self.by_key: dict[tuple[int, int], _Output] = {}
        self.calls: dict[int, int] = {}
        self.last_output: dict[int, _Output] = {}
        self._entries: dict[int, list[tuple[Tensor | None, int]]] = {}

    def hooks(self) -> Iterator[Any]:
        for module in self.model.modules():
            if id(module) in self.names:
                yield module.register_forward_pre_hook(self._enter)
                yield module.register_forward_hook(self._exit)

    def _enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        first = next((arg for arg in args if isinstance(arg, Tensor)), None)
        self._entries.setdefault(id(module), []).append((first, -1 if first is None else first._version))

    def _exit(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        first, version = self._entries[id(module)].pop()
        call = self.calls.get(id(module), 0)
        self.calls[id(module)] = call + 1
        if not isinstance(output, Tensor):
            return
        passes_through = output is first and output._version == version
        relayout = (
            not passes_through
            and first is not None
            and output.numel() == first.numel()
            and output.shape != first.shape
            and next(module.parameters(), None) is None
            and next(module.buffers(), None) is None
        )
        targetable = not (passes_through or relayout or id(module) in self.in_attention)
        key = (id(output), output._version)
        record = self.by_key.get(key)
        if record is None:
            source = None if first is None else self.by_key.get((id(first), version))
            node = None if first is None else first.grad_fn
            record = _Output(output, output.grad_fn, len(self.outputs), module, source, first, node, None)
            self._read(record, module)
            self.outputs.append(record)
            self.by_key[key] = record
        record.names.append((self.names[id(module)], module, call, targetable))
        self.last_output[id(module)] = record

    def _read(self, record: _Output, module: nn.Module) -> None:
        tensor = record.tensor
        if tensor.ndim not in (3, 4):
            record.why_unreadable = f"a {tensor.ndim}-D output"
            return
        try:
            if self.reshape_transform is not None:
                read = self.reshape_transform
                feature_map = read(tensor.detach())
                if not isinstance(feature_map, Tensor) or feature_map.ndim != 4:
                    raise ValueError("`reshape_transform` did not return a (B, C, H, W) tensor")
            else:
                read = infer_layout(
                    tensor.shape,
                    module,
                    self.model,
                    image_size=self.image_size,
                    batch_size=self.batch_size,
                    name=self.names[id(module)],
                    _evidence=self.evidence,
                )
                feature_map = read(tensor.detach())
        except (ValueError, RuntimeError) as error:
            record.why_unreadable = str(error)
            return
        record.read = read
        record.grid = (int(feature_map.shape[-2]), int(feature_map.shape[-1]))


class _Graph:
    """Whether every path from the logits to the input in the autograd graph passes through a node."""

    def __init__(self, root: Any, leaf: Tensor) -> None:
        self.root = root
        self.leaf = leaf
        self._cache: dict[int, bool] = {}  # by id of a node, which the graph keeps alive
        self.connected = root is not None and self._reaches_leaf(blocked=None)

    def _reaches_leaf(self, blocked: Any) -> bool:
        stack, seen = [self.root], {id(self.root)}
        while stack:
            node = stack.pop()
            if node is blocked:
                continue
            if getattr(node, "variable", None) is self.leaf:
                return True
            for child, _ in node.next_functions:
                if child is not None and id(child) not in seen:
                    seen.add(id(child))
                    stack.append(child)
        return False

    def dominates(self, record: _Output) -> bool:
        return self.dominates_node(record.node)

    def dominates_node(self, node: Any) -> bool:
        if not self.connected:
            return True  # no path at all: the graph cannot tell maps apart
        if node is None:
            return False
        if id(node) not in self._cache:
            self._cache[id(node)] = not self._reaches_leaf(blocked=node)
        return self._cache[id(node)]


class _Detection:
    """The records of one detection pass, with the gradient and graph tests of the module docstring."""

    def __init__(self, recorder: _Recorder, logits: Tensor, leaf: Tensor) -> None:
        self.recorder = recorder
        self.maps = [
            record
            for record in recorder.outputs
            if record.read is not None
            and record.positions > 1
            and record.tensor.requires_grad
            and not _is_pooling(record.producer)
            and self.name(record) is not None
        ]
        score = logits.gather(1, logits.detach().argmax(dim=1, keepdim=True)).sum()
        self.spread = self._spread(score)
        if not any(self.spread.values()):
            # A head that starts at zero (torchvision's ViT) passes no gradient: score the head's input instead.
            features = self._head_input(logits)
            if features is not None:
                projection = torch.randn(features[0].numel(), generator=torch.Generator().manual_seed(0))
                score = (features.flatten(1) @ projection.to(features)).sum()
                self.spread = self._spread(score)
        self.graph = _Graph(score.grad_fn, leaf)
        # Still no gradient anywhere: judge by the graph alone.
        self.gradient_free = not any(self.spread.values())

    def _spread(self, score: Tensor) -> dict[int, int]:
        """For each map, at how many positions ``score`` has a non-zero gradient."""
        if not (score.requires_grad and self.maps):
            return {}
        grads = torch.autograd.grad(
            score, [record.tensor for record in self.maps], allow_unused=True, retain_graph=True
        )
        return {
            id(record): 0 if grad is None else self._positions_with_gradient(record, grad)
            for record, grad in zip(self.maps, grads, strict=True)
        }

    def _head_input(self, logits: Tensor) -> Tensor | None:
        """The input of the module that output the logits, when it depends on the image."""
        record = self.recorder.by_key.get((id(logits), logits._version))
        features = None if record is None else record.first_input
        if features is None or not features.requires_grad or not features.is_floating_point():
            return None
        return features

    @staticmethod
    def _positions_with_gradient(record: _Output, grad: Tensor) -> int:
        assert record.read is not None
        grad_map = record.read(grad.detach())
        return int((grad_map.abs().sum(dim=1) > 0).flatten(1).sum(dim=1).max())

    def spatial(self, record: _Output) -> bool:
        """The top logit depends on ``record`` at two or more positions."""
        return self.gradient_free or self.spread.get(id(record), 0) >= 2

    def trunk(self, record: _Output) -> bool:
        return self.spatial(record) and self.graph.dominates(record)

    def name(self, record: _Output) -> tuple[str, nn.Module] | None:
        """Rule 5: the outermost targetable module outputting ``record`` whose children output one grid size."""
        calls = self.recorder.calls
        names = [
            (name, module)
            for name, module, call, targetable in record.names
            if targetable and call == calls[id(module)] - 1
        ]
        for name, module in reversed(names):
            if len(self._child_grids(module)) <= 1:
                return name, module
        return names[0] if names else None

    def _child_grids(self, module: nn.Module) -> set[tuple[int, int]]:
        grids = set()
        for child in module.children():
            if id(child) in self.recorder.calls:
                output = self.recorder.last_output.get(id(child))
                if output is not None and output.read is not None:
                    grids.add(output.grid)
            else:  # a ModuleList or ModuleDict: its members are called one by one
                grids |= self._child_grids(child)
        return grids

    def display_name(self, record: _Output) -> str:
        named = self.name(record)
        return named[0] if named is not None else self.recorder.names[id(record.producer)]


def find_last_spatial_layer(
    model: nn.Module,
    sample: Tensor,
    *,
    reshape_transform: ReshapeTransform | None = None,
    output_transform: OutputTransform | None = None,
) -> tuple[str, nn.Module]:
    """The layer a CAM should explain, by the rule of this module's docstring (e.g. ``layer4`` of a ResNet).

    Runs one forward pass of ``sample`` (one image is enough) and a backward pass to the recorded outputs only
    (no parameter's ``.grad`` is written). The caller sets the model's mode and guards its state.
    ``reshape_transform`` reads the outputs that :func:`~evet_lightning.saliency.reshape.infer_layout` cannot
    read. ``output_transform`` extracts the logits from the model's output.

    Raises:
        ValueError: no submodule outputs a spatial map the prediction depends on; or an output after the best
            readable one carries the whole prediction but cannot be read (pass ``reshape_transform``).
    """
    recorder = _Recorder(model, sample, reshape_transform)
    with torch.inference_mode(False), torch.enable_grad():
        leaf = sample.detach().clone().requires_grad_(True)
        handles = list(recorder.hooks())
        try:
            output = model(leaf)
        finally:
            for handle in handles:
                handle.remove()
        logits = logits_from_output(output, output_transform)
        if logits.ndim != 2:
            raise ValueError(f"Expected the model to return logits of shape (N, K), but got {tuple(logits.shape)}")
        detection = _Detection(recorder, logits, leaf)
        pick = _pick(detection, model, sample)
    name, module = detection.name(pick)  # type: ignore[misc]
    height, width = pick.grid
    shape = tuple(pick.tensor.shape)
    log.info(
        "EVET: auto-detected target layer %r (%s, output %s, a %dx%d map)",
        name,
        type(module).__name__,
        shape,
        height,
        width,
    )
    _warn_if_coarse(detection, pick, name, sample)
    return name, module


def _pick(detection: _Detection, model: nn.Module, sample: Tensor) -> _Output:
    maps = detection.maps
    if detection.gradient_free and maps:
        log.warning(
            "EVET: the top logit has zero gradient at every feature map (e.g. a zero-initialised head), so the target "
            "layer is chosen from the graph alone"
        )
    trunk = next((record for record in reversed(maps) if detection.trunk(record)), None)
    if trunk is None:
        spread = [record for record in maps if detection.spatial(record)]
        if not spread:
            raise ValueError(
                "Expected the model to have a layer with a 4-D spatial output (B, C, H, W) for a CAM (or ViT tokens, "
                f"or a channels-last map) that the prediction depends on, but {type(model).__name__} has none for "
                f"input {tuple(sample.shape)}; pass `target_layers` (and `reshape_transform`) or use cam='Gradient'"
            )
        pick = spread[-1]
        log.warning(
            "EVET: no single feature map carries the whole prediction; using the last one it depends on, %r",
            detection.display_name(pick),
        )
        return pick
    source = trunk.source
    if _is_layer_norm(trunk.producer) and source is not None and source in maps and detection.trunk(source):
        trunk = source  # rule 3: a final per-position LayerNorm belongs to the head
    pick = trunk
    for record in reversed(maps):  # rule 4: the bypassed norm the last attention reads (ViT's norm1)
        if record.order <= trunk.order:
            break
        if (
            _is_layer_norm(record.producer)
            and detection.spatial(record)
            and not detection.graph.dominates(record)
            and detection.graph.dominates_node(record.first_input_node)
        ):
            pick = record
            break
    _check_nothing_unreadable_after(detection, pick)
    return pick


def _check_nothing_unreadable_after(detection: _Detection, pick: _Output) -> None:
    for record in detection.recorder.outputs[pick.order + 1 :]:
        if (
            record.read is None
            and record.tensor.ndim in (3, 4)
            and record.tensor.requires_grad
            and detection.graph.dominates(record)
        ):
            name = detection.recorder.names[id(record.producer)]
            raise ValueError(
                f"Expected every output the prediction passes through to read as a spatial map, but the output of "
                f"{name!r}, of shape {tuple(record.tensor.shape)}, comes after the best readable layer "
                f"{detection.display_name(pick)!r} and has no unambiguous layout; pass `target_layers` and "
                "`reshape_transform` (e.g. vit_reshape_transform(prefix_tokens=2) for tokens that start with two "
                "prefix tokens)"
            )


def _warn_if_coarse(detection: _Detection, pick: _Output, name: str, sample: Tensor) -> None:
    image = f"{sample.shape[-2]}x{sample.shape[-1]}"
    later = []
    for record in detection.recorder.outputs[pick.order + 1 :]:
        if record.read is None or record.positions != 1:
            continue
        if _is_pooling(record.producer):
            break  # global pooling: what follows is the head
        if detection.graph.dominates(record):
            later.append(record)
    height, width = pick.grid
    if later:
        log.warning(
            "EVET: the last feature maps (%r) have a single position for %s input, so the CAM explains the earlier "
            "%r (%dx%d); a larger input gives a map of the last layers",
            detection.display_name(later[-1]),
            image,
            name,
            height,
            width,
        )
    elif min(height, width) < _TINY:
        log.warning(
            "EVET: the target layer %r has a %dx%d map for %s input, so the saliency has only %d cells; a larger "
            "input gives a finer map",
            name,
            height,
            width,
            image,
            height * width,
        )


def resolve_target_layers(
    model: nn.Module,
    target_layers: LayerSpec,
    sample: Tensor,
    *,
    reshape_transform: ReshapeTransform | None = None,
    output_transform: OutputTransform | None = None,
) -> list[tuple[str, nn.Module]]:
    """:func:`check_target_layers`, falling back to :func:`find_last_spatial_layer` on ``sample``."""
    resolved = check_target_layers(model, target_layers)
    if resolved is not None:
        return resolved
    layer = find_last_spatial_layer(
        model, sample, reshape_transform=reshape_transform, output_transform=output_transform
    )
    return [layer]
