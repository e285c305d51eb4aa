"""``run_method``: the per-sample scores it returns are the ones behind the values ``trainer.validate`` logged.

They come from the callback's ``last_results`` (one ``EVETResult`` per chunk), with the samples the callback
skipped (non-finite image) left out, so the tables' own comparisons (Table 1's "Original" win, Table 3) use the
same samples as the logged metrics.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from evet_lightning.evaluation import EvaluationData, EvaluationModel, run_method
from evet_lightning.functional import average_drop, increase_in_confidence, win
from evet_lightning.saliency import EVETSettings
from tests._helpers.models import untrained_small_cnn


@pytest.fixture(scope="module")
def images_with_one_broken() -> TensorDataset:
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 32, 32, generator=generator)
    images[2, 0, 5, 5] = float("inf")  # the callback skips this sample and counts it
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    return TensorDataset(images, labels)


def test_per_sample_scores_match_the_logged_metrics(images_with_one_broken: TensorDataset) -> None:
    model = EvaluationModel(untrained_small_cnn().eval(), "tiny_cnn")
    data = EvaluationData(images_with_one_broken, "six", has_masks=False, max_label=3)
    settings = EVETSettings(max_batch_size=4)  # alpha="auto": the scores are those of the out-of-fold maps
    run = run_method(model, data, "GradCAM", settings=settings, progress=False, batch_size=4)
    assert run.metrics["evet/num_skipped"] == 1.0
    kept = [0, 1, 3, 4, 5]
    assert torch.equal(run.targets, images_with_one_broken.tensors[1][kept])
    assert run.clean_scores.shape == run.original_scores.shape == run.evet_scores.shape == (5,)
    assert run.original_maps.shape == run.evet_maps.shape == (5, 32, 32)
    logged = run.metrics
    assert float(average_drop(run.clean_scores, run.original_scores)) == pytest.approx(
        logged["evet/original/average_drop"], abs=1e-6
    )
    assert float(average_drop(run.clean_scores, run.evet_scores)) == pytest.approx(
        logged["evet/evet/average_drop"], abs=1e-6
    )
    assert float(increase_in_confidence(run.clean_scores, run.evet_scores)) == pytest.approx(
        logged["evet/evet/increase_in_confidence"], abs=1e-6
    )
    assert float(win(run.evet_scores, run.original_scores)) == pytest.approx(logged["evet/win"], abs=1e-6)
    assert run.seconds_per_image is not None and run.seconds_per_image > 0  # the callback's last_timing


def test_keep_maps_keeps_the_first_maps_only(images_with_one_broken: TensorDataset) -> None:
    model = EvaluationModel(untrained_small_cnn().eval(), "tiny_cnn")
    data = EvaluationData(images_with_one_broken, "six", has_masks=False, max_label=3)
    every = run_method(model, data, "Gradient", progress=False)
    first = run_method(model, data, "Gradient", progress=False, keep_maps=2)
    assert first.original_maps.shape == first.evet_maps.shape == (2, 32, 32)
    assert torch.equal(first.evet_maps, every.evet_maps[:2]) and first.evet_scores.shape == (5,)
