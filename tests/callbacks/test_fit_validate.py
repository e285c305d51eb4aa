"""EVETCallback under fit and validate: documented keys, finite values, the same maps in both, correct plumbing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from evet_lightning import EVET, EVETCallback
from evet_lightning.functional import (
    average_difference,
    average_drop,
    energy_pointing_game,
    increase_in_confidence,
    stability_index,
    win,
)
from evet_lightning.functional.fusion import min_max_normalize
from evet_lightning.saliency.transforms import Rotate
from tests._helpers.models import IMAGE_SIZE, Classifier, DictClassifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import DictBatches, RecordingLogger, shapes_loader

PREFIX = "evet"
ALL_KEYS = {
    f"{PREFIX}/{name}"
    for name in (
        "original/average_drop",
        "evet/average_drop",
        "original/increase_in_confidence",
        "evet/increase_in_confidence",
        "original/energy_pointing_game",
        "evet/energy_pointing_game",
        "original/stability_index",
        "evet/stability_index",
        "win",
        "average_difference",
        "num_skipped",
        "alpha",
        *(
            f"diff/{metric}{suffix}"
            for metric in ("average_drop", "increase_in_confidence", "energy_pointing_game", "stability_index")
            for suffix in ("", "_low", "_high")
        ),
    )
}


def _evet_values(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if key.startswith(f"{PREFIX}/")}


@pytest.mark.parametrize("inference_mode", [True, False])
def test_fit_and_validate_log_every_key_finite(make_trainer: TrainerFactory, inference_mode: bool) -> None:
    """Regression: a naive CAM fails under no_grad/inference_mode ("does not require grad", "inference tensors")."""
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=6, log_images=0)
    trainer = make_trainer([callback], inference_mode=inference_mode)
    trainer.fit(Classifier(), shapes_loader(8), shapes_loader(8))
    fitted = _evet_values(trainer.callback_metrics)
    assert set(fitted) == ALL_KEYS
    assert all(math.isfinite(value) for value in fitted.values())
    assert fitted[f"{PREFIX}/num_skipped"] == 0.0
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()

    results = trainer.validate(trainer.lightning_module, dataloaders=shapes_loader(8), verbose=False)
    validated = _evet_values(results[0])
    assert set(validated) == ALL_KEYS
    assert all(math.isfinite(value) for value in validated.values())
    assert callback.last_num_samples == 6
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    timing = callback.last_timing
    assert timing["num_samples"] == 6 and 0 < timing["evet_seconds"] <= timing["seconds"]
    assert timing["seconds_per_image"] == pytest.approx(timing["evet_seconds"] / 6)


def test_same_maps_under_fit_validation_and_validate(make_trainer: TrainerFactory) -> None:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=5, log_images=0)
    trainer = make_trainer([callback])
    trainer.fit(Classifier(), shapes_loader(8), shapes_loader(8, batch_size=3))
    fit_maps = [(r.original, r.saliency, r.targets) for r in callback.last_results]
    fit_values = _evet_values(trainer.callback_metrics)
    fit_fingerprint = callback.fingerprint

    results = trainer.validate(trainer.lightning_module, dataloaders=shapes_loader(8, batch_size=3), verbose=False)
    validate_maps = [(r.original, r.saliency, r.targets) for r in callback.last_results]
    assert callback.fingerprint == pytest.approx(fit_fingerprint, rel=1e-12)
    assert len(fit_maps) == len(validate_maps) == 1
    for fitted, validated in zip(fit_maps[0], validate_maps[0], strict=True):
        assert fitted.shape[0] == 5
        torch.testing.assert_close(fitted, validated, rtol=0, atol=1e-6)
    assert _evet_values(results[0]) == pytest.approx(fit_values, abs=1e-6)


def test_logged_values_match_the_metric_definitions(make_trainer: TrainerFactory) -> None:
    """Each key gets the right inputs: recompute from the explained maps and scores with the functional metrics."""
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=7, log_images=0, max_batch_size=16)
    trainer = make_trainer([callback])
    loader = shapes_loader(10, batch_size=4)
    module = Classifier()
    values = _evet_values(trainer.validate(module, dataloaders=loader, verbose=False)[0])
    (result,) = callback.last_results
    images = torch.stack([loader.dataset[i][0] for i in range(7)])
    masks = torch.stack([loader.dataset[i][2] for i in range(7)])
    labels = torch.stack([loader.dataset[i][1] for i in range(7)])
    # stability index, independently: J(T(x)) from a plain CAM pass, J*(T(x)) from EVET, both mapped back
    evet, rotate = EVET(module, **callback.settings.evet_kwargs()), Rotate(5.0)
    rotated = rotate.forward(images)
    cam_back = rotate.inverse(min_max_normalize(evet.explain(rotated, labels).maps).unsqueeze(1)).squeeze(1)
    # J*(T(x)) at each sample's out-of-fold alpha (fold = position mod 2), as the callback re-blends it
    assert callback.last_alpha is not None
    evet_back = torch.empty_like(cam_back)
    for fold, alpha in enumerate(callback.last_alpha.alphas):
        index = torch.arange(fold, 7, 2)
        fixed = EVET(module, **{**callback.settings.evet_kwargs(), "alpha": float(alpha)})
        evet_back[index] = rotate.inverse(fixed(rotated[index], labels[index]).saliency.unsqueeze(1)).squeeze(1)
    valid = rotate.valid_mask(IMAGE_SIZE, IMAGE_SIZE).expand(7, -1, -1)
    assert torch.equal(result.targets, labels)  # target="label"
    clean, original, enhanced = result.clean_scores, result.view_scores[0], result.saliency_scores
    assert enhanced is not None
    expected = {
        "original/average_drop": average_drop(clean, original),
        "evet/average_drop": average_drop(clean, enhanced),
        "original/increase_in_confidence": increase_in_confidence(clean, original),
        "evet/increase_in_confidence": increase_in_confidence(clean, enhanced),
        "original/energy_pointing_game": energy_pointing_game(result.original, masks),
        "evet/energy_pointing_game": energy_pointing_game(result.saliency, masks),
        "original/stability_index": stability_index(result.original, cam_back, valid),
        "evet/stability_index": stability_index(result.saliency, evet_back, valid),
        "win": win(enhanced, original),
        "average_difference": average_difference(enhanced, original),
    }
    for name, value in expected.items():
        assert values[f"{PREFIX}/{name}"] == pytest.approx(float(value), abs=1e-6), name


def test_prediction_target_dict_batches_without_masks_and_submodule(make_trainer: TrainerFactory) -> None:
    """Dict batches with no mask: no pointing game; target='prediction' explains the argmax; model='model'."""
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=4, log_images=0, target="prediction", model="model")
    trainer = make_trainer([callback])
    module = DictClassifier()
    values = _evet_values(trainer.validate(module, dataloaders=DataLoader(DictBatches(6), batch_size=4))[0])
    assert set(values) == {key for key in ALL_KEYS if "energy_pointing_game" not in key}
    images = torch.stack([DictBatches(6)[i]["image"] for i in range(4)])
    with torch.no_grad():
        predicted = module.model.eval()(images).argmax(dim=1)
    assert torch.equal(callback.last_results[0].targets, predicted)


def test_bare_tensor_batches_and_a_non_finite_sample_is_skipped(make_trainer: TrainerFactory) -> None:
    """A NaN image is skipped and counted; every logged value stays finite."""
    images = torch.stack([shapes_loader(6).dataset[i][0] for i in range(6)])
    images[2] = float("nan")

    class TensorClassifier(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self(batch)

    callback = EVETCallback(num_samples=6, log_images=2)
    trainer = make_trainer([callback])
    loader = DataLoader(images, batch_size=4)  # bare tensors: no labels, no masks
    values = _evet_values(trainer.validate(TensorClassifier(), dataloaders=loader, verbose=False)[0])
    assert values[f"{PREFIX}/num_skipped"] == 1.0
    assert "evet/evet/energy_pointing_game" not in values
    assert all(math.isfinite(value) for value in values.values())
    assert callback.last_num_samples == 6


def test_every_n_epochs_and_only_the_first_dataloader(make_trainer: TrainerFactory) -> None:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=3, log_images=0, every_n_epochs=2)
    logger = RecordingLogger()

    class TwoLoaders(Classifier):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            super().validation_step(batch, batch_idx)

    first, second = shapes_loader(4, seed=1), shapes_loader(4, seed=7)
    trainer = make_trainer([callback], max_epochs=3, limit_train_batches=1, logger=logger)
    trainer.fit(TwoLoaders(), shapes_loader(4), [first, second])
    assert logger.epochs_with(f"{PREFIX}/win") == [1]  # validation runs 2, 4, ... (decision 33)
    assert logger.epochs_with("val_loss/dataloader_idx_0") == [0, 1, 2]
    # trainer.validate always explains, whatever the fit cadence (the next fit run, the 4th, would be explained)
    results = trainer.validate(trainer.lightning_module, dataloaders=first, verbose=False)
    assert f"{PREFIX}/win" in results[0]
    assert (callback.validation_runs, callback.epochs_explained) == (3, 2)
    labels = torch.stack([first.dataset[i][1] for i in range(3)])
    assert torch.equal(callback.last_results[0].targets, labels)


def test_subset_larger_than_validation_set(make_trainer: TrainerFactory) -> None:
    callback = EVETCallback(num_samples=32, log_images=0)
    x = torch.stack([shapes_loader(3).dataset[i][0] for i in range(3)])
    y = torch.stack([shapes_loader(3).dataset[i][1] for i in range(3)])
    trainer = make_trainer([callback])
    trainer.validate(Classifier(), dataloaders=DataLoader(TensorDataset(x, y), batch_size=2), verbose=False)
    assert callback.last_num_samples == 3


def test_inference_mode_run_then_no_grad_run_with_the_same_callback(make_trainer: TrainerFactory) -> None:
    """Metric states reset under inference mode would be inference tensors, unusable in a later no_grad run."""
    callback = EVETCallback(num_samples=2, log_images=0)
    module = Classifier()
    for inference_mode in (True, False, True):
        trainer = make_trainer([callback], inference_mode=inference_mode)
        values = _evet_values(trainer.validate(module, dataloaders=shapes_loader(2), verbose=False)[0])
        assert set(values) == ALL_KEYS
    trainer = make_trainer([callback], inference_mode=False)
    trainer.fit(module, shapes_loader(4), shapes_loader(2))
    assert callback.epochs_explained == 4
