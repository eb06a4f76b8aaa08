"""``optiloop export``: a run's model with its preprocessing, as a pt, safetensors or ONNX file that
gives ``optiloop predict``'s numbers without optiloop (a sharded FSDP checkpoint is consolidated on
this one process)."""

from __future__ import annotations

import argparse

from . import Command, command

DTYPES = ("float32", "bfloat16", "float16")
FORMATS = ("pt", "safetensors", "onnx")


@command("export")
class ExportCommand(Command):
    help = "write a run's model with its preprocessing as a pt, safetensors or ONNX file (predict's numbers)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", metavar="RUN", help="a run folder (its best checkpoint, else its last), a "
                       "best.pt / last.pt, or a sharded checkpoint folder (best/, last/)")
        p.add_argument("--out", required=True, metavar="FILE", help="the file to write, e.g. model.onnx")
        p.add_argument("--format", choices=FORMATS, help="pt (a state_dict), safetensors (the same tensors with "
                       "the feature names, labels and architecture) or onnx (the whole computation, for ONNX "
                       "Runtime); default: from --out's suffix")
        p.add_argument("--which", choices=("best", "last"), default="best",
                       help="in a run folder: the best epoch's weights (default) or the latest")
        p.add_argument("--dtype", choices=DTYPES, help="cast the model's floating-point weights, pt and "
                       "safetensors (default: as saved)")

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from ..exporting import write

        dtype = getattr(torch, args.dtype) if args.dtype else None
        report = write(args.run, args.out, format=args.format, which=args.which, dtype=dtype)
        size = report.out.stat().st_size
        print(f"{report.out}: {report.format}, {report.tensors} tensors ({size / 2**20:.2f} MiB) from {report.source}")
        if report.note:
            print(f"note: {report.note}")
        print(f"takes {report.takes}; gives {report.gives}")
        return 0
