"""EVET: Enhancing Visual Explanations using image Transformations (Oh et al., WACV 2021, Sec. 3.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evet_lightning._model_state import model_state_guard
from evet_lightning.functional.fusion import DEFAULT_ALPHA, fuse_maps_detailed, min_max_normalize
from evet_lightning.functional.perturbation import Baseline, Normalization, check_baseline, perturb, resolve_baseline
from evet_lightning.saliency.explainers import NATIVE_CAMS, Explainer, Explanation, GradientExplainer, NativeCAM
from evet_lightning.saliency.grad_cam_adapter import GradCamLibraryExplainer, available_cam_classes, is_cam_class
from evet_lightning.saliency.layers import LayerSpec, check_target_layers, resolve_target_layers
from evet_lightning.saliency.transforms import AffineTransform, Identity, paper_transforms

__all__ = ["EVET", "CamSpec", "EVETResult", "check_evet_arguments"]

#: A CAM: a pytorch-grad-cam class, its name, or ``"Gradient"``.
CamSpec = str | type

_BACKENDS = ("auto", "native", "pytorch-grad-cam")


@dataclass(frozen=True)
class EVETResult:
    """Everything one EVET call computed for ``B`` images and ``V = n + 1`` views (view 0 = identity)."""

    saliency: Tensor
    """``(B, H, W)`` float32 in [0, 1]: the EVET map J*(x)."""
    original: Tensor
    """``(B, H, W)`` float32 in [0, 1]: the un-enhanced map J(x) (view 0 of the same run)."""
    weights: Tensor
    """``(V, B)`` the weights w_v of Eq. (4); 0 for filtered views."""
    kept: Tensor
    """``(V, B)`` bool, the filter decisions of Eq. (2)."""
    targets: Tensor
    """``(B,)`` the class k explained for each image (given, or the argmax on the untransformed image)."""
    view_scores: Tensor
    """``(V, B)`` ``f_k(Phi(x, M_v))``; ``view_scores[0]`` is the perturbed-image probability O of J(x)."""
    clean_scores: Tensor
    """``(B,)`` ``f_k(x)``, the target probability Y of the clean image (model in eval mode)."""
    saliency_scores: Tensor | None
    """``(B,)`` ``f_k(Phi(x, J*(x)))`` when the call asked for it (``score_saliency=True``), else ``None``."""
    finite: Tensor
    """``(B,)`` bool: the image and its logits were finite. Maps of other images are zeros, not NaN."""


class EVET:
    """Enhance a saliency method with image transformations, as in Oh et al. (WACV 2021).

    For every image, the saliency method J is applied to the image and to its transformed copies
    ``T_i(x)``; the maps are min-max normalized, mapped back with ``T_i^{-1}`` (Eq. 1), scored by the target
    probability of the perturbed image ``f_k(Phi(x, M_i))`` (Eq. 3), filtered (Eq. 2) and fused (Eq. 4-7).

    Args:
        model: a classifier returning logits ``(B, K)``. It is left exactly as found: see
            :func:`~evet_lightning.saliency._guard.model_state_guard`; saliency is computed in eval mode.
        target_layers: module(s) or dotted name(s) of the layer(s) a CAM explains; ``None`` auto-detects the
            last module producing a 4-D spatial map (reported in the log at INFO). Ignored for ``"Gradient"``.
        cam: a pytorch-grad-cam CAM class, its name (``"GradCAM"``, ``"ScoreCAM"``, ...), or ``"Gradient"``.
            GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM and LayerCAM are computed natively in torch
            (head-only gradients, batched on the device); other classes run through pytorch-grad-cam.
        transforms: the transforms ``T_1 .. T_n``; ``None`` means the paper's 7 (:func:`paper_transforms`).
        threshold: Gamma of Eq. (2), in (0, 1]; view v is kept when ``s_v > threshold * s_0``.
        alpha: boost strength of Eq. (5), >= 0. The default is our choice (the paper does not publish its
            values): see :data:`~evet_lightning.functional.fusion.DEFAULT_ALPHA`.
        baseline: x_d of Eq. (3): ``"black"``, ``"zeros"``, ``"blur"``, a tensor or a callable.
        normalization: ``(mean, std)`` the images were normalized with, so ``"black"`` is black in pixels.
        max_batch_size: at most this many images (views) go through the model at once; memory is bounded by
            it, not by the number of views or images.
        backend: ``"auto"`` (native when possible), ``"native"`` or ``"pytorch-grad-cam"`` (force the library,
            e.g. to compare).

    Decisions where the paper is silent (design.md section 4): the target class is fixed once per image
    (label or argmax of the untransformed image); invalid pixels (no pre-image in the transformed canvas) are
    left out of the fusion and, for scoring a view, filled from view 0; sigma is the unweighted sample
    standard deviation (ddof=1) of the kept valid maps divided by its upper bound; a constant map is zeros.
    Transformed images are zero-filled outside the canvas.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
        >>> result = EVET(model, target_layers="1")(torch.rand(2, 3, 8, 8))
        >>> result.saliency.shape, result.weights.shape
        (torch.Size([2, 8, 8]), torch.Size([8, 2]))
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec = None,
        cam: CamSpec = "GradCAM",
        transforms: Sequence[AffineTransform] | None = None,
        threshold: float = 0.99,
        alpha: float = DEFAULT_ALPHA,
        baseline: Baseline = "black",
        normalization: Normalization = None,
        max_batch_size: int = 64,
        *,
        backend: str = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}")
        transforms = check_evet_arguments(
            cam=cam,
            transforms=transforms,
            threshold=threshold,
            alpha=alpha,
            baseline=baseline,
            normalization=normalization,
            max_batch_size=max_batch_size,
            backend=backend,
        )
        self.cam_name, self._cam_class, self._native = _resolve_cam(cam, backend)
        self.model = model
        self.target_layers = target_layers
        # Checks names and modules now; auto-detection waits for the first images.
        self._layers = None if self.cam_name == "Gradient" else check_target_layers(model, target_layers)
        self.transforms: list[AffineTransform] = transforms
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.baseline = baseline
        self.normalization = normalization
        self.max_batch_size = max_batch_size
        self.backend = backend

    @property
    def num_views(self) -> int:
        """``V = n + 1``: the identity and the ``n`` transforms."""
        return len(self.transforms) + 1

    @property
    def target_layer_names(self) -> list[str] | None:
        """Dotted names of the resolved target layers (``None`` until auto-detection ran, or for Gradient)."""
        return None if self._layers is None else [name for name, _ in self._layers]

    def resolve_target_layers(self, sample: Tensor) -> list[str]:
        """Resolve (auto-detect if needed) the target layers with ``sample`` images; returns their names.

        Raises ``ValueError`` when the model has no suitable layer. Leaves the model as found.
        """
        if self.cam_name == "Gradient":
            return []
        if self._layers is None:
            with torch.inference_mode(False), model_state_guard(self.model, protect_grads=False):
                self._layers = resolve_target_layers(self.model, self.target_layers, sample[:1].clone())
        return [name for name, _ in self._layers]

    def _explainer(self) -> Explainer:
        if self.cam_name == "Gradient":
            return GradientExplainer()
        assert self._layers is not None
        modules = [module for _, module in self._layers]
        if self._native:
            return NativeCAM(self.cam_name, modules)
        assert self._cam_class is not None
        return GradCamLibraryExplainer(self._cam_class, modules, batch_size=self.max_batch_size)

    def explain(self, images: Tensor, targets: Tensor | None = None) -> Explanation:
        """The un-enhanced method J on ``images`` alone (no transforms), in chunks; model left as found."""
        images, targets = self._check_call(images, targets)
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()
            self.resolve_target_layers(images)
            with model_state_guard(self.model, protect_grads=not self._native):
                return self._run_explainer(self._explainer(), images, targets)

    def _check_call(self, images: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Expected `images` to be a tensor of shape (B, C, H, W), but got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"Expected `images` to be a floating point tensor, but got {images.dtype}")
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.ndim != 1 or targets.shape[0] != images.shape[0]:
                shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
                raise ValueError(
                    f"Expected `targets` to have shape ({images.shape[0]},) like the batch, but got {shape}"
                )
            if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
                raise ValueError(f"Expected `targets` to be an integer tensor, but got {targets.dtype}")
            targets = targets.to(device=images.device, dtype=torch.long)
        return images, targets

    def _run_explainer(self, explainer: Explainer, images: Tensor, targets: Tensor | None) -> Explanation:
        maps, logits = [], []
        for start in range(0, images.shape[0], self.max_batch_size):
            chunk_targets = None if targets is None else targets[start : start + self.max_batch_size]
            explanation = explainer(self.model, images[start : start + self.max_batch_size], chunk_targets)
            maps.append(explanation.maps)
            logits.append(explanation.logits)
        return Explanation(torch.cat(maps), torch.cat(logits))

    def __call__(self, images: Tensor, targets: Tensor | None = None, *, score_saliency: bool = False) -> EVETResult:
        """Run EVET on ``images (B, C, H, W)`` for ``targets (B,)`` (``None``: the argmax class).

        ``score_saliency=True`` also computes ``f_k(Phi(x, J*(x)))`` (one more forward pass per image).
        Works under ``torch.inference_mode()`` and ``torch.no_grad()``; the model is left as found.
        """
        images, targets = self._check_call(images, targets)
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()  # an inference tensor cannot enter autograd
            self.resolve_target_layers(images)
            with model_state_guard(self.model, protect_grads=not self._native):
                return self._run(images, targets, score_saliency)

    def _run(self, images: Tensor, targets: Tensor | None, score_saliency: bool) -> EVETResult:
        explainer = self._explainer()
        views: list[AffineTransform] = [Identity(), *self.transforms]
        num_views = len(views)
        height, width = images.shape[-2:]
        valid = torch.stack([view.valid_mask(height, width, images.device) for view in views])  # (V, H, W)
        # Images are processed in groups whose views fill about one chunk, so memory follows the chunk size.
        group = max(1, self.max_batch_size // num_views)
        parts: list[tuple[Tensor, ...]] = []
        for start in range(0, images.shape[0], group):
            group_targets = None if targets is None else targets[start : start + group]
            parts.append(self._run_group(explainer, views, valid, images[start : start + group], group_targets))
        saliency, original, weights, kept, targets_out, view_scores, clean, finite = (
            torch.cat(items, dim=1 if index in (2, 3, 5) else 0) for index, items in enumerate(zip(*parts, strict=True))
        )
        saliency_scores = None
        if score_saliency:
            saliency_scores = self._scores(images, saliency, targets_out)
        return EVETResult(saliency, original, weights, kept, targets_out, view_scores, clean, saliency_scores, finite)

    def _scores(self, images: Tensor, maps: Tensor, targets: Tensor, baseline: Tensor | None = None) -> Tensor:
        """``f_k(Phi(x, M))`` for ``M (N, H, W)``, in chunks, without autograd."""
        if baseline is None:
            baseline = resolve_baseline(images, self.baseline, self.normalization)
        scores = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.max_batch_size):
                stop = start + self.max_batch_size
                perturbed = perturb(images[start:stop], maps[start:stop], baseline[start:stop])
                probabilities = self.model(perturbed).float().softmax(dim=-1)
                scores.append(probabilities.gather(1, targets[start:stop].view(-1, 1)).squeeze(1))
        return torch.nan_to_num(torch.cat(scores), nan=0.0)

    def _run_group(
        self,
        explainer: Explainer,
        views: list[AffineTransform],
        valid: Tensor,
        images: Tensor,
        targets: Tensor | None,
    ) -> tuple[Tensor, ...]:
        num_views, batch = len(views), images.shape[0]
        if targets is None:
            # Fix the class once, on the untransformed image (decision 2), then explain the other views.
            first = self._run_explainer(explainer, images, None)
            targets = first.logits.argmax(dim=1)
            transformed = torch.cat([view.forward(images) for view in views[1:]])
            rest = self._run_explainer(explainer, transformed, targets.repeat(num_views - 1))
            maps = torch.cat([first.maps, rest.maps])
            logits = first.logits
        else:
            transformed = torch.cat([images, *(view.forward(images) for view in views[1:])])
            explanation = self._run_explainer(explainer, transformed, targets.repeat(num_views))
            maps, logits = explanation.maps, explanation.logits[:batch]
        finite = torch.isfinite(images.flatten(1)).all(dim=1) & torch.isfinite(logits).all(dim=1)
        # Each view's map: min-max normalized, then mapped back to the original frame (decision 3).
        maps = min_max_normalize(maps).view(num_views, batch, *maps.shape[-2:])
        maps = torch.stack(
            [view.inverse(view_maps.unsqueeze(1)).squeeze(1) for view, view_maps in zip(views, maps, strict=True)]
        )
        valid_maps = valid.unsqueeze(1).expand(-1, batch, -1, -1)
        # Score each view with its invalid pixels filled from view 0, so lost corners cost nothing.
        scoring_maps = torch.where(valid_maps, maps, maps[:1])
        baseline = resolve_baseline(images, self.baseline, self.normalization)
        view_scores = self._scores(
            images.repeat(num_views, 1, 1, 1),
            scoring_maps.flatten(0, 1),
            targets.repeat(num_views),
            baseline.repeat(num_views, 1, 1, 1),
        ).view(num_views, batch)
        fused = fuse_maps_detailed(maps, view_scores, valid_maps, threshold=self.threshold, alpha=self.alpha)
        zero = ~finite
        saliency = fused.saliency.masked_fill(zero.view(-1, 1, 1), 0.0)
        original = maps[0].masked_fill(zero.view(-1, 1, 1), 0.0)
        clean = logits.softmax(dim=-1).gather(1, targets.view(-1, 1)).squeeze(1)
        clean = torch.nan_to_num(clean, nan=0.0)
        return saliency, original, fused.weights, fused.kept, targets, view_scores, clean, finite


def check_evet_arguments(
    *,
    cam: CamSpec = "GradCAM",
    transforms: Sequence[AffineTransform] | None = None,
    threshold: float = 0.99,
    alpha: float = DEFAULT_ALPHA,
    baseline: Baseline = "black",
    normalization: Normalization = None,
    max_batch_size: int = 64,
    backend: str = "auto",
) -> list[AffineTransform]:
    """Check EVET's configuration without a model (``ValueError`` naming the argument); returns the transforms.

    The callback calls this in its constructor, so bad configuration fails before training starts.
    """
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold <= 1):
        raise ValueError(f"Expected `threshold` to be a float in (0, 1], but got {threshold!r}")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"Expected `alpha` to be a non-negative float, but got {alpha!r}")
    if not (isinstance(max_batch_size, int) and not isinstance(max_batch_size, bool) and max_batch_size >= 1):
        raise ValueError(f"Expected `max_batch_size` to be a positive integer, but got {max_batch_size!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"Expected `backend` to be one of {_BACKENDS}, but got {backend!r}")
    check_baseline(baseline)
    transforms = paper_transforms() if transforms is None else list(transforms)
    if not transforms:
        raise ValueError("Expected `transforms` to be a non-empty sequence of transforms, but got an empty one")
    for transform in transforms:
        if not isinstance(transform, AffineTransform):
            raise ValueError(f"Expected every item of `transforms` to be an AffineTransform, but got {transform!r}")
    if normalization is not None and (len(normalization) != 2):
        raise ValueError(f"Expected `normalization` to be a (mean, std) pair, but got {normalization!r}")
    _resolve_cam(cam, backend)
    return transforms


def _resolve_cam(cam: CamSpec, backend: str) -> tuple[str, type | None, bool]:
    """``(name, pytorch-grad-cam class or None, computed natively)``; ``ValueError`` for an unknown CAM."""
    classes = available_cam_classes()
    if isinstance(cam, str) and "." in cam and cam.rsplit(".", 1)[1] in classes:
        cam = cam.rsplit(".", 1)[1]  # "pytorch_grad_cam.GradCAM", as YAML or LightningCLI may spell it
    if isinstance(cam, str):
        if cam == "Gradient":
            return "Gradient", None, True
        if cam not in classes:
            raise ValueError(
                f"Expected `cam` to be 'Gradient' or a pytorch-grad-cam CAM class or name "
                f"({', '.join(sorted(classes))}), but got {cam!r}"
            )
        cam_class = classes[cam]
    elif is_cam_class(cam):
        cam_class = cam  # type: ignore[assignment]
    else:
        raise ValueError(f"Expected `cam` to be 'Gradient' or a pytorch-grad-cam CAM class or name, but got {cam!r}")
    name = cam_class.__name__
    native = name in NATIVE_CAMS and classes.get(name) is cam_class and backend != "pytorch-grad-cam"
    if backend == "native" and not native:
        raise ValueError(
            f"Expected a CAM with a native implementation ({sorted(NATIVE_CAMS)}) for backend='native', got {name!r}"
        )
    return name, cam_class, native
