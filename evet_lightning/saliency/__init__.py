"""How saliency maps are made: transforms, explainers (CAM backends) and EVET."""

from evet_lightning.saliency.evet import EVET, EVETResult
from evet_lightning.saliency.explainers import Explainer, Explanation, GradientExplainer, NativeCAM
from evet_lightning.saliency.outputs import logits_from_output
from evet_lightning.saliency.reshape import swin_reshape_transform, vit_reshape_transform
from evet_lightning.saliency.settings import EVETSettings
from evet_lightning.saliency.transforms import (
    AffineTransform,
    Compose,
    HorizontalFlip,
    Identity,
    Rotate,
    Scale,
    Shear,
    paper_transforms,
)

__all__ = [
    "EVET",
    "AffineTransform",
    "Compose",
    "EVETResult",
    "EVETSettings",
    "Explainer",
    "Explanation",
    "GradientExplainer",
    "HorizontalFlip",
    "Identity",
    "NativeCAM",
    "Rotate",
    "Scale",
    "Shear",
    "logits_from_output",
    "paper_transforms",
    "swin_reshape_transform",
    "vit_reshape_transform",
]
