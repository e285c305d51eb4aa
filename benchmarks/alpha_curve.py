"""How EVET's boost strength alpha (Eq. 5) trades faithfulness against localization, and what ``alpha="auto"`` picks.

Two settings, EVET-Grad-CAM and EVET-Grad-CAM++ in each:

- **synthetic**: the demo's SmallCNN trained on the synthetic shapes with the demo's recipe (held-out seeds,
  never the ones ``evaluate`` reports on), 256 validation images with exact object masks;
- **photos**: the ImageNet-pretrained EfficientNet-Lite0 on the 7 bundled photographs (no masks).

For a dense grid of alpha it prints average drop, increase in confidence and (with masks) the energy pointing
game, the original map's values, and the alpha each objective of ``alpha="auto"`` chooses on the default grid.
One EVET run per setting gives the whole curve (``alpha="auto"`` scores every alpha of the grid). Writes
``alpha_curve.json`` and ``alpha_curve.png`` into ``--output``.

Usage: ``python benchmarks/alpha_curve.py [--output docs/images] [--samples 256] [--skip-photos]``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from evet_lightning import EVET
from evet_lightning.data import SyntheticShapes, SyntheticShapesDataModule
from evet_lightning.functional.alpha import ALPHA_OBJECTIVES, DEFAULT_ALPHA_GRID, AlphaCurve, choose_alpha
from evet_lightning.models import ShapesClassifier

DENSE_GRID = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 4.0)
TRAIN_SEED = 100  # the demo and `evaluate` use seeds 0, 1 and 2021
VAL_SEED = 101
CAMS = ("GradCAM", "GradCAMPlusPlus")


def train(seed: int) -> ShapesClassifier:
    """The demo's classifier and recipe (DemoConfig's defaults), on another seed."""
    from evet_lightning.evaluation import DemoConfig

    config = DemoConfig()
    pl.seed_everything(seed, verbose=False)
    module = ShapesClassifier(width=config.width)
    data = SyntheticShapesDataModule(
        image_size=config.image_size,
        train_samples=config.train_samples,
        val_samples=config.val_samples,
        batch_size=config.batch_size,
        seed=seed,
    )
    trainer = pl.Trainer(
        max_epochs=config.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    return module.eval()


def _row(curve: AlphaCurve) -> dict[str, Any]:
    energy = curve.energy_pointing_game
    return {
        "alpha": curve.alphas.tolist(),
        "average_drop": curve.average_drop.tolist(),
        "increase_in_confidence": curve.increase_in_confidence.tolist(),
        "energy_pointing_game": None if energy is None else energy.tolist(),
    }


def measure(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None, **kwargs: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cam in CAMS:
        result = EVET(model, cam=cam, alpha="auto", alpha_grid=DENSE_GRID, **kwargs)(images, labels, masks=masks)
        curve = result.alpha_curve
        assert curve is not None
        count = curve.num_samples.clamp_min(1)
        original = {
            "average_drop": float(curve.original_drop / count),
            "increase_in_confidence": float(curve.original_increase / count),
            "energy_pointing_game": None if curve.original_energy is None else float(curve.original_energy / count),
        }
        # What `alpha="auto"` picks on the default grid: the dense curve restricted to the grid's alphas.
        keep = [DENSE_GRID.index(alpha) for alpha in DEFAULT_ALPHA_GRID]
        default = AlphaCurve(*(None if v is None else (v[keep] if v.ndim == 1 else v) for v in curve))
        picks = {}
        for objective in ALPHA_OBJECTIVES:
            if objective == "energy_pointing_game" and masks is None:
                continue
            picks[objective] = DEFAULT_ALPHA_GRID[choose_alpha(default, objective)[0]]
        out[cam] = {"original": original, "evet": _row(curve), "picks": picks}
    return out


def print_setting(name: str, payload: dict[str, Any]) -> None:
    for cam, data in payload.items():
        print(f'\n{name}, EVET-{cam}: alpha="auto" picks {data["picks"]} on the default grid {DEFAULT_ALPHA_GRID}')
        print("| alpha | average drop (%) ↓ | increase in confidence (%) ↑ | energy pointing game (%) ↑ |")
        print("| --- | --- | --- | --- |")
        original = data["original"]

        def cell(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.1f}"

        print(
            f"| original | {cell(original['average_drop'])} | {cell(original['increase_in_confidence'])} | "
            f"{cell(original['energy_pointing_game'])} |"
        )
        evet = data["evet"]
        for index, alpha in enumerate(evet["alpha"]):
            energy = None if evet["energy_pointing_game"] is None else evet["energy_pointing_game"][index]
            print(
                f"| {alpha:g} | {cell(evet['average_drop'][index])} | "
                f"{cell(evet['increase_in_confidence'][index])} | {cell(energy)} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/images"))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--skip-photos", action="store_true")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    start = time.perf_counter()
    module = train(TRAIN_SEED)
    from evet_lightning.evaluation import DemoConfig

    dataset = SyntheticShapes(num_samples=args.samples, seed=VAL_SEED, image_size=DemoConfig().image_size)
    images, labels, masks = (
        torch.stack(items) for items in zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    )
    with torch.no_grad():
        accuracy = float((module(images).argmax(1) == labels).float().mean())
    payload: dict[str, Any] = {"synthetic": {"accuracy": accuracy, **measure(module, images, labels, masks.bool())}}
    print(f"SmallCNN val accuracy {accuracy:.3f} on {args.samples} held-out synthetic images (seed {VAL_SEED})")
    print_setting("synthetic", {cam: payload["synthetic"][cam] for cam in CAMS})
    if not args.skip_photos:
        from evet_lightning.data import SamplePhotos
        from evet_lightning.models import efficientnet_lite0
        from evet_lightning.models.efficientnet_lite import CAM_TARGET_LAYER, LITE0_NORMALIZATION

        photos = SamplePhotos()
        items = [photos[i] for i in range(len(photos))]
        photo_images = torch.stack([item[0] for item in items])
        photo_labels = torch.tensor([int(item[1]) for item in items])
        lite0 = efficientnet_lite0().eval()
        payload["photos"] = measure(
            lite0,
            photo_images,
            photo_labels,
            None,
            target_layers=CAM_TARGET_LAYER,
            normalization=LITE0_NORMALIZATION,
        )
        print_setting("photos", payload["photos"])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "alpha_curve.json").write_text(json.dumps(payload, indent=2))
    plot(payload, args.output / "alpha_curve.png")
    print(f"\nwrote {args.output / 'alpha_curve.png'} in {time.perf_counter() - start:.0f} s")


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {
        "average_drop": "average drop (%) ↓",
        "increase_in_confidence": "increase in confidence (%) ↑",
        "energy_pointing_game": "energy pointing game (%) ↑",
    }
    settings = [name for name in ("synthetic", "photos") if name in payload]
    figure, axes = plt.subplots(len(settings), 3, figsize=(12, 3.3 * len(settings)), squeeze=False)
    for row, setting in zip(axes, settings, strict=True):
        for axis, (key, title) in zip(row, metrics.items(), strict=True):
            for cam, colour in zip(CAMS, ("tab:blue", "tab:orange"), strict=True):
                data = payload[setting][cam]
                values = data["evet"][key]
                if values is None:
                    continue
                alphas = data["evet"]["alpha"]
                axis.plot(alphas, [100 * v for v in values], "o-", color=colour, label=f"EVET-{cam}")
                axis.axhline(100 * data["original"][key], color=colour, linestyle="--", linewidth=1)
                pick = data["picks"]["faithful_boost"]
                axis.plot([pick], [100 * values[alphas.index(pick)]], "*", color=colour, markersize=14)
            axis.set_xscale("symlog", linthresh=0.1)
            axis.set_xlabel("alpha (dashed: original map; star: alpha='auto')")
            axis.set_title(f"{setting}: {title}", fontsize=9)
            if not axis.lines:
                axis.text(0.5, 0.5, "no object masks", ha="center", va="center", transform=axis.transAxes)
        row[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    main()
