"""``optiloop train``: a run from a config (file, --set, flags) into a run folder.

Every failure the user can fix ends as one line and exit code 2, with nothing written:
``optiloop.runs.TrainingRun`` loads the data and builds the model, optimizer and scheduler before
it creates the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import OptiloopError, SettingsChanged, TrainingInterrupted
from . import Command, command
from .common import keywords

# flag -> (section, key, type, help): named flags are shorthands for config keys.
TRAIN_FLAGS: dict[str, tuple[str, str, type, str]] = {
    "--data": ("data", "name", str,
               "built-in data set, .csv / .npz file, or package.module:function"),
    "--target": ("data", "target", str, "CSV column holding the target"),
    "--model": ("model", "name", str, "mlp, cnn, or package.module:function"),
    "--optimizer": ("optimizer", "name", str, "optimizer name; it starts from its defaults in "
                    "optiloop list"),
    "--lr": ("optimizer", "lr", float, "learning rate"),
    "--weight-decay": ("optimizer", "weight_decay", float, "weight decay"),
    "--momentum": ("optimizer", "momentum", float, "momentum (sgd, rmsprop)"),
    "--scheduler": ("scheduler", "name", str, "LR scheduler name (see: optiloop list)"),
    "--step-size": ("scheduler", "step_size", int, "epochs between LR drops (step scheduler)"),
    "--epochs": ("train", "epochs", int, "number of epochs (default 30); given without "
                 "--early-stopping, every one of them runs"),
    "--batch-size": ("train", "batch_size", int, "samples per batch"),
    "--early-stopping": ("train", "early_stopping", int,
                         "patience in epochs on train.monitor (default 5 with the default epochs, "
                         "off when you set --epochs); 0 turns early stopping off"),
    "--seed": ("train", "seed", int, "seed for initialisation and data order"),
    "--grad-accum": ("train", "grad_accum", int, "micro-batches per optimizer step (gradient accumulation): "
                     "each step trains on N x --batch-size samples"),
    "--clip-grad-norm": ("train", "clip_grad_norm", float, "clip the gradients' total L2 norm to X before each "
                         "optimizer step; steps.csv records the norm before clipping"),
    "--amp": ("train", "amp", str, "mixed precision: bf16 (autocast) or fp16 (autocast and a GradScaler)"),
    "--checkpoint-every": ("train", "checkpoint_every", int,
                           "also write last.pt every N optimizer steps (resumable mid-epoch)"),
    "--checkpoint-seconds": ("train", "checkpoint_seconds", float,
                             "write last.pt at an epoch's end once this many seconds passed since "
                             "the last save (default 60; 0 = every epoch)"),
    "--ema": ("train", "ema", float, "keep an exponential moving average of the weights with this decay, e.g. "
              "0.999; validation, best.pt, predict and export use it (val_loss_raw: the raw weights')"),
    "--swa": ("train", "swa", int, "stochastic weight averaging from this epoch on: SWALR takes over the LR "
              "and validation, best.pt, predict and export use the average"),
    "--swa-lr": ("train", "swa_lr", float, "the LR SWA anneals to (default: the LR reached when it starts)"),
    "--device": ("train", "device", str, "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps"),
    "--strategy": ("train", "strategy", str, "under torchrun: ddp (the default: a model copy per "
                   "process) or fsdp (model, gradients and optimizer state sharded across the "
                   "processes; checkpoints become sharded folders); none for one process"),
}

# flag -> (train key, help): on/off switches (given: true; absent: the config's value).
TRAIN_SWITCHES: dict[str, tuple[str, str]] = {
    "--tensorboard": ("tensorboard", "also write TensorBoard event files into RUN/tensorboard: per epoch every "
                      "logged figure, per step the loss, LR and gradient norm (needs: pip install tensorboard)"),
    "--grad-norm": ("grad_norm", "record the gradient norm of every step in steps.csv (and TensorBoard); "
                    "free with clip_grad_norm, otherwise a few extra kernels per step"),
}


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
        p.add_argument("--warmup", metavar="N|Ns", help="linear LR warmup in front of the scheduler: N epochs "
                       "(--warmup 2) or N optimizer steps with an s (--warmup 500s) (scheduler.warmup_epochs / "
                       "scheduler.warmup_steps)")
        for flag, (key, text) in TRAIN_SWITCHES.items():
            p.add_argument(flag, action="store_true", default=None, dest=f"train__{key}",
                           help=f"{text} (train.{key})")
        p.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="URI", dest="train__mlflow",
                       help="also log the run to MLflow: its config as params, every epoch's figures, per-step loss "
                       "/ LR / gradient norm, and the run folder's files; URI: any tracking URI (sqlite:///mlflow.db, "
                       "http://host:5000), none: MLflow's default store; the experiment is MLFLOW_EXPERIMENT_NAME "
                       "or 'optiloop' (needs: pip install 'optiloop[mlflow]') (train.mlflow)")

    def run(self, args: argparse.Namespace) -> int:
        from .. import drawing

        # Before torch's import: the pictures' helper imports matplotlib on another core meanwhile.
        drawing.start()
        try:
            return self._run(args)
        finally:
            drawing.stop()

    def _run(self, args: argparse.Namespace) -> int:
        from ..config import resolve
        from ..files import check_writable
        from ..runs import TrainingRun, ensure_empty, torchrun_rank

        flags: dict[str, dict[str, Any]] = {}
        for section, key, _, _ in TRAIN_FLAGS.values():
            flags.setdefault(section, {})[key] = getattr(args, f"{section}__{key}")
        for key, _ in TRAIN_SWITCHES.values():
            flags["train"][key] = getattr(args, f"train__{key}")
        flags["train"]["mlflow"] = args.train__mlflow
        if args.warmup is not None:
            key, n = parse_warmup(args.warmup)
            flags["scheduler"][key] = n
        resume = self._resume_dir(args)
        if args.out is not None and torchrun_rank() is None:  # (under torchrun every rank names it)
            check_writable(args.out, "--out")
            ensure_empty(args.out, "--out", f", or continue it with --resume {args.out}")
        config = args.config or (resume / "config.toml" if resume is not None else None)
        # Everything is built and checked here; only then is anything written.
        try:
            run = TrainingRun(resolve(config, args.set, flags), out=args.out, resume=resume,
                              force_resume=args.force_resume)
            folder = run.open_folder()
            if run.is_main_process:
                print(header(run, folder.path), flush=True)
            result = run.train()
        except TrainingInterrupted as e:  # a scheduler, preemption or Ctrl-C: saved, say how to go on
            if run.is_main_process:
                saved = (run.folder.path / "last.pt").exists()
                print(f"{e}; " + (f"saved {run.folder.path}/last.pt; continue with: optiloop train --resume "
                                  f"{run.folder.path}" if saved else "nothing was saved yet"), file=sys.stderr)
            return e.exit_code
        except SettingsChanged as e:  # the library names its keyword; a user here types the flag
            raise e.with_remedy("pass --force-resume to continue anyway") from None
        if not result.is_main:
            return 0
        best = result.best
        vals = "  ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith("val_"))
        stop = f" ({result.stop_reason})" if result.stop_reason else ""
        n = len(result.history)
        print(f"done: {n} epoch{'s' if n != 1 else ''} in {result.seconds:.1f} s{stop}")
        print(f"best epoch {best['epoch']}: {vals}")
        y_scaler = run.task.preprocessing.y_scaler
        if y_scaler is not None and "val_mae" in best:
            print(f"  (the target was standardized: val_mae {best['val_mae']:.4f} is "
                  f"{best['val_mae'] * float(y_scaler.scale_[0]):.4g} in the target's own units)")
        print(f"files in {folder.path}/: {', '.join(folder.files())}")
        if run.tracker is not None and run.tracker.failed:
            print("MLflow: logging stopped at an error (the warning above); the run folder is complete")
        elif run.tracker is not None and run.tracker.run_id is not None:
            print(f"MLflow run {run.tracker.run_id} in {run.tracker.uri}")
        print(f"predict with: optiloop predict {folder.path} --data NEW.csv")
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
        from ..runs.fitted import is_fit_run  # torch: only a resume asks

        if is_fit_run(path):
            raise OptiloopError(f"--resume {path}: made by optiloop.fit(out=...), from a model and data of its "
                                f"own; continue it in Python: fit(model, data, ..., resume={str(path)!r})")
        return path


def parse_warmup(text: str) -> tuple[str, int]:
    """``--warmup``'s value: ``"3"`` -> 3 epochs, ``"500s"`` -> 500 optimizer steps.

    Example:
        >>> parse_warmup("3"), parse_warmup("500s")
        (('warmup_epochs', 3), ('warmup_steps', 500))
    """
    value = text.strip()
    key = "warmup_steps" if value.endswith("s") else "warmup_epochs"
    digits = value[:-1] if key == "warmup_steps" else value
    if not digits.isdigit():
        raise OptiloopError(f"--warmup: give epochs (--warmup 2) or optimizer steps with an s (--warmup 500s), "
                            f"got {text!r}")
    return key, int(digits)


def step_line(cfg: Any) -> str:
    """What one optimizer step is: batches accumulated, clipping, AMP (each on or off)."""
    t = cfg["train"]
    accum, batch = t.get("grad_accum", 1), t["batch_size"]
    parts = [f"each optimizer step: {accum} batches of {batch} (gradient accumulation: {accum * batch} samples)"
             if accum > 1 else f"each optimizer step: 1 batch of {batch} (no accumulation)"]
    clip = t.get("clip_grad_norm")
    parts.append(f"gradients clipped to norm {clip:g}" if clip else "no gradient clipping")
    amp = t.get("amp")
    parts.append({"bf16": "AMP bf16 (autocast)", "fp16": "AMP fp16 (autocast + GradScaler)"}.get(amp, "AMP off"))
    return "; ".join(parts)


def header(run: Any, folder: Path) -> str:
    """What the run will do, before it starts: data, model, device, folder; optimizer and
    schedule with the values they use; how long it can run and what can end it early."""
    task, cfg = run.task, run.cfg
    s = run.schedule
    when = {"epoch": "stepped per epoch", "step": "stepped per optimizer step",
            "metric": f"stepped on {cfg['scheduler'].get('monitor', 'val_loss')}"}[s["interval"]]
    args = keywords(s, "interval")
    warm = getattr(run, "warmup_steps", 0)
    if warm:
        when += f" after a linear warmup over {warm} optimizer step{'s' if warm > 1 else ''}"
    lines = [
        f"optiloop train: {task.description} ({run.parameters:,} parameters) on {run.device} -> {folder}/",
        *processes_line(run),
        f"  optimizer {cfg['optimizer']['name']}: {keywords(cfg['optimizer']) or 'torch defaults'}; "
        f"scheduler {s['name']}, {when}{': ' + args if args else ''}",
        "  " + length_line(run.epochs, run.patience, run.monitor),
        "  " + step_line(cfg),
        *(f"  data: {note}" for note in task.notes),  # columns left out or encoded, empty cells filled
    ]
    if run.resume is not None and run.from_start:
        lines.append(f"  {run.resume}/ saved nothing before it stopped: starting it from its beginning")
    elif run.resume is not None:
        lines.append(f"  resuming {run.resume}/" + (f": changed {'; '.join(run.changed)}" if run.changed else ""))
        if any(c.startswith(("train.epochs ", "train.batch_size ", "train.grad_accum ")) for c in run.changed):
            lines.append("  (the schedule continues with the lengths it was built with)")
    t = cfg["train"]
    if t.get("ema") is not None:
        lines.append(f"  weights averaged (EMA, decay {t['ema']:g}): validation, best.pt and predict use the average")
    if t.get("swa") is not None:
        lines.append(f"  weights averaged (SWA) from epoch {t['swa']}, SWALR to "
                     f"{'lr ' + format(t['swa_lr'], 'g') if t.get('swa_lr') else 'the LR reached then'}: "
                     "validation, best.pt and predict use the average")
    if cfg["train"].get("tensorboard"):
        lines.append(f"  TensorBoard: tensorboard --logdir {folder}/tensorboard")
    if cfg["train"].get("mlflow"):
        from ..trackers import experiment_name, resolve_uri

        uri = cfg["train"]["mlflow"]
        lines.append(f"  MLflow: experiment {experiment_name(None)!r} in {resolve_uri(None if uri is True else uri)}")
    return "\n".join(lines)


def processes_line(run: Any) -> list[str]:
    """Under torchrun: how many processes, and the batch each takes against the batch each
    optimizer step sees (what the LR is for)."""
    from ..distributed import launched_world, resolve_strategy

    world = launched_world()
    if not world.distributed:
        return []
    t = run.cfg["train"]
    strategy = resolve_strategy(run.strategy, world)[0]
    batch, accum, n = t["batch_size"], t["grad_accum"], world.world_size
    total = f"{batch * n * accum} per optimizer step ({batch} x {n} processes x {accum} accumulated)" \
        if accum > 1 else f"{batch * n} in all per optimizer step"
    return [f"  {n} processes ({strategy}): batch size {batch} per process, {total}; the LR is not scaled for it"]


def length_line(epochs: int, patience: int, monitor: str) -> str:
    """When the run ends, said up front (early stopping is no surprise)."""
    if not patience:
        return f"{epochs} epoch{'s' if epochs > 1 else ''}, no early stopping"
    if patience >= epochs:
        return (f"{epochs} epochs: early stopping (patience {patience}) cannot end a run this short")
    return (f"up to {epochs} epochs: early stopping ends the run once {monitor} has not improved for "
            f"{patience} epoch{'s' if patience > 1 else ''} (--early-stopping 0 runs all {epochs})")
