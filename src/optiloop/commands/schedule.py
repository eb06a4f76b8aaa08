"""``optiloop schedule``: the LR of one or more schedulers, printed per epoch and plotted.

A schedule stepped per optimizer step (onecycle, any warmup, ``interval=step``) is previewed per
step, with ``PER_STEP_DEFAULT`` steps per epoch unless ``--steps-per-epoch`` says how many the
run has: its curve is drawn as the line it is, not as one value per epoch. The LR axis is
linear (a linear warmup looks linear); ``--log`` asks for a log axis.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..errors import OptiloopError, choices
from ..formatting import fmt
from . import Command, command

PER_STEP_DEFAULT = 100  # steps per epoch a per-step schedule is previewed with when none is given
MAX_STEPS = 1_000_000


def simulated_metric(epochs: int) -> tuple[list[float], int]:
    """A validation loss that improves for the first third of the run, then stalls."""
    stall = max(1, epochs // 3)
    return [1.0 * 0.8 ** min(e, stall) for e in range(epochs)], stall


@command("schedule")
class ScheduleCommand(Command):
    help = "print (and plot) the LR per epoch of one or more schedulers, no model needed"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("names", nargs="+", metavar="NAME", help="scheduler names (see: optiloop "
                       "list); several overlay on one plot")
        p.add_argument("--lr", type=float, default=0.1, help="base learning rate (default 0.1)")
        p.add_argument("--epochs", type=int, default=30, help="epochs (default 30)")
        p.add_argument("--steps-per-epoch", type=int, default=None,
                       help="optimizer steps per epoch (default: 1, or "
                       f"{PER_STEP_DEFAULT} when a schedule is stepped per step: onecycle, warmup, "
                       "interval=step, so its per-step curve shows)")
        p.add_argument("--set", action="append", default=[], metavar="[NAME.]KEY=VALUE",
                       help="a scheduler argument (TOML value) for all names, or NAME.KEY for one;"
                       " e.g. --set gamma=0.5 --set step.step_size=5 --set warmup_epochs=3")
        p.add_argument("--plot", metavar="FILE", help="write the plot (PNG) here")
        p.add_argument("--log", action="store_true", help="log-scale LR axis in the plot (default linear)")

    def run(self, args: argparse.Namespace) -> int:
        from ..config import parse_value
        from ..schedules import SCHEDULERS, lookup, preview_schedule, shown_arguments

        names = [n.lower() for n in args.names]
        for n in names:
            if n not in SCHEDULERS:
                lookup(n)  # one line, with a "did you mean"
        if len(set(names)) != len(names):
            raise OptiloopError("each scheduler name once, please")
        if not (args.lr > 0 and math.isfinite(args.lr)):
            raise OptiloopError(f"--lr: must be > 0 (got {args.lr})")
        if args.epochs < 1 or (args.steps_per_epoch is not None and args.steps_per_epoch < 1):
            raise OptiloopError("--epochs and --steps-per-epoch: must be >= 1")
        if args.plot:
            from ..files import check_writable

            check_writable(args.plot, "--plot", file=True)
        common, scoped = self._sets(args.set, names, parse_value)

        stepped = [n for n in names if _per_step({**common, **scoped.get(n, {})}, SCHEDULERS[n].interval)]
        spe = args.steps_per_epoch or (PER_STEP_DEFAULT if stepped else 1)
        per_step = spe > 1
        if args.epochs * spe > MAX_STEPS:  # a typo must not run for ever
            raise OptiloopError(f"--epochs x --steps-per-epoch: at most {MAX_STEPS:,} steps to preview "
                                f"(got {args.epochs * spe:,})")
        curves: dict[str, list[float]] = {}
        table: dict[str, list[float]] = {}
        note = None
        for n in names:
            given = {**common, **scoped.get(n, {})}
            shown = shown_arguments(n, args.lr, args.epochs, spe, given.get("interval"),
                                    warmup_epochs=given.get("warmup_epochs"),
                                    warmup_steps=given.get("warmup_steps"), frequency=given.get("frequency", 1))
            kwargs = {**shown, **given}
            metrics = None
            if SCHEDULERS[n].interval == "metric":
                metrics, stall = simulated_metric(args.epochs)
                note = (f"plateau: shown against a simulated val_loss that improves until epoch "
                        f"{stall}, then stalls")
            try:
                lrs = preview_schedule(n, lr=args.lr, epochs=args.epochs, steps_per_epoch=spe,
                                       metrics=metrics, per_step=per_step, **kwargs)
            except (TypeError, ValueError) as e:  # torch's own checks: bad values for its args
                if isinstance(e, OptiloopError):
                    raise
                raise OptiloopError(f"scheduler {n!r}: {str(e).splitlines()[0]}") from None
            label = n + (f" ({', '.join(f'{k}={fmt(v)}' for k, v in kwargs.items())})"
                         if kwargs else "")
            curves[label] = lrs
            table[n] = lrs[::spe] if per_step else lrs

        for label in curves:
            print(label)
        if note:
            print(note)
        if stepped and args.steps_per_epoch is None:
            print(f"{', '.join(stepped)}: the LR moves every optimizer step (a per-step schedule or warmup); "
                  f"previewed with {spe} steps per epoch (--steps-per-epoch to match your run); the table "
                  "shows each epoch's first step")
        print()
        width = max(10, *(len(n) for n in names))
        print("epoch  " + "  ".join(f"{n:>{width}}" for n in names))
        for e in range(args.epochs):
            print(f"{e + 1:>5}  " + "  ".join(f"{table[n][e]:>{width}.4g}" for n in names))
        if args.plot:
            from ..plots import plot_schedules

            title = f"LR schedule{'s' if len(names) > 1 else ''}: base lr {args.lr:g}, " \
                    f"{args.epochs} epochs"
            plot_schedules(curves, args.plot, steps_per_epoch=spe, title=title, note=note, log=args.log)
            print(f"plot: {args.plot}")
        return 0

    @staticmethod
    def _sets(items, names, parse_value) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        from ..schedules import SCHEDULERS

        common: dict[str, Any] = {}
        scoped: dict[str, dict[str, Any]] = {}
        for item in items:
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise OptiloopError(f"--set {item!r}: use KEY=VALUE or NAME.KEY=VALUE")
            prefix, dot, rest = key.partition(".")
            if dot:
                if prefix not in SCHEDULERS:
                    raise OptiloopError(f"--set {item!r}: {prefix!r} is not a scheduler; choose one"
                                        f" of: {choices(SCHEDULERS)}")
                if prefix not in names:
                    raise OptiloopError(f"--set {item!r}: {prefix!r} is not among the schedulers "
                                        f"shown ({', '.join(names)})")
                scoped.setdefault(prefix, {})[rest] = parse_value(value.strip())
            else:
                common[key] = parse_value(value.strip())
        return common, scoped


def _per_step(given: dict[str, Any], default_interval: str) -> bool:
    """Whether a schedule with these arguments moves the LR within an epoch."""
    return given.get("interval", default_interval) == "step" or bool(given.get("warmup_epochs")
                                                                     or given.get("warmup_steps"))
