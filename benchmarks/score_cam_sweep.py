"""Native Score-CAM against pytorch-grad-cam's ScoreCAM on every family of the architecture sweep (issue 17).

The test suite checks a representative subset (``tests/saliency/test_architectures.py``, ``SCORE_CAM_CASES``):
Score-CAM makes one forward pass per channel of the target layer, and the full sweep (up to 1,280 channels per
layer, 21 families) takes minutes on a CPU. This script runs all of it: each family's auto-detected
layer (the one the engine explains by default), random weights (batch-norm statistics set on random batches), one
image at the family's smallest size, both implementations on the same layer and target, and prints the largest
absolute difference of the maps (target < 1e-4) and the seconds each took (the native time is its first call on
the model; on a loaded machine the seconds say little).

Two constant maps would agree vacuously, and Score-CAM's ``relu(sum_c w_c A_c)`` is zero everywhere when the
weighted activations are negative (random-weight MaxViT and ConvNeXt blocks on a 2 x 2 grid). So the comparison
uses the first (model seed, image seed, class) whose native map spans at least 0.5, trying model seeds 0-3, image
seeds 1-4 and every class; a family where none does counts as a failure.

Usage, from the repository root: ``PYTHONPATH=. python benchmarks/score_cam_sweep.py [--families a,b]``.
Exits 1 if any family differs by 1e-4 or more.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import sys
import time
from typing import NamedTuple

import pytorch_grad_cam
import torch
from torch import nn

from evet_lightning._model_state import model_state_guard
from evet_lightning.saliency.explainers import Explanation
from evet_lightning.saliency.grad_cam_adapter import GradCamLibraryExplainer
from evet_lightning.saliency.reshape import ReshapeTransform
from evet_lightning.saliency.score_cam import ScoreCAM
from tests.saliency.test_architectures import FAMILIES, NUM_CLASSES


def _build(key: str, seed: int) -> nn.Module:
    """The family's model with seeded random weights; batch-norm statistics set from 4 random batches.

    Without that step some random-weight models are degenerate: torchvision's EfficientNet-B0 at its init has
    ``features.8`` activations of about 1e-13 and logits of 1e-13, so every Score-CAM map is numerical noise.
    """
    size = FAMILIES[key].size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FAMILIES[key].build()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the batches
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(8, 3, size, size))
        return model.eval()


class Case(NamedTuple):
    """The first (model seed, image seed, class) whose native map is not constant, and its native run."""

    seeds: tuple[int, int, int]
    model: nn.Module
    layer: nn.Module
    reshape: ReshapeTransform | None
    images: torch.Tensor
    targets: torch.Tensor
    native: Explanation
    seconds: float


def _first_non_constant(key: str) -> Case:
    family = FAMILIES[key]
    for model_seed in range(4):
        model = _build(key, model_seed)
        layer = model.get_submodule(family.layer)
        reshape = family.reshape() if family.reshape is not None else None
        for image_seed, target in itertools.product(range(1, 5), range(NUM_CLASSES)):
            images = torch.randn(1, 3, family.size, family.size, generator=torch.Generator().manual_seed(image_seed))
            targets = torch.tensor([target])
            start = time.perf_counter()
            with model_state_guard(model, protect_grads=False):
                native = ScoreCAM([layer], batch_size=64, reshape_transform=reshape)(model, images, targets)
            seconds = time.perf_counter() - start
            if float(native.maps.max() - native.maps.min()) >= 0.5:
                return Case((model_seed, image_seed, target), model, layer, reshape, images, targets, native, seconds)
    raise RuntimeError(f"{key}: every native Score-CAM map tried was constant")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated FAMILIES keys")
    args = parser.parse_args()
    print("| family | layer | seeds, class | max abs difference | native (s) | pytorch-grad-cam (s) |")
    print("| --- | --- | --- | ---: | ---: | ---: |", flush=True)
    worst = 0.0
    for key in args.families.split(","):
        family = FAMILIES[key]
        try:
            case = _first_non_constant(key)
        except RuntimeError as error:
            print(f"| {key} | {family.layer} | none | {error} | | |", flush=True)
            worst = max(worst, 1.0)
            continue
        start = time.perf_counter()
        with model_state_guard(case.model, protect_grads=True), contextlib.redirect_stderr(io.StringIO()):
            explainer = GradCamLibraryExplainer(
                pytorch_grad_cam.ScoreCAM, [case.layer], 64, reshape_transform=case.reshape
            )
            library = explainer(case.model, case.images, case.targets)
        seconds = f"{case.seconds:.1f} | {time.perf_counter() - start:.1f}"
        difference = float((library.maps - case.native.maps).abs().max())
        worst = max(worst, difference)
        print(f"| {key} | {family.layer} | {case.seeds} | {difference:.2e} | {seconds} |", flush=True)
    print(f"largest difference over the sweep: {worst:.2e} (target < 1e-4)")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
