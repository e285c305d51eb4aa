"""alpha="auto" in the callback: each fold's maps use the alpha chosen on the *other* fold (decision 11)."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from evet_lightning import EVETCallback
from evet_lightning.callbacks.alpha_selection import sample_folds
from evet_lightning.functional import average_drop
from evet_lightning.functional.alpha import DEFAULT_ALPHA_GRID, AlphaCurve
from evet_lightning.functional.fusion import blend
from tests._helpers.models import Classifier
from tests._helpers.trainer import TrainerFactory
from tests.callbacks._modules import shapes_loader

GRID = DEFAULT_ALPHA_GRID  # (0, 0.1, 0.25, 0.5, 1)


def pick_by_count(curve: AlphaCurve) -> torch.Tensor:
    """Chooses grid index ``num_samples % A``: with 5 samples, fold 0 (positions 0, 2, 4) has 3 and fold 1 has 2,
    so a choice made *in* fold differs from the one made *out of* fold."""
    values = torch.ones(curve.alphas.numel(), dtype=torch.float64)
    values[int(curve.num_samples) % curve.alphas.numel()] = 0.0
    return values


def _validate(make_trainer: TrainerFactory, **kwargs: Any) -> tuple[EVETCallback, dict[str, float]]:
    pl.seed_everything(0)
    callback = EVETCallback(num_samples=5, log_images=0, stability_transforms=[], **kwargs)
    trainer = make_trainer([callback])
    (values,) = trainer.validate(Classifier(), dataloaders=shapes_loader(5, batch_size=5), verbose=False)
    return callback, values


def test_each_fold_uses_the_alpha_chosen_on_the_other_fold(make_trainer: TrainerFactory) -> None:
    callback, values = _validate(make_trainer, alpha_objective=pick_by_count)
    choice = callback.last_alpha
    assert choice is not None
    # Fold 0's maps use fold 1's choice (2 samples -> index 2, alpha 0.25); fold 1's use fold 0's (3 -> index 3).
    assert choice.indices == (2, 3) and choice.alphas == (GRID[2], GRID[3])
    assert values["evet/alpha"] == pytest.approx((GRID[2] + GRID[3]) / 2)
    samples = callback.last_samples
    assert samples is not None
    (chunk,) = samples.chunks
    result = chunk.result
    assert result.alpha_scores is not None
    folds = torch.tensor([0, 1, 0, 1, 0])
    assert torch.equal(chunk.folds.cpu(), folds)
    for sample, fold in enumerate(folds.tolist()):
        alpha, index = choice.alphas[fold], choice.indices[fold]
        expected = blend(result.fused_mean[sample : sample + 1], result.fused_sigma[sample : sample + 1], alpha)
        torch.testing.assert_close(result.saliency[sample : sample + 1], expected, rtol=0, atol=0)
        assert float(chunk.evet_scores[sample]) == float(result.alpha_scores[index, sample])
    # The logged average drop is that of these out-of-fold scores.
    assert values["evet/evet/average_drop"] == pytest.approx(
        float(average_drop(samples.clean_scores, samples.evet_scores)), abs=1e-6
    )


def test_the_in_fold_choice_would_differ(make_trainer: TrainerFactory) -> None:
    """Sanity of the construction above: each fold's own curve points at the other index."""
    callback, _ = _validate(make_trainer, alpha_objective=pick_by_count)
    choice = callback.last_alpha
    assert choice is not None
    assert int(choice.curve.num_samples) == 5
    own = [int(pick_by_count(choice.curve._replace(num_samples=torch.tensor(n))).argmin()) for n in (3, 2)]
    assert own == [3, 2] and tuple(own) != choice.indices


def test_a_fixed_alpha_logs_no_alpha_and_keeps_the_engine_maps(make_trainer: TrainerFactory) -> None:
    callback, values = _validate(make_trainer, alpha=0.25)
    assert "evet/alpha" not in values and callback.last_alpha is None
    samples = callback.last_samples
    assert samples is not None
    result = samples.chunks[0].result
    assert result.alpha == 0.25 and result.alpha_scores is None
    torch.testing.assert_close(result.saliency, blend(result.fused_mean, result.fused_sigma, 0.25), rtol=0, atol=0)


def test_stability_maps_are_reblended_at_each_folds_alpha(make_trainer: TrainerFactory) -> None:
    from evet_lightning.saliency.transforms import Rotate

    pl.seed_everything(0)
    callback = EVETCallback(
        num_samples=5, log_images=0, stability_transforms=[Rotate(5.0)], alpha_objective=pick_by_count
    )
    make_trainer([callback]).validate(Classifier(), dataloaders=shapes_loader(5, batch_size=5), verbose=False)
    assert callback.last_samples is not None and callback.last_alpha is not None
    chunk = callback.last_samples.chunks[0]
    (stability,) = chunk.stability
    assert stability.transform is not None and stability.transformed is not None
    transformed = stability.transformed
    for sample, fold in enumerate([0, 1, 0, 1, 0]):
        alpha = callback.last_alpha.alphas[fold]
        expected = stability.transform.inverse(
            blend(
                transformed.fused_mean[sample : sample + 1], transformed.fused_sigma[sample : sample + 1], alpha
            ).unsqueeze(1)
        ).squeeze(1)
        torch.testing.assert_close(stability.saliency[sample : sample + 1], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (0, 2), (1, 2), (2, 3)])
def test_folds_follow_the_global_position_whatever_the_number_of_processes(rank: int, world_size: int) -> None:
    local = sample_folds(4, rank=rank, world_size=world_size)
    positions = [k * world_size + rank for k in range(4)]
    assert local.tolist() == [position % 2 for position in positions]


def test_each_alphas_stability_is_a_blend_of_the_stability_run(make_trainer: TrainerFactory) -> None:
    """The guard's per-alpha stability index equals the logged stability index of the maps at that alpha."""
    from evet_lightning.callbacks.alpha_selection import alpha_stability
    from evet_lightning.functional.stability_index import stability_index
    from evet_lightning.saliency.transforms import Rotate

    pl.seed_everything(0)
    callback = EVETCallback(num_samples=5, log_images=0, stability_transforms=[Rotate(5.0)])
    make_trainer([callback]).validate(Classifier(), dataloaders=shapes_loader(5, batch_size=5), verbose=False)
    assert callback.last_samples is not None and callback.last_alpha is not None
    assert callback.last_alpha.curve.stability is not None  # the guard saw the stability run
    chunk = callback.last_samples.chunks[0]
    (run,) = chunk.stability
    per_alpha = alpha_stability(chunk.result, chunk.stability, GRID)
    assert per_alpha is not None
    for index, alpha in enumerate(GRID):
        moved = run.at_alphas(torch.zeros(5, dtype=torch.long), (alpha, alpha))
        maps = blend(chunk.result.fused_mean, chunk.result.fused_sigma, alpha)
        expected = stability_index(maps, moved.saliency, run.valid.expand(5, -1, -1))
        assert float(per_alpha[0][index].mean()) == pytest.approx(float(expected), abs=1e-6)
    assert float(per_alpha[1].mean()) == pytest.approx(
        float(stability_index(chunk.result.original, run.original, run.valid.expand(5, -1, -1))), abs=1e-6
    )
