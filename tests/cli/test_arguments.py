"""Options generated from the config dataclasses: every field is a flag, defaults agree, one edit adds one."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal, get_args

import pytest

from evet_lightning.cli import build_parser
from evet_lightning.cli.arguments import add_config_arguments, config_from_args
from evet_lightning.evaluation import DemoConfig, EvaluateConfig
from evet_lightning.evaluation.config import AlphaObjectiveName
from evet_lightning.evaluation.options import cli_option, non_negative_float
from evet_lightning.functional.alpha import ALPHA_OBJECTIVES, DEFAULT_ALPHA_GRID, DEFAULT_ALPHA_OBJECTIVE

DEMO_FLAGS = [
    "--output", "--max-epochs", "--logger", "--num-samples", "--seed", "--train-samples", "--val-samples",
    "--image-size", "--width", "--batch-size", "--cam", "--alpha", "--alpha-grid", "--alpha-objective",
    "--wandb-online", "--accelerator", "--no-progress", "--task",
]  # fmt: skip
EVALUATE_FLAGS = [
    "--model", "--weights", "--num-classes", "--data", "--split", "--normalization", "--masks", "--methods",
    "--num-samples", "--output", "--alpha", "--alpha-grid", "--alpha-objective", "--image-size", "--seed",
    "--batch-size", "--max-batch-size",
    "--reshape-transform", "--output-transform", "--no-deletion-insertion", "--no-paper-stability", "--deletion-steps",
    "--heatmaps", "--time-score-cam", "--target", "--accelerator", "--no-progress", "--alpha-calibration",
    "--devices", "--num-nodes", "--strategy", "--resume", "--task", "--activation",
]  # fmt: skip


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    actions = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return actions.choices[name]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "flags"), [("demo", DEMO_FLAGS), ("evaluate", EVALUATE_FLAGS)])
def test_the_flags_are_the_documented_ones(name: str, flags: list[str]) -> None:
    options = [action.option_strings[0] for action in subcommand(name)._actions if action.dest != "help"]
    assert sorted(options) == sorted(flags)


def test_parsed_defaults_are_the_dataclass_defaults() -> None:
    parser = build_parser()
    assert config_from_args(DemoConfig, parser.parse_args(["demo"])) == DemoConfig()
    parsed = config_from_args(EvaluateConfig, parser.parse_args(["evaluate", "--model", "m"]))
    assert parsed == EvaluateConfig(model="m")


def test_values_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["demo", "--max-epochs", "5", "--logger", "csv", "--alpha", "0.25", "--no-progress", "--wandb-online"]
    )
    config = config_from_args(DemoConfig, args)
    assert (config.max_epochs, config.logger, config.alpha, config.progress, config.wandb_online) == (
        5,
        "csv",
        0.25,
        False,
        True,
    )


def test_every_option_has_help_and_every_field_is_an_option() -> None:
    for config in (DemoConfig, EvaluateConfig):
        for item in dataclasses.fields(config):
            assert item.metadata["cli"].help, item.name


def _alpha(text: str) -> float | Literal["auto"]:
    return "auto" if text == "auto" else non_negative_float(text)


@dataclass
class _Extended:
    """A config as the lead's EVET settings will add them: each new option is one field."""

    model: str = field(metadata=cli_option("the model"))
    alpha: float | Literal["auto"] = field(
        default=0.5, metadata=cli_option("alpha (default {default})", convert=_alpha)
    )
    alpha_objective: Literal["drop", "win"] = field(default="drop", metadata=cli_option("what auto optimizes"))
    alpha_grid: tuple[float, ...] = field(
        default=(0.25, 0.5),
        metadata=cli_option("grid", convert=lambda text: tuple(float(part) for part in text.split(","))),
    )
    fuse: bool = field(default=True, metadata=cli_option("do not fuse"))
    internal: int = 3  # no cli_option: not an option


def _extended(argv: list[str]) -> _Extended:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_arguments(parser, _Extended)
    return config_from_args(_Extended, parser.parse_args(argv))


def test_a_new_option_is_one_field() -> None:
    assert _extended(["--model", "m"]) == _Extended(model="m")
    config = _extended(["--model", "m", "--alpha", "auto", "--alpha-objective", "win", "--alpha-grid", "0.1,1"])
    assert (config.alpha, config.alpha_objective, config.alpha_grid) == ("auto", "win", (0.1, 1.0))
    assert _extended(["--model", "m", "--alpha", "0.3", "--no-fuse"]).alpha == 0.3
    assert _extended(["--model", "m", "--no-fuse"]).fuse is False


def test_converter_messages_and_choices_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--alpha", "-1"])
    assert "argument --alpha: expected 'auto' or a non-negative number, got '-1'" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        _extended(["--model", "m", "--alpha-objective", "nope"])
    with pytest.raises(argparse.ArgumentError, match="expected a non-negative number, got 'x'"):
        _extended(["--model", "m", "--alpha", "x"])


def test_a_field_without_a_usable_type_needs_a_converter() -> None:
    @dataclass
    class Broken:
        value: float | Literal["auto"] = field(default=0.5, metadata=cli_option("no converter"))

    with pytest.raises(TypeError, match="needs a cli_option"):
        add_config_arguments(argparse.ArgumentParser(), Broken)


# --------------------------------------------------------------------------------------------- EVET's options


def parse(argv: list[str]) -> DemoConfig | EvaluateConfig:
    """``evet-lightning <argv>`` parsed into its config (``evaluate`` gets ``--model m``)."""
    command, *rest = argv
    extra = ["--model", "m"] if command == "evaluate" else []
    args = build_parser().parse_args([command, *extra, *rest])
    return config_from_args(DemoConfig, args) if command == "demo" else config_from_args(EvaluateConfig, args)


@pytest.mark.parametrize("command", ["demo", "evaluate"])
def test_alpha_is_auto_by_default_or_a_number(command: str) -> None:
    assert parse([command]).alpha == "auto"
    assert parse([command, "--alpha", "auto"]).alpha == "auto"
    assert parse([command, "--alpha", "AUTO"]).alpha == "auto"
    assert parse([command, "--alpha", "0.3"]).alpha == 0.3
    assert parse([command, "--alpha", "0"]).alpha == 0.0


@pytest.mark.parametrize("command", ["demo", "evaluate"])
@pytest.mark.parametrize("value", ["bad", "-0.5", "inf", "nan", ""])
def test_a_bad_alpha_is_one_argparse_line(command: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse([command, "--alpha", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1, err
    assert f"argument --alpha: expected 'auto' or a non-negative number, got {value!r}" in err


@pytest.mark.parametrize("command", ["demo", "evaluate"])
def test_alpha_grid_is_comma_separated_ascending_numbers(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse([command]).alpha_grid == DEFAULT_ALPHA_GRID
    assert parse([command, "--alpha-grid", "0, 0.2,1.5"]).alpha_grid == (0.0, 0.2, 1.5)
    assert parse([command, "--alpha-grid", "0.7"]).alpha_grid == (0.7,)
    for bad, message in [
        ("0,x", "expected a non-negative number, got 'x'"),
        ("0,-1", "expected a non-negative number, got '-1'"),
        ("0.5,0.25", "expected strictly ascending alphas, got '0.5,0.25'"),
        ("0,0", "expected strictly ascending alphas"),
        ("0,,1", "expected comma-separated non-negative numbers"),
        ("", "expected comma-separated non-negative numbers"),
    ]:
        with pytest.raises(SystemExit):
            parse([command, "--alpha-grid", bad])
        err = capsys.readouterr().err
        assert f"argument --alpha-grid: {message}" in err, (bad, err)


@pytest.mark.parametrize("command", ["demo", "evaluate"])
def test_alpha_objective_offers_every_objective(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert get_args(AlphaObjectiveName) == ALPHA_OBJECTIVES  # the choices follow the engine's objectives
    assert parse([command]).alpha_objective == DEFAULT_ALPHA_OBJECTIVE
    for objective in ALPHA_OBJECTIVES:
        assert parse([command, "--alpha-objective", objective]).alpha_objective == objective
    with pytest.raises(SystemExit):
        parse([command, "--alpha-objective", "win"])
    assert "argument --alpha-objective: invalid choice: 'win'" in capsys.readouterr().err


def test_evaluate_only_options() -> None:
    config = parse(["evaluate"])
    assert isinstance(config, EvaluateConfig)
    assert (config.max_batch_size, config.reshape_transform, config.output_transform) == ("auto", None, None)
    assert (config.deletion_insertion, config.deletion_steps) == (True, 20)
    transforms = ["--reshape-transform", "vit", "--output-transform", "a.b:c"]
    config = parse(
        ["evaluate", "--max-batch-size", "8", *transforms, "--no-deletion-insertion", "--deletion-steps", "4"]
    )
    assert isinstance(config, EvaluateConfig)
    assert (config.max_batch_size, config.reshape_transform, config.output_transform) == (8, "vit", "a.b:c")
    assert (config.deletion_insertion, config.deletion_steps) == (False, 4)
    for flag, value in [("--max-batch-size", "0"), ("--deletion-steps", "0")]:
        with pytest.raises(SystemExit):
            parse(["evaluate", flag, value])
