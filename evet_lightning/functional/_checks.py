"""Input checks and reductions shared by the explanation-quality metrics.

Conventions shared by every metric:

- A sample with a NaN or Inf anywhere in its inputs is skipped: it adds nothing to the sums and is counted
  as skipped, so a logged value is never NaN.
- Per-sample values are computed and summed in float64; the final mean is returned as float32.
- A mean over zero samples (no update, an empty batch, or every sample skipped) is 0.0 with a warning.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

__all__: list[str] = []


def _check_floating(name: str, tensor: object, ndim: int, shape_doc: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"Expected `{name}` to be a torch.Tensor, but got {type(tensor).__name__}")
    if tensor.ndim != ndim:
        raise ValueError(f"Expected `{name}` to have shape {shape_doc}, but got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"Expected `{name}` to be a floating point tensor, but got {tensor.dtype}")
    return tensor


def _check_same_shape(name: str, tensor: Tensor, reference_name: str, reference: Tensor) -> None:
    if tensor.shape != reference.shape:
        raise ValueError(
            f"Expected `{name}` to have the same shape as `{reference_name}` {tuple(reference.shape)}, "
            f"but got {tuple(tensor.shape)}"
        )


def _check_score_pair(name_a: str, a: object, name_b: str, b: object) -> tuple[Tensor, Tensor]:
    """Check two ``(N,)`` floating point score tensors of the same shape."""
    a = _check_floating(name_a, a, 1, "(N,)")
    b = _check_floating(name_b, b, 1, "(N,)")
    _check_same_shape(name_b, b, name_a, a)
    return a, b


def _check_maps(name: str, maps: object) -> Tensor:
    """Check a ``(N, H, W)`` floating point stack of maps."""
    return _check_floating(name, maps, 3, "(N, H, W)")


def _check_binary_mask(name: str, mask: object, reference_name: str, reference: Tensor, validate_args: bool) -> Tensor:
    """Check a ``(N, H, W)`` bool (or integer 0/1) mask shaped like ``reference``; return it as bool."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"Expected `{name}` to be a torch.Tensor, but got {type(mask).__name__}")
    if mask.dtype != torch.bool and (mask.is_floating_point() or mask.is_complex()):
        raise ValueError(f"Expected `{name}` to be a bool (or integer 0/1) tensor, but got {mask.dtype}")
    _check_same_shape(name, mask, reference_name, reference)
    if mask.dtype == torch.bool:
        return mask
    if validate_args and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"Expected `{name}` to hold only 0 and 1, but got other values")
    return mask != 0


def _finite_samples(*tensors: Tensor) -> Tensor:
    """``(N,)`` bool: True where every element of the sample is finite in every tensor."""
    keep = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for tensor in tensors:
        per_sample = tensor.flatten(1) if tensor.ndim > 1 else tensor.unsqueeze(1)
        keep = keep & torch.isfinite(per_sample).all(dim=1)
    return keep


def _check_range(name: str, tensor: Tensor, keep: Tensor, low: float, high: float | None) -> None:
    """Raise ``ValueError`` if a kept (finite) sample of ``tensor`` has a value outside ``[low, high]``."""
    values = tensor[keep]
    if values.numel() == 0:
        return
    outside = values < low if high is None else (values < low) | (values > high)
    if bool(outside.any()):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        low_value, high_value = values.min().item(), values.max().item()
        raise ValueError(f"Expected `{name}` to be {bound}, but got values from {low_value:.6g} to {high_value:.6g}")


def _sum_kept(values: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sum float64 per-sample ``values`` over the kept samples: ``(total, num_samples, num_skipped)``."""
    total = torch.where(keep, values, torch.zeros_like(values)).sum()
    num_samples = keep.sum()
    return total, num_samples, keep.numel() - num_samples


def _safe_mean(total: Tensor, num_samples: Tensor, metric: str, warn: bool = True) -> Tensor:
    """``total / num_samples`` as float32; 0.0 (with a warning when ``warn``) when there are no samples."""
    if not bool(num_samples > 0):
        if warn:
            rank_zero_warn(
                f"`{metric}` has no samples to average (no update yet, empty inputs, or every sample skipped: "
                "see `num_skipped`); returning 0.0.",
                UserWarning,
            )
        return torch.zeros((), dtype=torch.float32, device=total.device)
    return (total.to(torch.float64) / num_samples.to(torch.float64)).to(torch.float32)
