"""The options of every test's Trainer, which the ``make_trainer`` fixture (``tests/conftest.py``) builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: What every test's Trainer has unless the test says otherwise: one short, quiet epoch
#: (the ``make_trainer`` fixture adds ``default_root_dir=tmp_path``).
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 1,
    "limit_train_batches": 2,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
}

#: The type of the ``make_trainer`` fixture: ``make_trainer(callbacks=(), *, trainer_class=pl.Trainer, **options)``.
TrainerFactory = Callable[..., Any]
