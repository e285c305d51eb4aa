"""Embedded datasets: synthetic shapes with exact object masks, and real photographs with ImageNet labels."""

from evet_lightning.data.photos import PHOTOS, Photo, SamplePhotos
from evet_lightning.data.synthetic import (
    SHAPE_NAMES,
    ShapeSpec,
    SyntheticShapes,
    SyntheticShapesDataModule,
    draw_shape,
)
from evet_lightning.functional.augment import background_dropout

__all__ = [
    "background_dropout",
    "PHOTOS",
    "SHAPE_NAMES",
    "Photo",
    "SamplePhotos",
    "ShapeSpec",
    "SyntheticShapes",
    "SyntheticShapesDataModule",
    "draw_shape",
]
