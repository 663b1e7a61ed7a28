"""From parsed flags to a command's typed options: argparse stays in the `main` functions, and what they call
takes a frozen dataclass that says every input by name and type. The dataclass is the one place an option is
written: each field made by `flag` carries its help, and `add_flags` builds the command's flags from them."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Options = TypeVar("Options", bound="DataclassInstance")

# The helps of the fields most commands share, said once.
CHECKPOINT_HELP = "shipped model name or model folder"
DATA_DIR_HELP = "folder holding <dataset>/ IDX files (else $LATENT_CNF_DATA)"
DEVICE_HELP = "auto (cuda if available), cpu, cuda, cuda:1, ..."


def flag(default: Any = dataclasses.MISSING, *, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a flag of its command: its default (none: the flag is required), its
    help, and what the annotation cannot say to argparse (choices, a parsing function as type, a metavar)."""
    return dataclasses.field(default=default, metadata={"help": help, "argparse": argparse_kwargs})


def argument(annotation: Any, default: Any) -> dict[str, Any]:
    """The add_argument keywords a field's annotation implies: X | None parses as X; a bool is a switch away
    from its default (--name sets a False one, --no-name clears a True one); a Literal gives the choices; a
    sequence takes any number of values."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if annotation is bool:
        return {"action": "store_false" if default else "store_true"}
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = list(typing.get_args(annotation))
        spec = {"type": type(choices[0]), "choices": choices}
    elif origin in (tuple, list, Sequence):
        spec = {"type": typing.get_args(annotation)[0], "nargs": "*"}
    else:
        spec = {"type": annotation}
    return spec | ({"required": True} if default is dataclasses.MISSING else {"default": default})


def add_flags(parser: argparse.ArgumentParser, options: type[DataclassInstance], threads: bool = True) -> None:
    """A flag per field of `options` made by `flag` (--batch-size for batch_size), in the order of the fields,
    then (unless the command computes nothing itself, as a load generator) --threads, which `parse` applies."""
    hints = typing.get_type_hints(options)
    for field in dataclasses.fields(options):
        if "help" not in field.metadata:
            continue
        spec = argument(hints[field.name], field.default) | field.metadata["argparse"]
        name = field.name.replace("_", "-")
        if spec.get("action") == "store_false":
            spec["dest"], name = field.name, "no-" + name
        parser.add_argument("--" + name, help=field.metadata["help"], **spec)
    if threads:
        parser.add_argument("--threads", type=int, help="torch CPU threads")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed flags, with --threads applied at once: before anything computes."""
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args


def command_line(module: str, argv: list[str] | None) -> str:
    """How the command was run, as a provenance record says it: `python -m <module> <flags>`."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def options_from(args: argparse.Namespace, options: type[Options], **others: Any) -> Options:
    """`options` from the flags that are its fields (made by `flag`; the rest, such as --threads, are the
    command line's own) and `others`, the fields the command computes."""
    flags = {field.name: getattr(args, field.name) for field in dataclasses.fields(options) if "help" in field.metadata}
    return options(**flags, **others)
