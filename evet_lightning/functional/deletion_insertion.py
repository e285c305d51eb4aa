r"""Deletion and insertion curves and their AUC (Petsiuk et al., RISE, BMVC 2018), for the saliency maps here.

Definitions, for an image ``x`` of ``N = H * W`` pixels, its saliency map ``M`` and a target class ``c``:

- Order: pixels ranked by ``M``, descending; ties are broken by the pixel's row-major index (a stable sort),
  so a constant map changes pixels in raster order, deterministically.
- Steps: ``k = 0 .. S``; at step ``k`` the top ``n_k = floor(k * N / S)`` pixels change, in every channel.
- Deletion: the top ``n_k`` pixels are replaced by the baseline ``x_d`` (default: black in pixel space, the
  same x_d as Phi of Eq. (3), from :func:`~evet_lightning.functional.perturbation.resolve_baseline`).
  Step 0 is the clean image, step S the baseline. Lower AUC is better.
- Insertion: the image starts as the insertion baseline ``x_i`` (default: a Gaussian blur of the image,
  kernel 11, sigma 5, as in RISE) and the top ``n_k`` pixels are the original ones. Step 0 is the baseline,
  step S the clean image. Higher AUC is better.
- Curve: the target-class probability ``f_c`` at each step, ``(B, S + 1)``: the softmax over the classes, or with
  ``activation="sigmoid"`` (multi-label models, decision 45) the sigmoid of the class's logit.
- AUC: the trapezoid rule on [0, 1] with spacing ``1 / S``:
  ``(sum_k curve[k] - (curve[0] + curve[S]) / 2) / S``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from evet_lightning._model_state import model_state_guard
from evet_lightning._outputs import OutputTransform, logits_from_output
from evet_lightning._validation import check_int
from evet_lightning.functional._checks import (
    _check_floating,
    _check_range,
    _finite_samples,
    _safe_mean,
    _sum_kept,
)
from evet_lightning.functional.activation import Activation, check_activation, target_class_probabilities
from evet_lightning.functional.perturbation import Baseline, Normalization, _gaussian_blur, resolve_baseline

__all__ = ["curve_auc", "deletion_curve", "insertion_curve"]

#: The insertion baseline ``"blur"``: RISE's Gaussian blur, an 11 x 11 kernel with sigma 5.
RISE_BLUR_KERNEL_SIZE = 11
RISE_BLUR_SIGMA = 5.0


def _rise_blur(images: Tensor) -> Tensor:
    """RISE's blur: a separable 11-tap Gaussian, sigma 5, normalized to sum 1, edges padded by replication.

    RISE convolves with zero padding, which darkens a 5-pixel border; replication keeps the border at image
    values and works for images of any size, as the ``"blur"`` of :func:`resolve_baseline` does.
    """
    return _gaussian_blur(images, RISE_BLUR_SIGMA, radius=RISE_BLUR_KERNEL_SIZE // 2)


def _check_curve_arguments(
    model: object,
    images: object,
    saliency: object,
    targets: object,
    steps: object,
    max_batch_size: object,
    output_transform: object,
) -> tuple[Tensor, Tensor, Tensor | None, int, int]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}")
    images = _check_floating("images", images, 4, "(B, C, H, W)")
    saliency = _check_floating("saliency", saliency, 3, "(B, H, W)")
    batch, _, height, width = images.shape
    if saliency.shape != (batch, height, width):
        raise ValueError(
            f"Expected `saliency` to have shape (B, H, W) = {(batch, height, width)} like the images, "
            f"but got {tuple(saliency.shape)}"
        )
    if targets is not None:
        if not isinstance(targets, Tensor) or targets.shape != (batch,):
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"Expected `targets` to have shape ({batch},) like the batch, but got {shape}")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(f"Expected `targets` to be an integer tensor, but got {targets.dtype}")
        targets = targets.to(device=images.device, dtype=torch.long)
        if batch and bool((targets < 0).any()):
            raise ValueError(f"Expected `targets` to be non-negative class indices, but got {int(targets.min())}")
    steps = check_int("steps", steps, 1)
    max_batch_size = check_int("max_batch_size", max_batch_size, 1)
    if output_transform is not None and not callable(output_transform):
        raise ValueError(f"Expected `output_transform` to be a callable or None, but got {output_transform!r}")
    return images, saliency.to(images.device), targets, steps, max_batch_size


def _logits(output: object, num_images: int, output_transform: OutputTransform | None) -> Tensor:
    """The ``(num_images, K)`` logits in a model's output; ``ValueError`` for anything else."""
    logits = logits_from_output(output, output_transform, num_images=num_images)
    if logits.ndim != 2 or logits.shape[0] != num_images or logits.shape[1] < 1:
        raise ValueError(
            f"Expected the model to return logits of shape ({num_images}, K), but got {tuple(logits.shape)}"
        )
    return logits


def _argmax_targets(
    model: nn.Module, images: Tensor, max_batch_size: int, output_transform: OutputTransform | None
) -> Tensor:
    targets = []
    for start in range(0, images.shape[0], max_batch_size):
        chunk = images[start : start + max_batch_size]
        logits = _logits(model(chunk), chunk.shape[0], output_transform)
        targets.append(logits.argmax(dim=1).to(images.device))
    return torch.cat(targets)


def _perturbation_curve(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor | None,
    steps: int,
    max_batch_size: int,
    top_source: Tensor,
    rest_source: Tensor,
    output_transform: OutputTransform | None,
    activation: Activation = "softmax",
) -> Tensor:
    """``(B, S + 1)`` target probabilities of the images whose top ``n_k`` pixels come from ``top_source``.

    Every (sample, step) image is built from a rank tensor (``rank[p] < n_k``) and goes through the model in
    chunks of ``max_batch_size``, sample-major, so memory is bounded by the chunk and not by ``B * (S + 1)``.
    """
    batch, _, height, width = images.shape
    num_points = steps + 1
    device = images.device
    if batch == 0:
        return images.new_zeros((0, num_points), dtype=torch.promote_types(images.dtype, torch.float32))
    num_pixels = height * width
    # rank[b, p]: the position of pixel p in the descending order of saliency[b]; the stable sort keeps ties in
    # row-major order.
    order = torch.sort(saliency.flatten(1), dim=1, descending=True, stable=True).indices
    positions = torch.arange(num_pixels, device=device).expand(batch, -1)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    # n_k = floor(k * N / S) in exact integer arithmetic.
    counts = torch.arange(num_points, device=device) * num_pixels // steps
    probabilities = []
    with model_state_guard(model, protect_grads=False), torch.no_grad():
        if targets is None:
            targets = _argmax_targets(model, images, max_batch_size, output_transform)
        for start in range(0, batch * num_points, max_batch_size):
            pairs = torch.arange(start, min(start + max_batch_size, batch * num_points), device=device)
            sample, step = pairs // num_points, pairs % num_points
            changed = rank.index_select(0, sample) < counts.index_select(0, step).unsqueeze(1)
            step_images = torch.where(
                changed.view(-1, 1, height, width),
                top_source.index_select(0, sample),
                rest_source.index_select(0, sample),
            )
            logits = _logits(model(step_images), pairs.shape[0], output_transform)
            if start == 0 and bool((targets >= logits.shape[1]).any()):
                raise ValueError(
                    f"Expected `targets` to be class indices in [0, {logits.shape[1]}) for a model with "
                    f"{logits.shape[1]} classes, but got values up to {int(targets.max())}"
                )
            probabilities.append(target_class_probabilities(logits, targets.index_select(0, sample), activation))
    curves = torch.cat(probabilities).to(device).view(batch, num_points)
    # A sample with NaN/Inf in its image or map gets a NaN curve, which the metrics skip and count.
    finite = _finite_samples(images, saliency)
    return curves.masked_fill(~finite.unsqueeze(1), float("nan"))


def _curve(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor | None,
    steps: int,
    baseline: Baseline,
    normalization: Normalization,
    max_batch_size: int,
    output_transform: OutputTransform | None,
    insertion: bool,
    activation: Activation = "softmax",
) -> Tensor:
    """:func:`deletion_curve` (the top pixels come from the baseline) or :func:`insertion_curve` (from the image)."""
    images, saliency, targets, steps, max_batch_size = _check_curve_arguments(
        model, images, saliency, targets, steps, max_batch_size, output_transform
    )
    activation = check_activation(activation) or "softmax"
    if insertion and isinstance(baseline, str) and baseline == "blur":
        x_b = _rise_blur(images)
    else:
        x_b = resolve_baseline(images, baseline, normalization)
    top, rest = (images, x_b) if insertion else (x_b, images)
    return _perturbation_curve(
        model, images, saliency, targets, steps, max_batch_size, top, rest, output_transform, activation
    )


def deletion_curve(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor | None = None,
    *,
    steps: int = 20,
    baseline: Baseline = "black",
    normalization: Normalization = None,
    max_batch_size: int = 64,
    output_transform: OutputTransform | None = None,
    activation: Activation = "softmax",
) -> Tensor:
    r"""Deletion curve: the target probability as the most salient pixels are replaced by the baseline.

    At step ``k = 0 .. S`` the top ``n_k = floor(k * N / S)`` pixels of the map (``N = H * W``; descending
    saliency, ties in row-major order) are replaced by the baseline ``x_d`` in every channel, and the curve holds
    the target-class probability (softmax, or sigmoid with ``activation="sigmoid"``). Step 0 is the clean image,
    step S the baseline alone. A faithful map makes the probability fall fast: lower :func:`curve_auc` is better.

    Args:
        model: a classifier returning logits ``(N, K)`` (or an output that
            :func:`~evet_lightning.saliency.outputs.logits_from_output` reads). It runs in eval mode under
            ``torch.no_grad()`` and is left exactly as found (training flags, ``requires_grad``, hooks, RNG).
            Works inside ``torch.inference_mode()``.
        images: ``(B, C, H, W)`` float, on the device the model runs on.
        saliency: ``(B, H, W)`` float maps at the image size (upsample low-resolution maps first); only the order
            of the values matters.
        targets: ``(B,)`` integer classes, or ``None`` for the model's argmax class on the clean images (one extra
            forward pass per image).
        steps: ``S >= 1``, the number of steps; the curve has ``S + 1`` points.
        baseline: ``x_d``: ``"black"`` (zero intensity in pixel space, using ``normalization``), ``"zeros"``,
            ``"blur"`` (the blur of Phi: sigma = 1/16 of the shorter side), a tensor broadcastable to the images,
            or a callable ``images -> x_d``; exactly :func:`~evet_lightning.functional.resolve_baseline`, so the
            same ``baseline`` as EVET's Phi (Eq. 3) gives the same x_d.
        normalization: ``(mean, std)`` the images were normalized with, for ``"black"``.
        max_batch_size: at most this many step images go through the model at once; memory is bounded by it.
        output_transform: ``model output -> (N, K) logits`` for a model whose output
            :func:`~evet_lightning.saliency.outputs.logits_from_output` does not recognise (EVET's option).
        activation: ``"softmax"`` (the default) or ``"sigmoid"`` (a multi-label model's independent outputs):
            how the logits become the curve's probability (decision 45, EVET's resolved ``activation``).

    Returns:
        ``(B, S + 1)`` probabilities on the images' device, float32 (float64 when the model returns float64
        logits). A sample with NaN/Inf in its image or map gets a row of NaN (the metrics skip and count it).

    Raises:
        ValueError: if an argument has the wrong type or shape, ``steps`` or ``max_batch_size`` is not a positive
            integer, a target is outside the model's classes, or the model's output holds no ``(N, K)`` logits.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from evet_lightning.functional import curve_auc, deletion_curve
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
        >>> curves = deletion_curve(model, torch.rand(2, 3, 4, 4), torch.rand(2, 4, 4), steps=4)
        >>> curves.shape, curve_auc(curves).shape
        (torch.Size([2, 5]), torch.Size([2]))
    """
    return _curve(
        model,
        images,
        saliency,
        targets,
        steps,
        baseline,
        normalization,
        max_batch_size,
        output_transform,
        False,
        activation,
    )


def insertion_curve(
    model: nn.Module,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor | None = None,
    *,
    steps: int = 20,
    baseline: Baseline = "blur",
    normalization: Normalization = None,
    max_batch_size: int = 64,
    output_transform: OutputTransform | None = None,
    activation: Activation = "softmax",
) -> Tensor:
    r"""Insertion curve: the target probability as the most salient pixels are restored on the baseline.

    The image starts as the insertion baseline ``x_i``; at step ``k = 0 .. S`` the top
    ``n_k = floor(k * N / S)`` pixels of the map (``N = H * W``; descending saliency, ties in row-major order)
    are the original ones, in every channel, and the curve holds the target-class probability (see ``activation``).
    Step 0 is the baseline alone, step S the clean image. A faithful map makes the probability rise fast: higher
    :func:`curve_auc` is better.

    Args, returns and errors: as :func:`deletion_curve`, except ``baseline``: ``x_i``. ``"blur"`` here is
    RISE's blur: a Gaussian with an 11 x 11 kernel and sigma 5 (separable, normalized, edges replicated),
    whatever the image size. This differs from the ``"blur"`` of
    :func:`~evet_lightning.functional.resolve_baseline` (sigma = 1/16 of the shorter side); pass
    ``lambda x: resolve_baseline(x, "blur")`` for that one. ``"black"``, ``"zeros"``, a tensor or a callable mean
    what they mean for :func:`~evet_lightning.functional.resolve_baseline`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from evet_lightning.functional import curve_auc, insertion_curve
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
        >>> images = torch.rand(2, 3, 4, 4)
        >>> curves = insertion_curve(model, images, torch.rand(2, 4, 4), torch.tensor([0, 1]), steps=4)
        >>> torch.allclose(curves[:, -1], model(images).softmax(-1)[[0, 1], [0, 1]])  # step S: the clean image
        True
    """
    return _curve(
        model,
        images,
        saliency,
        targets,
        steps,
        baseline,
        normalization,
        max_batch_size,
        output_transform,
        True,
        activation,
    )


def _check_curves(curves: object, steps: int | None = None) -> Tensor:
    """Check a ``(B, S + 1)`` floating point stack of curves (with ``S + 1`` fixed when ``steps`` is given)."""
    curves = _check_floating("curves", curves, 2, "(B, S + 1)")
    if steps is not None and curves.shape[1] != steps + 1:
        raise ValueError(
            f"Expected `curves` to have shape (B, {steps + 1}) for steps={steps}, but got {tuple(curves.shape)}"
        )
    if curves.shape[1] < 2:
        raise ValueError(f"Expected `curves` to have shape (B, S + 1) with S >= 1, but got {tuple(curves.shape)}")
    return curves


def _trapezoid(curves: Tensor) -> Tensor:
    """Float64 ``(B,)`` trapezoid areas on [0, 1] with spacing ``1 / S``."""
    values = curves.to(torch.float64)
    steps = values.shape[1] - 1
    return (values.sum(dim=1) - 0.5 * (values[:, 0] + values[:, -1])) / steps


def _curve_auc_update(curves: Tensor, steps: int, validate_args: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sum of per-sample AUCs and of the curves themselves (float64), with the kept and skipped sample counts.

    A sample (row) with NaN/Inf anywhere in its curve is skipped.

    Returns:
        ``(sum_auc, sum_curve, num_samples, num_skipped)``: a float64 scalar, a float64 ``(S + 1,)`` and two
        int64 scalars.
    """
    curves = _check_curves(curves, steps)
    keep = _finite_samples(curves)
    if validate_args:
        _check_range("curves", curves, keep, 0.0, 1.0)
    # Zero the skipped rows first so NaN/Inf never reach a sum.
    values = torch.where(keep.unsqueeze(1), curves.to(torch.float64), 0.0)
    sum_curve = values.sum(dim=0)
    sum_auc, num_samples, num_skipped = _sum_kept(_trapezoid(values), keep)
    return sum_auc, sum_curve, num_samples, num_skipped


def _curve_auc_compute(sum_auc: Tensor, num_samples: Tensor, warn: bool = True, metric: str = "curve_auc") -> Tensor:
    """Mean AUC, float32; 0.0 with a warning when there are no samples.

    Example:
        >>> state = _curve_auc_update(torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]), steps=2)
        >>> _curve_auc_compute(state[0], state[2])
        tensor(0.7500)
    """
    return _safe_mean(sum_auc, num_samples, metric, warn)


def _mean_curve(sum_curve: Tensor, num_samples: Tensor) -> Tensor:
    """``sum_curve / num_samples`` as float32 ``(S + 1,)``; zeros when there are no samples."""
    return (sum_curve.to(torch.float64) / num_samples.clamp_min(1).to(torch.float64)).to(torch.float32)


def curve_auc(curves: Tensor) -> Tensor:
    r"""Area under each curve by the trapezoid rule on [0, 1] with spacing ``1 / S``.

    .. math:: \text{AUC} = \frac{1}{S}\left(\sum_{k=0}^{S} y_k - \frac{y_0 + y_S}{2}\right)

    Args:
        curves: ``(B, S + 1)`` float, e.g. from :func:`deletion_curve` or :func:`insertion_curve`; ``S >= 1``.

    Returns:
        ``(B,)`` areas, computed in float64 and returned in the curves' dtype. A row with NaN/Inf gives NaN/Inf
        here (the metric classes skip such rows and count them).

    Raises:
        ValueError: if ``curves`` is not a floating point ``(B, S + 1)`` tensor with ``S >= 1``.

    Example:
        >>> import torch
        >>> from evet_lightning.functional import curve_auc
        >>> curve_auc(torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]]))
        tensor([0.5000, 0.7500])
    """
    curves = _check_curves(curves)
    return _trapezoid(curves).to(curves.dtype)
