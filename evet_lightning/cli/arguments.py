"""``argparse`` arguments generated from a configuration dataclass, and the dataclass back from the namespace.

The fields that carry ``metadata=cli_option(...)`` (:mod:`evet_lightning.evaluation.options`) become options;
see there for what is derived from a field (flag, type, choices, required). A converter's ``ValueError``
becomes argparse's one-line error: ``argument --flag: <message>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from evet_lightning.evaluation.options import OPTION_KEY, CliOption

__all__ = ["add_config_arguments", "config_from_args", "flag_of"]

Config = TypeVar("Config")


def flag_of(item: dataclasses.Field[Any]) -> str:
    """The option of a field: ``--field-name``, or ``--no-field-name`` for a ``bool`` that defaults to ``True``."""
    name = item.name.replace("_", "-")
    return f"--no-{name}" if item.default is True else f"--{name}"


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Add one argument to ``parser`` for each field of the dataclass ``config_class`` that has a ``cli_option``."""
    hints = get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        option = item.metadata.get(OPTION_KEY)
        if not isinstance(option, CliOption):
            continue
        required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        default = None if required else _default(item)
        help_text = option.help.format(default=default).replace("%", "%%")
        kind = _without_none(hints[item.name])
        if kind is bool:
            action = "store_false" if default is True else "store_true"
            parser.add_argument(flag_of(item), dest=item.name, action=action, help=help_text)
            continue
        choices = get_args(kind) if get_origin(kind) is Literal else None
        convert = option.convert or (str if choices else kind)
        if not (option.convert or choices or isinstance(kind, type)):
            raise TypeError(f"field {item.name!r} of {config_class.__name__} needs a cli_option(convert=...)")
        parser.add_argument(
            flag_of(item),
            dest=item.name,
            type=_argparse_type(convert),
            default=default,
            required=required,
            choices=choices,
            metavar=option.metavar,
            help=help_text,
        )


def config_from_args(config_class: Callable[..., Config], args: argparse.Namespace) -> Config:
    """The dataclass ``config_class`` with every option's value from ``args`` (the others at their defaults)."""
    names = [item.name for item in dataclasses.fields(config_class) if OPTION_KEY in item.metadata]  # type: ignore[arg-type]
    return config_class(**{name: getattr(args, name) for name in names})


def _default(item: dataclasses.Field[Any]) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def _without_none(kind: Any) -> Any:
    """``int | None`` -> ``int``; other types unchanged."""
    if get_origin(kind) in (Union, types.UnionType):
        others = [arg for arg in get_args(kind) if arg is not type(None)]
        if len(others) == 1:
            return others[0]
    return kind


def _argparse_type(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert`` with its ``ValueError`` turned into argparse's message (argparse would drop the text)."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse
