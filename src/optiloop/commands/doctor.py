"""``optiloop doctor SCRIPT [ARGS...]``: run a training script unchanged and diagnose its
optimizer / scheduler coupling. The arguments and the work live in ``optiloop.doctor.command``
(which imports no torch: the script runs in a child process that does)."""

from __future__ import annotations

import argparse

from . import Command, command


@command("doctor")
class DoctorCommand(Command):
    help = "run your own training script unchanged and diagnose how it steps its optimizer and LR scheduler"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from ..doctor.command import add_arguments

        add_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        from ..doctor.command import run

        return run(args)
