"""The ``optiloop`` command line: one small class per subcommand, registered by name.

    optiloop train [--config run.toml] [--optimizer sgd --lr 0.05 ...] [--set section.key=value]
    optiloop schedule cosine onecycle --lr 0.1 --epochs 30 --plot lr.png
    optiloop list
    optiloop eval runs/NAME/best.pt [--data wine]

Every failure the user can fix ends as one line ``error: ...`` on stderr and exit code 2, with
nothing written: ``train`` loads the data and builds the model, optimizer and scheduler before it
creates the run folder. Nothing imports this module; it sits on top of the library.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .callbacks import Callback
from .distributed import launched_by_torchrun
from .errors import OptiloopError, choices
from .files import write_text
from .schedules import default_arguments

# --- the registry ------------------------------------------------------------------------------
COMMANDS: dict[str, type[Command]] = {}


def command(name: str) -> Callable[[type[Command]], type[Command]]:
    """Register a subcommand class under ``name`` (``compare`` and ``lr-find`` plug in here)."""

    def register(cls: type[Command]) -> type[Command]:
        cls.name = name
        COMMANDS[name] = cls
        return cls

    return register


class Command:
    """A subcommand: its arguments and what it does. ``run`` returns the exit code."""

    name = ""
    help = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    from . import __version__

    parser = _Parser(prog="optiloop", description="Train, inspect and compare PyTorch optimizers "
                     "and LR schedules.")
    parser.add_argument("--version", action="version", version=f"optiloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cls in COMMANDS.items():
        cmd = cls()
        p = sub.add_parser(name, help=cls.help, description=cls.help)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optiloop`` console script and ``python -m optiloop``."""
    args = build_parser().parse_args(argv)
    try:
        return args._command.run(args)
    except OptiloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `optiloop list | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


# --- train -------------------------------------------------------------------------------------
# flag -> (section, key): named flags are shorthands for config keys.
TRAIN_FLAGS: dict[str, tuple[str, str, type, str]] = {
    "--data": ("data", "name", str,
               "built-in data set, .csv / .npz file, or package.module:function"),
    "--target": ("data", "target", str, "CSV column holding the target"),
    "--model": ("model", "name", str, "mlp, cnn, or package.module:function"),
    "--optimizer": ("optimizer", "name", str, "optimizer name (see: optiloop list)"),
    "--lr": ("optimizer", "lr", float, "learning rate"),
    "--weight-decay": ("optimizer", "weight_decay", float, "weight decay"),
    "--momentum": ("optimizer", "momentum", float, "momentum (sgd, rmsprop)"),
    "--scheduler": ("scheduler", "name", str, "LR scheduler name (see: optiloop list)"),
    "--step-size": ("scheduler", "step_size", int, "epochs between LR drops (step scheduler)"),
    "--epochs": ("train", "epochs", int, "maximum number of epochs"),
    "--batch-size": ("train", "batch_size", int, "samples per batch"),
    "--early-stopping": ("train", "early_stopping", int,
                         "patience in epochs on train.monitor; 0 turns early stopping off"),
    "--seed": ("train", "seed", int, "seed for initialisation and data order"),
    "--checkpoint-every": ("train", "checkpoint_every", int,
                           "also write last.pt every N optimizer steps (resumable mid-epoch)"),
    "--checkpoint-seconds": ("train", "checkpoint_seconds", float,
                             "write last.pt at an epoch's end once this many seconds passed since "
                             "the last save (default 60; 0 = every epoch)"),
    "--device": ("train", "device", str, "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps"),
}


class RunInfo(Callback):
    """Notes what only the loop knows: device, world size, why it stopped."""

    order = 200  # after Checkpoint; it only reads

    def __init__(self):
        self.device, self.world_size, self.is_main = "cpu", 1, True
        self.stop_reason: str | None = None

    def on_fit_start(self, state, logs):
        self.device, self.world_size = str(state.device), state.world.world_size
        self.is_main = state.world.is_main

    def on_fit_end(self, state, logs):
        self.stop_reason = logs.get("stop_reason")


def _short(spec: str) -> str:
    """A readable piece of a run name: 'digits', 'mydata' for mydata.csv, 'fn' for pkg.mod:fn."""
    s = spec.rpartition(":")[2] if ":" in spec and not Path(spec).exists() else Path(spec).stem
    return "".join(c if c.isalnum() or c in "_" else "-" for c in s)[:24] or "data"


class Plan:
    """Everything ``train`` needs, built and checked before anything is written."""

    def __init__(self, cfg: dict[str, Any]):
        import torch

        from .callbacks import Monitor
        from .config import extras
        from .datasets import is_user_function, load_dataset, split
        from .loop import logged_keys, resolve_device, seed_everything
        from .metrics import get_loss, resolve_metric
        from .models import build_model
        from .optim import build_optimizer
        from .schedules import build_scheduler

        d, t = cfg["data"], cfg["train"]
        if not is_user_function(d["name"]) and Path(d["name"]).suffix.lower() in (".csv", ".npz"):
            d["name"] = str(Path(d["name"]).resolve())  # re-runnable from any folder
        self.dataset = load_dataset(d["name"], target=d.get("target"), task=d["task"])
        d["task"] = self.dataset.task
        self.split = split(self.dataset, val_fraction=d["val_fraction"], seed=d["seed"],
                           standardize=d["standardize"])
        regression = self.dataset.task == "regression"
        t.setdefault("loss", "mse" if regression else "cross_entropy")
        t.setdefault("metrics", ["mae"] if regression else ["accuracy"])
        _with_key("train.loss", get_loss, t["loss"])
        for m in t["metrics"]:
            _with_key("train.metrics", resolve_metric, m)
        log_keys = logged_keys(t["metrics"])
        _with_key("train.monitor", lambda m: Monitor(m).check_available(log_keys), t["monitor"])
        self.device = _with_key("train.device", resolve_device, t["device"])

        seed_everything(t["seed"])  # the model's initial weights follow the run's seed
        m = cfg["model"]
        self.model = build_model(m["name"], self.dataset.X.shape[1], self.dataset.out_features,
                                 **extras(m))
        # Dry build of optimizer and scheduler on the real model, exactly as fit() will: unknown
        # keys and impossible values fail here, before the run folder exists.
        o, s = cfg["optimizer"], cfg["scheduler"]
        # step / multistep / exponential have no torch default for their one required argument:
        # record the one build_scheduler derives from the run, so config.toml says what ran.
        if "interval" not in s:
            for key, value in default_arguments(s["name"], t["epochs"]).items():
                s.setdefault(key, value)
        self.optimizer = {"name": o["name"], **extras(o, "lr", "weight_decay")}
        self.scheduler = {"name": s["name"], **extras(s)}
        opt = build_optimizer(self.optimizer, self.model, lr=o.get("lr"),
                              weight_decay=o.get("weight_decay"))
        batches = math.ceil(len(self.split.X_train) / t["batch_size"])
        build_scheduler(self.scheduler, opt, epochs=t["epochs"],
                        steps_per_epoch=math.ceil(batches / t["grad_accum"]))
        del opt
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.torch_version = torch.__version__


def _with_key(key: str, fn: Callable[[Any], Any], value: Any) -> Any:
    """Call a library check and put the config key in front of its message."""
    try:
        return fn(value)
    except OptiloopError as e:
        raise OptiloopError(f"{key}: {e}") from None


def _torchrun_rank() -> int | None:
    """This process's rank when torchrun launched several; None for a plain process."""
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"])
    return None


def _restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def _run_dir(out: str | None, cfg: dict[str, Any], resumable: bool = True) -> tuple[Path, bool]:
    """The run folder and whether it must be created with a unique suffix."""
    multi = _torchrun_rank() is not None
    if out is not None:
        path = Path(out)
        # Under torchrun every rank names the same folder, and a restarted attempt finds its own.
        if not multi and path.exists() and (not path.is_dir() or any(path.iterdir())):
            resume = f", or continue it with --resume {path}" if resumable else ""
            raise OptiloopError(f"--out {path} already exists and is not an empty folder; "
                                f"choose a new folder (runs are never overwritten){resume}")
        return path, False
    # Every rank must derive the same name: torchrun's run id is shared, a clock is not.
    stamp = os.environ["TORCHELASTIC_RUN_ID"][:12] if multi else datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{_short(cfg['data']['name'])}-{_short(cfg['model']['name'])}-" \
           f"{cfg['optimizer']['name']}-{stamp}"
    return Path("runs") / name, not multi


def _make_dir(path: Path, unique: bool) -> Path:
    if not unique:
        path.mkdir(parents=True, exist_ok=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        candidate = path if i == 1 else path.with_name(f"{path.name}-{i}")
        try:
            candidate.mkdir()  # atomic: two runs started in the same second get different folders
            return candidate
        except FileExistsError:
            continue
    raise OptiloopError(f"cannot find a free run folder name next to {path}")


@command("train")
class TrainCommand(Command):
    help = "train a model (default: an MLP on scikit-learn's handwritten digits, seconds on a CPU)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="TOML config with sections data, model, "
                       "optimizer, scheduler, train (a run's config.toml re-runs it)")
        p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<data>-<model>-"
                       "<optimizer>-<time>); must not exist or be empty")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped (its "
                       "config.toml and newest valid checkpoint); other flags may change settings only "
                       "with --force-resume")
        p.add_argument("--force-resume", action="store_true",
                       help="resume even though batch size, accumulation or data changed")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="any config key; VALUE is TOML (0.1, true, [128, 64], \"text\"); "
                       "repeatable, e.g. --set model.hidden=[256,128] --set scheduler.eta_min=1e-5")
        for flag, (section, key, typ, text) in TRAIN_FLAGS.items():
            p.add_argument(flag, type=typ, dest=f"{section}__{key}",
                           help=f"{text} ({section}.{key})")

    def run(self, args: argparse.Namespace) -> int:
        import tomli_w

        from . import __version__
        from .checkpoint import Checkpoint
        from .config import resolve
        from .loop import fit
        from .plots import plot_history

        flags: dict[str, dict[str, Any]] = {}
        for section, key, _, _ in TRAIN_FLAGS.values():
            flags.setdefault(section, {})[key] = getattr(args, f"{section}__{key}")
        resume = self._resume_dir(args)
        if resume is not None:  # the run's own config, with any flags on top (checked by fit)
            cfg = resolve(args.config or resume / "config.toml", args.set, flags)
            path, unique = resume, False
        else:
            cfg = resolve(args.config, args.set, flags)
            path, unique = _run_dir(args.out, cfg)
            if _restarted_by_torchrun() and (path / "last.pt").exists():
                resume = path  # torchrun --max-restarts restarted us: continue, never start over
        plan = Plan(cfg)  # everything checked; from here on files are written
        t = cfg["train"]
        run_dir = _make_dir(path, unique)
        if _torchrun_rank() in (None, 0):
            write_text(run_dir / "config.toml",
                        f"# optiloop {__version__}: the resolved config of this run. "
                        "Re-run it with: optiloop train --config config.toml\n\n" + tomli_w.dumps(cfg))

        from .callbacks import EarlyStopping

        ckpt = Checkpoint(run_dir, monitor=t["monitor"], every_n_steps=t.get("checkpoint_every"),
                          every_seconds=t["checkpoint_seconds"])
        info = RunInfo()
        callbacks: list[Any] = [ckpt, info]
        if t["early_stopping"]:
            callbacks.insert(0, EarlyStopping(monitor=t["monitor"], patience=t["early_stopping"]))
        s = plan.split
        if _torchrun_rank() in (None, 0):
            print(f"optiloop train: {plan.dataset.name} ({len(s.X_train)} train / {len(s.X_val)} val, "
                  f"{plan.dataset.task}), {cfg['model']['name']} ({plan.parameters:,} parameters), "
                  f"{cfg['optimizer']['name']} + {cfg['scheduler']['name']}, up to {t['epochs']} "
                  f"epochs on {plan.device} -> {run_dir}/", flush=True)
        t0 = time.perf_counter()
        try:
            history = fit(
                plan.model, (s.X_train, s.y_train), val_data=(s.X_val, s.y_val), loss=t["loss"],
                optimizer=plan.optimizer, lr=cfg["optimizer"].get("lr"),
                weight_decay=cfg["optimizer"].get("weight_decay"), scheduler=plan.scheduler,
                epochs=t["epochs"], batch_size=t["batch_size"], metrics=t["metrics"],
                callbacks=callbacks, device=plan.device, seed=t["seed"],
                grad_accum=t["grad_accum"], clip_grad_norm=t.get("clip_grad_norm"),
                amp=t.get("amp"), nonfinite=t["nonfinite"], config=cfg, resume=resume,
                force_resume=args.force_resume,
            )
        except OptiloopError as e:
            raise OptiloopError(f"{e} (files so far are in {run_dir}/)") from None
        seconds = time.perf_counter() - t0
        if not info.is_main:
            return 0
        history.to_csv(run_dir / "history.csv")
        best = history.rows[ckpt.best_epoch - 1] if ckpt.best_epoch else history.rows[-1]
        plot_history(history, run_dir / "curves.png", best_epoch=ckpt.best_epoch,
                     title=f"{run_dir.name}: {cfg['optimizer']['name']} lr "
                     f"{_fmt(cfg['optimizer'].get('lr', 'default'))}, {cfg['scheduler']['name']}")
        summary = self._summary(cfg, plan, history, best, info, seconds, run_dir)
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

        vals = "  ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith("val_"))
        stop = f" ({info.stop_reason})" if info.stop_reason else ""
        print(f"done: {len(history)} epochs in {seconds:.1f} s{stop}")
        print(f"best epoch {best['epoch']}: {vals}")
        if plan.dataset.task == "regression" and "val_mae" in best and cfg["data"]["standardize"]:
            print(f"  (the target was standardized: val_mae {best['val_mae']:.4f} is "
                  f"{best['val_mae'] * s.y_std:.4g} in the target's own units)")
        files = ", ".join(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")))
        print(f"files in {run_dir}/: {files}")
        return 0

    @staticmethod
    def _resume_dir(args: argparse.Namespace) -> Path | None:
        if args.resume is None:
            if args.force_resume:
                raise OptiloopError("--force-resume goes with --resume RUN_DIR")
            return None
        if args.out is not None:
            raise OptiloopError("--resume continues RUN_DIR in place; drop --out")
        path = Path(args.resume)
        if not path.is_dir():
            raise OptiloopError(f"--resume {path}: no such run folder")
        if not (path / "config.toml").is_file() and args.config is None:
            raise OptiloopError(f"--resume {path}: no config.toml in it; is it an optiloop run folder?")
        return path

    @staticmethod
    def _summary(cfg, plan, history, best, info, seconds, run_dir) -> dict[str, Any]:
        from . import __version__

        s, ds = plan.split, plan.dataset
        out: dict[str, Any] = {
            "run": run_dir.name,
            "data": {"name": cfg["data"]["name"], "task": ds.task, "train_samples": len(s.X_train),
                     "val_samples": len(s.X_val), "features": int(ds.X.shape[1]),
                     "classes": ds.num_classes or None},
            "model": {"name": cfg["model"]["name"], "parameters": plan.parameters},
            "optimizer": cfg["optimizer"]["name"], "scheduler": cfg["scheduler"]["name"],
            "epochs_run": len(history), "epochs_max": cfg["train"]["epochs"],
            "stop_reason": info.stop_reason,
            "monitor": cfg["train"]["monitor"],
            "best": dict(best), "final": dict(history.rows[-1]),
            "seconds": round(seconds, 3), "device": info.device, "world_size": info.world_size,
            "versions": {"python": platform.python_version(), "torch": plan.torch_version,
                         "optiloop": __version__},
        }
        if ds.task == "regression" and cfg["data"]["standardize"]:
            out["target_standardized"] = {"mean": s.y_mean, "std": s.y_std}
        return out


# --- schedule ----------------------------------------------------------------------------------
def schedule_defaults(name: str, lr: float, epochs: int, steps_per_epoch: int,
                      interval: str | None = None) -> dict[str, Any]:
    """Arguments shown (and used) for ``name`` when the user gives none: every name plots.
    Lengths are in the schedule's own unit: steps when it is stepped per optimizer step."""
    from .schedules import SCHEDULERS

    length = epochs * steps_per_epoch if (interval or SCHEDULERS[name][0]) == "step" else epochs
    shown: dict[str, dict[str, Any]] = {
        "step": {"gamma": 0.1}, "multistep": {"gamma": 0.1},
        "cosine": {"T_max": length, "eta_min": 0.0}, "cosine_restarts": {"T_0": max(1, length // 4)},
        "plateau": {"factor": 0.5, "patience": max(1, epochs // 10)}, "onecycle": {"max_lr": lr},
        "linear": {"start_factor": 1.0, "end_factor": 0.0}, "polynomial": {"power": 1.0},
    }
    return {**default_arguments(name, length), **shown.get(name, {})}


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
        p.add_argument("--steps-per-epoch", type=int, default=1,
                       help="optimizer steps per epoch; > 1 plots per-step curves (default 1)")
        p.add_argument("--set", action="append", default=[], metavar="[NAME.]KEY=VALUE",
                       help="a scheduler argument (TOML value) for all names, or NAME.KEY for one;"
                       " e.g. --set gamma=0.5 --set step.step_size=5 --set warmup_epochs=3")
        p.add_argument("--plot", metavar="FILE", help="write the plot (PNG) here")

    def run(self, args: argparse.Namespace) -> int:
        from .config import parse_value
        from .plots import plot_schedules
        from .schedules import SCHEDULERS, preview_schedule

        names = [n.lower() for n in args.names]
        for n in names:
            if n not in SCHEDULERS:
                raise OptiloopError(f"unknown scheduler {n!r}; "
                                    f"choose one of: {choices(SCHEDULERS)}")
        if len(set(names)) != len(names):
            raise OptiloopError("each scheduler name once, please")
        if not (args.lr > 0 and math.isfinite(args.lr)):
            raise OptiloopError(f"--lr: must be > 0 (got {args.lr})")
        if args.epochs < 1 or args.steps_per_epoch < 1:
            raise OptiloopError("--epochs and --steps-per-epoch: must be >= 1")
        common, scoped = self._sets(args.set, names, parse_value)

        spe, per_step = args.steps_per_epoch, args.steps_per_epoch > 1
        curves: dict[str, list[float]] = {}
        table: dict[str, list[float]] = {}
        note = None
        for n in names:
            given = {**common, **scoped.get(n, {})}
            kwargs = {**schedule_defaults(n, args.lr, args.epochs, spe, given.get("interval")), **given}
            metrics = None
            if SCHEDULERS[n][0] == "metric":
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
            label = n + (f" ({', '.join(f'{k}={_fmt(v)}' for k, v in kwargs.items())})"
                         if kwargs else "")
            curves[label] = lrs
            table[n] = lrs[::spe] if per_step else lrs

        for label in curves:
            print(label)
        if note:
            print(note)
        print()
        width = max(10, *(len(n) for n in names))
        print("epoch  " + "  ".join(f"{n:>{width}}" for n in names))
        for e in range(args.epochs):
            print(f"{e + 1:>5}  " + "  ".join(f"{table[n][e]:>{width}.4g}" for n in names))
        if args.plot:
            title = f"LR schedule{'s' if len(names) > 1 else ''}: base lr {args.lr:g}, " \
                    f"{args.epochs} epochs"
            plot_schedules(curves, args.plot, steps_per_epoch=spe, title=title, note=note)
            print(f"plot: {args.plot}")
        return 0

    @staticmethod
    def _sets(items, names, parse_value):
        from .schedules import SCHEDULERS

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


# --- list --------------------------------------------------------------------------------------
@command("list")
class ListCommand(Command):
    help = "list optimizers (with torch's defaults), schedulers, data sets and models"

    def run(self, args: argparse.Namespace) -> int:
        from .datasets import describe_builtin
        from .models import DESCRIPTIONS
        from .optim import OPTIMIZERS, optimizer_defaults
        from .schedules import SCHEDULERS, describe

        print("optimizers (torch's defaults; any key can be set: --set optimizer.KEY=VALUE)")
        for name in OPTIMIZERS:
            defaults = ", ".join(f"{k}={_fmt(v)}" for k, v in optimizer_defaults(name).items())
            print(f"  {name:<16}{defaults}")
        print("\nschedulers (interval: when it is stepped; warmup: scheduler.warmup_epochs=N)")
        for name in SCHEDULERS:
            print(f"  {name:<16}{describe(name)}")
        print("\ndata sets (data.name; also a .csv file + data.target, an .npz with X and y, or "
              "package.module:function returning (X, y))")
        for name, text in describe_builtin().items():
            print(f"  {name:<16}{text}")
        print("\nmodels (model.name; also package.module:function(in_features, out_features, "
              "**keys of [model]))")
        for name, text in DESCRIPTIONS.items():
            print(f"  {name:<16}{text}")
        return 0


# --- eval --------------------------------------------------------------------------------------
@command("eval")
class EvalCommand(Command):
    help = "evaluate a checkpoint on its run's validation split, or on other data"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", help="best.pt / last.pt, or a run folder (uses its best.pt)")
        p.add_argument("--data", help="evaluate on all of this data set instead (same forms as "
                       "data.name; standardized with the run's train statistics)")
        p.add_argument("--target", help="CSV column holding the target (with --data FILE.csv)")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--device", default="auto")
        p.add_argument("--json", action="store_true", help="print the results as one JSON object")

    def run(self, args: argparse.Namespace) -> int:
        import numpy as np

        from .checkpoint import load_checkpoint, load_model_weights
        from .config import extras, validate
        from .datasets import apply_split_stats, load_dataset, split
        from .loop import evaluate
        from .models import build_model

        path = Path(args.checkpoint)
        if path.is_dir():
            path = path / "best.pt"
        ckpt = load_checkpoint(path)
        raw = ckpt.get("config") if isinstance(ckpt, dict) else None
        if not raw or "model" not in ckpt:
            raise OptiloopError(f"{path} holds no run config: evaluate checkpoints written by "
                                "optiloop train")
        cfg = validate(raw)
        d, t = cfg["data"], cfg["train"]
        ds = load_dataset(d["name"], target=d.get("target"), task=d["task"])
        s = split(ds, val_fraction=d["val_fraction"], seed=d["seed"], standardize=d["standardize"])
        if args.data is None:
            X, y, what = s.X_val, s.y_val, f"validation split of {d['name']}"
        else:
            other = load_dataset(args.data, target=args.target, task=ds.task)
            X, y = apply_split_stats(s, other)
            if ds.task == "classification":  # map the other set's labels to the run's class ids
                lookup = {c: i for i, c in enumerate(ds.classes)}
                unknown = [c for c in other.classes if c not in lookup]
                if unknown:
                    raise OptiloopError(f"--data {args.data}: labels {unknown[:5]} were not "
                                        f"among the run's classes {ds.classes}")
                y = np.array([lookup[other.classes[i]] for i in y], dtype=np.int64)
            what = f"all of {args.data}"
        model = build_model(cfg["model"]["name"], ds.X.shape[1], ds.out_features,
                            **extras(cfg["model"]))
        load_model_weights(model, ckpt["model"])
        loss = t.get("loss", "mse" if ds.task == "regression" else "cross_entropy")
        metrics = t.get("metrics", ["mae"] if ds.task == "regression" else ["accuracy"])
        results = evaluate(model, (X, y), loss=loss, metrics=metrics, batch_size=args.batch_size,
                           device=args.device)
        if args.json:
            print(json.dumps({"checkpoint": str(path), "epoch": ckpt.get("epoch"), "data": what,
                              "samples": len(X), **results}))
        else:
            print(f"{path} (epoch {ckpt.get('epoch')}) on {what} ({len(X)} samples):")
            print("  " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return 0


# --- compare -----------------------------------------------------------------------------------
def _free_dir(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... if it is taken (default folders never collide)."""
    for i in range(1, 1000):
        candidate = path if i == 1 else path.with_name(f"{path.name}-{i}")
        if not candidate.exists():
            return candidate
    raise OptiloopError(f"cannot find a free folder name next to {path}")


def _task_flags(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {"data": {"name": args.data}, "model": {"name": args.model},
            "train": {"batch_size": args.batch_size, "device": args.device}}


def _add_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="a train config (TOML); its data, model and "
                   "train sections are used")
    p.add_argument("--data", help="built-in data set, .csv / .npz file, or package.module:function "
                   "(default digits)")
    p.add_argument("--model", help="mlp, cnn, or package.module:function (default mlp)")
    p.add_argument("--batch-size", type=int, help="samples per batch (default 64)")
    p.add_argument("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config key, as in optiloop train (e.g. --set data.target=label "
                   "--set model.hidden=[64])")


@command("compare")
class CompareCommand(Command):
    help = ("train every optimizer x scheduler (x seed) from the same initial weights and write a "
            "comparison report (table, curves, report.md / report.html)")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .comparison import DEFAULT_EPOCHS, DEFAULT_OPTIMIZERS, DEFAULT_SCHEDULERS

        p.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                       help=f"comma-separated optimizer names (default {','.join(DEFAULT_OPTIMIZERS)})")
        p.add_argument("--schedulers", default=",".join(DEFAULT_SCHEDULERS),
                       help=f"comma-separated scheduler names (default {','.join(DEFAULT_SCHEDULERS)})")
        p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                       help=f"epochs per run, no early stopping (default {DEFAULT_EPOCHS})")
        p.add_argument("--seeds", type=int, default=1, help="seeds per combination; the table "
                       "shows mean ± std (default 1)")
        p.add_argument("--lr", metavar="LR or NAME=LR,...", help="one LR for all, or per optimizer "
                       "(sgd=0.1,adam=1e-3); default per optimizer: sgd 0.1 (momentum 0.9), adam / "
                       "adamw / rmsprop 1e-3, adagrad 1e-2, others torch's default")
        p.add_argument("--target", metavar="KEY=VALUE", help="also report epochs to reach it, e.g. "
                       "val_acc=0.95")
        p.add_argument("--out", metavar="DIR", help="report folder (default runs/compare-<data>-"
                       "<time>); must not exist or be empty")
        p.add_argument("--checkpoints", action="store_true",
                       help="also write best.pt / last.pt in each run folder (off: saves time)")
        _add_task_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        from .comparison import compare, format_table, parse_lrs, parse_names, parse_target, summarize
        from .config import resolve
        from .optim import OPTIMIZERS
        from .schedules import SCHEDULERS

        # Cheap checks first (one line each), then the data; compare() checks the rest before
        # it creates the folder.
        optimizers = parse_names(args.optimizers, "optimizer", OPTIMIZERS)
        schedulers = parse_names(args.schedulers, "scheduler", SCHEDULERS)
        lrs = parse_lrs(args.lr, optimizers)
        parse_target(args.target)
        if args.epochs < 1 or args.seeds < 1:
            raise OptiloopError("--epochs and --seeds: must be >= 1")
        cfg = resolve(args.config, args.set, _task_flags(args))
        if args.out is not None:
            out = Path(args.out)
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = _free_dir(Path("runs") / f"compare-{_short(cfg['data']['name'])}-{stamp}")
        runs = len(optimizers) * len(schedulers) * args.seeds
        t0 = time.perf_counter()
        # compare() checks the rest (out folder, target key, device, each optimizer's LR) before
        # its first progress line, which is the header printed here.
        rows = compare(config=cfg, optimizers=optimizers, schedulers=schedulers,
                       epochs=args.epochs, seeds=args.seeds, lrs=lrs, target=args.target, out=out,
                       checkpoints=args.checkpoints, device=cfg["train"]["device"],
                       progress=lambda line: print(line, flush=True))
        print(f"\ndone: {runs} runs in {time.perf_counter() - t0:.1f} s"
              + (f"; mean ± std over {args.seeds} seeds" if args.seeds > 1 else ""))
        print(format_table(summarize(rows)))
        files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
        print(f"\nfiles in {out}/: {', '.join(files)}, runs/ ({runs} run folders)")
        return 0


# --- lr-find -----------------------------------------------------------------------------------
@command("lr-find")
class LRFindCommand(Command):
    help = "LR range test: sweep the LR up exponentially, plot the loss, suggest a learning rate"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .lr_finder import RULES

        p.add_argument("--optimizer", help="optimizer name (default adamw, as optiloop train); "
                       "its keys: --set optimizer.KEY=VALUE")
        p.add_argument("--min-lr", type=float, default=1e-7, help="first LR (default 1e-7)")
        p.add_argument("--max-lr", type=float, default=10.0, help="last LR (default 10)")
        p.add_argument("--steps", type=int, default=100, help="steps of the sweep (default 100)")
        p.add_argument("--rule", choices=RULES, default="valley", help="which suggestion to give: "
                       "valley (default: middle of the longest stretch of falling loss) or "
                       "steepest (fastest fall per decade of LR)")
        p.add_argument("--seed", type=int, help="seed for the initial weights and data order "
                       "(default train.seed, 0)")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--out", metavar="DIR", help="folder for lr_find.png and lr_find.csv "
                           "(default runs/lr-find-<data>-<model>-<optimizer>-<time>)")
        where.add_argument("--plot", metavar="FILE", help="write only the plot, here (.png)")
        _add_task_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        from .comparison import task_from_config
        from .config import extras, resolve
        from .loop import resolve_device, seed_everything
        from .lr_finder import lr_find

        if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
            raise OptiloopError(f"--plot {args.plot}: the plot is a PNG; name it FILE.png")
        flags = _task_flags(args)
        flags["optimizer"] = {"name": args.optimizer}
        flags["train"]["seed"] = args.seed
        cfg = resolve(args.config, args.set, flags)
        o = cfg["optimizer"]
        if args.out is not None:
            _run_dir(args.out, cfg, resumable=False)  # refuses a folder that exists and is not empty
        task = task_from_config(cfg)
        device = _with_key("train.device", resolve_device, cfg["train"]["device"])
        seed_everything(cfg["train"]["seed"])
        model = task.model_factory()
        options = extras(o, "lr")
        print(f"optiloop lr-find: {task.description}, {o['name']}"
              f"{''.join(f' {k}={_fmt(v)}' for k, v in options.items())}: lr {args.min_lr:g} -> "
              f"{args.max_lr:g} in {args.steps} steps, batch size {task.batch_size}", flush=True)
        result = lr_find(model, task.train_data, loss=task.loss, optimizer=o["name"],
                         min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                         batch_size=task.batch_size, rule=args.rule, device=device,
                         seed=cfg["train"]["seed"], progress=lambda line: print(line), **options)
        # Everything computed; only now are files written.
        if args.plot is not None:
            plot = Path(args.plot)
        else:
            if args.out is not None:
                folder = _make_dir(Path(args.out), False)
            else:
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                folder = _make_dir(Path("runs") / f"lr-find-{_short(cfg['data']['name'])}-"
                                   f"{_short(cfg['model']['name'])}-{o['name']}-{stamp}", True)
            plot = folder / "lr_find.png"
            result.to_csv(folder / "lr_find.csv")
        result.plot(plot, title=f"LR range test: {_short(cfg['data']['name'])}, "
                    f"{cfg['model']['name']}, {o['name']}")
        other = [f"{r} {lr:.2e}" for r, lr in result.suggestions.items() if r != result.rule]
        how = {"valley": "middle of the longest stretch of falling loss",
               "steepest": "fastest fall of the loss per decade of LR"}[result.rule]
        print(f"suggested lr: {result.suggestion:.2e} ({result.rule} rule: {how}; "
              f"other rule: {', '.join(other)})")
        print(f"plot: {plot}" + (f" (steps: {plot.parent / 'lr_find.csv'})" if args.plot is None
                                 else ""))
        return 0


# --- doctor ------------------------------------------------------------------------------------
@command("doctor")
class DoctorCommand(Command):
    help = "run your own training script unchanged and diagnose how it steps its optimizer and LR scheduler"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .doctor.command import add_arguments

        add_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        from .doctor.command import run

        return run(args)
