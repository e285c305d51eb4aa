"""The ``--accelerator`` choices, checked before any work: asking for a device that is not there is an error.

Without the check, ``demo --accelerator gpu`` failed inside Lightning with a traceback, and ``evaluate
--accelerator cuda`` quietly ran on the CPU.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from evet_lightning.evaluation.errors import UsageError

__all__ = ["ACCELERATORS", "Accelerator", "accelerator_device", "check_accelerator", "lightning_accelerator"]

Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_accelerator(accelerator: str) -> None:
    """Raise :class:`UsageError` when ``accelerator`` is unknown or names a device this machine does not have."""
    if accelerator not in ACCELERATORS:
        raise UsageError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, not {accelerator!r}")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(f"--accelerator {accelerator}: no CUDA GPU is available here; use --accelerator cpu or auto")
    if accelerator == "mps" and not _mps_available():
        raise UsageError("--accelerator mps: no Apple MPS device is available here; use --accelerator cpu or auto")


def accelerator_device(accelerator: str) -> torch.device:
    """The device ``accelerator`` runs on: ``auto`` is CUDA when available, else the CPU.

    Raises:
        UsageError: as :func:`check_accelerator`.
    """
    check_accelerator(accelerator)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def lightning_accelerator(device: torch.device) -> str:
    """The Lightning ``Trainer(accelerator=...)`` for a device from :func:`accelerator_device`."""
    return {"cuda": "gpu", "mps": "mps"}.get(device.type, "cpu")
