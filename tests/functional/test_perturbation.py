"""perturb (Eq. 3) and target_probabilities: exact values on constructed inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evet_lightning.functional import perturb, resolve_baseline, target_probabilities

MEAN = (0.5, 0.25, 0.0)
STD = (0.5, 0.25, 2.0)


def _images(seed: int = 0, shape: tuple[int, ...] = (2, 3, 4, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _saliency(seed: int = 1, shape: tuple[int, ...] = (2, 4, 5)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_black_without_normalization_is_x_times_m() -> None:
    images, saliency = _images(), _saliency()
    out = perturb(images, saliency)
    torch.testing.assert_close(out, images * saliency.unsqueeze(1), rtol=0, atol=1e-7)
    assert out.shape == images.shape and out.dtype == images.dtype


def test_black_with_normalization_is_pixel_black() -> None:
    images, saliency = _images(), _saliency()
    out = perturb(images, saliency, "black", normalization=(MEAN, STD))
    black = torch.tensor([(0 - m) / s for m, s in zip(MEAN, STD, strict=True)]).view(1, 3, 1, 1)  # -1, -2, 0
    expected = images * saliency.unsqueeze(1) + black * (1 - saliency.unsqueeze(1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # where the map is 0 the image is exactly black in pixel space: denormalized, it is 0
    zero_map = perturb(images, torch.zeros(2, 4, 5), "black", normalization=(MEAN, STD))
    pixels = zero_map * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert torch.equal(pixels, torch.zeros_like(pixels))
    # and where it is 1 the image is unchanged
    assert torch.equal(perturb(images, torch.ones(2, 4, 5), "black", normalization=(MEAN, STD)), images)


def test_zeros_ignores_normalization() -> None:
    images, saliency = _images(), _saliency()
    out = perturb(images, saliency, "zeros", normalization=(MEAN, STD))
    torch.testing.assert_close(out, images * saliency.unsqueeze(1), rtol=0, atol=1e-7)


def test_blur_of_a_constant_image_is_that_constant() -> None:
    images = torch.full((2, 3, 16, 12), 0.37)
    images[1] = -1.25
    torch.testing.assert_close(resolve_baseline(images, "blur"), images, rtol=0, atol=1e-6)
    torch.testing.assert_close(perturb(images, _saliency(shape=(2, 16, 12)), "blur"), images, rtol=0, atol=1e-6)


def test_blur_smooths() -> None:
    images = torch.zeros(1, 1, 16, 16)
    images[0, 0, 8, 8] = 1.0
    blurred = resolve_baseline(images, "blur")
    assert blurred.max().item() < 0.5
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)  # mass kept away from the borders


def test_tensor_and_callable_baselines() -> None:
    images, saliency = _images(), _saliency()
    grey = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    expected = images * saliency.unsqueeze(1) + grey * (1 - saliency.unsqueeze(1))
    torch.testing.assert_close(perturb(images, saliency, grey), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        perturb(images, saliency, lambda x: torch.ones_like(x) * grey), expected, rtol=0, atol=1e-6
    )
    flipped = perturb(images, saliency, lambda x: x.flip(-1))
    torch.testing.assert_close(
        flipped, images * saliency.unsqueeze(1) + images.flip(-1) * (1 - saliency.unsqueeze(1)), rtol=0, atol=1e-6
    )


def test_channel_dim_and_smaller_maps() -> None:
    images = _images()
    torch.testing.assert_close(perturb(images, _saliency().unsqueeze(1)), perturb(images, _saliency()))
    # a smaller constant map is upsampled to a constant map
    torch.testing.assert_close(perturb(images, torch.full((2, 2, 2), 0.5)), images * 0.5, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("images", "saliency", "baseline", "name"),
    [
        (torch.zeros(3, 4, 5), torch.zeros(3, 4, 5), "black", "images"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(3, 4, 5), "black", "saliency"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, 2, 4, 5), "black", "saliency"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5), "white", "baseline"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5), 3.0, "baseline"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5), torch.zeros(2, 3, 4, 6), "baseline"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5), lambda x: 0.0, "baseline"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(
    images: torch.Tensor, saliency: torch.Tensor, baseline: object, name: str
) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        perturb(images, saliency, baseline)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "normalization", [((0.5, 0.5), (0.5, 0.5)), ((0.5, 0.5, 0.5), (0.5, 0.0, 0.5)), ((0.5,), (-1.0,))]
)
def test_bad_normalization_raises(normalization: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    with pytest.raises(ValueError, match=r"`normalization`|std"):
        perturb(_images(), _saliency(), "black", normalization=normalization)


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


def test_target_probabilities_is_the_softmax_of_the_target() -> None:
    torch.manual_seed(0)
    model = _TinyNet().eval()
    images = _images(shape=(7, 3, 6, 6))
    targets = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    with torch.no_grad():
        logits = model(images)
    expected = torch.stack([logits[i].softmax(dim=0)[targets[i]] for i in range(7)])
    probabilities = target_probabilities(model, images, targets)
    assert probabilities.shape == (7,) and probabilities.dtype == torch.float32
    torch.testing.assert_close(probabilities, expected, rtol=0, atol=1e-6)
    for chunk in (1, 3, 7, 100):
        torch.testing.assert_close(target_probabilities(model, images, targets, max_batch_size=chunk), expected)
    assert not probabilities.requires_grad


def test_target_probabilities_errors_and_empty_batch() -> None:
    model = _TinyNet()
    with pytest.raises(ValueError, match="`targets`"):
        target_probabilities(model, _images(shape=(3, 3, 4, 4)), torch.tensor([0, 1]))
    empty = target_probabilities(model, torch.zeros(0, 3, 4, 4), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,) and empty.dtype == torch.float32
