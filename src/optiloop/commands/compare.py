"""``optiloop compare``: every optimizer x scheduler (x seed) from the same start, one report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import OptiloopError
from . import Command, command
from .common import add_task_arguments, task_flags

# Shown in --help without importing the library (a test checks they equal comparison's).
DEFAULT_OPTIMIZERS = "sgd,adam,adamw,rmsprop,adagrad"
DEFAULT_SCHEDULERS = "cosine"
DEFAULT_EPOCHS = 10


@command("compare")
class CompareCommand(Command):
    help = ("train every optimizer x scheduler (x seed) from the same initial weights and write a "
            "comparison report (table, curves, report.md / report.html)")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from ..optim import OPTIMIZERS

        lrs = ", ".join(f"{n} {o.defaults['lr']:g}" for n, o in OPTIMIZERS.items())
        p.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS,
                       help=f"comma-separated optimizer names (default {DEFAULT_OPTIMIZERS})")
        p.add_argument("--schedulers", default=DEFAULT_SCHEDULERS,
                       help=f"comma-separated scheduler names (default {DEFAULT_SCHEDULERS})")
        p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                       help=f"epochs per run, no early stopping (default {DEFAULT_EPOCHS})")
        p.add_argument("--seeds", type=int, default=1, help="seeds per combination; the table "
                       "shows mean ± std (default 1)")
        p.add_argument("--lr", metavar="LR or NAME=LR,...", help="one LR for all, or per optimizer "
                       f"(sgd=0.1,adam=1e-3); default per optimizer (optiloop list): {lrs}; sgd "
                       "also momentum 0.9")
        p.add_argument("--target", metavar="KEY=VALUE", help="also report epochs to reach it, e.g. "
                       "val_acc=0.95")
        p.add_argument("--out", metavar="DIR", help="report folder (default runs/compare-<data>-"
                       "<time>); must not exist or be empty")
        p.add_argument("--checkpoints", action="store_true",
                       help="also write best.pt / last.pt in each run folder (off: saves time)")
        add_task_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        from ..comparison import compare, parse_lrs, parse_names, parse_target, summarize
        from ..config import resolve
        from ..optim import OPTIMIZERS
        from ..report import format_table
        from ..runs import ensure_empty, free_name, short, stamp
        from ..schedules import SCHEDULERS

        # Cheap checks first (one line each), then the data; compare() checks the rest before
        # it creates the folder.
        optimizers = parse_names(args.optimizers, "optimizer", OPTIMIZERS)
        schedulers = parse_names(args.schedulers, "scheduler", SCHEDULERS)
        lrs = parse_lrs(args.lr, optimizers, what="--lr")
        parse_target(args.target, what="--target")
        if args.epochs < 1 or args.seeds < 1:
            raise OptiloopError("--epochs and --seeds: must be >= 1")
        cfg = resolve(args.config, args.set, task_flags(args))
        if args.out is not None:
            out = ensure_empty(args.out, "--out")
        else:
            out = free_name(Path("runs") / f"compare-{short(cfg['data']['name'])}-{stamp()}")
        runs = len(optimizers) * len(schedulers) * args.seeds
        t0 = time.perf_counter()
        # compare() checks the rest (out folder, target key, device, each optimizer's LR) before
        # its first progress line, which is the header printed here.
        try:
            rows = compare(config=cfg, optimizers=optimizers, schedulers=schedulers,
                           epochs=args.epochs, seeds=args.seeds, lrs=lrs, target=args.target, out=out,
                           checkpoints=args.checkpoints, device=cfg["train"]["device"],
                           progress=lambda line: print(line, flush=True))
        except OptiloopError as e:  # the library names its argument; the user typed the flag
            message = str(e)
            raise OptiloopError("--" + message if message.startswith("target ") else message) from None
        print(f"\ndone: {runs} runs in {time.perf_counter() - t0:.1f} s"
              + (f"; mean ± std over {args.seeds} seeds" if args.seeds > 1 else ""))
        print(format_table(summarize(rows)))
        files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
        print(f"\nfiles in {out}/: {', '.join(files)}, runs/ ({runs} run folders)")
        return 0
