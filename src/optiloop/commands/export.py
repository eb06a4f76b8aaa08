"""``optiloop export``: a run's model weights as one plain state_dict file, no optiloop needed to
load it (a sharded FSDP checkpoint is consolidated on this one process)."""

from __future__ import annotations

import argparse

from . import Command, command

DTYPES = ("float32", "bfloat16", "float16")


@command("export")
class ExportCommand(Command):
    help = "write a run's model weights as one plain state_dict file (sharded checkpoints consolidated)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", metavar="RUN", help="a run folder (its best checkpoint, else its last), a "
                       "best.pt / last.pt, or a sharded checkpoint folder (best/, last/)")
        p.add_argument("--out", required=True, metavar="FILE", help="the file to write, e.g. model.pt")
        p.add_argument("--which", choices=("best", "last"), default="best",
                       help="in a run folder: the best epoch's weights (default) or the latest")
        p.add_argument("--dtype", choices=DTYPES, help="cast floating-point tensors (default: as saved)")

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from ..sharded import export

        dtype = getattr(torch, args.dtype) if args.dtype else None
        src = export(args.run, args.out, which=args.which, dtype=dtype)
        weights = torch.load(args.out, map_location="cpu", weights_only=True)
        numel = sum(v.numel() for v in weights.values())
        size = sum(v.numel() * v.element_size() for v in weights.values())
        print(f"{args.out}: {len(weights)} tensors, {numel:,} values ({size / 2**20:.2f} MiB) from {src}")
        print(f"load it with: model.load_state_dict(torch.load({str(args.out)!r}, weights_only=True))")
        return 0
