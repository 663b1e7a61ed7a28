"""From parsed flags to a command's typed options: argparse stays in the `main` functions, and what they call
takes a frozen dataclass that says every input by name and type."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Options = TypeVar("Options", bound="DataclassInstance")


def options_from(args: argparse.Namespace, options: type[Options]) -> Options:
    """The flags that are fields of `options` (the rest, such as --threads, are the command line's own)."""
    return options(**{field.name: getattr(args, field.name) for field in dataclasses.fields(options)})
