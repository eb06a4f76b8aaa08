"""``optiloop compare``: every optimizer x LR x scheduler (x seed) from the same start, each
optimizer judged at its best LR, one report. The runs are the trials of an Optuna study on its grid
sampler (with optiloop[tune]): the same command continues a stopped comparison, ``--jobs N`` runs N
at a time, and processes on several machines naming one ``--storage`` share the grid."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import OptiloopError
from ..grid import DEFAULT_EPOCHS, DEFAULT_OPTIMIZERS, DEFAULT_SCHEDULERS  # torch-free: --help stays instant
from . import Command, command
from .common import add_sweep_arguments, add_task_arguments, echo, sweep_tracker, task_flags


@command("compare")
class CompareCommand(Command):
    help = ("train every optimizer x LR x scheduler (x seed) from the same initial weights, pick each "
            "optimizer's best LR on the validation figure and write a comparison report (tables, curves, "
            "report.md / report.html)")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from ..optim import OPTIMIZERS

        lrs = ", ".join(f"{n} {o.defaults['lr']:g}" for n, o in OPTIMIZERS.items())
        optimizers, schedulers = ",".join(DEFAULT_OPTIMIZERS), ",".join(DEFAULT_SCHEDULERS)
        p.add_argument("--optimizers", default=optimizers,
                       help=f"comma-separated optimizer names (default {optimizers})")
        p.add_argument("--schedulers", default=schedulers,
                       help=f"comma-separated scheduler names (default {schedulers})")
        p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                       help=f"epochs per run, no early stopping (default {DEFAULT_EPOCHS})")
        p.add_argument("--seeds", type=int, default=1, help="seeds per combination; the table "
                       "shows mean ± std (default 1)")
        p.add_argument("--lr", action="append", metavar="LR or NAME=LR[,LR...]",
                       help="the LRs to try: one or more for all (0.01 or 0.01,0.1), or per optimizer "
                       "(sgd=0.03,0.1,0.3,adam=1e-3; repeatable); default per optimizer (optiloop list): "
                       f"{lrs}; sgd also momentum 0.9")
        p.add_argument("--lr-grid", type=int, metavar="N", help="try each optimizer at N LRs half a decade "
                       "apart around its LR (given or default), e.g. 3: sgd 0.0316, 0.1, 0.316")
        p.add_argument("--monitor", metavar="KEY", help="the validation figure that picks each run's best "
                       "epoch and each optimizer's best LR (default: the first metric's, e.g. val_acc; "
                       "else val_loss)")
        p.add_argument("--target", metavar="KEY=VALUE", help="also report epochs to reach it, e.g. "
                       "val_acc=0.95")
        p.add_argument("--out", metavar="DIR", help="report folder (default runs/compare-<data>-<hash of the "
                       "comparison>, the same for the same command); new or empty, or this comparison's own: then "
                       "it continues (only the runs not done yet are trained)")
        p.add_argument("--checkpoints", action="store_true",
                       help="also write best.pt / last.pt in each run folder (off: saves time)")
        p.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="run N runs at a time in separate processes; results equal --jobs 1's, only "
                       "the timings differ (default 1; needs: pip install 'optiloop[tune]')")
        add_sweep_arguments(p, runs="each run", default_study="the --out folder's name")
        add_task_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        from ..comparison import compare
        from ..config import resolve
        from ..grid import describe_target, parse_lrs, parse_names, parse_target
        from ..optim import OPTIMIZERS
        from ..report import format_table
        from ..results import pick_best, summarize
        from ..runs import free_name, short
        from ..schedules import SCHEDULERS
        from ..tuning.study import STUDY_FILE, digest

        # Cheap checks first (one line each), then the data; compare() checks the rest before
        # it creates the folder.
        optimizers = parse_names(args.optimizers, "optimizer", OPTIMIZERS)
        schedulers = parse_names(args.schedulers, "scheduler", SCHEDULERS)
        if args.lr_grid is not None and args.lr_grid < 1:
            raise OptiloopError(f"--lr-grid: must be >= 1 (got {args.lr_grid})")
        lrs = parse_lrs(args.lr, optimizers, what="--lr", grid=args.lr_grid)
        goal = parse_target(args.target, what="--target")
        if args.epochs < 1 or args.seeds < 1 or args.jobs < 1:
            raise OptiloopError("--epochs, --seeds and --jobs: must be >= 1")
        cfg = resolve(args.config, args.set, task_flags(args))
        if args.out is not None:
            out = Path(args.out)
        else:  # named by what it compares: the same command finds its folder and continues there
            grid = {"data": cfg["data"], "model": cfg["model"], "batch_size": cfg["train"]["batch_size"],
                    "optimizers": optimizers, "schedulers": schedulers, "lrs": lrs, "epochs": args.epochs,
                    "seeds": args.seeds, "monitor": args.monitor, "target": args.target,
                    "checkpoints": args.checkpoints}
            out = Path("runs") / f"compare-{short(cfg['data']['name'])}-{digest(grid)}"
            if out.exists() and not (out / STUDY_FILE).is_file():  # written without Optuna: nothing to continue
                out = free_name(out)
        tracker = sweep_tracker(args.mlflow if args.mlflow is not None else cfg["train"].get("mlflow"), out.name)
        runs = sum(len(v) for v in lrs.values()) * len(schedulers) * args.seeds
        t0 = time.perf_counter()
        # compare() checks the rest (out folder, target key, device, each optimizer's LR) before
        # its first progress line, which is the header printed here.
        try:
            rows = compare(config=cfg, optimizers=optimizers, schedulers=schedulers,
                           epochs=args.epochs, seeds=args.seeds, lrs=lrs, monitor=args.monitor,
                           target=args.target, out=out, checkpoints=args.checkpoints,
                           device=cfg["train"]["device"], jobs=args.jobs, tracker=tracker, storage=args.storage,
                           study=args.study, progress=echo)
        except OptiloopError as e:  # the library names its argument; the user typed the flag
            message = str(e)
            flag = message.startswith(("target ", "monitor ", "out "))
            raise OptiloopError("--" + message if flag else message) from None
        print(f"\ndone: {runs} runs in {time.perf_counter() - t0:.1f} s"
              + (f"; mean ± std over {args.seeds} seeds" if args.seeds > 1 else ""))
        summary = summarize(rows)
        best = pick_best(summary)
        target, monitor = describe_target(goal), rows[0]["monitor"]
        if any(len(v) > 1 for v in lrs.values()):
            print(f"\nevery LR tried (* = each optimizer's best mean {monitor} @best):")
            print(format_table(summary, target=target, marked={(r["optimizer"], r["scheduler"], r["lr"])
                                                               for r in best}))
            print("\neach optimizer at its best LR ((edge): the best is the smallest or largest tried):")
            print(format_table(best, target=target))
        else:
            print(format_table(summary, target=target))
        files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
        print(f"\nfiles in {out}/: {', '.join(files)}, runs/ ({runs} run folders)")
        if tracker is not None and tracker.failed:
            print("MLflow: logging stopped at an error (the warning above); the report folder is complete")
        elif tracker is not None and tracker.parent_run_id is not None:
            print(f"MLflow: parent run {tracker.parent_run_id} with {len(tracker.child_run_ids)} child runs "
                  f"in {tracker.uri}")
        return 0
