"""``evaluate --data voc:ROOT`` and ``--data coco:IMAGES_DIR,ANNOTATIONS.json``: the data loads, is drawn with --seed
and checked, and a mistake in it is exit code 2 naming the file; ``--normalization`` reaches the data and EVET's
baseline. The evaluation of their (image, class) pairs: ``test_evaluate_multilabel.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evet_lightning.data import IGNORE_INDEX, sample_indices
from evet_lightning.evaluation import pipeline
from evet_lightning.evaluation.data import EvaluationData, load_data
from evet_lightning.evaluation.loading import EvaluationModel
from evet_lightning.evaluation.options import CAFFE_NORMALIZATION, parse_normalization
from tests._helpers.disk_datasets import make_coco, make_voc, palette_png
from tests.cli.test_errors import assert_usage_error

MODEL = ["--model", "tests.cli._factories:tiny_cnn", "--no-progress"]


def _evaluate(tmp_path: Path, *args: str) -> list[str]:
    size = [] if "--image-size" in args else ["--image-size", "16"]
    return ["evaluate", *MODEL, *size, "--output", str(tmp_path / "out"), *args]


@pytest.mark.parametrize(
    ("break_it", "data", "extra", "fragments"),
    [
        (None, "voc", ["--split", "val"], ["split file not found:", "ImageSets/Segmentation/val.txt"]),
        ("mask_size", "voc", [], ["000002.png is 23x20 pixels, but its image", "000002.jpg is 24x20"]),
        ("mask_value", "voc", [], ["000003.png holds the value 37"]),
        ("image", "voc", [], ["image not found:", "JPEGImages/000001.jpg"]),
        ("image", "coco", [], ["image not found:", "images/b.png (named by", "instances.json"]),
        (None, "coco-no-comma", [], ["expected coco:IMAGES_DIR,ANNOTATIONS.json"]),
        (None, "voc-missing", [], ["a devkit's VOC2007 folder, but no such folder"]),
        (None, "coco", ["--split", "test"], ["--split only applies to --data voc:ROOT"]),
        (None, "voc", ["--masks", "/tmp"], ["--masks only applies to an image folder"]),
        (None, "synthetic", ["--split", "test"], ["--split only applies"]),
        (None, "synthetic", ["--normalization", "caffe"], ["--normalization applies to images read from files"]),
        (None, "synthetic", ["--normalization", "0.5,0.5/1,1,1"], ["argument --normalization", "MEAN/STD"]),
        (None, "synthetic", ["--normalization", "0,0,0/1,0,1"], ["argument --normalization", "positive stds"]),
    ],
)
def test_data_mistakes_are_exit_code_2_naming_the_file(
    break_it: str | None,
    data: str,
    extra: list[str],
    fragments: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    voc, coco = make_voc(tmp_path / "voc"), make_coco(tmp_path / "coco")
    if break_it == "mask_size":
        (voc.root / "SegmentationClass" / "000002.png").write_bytes(palette_png(torch.zeros(20, 23, dtype=torch.uint8)))
    if break_it == "mask_value":
        (voc.root / "SegmentationClass" / "000003.png").write_bytes(palette_png(torch.full((18, 26), 37)))
    if break_it == "image":
        (voc.root / "JPEGImages" / "000001.jpg").unlink()
        (coco.images / "b.png").unlink()
    spec = {
        "voc": f"voc:{voc.root}",
        "coco": f"coco:{coco.images},{coco.annotations}",
        "coco-no-comma": f"coco:{coco.images}",
        "voc-missing": f"voc:{tmp_path / 'nothing'}",
        "synthetic": "synthetic",
    }[data]
    assert_usage_error(capsys, _evaluate(tmp_path, "--data", spec, *extra), *fragments)


def _model(normalization: object = None) -> EvaluationModel:
    from tests._helpers.models import untrained_small_cnn

    return EvaluationModel(untrained_small_cnn(), "tiny", normalization=normalization)  # type: ignore[arg-type]


def test_num_samples_are_drawn_with_the_seed(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    data = load_data(f"voc:{voc.root}", _model(), 2, image_size=16, seed=5)
    assert data.multilabel and data.has_masks and data.max_label is None
    assert data.dataset.indices == sample_indices(3, 2, seed=5)  # type: ignore[attr-defined]
    other = load_data(f"voc:{voc.root}", _model(), 2, image_size=16, seed=2021)
    assert other.dataset.indices == sample_indices(3, 2, seed=2021)  # type: ignore[attr-defined]
    image, labels, mask = data.dataset[0]
    assert image.shape == (3, 16, 16) and labels.shape == (20,) and mask.dtype == torch.int64
    assert IGNORE_INDEX in mask.unique().tolist()


def test_normalization_option_reaches_the_data_and_the_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--normalization caffe`` on an image folder: images are 255 x - mean (no std); the data carries it on."""
    voc = make_voc(tmp_path / "voc")
    folder = tmp_path / "folder" / "a"
    folder.mkdir(parents=True)
    (folder / "x.jpg").write_bytes((voc.root / "JPEGImages" / "000002.jpg").read_bytes())
    seen: list[EvaluationData] = []

    def capture(model: EvaluationModel, data: EvaluationData, *args: object, **kwargs: object) -> None:
        seen.append(data)
        raise pipeline.UsageError("captured")

    monkeypatch.setattr(pipeline, "evaluate", capture)
    argv = _evaluate(tmp_path, "--data", str(tmp_path / "folder"), "--normalization", "caffe", "--image-size", "20")
    assert_usage_error(capsys, argv, "captured")
    (data,) = seen
    assert data.normalization == CAFFE_NORMALIZATION
    plain = load_data(str(tmp_path / "folder"), _model(), 1, image_size=20).dataset[0][0]
    mean = torch.tensor([123.68, 116.779, 103.939]).view(3, 1, 1)
    torch.testing.assert_close(data.dataset[0][0], plain * 255.0 - mean, rtol=0, atol=1e-3)


def test_parse_normalization() -> None:
    assert parse_normalization("none") is None
    assert parse_normalization("ImageNet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean, std = parse_normalization("caffe")  # type: ignore[misc]
    torch.testing.assert_close(torch.tensor(mean) * 255, torch.tensor([123.68, 116.779, 103.939]))
    assert std == (1 / 255,) * 3
    with pytest.raises(ValueError, match="expected imagenet, caffe, none or MEAN/STD"):
        parse_normalization("0.5,0.5,0.5")
