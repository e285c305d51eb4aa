"""Datasets: synthetic shapes with exact object masks, real photographs with ImageNet labels, image folders."""

from evet_lightning.data.image_folder import ImageFolderWithMasks
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
    "ImageFolderWithMasks",
    "Photo",
    "SamplePhotos",
    "ShapeSpec",
    "SyntheticShapes",
    "SyntheticShapesDataModule",
    "draw_shape",
]
