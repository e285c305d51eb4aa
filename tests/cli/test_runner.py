"""``run_method``: the per-sample scores it returns are the ones behind the values ``trainer.validate`` logged.

They come from the per-sample file the callback's rows are written to, with the samples the callback skipped
(non-finite image) left out, so the tables' own comparisons (Table 1's "Original" win, Table 3) use the same
samples as the logged metrics; the values computed from the rows are the logged ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from evet_lightning.evaluation import EvaluationData, EvaluationModel, run_method
from evet_lightning.evaluation.row_metrics import metrics_from_rows
from evet_lightning.evaluation.runner import EvaluationModule, evaluation_callback
from evet_lightning.evaluation.sample_file import SampleFileWriter, read_rows, sample_files
from evet_lightning.evaluation.sheet_maps import sheet_images_and_maps
from evet_lightning.functional import average_drop, increase_in_confidence, win
from evet_lightning.functional.perturbation import perturb, target_probabilities
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
    assert run.indices is not None and run.indices.tolist() == kept
    assert run.clean_scores.shape == run.original_scores.shape == run.evet_scores.shape == (5,)
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


@pytest.mark.parametrize("calibration", [32, 2])  # every sample in the calibration set; 4 later samples
def test_values_from_the_rows_are_the_logged_ones(
    images_with_one_broken: TensorDataset, tmp_path: Path, calibration: int
) -> None:
    """What ``trainer.validate`` returns and what ``evaluate`` computes from the per-sample file agree."""
    model = untrained_small_cnn().eval()
    settings = EVETSettings(max_batch_size=4, target_layers=None)
    callback = evaluation_callback(
        settings.replace(cam="GradCAM"), 6, deletion_insertion=True, deletion_steps=2, alpha_calibration=calibration
    )
    writer = SampleFileWriter(tmp_path, "GradCAM", 0, range(6), None)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[callback, writer],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(images_with_one_broken, batch_size=4)
    logged = trainer.validate(EvaluationModule(model), dataloaders=loader, verbose=False)[0]
    folds = list(callback.last_alpha.alphas) if callback.last_alpha is not None else None
    values = metrics_from_rows(read_rows(sample_files(tmp_path, "GradCAM")), folds=folds, calibration=calibration)
    assert sorted(values) == sorted(logged)
    for key, value in logged.items():
        assert values[key] == pytest.approx(float(value), abs=1e-6), key
    assert "evet/diff/insertion_auc_low" in values and "evet/alpha" in values


def test_the_sheet_maps_are_the_scored_ones(images_with_one_broken: TensorDataset) -> None:
    """The maps explained again for a heatmap sheet give the O the rows recorded (same engine, same alpha)."""
    model = EvaluationModel(untrained_small_cnn().eval(), "tiny_cnn")
    data = EvaluationData(images_with_one_broken, "six", has_masks=False, max_label=3)
    settings = EVETSettings(max_batch_size=4)
    run = run_method(model, data, "GradCAM", settings=settings, progress=False, batch_size=4)
    images, sheet = sheet_images_and_maps(model, data, run, 3, settings=settings, accelerator="cpu")
    assert images.shape == (3, 3, 32, 32) and sheet.evet_maps.shape == sheet.original_maps.shape == (3, 32, 32)
    assert torch.equal(images, images_with_one_broken.tensors[0][[0, 1, 3]])  # the broken sample 2 is skipped
    for maps, scores in ((sheet.original_maps, run.original_scores), (sheet.evet_maps, run.evet_scores)):
        recomputed = target_probabilities(model.module, perturb(images, maps), sheet.targets)
        assert recomputed == pytest.approx(scores[:3], abs=1e-5)
