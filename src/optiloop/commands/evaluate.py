"""``optiloop eval``: a run's loss and metrics on its validation split or on other rows."""

from __future__ import annotations

import argparse
import json

from ..errors import OptiloopError
from . import Command, command


@command("eval")
class EvalCommand(Command):
    help = "evaluate a run (its best.pt) on its validation split, or on other data with labels"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", metavar="RUN", help="a run folder (uses its best.pt), or a "
                       "best.pt / last.pt")
        p.add_argument("--data", help="evaluate on all of this instead: a .csv (feature columns "
                       "matched by name, the label column required), an .npz with X and y, a "
                       "built-in data set or package.module:function; the run's preprocessing is "
                       "applied, so the training data need not be there")
        p.add_argument("--target", help="the label column of --data FILE.csv (default: the run's)")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--device", default="auto")
        p.add_argument("--json", action="store_true", help="print the results as one JSON object")

    def run(self, args: argparse.Namespace) -> int:
        from ..runs import load, read_rows

        run = load(args.checkpoint)
        if args.data is None:
            try:
                X, y = run.validation_rows()
            except OptiloopError as e:
                raise OptiloopError(f"cannot rebuild the validation split of {run.checkpoint} ({e}); "
                                    "evaluate on other rows with --data FILE") from None
            what = f"validation split of {run.config['data']['name']}"
        else:
            X, y = read_rows(args.data, run, target=args.target, need_labels=True, what="--data",
                             target_arg="--target")
            what = f"all of {args.data}"
        results = run.evaluate(X, y, batch_size=args.batch_size, device=args.device,
                               where=f"--data {args.data}" if args.data else what)
        units = run.task == "regression" and run.preprocessing.y_scaler is not None
        n = len(y)
        if args.json:
            extra = {"units": "the target's original units"} if units else {}
            print(json.dumps({"checkpoint": str(run.checkpoint), "epoch": run.epoch, "data": what,
                              "samples": n, **results, **extra}))
        else:
            print(f"{run.checkpoint} (epoch {run.epoch}) on {what} ({n} samples):")
            print("  " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
            if units:
                print("  (in the target's original units)")
        return 0
