"""EVET saliency enhancement and explanation-quality metrics for PyTorch Lightning."""

from evet_lightning.callbacks import EVETCallback
from evet_lightning.saliency.evet import EVET, EVETResult

__version__ = "0.1.0"

__all__ = ["EVET", "EVETCallback", "EVETResult", "__version__"]
