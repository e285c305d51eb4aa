"""Heatmap rendering: colours, panels, and the labelled, enlarged sheets of the callback and the CLI."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from evet_lightning.visualization.heatmaps import (
    MIN_PANEL_SIZE,
    SheetLayout,
    captions,
    class_label,
    denormalize,
    display_images,
    display_name,
    heatmap_panel,
    heatmap_sheet,
    jet_colormap,
    overlay,
    panel_scale,
)


def _rows(count: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator)
    return (
        images,
        torch.rand(count, size, size, generator=generator),
        torch.rand(count, size, size, generator=generator),
    )


def _panel(sheet: torch.Tensor, layout: SheetLayout, row: int, column: int) -> torch.Tensor:
    top, left = layout.panel_box(row, column)
    return sheet[:, top : top + layout.panel_height, left : left + layout.panel_width]


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels * 255).round().to(torch.uint8)


def test_jet_colormap_and_panel_values() -> None:
    colours = jet_colormap(torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0, float("nan")]]))[:, 0]
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.5, 1.0, 0.5, 0.0],  # red
            [0.0, 0.5, 1.0, 0.5, 0.0, 0.0],  # green
            [0.5, 1.0, 0.5, 0.0, 0.0, 0.5],  # blue; NaN shows as 0 (dark blue)
        ]
    )
    torch.testing.assert_close(colours, expected)
    image = torch.rand(1, 3, 5, 7)
    saliency = torch.rand(1, 5, 7)
    blended = overlay(image, saliency, opacity=0.25)
    torch.testing.assert_close(blended, 0.75 * image + 0.25 * jet_colormap(saliency))
    panel = heatmap_panel(image, saliency, torch.zeros(1, 5, 7))
    assert panel.dtype == torch.uint8 and tuple(panel.shape) == (1, 3, 5, 21)
    torch.testing.assert_close(panel[0, :, :, :7], _to_uint8(image[0]), rtol=0, atol=1)
    assert torch.equal(panel[0, :, :, 7:14], _to_uint8(overlay(image, saliency)[0]))


def test_panel_denormalizes_and_handles_grey_and_nan() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    pixels = torch.rand(2, 3, 6, 6)
    normalized = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(denormalize(normalized, (mean, std)), pixels)
    panel = heatmap_panel(normalized, torch.rand(2, 6, 6), torch.rand(2, 6, 6), normalization=(mean, std))
    torch.testing.assert_close(panel[:, :, :, :6], _to_uint8(pixels), rtol=0, atol=1)
    grey = heatmap_panel(
        torch.full((1, 1, 4, 4), float("nan")), torch.full((1, 4, 4), float("nan")), torch.ones(1, 4, 4)
    )
    assert grey.shape == (1, 3, 4, 12)
    with pytest.raises(ValueError, match="same size"):
        heatmap_panel(torch.rand(1, 3, 4, 4), torch.rand(1, 4, 5), torch.rand(1, 4, 5))
    with pytest.raises(ValueError, match="`scale`"):
        heatmap_panel(torch.rand(1, 3, 4, 4), torch.rand(1, 4, 4), torch.rand(1, 4, 4), scale=0)


def test_panel_scale_repeats_image_pixels_and_interpolates_maps() -> None:
    images, original, saliency = _rows(1, size=8)
    panel = heatmap_panel(images, original, saliency, scale=3)
    assert tuple(panel.shape) == (1, 3, 24, 72)
    image = panel[0, :, :, :24].reshape(3, 8, 3, 8, 3)
    assert torch.equal(image, image[:, :, :1, :, :1].expand_as(image))  # a constant 3 x 3 block per pixel
    assert torch.equal(image[:, :, 0, :, 0], _to_uint8(images[0]))
    original_overlay = panel[0, :, :, 24:48].reshape(3, 8, 3, 8, 3).float()
    assert (original_overlay - original_overlay[:, :, 1:2, :, 1:2]).abs().amax() > 0  # the map is smoothed


def test_sheet_enlarges_small_images_to_readable_panels_without_smoothing() -> None:
    """The demo's 48-pixel images become 192-pixel panels; every source pixel is one constant 4 x 4 block."""
    images, original, saliency = _rows(2, size=48)
    sheet = heatmap_sheet(images, original, saliency)
    layout = SheetLayout.for_panels(rows=2, panel_height=192, panel_width=192, caption_lines=0, footnote_lines=0)
    assert sheet.dtype == torch.uint8 and tuple(sheet.shape) == (3, layout.height, layout.width)
    for row in range(2):
        blocks = _panel(sheet, layout, row, 0).reshape(3, 48, 4, 48, 4)
        assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
        assert torch.equal(blocks[:, :, 0, :, 0], _to_uint8(display_images(images[row : row + 1])[0]))
        expected_overlays = heatmap_panel(
            images[row : row + 1], original[row : row + 1], saliency[row : row + 1], scale=4
        )
        assert torch.equal(_panel(sheet, layout, row, 1), expected_overlays[0, :, :, 192:384])
        assert torch.equal(_panel(sheet, layout, row, 2), expected_overlays[0, :, :, 384:])
    assert panel_scale(24, 40) == 5 and panel_scale(300, 200) == 1
    large = heatmap_sheet(*_rows(1, size=200))
    assert SheetLayout.for_panels(1, 200, 200, 0, 0).width == large.shape[-1]  # already large: not enlarged


def test_sheet_labels_columns_and_rows() -> None:
    """Titles above the columns, the class and Y under the image, O under each map, a footnote; each label sits
    in its own band and changes only there."""
    images, original, saliency = _rows(2, size=32)
    labelled: dict[str, Any] = {
        "targets": [2, 5],
        "class_names": ["disc", "square", "triangle"],
        "clean_scores": [0.9, 0.8],
        "original_scores": [0.5, 0.4],
        "evet_scores": [0.7, 0.6],
    }
    sheet = heatmap_sheet(images, original, saliency, method="GradCAM", **labelled)
    layout = SheetLayout.for_panels(rows=2, panel_height=192, panel_width=192, caption_lines=2, footnote_lines=2)
    assert tuple(sheet.shape) == (3, layout.height, layout.width)
    plain = heatmap_sheet(images, original, saliency, method="GradCAM")  # no row labels: no caption bands
    plain_layout = SheetLayout.for_panels(rows=2, panel_height=192, panel_width=192, caption_lines=0, footnote_lines=0)
    for row in range(2):
        for column in range(3):
            assert torch.equal(_panel(sheet, layout, row, column), _panel(plain, plain_layout, row, column))

    def ink(picture: torch.Tensor) -> bool:
        return bool((picture < 128).any())

    title_band = sheet[:, layout.margin : layout.margin + layout.line_height]
    assert all(ink(title_band[:, :, left : left + 192]) for left in (layout.panel_box(0, c)[1] for c in range(3)))
    # another method changes the map titles only
    other = heatmap_sheet(images, original, saliency, method="ScoreCAM", **labelled)
    differs = (other != sheet).any(dim=0).nonzero()
    assert differs[:, 0].max() < layout.margin + layout.title_height
    assert differs[:, 1].min() >= layout.panel_box(0, 1)[1]
    # another class name changes the caption under row 0's image only (row 1's class 5 has no name)
    renamed = heatmap_sheet(
        images, original, saliency, method="GradCAM", **{**labelled, "class_names": ["a", "b", "c"]}
    )
    differs = (renamed != sheet).any(dim=0).nonzero()
    top, left = layout.panel_box(0, 0)
    assert differs[:, 0].min() >= top + layout.panel_height and differs[:, 0].max() < top + layout.row_height
    assert differs[:, 1].max() < left + layout.panel_width
    # other O values change the captions under the maps, not under the image
    rescored = heatmap_sheet(images, original, saliency, method="GradCAM", **{**labelled, "evet_scores": [0.1, 0.2]})
    differs = (rescored != sheet).any(dim=0).nonzero()
    assert differs[:, 1].min() >= layout.panel_box(0, 2)[1]
    with pytest.raises(ValueError, match="`targets`"):
        heatmap_sheet(images, original, saliency, targets=[1])


def test_labels_in_words() -> None:
    assert display_name("GradCAM") == "Grad-CAM" and display_name("GradCAMPlusPlus") == "Grad-CAM++"
    assert display_name("pytorch_grad_cam.ScoreCAM") == "Score-CAM" and display_name("EigenCAM") == "EigenCAM"
    assert class_label(2, ["disc", "square", "triangle"]) == "class 2: triangle"
    assert class_label(3, ["disc"]) == "class 3" and class_label(0) == "class 0"
    assert captions([2], [0.91234], [0.5], [0.75], method="GradCAMPlusPlus", class_names=["a", "b", "triangle"]) == [
        "image | Grad-CAM++ (O = 0.500) | EVET-Grad-CAM++ (O = 0.750); class 2: triangle, Y = 0.912"
    ]
    assert captions([1], [0.5], [0.25], [0.125]) == [
        "image | original map (O = 0.250) | EVET map (O = 0.125); class 1, Y = 0.500"
    ]
    assert MIN_PANEL_SIZE >= 192
