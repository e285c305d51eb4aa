"""Lightning callbacks: :class:`EVETCallback` tracks explanation quality during training and evaluation."""

from evet_lightning.callbacks.evet_callback import EVETCallback

__all__ = ["EVETCallback"]
