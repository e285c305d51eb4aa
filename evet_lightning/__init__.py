"""EVET saliency enhancement and explanation-quality metrics for PyTorch Lightning."""

__version__ = "0.1.0"

__all__ = ["__version__"]
