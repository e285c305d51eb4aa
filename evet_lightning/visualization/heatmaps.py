"""Heatmaps a person can read: ``image | original map | EVET map`` panels and labelled sheets.

Convention:
    - Images are ``(C, H, W)`` (one image) or ``(B, C, H, W)``; saliency maps ``(H, W)`` or ``(B, H, W)`` in [0, 1].
    - Rendered pictures are RGB ``uint8`` in ``(3, H, W)`` layout (``(B, 3, H, W)`` for a batch), the layout that
      :func:`torchvision.io.write_png`, TensorBoard's ``add_image`` and ``wandb.Image`` accept.
    - Colours are those of matplotlib's ``jet``: blue (0) -> cyan -> yellow -> red (1), piecewise linear.
    - Enlarging (``scale``, ``min_size``) repeats each image pixel into a ``scale x scale`` block (nearest
      neighbour: the image is never smoothed); the maps, which are smooth already, are enlarged bilinearly.

Pixels are composed in torch; the labels of :func:`heatmap_sheet` are drawn with Pillow (a matplotlib
dependency) in matplotlib's DejaVu Sans.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evet_lightning.functional.perturbation import Normalization

__all__ = [
    "MIN_PANEL_SIZE",
    "SheetLayout",
    "captions",
    "class_label",
    "denormalize",
    "display_images",
    "display_name",
    "heatmap_panel",
    "heatmap_sheet",
    "jet_colormap",
    "overlay",
    "panel_scale",
    "write_png",
]

#: :func:`heatmap_sheet` enlarges panels until their longer side has at least this many pixels.
MIN_PANEL_SIZE = 192

_DISPLAY_NAMES = {
    "GradCAM": "Grad-CAM",
    "GradCAMPlusPlus": "Grad-CAM++",
    "ScoreCAM": "Score-CAM",
    "FasterScoreCAM": "Faster-Score-CAM",
}
_BACKGROUND = 255
_INK = (32, 32, 32)


def jet_colormap(values: Tensor) -> Tensor:
    """Map values in [0, 1] to jet RGB colours in [0, 1].

    Args:
        values: ``(..., H, W)`` float; NaN is shown as 0 and values outside [0, 1] are clamped.

    Returns:
        ``(..., 3, H, W)`` float32 in [0, 1].

    Example:
        >>> jet_colormap(torch.tensor([[0.0, 0.5, 1.0]]))[:, 0]  # one row: dark blue, green, dark red
        tensor([[0.0000, 0.5000, 0.5000],
                [0.0000, 1.0000, 0.0000],
                [0.5000, 0.5000, 0.0000]])
    """
    values = torch.nan_to_num(values.float(), nan=0.0).clamp(0.0, 1.0)
    # jet is three clipped "tents" centred at 3/4 (red), 1/2 (green) and 1/4 (blue) of the range.
    channels = [(1.5 - (4.0 * values - centre).abs()).clamp(0.0, 1.0) for centre in (3.0, 2.0, 1.0)]
    return torch.stack(channels, dim=-3)


def denormalize(images: Tensor, normalization: Normalization) -> Tensor:
    """Undo ``(x - mean) / std`` per channel: ``x * std + mean``; ``normalization=None`` returns ``images``.

    Args:
        images: ``(C, H, W)`` or ``(B, C, H, W)``.
        normalization: ``(mean, std)``, one value per channel, or ``None``.
    """
    if normalization is None:
        return images
    mean, std = (torch.as_tensor(values, dtype=images.dtype, device=images.device) for values in normalization)
    return images * std.view(-1, 1, 1) + mean.view(-1, 1, 1)


def display_images(images: Tensor, normalization: Normalization = None) -> Tensor:
    """Images as RGB in [0, 1], ready to be shown: ``(B, C, H, W)`` -> ``(B, 3, H, W)`` float32.

    With ``normalization`` the images are denormalized and clamped to [0, 1]. Without it, images already in
    [0, 1] are shown as they are, and other images are min-max scaled per image (their scale is unknown).
    One channel is repeated to grey RGB; more than three channels show the first three. NaN/Inf show as 0.
    """
    images = torch.nan_to_num(images.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    if normalization is not None:
        images = denormalize(images, normalization).clamp(0.0, 1.0)
    elif images.numel() and (images.min() < 0.0 or images.max() > 1.0):
        flat = images.flatten(1)
        low = flat.min(dim=1, keepdim=True).values
        span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
        images = ((flat - low) / span).view_as(images)
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    return images[:, :3]


def overlay(images: Tensor, saliency: Tensor, opacity: float = 0.5) -> Tensor:
    """Blend jet-coloured ``saliency`` over ``images``: ``(1 - opacity) * image + opacity * jet(saliency)``.

    Args:
        images: ``(B, 3, H, W)`` RGB in [0, 1] (see :func:`display_images`).
        saliency: ``(B, H, W)`` in [0, 1].
        opacity: weight of the heatmap, in [0, 1].

    Returns:
        ``(B, 3, H, W)`` float32 in [0, 1].
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"Expected `opacity` to be a float in [0, 1], but got {opacity!r}")
    return ((1.0 - opacity) * images + opacity * jet_colormap(saliency)).clamp(0.0, 1.0)


def panel_scale(height: int, width: int, min_size: int = MIN_PANEL_SIZE) -> int:
    """The smallest integer factor that makes the longer side of a ``height x width`` panel ``>= min_size``.

    Example:
        >>> panel_scale(48, 48), panel_scale(32, 32), panel_scale(24, 40), panel_scale(224, 224)
        (4, 6, 5, 1)
    """
    return max(1, math.ceil(min_size / max(height, width, 1)))


def _check_shapes(images: Tensor, original: Tensor, saliency: Tensor) -> None:
    if images.ndim != 4 or original.shape != (images.shape[0], *images.shape[-2:]) or saliency.shape != original.shape:
        raise ValueError(
            "Expected `images` (B, C, H, W) and `original`, `saliency` (B, H, W) of the same size, but got "
            f"{tuple(images.shape)}, {tuple(original.shape)} and {tuple(saliency.shape)}"
        )


def _columns(
    images: Tensor, original: Tensor, saliency: Tensor, normalization: Normalization, opacity: float, scale: int
) -> list[Tensor]:
    """``[image, original overlay, EVET overlay]``, each ``(B, 3, H * scale, W * scale)`` float in [0, 1]."""
    _check_shapes(images, original, saliency)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"Expected `scale` to be a positive integer, but got {scale!r}")
    shown = display_images(images, normalization)
    shown = shown.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    maps = [maps.detach().to(shown.device).float() for maps in (original, saliency)]
    if scale > 1:
        maps = [F.interpolate(m.unsqueeze(1), scale_factor=scale, mode="bilinear").squeeze(1) for m in maps]
    return [shown, *(overlay(shown, m, opacity) for m in maps)]


def _to_uint8(pixels: Tensor) -> Tensor:
    return (pixels * 255.0).round().clamp(0, 255).to(torch.uint8)


def heatmap_panel(
    images: Tensor,
    original: Tensor,
    saliency: Tensor,
    normalization: Normalization = None,
    opacity: float = 0.5,
    *,
    scale: int = 1,
) -> Tensor:
    """Side-by-side panels ``image | original-map overlay | EVET-map overlay``, unlabelled.

    Args:
        images: ``(B, C, H, W)`` the explained images (normalized as the model saw them).
        original: ``(B, H, W)`` the un-enhanced maps J(x), in [0, 1].
        saliency: ``(B, H, W)`` the EVET maps J*(x), in [0, 1].
        normalization: ``(mean, std)`` the images were normalized with, to show them in pixel colours.
        opacity: weight of the heatmaps in the overlays.
        scale: enlarge by this integer factor (see the module's convention); 1 keeps the input size.

    Returns:
        ``(B, 3, H * scale, 3 W * scale)`` RGB ``uint8``.

    Example:
        >>> panel = heatmap_panel(torch.rand(2, 1, 8, 6), torch.rand(2, 8, 6), torch.rand(2, 8, 6))
        >>> panel.shape, panel.dtype
        (torch.Size([2, 3, 8, 18]), torch.uint8)
    """
    return _to_uint8(torch.cat(_columns(images, original, saliency, normalization, opacity, scale), dim=-1))


def display_name(method: str) -> str:
    """The paper's name of a saliency method: ``"GradCAMPlusPlus"`` -> ``"Grad-CAM++"``; others unchanged.

    Example:
        >>> display_name("GradCAM"), display_name("pytorch_grad_cam.ScoreCAM"), display_name("Gradient")
        ('Grad-CAM', 'Score-CAM', 'Gradient')
    """
    name = method.rsplit(".", 1)[-1]
    return _DISPLAY_NAMES.get(name, name)


def class_label(target: int, class_names: Sequence[str] | None = None) -> str:
    """``"class 2: triangle"``, or ``"class 2"`` when the name is unknown (no names, or an index beyond them).

    Example:
        >>> class_label(1, ["circle", "square"]), class_label(7, ["circle", "square"])
        ('class 1: square', 'class 7')
    """
    target = int(target)
    if class_names is not None and 0 <= target < len(class_names):
        return f"class {target}: {class_names[target]}"
    return f"class {target}"


def _column_titles(method: str | None) -> tuple[str, str, str]:
    if method is None:
        return ("image", "original map", "EVET map")
    name = display_name(method)
    return ("image", name, f"EVET-{name}")


def captions(
    targets: Sequence[int],
    clean: Sequence[float],
    original: Sequence[float],
    enhanced: Sequence[float],
    *,
    method: str | None = None,
    class_names: Sequence[str] | None = None,
) -> list[str]:
    """One caption per sample that labels the panel's columns and its row, for W&B and TensorBoard.

    ``Y`` is the probability of the class explained on the image, ``O`` that on the image perturbed with the
    map (Eq. 3); probabilities with 3 decimals.

    Example:
        >>> captions([2], [0.91234], [0.5], [0.75], method="GradCAM", class_names=["a", "b", "triangle"])
        ['image | Grad-CAM (O = 0.500) | EVET-Grad-CAM (O = 0.750); class 2: triangle, Y = 0.912']
    """
    _, first, second = _column_titles(method)
    return [
        f"image | {first} (O = {o:.3f}) | {second} (O = {e:.3f}); {class_label(k, class_names)}, Y = {y:.3f}"
        for k, y, o, e in zip(targets, clean, original, enhanced, strict=True)
    ]


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes in a :func:`heatmap_sheet`: a title band, rows of three panels each followed by a
    caption band, and a footnote band; ``margin`` around and ``gap`` between panels and rows. Pixels."""

    rows: int
    panel_height: int
    panel_width: int
    font_size: int
    caption_lines: int
    footnote_lines: int
    margin: int = 8
    gap: int = 6

    @classmethod
    def for_panels(
        cls, rows: int, panel_height: int, panel_width: int, caption_lines: int, footnote_lines: int
    ) -> SheetLayout:
        """The layout for ``rows`` panels of ``panel_height x panel_width``; text scales with the panel width."""
        font_size = max(11, min(20, panel_width // 14))
        return cls(rows, panel_height, panel_width, font_size, caption_lines, footnote_lines)

    @property
    def line_height(self) -> int:
        return round(self.font_size * 1.35)

    @property
    def title_height(self) -> int:
        return self.line_height + self.gap

    @property
    def caption_height(self) -> int:
        return self.caption_lines * self.line_height + (self.gap if self.caption_lines else 0)

    @property
    def row_height(self) -> int:
        return self.panel_height + self.caption_height

    @property
    def width(self) -> int:
        return 2 * self.margin + 3 * self.panel_width + 2 * self.gap

    @property
    def height(self) -> int:
        rows = self.rows * self.row_height + max(self.rows - 1, 0) * self.gap
        footnote = self.footnote_lines * self.line_height + (self.gap if self.footnote_lines else 0)
        return 2 * self.margin + self.title_height + rows + footnote

    def panel_box(self, row: int, column: int) -> tuple[int, int]:
        """``(top, left)`` of the panel in ``row`` (0-based) and ``column`` (0 image, 1 original, 2 EVET)."""
        top = self.margin + self.title_height + row * (self.row_height + self.gap)
        return top, self.margin + column * (self.panel_width + self.gap)


def heatmap_sheet(
    images: Tensor,
    original: Tensor,
    saliency: Tensor,
    normalization: Normalization = None,
    *,
    method: str | None = None,
    targets: Sequence[int] | Tensor | None = None,
    class_names: Sequence[str] | None = None,
    clean_scores: Sequence[float] | Tensor | None = None,
    original_scores: Sequence[float] | Tensor | None = None,
    evet_scores: Sequence[float] | Tensor | None = None,
    min_size: int = MIN_PANEL_SIZE,
    opacity: float = 0.5,
) -> Tensor:
    """A labelled grid, one row per image: ``image | <method> overlay | EVET-<method> overlay``.

    Columns carry titles (``image``, the method's name as in the paper, e.g. ``Grad-CAM``, and
    ``EVET-Grad-CAM``). Under each row, when given: the class explained (``class 2: triangle``; its name when
    ``class_names`` has it), ``Y`` under the image and ``O`` under each map; a footnote says what ``Y`` and ``O``
    are. Small images are enlarged by an integer factor until a panel's longer side is ``>= min_size`` pixels
    (:func:`panel_scale`), the image by repeating pixels, the maps bilinearly. :class:`SheetLayout` says where
    each panel is.

    Args:
        images: ``(B, C, H, W)`` the explained images (normalized as the model saw them).
        original: ``(B, H, W)`` the un-enhanced maps J(x), in [0, 1].
        saliency: ``(B, H, W)`` the EVET maps J*(x), in [0, 1].
        normalization: ``(mean, std)`` the images were normalized with, to show them in pixel colours.
        method: the saliency method (``"GradCAM"``, ...); ``None`` titles the maps "original map", "EVET map".
        targets: ``(B,)`` the class explained in each row.
        class_names: names of the classes, by index.
        clean_scores: ``(B,)`` ``Y``, the probability of the class on the image.
        original_scores: ``(B,)`` ``O`` of the original map.
        evet_scores: ``(B,)`` ``O`` of the EVET map.
        min_size: enlarge panels until their longer side has at least this many pixels (0: never enlarge).
        opacity: weight of the heatmaps in the overlays.

    Returns:
        ``(3, height, width)`` RGB ``uint8`` (see :meth:`SheetLayout.for_panels`).

    Example:
        >>> sheet = heatmap_sheet(torch.rand(2, 3, 48, 48), torch.rand(2, 48, 48), torch.rand(2, 48, 48),
        ...                       method="GradCAM", targets=[0, 1], clean_scores=[0.9, 0.8])
        >>> sheet.shape, sheet.dtype
        (torch.Size([3, 556, 604]), torch.uint8)
    """
    _check_shapes(images, original, saliency)
    rows, height, width = images.shape[0], *images.shape[-2:]
    row_values = {
        "targets": targets,
        "clean_scores": clean_scores,
        "original_scores": original_scores,
        "evet_scores": evet_scores,
    }
    listed = {name: _row_list(name, values, rows) for name, values in row_values.items()}
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"Expected `min_size` to be a non-negative integer, but got {min_size!r}")
    scale = panel_scale(height, width, min_size)
    columns = _columns(images, original, saliency, normalization, opacity, scale)
    has_scores = any(listed[name] is not None for name in ("clean_scores", "original_scores", "evet_scores"))
    caption_lines = int(listed["targets"] is not None) + int(listed["clean_scores"] is not None)
    caption_lines = max(caption_lines, int(has_scores))
    layout = SheetLayout.for_panels(rows, height * scale, width * scale, caption_lines, 2 if has_scores else 0)
    canvas = torch.full((3, layout.height, layout.width), _BACKGROUND, dtype=torch.uint8)
    for column, pixels in enumerate(columns):
        for row in range(rows):
            top, left = layout.panel_box(row, column)
            canvas[:, top : top + layout.panel_height, left : left + layout.panel_width] = _to_uint8(pixels[row].cpu())
    return _draw_labels(canvas, layout, _column_titles(method), _captions(listed, class_names, rows), has_scores)


def _row_list(name: str, values: Sequence[Any] | Tensor | None, rows: int) -> list[Any] | None:
    if values is None:
        return None
    items = values.detach().cpu().flatten().tolist() if isinstance(values, Tensor) else list(values)
    if len(items) != rows:
        raise ValueError(f"Expected `{name}` to have one value per image ({rows}), but got {len(items)}")
    return items


def _captions(listed: dict[str, list[Any] | None], class_names: Sequence[str] | None, rows: int) -> list[list[str]]:
    """For each row, the caption lines under each of the three columns (``[image, original, EVET]``)."""
    targets, clean = listed["targets"], listed["clean_scores"]
    original, enhanced = listed["original_scores"], listed["evet_scores"]
    captions = []
    for row in range(rows):
        image_lines = []
        if targets is not None:
            image_lines.append(class_label(targets[row], class_names))
        if clean is not None:
            image_lines.append(f"Y = {clean[row]:.3f}")
        first = [] if original is None else [f"O = {original[row]:.3f}"]
        second = [] if enhanced is None else [f"O = {enhanced[row]:.3f}"]
        captions.append(["\n".join(lines) for lines in (image_lines, first, second)])
    return captions


def _draw_labels(
    canvas: Tensor, layout: SheetLayout, titles: Sequence[str], row_captions: list[list[str]], footnote: bool
) -> Tensor:
    import numpy as np
    from PIL import Image, ImageDraw

    picture = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(picture)
    font = _font(layout.font_size)
    cell = layout.panel_width

    def text(left: int, top: int, lines: str, centre: bool) -> None:
        for index, line in enumerate(lines.split("\n") if lines else []):
            line = _fit(draw, line, font, cell)
            offset = (cell - draw.textlength(line, font=font)) / 2 if centre else 0
            draw.text((left + offset, top + index * layout.line_height), line, fill=_INK, font=font)

    for column, title in enumerate(titles):
        text(layout.panel_box(0, column)[1], layout.margin, title, centre=True)
    for row, cells in enumerate(row_captions):
        for column, lines in enumerate(cells):
            top, left = layout.panel_box(row, column)
            text(left, top + layout.panel_height + layout.gap // 2, lines, centre=True)
    if footnote:
        notes = (
            "Y: probability of the class explained, on the image.",
            "O: the same on the image perturbed with the map, x*M + x_d*(1-M) (Eq. 3).",
        )
        top = layout.height - layout.margin - layout.footnote_lines * layout.line_height
        for index, note in enumerate(notes):
            note = _fit(draw, note, font, layout.width - 2 * layout.margin)
            draw.text((layout.margin, top + index * layout.line_height), note, fill=_INK, font=font)
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()


def _fit(draw: Any, line: str, font: Any, width: int) -> str:
    """``line``, cut and ended with "..." when it is wider than ``width`` pixels."""
    if draw.textlength(line, font=font) <= width:
        return line
    while line and draw.textlength(line + "...", font=font) > width:
        line = line[:-1]
    return line + "..."


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels; Pillow's default font if it cannot load."""
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        try:
            return ImageFont.load_default(size=size)
        except (ImportError, OSError, TypeError):
            return ImageFont.load_default()


def write_png(image: Tensor, path: str | os.PathLike[str]) -> None:
    """Write one ``(3, H, W)`` (or ``(1, H, W)``) ``uint8`` image as PNG, creating parent directories.

    Raises:
        OSError: the file cannot be written (encoded by torchvision, written by Python, so that the error says
            why: torchvision's own writer raises a ``RuntimeError`` without the reason).
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"Expected a (3, H, W) uint8 image, but got {tuple(image.shape)} {image.dtype}")
    with warnings.catch_warnings():
        # torchvision >= 0.29 deprecates its image codecs in favour of TorchCodec; encode_png still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import encode_png

        encoded = encode_png(image.detach().cpu().contiguous()).clone()  # its own storage, exactly the bytes
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as file:
        file.write(bytes(encoded.untyped_storage()))
