"""ScoreCAM through pytorch-grad-cam (the class; the name is native): no progress bars, tqdm put back."""

from __future__ import annotations

import pytest
import pytorch_grad_cam.score_cam as score_cam
import torch
from torch import nn

from evet_lightning import EVET


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def test_score_cam_prints_no_progress_bar_and_restores_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    original = score_cam.tqdm
    maps = EVET(_model(), target_layers="1", cam=score_cam.ScoreCAM).explain(torch.rand(2, 3, 8, 8)).maps
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "%|" not in captured.err
    assert score_cam.tqdm is original
    assert maps.shape == (2, 8, 8)


def test_tqdm_is_restored_when_the_library_raises() -> None:
    original = score_cam.tqdm

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.conv(x)
            if not torch.is_grad_enabled():  # ScoreCAM scores its masked images under no_grad
                raise RuntimeError("boom")
            return features.mean(dim=(2, 3))[:, :2]

    with pytest.raises(RuntimeError, match="boom"):
        EVET(Broken(), target_layers="conv", cam=score_cam.ScoreCAM).explain(torch.rand(1, 3, 8, 8))
    assert score_cam.tqdm is original
