"""The ``optiloop`` subcommands: one module each, registered by name.

A subcommand is a :class:`Command` subclass decorated with ``@command("name")``: it declares its
arguments and turns them into calls of the library, then prints. Parsing and printing only: the
work lives in the library (``optiloop.runs``, ``optiloop.comparison`` ...), and nothing in the
library imports this package. Modules import the library inside ``run``, so ``optiloop --help``
and ``optiloop list`` start without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

COMMANDS: dict[str, type[Command]] = {}


def command(name: str) -> Callable[[type[Command]], type[Command]]:
    """Register a subcommand class under ``name``."""

    def register(cls: type[Command]) -> type[Command]:
        cls.name = name
        COMMANDS[name] = cls
        return cls

    return register


class Command:
    """A subcommand: its arguments and what it does. ``run`` returns the exit code."""

    name = ""
    help = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


# In the order `optiloop --help` lists them. ("listing" and "evaluate": modules named list / eval
# would shadow the builtins in this package.)
for _module in ("train", "predict", "evaluate", "export", "schedule", "compare", "tune", "lr_find", "listing",
                "doctor"):
    importlib.import_module(f".{_module}", __name__)
