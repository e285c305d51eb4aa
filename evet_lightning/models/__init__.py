"""Models: small CNNs for the embedded datasets, and EfficientNet-Lite0 with offline ImageNet weights."""

from evet_lightning.models.efficientnet_lite import (
    CAM_TARGET_LAYER,
    IMAGENET_CATEGORIES,
    LITE0_INPUT_SIZE,
    LITE0_MEAN,
    LITE0_NORMALIZATION,
    LITE0_STD,
    EfficientNetLite0,
    MissingExtraError,
    efficientnet_lite0,
)
from evet_lightning.models.multi_label import MultiLabelShapesClassifier
from evet_lightning.models.small_cnn import ShapesClassifier, SmallCNN

__all__ = [
    "CAM_TARGET_LAYER",
    "IMAGENET_CATEGORIES",
    "LITE0_INPUT_SIZE",
    "LITE0_MEAN",
    "LITE0_NORMALIZATION",
    "LITE0_STD",
    "EfficientNetLite0",
    "MissingExtraError",
    "MultiLabelShapesClassifier",
    "ShapesClassifier",
    "SmallCNN",
    "efficientnet_lite0",
]
