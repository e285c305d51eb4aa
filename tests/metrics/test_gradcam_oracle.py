"""pytorch-grad-cam as an oracle for average drop and increase in confidence.

pytorch-grad-cam's ``DropInConfidence`` returns, per image, ``max(0, Y - O)`` and its
``IncreaseInConfidence`` returns ``1[O - Y > 0]``, where ``Y`` is the target softmax of the image and ``O``
that of ``image * cam`` (its multiplicative perturbation, our ``"zeros"`` baseline).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence
from pytorch_grad_cam.metrics.cam_mult_image import IncreaseInConfidence as GradCamIncrease
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from evet_lightning.functional import average_drop, increase_in_confidence, perturb, target_probabilities
from evet_lightning.metrics import AverageDrop, IncreaseInConfidence


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_grad_cam(seed: int) -> None:
    model = _model()
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(24, 3, 12, 12, generator=generator)
    cams = torch.rand(24, 12, 12, generator=generator)
    cams[:6] = cams[:6] ** 4  # some maps remove most of the image, others keep most of it
    targets = torch.randint(0, 4, (24,), generator=generator)
    gradcam_targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]

    drop_oracle = DropInConfidence()(images, cams.numpy(), gradcam_targets, model)
    increase_oracle = GradCamIncrease()(images, cams.numpy(), gradcam_targets, model)

    scores = target_probabilities(model, images, targets)
    masked_scores = target_probabilities(model, perturb(images, cams, baseline="zeros"), targets)

    per_sample_drop = torch.stack([average_drop(scores[i : i + 1], masked_scores[i : i + 1]) for i in range(24)])
    np.testing.assert_allclose(per_sample_drop.numpy(), np.asarray(drop_oracle) / scores.numpy(), atol=1e-5)
    per_sample_increase = torch.stack(
        [increase_in_confidence(scores[i : i + 1], masked_scores[i : i + 1]) for i in range(24)]
    )
    np.testing.assert_array_equal(per_sample_increase.numpy(), np.asarray(increase_oracle))
    # both outcomes occur, so the comparison is not trivially all zeros or all ones
    assert 0 < per_sample_increase.sum().item() < 24
    assert 0 < int((np.asarray(drop_oracle) > 0).sum()) < 24

    drop_metric, increase_metric = AverageDrop(), IncreaseInConfidence()
    drop_metric.update(scores, masked_scores)
    increase_metric.update(scores, masked_scores)
    assert drop_metric.compute().item() == pytest.approx(float(np.mean(drop_oracle / scores.numpy())), abs=1e-6)
    assert increase_metric.compute().item() == pytest.approx(float(np.mean(increase_oracle)), abs=1e-7)
