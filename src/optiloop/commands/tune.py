"""``optiloop tune``: search optimizer, LR, schedule and batch size on Optuna; every trial a run folder.

The data and model come as in ``optiloop train`` (--config, --data, --model, --set ...); what is
searched comes from the config's ``[tune.space]`` table, else the default space. Run the same
command again and the search continues to --trials; run it on several machines with one --storage
and they share the study.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import Command, command
from .common import add_sweep_arguments, echo, sweep_tracker

# Shown in --help without importing the library (a test checks they equal the library's).
DEFAULT_TRIALS = 20
DEFAULT_EPOCHS = 10
PRUNERS = ("median", "halving", "hyperband", "none")
SAMPLERS = ("tpe", "random", "grid")
# flag -> (section, key, type, help): the run's data and model, as train's flags.
TASK_FLAGS: dict[str, tuple[str, str, type, str]] = {
    "--data": ("data", "name", str, "built-in data set, .csv / .npz file, or package.module:function (default digits)"),
    "--target": ("data", "target", str, "CSV column holding the target"),
    "--model": ("model", "name", str, "mlp, cnn, or package.module:function (default mlp)"),
    "--batch-size": ("train", "batch_size", int, "samples per batch; given, it is no longer searched"),
    "--device": ("train", "device", str, "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps"),
}


@command("tune")
class TuneCommand(Command):
    help = ("search optimizer, LR, weight decay, momentum / betas, schedule, warmup and batch size on Optuna "
            "(pruning bad trials); every trial is a run folder; resumable, and shareable between processes and "
            "machines through one storage")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="TOML config: the run's sections as in optiloop train, plus "
                       "an optional [tune] table (space, trials, monitor, pruner, sampler, timeout, storage, study, "
                       "jobs) whose [tune.space] says what to search, e.g. \"optimizer.lr\" = {low = 1e-4, high = "
                       "0.3, log = true}, \"scheduler.name\" = [\"cosine\", \"onecycle\"]")
        p.add_argument("--trials", type=int, metavar="N", help=f"trials in the study in all (default "
                       f"{DEFAULT_TRIALS}; the grid's size with --sampler grid); run again, the search continues to N")
        p.add_argument("--timeout", type=float, metavar="SECONDS", help="start no new trial after this long")
        p.add_argument("--monitor", metavar="KEY", help="the validation figure to optimize (default: the first "
                       "metric's, e.g. val_acc; else val_loss); maximized or minimized as its name says")
        p.add_argument("--epochs", type=int, help=f"epochs per trial (default {DEFAULT_EPOCHS}, or the config's "
                       "train.epochs); no early stopping, the pruner stops bad trials")
        p.add_argument("--seed", type=int, help="seed of every trial's run (same initial weights and data order) "
                       "and of the sampler (default: train.seed, 0)")
        p.add_argument("--pruner", choices=PRUNERS, help="stop bad trials early: median (default: below the median "
                       "of earlier trials at the same epoch), halving (successive halving), hyperband, or none")
        p.add_argument("--sampler", choices=SAMPLERS, help="tpe (default), random, or grid (every [tune.space] "
                       "entry a list of values)")
        p.add_argument("--jobs", type=int, metavar="N", help="run N processes on the study at once (default 1)")
        p.add_argument("--out", metavar="DIR", help="the tune folder: trials/ (one run folder each), trials.csv, "
                       "best.toml, report.md / report.html (default runs/<study>); a new or empty folder, or this "
                       "study's own (it continues)")
        add_sweep_arguments(p, runs="each new trial", default_study="tune-<data>-<model>-<hash of the search>, "
                            "the same for the same command")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="any config key, as in optiloop train; a key set here is no longer searched")
        for flag, (section, key, typ, text) in TASK_FLAGS.items():
            p.add_argument(flag, type=typ, dest=f"{section}__{key}", help=f"{text} ({section}.{key})")

    def run(self, args: argparse.Namespace) -> int:
        from ..config import merge, parse_set, read_toml
        from ..tuning import tune

        layer: dict[str, dict[str, Any]] = {}
        for item in args.set:
            section, key, value = parse_set(item)
            layer.setdefault(section, {})[key] = value
        for section, key, _, _ in TASK_FLAGS.values():
            value = getattr(args, f"{section}__{key}")
            if value is not None:
                layer.setdefault(section, {})[key] = value
        raw = read_toml(args.config) if args.config else {}
        sections = merge(raw, {k: v for k, v in layer.items()}, renames=False) if layer else raw
        fixed = [f"{s}.{k}" for s, values in layer.items() for k in values]
        tracker = sweep_tracker(args.mlflow, Path(args.out).name if args.out else None)
        result = tune(sections, trials=args.trials, timeout=args.timeout, monitor=args.monitor, epochs=args.epochs,
                      seed=args.seed, pruner=args.pruner, sampler=args.sampler, storage=args.storage,
                      study=args.study, jobs=args.jobs, out=args.out, fixed=fixed, progress=echo,
                      tracker=tracker)
        states: dict[str, int] = {}
        epochs = 0
        for t in result.study.get_trials(deepcopy=False):
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
            epochs += int(t.user_attrs.get("epochs") or 0)
        total = sum(states.values())
        print(f"\ndone: {len(result.new_trials)} new trials; the study has {total} "
              f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}), {epochs} epochs trained in all")
        if len(result.workers) > 1:
            print("  per process: " + ", ".join(f"{len(w.trials)}" for w in result.workers) + " trials")
        best = result.best
        if best is not None:
            print(f"best: trial {best['number']}, {result.monitor} {best['value']:.4f} at epoch {best['best_epoch']} "
                  f"({result.out}/{best['run']}/)")
            print(f"re-run it: optiloop train --config {result.out}/best.toml")
        else:
            print("best: no trial completed yet (all pruned or failed)")
        print(f"files in {result.out}/: {', '.join(result.files)}, trials/ (one run folder per trial)")
        print(f"open the study: {result.dashboard}")
        return 0
