"""Which of fit's validation runs the callback explains, and how Lightning's monitors see the runs it skips.

With ``every_n_epochs = N`` the callback explains fit's validation runs N, 2N, 3N, ... (counted from 1), the
convention of Lightning's ``check_val_every_n_epoch`` and ``ModelCheckpoint(every_n_epochs=N)``. At the start of
every fit validation run its ``{prefix}/`` keys are removed from ``trainer.callback_metrics``, so after a run it
skips they are absent, never the last explained run's values, which scored other weights: ``EarlyStopping`` on such
a key needs ``strict=False`` (it then skips the runs without a value, so its patience counts explained runs only)
and ``ModelCheckpoint`` needs ``every_n_epochs`` a multiple of N (it then ranks each checkpoint by the values of its
own weights). :func:`check_monitors` raises at ``setup`` when one is configured otherwise (docs/design.md,
decision 33).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

__all__ = ["check_monitors", "drop_logged_values", "explains_run"]


def explains_run(validation_runs: int, every_n_epochs: int) -> bool:
    """Whether fit's validation run number ``validation_runs + 1`` is explained (every ``every_n_epochs``-th).

    Example:
        >>> [run for run in range(6) if explains_run(run, 2)]
        [1, 3, 5]
    """
    return (validation_runs + 1) % every_n_epochs == 0


def drop_logged_values(trainer: pl.Trainer, prefix: str) -> None:
    """Remove every ``{prefix}/`` key from ``trainer.callback_metrics`` (values of an earlier run's weights)."""
    metrics = trainer.callback_metrics
    for key in [key for key in metrics if key.startswith(f"{prefix}/")]:
        del metrics[key]


def check_monitors(trainer: pl.Trainer, prefix: str, every_n_epochs: int) -> None:
    """Refuse, before training, an ``EarlyStopping`` or ``ModelCheckpoint`` on a ``{prefix}/`` key that would fail
    (or act on no value) in the validation runs the callback skips; ``every_n_epochs = 1`` skips none."""
    if every_n_epochs == 1:
        return
    for callback in getattr(trainer, "callbacks", []):
        monitor = getattr(callback, "monitor", None)
        if not (isinstance(monitor, str) and monitor.startswith(f"{prefix}/")):
            continue
        kinds = {cls.__name__ for cls in type(callback).__mro__}
        if "EarlyStopping" in kinds and getattr(callback, "strict", False):
            raise ValueError(
                f"Expected `EarlyStopping(monitor={monitor!r}, strict=False)` with `EVETCallback(every_n_epochs="
                f"{every_n_epochs})`: the key is only logged in the validation runs the callback explains, and a "
                "strict EarlyStopping fails in the others"
            )
        checkpoint_every = _checkpoint_every_n_epochs(callback) if "ModelCheckpoint" in kinds else None
        if checkpoint_every is not None and checkpoint_every % every_n_epochs != 0:
            raise ValueError(
                f"Expected `ModelCheckpoint(monitor={monitor!r}, every_n_epochs=...)` a multiple of "
                f"`EVETCallback(every_n_epochs={every_n_epochs})`, but got every_n_epochs={checkpoint_every}: the "
                f"key is only logged in every {every_n_epochs}-th validation run; pass "
                f"`ModelCheckpoint(..., every_n_epochs={every_n_epochs})`"
            )


def _checkpoint_every_n_epochs(callback: Any) -> int | None:
    """The epoch cadence of a ModelCheckpoint that saves by epoch (``None`` when it saves by steps or time)."""
    if getattr(callback, "_every_n_train_steps", 0) or getattr(callback, "_train_time_interval", None) is not None:
        return None
    every = getattr(callback, "_every_n_epochs", None)
    return every if isinstance(every, int) and every > 0 else None
