"""Fixtures of the EVETCallback tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from tests.callbacks._modules import TRAINER_DEFAULTS, TrainerFactory


@pytest.fixture
def make_trainer(tmp_path: Path) -> TrainerFactory:
    """``make_trainer(callbacks=(), *, trainer_class=pl.Trainer, **options)``: a Trainer with
    :data:`TRAINER_DEFAULTS` and ``default_root_dir=tmp_path``, any of them overridden by ``options``."""

    def make(callbacks: Sequence[Any] = (), *, trainer_class: type = pl.Trainer, **options: Any) -> Any:
        return trainer_class(callbacks=list(callbacks), **{**TRAINER_DEFAULTS, "default_root_dir": tmp_path, **options})

    return make
