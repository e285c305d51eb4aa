"""How saliency maps are made: transforms, explainers (CAM backends, the public ``Explainer`` contract and
``CallableExplainer`` for your own method, Captum and zennit adapters) and EVET."""

from evet_lightning.saliency.evet import EVET, EVETResult
from evet_lightning.saliency.explainers import (
    CallableExplainer,
    Explainer,
    Explanation,
    GradientExplainer,
    NativeCAM,
    SaliencyFunction,
    attribution_to_map,
    maps_from_output,
)
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
    "CallableExplainer",
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
    "SaliencyFunction",
    "Scale",
    "Shear",
    "attribution_to_map",
    "logits_from_output",
    "maps_from_output",
    "paper_transforms",
    "swin_reshape_transform",
    "vit_reshape_transform",
]
