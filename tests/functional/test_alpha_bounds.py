"""alpha is bounded to what float32 holds (issue 15, bug 6; decision 27): above 3.4e38 it overflowed to inf, and
inf * (0.5 - 0.5) = NaN turned every pixel at exactly 0.5 into zero."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evet_lightning import EVETCallback
from evet_lightning._validation import MAX_ALPHA
from evet_lightning.functional.fusion import blend, fuse_maps
from evet_lightning.saliency import EVETSettings
from tests.cli.test_errors import assert_usage_error

MEAN = torch.tensor([[[0.2, 0.5], [0.9, 0.5]]])
#: Eq. (5) at an alpha large enough to be a step at 0.5 (sigma = 0), then min-max: 0.5 stays 0.5.
STEP = torch.tensor([[[0.0, 0.5], [1.0, 0.5]]])


@pytest.mark.parametrize("alpha", [3.5e38, 1e300, MAX_ALPHA * 1e3])
def test_blend_cannot_overflow(alpha: float) -> None:
    sigma = torch.zeros_like(MEAN)
    torch.testing.assert_close(blend(MEAN, sigma, alpha), STEP, atol=0, rtol=0)
    torch.testing.assert_close(
        blend(MEAN, sigma, torch.tensor([0.0, alpha], dtype=torch.float64))[1], STEP, atol=0, rtol=0
    )


def test_the_largest_alpha_accepted_is_a_step_function() -> None:
    maps = torch.stack([MEAN, MEAN])  # two identical views: sigma = 0
    torch.testing.assert_close(fuse_maps(maps, torch.tensor([[0.9], [0.95]]), alpha=MAX_ALPHA), STEP, atol=0, rtol=0)


@pytest.mark.parametrize("alpha", [3.5e38, MAX_ALPHA * 1.01])
def test_an_alpha_above_the_bound_is_refused_everywhere(alpha: float, tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match=r"`alpha` to be a float in \[0, 1e6\]"):
        EVETSettings(alpha=alpha)
    with pytest.raises(ValueError, match=r"`alpha` to be a float in \[0, 1e6\]"):
        EVETCallback(alpha=alpha)
    with pytest.raises(ValueError, match=r"`alpha_grid` to be a float in \[0, 1e6\]"):
        EVETSettings(alpha_grid=(0.0, alpha))
    with pytest.raises(ValueError, match=r"`alpha` to be a float in \[0, 1e6\]"):
        fuse_maps(torch.stack([MEAN, MEAN]), torch.tensor([[0.9], [0.95]]), alpha=alpha)
    argv = ["evaluate", "--model", "tests.cli._factories:tiny_cnn", "--alpha", repr(alpha), "--output", str(tmp_path)]
    assert_usage_error(capsys, argv, "alpha")
    assert EVETSettings(alpha=MAX_ALPHA).alpha == MAX_ALPHA
