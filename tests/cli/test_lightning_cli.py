"""EVETCallback configured from LightningCLI: command-line flags and a YAML file, with a tiny fit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pytorch_lightning.cli import LightningCLI

from evet_lightning import EVETCallback
from evet_lightning.data import SyntheticShapesDataModule
from evet_lightning.models import ShapesClassifier
from evet_lightning.saliency.transforms import Rotate

TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.train_samples=16",
    "--data.val_samples=8",
    "--data.image_size=32",
    "--data.batch_size=8",
    "--model.width=4",
]


@pytest.fixture(autouse=True)
def _no_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when ``args=`` and ``sys.argv`` (pytest's) are both present."""
    monkeypatch.setattr(sys, "argv", ["lightning-cli"])


def only_evet_callback(cli: LightningCLI) -> EVETCallback:
    callbacks = [callback for callback in cli.trainer.callbacks if isinstance(callback, EVETCallback)]
    assert len(callbacks) == 1
    return callbacks[0]


def test_callback_and_init_args_from_the_command_line(tmp_path: Path) -> None:
    args = [
        "fit",
        f"--trainer.default_root_dir={tmp_path}",
        *TINY,
        "--trainer.callbacks+=evet_lightning.EVETCallback",
        "--trainer.callbacks.init_args.num_samples=4",
        "--trainer.callbacks.init_args.cam=GradCAMPlusPlus",
        "--trainer.callbacks.init_args.alpha=0.25",
        "--trainer.callbacks.init_args.log_images=0",
        "--trainer.callbacks.init_args.stability_transforms=[]",
    ]
    cli = LightningCLI(ShapesClassifier, SyntheticShapesDataModule, args=args, save_config_kwargs={"overwrite": True})
    callback = only_evet_callback(cli)
    assert (callback.num_samples, callback.cam, callback.alpha, callback.stability_transforms) == (
        4,
        "GradCAMPlusPlus",
        0.25,
        [],
    )
    metrics = cli.trainer.callback_metrics
    assert callback.last_num_samples == 4 and callback.epochs_explained == 1
    assert {"evet/evet/average_drop", "evet/original/energy_pointing_game", "evet/win"} <= set(metrics)
    assert "evet/evet/stability_index" not in metrics  # empty stability_transforms turns it off


def test_callback_from_a_yaml_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        """
trainer:
  callbacks:
    - class_path: evet_lightning.EVETCallback
      init_args:
        num_samples: 3
        target_layers: model.features.block4
        baseline: blur
        normalization: [[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
        target: prediction
        threshold: 0.95
        prefix: explain
"""
    )
    cli = LightningCLI(ShapesClassifier, SyntheticShapesDataModule, args=["--config", str(config), *TINY], run=False)
    callback = only_evet_callback(cli)
    assert callback.num_samples == 3
    assert callback.target_layers == ["model.features.block4"]
    assert callback.baseline == "blur" and callback.threshold == 0.95 and callback.target == "prediction"
    assert [list(values) for values in callback.normalization] == [[0.5] * 3, [0.25] * 3]  # type: ignore[union-attr]
    assert callback.metric_keys[0].startswith("explain/")


def test_bad_init_arg_is_rejected_by_the_callback_check() -> None:
    args = [*TINY, "--trainer.callbacks+=evet_lightning.EVETCallback", "--trainer.callbacks.init_args.threshold=0"]
    with pytest.raises(ValueError, match="Expected `threshold` to be a float in"):
        LightningCLI(ShapesClassifier, SyntheticShapesDataModule, args=args, run=False)


def test_transforms_by_class_path() -> None:
    rotate: dict[str, Any] = {"class_path": "evet_lightning.saliency.transforms.Rotate", "init_args": {"angle": 10}}
    args = [
        *TINY,
        "--trainer.callbacks+=evet_lightning.EVETCallback",
        f"--trainer.callbacks.init_args.stability_transforms=[{rotate}]",
    ]
    cli = LightningCLI(ShapesClassifier, SyntheticShapesDataModule, args=args, run=False)
    assert only_evet_callback(cli).stability_transforms == [Rotate(10.0)]
