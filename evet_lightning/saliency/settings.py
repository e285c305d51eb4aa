"""EVET's settings, defined and validated once: used by :class:`~evet_lightning.EVET`, the callback and the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from evet_lightning._validation import check_alpha, check_int, check_threshold
from evet_lightning.functional.activation import Activation, Task, check_activation, check_task, resolve_activation
from evet_lightning.functional.alpha import (
    DEFAULT_ALPHA_GRID,
    DEFAULT_ALPHA_OBJECTIVE,
    AlphaObjective,
    check_alpha_grid,
    check_alpha_objective,
)
from evet_lightning.functional.perturbation import Baseline, Normalization, check_baseline
from evet_lightning.saliency.explainers import NATIVE_CAMS
from evet_lightning.saliency.external import resolve_external
from evet_lightning.saliency.grad_cam_adapter import is_library_method, library_methods, split_cam_kwargs
from evet_lightning.saliency.score_cam import SCORE_CAMS
from evet_lightning.saliency.transforms import AffineTransform, _transform_tuple, paper_transforms

__all__ = [
    "AUTO_CPU_PIXELS",
    "AUTO_MAX_BATCH_SIZE",
    "BACKENDS",
    "EVETSettings",
    "check_cam_kwargs",
    "resolve_cam",
    "resolve_max_batch_size",
]

BACKENDS = ("auto", "native", "pytorch-grad-cam")
#: ``max_batch_size="auto"`` on a CPU: chunks of at most this many input pixels (8 images of 224 x 224). Larger
#: chunks make every activation buffer of a 224-px ResNet bigger than glibc's mmap threshold, so each one is fresh
#: zero-filled memory: 64-image chunks cost 1.40x the 16-forward floor, 8-image chunks 1.09x
#: (``benchmarks/bench_saliency.py``, README "Speed and memory").
AUTO_CPU_PIXELS = 8 * 224 * 224
#: ``max_batch_size="auto"``: the chunk on accelerators, and the cap on a CPU.
AUTO_MAX_BATCH_SIZE = 64


def resolve_max_batch_size(max_batch_size: int | Literal["auto"], images: Tensor) -> int:
    """The chunk size for ``images``: the given integer, or for ``"auto"`` :data:`AUTO_MAX_BATCH_SIZE` on an
    accelerator and, on a CPU, as many images as fit :data:`AUTO_CPU_PIXELS` (at least 1, at most 64).

    Example:
        >>> resolve_max_batch_size("auto", torch.zeros(1, 3, 224, 224)), resolve_max_batch_size("auto", torch.zeros(1, 3, 48, 48))
        (8, 64)
    """  # noqa: E501
    if max_batch_size != "auto":
        return int(max_batch_size)
    if images.device.type != "cpu":
        return AUTO_MAX_BATCH_SIZE
    pixels = int(images.shape[-2]) * int(images.shape[-1])
    return max(1, min(AUTO_MAX_BATCH_SIZE, AUTO_CPU_PIXELS // max(pixels, 1)))


def _check_target_layers(target_layers: object) -> Any:
    if target_layers is None or isinstance(target_layers, (str, nn.Module)):
        return target_layers
    if isinstance(target_layers, Sequence) and not isinstance(target_layers, bytes):
        items = tuple(target_layers)
        if not items:
            raise ValueError("Expected `target_layers` to name at least one layer, but got an empty sequence")
        for item in items:
            if not isinstance(item, (str, nn.Module)):
                raise ValueError(
                    f"Expected every item of `target_layers` to be a module or a dotted name, but got {item!r}"
                )
        return items
    raise ValueError(
        f"Expected `target_layers` to be None, a module, a dotted name or a sequence of them, but got {target_layers!r}"
    )


def _check_transforms(transforms: object) -> tuple[AffineTransform, ...]:
    if transforms is None:
        return tuple(paper_transforms())
    if isinstance(transforms, AffineTransform) or not isinstance(transforms, Sequence):
        raise ValueError(f"Expected `transforms` to be a sequence of transforms, but got {transforms!r}")
    return _transform_tuple(transforms)


def _check_normalization(normalization: object) -> Normalization:
    if normalization is None:
        return None
    if isinstance(normalization, (str, bytes)) or not isinstance(normalization, Sequence) or len(normalization) != 2:
        raise ValueError(f"Expected `normalization` to be a (mean, std) pair, but got {normalization!r}")
    mean, std = normalization
    for name, values in (("mean", mean), ("std", std)):
        flat = torch.as_tensor(values, dtype=torch.float64).flatten() if _is_numeric(values) else None
        if flat is None or flat.numel() == 0 or not bool(torch.isfinite(flat).all()):
            raise ValueError(f"Expected the `normalization` {name} to be finite numbers, but got {values!r}")
        if name == "std" and bool((flat <= 0).any()):
            raise ValueError(f"Expected every `normalization` std to be positive, but got {values!r}")
    return (mean, std)


def _is_numeric(values: object) -> bool:
    try:
        torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


def _check_callable(name: str, value: object) -> Any:
    if value is not None and not callable(value):
        raise ValueError(f"Expected `{name}` to be callable or None, but got {value!r}")
    return value


@dataclass(frozen=True)
class EVETSettings:
    """Every EVET option in one frozen, validated record (``ValueError`` naming the argument, at construction).

    The fields and their meaning are those of :class:`~evet_lightning.EVET`. Validation normalizes them:
    ``transforms=None`` becomes the paper's 7, sequences become tuples, numpy and tensor scalars become
    ``float``/``int``. :meth:`evet_kwargs` gives the keyword arguments of ``EVET(model, **kwargs)``.

    Example:
        >>> EVETSettings(alpha=0.25).alpha, len(EVETSettings().transforms)
        (0.25, 7)
        >>> EVETSettings(alpha=-1)
        Traceback (most recent call last):
        ...
        ValueError: Expected `alpha` to be a float in [0, 1e6] or 'auto', but got -1
    """

    cam: str | type | Callable[..., Any] = "GradCAM"
    target_layers: Any = None
    transforms: Sequence[AffineTransform] | None = None
    threshold: float = 0.99
    alpha: float | Literal["auto"] = "auto"
    alpha_grid: Sequence[float] = DEFAULT_ALPHA_GRID
    alpha_objective: AlphaObjective = DEFAULT_ALPHA_OBJECTIVE
    baseline: Baseline = "black"
    normalization: Normalization = None
    max_batch_size: int | Literal["auto"] = "auto"
    backend: str = "auto"
    reshape_transform: Callable[[Tensor], Tensor] | None = field(default=None, compare=False)
    output_transform: Callable[[Any], Tensor] | None = field(default=None, compare=False)
    cam_kwargs: Mapping[str, Any] | None = field(default=None, hash=False)
    task: Task = "multiclass"
    activation: Activation | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("target_layers", _check_target_layers(self.target_layers))
        put("transforms", _check_transforms(self.transforms))
        put("threshold", check_threshold(self.threshold))
        put("alpha", "auto" if isinstance(self.alpha, str) and self.alpha == "auto" else check_alpha(self.alpha))
        put("alpha_grid", check_alpha_grid(self.alpha_grid))
        put("alpha_objective", check_alpha_objective(self.alpha_objective))
        check_baseline(self.baseline)
        put("normalization", _check_normalization(self.normalization))
        if not (isinstance(self.max_batch_size, str) and self.max_batch_size == "auto"):
            put("max_batch_size", check_int("max_batch_size", self.max_batch_size, 1))
        if self.backend not in BACKENDS:
            raise ValueError(f"Expected `backend` to be one of {BACKENDS}, but got {self.backend!r}")
        put("reshape_transform", _check_callable("reshape_transform", self.reshape_transform))
        put("output_transform", _check_callable("output_transform", self.output_transform))
        put("task", check_task(self.task))
        put("activation", check_activation(self.activation))
        resolve_activation(self.task, self.activation)  # task="binary" with a sigmoid is refused (decision 45)
        external = resolve_external(self.cam, _check_cam_kwargs_mapping(self.cam_kwargs))
        if external is not None:
            if self.cam_kwargs is not None:
                put("cam_kwargs", dict(self.cam_kwargs))
        else:
            name, cam_class, native = resolve_cam(self.cam, self.backend)
            put("cam_kwargs", check_cam_kwargs(name, cam_class, native, self.cam_kwargs))

    @property
    def score_activation(self) -> Activation:
        """How logits become the probability f_k: ``activation``, or by ``task`` (sigmoid for multilabel)."""
        return resolve_activation(self.task, self.activation)

    @property
    def cam_name(self) -> str:
        """The method's name: ``"GradCAM"``, ``"captum:IntegratedGradients"``, a function's name."""
        return resolve_cam(self.cam, self.backend, self.cam_kwargs)[0]

    def evet_kwargs(self) -> dict[str, Any]:
        """``EVET(model, **settings.evet_kwargs())`` builds the engine these settings describe."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> EVETSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def check_cam_kwargs(name: str, cam_class: type | None, native: bool, cam_kwargs: object) -> dict[str, Any] | None:
    """``cam_kwargs`` checked for the method (``ValueError`` naming a key it does not take), as a plain dict.

    Native Score-CAM takes ``batch_size`` (masked images per forward pass) and ``max_channels`` (Faster-Score-CAM's
    k; ``None`` for every channel); pytorch-grad-cam's methods take what
    :func:`~evet_lightning.saliency.grad_cam_adapter.split_cam_kwargs` accepts (``base_method`` for the wrappers
    and Guided Grad-CAM, constructor and call options). The other native methods take none.
    """
    checked = _check_cam_kwargs_mapping(cam_kwargs)
    if checked is None:
        return None
    kwargs = dict(checked)
    if native and name in SCORE_CAMS:
        unknown = sorted(set(kwargs) - {"batch_size", "max_channels"})
        if unknown:
            raise ValueError(
                f"Expected the keys of `cam_kwargs` for {name} to be among ['batch_size', 'max_channels'], "
                f"but got {unknown[0]!r}"
            )
        if "batch_size" in kwargs:
            kwargs["batch_size"] = check_int("cam_kwargs['batch_size']", kwargs["batch_size"], 1)
        if kwargs.get("max_channels") is not None:
            kwargs["max_channels"] = check_int("cam_kwargs['max_channels']", kwargs["max_channels"], 1)
    elif native or cam_class is None:
        if kwargs:
            raise ValueError(f"Expected no `cam_kwargs` for {name}: it takes no options, but got {sorted(kwargs)}")
    else:
        split_cam_kwargs(cam_class, kwargs)
    return kwargs


def _check_cam_kwargs_mapping(cam_kwargs: object) -> Mapping[str, Any] | None:
    if cam_kwargs is None:
        return None
    if not isinstance(cam_kwargs, Mapping) or not all(isinstance(key, str) for key in cam_kwargs):
        raise ValueError(f"Expected `cam_kwargs` to be a mapping of option names to values or None, got {cam_kwargs!r}")
    return cam_kwargs


def resolve_cam(
    cam: object, backend: str, cam_kwargs: Mapping[str, Any] | None = None
) -> tuple[str, type | None, bool]:
    """``(name, pytorch-grad-cam method or None, computed natively)``; ``ValueError`` for an unknown CAM.

    Outside methods come first (:func:`~evet_lightning.saliency.external.resolve_external`): ``"captum:Name"``,
    ``"zennit:Composite"``, ``"package.module:function"``, a Captum class or any other callable give
    ``(name, None, False)``; ``backend`` does not apply to them.

    Names: ``"Gradient"``, ``"ScoreCAM"`` and ``"FasterScoreCAM"`` (native Score-CAM, decision 22: the class
    ``pytorch_grad_cam.ScoreCAM``, or ``backend="pytorch-grad-cam"``, runs the library's), and every method of
    :func:`~evet_lightning.saliency.grad_cam_adapter.library_methods` (CAM classes, FinerCAM, RefineCAM, SESS,
    GuidedBackpropReLUModel, GuidedGradCAM), by name or class.
    """
    external = resolve_external(cam, cam_kwargs)
    if external is not None:
        return external.name, None, False
    classes = library_methods()
    if backend not in BACKENDS:
        raise ValueError(f"Expected `backend` to be one of {BACKENDS}, but got {backend!r}")
    if isinstance(cam, str) and "." in cam and cam.rsplit(".", 1)[1] in classes:
        cam = classes[cam.rsplit(".", 1)[1]]  # "pytorch_grad_cam.ScoreCAM", as YAML or LightningCLI may spell it
    if isinstance(cam, str):
        if cam == "Gradient":
            return "Gradient", None, True
        if cam in SCORE_CAMS:
            if backend == "pytorch-grad-cam":
                if cam == "FasterScoreCAM":
                    raise ValueError("Expected backend 'auto' or 'native' for 'FasterScoreCAM': it is native only")
                return "ScoreCAM", classes["ScoreCAM"], False
            return cam, classes.get(cam), True
        if cam not in classes:
            names = sorted({"Gradient", *SCORE_CAMS, *classes})
            raise ValueError(
                f"Expected `cam` to be one of {', '.join(names)} or such a class, 'captum:Name', 'zennit:Composite', "
                f"'package.module:function' or a callable, but got {cam!r}"
            )
        cam_class = classes[cam]
    elif is_library_method(cam):
        cam_class = cam  # type: ignore[assignment]
    else:
        raise ValueError(
            "Expected `cam` to be 'Gradient', a pytorch-grad-cam CAM class or name, a Captum class, a prefixed name "
            f"('captum:...', 'zennit:...', 'package.module:function') or a callable, but got {cam!r}"
        )
    name = cam_class.__name__
    is_library_class = classes.get(name) is cam_class
    native = (
        backend != "pytorch-grad-cam"
        and is_library_class
        and (name in NATIVE_CAMS or (name == "ScoreCAM" and backend == "native"))
    )
    if backend == "native" and not native:
        natives = sorted({*NATIVE_CAMS, *SCORE_CAMS})
        raise ValueError(f"Expected a CAM with a native implementation ({natives}) for backend='native', got {name!r}")
    return name, cam_class, native
