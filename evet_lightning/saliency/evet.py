"""EVET: Enhancing Visual Explanations using image Transformations (Oh et al., WACV 2021, Sec. 3.1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from evet_lightning._model_state import model_state_guard
from evet_lightning.functional.activation import Activation, Task, check_task_logits, target_class_probabilities
from evet_lightning.functional.alpha import (
    DEFAULT_ALPHA_GRID,
    DEFAULT_ALPHA_OBJECTIVE,
    AlphaObjective,
    alpha_curve,
    choose_alpha,
    map_energy,
)
from evet_lightning.functional.fusion import blend, fusion_parts, min_max_normalize
from evet_lightning.functional.perturbation import Baseline, Normalization, perturb, resolve_baseline
from evet_lightning.saliency.explainers import Explainer, Explanation, GradientExplainer, NativeCAM
from evet_lightning.saliency.external import build_external_explainer, resolve_external
from evet_lightning.saliency.grad_cam_adapter import GradCamLibraryExplainer
from evet_lightning.saliency.layers import LayerSpec, check_target_layers, resolve_target_layers
from evet_lightning.saliency.outputs import logits_from_output
from evet_lightning.saliency.pairs import check_pairs, explain_rows, pair_groups
from evet_lightning.saliency.result import EVETResult
from evet_lightning.saliency.score_cam import SCORE_CAMS, ScoreCAM
from evet_lightning.saliency.settings import EVETSettings, resolve_cam, resolve_max_batch_size
from evet_lightning.saliency.transforms import AffineTransform, Identity

__all__ = ["EVET", "CamSpec", "EVETResult", "resolve_cam"]

#: A saliency method: a pytorch-grad-cam class, its name, ``"Gradient"``, a Captum class, a prefixed name
#: (``"captum:Name"``, ``"zennit:Composite"``, ``"package.module:function"``) or a callable.
CamSpec = str | type | Callable[..., Any]


class EVET:
    """Enhance a saliency method with image transformations, as in Oh et al. (WACV 2021).

    For every image, the saliency method J is applied to the image and to its transformed copies
    ``T_i(x)``; the maps are min-max normalized, mapped back with ``T_i^{-1}`` (Eq. 1), scored by the target
    probability of the perturbed image ``f_k(Phi(x, M_i))`` (Eq. 3), filtered (Eq. 2) and fused (Eq. 4-7).

    Args:
        model: a classifier returning logits ``(B, K)``. It is left exactly as found: see
            :func:`~evet_lightning._model_state.model_state_guard`; saliency is computed in eval mode.
        target_layers: module(s) or dotted name(s) of the layer(s) a CAM explains; ``None`` auto-detects the
            layer an expert would pick (the last feature map before global pooling; for ViTs the last block's
            first norm; the last stage of Swin, ConvNeXt, MaxViT: see :mod:`evet_lightning.saliency.layers` and
            docs/design.md, decision 17), reported in the log at INFO. A module called several times is
            explained at its last call. Ignored for ``"Gradient"`` and outside methods without a layer.
        cam: a pytorch-grad-cam method (CAM class, FinerCAM, RefineCAM, SESS, GuidedBackpropReLUModel) or its
            name, ``"GuidedGradCAM"``, ``"FasterScoreCAM"`` or ``"Gradient"``. GradCAM, GradCAMPlusPlus, XGradCAM,
            HiResCAM and LayerCAM are computed natively in torch (head-only gradients, batched on the device), and
            so is Score-CAM by name (``"ScoreCAM"``, ``"FasterScoreCAM"``; the class ``pytorch_grad_cam.ScoreCAM``
            runs the library's); the others run through pytorch-grad-cam.
            Also any callable ``(model, images, targets) -> maps`` (``(B, H, W)`` or ``(B, 1, h, w)``, any range)
            or its path ``"package.module:function"``; a Captum attribution (``"captum:IntegratedGradients"`` or
            the class; layer methods use the target layer); an LRP composite of zennit
            (``"zennit:EpsilonPlusFlat"``). See :mod:`evet_lightning.saliency.external`.
        transforms: the transforms ``T_1 .. T_n``; ``None`` means the paper's 7 (:func:`paper_transforms`).
        threshold: Gamma of Eq. (2), in (0, 1]; view v is kept when ``s_v > threshold * s_0``.
        alpha: boost strength of Eq. (5): ``"auto"`` (the default) chooses it per call from ``alpha_grid`` by
            ``alpha_objective`` on the images given (no view is recomputed: alpha enters only Eq. 5-7, so
            each alpha costs the blend and one forward pass per image to score ``Phi(x, J*_alpha)``); a
            number >= 0 fixes it. The result reports the alpha used and the per-alpha curve.
        baseline: x_d of Eq. (3): ``"black"``, ``"zeros"``, ``"blur"``, a tensor or a callable.
        normalization: ``(mean, std)`` the images were normalized with, so ``"black"`` is black in pixels.
        max_batch_size: at most this many images (views) go through the model at once; memory is bounded by
            it, not by the number of views or images. ``"auto"``: 64 on an accelerator, and on a CPU as many
            images as fit 8 x 224 x 224 pixels (:func:`~evet_lightning.saliency.settings.resolve_max_batch_size`).
        alpha_grid: the alphas ``alpha="auto"`` chooses from, ascending (default ``(0, 0.1, 0.25, 0.5, 1)``).
        alpha_objective: what ``alpha="auto"`` optimizes: ``"faithful_boost"`` (the default: the largest
            alpha whose average drop is within one point of the grid's best), ``"average_drop"``,
            ``"increase_in_confidence"``, ``"energy_pointing_game"`` (needs ``masks=`` in the call), or a
            callable ``AlphaCurve -> (A,)`` values, lower is better. Ties go to the smaller alpha.
        backend: ``"auto"`` (native when possible), ``"native"`` or ``"pytorch-grad-cam"`` (force the library,
            e.g. to compare); it does not apply to outside methods (Captum, zennit, callables).
        reshape_transform: ``activation -> (B, C, H, W)`` for target layers whose output is not a feature map
            (transformer tokens), applied the same way on both backends (pytorch-grad-cam's contract).
        output_transform: ``model output -> (B, K) logits`` for models that return something other than a
            tensor, a tuple/list (first item), a mapping with ``"logits"`` or an object with ``.logits``.
        task: ``"multiclass"`` (the default: f_k is the softmax over the classes), ``"multilabel"`` (independent
            sigmoid outputs, e.g. trained with ``BCEWithLogitsLoss``: f_k = sigmoid(z_k) in Eq. (2), Eq. (4), the
            alpha choice and every score) or ``"binary"`` (one logit z per image, decision 26), as torchmetrics
            names them (docs/design.md, decision 45). With several classes per image, :meth:`explain_pairs`
            explains (image, class) pairs.
        activation: ``None`` (by ``task``), ``"softmax"`` or ``"sigmoid"``: overrides how logits become f_k. The
            paper's text defines f_k as a softmax on every dataset; ``task="multilabel", activation="softmax"``
            reproduces that reading for a multi-label model.
        cam_kwargs: options of the method: ``base_method`` (a CAM class or name) for FinerCAM, RefineCAM, SESS
            and GuidedGradCAM, the library's constructor and call options (``eigen_smooth``, SESS's
            ``num_scales``, FinerCAM's ``alpha`` and ``comparison_categories``, ...), ``batch_size`` (masked
            images per forward pass of ScoreCAM/AblationCAM) and, for native Score-CAM, ``max_channels``;
            for an outside method: a callable's keyword arguments, Captum's ``attribute()``
            arguments (``{"n_steps": 32}``) plus ``reduction``/``base``/``init_kwargs``, a zennit composite's
            arguments plus ``reduction``/``canonizers``.

    Decisions where the paper is silent (docs/design.md, decisions 1-5): the target class is fixed once per image
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
        alpha: float | Literal["auto"] = "auto",
        baseline: Baseline = "black",
        normalization: Normalization = None,
        max_batch_size: int | Literal["auto"] = "auto",
        *,
        alpha_grid: Sequence[float] = DEFAULT_ALPHA_GRID,
        alpha_objective: AlphaObjective = DEFAULT_ALPHA_OBJECTIVE,
        backend: str = "auto",
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        output_transform: Callable[[Any], Tensor] | None = None,
        cam_kwargs: Mapping[str, Any] | None = None,
        task: Task = "multiclass",
        activation: Activation | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}")
        settings = EVETSettings(
            cam=cam,
            target_layers=target_layers,
            transforms=transforms,
            threshold=threshold,
            alpha=alpha,
            alpha_grid=alpha_grid,
            alpha_objective=alpha_objective,
            baseline=baseline,
            normalization=normalization,
            max_batch_size=max_batch_size,
            backend=backend,
            reshape_transform=reshape_transform,
            output_transform=output_transform,
            cam_kwargs=cam_kwargs,
            task=task,
            activation=activation,
        )
        self.settings = settings
        self.cam_name, self._cam_class, self._native = resolve_cam(cam, backend, settings.cam_kwargs)
        self._external = resolve_external(cam, settings.cam_kwargs)
        self._uses_layers = self.cam_name != "Gradient" and (self._external is None or self._external.uses_layer)
        self.model = model
        self.target_layers = settings.target_layers
        # Checks names and modules now; auto-detection waits for the first images.
        self._layers = check_target_layers(model, settings.target_layers) if self._uses_layers else None
        self.transforms: list[AffineTransform] = list(settings.transforms or ())
        self.threshold = settings.threshold
        self.alpha = settings.alpha
        self.alpha_grid = tuple(settings.alpha_grid)
        self.alpha_objective = settings.alpha_objective
        self.baseline = settings.baseline
        self.normalization = settings.normalization
        self.max_batch_size = settings.max_batch_size
        self.backend = settings.backend
        self.reshape_transform = settings.reshape_transform
        self.output_transform = settings.output_transform
        self.cam_kwargs = settings.cam_kwargs
        self.task: Task = settings.task
        #: How logits become the probability f_k (decision 45): ``activation``, or by ``task``.
        self.activation: Activation = settings.score_activation
        self._chunk = 1

    @classmethod
    def from_settings(cls, model: nn.Module, settings: EVETSettings) -> EVET:
        """``EVET(model, **settings.evet_kwargs())``."""
        return cls(model, **settings.evet_kwargs())

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
        if not self._uses_layers:
            return []
        if self._layers is None:
            with torch.inference_mode(False), model_state_guard(self.model, protect_grads=False):
                self._layers = resolve_target_layers(
                    self.model,
                    self.target_layers,
                    sample[:1].clone(),
                    reshape_transform=self.reshape_transform,
                    output_transform=self.output_transform,
                )
        return [name for name, _ in self._layers]

    def _explainer(self) -> Explainer:
        if self._external is not None:
            return build_external_explainer(
                self._external,
                [module for _, module in self._layers or ()],
                self.settings.cam_kwargs,
                output_transform=self.output_transform,
                reshape_transform=self.reshape_transform,
            )
        if self.cam_name == "Gradient":
            return GradientExplainer(output_transform=self.output_transform)
        assert self._layers is not None
        modules = [module for _, module in self._layers]
        cam_kwargs = dict(self.cam_kwargs or {})
        if self._native and self.cam_name in SCORE_CAMS:
            return ScoreCAM(
                modules,
                batch_size=cam_kwargs.get("batch_size", self._chunk),
                max_channels=cam_kwargs.get("max_channels", SCORE_CAMS[self.cam_name]),
                reshape_transform=self.reshape_transform,
                output_transform=self.output_transform,
            )
        if self._native:
            return NativeCAM(
                self.cam_name, modules, reshape_transform=self.reshape_transform, output_transform=self.output_transform
            )
        assert self._cam_class is not None
        return GradCamLibraryExplainer(
            self._cam_class,
            modules,
            batch_size=self._chunk,
            reshape_transform=self.reshape_transform,
            output_transform=self.output_transform,
            cam_kwargs=cam_kwargs,
        )

    def explain(self, images: Tensor, targets: Tensor | None = None) -> Explanation:
        """The un-enhanced method J on ``images`` alone (no transforms), in chunks; model left as found."""
        images, targets, _ = self._check_call(images, targets, None)
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()
            self.resolve_target_layers(images)
            with model_state_guard(self.model, protect_grads=not self._native):
                return self._run_explainer(self._explainer(), images, targets)

    def _check_call(
        self,
        images: Tensor,
        targets: Tensor | None,
        masks: Tensor | None,
        alpha: float | str | None = None,
        mask_count: int | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Expected `images` to be a tensor of shape (B, C, H, W), but got {shape}")
        if images.shape[0] == 0:
            raise ValueError(f"Expected `images` to hold at least one image, but got shape {tuple(images.shape)}")
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
        if masks is not None:
            expected = (images.shape[0] if mask_count is None else mask_count, *images.shape[-2:])
            if not isinstance(masks, Tensor) or tuple(masks.shape) != expected:
                shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
                like = "the images" if mask_count is None else "the pairs"
                raise ValueError(f"Expected `masks` to have shape {expected} like {like}, but got {shape}")
            masks = masks.to(images.device).bool() if masks.dtype == torch.bool else masks.to(images.device) > 0.5
        if self.alpha_objective == "energy_pointing_game" and alpha == "auto" and masks is None:
            raise ValueError(
                "Expected `masks=` in the call with `alpha_objective='energy_pointing_game'`: it needs object masks"
            )
        self._chunk = resolve_max_batch_size(self.max_batch_size, images)
        return images, targets, masks

    def _run_explainer(self, explainer: Explainer, images: Tensor, targets: Tensor | None) -> Explanation:
        maps, logits = [], []
        chunk = self._chunk
        for start in range(0, images.shape[0], chunk):
            chunk_targets = None if targets is None else targets[start : start + chunk]
            explanation = explainer(self.model, images[start : start + chunk], chunk_targets)
            maps.append(explanation.maps)
            logits.append(explanation.logits)
        return Explanation(torch.cat(maps), torch.cat(logits))

    def __call__(
        self,
        images: Tensor,
        targets: Tensor | None = None,
        *,
        masks: Tensor | None = None,
        score_saliency: bool = False,
        alpha: float | Literal["auto"] | None = None,
    ) -> EVETResult:
        """Run EVET on ``images (B, C, H, W)`` for ``targets (B,)`` (``None``: the argmax class).

        ``masks (B, H, W)``: object masks, for ``alpha_objective="energy_pointing_game"`` and the per-alpha
        pointing game in ``result.alpha_curve``. ``score_saliency=True`` also computes ``f_k(Phi(x, J*(x)))``
        (one more forward pass per image; free with ``alpha="auto"``, which scores every alpha's map anyway).
        ``alpha`` overrides the engine's alpha for this call (a number, or ``"auto"``).
        Works under ``torch.inference_mode()`` and ``torch.no_grad()``; the model is left as found.
        """
        alpha = self.alpha if alpha is None else self.settings.replace(alpha=alpha).alpha
        images, targets, masks = self._check_call(images, targets, masks, alpha)
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()  # an inference tensor cannot enter autograd
            self.resolve_target_layers(images)
            with model_state_guard(self.model, protect_grads=not self._native):
                return self._run(images, targets, masks, score_saliency, alpha)

    def explain_pairs(
        self,
        images: Tensor,
        image_index: Tensor,
        classes: Tensor,
        *,
        masks: Tensor | tuple[Tensor, Tensor] | None = None,
        score_saliency: bool = False,
        alpha: float | Literal["auto"] | None = None,
    ) -> EVETResult:
        """Run EVET on ``P`` (image, class) pairs: pair p explains class ``classes[p]`` of ``images[image_index[p]]``.

        Each pair's result is what ``self(images[i : i + 1], classes[p : p + 1])`` gives (at a fixed alpha; ``"auto"``
        chooses one alpha over all pairs), one entry per pair in the order given (``result.targets`` the classes,
        ``result.image_index`` the images). ``masks``: object masks ``(P, H, W)`` or the ``(object, valid)`` of
        :func:`~evet_lightning.functional.class_masks.pair_masks` (decision 47), for the per-alpha pointing game.

        Shared between the classes of one image (decision 46): the views are built once; native CAMs and
        ``"Gradient"`` run them forward once (a head backward per class), native Score-CAM its masked images too;
        other methods see each view once per pair. Each pair's perturbed images ``Phi(x, M_k)`` are its own.
        """
        alpha = self.alpha if alpha is None else self.settings.replace(alpha=alpha).alpha
        images, _, _ = self._check_call(images, None, None, alpha)
        image_index, classes = check_pairs(images, image_index, classes)
        obj, valid = masks if isinstance(masks, tuple) else (masks, None)
        masks, valid = (self._check_call(images, None, m, alpha, classes.numel())[2] for m in (obj, valid))
        if masks is not None and valid is not None:  # one int8 mask travels: 1 object, 0 background, -1 ignored
            masks = torch.where(valid, masks.to(torch.int8), torch.full_like(masks, -1, dtype=torch.int8))
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()
            self.resolve_target_layers(images)
            with model_state_guard(self.model, protect_grads=not self._native):
                return self._run(images, classes, masks, score_saliency, alpha, image_index=image_index)

    def _run(
        self,
        images: Tensor,
        targets: Tensor | None,
        masks: Tensor | None,
        score_saliency: bool,
        alpha_setting: float | Literal["auto"],
        image_index: Tensor | None = None,
    ) -> EVETResult:
        explainer = self._explainer()
        views: list[AffineTransform] = [Identity(), *self.transforms]
        num_views = len(views)
        height, width = images.shape[-2:]
        valid = torch.stack([view.valid_mask(height, width, images.device) for view in views])  # (V, H, W)
        grid = (
            None
            if alpha_setting != "auto"
            else torch.tensor(self.alpha_grid, device=images.device, dtype=torch.float64)
        )
        # Images are processed in groups whose views fill about one chunk, so memory follows the chunk size.
        group = max(1, self._chunk // num_views)
        parts: list[dict[str, Tensor]] = []
        if image_index is None:
            for start in range(0, images.shape[0], group):
                stop = start + group
                group_targets = None if targets is None else targets[start:stop]
                group_masks = None if masks is None else masks[start:stop]
                parts.append(
                    self._run_group(
                        explainer, views, valid, images[start:stop], group_targets, group_masks, grid, alpha_setting
                    )
                )
            order = None
        else:
            assert targets is not None
            groups = pair_groups(image_index, group)
            for group_images, local, pairs in groups:
                group_masks = None if masks is None else masks[pairs]
                parts.append(
                    self._run_pairs_group(
                        explainer, views, valid, images[group_images], local, targets[pairs], group_masks, grid,
                        alpha_setting,
                    )
                )  # fmt: skip
            # Back to the order the pairs were given in.
            order = torch.empty_like(image_index)
            order[torch.cat([pairs for _, _, pairs in groups])] = torch.arange(image_index.numel(), device=order.device)
        out = {key: torch.cat([part[key] for part in parts], dim=1 if key in _VIEW_FIRST else 0) for key in parts[0]}
        if order is not None:
            out = {key: value[:, order] if key in _VIEW_FIRST else value[order] for key, value in out.items()}
        zero = ~out["finite"].view(-1, 1, 1)
        curve = objective = None
        if grid is None:
            alpha = float(alpha_setting)
            saliency = out["saliency"]
        else:
            curve = alpha_curve(
                grid,
                out["clean"],
                out["alpha_scores"],
                out["view_scores"][0],
                alpha_energy=out.get("alpha_energy"),
                original_energy=out.get("original_energy"),
                include=out["finite"],
            )
            index, objective = choose_alpha(curve, self.alpha_objective)
            alpha = self.alpha_grid[index]
            saliency = blend(out["mean"], out["sigma"], alpha).masked_fill(zero, 0.0)
        saliency_scores = None
        if grid is not None:
            saliency_scores = out["alpha_scores"][index]
        elif score_saliency:
            pair_images = images if image_index is None else images[image_index]
            saliency_scores = self._scores(pair_images, saliency, out["targets"])
        return EVETResult(
            saliency=saliency,
            original=out["original"],
            weights=out["weights"],
            kept=out["kept"],
            targets=out["targets"],
            view_scores=out["view_scores"],
            clean_scores=out["clean"],
            saliency_scores=saliency_scores,
            finite=out["finite"],
            alpha=alpha,
            fused_mean=out["mean"],
            fused_sigma=out["sigma"],
            alpha_grid=grid,
            alpha_scores=out.get("alpha_scores"),
            alpha_energy=out.get("alpha_energy"),
            alpha_curve=curve,
            alpha_objective=objective,
            image_index=image_index,
        )

    def _forward(self, images: Tensor) -> Tensor:
        """The model's logits for ``images`` (see ``output_transform``)."""
        return logits_from_output(self.model(images), self.output_transform)

    def _scores(self, images: Tensor, maps: Tensor, targets: Tensor, baseline: Tensor | None = None) -> Tensor:
        """``f_k(Phi(x, M))`` for ``M (N, H, W)``, in chunks, without autograd."""
        if baseline is None:
            baseline = resolve_baseline(images, self.baseline, self.normalization)
        scores = []
        chunk = self._chunk
        with torch.no_grad():
            for start in range(0, images.shape[0], chunk):
                stop = start + chunk
                perturbed = perturb(images[start:stop], maps[start:stop], baseline[start:stop])
                logits = self._forward(perturbed).float()
                scores.append(target_class_probabilities(logits, targets[start:stop], self.activation))
        return torch.nan_to_num(torch.cat(scores), nan=0.0)

    def _run_group(
        self,
        explainer: Explainer,
        views: list[AffineTransform],
        valid: Tensor,
        images: Tensor,
        targets: Tensor | None,
        masks: Tensor | None,
        grid: Tensor | None,
        alpha_setting: float | Literal["auto"],
    ) -> dict[str, Tensor]:
        num_views, batch = len(views), images.shape[0]
        if targets is None:
            # Fix the class once, on the untransformed image (decision 1), then explain the other views.
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
        return self._fuse(views, valid, images, targets, maps, logits, masks, grid, alpha_setting)

    def _run_pairs_group(
        self,
        explainer: Explainer,
        views: list[AffineTransform],
        valid: Tensor,
        images: Tensor,
        local_index: Tensor,
        classes: Tensor,
        masks: Tensor | None,
        grid: Tensor | None,
        alpha_setting: float | Literal["auto"],
    ) -> dict[str, Tensor]:
        """:meth:`_run_group` for pairs of the distinct ``images``: pair j is class ``classes[j]`` of image
        ``local_index[j]``. The views of each image are built (and, where the explainer allows, run) once."""
        num_views, count, num_pairs = len(views), images.shape[0], classes.numel()
        transformed = torch.cat([images, *(view.forward(images) for view in views[1:])])  # view-major, V * count
        offsets = torch.arange(num_views, device=images.device).view(-1, 1) * count
        rows = (offsets + local_index.view(1, -1)).flatten()  # view-major, V * num_pairs
        explanation = explain_rows(
            explainer, self.model, transformed, rows, classes.repeat(num_views), self._chunk, self._run_explainer
        )
        logits = explanation.logits[:num_pairs]
        return self._fuse(
            views, valid, images[local_index], classes, explanation.maps, logits, masks, grid, alpha_setting
        )

    def _fuse(
        self,
        views: list[AffineTransform],
        valid: Tensor,
        images: Tensor,
        targets: Tensor,
        maps: Tensor,
        logits: Tensor,
        masks: Tensor | None,
        grid: Tensor | None,
        alpha_setting: float | Literal["auto"],
    ) -> dict[str, Tensor]:
        """Eq. (1)-(7) for ``B`` images (or pairs) from their view-major maps ``(V * B, H, W)`` and the clean
        logits ``(B, K)``: warp back, score each view, filter, weight, fuse; every alpha of ``grid`` when auto."""
        num_views, batch = len(views), images.shape[0]
        check_task_logits(self.task, logits)
        finite = torch.isfinite(images.flatten(1)).all(dim=1) & torch.isfinite(logits).all(dim=1)
        # Each view's map: min-max normalized, then mapped back to the original frame (decision 2).
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
        fused = fusion_parts(maps, view_scores, valid_maps, threshold=self.threshold)
        zero = (~finite).view(-1, 1, 1)
        clean = target_class_probabilities(logits, targets, self.activation)
        out = {
            "original": maps[0].masked_fill(zero, 0.0),
            "weights": fused.weights,
            "kept": fused.kept,
            "targets": targets,
            "view_scores": view_scores,
            "clean": torch.nan_to_num(clean, nan=0.0),
            "finite": finite,
            "mean": fused.mean,
            "sigma": fused.sigma,
        }
        if grid is None:
            out["saliency"] = blend(fused.mean, fused.sigma, float(alpha_setting)).masked_fill(zero, 0.0)
            return out
        # alpha="auto": the EVET map at every alpha of the grid, scored with one forward pass each.
        candidates = blend(fused.mean, fused.sigma, grid).masked_fill(zero, 0.0)  # (A, b, H, W)
        num_alphas = grid.numel()
        out["alpha_scores"] = self._scores(
            images.repeat(num_alphas, 1, 1, 1),
            candidates.flatten(0, 1),
            targets.repeat(num_alphas),
            baseline.repeat(num_alphas, 1, 1, 1),
        ).view(num_alphas, batch)
        if masks is not None:
            valid_pixels = masks >= 0 if masks.dtype == torch.int8 else None
            out["alpha_energy"] = map_energy(candidates, masks > 0, valid_pixels)
            out["original_energy"] = map_energy(out["original"], masks > 0, valid_pixels)
        return out


#: Per-group outputs whose first dimension is the view or alpha (concatenated along the images' dimension 1).
_VIEW_FIRST = frozenset({"weights", "kept", "view_scores", "alpha_scores", "alpha_energy"})
