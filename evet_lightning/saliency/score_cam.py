"""Score-CAM (Wang et al., CVPRW 2020) in torch, batched on the device, and Faster-Score-CAM.

The same map as pytorch-grad-cam's ``ScoreCAM`` (tested to 1e-4), computed without numpy and for a whole
chunk of images at once: each activation channel ``A_c`` (``(h, w)``) is upsampled to the input size
(bilinear, ``align_corners=True`` as the library's ``UpsamplingBilinear2d``), min-max normalized per channel
(``(u - min) / (max - min + 1e-8)``), and multiplies the image; the masked images of a chunk of channels,
across images, go through the model in one forward pass of ``batch_size`` images. The target logit of each
masked image is the channel's score; ``w = softmax_c(scores)`` (over the channels, as the library), the map is
``relu(sum_c w_c A_c)``, scaled and resized exactly as pytorch-grad-cam's ``scale_cam_image`` does.

Faster-Score-CAM (the paper's Score-CAM, Sec. 4 and its footnote 3, tabayashi0117/Score-CAM) scores only
the ``max_channels`` activation maps with the largest spatial variance (per image); the softmax and the sum
run over those channels only. Its default, :data:`FASTER_SCORE_CAM_CHANNELS`, is decision 22 in docs/design.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evet_lightning._validation import check_int
from evet_lightning.saliency.explainers import (
    Explanation,
    _resolve_targets,
    _scale_like_grad_cam,
    forward_capturing,
    occurrence_rounds,
)
from evet_lightning.saliency.outputs import OutputTransform, logits_from_output
from evet_lightning.saliency.reshape import FeatureMapReader, ReshapeTransform

__all__ = ["FASTER_SCORE_CAM_CHANNELS", "SCORE_CAMS", "ScoreCAM"]

#: Faster-Score-CAM's default number of activation maps: the k of the reference implementation the paper
#: used (tabayashi0117/Score-CAM, ``max_N=10``); the paper does not state it (decision 22).
FASTER_SCORE_CAM_CHANNELS = 10
#: The native Score-CAM names, and their default ``max_channels`` (``None``: every channel).
SCORE_CAMS: dict[str, int | None] = {"ScoreCAM": None, "FasterScoreCAM": FASTER_SCORE_CAM_CHANNELS}


class ScoreCAM:
    """Score-CAM on ``target_layers``, in torch; ``max_channels=k`` is Faster-Score-CAM.

    Args:
        target_layers: the layers explained; with several, their maps are averaged as pytorch-grad-cam does.
        batch_size: masked images per forward pass (pytorch-grad-cam's ``batch_size``); ``None`` uses the
            engine's chunk size.
        max_channels: score only the ``k`` channels whose activation map has the largest spatial variance,
            per image (Faster-Score-CAM); ``None`` scores every channel (Score-CAM).
        reshape_transform, output_transform: as for :class:`~evet_lightning.saliency.explainers.NativeCAM`.

    Everything runs without autograd: no parameter's ``.grad`` is written.
    """

    def __init__(
        self,
        target_layers: Sequence[nn.Module],
        *,
        batch_size: int = 16,
        max_channels: int | None = None,
        reshape_transform: ReshapeTransform | None = None,
        output_transform: OutputTransform | None = None,
    ) -> None:
        self.target_layers = list(target_layers)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.max_channels = None if max_channels is None else check_int("max_channels", max_channels, 1)
        self.reshape_transform = reshape_transform
        self.output_transform = output_transform

    def _forward(self, model: nn.Module, images: Tensor, reader: FeatureMapReader) -> tuple[Tensor, list[Tensor]]:
        """Logits and each target layer's output (a copy, at its last call), without autograd."""
        return forward_capturing(
            model, images, self.target_layers, reader, self.output_transform, lambda out: (out.detach().clone(), None)
        )

    def _channel_scores(self, model: nn.Module, images: Tensor, feature_map: Tensor, columns: Tensor) -> Tensor:
        """``(N, C, T)`` logits of classes ``columns[n] (T,)`` for every image n masked by each of its (upsampled,
        normalized) channels. The masked images do not depend on the class: one forward pass serves every class
        of an image (decision 46)."""
        num_images, num_channels = feature_map.shape[:2]
        size = images.shape[-2:]
        flat = feature_map.flatten(0, 1)  # (N C, h, w), image-major
        scores = []
        for start in range(0, flat.shape[0], self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, flat.shape[0]), device=images.device)
            image_index = torch.div(index, num_channels, rounding_mode="floor")
            masks = F.interpolate(flat[index].unsqueeze(1), size=size, mode="bilinear", align_corners=True)
            low = masks.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
            high = masks.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
            masks = (masks - low) / (high - low + 1e-8)
            masked = images[image_index] * masks.to(images.dtype)
            logits = logits_from_output(model(masked), self.output_transform, num_images=masked.shape[0])
            scores.append(logits.float().gather(1, columns[image_index]))
        return torch.cat(scores).view(num_images, num_channels, columns.shape[1])

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor | None) -> Explanation:
        return self._explain(model, images, None, targets)

    def explain_rows(self, model: nn.Module, images: Tensor, rows: Tensor, targets: Tensor) -> Explanation:
        """Class ``targets[q]``'s Score-CAM of ``images[rows[q]]`` for every pair q: the activations and the masked
        images' forward passes are computed once per image, whatever the number of its classes (decision 46)."""
        return self._explain(model, images, rows, targets)

    def _explain(self, model: nn.Module, images: Tensor, rows: Tensor | None, targets: Tensor | None) -> Explanation:
        reader = FeatureMapReader(model, images, self.reshape_transform)
        height, width = images.shape[-2:]
        with torch.no_grad():
            logits, activations = self._forward(model, images, reader)
            targets = _resolve_targets(logits, targets)
            if rows is None:
                rows = torch.arange(targets.numel(), device=targets.device)
                columns, slots = targets.view(-1, 1), torch.zeros_like(targets)
            else:
                columns, slots = _class_columns(rows, targets, images.shape[0])
            per_layer = []
            for layer, activation in zip(self.target_layers, activations, strict=True):
                feature_map = reader(activation, layer).float()
                if self.max_channels is not None and self.max_channels < feature_map.shape[1]:
                    variance = feature_map.flatten(2).var(dim=2)
                    top = variance.topk(self.max_channels, dim=1).indices  # (N, k)
                    feature_map = feature_map.gather(1, top[:, :, None, None].expand(-1, -1, *feature_map.shape[2:]))
                scores = self._channel_scores(model, images, feature_map, columns)[rows, :, slots]  # (Q, C)
                weights = scores.softmax(dim=1)
                cam = (weights[:, :, None, None] * feature_map[rows]).sum(dim=1).clamp_min(0)
                cam = _scale_like_grad_cam(cam)
                if cam.shape[-2:] != (height, width):
                    cam = F.interpolate(cam.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
                    cam = cam.squeeze(1)
                per_layer.append(cam)
            maps = _scale_like_grad_cam(torch.stack(per_layer, dim=1).clamp_min(0).mean(dim=1))
        return Explanation(torch.nan_to_num(maps, nan=0.0).clamp(0, 1), logits.detach().float()[rows])


def _class_columns(rows: Tensor, targets: Tensor, num_images: int) -> tuple[Tensor, Tensor]:
    """``(columns (N, T), slots (Q,))``: the classes asked of each image (class 0 where it has fewer than T) and
    the column of pair q's class in its image's row."""
    rounds = occurrence_rounds(rows)
    columns = targets.new_zeros((num_images, len(rounds)))
    slots = torch.zeros_like(rows)
    for slot, selected in enumerate(rounds):
        columns[rows[selected], slot] = targets[selected]
        slots[selected] = slot
    return columns, slots
