"""The maps of a heatmap sheet, explained again for the first samples of a method's rows (decision 41).

The callback keeps no maps for ``evaluate`` (its rows are scalars, and the processes of a multi-device run or
the attempts of a resumed one do not share memory), so the sheet's few samples are explained once more by the
same engine (:meth:`~evet_lightning.EVET.from_settings`), each at the alpha its row records.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import Tensor

from evet_lightning.data.batch import unpack_batch
from evet_lightning.evaluation.data import EvaluationData
from evet_lightning.evaluation.devices import accelerator_device
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.evaluation.records import MethodRun
from evet_lightning.saliency.evet import EVET
from evet_lightning.saliency.settings import EVETSettings

__all__ = ["sheet_images_and_maps"]


def sheet_images_and_maps(
    model: EvaluationModel,
    data: EvaluationData,
    run: MethodRun,
    count: int,
    *,
    settings: EVETSettings,
    accelerator: str = "auto",
) -> tuple[Tensor, MethodRun]:
    """The images ``(M, C, H, W)`` of ``run``'s first ``M = min(count, N)`` explained samples and ``run`` with
    those samples' original and EVET maps (``(M, H, W)``, on the CPU) and per-sample tensors cut to them."""
    assert run.indices is not None and run.sample_alphas is not None, "a run made from its rows"
    rows = min(count, int(run.indices.numel()))
    device = accelerator_device(accelerator)
    images, originals, enhanced = [], [], []
    engine = EVET.from_settings(model.module.to(device), settings.replace(cam=run.method))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # pytorch-grad-cam's per-call progress bars
            for row in range(rows):
                image = unpack_batch(tuple(data.dataset[int(run.indices[row])]))[0]
                target = run.targets[row : row + 1].to(device)
                result = engine(image[None].to(device), target, alpha=float(run.sample_alphas[row]))
                images.append(image)
                originals.append(result.original[0].detach().cpu())
                enhanced.append(result.saliency[0].detach().cpu())
    finally:
        model.module.to("cpu")
    cut = slice(0, rows)
    sheet_run = MethodRun(
        method=run.method,
        metrics=run.metrics,
        targets=run.targets[cut],
        clean_scores=run.clean_scores[cut],
        original_scores=run.original_scores[cut],
        evet_scores=run.evet_scores[cut],
        original_maps=torch.stack(originals) if originals else torch.zeros(0, 1, 1),
        evet_maps=torch.stack(enhanced) if enhanced else torch.zeros(0, 1, 1),
    )
    return (torch.stack(images) if images else torch.zeros(0, 1, 1, 1)), sheet_run
