"""The ``optiloop`` command line: the parser over the registered subcommands, and ``main``.

    optiloop train [--config run.toml] [--optimizer sgd --lr 0.05 ...] [--set section.key=value]
    optiloop predict runs/NAME --data new.csv [--out predictions.csv]
    optiloop eval runs/NAME [--data other.csv]
    optiloop schedule cosine onecycle --lr 0.1 --epochs 30 --plot lr.png
    optiloop compare | lr-find | list

Each subcommand is a module of ``optiloop.commands``. Every failure the user can fix ends as one
line ``error: ...`` on stderr and exit code 2, with nothing written. Nothing imports this module;
it sits on top of the library, and importing it imports no torch.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from .commands import COMMANDS, Command, command
from .errors import DataWarning, DiskError, OptiloopError, did_you_mean

__all__ = ["COMMANDS", "Command", "build_parser", "command", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")

    def _check_value(self, action, value):  # an unknown choice (a subcommand ...) gets a "did you mean"
        if action.choices is not None and value not in action.choices:
            hint = did_you_mean(value, action.choices)
            if hint:
                raise argparse.ArgumentError(action, f"invalid choice: {value!r}{hint}; choose from "
                                             f"{', '.join(map(str, action.choices))}")
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    from ._version import __version__  # only --version reads it

    parser = _Parser(prog="optiloop", description="Train, inspect and compare PyTorch optimizers "
                     "and LR schedules; predict with a trained run.")
    parser.add_argument("--version", action="version", version=f"optiloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cls in COMMANDS.items():
        cmd = cls()
        p = sub.add_parser(name, help=cls.help, description=cls.help)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


class _ReaderMayLeave(io.TextIOBase):
    """stdout that outlives its reader: once ``optiloop train | head -3`` has read its lines, the
    rest of the output goes nowhere and training goes on to its end (only printing stops)."""

    def __init__(self, stream):
        self._stream, self.gone = stream, False

    def _guard(self, call, default):
        if self.gone:
            return default
        try:
            return call()
        except BrokenPipeError:
            self.gone = True
            try:  # the interpreter's own flush at exit must not fail either
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
            except (OSError, ValueError, io.UnsupportedOperation):
                pass
            return default

    def write(self, text: str) -> int:
        return self._guard(lambda: self._stream.write(text), len(text))

    def flush(self) -> None:
        self._guard(self._stream.flush, None)

    def isatty(self) -> bool:
        return not self.gone and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", "utf-8")


def _note_or(show: Any) -> Any:
    said: set[str] = set()  # eval applies the run twice (figures, then classes): each note once

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            what = str(message).split(": ", 1)[-1]  # (after "where: ", which the two passes name differently)
            if what not in said:
                said.add(what)
                print(f"note: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optiloop`` console script and ``python -m optiloop``."""
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    if not isinstance(stdout, _ReaderMayLeave):
        sys.stdout = _ReaderMayLeave(stdout)
    try:
        return _run(args)
    finally:
        if not getattr(sys.stdout, "gone", False):
            sys.stdout = stdout


def _run(args: argparse.Namespace) -> int:
    try:
        with warnings.catch_warnings():  # what applying a run did to the rows: one "note:" line each
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = _note_or(warnings.showwarning)
            return args._command.run(args)
    except DiskError as e:  # the machine's fault, not the input's: exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OptiloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `optiloop list | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
