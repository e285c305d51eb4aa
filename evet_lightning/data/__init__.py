"""Datasets: synthetic shapes with exact object masks (one target, or several objects for multi-label), real
photographs with ImageNet labels, image folders, and PASCAL VOC and COCO read from disk."""

from evet_lightning.data.coco import COCOInstances, decode_rle, polygon_mask
from evet_lightning.data.image_folder import ImageFolderWithMasks
from evet_lightning.data.multi_shapes import (
    BACKGROUND,
    IGNORE_INDEX,
    MultiObjectShapes,
    MultiObjectShapesDataModule,
    class_masks,
    multi_hot,
)
from evet_lightning.data.photos import PHOTOS, Photo, SamplePhotos
from evet_lightning.data.subsets import sample_indices
from evet_lightning.data.synthetic import (
    SHAPE_NAMES,
    ShapeSpec,
    SyntheticShapes,
    SyntheticShapesDataModule,
    draw_shape,
)
from evet_lightning.data.voc import VOC_CLASSES, VOCSegmentation
from evet_lightning.functional.augment import background_dropout

__all__ = [
    "BACKGROUND",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "COCOInstances",
    "MultiObjectShapes",
    "MultiObjectShapesDataModule",
    "VOCSegmentation",
    "background_dropout",
    "class_masks",
    "decode_rle",
    "multi_hot",
    "polygon_mask",
    "sample_indices",
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
