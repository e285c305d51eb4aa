"""The callback with outside methods (issue 17): a user callable, Captum and zennit explain the same maps as the
engine on the same samples and leave the training run untouched."""

from __future__ import annotations

import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from evet_lightning import EVET, EVETCallback
from evet_lightning.saliency.transforms import HorizontalFlip
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


def _all_methods() -> list[tuple[str, dict[str, Any] | None]]:
    methods: list[tuple[str, dict[str, Any] | None]] = []
    try:
        import captum.attr  # noqa: F401

        methods += [
            ("captum:IntegratedGradients", {"n_steps": 2}),
            ("captum:Saliency", None),
            ("captum:InputXGradient", None),
            ("captum:GuidedBackprop", None),
            ("captum:DeepLift", None),
            ("captum:GradientShap", {"n_samples": 2}),
            ("captum:Occlusion", {"sliding_window_shapes": (3, 16, 16), "strides": (3, 16, 16)}),
            ("captum:SmoothGrad", {"nt_samples": 2}),
            ("captum:NoiseTunnel(IntegratedGradients)", {"nt_samples": 2, "n_steps": 2}),
            ("captum:LayerGradCam", None),
            ("captum:LRP", None),
        ]
    except ImportError:
        pass
    try:
        from evet_lightning.saliency.zennit_adapter import composite_names

        methods += [(f"zennit:{name}", None) for name in composite_names()]
    except ValueError:
        pass
    return methods


@pytest.mark.filterwarnings("ignore::UserWarning:captum")
def test_every_outside_method_in_one_validate(make_trainer: TrainerFactory) -> None:
    """Every listed Captum method and every zennit composite, one callback each (own prefix) in one ``validate``:
    every key logged and finite, the model as found."""
    methods = _all_methods()
    if not methods:
        pytest.skip("neither captum nor zennit is installed (the `captum` and `zennit` extras)")
    callbacks = [
        EVETCallback(
            cam=cam,
            cam_kwargs=kwargs,
            prefix=f"m{index}",
            num_samples=2,
            log_images=0,
            stability_transforms=[],
            alpha=0.25,
            transforms=[HorizontalFlip()],
        )
        for index, (cam, kwargs) in enumerate(methods)
    ]
    before, after = probes()
    pl.seed_everything(0)
    model = Classifier()
    trainer = make_trainer([before, *callbacks, after])
    metrics = trainer.validate(model, dataloaders=shapes_loader(2, batch_size=2), verbose=False)[0]
    assert after.changes == [[]]
    for index, callback in enumerate(callbacks):
        keys = [key for key in callback.metric_keys if key.split("/")[-1] != "stability_index"]
        assert keys and all(math.isfinite(metrics[key]) for key in keys), (methods[index], keys)
        assert callback.last_num_samples == 2
