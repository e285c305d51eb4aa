"""EVET's options on the command line reach every callback (issues 9-11): alpha (auto or fixed, its grid and
objective), the chunk size, ``--reshape-transform`` / ``--output-transform``, deletion / insertion; and a
torchvision ViT-B/16 loads from ``--weights`` and is explained at the layer an expert would pick."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from evet_lightning.callbacks import EVETCallback
from evet_lightning.cli import main
from evet_lightning.evaluation import EvaluationModule, runner
from tests.cli import _factories
from tests.cli.test_errors import assert_usage_error
from tests.cli.test_evaluate import printed_tables

TINY = ["--model", "tests.cli._factories:tiny_cnn", "--image-size", "32", "--no-progress", "--heatmaps", "0"]


@pytest.fixture
def callbacks(monkeypatch: pytest.MonkeyPatch) -> list[EVETCallback]:
    """Every callback ``run_method`` attaches, in method order."""
    made: list[EVETCallback] = []
    real = runner.evaluation_callback

    def spy(*args: Any, **kwargs: Any) -> EVETCallback:
        callback = real(*args, **kwargs)
        made.append(callback)
        return callback

    monkeypatch.setattr(runner, "evaluation_callback", spy)
    return made


def evaluate(args: list[str], output: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    code = main(["evaluate", *args, "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads((output / "tables.json").read_text()), captured.out


# --------------------------------------------------------------------------------------------- alpha


def test_a_fixed_alpha_reaches_the_callback_and_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], callbacks: list[EVETCallback]
) -> None:
    args = [*TINY, "--num-samples", "2", "--methods", "Gradient,GradCAM", "--alpha", "0.25", "--no-deletion-insertion"]
    payload, out = evaluate(args, tmp_path, capsys)
    assert [callback.settings.alpha for callback in callbacks] == [0.25, 0.25]
    assert payload["alpha"] == 0.25
    assert payload["alpha_by_method"] == {"Gradient": {"alpha": 0.25}, "GradCAM": {"alpha": 0.25}}
    assert all("evet/alpha" not in metrics for metrics in payload["validate"].values())  # nothing chosen
    assert printed_tables(out)["Table 1"][("Alpha", "w/ EVET")] == ["0.250", "0.250"]
    assert "alpha 0.25," in out
    assert "Table 6" not in out  # --no-deletion-insertion


def test_every_evet_setting_reaches_every_callback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], callbacks: list[EVETCallback]
) -> None:
    args = [*TINY, "--num-samples", "4", "--methods", "Gradient,GradCAM", "--deletion-steps", "3"]
    args += ["--alpha-grid", "0,0.5", "--alpha-objective", "average_drop", "--max-batch-size", "3"]
    payload, out = evaluate(args, tmp_path, capsys)
    assert [callback.cam_name for callback in callbacks] == ["Gradient", "GradCAM"]
    for callback in callbacks:
        settings = callback.settings
        assert (settings.alpha, settings.alpha_grid, settings.alpha_objective) == ("auto", (0.0, 0.5), "average_drop")
        assert settings.max_batch_size == 3 and settings.normalization is None
        assert settings.target_layers == "features.block4" or settings.target_layers == ("features.block4",)
        assert (callback.deletion_insertion, callback.deletion_steps) == (True, 3)
        assert callback.model == "model" and callback.num_samples == 4 and callback.prefix == "evet"
        assert callback.last_alpha is not None
    # tables.json: the callback's own choice, per method
    for callback in callbacks:
        chosen = payload["alpha_by_method"][callback.cam_name]
        assert callback.last_alpha is not None
        assert chosen["folds"] == list(callback.last_alpha.alphas)
        assert chosen["alpha"] == pytest.approx(callback.last_alpha.mean_alpha)
        assert chosen["curve"]["alphas"] == [0.0, 0.5]
        assert chosen["curve"]["average_drop"] == pytest.approx(callback.last_alpha.curve.average_drop.tolist())
    assert payload["settings"]["max_batch_size"] == 3 and payload["settings"]["deletion_steps"] == 3
    assert "Table 6: deletion / insertion AUC (RISE, 3 steps)" in out


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--alpha", "0.3", "--alpha-grid", "0,1"], ["--alpha-grid only applies to --alpha auto", "--alpha 0.3"]),
        (["--alpha", "0", "--alpha-objective", "average_drop"], ["--alpha-objective only applies to --alpha auto"]),
        (["--no-deletion-insertion", "--deletion-steps", "5"], ["--deletion-steps does not apply"]),
        (["--reshape-transform", "no_such_package.reshape:tokens"], ["cannot import 'no_such_package.reshape'"]),
        (["--reshape-transform", "tests.cli._factories:nothing"], ["has no attribute 'nothing'"]),
        (["--reshape-transform", "tests.cli._factories:NOT_CALLABLE"], ["--reshape-transform", "not callable"]),
        (
            ["--reshape-transform", "deit"],
            ["unknown --reshape-transform 'deit': expected vit, swin or package.module:name"],
        ),
        (["--reshape-transform", ":x"], ["expected --reshape-transform package.module:name"]),
        (["--output-transform", "vit"], ["unknown --output-transform 'vit': expected package.module:name"]),
        (["--output-transform", "no_such_package:logits"], ["cannot import 'no_such_package'"]),
        (["--output-transform", "tests.cli._factories:not_a_module"], ["not_a_module() takes 0 positional"]),
    ],
)
def test_evet_option_mistakes_are_one_line(
    extra: list[str], fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", *TINY, "--methods", "GradCAM", "--output", str(tmp_path / "out"), *extra]
    assert_usage_error(capsys, argv, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("methods", ["Gradient", "Gradient,captum:Saliency"])
def test_a_reshape_transform_no_method_uses_is_refused(
    methods: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", *TINY, "--methods", methods, "--reshape-transform", "vit", "--output", str(tmp_path / "out")]
    assert_usage_error(capsys, argv, "--reshape-transform vit applies only to methods that explain a layer", methods)
    assert not (tmp_path / "out").exists()


def test_the_pointing_game_objective_needs_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli.test_preflight import image_folder

    images = image_folder(tmp_path)
    argv = ["evaluate", *TINY, "--data", str(images), "--alpha-objective", "energy_pointing_game"]
    assert_usage_error(capsys, [*argv, "--output", str(tmp_path / "out")], "needs object masks")
    assert_usage_error(capsys, ["demo", "--alpha", "0.5", "--alpha-grid", "0,1"], "only applies to --alpha auto")


# --------------------------------------------------------------------------------------------- transforms


def test_output_transform_reads_the_logits_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", "tests.cli._factories:scores_cnn", "--image-size", "32", "--no-progress", "--heatmaps", "0"]
    argv = ["evaluate", *model, "--methods", "GradCAM", "--output", str(tmp_path / "no")]
    assert_usage_error(capsys, argv, "Expected the model to return logits", "output_transform")
    args = [*model, "--methods", "Gradient,GradCAM", "--num-samples", "4", "--deletion-steps", "2"]
    payload, _ = evaluate([*args, "--output-transform", "tests.cli._factories:scores_of"], tmp_path / "yes", capsys)
    assert payload["settings"]["output_transform"] == "tests.cli._factories:scores_of"
    for metrics in payload["validate"].values():  # accuracy (the wrapper's forward) and every EVET score
        assert {"val_acc", "evet/evet/average_drop", "evet/evet/deletion_auc"} <= set(metrics)
    images = torch.rand(3, 3, 32, 32)
    wrapped = EvaluationModule(_factories.scores_cnn(), _factories.scores_of)
    assert torch.equal(wrapped(images), _factories.scores_cnn()(images)["scores"])


def test_a_token_model_with_and_without_reshape_transform(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", "tests.cli._factories:tiny_vit", "--image-size", "32", "--no-progress", "--heatmaps", "0"]
    args = [*model, "--methods", "GradCAM", "--num-samples", "2", "--alpha", "0.5", "--no-deletion-insertion"]
    automatic, _ = evaluate(args, tmp_path / "auto", capsys)
    assert automatic["target_layers"] == ["encoder.layers.encoder_layer_1.ln_1"]
    assert automatic["layout"] == "tokens (B, 1 + 4 x 4, C)"
    for spec in ["vit", "tests.cli._factories:tokens_to_map"]:
        given, _ = evaluate([*args, "--reshape-transform", spec], tmp_path / spec.replace(":", "_"), capsys)
        assert given["layout"] == "--reshape-transform" and given["settings"]["reshape_transform"] == spec
        assert given["target_layers"] == automatic["target_layers"]
        assert given["validate"]["GradCAM"]["evet/evet/average_drop"] == pytest.approx(
            automatic["validate"]["GradCAM"]["evet/evet/average_drop"], abs=1e-6
        )  # the same reading as the automatic one: the same maps, the same scores


# --------------------------------------------------------------------------------------------- ViT-B/16


def test_vit_b_16_from_weights_is_explained_at_its_last_blocks_first_norm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The real architecture, built at 48 px (a 3 x 3 patch grid) so that it runs in seconds on a CPU: loading
    reads the image size from the position embedding. At 224 px the same run costs about 20x more."""
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    weights = tmp_path / "vit_b_16.pt"
    torch.save(vit_b_16(num_classes=4, image_size=48).state_dict(), weights)
    args = ["--model", "vit_b_16", "--weights", str(weights), "--num-samples", "2", "--methods", "GradCAM"]
    args += ["--alpha", "0.5", "--no-deletion-insertion", "--no-progress", "--heatmaps", "0"]
    with caplog.at_level(logging.INFO):
        payload, out = evaluate(args, tmp_path / "out", capsys)
    layer = "encoder.layers.encoder_layer_11.ln_1"
    assert payload["target_layers"] == [layer]
    assert payload["layout"] == "tokens (B, 1 + 3 x 3, C)"  # read automatically: no --reshape-transform
    assert payload["settings"]["reshape_transform"] is None
    logged = [record.getMessage() for record in caplog.records]
    assert any(f"auto-detected target layer {layer!r}" in message for message in logged), logged
    assert f"CAM layer {layer} (tokens (B, 1 + 3 x 3, C))" in out
    assert payload["num_samples"] == 2 and payload["validate"]["GradCAM"]["evet/num_skipped"] == 0.0
