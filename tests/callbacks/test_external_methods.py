"""The callback with outside methods (issue 17): a user callable, Captum and zennit explain the same maps as the
engine on the same samples and leave the training run untouched."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from evet_lightning import EVET, EVETCallback
from tests._helpers.models import Classifier
from tests._helpers.saliency import input_times_gradient
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import probes, shapes_loader

METHODS = [
    pytest.param(input_times_gradient, None, id="callable"),
    pytest.param("captum:IntegratedGradients", {"n_steps": 4}, id="captum-IntegratedGradients"),
    pytest.param("zennit:EpsilonPlusFlat", None, id="zennit-EpsilonPlusFlat"),
]


@pytest.mark.parametrize(("cam", "cam_kwargs"), METHODS)
def test_outside_methods_in_the_callback(make_trainer: TrainerFactory, cam: Any, cam_kwargs: Any) -> None:
    """Validation mid-accumulation (gradients there to disturb; the callable itself calls backward): params,
    .grad, requires_grad, hooks, flags, optimizer and RNG states as found; then the maps of ``validate`` are the
    engine's on the same samples."""
    pytest.importorskip(cam.split(":")[0]) if isinstance(cam, str) else None
    before, after = probes()
    callback = EVETCallback(
        cam=cam, cam_kwargs=cam_kwargs, num_samples=4, log_images=1, stability_transforms=[], alpha=0.25
    )  # a fixed alpha: "auto" in the callback chooses out of fold, the engine on the images given
    pl.seed_everything(0)
    model = Classifier()
    trainer = make_trainer(
        [before, callback, after], accumulate_grad_batches=4, val_check_interval=2, limit_train_batches=4
    )
    trainer.fit(model, shapes_loader(16, seed=0, batch_size=4, shuffle=True), shapes_loader(4, batch_size=4))
    assert after.changes == [[], []]
    assert trainer.callback_metrics["evet/win"] >= 0
    name = callback.cam_name
    assert name == (cam if isinstance(cam, str) else "input_times_gradient")
    loader = shapes_loader(4, batch_size=4)
    metrics = trainer.validate(model, dataloaders=loader, verbose=False)[0]
    assert all(torch.isfinite(torch.tensor(value)) for key, value in metrics.items() if key.startswith("evet/"))
    (result,) = callback.last_results
    images, labels, _ = next(iter(loader))
    expected = EVET(model, **callback.settings.evet_kwargs())(images, labels)
    torch.testing.assert_close(result.original, expected.original, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.saliency, expected.saliency, atol=1e-5, rtol=0)
