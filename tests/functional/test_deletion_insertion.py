"""deletion_curve / insertion_curve / curve_auc: a plain-loop reference, closed forms, a trained model, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evet_lightning import EVET
from evet_lightning.functional import curve_auc, deletion_curve, insertion_curve, resolve_baseline
from evet_lightning.models import SmallCNN
from tests._helpers.models import stack_dataset

# ----------------------------------------------------------------------------------------------------------------
# An independent reference, written from the definition: one image and one step at a time, Python sorting.


def _reference_curve(
    model: nn.Module, image: Tensor, saliency: Tensor, target: int, steps: int, baseline: Tensor, insertion: bool
) -> list[float]:
    """Curve of one ``(C, H, W)`` image: at step k the top floor(k N / S) pixels come from the other image."""
    _, height, width = image.shape
    num_pixels = height * width
    values = [float(v) for row in saliency.tolist() for v in row]
    order = sorted(range(num_pixels), key=lambda p: (-values[p], p))
    curve = []
    for k in range(steps + 1):
        step_image = (baseline if insertion else image).clone()
        for p in order[: math.floor(k * num_pixels / steps)]:
            row, col = divmod(p, width)
            step_image[:, row, col] = image[:, row, col] if insertion else baseline[:, row, col]
        with torch.no_grad():
            probabilities = model(step_image.unsqueeze(0))[0].softmax(dim=0)
        curve.append(float(probabilities[target]))
    return curve


def _reference_blur(images: Tensor) -> Tensor:
    """RISE's 11 x 11, sigma 5 Gaussian as one 2-D kernel (normalized), edges replicated."""
    coords = torch.arange(-5, 6, dtype=torch.float64)
    gauss_1d = torch.exp(-(coords**2) / 50.0)
    kernel = torch.outer(gauss_1d, gauss_1d)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    padded = F.pad(images, (5, 5, 5, 5), mode="replicate")
    return F.conv2d(padded, kernel.expand(channels, 1, 11, 11), groups=channels)


def _tiny_model(num_classes: int = 3, dtype: torch.dtype = torch.float64) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, num_classes),
        )
    return model.to(dtype).eval()


def _random_batch(
    seed: int, batch: int, height: int, width: int, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """``(batch, 3, height, width)`` normal images and ``(batch, height, width)`` uniform maps from one seed."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=generator, dtype=dtype)
    saliency = torch.rand(batch, height, width, generator=generator, dtype=dtype)
    return images, saliency


def _maps_with_ties(height: int, width: int, generator: torch.Generator) -> Tensor:
    """Three maps: continuous values, four levels (many ties), and a constant map (raster order)."""
    continuous = torch.rand(height, width, generator=generator, dtype=torch.float64)
    levels = torch.randint(0, 4, (height, width), generator=generator).to(torch.float64) / 3
    constant = torch.full((height, width), 0.5, dtype=torch.float64)
    return torch.stack([continuous, levels, constant])


NORMALIZATION = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.5))


@pytest.mark.parametrize("steps", [1, 4, 7, 20, 60])
def test_curves_match_plain_loop_reference(steps: int) -> None:
    model = _tiny_model()
    generator = torch.Generator().manual_seed(steps)
    height, width = 6, 9  # N = 54: floor(k N / S) is not a multiple of anything; S = 60 > N repeats counts
    images = torch.randn(3, 3, height, width, generator=generator, dtype=torch.float64)
    saliency = _maps_with_ties(height, width, generator)
    targets = torch.tensor([2, 0, 1])
    black = torch.tensor([-m / s for m, s in zip(*NORMALIZATION, strict=True)], dtype=torch.float64)
    black = black.view(3, 1, 1).expand(3, height, width)
    blur = _reference_blur(images)
    cases = [
        (deletion_curve, {"normalization": NORMALIZATION}, lambda i: black, False),
        (insertion_curve, {}, lambda i: blur[i], True),
        (insertion_curve, {"baseline": "black", "normalization": NORMALIZATION}, lambda i: black, True),
    ]
    for curve_fn, kwargs, baseline_of, insertion in cases:
        curves = curve_fn(model, images, saliency, targets, steps=steps, max_batch_size=5, **kwargs)
        assert curves.shape == (3, steps + 1)
        assert curves.dtype == torch.float64
        for i in range(3):
            expected = _reference_curve(
                model, images[i], saliency[i], int(targets[i]), steps, baseline_of(i), insertion
            )
            assert curves[i].tolist() == pytest.approx(expected, abs=1e-6, rel=0), (curve_fn.__name__, i)


def test_step_zero_and_last_step_are_the_clean_image_and_the_baseline() -> None:
    model = _tiny_model()
    images, saliency = _random_batch(1, 2, 8, 8)
    targets = torch.tensor([0, 2])
    with torch.no_grad():
        clean = model(images).softmax(-1)[[0, 1], [0, 2]]
        black = model(torch.zeros_like(images)).softmax(-1)[[0, 1], [0, 2]]
        blurred = model(_reference_blur(images)).softmax(-1)[[0, 1], [0, 2]]
    deletion = deletion_curve(model, images, saliency, targets, steps=3)
    insertion = insertion_curve(model, images, saliency, targets, steps=3)
    torch.testing.assert_close(deletion[:, 0], clean)
    torch.testing.assert_close(deletion[:, -1], black)
    torch.testing.assert_close(insertion[:, 0], blurred)
    torch.testing.assert_close(insertion[:, -1], clean)


# ----------------------------------------------------------------------------------------------------------------
# A known answer: the target logit depends only on the mean of a box.

BOX_ROWS, BOX_COLS, SCALE = slice(2, 6), slice(1, 5), 4.0  # a 4 x 4 box of an 8 x 8 image: 16 of N = 64 pixels


class BoxModel(nn.Module):
    """Logits ``[SCALE * mean of x over the box (all channels), 0]``: p_0 = sigmoid(SCALE * box mean)."""

    def forward(self, x: Tensor) -> Tensor:
        box_mean = x[:, :, BOX_ROWS, BOX_COLS].mean(dim=(1, 2, 3))
        return torch.stack([SCALE * box_mean, torch.zeros_like(box_mean)], dim=1)


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def _trapezoid(values: list[float]) -> float:
    return (sum(values) - (values[0] + values[-1]) / 2) / (len(values) - 1)


def test_box_model_closed_forms() -> None:
    # S = 16 on N = 64 pixels: n_k = 4k. With the box's indicator map the 16 box pixels go first, 4 per step,
    # so after step k the box mean is 1 - k/4 (deletion to black) or k/4 (insertion on black), until k = 4.
    images = torch.ones(1, 3, 8, 8, dtype=torch.float64)
    indicator = torch.zeros(1, 8, 8, dtype=torch.float64)
    indicator[:, BOX_ROWS, BOX_COLS] = 1.0
    targets = torch.tensor([0])
    model = BoxModel()
    s = SCALE

    # Deletion: y_k = sigmoid(s (1 - k/4)) for k <= 4, then sigmoid(0) = 1/2 for the 12 remaining steps.
    deletion_by_hand = (
        _sigmoid(s) / 2 + _sigmoid(3 * s / 4) + _sigmoid(s / 2) + _sigmoid(s / 4) + 12 * 0.5 + 0.5 / 2
    ) / 16
    deletion = deletion_curve(model, images, indicator, targets, steps=16)
    assert float(curve_auc(deletion)[0]) == pytest.approx(deletion_by_hand, abs=1e-12)

    # The inverted map deletes the 48 outside pixels first (k <= 12: y = sigmoid(s)), then the box.
    inverted_by_hand = (
        _sigmoid(s) / 2 + 12 * _sigmoid(s) + _sigmoid(3 * s / 4) + _sigmoid(s / 2) + _sigmoid(s / 4)
    ) / 16 + 0.5 / 2 / 16
    inverted = deletion_curve(model, images, 1.0 - indicator, targets, steps=16)
    assert float(curve_auc(inverted)[0]) == pytest.approx(inverted_by_hand, abs=1e-12)

    # Insertion on a black image: y_k = sigmoid(s k / 4) for k <= 4, then sigmoid(s).
    insertion_by_hand = (
        0.5 / 2 + _sigmoid(s / 4) + _sigmoid(s / 2) + _sigmoid(3 * s / 4) + 12 * _sigmoid(s) + _sigmoid(s) / 2
    ) / 16
    insertion = insertion_curve(model, images, indicator, targets, steps=16, baseline="black")
    assert float(curve_auc(insertion)[0]) == pytest.approx(insertion_by_hand, abs=1e-12)
    assert deletion_by_hand + 0.3 < inverted_by_hand  # the closed forms tell the maps apart


def test_box_model_constant_map_deletes_in_raster_order() -> None:
    # A constant map deletes row by row: with S = 8 on 8 x 8 pixels, step k deletes rows 0 .. k-1, so the box
    # (rows 2-5) loses a quarter per step from k = 3 to 6.
    images = torch.ones(1, 3, 8, 8, dtype=torch.float64)
    curve = deletion_curve(BoxModel(), images, torch.zeros(1, 8, 8), torch.tensor([0]), steps=8)
    box_means = [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0]
    assert curve[0].tolist() == pytest.approx([_sigmoid(SCALE * m) for m in box_means], abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# A trained classifier: Grad-CAM beats random maps, which beat the inverted Grad-CAM.


def test_trained_model_separates_gradcam_random_and_inverted(trained_model: SmallCNN, shapes_val) -> None:
    images, labels, _ = stack_dataset(shapes_val)
    images, labels = images[:32], labels[:32]
    gradcam = EVET(trained_model, cam="GradCAM").explain(images, labels).maps
    random_maps = torch.rand(gradcam.shape, generator=torch.Generator().manual_seed(0))
    maps = {"gradcam": gradcam, "random": random_maps, "inverted": 1.0 - gradcam}
    deletion = {
        name: float(curve_auc(deletion_curve(trained_model, images, m, labels, steps=10)).mean())
        for name, m in maps.items()
    }
    insertion = {
        name: float(curve_auc(insertion_curve(trained_model, images, m, labels, steps=10)).mean())
        for name, m in maps.items()
    }
    assert deletion["gradcam"] < deletion["random"] < deletion["inverted"], deletion
    assert insertion["gradcam"] > insertion["random"] > insertion["inverted"], insertion


# ----------------------------------------------------------------------------------------------------------------
# Chunking, targets, non-finite inputs, dtypes.


class CountingModel(nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _tiny_model(dtype=torch.float32)
        self.batch_sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.inner(x)


@pytest.mark.parametrize("use_targets", [True, False])
def test_chunks_are_bounded_and_results_independent_of_chunk_size(use_targets: bool) -> None:
    images, saliency = _random_batch(3, 4, 5, 7, torch.float32)
    targets = torch.tensor([0, 1, 2, 1]) if use_targets else None
    model = CountingModel()
    small = deletion_curve(model, images, saliency, targets, steps=5, max_batch_size=7)
    extra = 0 if use_targets else 4  # targets=None: one argmax pass over the clean images
    assert max(model.batch_sizes) == 7
    assert sum(model.batch_sizes) == 4 * 6 + extra
    model.batch_sizes.clear()
    large = deletion_curve(model, images, saliency, targets, steps=5, max_batch_size=np.int64(1000))
    assert model.batch_sizes == ([4] if not use_targets else []) + [24]
    torch.testing.assert_close(small, large, rtol=0, atol=1e-6)


def test_targets_none_is_the_clean_argmax() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3)).double().eval()
    images, saliency = _random_batch(4, 5, 6, 6)
    with torch.no_grad():
        argmax = model(images).argmax(dim=1)
    assert len(set(argmax.tolist())) > 1  # the test would not see a wrong fixed class otherwise
    for curve_fn in (deletion_curve, insertion_curve):
        torch.testing.assert_close(
            curve_fn(model, images, saliency, None, steps=4), curve_fn(model, images, saliency, argmax, steps=4)
        )


def test_non_finite_image_or_map_gives_a_nan_row() -> None:
    model = _tiny_model(dtype=torch.float32)
    images, saliency = _random_batch(5, 3, 6, 6, torch.float32)
    images[0, 1, 2, 3] = float("nan")
    saliency[2, 0, 0] = float("inf")
    for curve_fn in (deletion_curve, insertion_curve):
        curves = curve_fn(model, images, saliency, torch.tensor([0, 1, 2]), steps=4)
        assert curves.dtype == torch.float32
        assert torch.isnan(curves[0]).all() and torch.isnan(curves[2]).all()
        assert torch.isfinite(curves[1]).all()


def test_empty_batch() -> None:
    curves = deletion_curve(_tiny_model(dtype=torch.float32), torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4), steps=3)
    assert curves.shape == (0, 4)
    assert curve_auc(curves).shape == (0,)


def test_deletion_blur_is_phis_blur_and_insertion_blur_is_rises() -> None:
    model = _tiny_model()
    images, saliency = _random_batch(6, 2, 16, 16)
    targets = torch.tensor([1, 2])
    phi_blur = resolve_baseline(images, "blur")  # sigma = 16 / 16 = 1 here, not 5
    torch.testing.assert_close(
        deletion_curve(model, images, saliency, targets, steps=4, baseline="blur"),
        deletion_curve(model, images, saliency, targets, steps=4, baseline=phi_blur),
    )
    rise = insertion_curve(model, images, saliency, targets, steps=4)
    torch.testing.assert_close(
        rise, insertion_curve(model, images, saliency, targets, steps=4, baseline=_reference_blur)
    )
    phi = insertion_curve(model, images, saliency, targets, steps=4, baseline=phi_blur)
    assert not torch.allclose(rise[:, 0], phi[:, 0])


# ----------------------------------------------------------------------------------------------------------------
# The model is left as found; inference mode.


class BatchNormModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.frozen = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.frozen(self.norm(self.conv(x))))


def test_model_left_as_found_and_works_in_inference_mode() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BatchNormModel()
        model(torch.randn(4, 3, 6, 6)).sum().backward()  # moves running stats off their defaults, sets .grad
    model.train()
    model.frozen.eval()  # frozen on purpose
    model.conv.weight.grad = None
    model.head[2].bias.requires_grad_(False)
    training = [(name, module.training) for name, module in model.named_modules()]
    state = {name: value.clone() for name, value in model.state_dict().items()}
    grads = {name: (p.grad, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()}
    requires_grad = [p.requires_grad for p in model.parameters()]
    images, saliency = _random_batch(7, 2, 6, 6, torch.float32)

    curves = deletion_curve(model, images, saliency, steps=3)
    with torch.inference_mode():
        inner = insertion_curve(model, images.clone(), saliency.clone(), steps=3)
        assert torch.is_inference_mode_enabled()
    outer = insertion_curve(model, images, saliency, steps=3)

    torch.testing.assert_close(inner, outer)
    assert torch.isfinite(curves).all()
    assert [(name, module.training) for name, module in model.named_modules()] == training
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name  # running stats and num_batches_tracked untouched (eval)
    for name, param in model.named_parameters():
        grad, values = grads[name]
        assert param.grad is grad, name
        if values is not None:
            assert torch.equal(param.grad, values), name
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------------------------------------------------
# curve_auc and argument checks.


def test_curve_auc_values_and_dtype() -> None:
    curves = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert curve_auc(curves).tolist() == pytest.approx([0.5, 0.2, 0.5], abs=1e-15)
    assert curve_auc(curves.float()).dtype == torch.float32
    assert curve_auc(torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.5)  # S = 1: one trapezoid
    assert torch.isnan(curve_auc(torch.tensor([[0.0, float("nan"), 1.0]]))).all()


@pytest.mark.parametrize(
    ("curves", "match"),
    [
        (torch.zeros(3), r"`curves` to have shape \(B, S \+ 1\)"),
        (torch.zeros(2, 1), r"S >= 1"),
        (torch.zeros(2, 3, dtype=torch.long), "floating point"),
        ([[0.0, 1.0]], "torch.Tensor"),
    ],
)
def test_curve_auc_rejects_bad_curves(curves: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        curve_auc(curves)  # type: ignore[arg-type]


def _valid_arguments() -> dict[str, object]:
    return {
        "model": _tiny_model(dtype=torch.float32),
        "images": torch.rand(2, 3, 4, 5),
        "saliency": torch.rand(2, 4, 5),
        "targets": torch.tensor([0, 2]),
    }


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("model", lambda x: x, "`model` to be a torch.nn.Module"),
        ("images", torch.rand(3, 4, 5), r"`images` to have shape \(B, C, H, W\)"),
        ("images", torch.ones(2, 3, 4, 5, dtype=torch.uint8), "`images` to be a floating point"),
        ("saliency", torch.rand(2, 4, 4), r"`saliency` to have shape \(B, H, W\) = \(2, 4, 5\)"),
        ("saliency", torch.rand(2, 1, 4, 5), r"`saliency` to have shape \(B, H, W\)"),
        ("saliency", torch.rand(3, 4, 5), r"`saliency` to have shape \(B, H, W\) = \(2, 4, 5\)"),
        ("targets", torch.tensor([0, 1, 2]), r"`targets` to have shape \(2,\)"),
        ("targets", torch.tensor([0.0, 1.0]), "`targets` to be an integer tensor"),
        ("targets", [0, 1], r"`targets` to have shape \(2,\)"),
        ("targets", torch.tensor([0, -1]), "`targets` to be non-negative"),
        ("targets", torch.tensor([0, 3]), r"`targets` to be class indices in \[0, 3\)"),
        ("steps", 0, "`steps` to be a positive integer"),
        ("steps", True, "`steps` to be a positive integer"),
        ("steps", 2.0, "`steps` to be a positive integer"),
        ("max_batch_size", 0, "`max_batch_size` to be a positive integer"),
        ("max_batch_size", None, "`max_batch_size` to be a positive integer"),
        ("baseline", "grey", "`baseline` to be one of"),
        ("baseline", torch.zeros(3, 3), "`baseline` to broadcast"),
    ],
)
@pytest.mark.parametrize("curve_fn", [deletion_curve, insertion_curve])
def test_bad_arguments_raise(curve_fn, name: str, value: object, match: str) -> None:
    arguments = _valid_arguments()
    arguments[name] = value
    with pytest.raises(ValueError, match=match):
        curve_fn(**arguments)


def test_numpy_integers_are_accepted() -> None:
    arguments = _valid_arguments()
    curves = deletion_curve(**arguments, steps=np.int64(3), max_batch_size=np.int32(2))  # type: ignore[arg-type]
    assert curves.shape == (2, 4)


class WrappedOutputModel(nn.Module):
    """The tiny model's logits wrapped as ``kind``: a tuple, a dict, a dict under another key, or flat (N,)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.inner = _tiny_model(dtype=torch.float32)
        self.kind = kind

    def forward(self, x: Tensor) -> object:
        logits = self.inner(x)
        return {
            "tuple": (logits, x),
            "dict": {"logits": logits, "features": x},
            "scores": {"scores": logits},
            "flat": logits[:, 0],
        }[self.kind]


@pytest.mark.parametrize("curve_fn", [deletion_curve, insertion_curve])
def test_model_outputs_are_read_with_logits_from_output(curve_fn) -> None:
    arguments = _valid_arguments()
    expected = curve_fn(**arguments, steps=3)
    for kind in ("tuple", "dict"):
        arguments["model"] = WrappedOutputModel(kind)
        torch.testing.assert_close(curve_fn(**arguments, steps=3), expected)
    arguments["model"] = WrappedOutputModel("scores")
    with pytest.raises(ValueError, match="output_transform"):
        curve_fn(**arguments, steps=3)
    torch.testing.assert_close(curve_fn(**arguments, steps=3, output_transform=lambda out: out["scores"]), expected)
    with pytest.raises(ValueError, match="`output_transform` to be a callable or None"):
        curve_fn(**arguments, steps=3, output_transform="scores")
    arguments["model"] = WrappedOutputModel("flat")
    # 2 x (3 + 1) step images
    with pytest.raises(ValueError, match=r"logits of shape \(N, K\), but the model returned shape \(8,\)"):
        curve_fn(**arguments, steps=3)
