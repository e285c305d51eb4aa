"""COCOInstances and its decoders: polygons and RLE (both forms) give the exact masks; errors name the file.

Where pycocotools is installed (the ``coco`` extra), the decoders are compared with it; the reader never needs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evet_lightning.data import COCOInstances, decode_rle, polygon_mask
from evet_lightning.data.coco import rle_counts
from tests._helpers.disk_datasets import encode_rle_string, make_coco, rle_of


def test_items_have_the_exact_per_class_masks(tmp_path: Path) -> None:
    fixture = make_coco(tmp_path)
    dataset = COCOInstances(fixture.images, fixture.annotations, size=None)
    assert dataset.classes == ["person", "cat", "dog"]  # ids 1, 3, 7 -> 0, 1, 2
    assert len(dataset) == 3  # empty.png has no annotation
    for index, name in enumerate(["a.png", "b.png", "c.png"]):
        image, labels, masks = dataset[index]
        assert image.shape == (3, 16, 20) and masks.dtype == torch.bool
        assert torch.equal(masks, fixture.masks[name]), name
        assert torch.equal(labels, fixture.masks[name].flatten(1).any(dim=1).float())
    assert dataset[0][1].tolist() == [0.0, 1.0, 1.0]  # a cat and a crowd of dogs (iscrowd kept)
    assert int((dataset[0][2][1] & dataset[0][2][2]).sum()) > 0  # classes overlap: per-class masks


def test_resized_items(tmp_path: Path) -> None:
    fixture = make_coco(tmp_path)
    dataset = COCOInstances(fixture.images, fixture.annotations, size=8, normalization=((0.5,) * 3, (0.5,) * 3))
    image, labels, masks = dataset[1]
    assert image.shape == (3, 8, 8) and masks.shape == (3, 8, 8)
    assert torch.equal(labels, masks.flatten(1).any(dim=1).float())
    assert labels.tolist() == [1.0, 0.0, 0.0]


def test_rle_decoding_exact() -> None:
    mask = torch.tensor([[0, 1, 1], [1, 0, 1]], dtype=torch.bool)
    assert rle_of(mask) == [1, 2, 1, 2]  # column-major: 0 | 1 1 | 0 | 1 1
    assert torch.equal(decode_rle([1, 2, 1, 2], 2, 3), mask)
    assert torch.equal(decode_rle([0, 6], 2, 3), torch.ones(2, 3, dtype=torch.bool))
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        random = torch.rand(13, 17, generator=generator) < 0.4
        counts = rle_of(random)
        assert rle_counts(encode_rle_string(counts)) == counts
        assert torch.equal(decode_rle(encode_rle_string(counts), 13, 17), random)
        assert torch.equal(decode_rle(encode_rle_string(counts).encode(), 13, 17), random)
    with pytest.raises(ValueError, match="add up to 5 pixels"):
        decode_rle([2, 3], 2, 3)


def test_polygon_convention_on_pixel_centres() -> None:
    # A square with integer corners covers exactly the pixels inside it.
    expected = torch.zeros(6, 7, dtype=torch.bool)
    expected[1:4, 2:6] = True
    assert torch.equal(polygon_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 7), expected)
    # Corners at pixel centres: a centre on the left or top edge is in, on the right or bottom edge out.
    edges = torch.zeros(6, 7, dtype=torch.bool)
    edges[1:3, 1:4] = True  # centres x 1.5..3.5, y 1.5..2.5 of the box [1.5, 4.5] x [1.5, 3.5]
    assert torch.equal(polygon_mask([[1.5, 1.5, 4.5, 1.5, 4.5, 3.5, 1.5, 3.5]], 6, 7), edges)
    # Two polygons are united; a degenerate one adds nothing; vertex order does not matter.
    assert torch.equal(polygon_mask([[2, 1, 6, 1, 6, 4, 2, 4], [0, 0, 1, 1]], 6, 7), expected)
    assert torch.equal(polygon_mask([[2, 4, 6, 4, 6, 1, 2, 1]], 6, 7), expected)


def test_missing_image_and_bad_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    fixture = make_coco(tmp_path)
    (fixture.images / "b.png").unlink()
    dataset = COCOInstances(fixture.images, fixture.annotations)
    dataset.verify([0, 2])
    with pytest.raises(ValueError, match=r"image not found: .*images/b\.png \(named by .*instances\.json\)"):
        dataset.verify()
    with pytest.raises(ValueError, match=r"cannot read annotations .*nothing\.json"):
        COCOInstances(fixture.images, tmp_path / "nothing.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match=r"list\.json are not a COCO instances file"):
        COCOInstances(fixture.images, tmp_path / "list.json")
    content = json.loads(fixture.annotations.read_text())
    content["images"][0]["width"] = 21
    (tmp_path / "wrong_size.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"image .*a\.png is 20x16 pixels, but .*wrong_size\.json says 21x16"):
        COCOInstances(fixture.images, tmp_path / "wrong_size.json").verify([0])


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_agrees_with_pycocotools(tmp_path: Path) -> None:
    mask_api = pytest.importorskip("pycocotools.mask", reason="the optional coco extra")
    import numpy as np

    fixture = make_coco(tmp_path)
    content = json.loads(fixture.annotations.read_text())
    for annotation in content["annotations"]:
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):
            rle = mask_api.merge(mask_api.frPyObjects(segmentation, 16, 20))
        elif isinstance(segmentation["counts"], list):
            rle = mask_api.frPyObjects(segmentation, 16, 20)
        else:
            rle = {"counts": segmentation["counts"].encode(), "size": segmentation["size"]}
        theirs = torch.from_numpy(mask_api.decode(rle).astype(bool))
        ours = (
            polygon_mask(segmentation, 16, 20)
            if isinstance(segmentation, list)
            else decode_rle(segmentation["counts"], 16, 20)
        )
        assert torch.equal(ours, theirs), annotation["id"]
    # Off-grid vertices: pycocotools traces the outline on a finer grid, so outline pixels may differ, no others.
    polygon = [[1.3, 0.7, 9.2, 2.1, 5.5, 8.8]]
    ours = polygon_mask(polygon, 12, 11)
    theirs = torch.from_numpy(mask_api.decode(mask_api.merge(mask_api.frPyObjects(polygon, 12, 11))).astype(bool))
    dilated = torch.nn.functional.max_pool2d(ours[None, None].float(), 3, 1, 1)[0, 0] > 0
    eroded = torch.nn.functional.max_pool2d((~ours)[None, None].float(), 3, 1, 1)[0, 0] == 0
    outline = dilated & ~eroded  # pixels with a neighbour on the other side of our outline
    differ = ours ^ theirs
    assert not bool((differ & ~outline).any()) and 0 < int(differ.sum()) <= 3
    generator = torch.Generator().manual_seed(1)
    random = torch.rand(23, 9, generator=generator) < 0.5
    encoded = mask_api.encode(np.asfortranarray(random.numpy().astype(np.uint8)))
    assert encoded["counts"].decode() == encode_rle_string(rle_of(random))
    assert torch.equal(decode_rle(encoded["counts"], 23, 9), random)


def test_bad_segmentations_name_the_file_and_annotation(tmp_path: Path) -> None:
    fixture = make_coco(tmp_path)
    content = json.loads(fixture.annotations.read_text())
    content["annotations"][0]["segmentation"] = [[1, 2, 3]]
    content["annotations"][2]["segmentation"]["counts"] = "52"
    (tmp_path / "bad.json").write_text(json.dumps(content))
    dataset = COCOInstances(fixture.images, tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"bad\.json, annotation 1 of a\.png: a polygon has 3 coordinates"):
        dataset.verify([0])
    with pytest.raises(ValueError, match=r"bad\.json, annotation 3 of b\.png: RLE counts add up to 7 pixels"):
        dataset.verify([1])


def test_polygon_partly_outside_the_image() -> None:
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[2:, 3:] = True
    assert torch.equal(polygon_mask([[3, 2, 9, 2, 9, 9, 3, 9]], 4, 5), expected)
    assert not bool(polygon_mask([[-5, -5, -1, -5, -1, -1]], 4, 5).any())
