"""``optiloop eval``: a run's loss and metrics on its validation split or on other rows; for a
classification run also each class's precision / recall / F1 and the confusion matrix, and with
``--out DIR`` those as files (confusion_matrix.png / .csv, per_class.csv, eval.json)."""

from __future__ import annotations

import argparse
import json

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
        p.add_argument("--out", metavar="DIR", help="also write the results into this new (or empty) folder: "
                       "eval.json and, for classification, confusion_matrix.png / .csv and per_class.csv")

    def run(self, args: argparse.Namespace) -> int:
        from ..files import check_writable, write_text
        from ..runs import RunFolder, ensure_empty, load
        from .common import rows_to_use

        if args.out is not None:  # checked before any work, as train's --out
            check_writable(args.out, "--out")
            ensure_empty(args.out, "--out")
        run = load(args.checkpoint)
        X, y = rows_to_use(run, args.data, target=args.target, need_labels=True,
                           hint="evaluate on other rows with --data FILE")
        what = f"validation split of {run.config['data']['name']}" if args.data is None else f"all of {args.data}"
        results = run.evaluate(X, y, batch_size=args.batch_size, device=args.device,
                               where=f"--data {args.data}" if args.data else what)
        units = run.task == "regression" and run.preprocessing.y_scaler is not None
        n = len(y)
        report = None
        if run.task == "classification":
            from ..classification import run_class_report

            report = run_class_report(run, X, y, where=f"--data {args.data}" if args.data else what)
        extra = {"units": "the target's original units"} if units else {}
        record = {"checkpoint": str(run.checkpoint), "epoch": run.epoch, "data": what, "samples": n, **results,
                  **extra, **({"classes": report.to_dict()} if report is not None else {})}
        if args.json:
            print(json.dumps(record, default=str))
        else:
            print(f"{run.checkpoint} (epoch {run.epoch}) on {what} ({n} samples):")
            print("  " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
            if units:
                print("  (in the target's original units)")
            if report is not None:
                print()
                print(report.format())
        if args.out is not None:
            folder = RunFolder.create(args.out, unique=False)
            write_text(folder.path / "eval.json", json.dumps(record, indent=2, default=str) + "\n")
            files = ["eval.json"]
            if report is not None:
                files += folder.write_class_report(report, title=f"{run.checkpoint.parent.name} (epoch {run.epoch}) on "
                                                   f"{what}: accuracy {report.accuracy:.4f}")
            if not args.json:
                print(f"\nfiles in {folder.path}/: {', '.join(sorted(files))}")
        return 0
