"""EVET's settings for the commands: one :class:`~evet_lightning.saliency.EVETSettings` built from a config, and the
callback built from it, so no EVET option is spelled out twice (docs/design.md, "Layout and layers").

``DemoConfig`` and ``EvaluateConfig`` hold the options as the command line gives them (``--reshape-transform vit``
is text); :func:`settings_from_config` turns them into validated settings (importing the transforms named), and
:func:`make_callback` passes every setting to :class:`~evet_lightning.EVETCallback`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from evet_lightning.callbacks import EVETCallback
from evet_lightning.evaluation.config import DemoConfig, EvaluateConfig
from evet_lightning.evaluation.errors import UsageError
from evet_lightning.evaluation.loading import RESHAPE_SHORTCUTS, load_transform
from evet_lightning.saliency.settings import EVETSettings

__all__ = ["alpha_text", "check_alpha_options", "make_callback", "settings_from_config"]

_FLAGS = {"alpha_grid": "--alpha-grid", "alpha_objective": "--alpha-objective"}


def alpha_text(alpha: float | str) -> str:
    """``"auto"`` or the number as ``:g`` prints it (``0.25``)."""
    return alpha if isinstance(alpha, str) else f"{alpha:g}"


def _given(config: DemoConfig | EvaluateConfig, name: str) -> bool:
    """Whether ``config.name`` differs from its field's default (the option was given, with another value)."""
    item = next(item for item in dataclasses.fields(config) if item.name == name)
    default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
    return bool(getattr(config, name) != default)


def check_alpha_options(config: DemoConfig | EvaluateConfig) -> None:
    """``--alpha-grid`` and ``--alpha-objective`` apply to ``--alpha auto`` only (decision 18: an option that does
    not apply is an error, not silently ignored)."""
    if config.alpha == "auto":
        return
    for name in ("alpha_grid", "alpha_objective"):
        if _given(config, name):
            raise UsageError(f"{_FLAGS[name]} only applies to --alpha auto, not to --alpha {alpha_text(config.alpha)}")


def settings_from_config(config: DemoConfig | EvaluateConfig, **fields: Any) -> EVETSettings:
    """The EVET settings ``config`` gives (alpha, its grid and objective; for ``evaluate`` also the chunk size and
    the transforms, imported here), with ``fields`` (``cam``, ``normalization``, ...) on top.

    Raises:
        UsageError: a transform that cannot be imported, an option that does not apply, or a setting that
            :class:`~evet_lightning.saliency.EVETSettings` rejects.
    """
    check_alpha_options(config)
    values: dict[str, Any] = {
        "alpha": config.alpha,
        "alpha_grid": config.alpha_grid,
        "alpha_objective": config.alpha_objective,
    }
    if isinstance(config, EvaluateConfig):
        values["max_batch_size"] = config.max_batch_size
        values["reshape_transform"] = load_transform(config.reshape_transform, "--reshape-transform", RESHAPE_SHORTCUTS)
        values["output_transform"] = load_transform(config.output_transform, "--output-transform")
        values["activation"] = config.activation
    values.update(fields)
    try:
        return EVETSettings(**values)
    except ValueError as error:
        raise UsageError(str(error)) from None


def make_callback(settings: EVETSettings, **options: Any) -> EVETCallback:
    """``EVETCallback`` with every EVET setting of ``settings`` and the callback's own ``options``
    (``num_samples``, ``prefix``, ...).

    Raises:
        ValueError: a setting the callback does not take (only ``backend`` today) is not at its default, or the
            callback rejects an option.
    """
    accepted = inspect.signature(EVETCallback).parameters
    defaults = EVETSettings()
    kwargs = {}
    for name, value in settings.evet_kwargs().items():
        if name in accepted:
            kwargs[name] = value
        elif value != getattr(defaults, name):
            raise ValueError(f"EVETCallback has no `{name}` option, so {name}={value!r} cannot be used")
    return EVETCallback(**kwargs, **options)
