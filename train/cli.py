"""From parsed flags to a command's typed options: argparse stays in the `main` functions, and what they call
takes a frozen dataclass that says every input by name and type. The flags every command shares are written
here once, with their defaults taken from the command's dataclass."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Options = TypeVar("Options", bound="DataclassInstance")

# The shared flags by field name: their type and help; the default is the field's.
COMMON_FLAGS: dict[str, dict[str, Any]] = {
    "checkpoint": {"help": "shipped model name or model folder"},
    "data_dir": {"type": Path, "help": "folder holding <dataset>/ IDX files (else $LATENT_CNF_DATA)"},
    "device": {"default": "auto", "help": "auto (cuda if available), cpu, cuda, cuda:1, ..."},
    "seed": {"type": int, "help": "random seed"},
}


def add_flags(parser: argparse.ArgumentParser, options: type[DataclassInstance], **helps: str) -> None:
    """A flag per keyword (--batch-size for batch_size), for the field of `options` of that name, with the help
    given: its default is the field's (required without one; a field built by a factory, as RunOptions'
    resolved device, keeps the common flag's), its type the common flag's or the default's (False: a switch).
    A field whose default is None and is no common flag says its type in its own add_argument."""
    fields = {field.name: field for field in dataclasses.fields(options)}
    for name, help in helps.items():
        field = fields[name]
        spec = COMMON_FLAGS.get(name, {}) | {"help": help}
        if field.default is False:
            spec |= {"action": "store_true"}
        elif field.default is not dataclasses.MISSING:
            inferred = {} if field.default is None else {"type": type(field.default)}
            spec = inferred | spec | {"default": field.default}
        elif field.default_factory is dataclasses.MISSING:
            spec |= {"required": True}
        parser.add_argument("--" + name.replace("_", "-"), **spec)


def add_common_flags(parser: argparse.ArgumentParser, options: type[DataclassInstance], **helps: str) -> None:
    """--threads, and the flag of each field of `options` among COMMON_FLAGS (add_flags); `helps` replaces a
    common flag's help where the command says more, such as what its seed drives."""
    names = [field.name for field in dataclasses.fields(options) if field.name in COMMON_FLAGS]
    add_flags(parser, options, **{name: helps.get(name, COMMON_FLAGS[name]["help"]) for name in names})
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed flags, with --threads applied at once: before anything computes."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def options_from(args: argparse.Namespace, options: type[Options]) -> Options:
    """The flags that are fields of `options` (the rest, such as --threads, are the command line's own)."""
    return options(**{field.name: getattr(args, field.name) for field in dataclasses.fields(options)})
