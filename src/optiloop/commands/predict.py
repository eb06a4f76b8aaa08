"""``optiloop predict``: a run's predictions, one row per input, in the user's own label values."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import OptiloopError
from . import Command, command


@command("predict")
class PredictCommand(Command):
    help = "predict with a run: labels in your own values (and class probabilities), or values"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", metavar="RUN", help="a run folder (uses its best.pt), or a checkpoint")
        p.add_argument("--data", help="the rows: a .csv (feature columns matched by name, in any "
                       "order; extra columns, such as the label, are ignored) or an .npz with X "
                       "(features in training order); also a built-in data set or "
                       "package.module:function. Default: the run's validation split")
        p.add_argument("--out", metavar="FILE", help="write the predictions here (CSV; a new file); "
                       "default: print them")
        p.add_argument("--target", help="the label column of --data FILE.csv, ignored if present "
                       "(default: the run's)")
        p.add_argument("--batch-size", type=int, default=1024)

    def run(self, args: argparse.Namespace) -> int:
        from ..runs import load, prediction_table, write_csv_rows
        from .common import rows_to_use

        out = Path(args.out) if args.out is not None else None
        if out is not None and out.exists():
            raise OptiloopError(f"--out {out} already exists; choose a new file (nothing is overwritten)")
        if args.batch_size < 1:
            raise OptiloopError(f"--batch-size: must be >= 1 (got {args.batch_size})")
        run = load(args.run)
        X, _ = rows_to_use(run, args.data, target=args.target, hint="give the rows with --data FILE")
        where = f"--data {args.data}" if args.data else "the validation split"
        header, rows = prediction_table(run, X, batch_size=args.batch_size, where=where)
        if out is None:
            import csv

            w = csv.writer(sys.stdout)
            w.writerow(header)
            w.writerows(rows)
            return 0
        write_csv_rows(out, header, rows)
        print(f"{len(rows)} predictions ({', '.join(header[:4])}{' ...' if len(header) > 4 else ''}) -> {out}")
        return 0
