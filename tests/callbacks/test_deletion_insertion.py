"""EVETCallback(deletion_insertion=True): the AUCs of the final maps, logged per variant, and the mean curves."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from evet_lightning import EVETCallback
from evet_lightning.functional import curve_auc, deletion_curve, insertion_curve
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader

STEPS = 5
NORMALIZATION = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
AUC_KEYS = [f"evet/{variant}/{curve}_auc" for variant in ("original", "evet") for curve in ("deletion", "insertion")]


class SharpClassifier(Classifier):
    """The tiny classifier with its logits scaled up, so that perturbing pixels moves the probabilities."""

    def forward(self, x: Tensor) -> Tensor:
        return 50.0 * super().forward(x)


def _loader_with_a_nan_image() -> DataLoader[Any]:
    """Six labelled shapes (normalized with NORMALIZATION), the third one all NaN."""
    dataset = shapes_loader(6).dataset
    images = torch.stack([dataset[index][0] for index in range(6)])
    images = (images - 0.5) / 0.25
    images[2] = float("nan")
    labels = torch.stack([torch.as_tensor(dataset[index][1]) for index in range(6)])
    return DataLoader(TensorDataset(images, labels), batch_size=3)


def test_logged_aucs_are_those_of_the_final_maps(make_trainer: TrainerFactory) -> None:
    """Each sample's AUC and the logged means equal curve_auc(deletion_curve(...)) recomputed from the maps in
    last_samples, with the callback's baseline and normalization; the NaN sample is skipped, not logged."""
    torch.manual_seed(0)
    module = SharpClassifier()
    callback = EVETCallback(
        num_samples=6,
        log_images=0,
        deletion_insertion=True,
        deletion_steps=STEPS,
        normalization=NORMALIZATION,
        max_batch_size=4,  # two chunks: 4 + 2 samples
        stability_transforms=[],
    )
    trainer = make_trainer([callback])
    trainer.validate(module, dataloaders=_loader_with_a_nan_image(), verbose=False)
    samples = callback.last_samples
    assert samples is not None and len(samples.chunks) == 2
    expected: dict[str, list[Tensor]] = {key.removeprefix("evet/"): [] for key in AUC_KEYS}
    for chunk in samples.chunks:
        for variant, maps in (("original", chunk.result.original), ("evet", chunk.result.saliency)):
            common: dict[str, Any] = {"steps": STEPS, "normalization": NORMALIZATION}
            deletion = deletion_curve(module, chunk.images, maps, chunk.result.targets, baseline="black", **common)
            insertion = insertion_curve(module, chunk.images, maps, chunk.result.targets, **common)
            expected[f"{variant}/deletion_auc"].append(curve_auc(deletion))
            expected[f"{variant}/insertion_auc"].append(curve_auc(insertion))
    finite = samples.finite
    assert finite.tolist() == [True, True, False, True, True, True]
    for key in AUC_KEYS:
        per_sample = torch.cat(expected[key.removeprefix("evet/")])
        torch.testing.assert_close(
            samples.aucs[key.removeprefix("evet/")][finite], per_sample[finite], rtol=0, atol=1e-6
        )
        assert math.isnan(float(samples.aucs[key.removeprefix("evet/")][2]))
        logged = float(trainer.callback_metrics[key])
        assert logged == pytest.approx(float(per_sample[finite].double().mean()), abs=1e-6)
    # The curves separate the variants and the two curves (a swap or a copy would not pass above).
    assert not torch.allclose(samples.aucs["original/deletion_auc"][finite], samples.aucs["evet/deletion_auc"][finite])
    assert set(AUC_KEYS) <= set(callback.metric_keys)
    assert callback.last_timing["curve_seconds"] > 0


def test_off_by_default_no_keys_no_curves(make_trainer: TrainerFactory, tmp_path: Any) -> None:
    callback = EVETCallback(num_samples=2, log_images=1, stability_transforms=[])
    assert not set(AUC_KEYS) & set(callback.metric_keys)
    trainer = make_trainer([callback])
    trainer.validate(Classifier(), dataloaders=shapes_loader(2), verbose=False)
    assert "evet/win" in trainer.callback_metrics
    assert not set(AUC_KEYS) & set(trainer.callback_metrics)
    assert callback.last_samples is not None and callback.last_samples.aucs == {}
    assert callback.last_timing["curve_seconds"] == 0.0
    assert not os.path.exists(os.path.join(tmp_path, "evet_curves"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"deletion_insertion": 1}, "`deletion_insertion`"), ({"deletion_steps": 0}, "`deletion_steps`")],
)
def test_invalid_options_raise(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EVETCallback(**kwargs)
