"""How saliency maps are made: transforms, explainers (CAM backends) and EVET."""

from evet_lightning.saliency.evet import EVET, EVETResult
from evet_lightning.saliency.explainers import Explainer, Explanation, GradientExplainer, NativeCAM
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
    "Explainer",
    "Explanation",
    "GradientExplainer",
    "HorizontalFlip",
    "Identity",
    "NativeCAM",
    "Rotate",
    "Scale",
    "Shear",
    "paper_transforms",
]
