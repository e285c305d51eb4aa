"""The new methods go through the callback (issue 17): native Faster-Score-CAM, a wrapper with its base method
and options, and Guided Grad-CAM, in ``trainer.validate``."""

from __future__ import annotations

import math
from typing import Any

import pytest
import pytorch_lightning as pl

from evet_lightning import EVETCallback
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader


@pytest.mark.parametrize(
    ("cam", "cam_kwargs"),
    [
        ("FasterScoreCAM", {"max_channels": 4}),
        ("SESS", {"base_method": "HiResCAM", "num_scales": 2}),
        ("GuidedGradCAM", None),
    ],
)
def test_library_methods_run_in_the_callback(make_trainer: TrainerFactory, cam: str, cam_kwargs: Any) -> None:
    pl.seed_everything(0)
    model = Classifier()
    callback = EVETCallback(cam=cam, cam_kwargs=cam_kwargs, num_samples=4, log_images=0, alpha=0.5)
    (metrics,) = make_trainer([callback]).validate(model, shapes_loader(8, batch_size=4), verbose=False)
    values = {key: value for key, value in metrics.items() if key.startswith("evet/")}
    assert "evet/evet/average_drop" in values and all(math.isfinite(value) for value in values.values())
    assert callback.settings.cam_kwargs == cam_kwargs
    (result,) = callback.last_results
    assert float(result.original.amax(dim=(1, 2)).min()) > 0.5
