"""Shared fixtures. Models and data here are built once per session and must not be modified by tests."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from evet_lightning.data import SyntheticShapes
from evet_lightning.models import SmallCNN
from tests._helpers.models import train_shapes_model
from tests._helpers.trainer import TRAINER_DEFAULTS, TrainerFactory


@pytest.fixture(autouse=True)
def _single_intra_op_thread() -> Iterator[None]:
    """Run each test's tiny models on one intra-op thread, restoring the caller's setting afterwards.

    The models here are a few kilobytes; a second OpenMP thread only adds synchronization, and on a machine
    whose cores are busy with other work its spin-waits made a 12x12 convolution ~400x slower (44 ms vs 0.1 ms).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic_algorithms_restored() -> Iterator[None]:
    """Restore ``torch.use_deterministic_algorithms`` after each test.

    ``Trainer(deterministic=True)`` switches it on for the whole process and never back, so without this a test
    would run under whatever an earlier test left (Captum's DeepLift fails on max pooling under it:
    ``max_unpool2d`` has no deterministic kernel).
    """
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture(scope="session")
def trained_model() -> SmallCNN:
    """A SmallCNN (width 16, 4 classes, 64x64) trained on ``SyntheticShapes(seed=0)``; eval mode, ~99% accurate."""
    return train_shapes_model()


@pytest.fixture(scope="session")
def shapes_val() -> SyntheticShapes:
    """128 held-out 64x64 shape images (seed 1000, disjoint from the training seed), 4 classes."""
    return SyntheticShapes(num_samples=128, image_size=64, num_classes=4, seed=1000)


@pytest.fixture
def make_trainer(tmp_path: Path) -> TrainerFactory:
    """``make_trainer(callbacks=(), *, trainer_class=pl.Trainer, **options)``: a Trainer with
    :data:`TRAINER_DEFAULTS` and ``default_root_dir=tmp_path``, any of them overridden by ``options``."""

    def make(callbacks: Sequence[Any] = (), *, trainer_class: type = pl.Trainer, **options: Any) -> Any:
        return trainer_class(callbacks=list(callbacks), **{**TRAINER_DEFAULTS, "default_root_dir": tmp_path, **options})

    return make


@pytest.fixture
def offline_wandb_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A ``WandbLogger`` writing an offline run under ``tmp_path`` (silent, never on the network); the run is
    finished after the test."""
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="evet-tests")
    try:
        yield logger
    finally:
        wandb.finish()
