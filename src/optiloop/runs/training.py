"""``optiloop train`` as a library: :class:`TrainingRun` builds and checks everything from a
resolved config first, then creates the run folder, runs the loop with early stopping and
checkpoints, and writes the run's files; a resume continues a run folder in place.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import loggers, trackers
from ..averaging import EMA, SWA
from ..callbacks import Callback, EarlyStopping, Monitor
from ..config import FIXED, FREE, extras, resolve, resume_policy
from ..distributed import (
    agreed,
    check_fsdp,
    launched_by_torchrun,
    launched_world,
    resolve_device,
    resolve_strategy,
    seed_everything,
)
from ..errors import DataWarning, OptiloopError, SettingsChanged
from ..files import check_writable
from ..loggers import TensorBoard
from ..loop import logged_keys, run_fit
from ..optim import build_optimizer
from ..optim import lookup as lookup_optimizer
from ..schedule_free import check_schedule
from ..schedules import build_scheduler
from ..settings import AMP_DTYPES, FitSettings
from .folder import RunFolder, ensure_empty, free_name, short, stamp, versions
from .loaded import load
from .record import best_row, files_so_far, finish_run, run_callbacks
from .task import INFERENCE, build_task, with_key


def torchrun_rank() -> int | None:
    """This process's rank when torchrun launched several; None for a plain process."""
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"])
    return None


def _restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def _flat(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in cfg.items() if isinstance(section, Mapping) for k, v in section.items()}


def resume_changes(run_dir: Path, cfg: Mapping[str, Any], force: bool) -> list[str]:
    """The settings ``cfg`` changes from the run's own config.toml, checked before anything is
    written: refused when they define the saved state (or need ``force``); else returned."""
    saved_file = run_dir / "config.toml"
    if not saved_file.is_file():
        return []
    old, new = _flat(resolve(saved_file)), _flat(cfg)
    diffs = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    what = {k: f"{k} {a!r} -> {b!r}" for k, (a, b) in diffs.items()}
    policy = {k: resume_policy(k) for k in diffs}  # declared on each config key (optiloop.config)
    fixed = [k for k in diffs if policy[k] == FIXED]
    if fixed:
        raise OptiloopError(f"cannot resume {run_dir}: {'; '.join(what[k] for k in fixed)}: these define the "
                            f"saved state; start a new run from {run_dir}/config.toml with the new values")
    forced = [k for k in diffs if policy[k] != FREE]
    if forced and not force:
        raise SettingsChanged(run_dir, "; ".join(what[k] for k in forced))
    return [what[k] for k in diffs]


@dataclass
class TrainingResult:
    """What a finished ``TrainingRun`` reports (rank 0 of a multi-process run has the files)."""

    folder: RunFolder
    history: Any
    best: dict[str, Any]
    stop_reason: str | None
    seconds: float
    is_main: bool


class TrainingRun:
    """``optiloop train`` as a library: build and check everything, then train into a run folder.

    Construction loads the data, fits the preprocessing, builds the model and dry-builds the
    optimizer and scheduler exactly as ``fit`` will, so every mistake is one line before anything
    is written. ``train()`` then creates the folder, writes config.toml, runs ``fit`` with early
    stopping and checkpoints, and writes history.csv, curves.png and summary.json.

    Args:
        cfg: a resolved config (``config.resolve``).
        out: the run folder (must be new or empty); None: ``runs/<data>-<model>-<optimizer>-<time>``.
        resume: a run folder to continue in place. ``cfg`` may differ from its config.toml only
            in how the run is carried out (device, checkpoint timing, nonfinite); run length,
            batch size, accumulation, clipping, AMP and data also with ``force_resume=True``;
            the model, optimizer, scheduler, seed, loss, metrics and monitor never (they define
            the saved state: that is a new run).
        force_resume: see ``resume``.

    Example:
        >>> from optiloop.config import resolve
        >>> run = TrainingRun(resolve(sets=["data.name=wine", "train.epochs=2"]), out="/tmp/optiloop-doc-run")
        >>> run.epochs, run.patience, run.schedule["name"]
        (2, 0, 'cosine')
    """

    def __init__(self, cfg: Mapping[str, Any], *, out: str | os.PathLike | None = None,
                 resume: str | os.PathLike | None = None, force_resume: bool = False):

        cfg = copy.deepcopy(dict(cfg))
        self.resume = Path(resume) if resume is not None else None
        self.force_resume = force_resume
        self.changed: list[str] = []  # settings a resume changes (applied and recorded)
        self.from_start = False  # a resume of a run that saved nothing yet
        if self.resume is not None:
            self.path, self.unique = self.resume, False
            self.changed = resume_changes(self.resume, cfg, force_resume)
            # Killed before its first save (a preemption in the first minute): nothing to continue
            # from, so the run starts over in its own folder rather than leaving it unusable.
            self.from_start = not any((self.resume / n).exists() for n in ("last.pt", "last.prev.pt", "last"))
        else:
            self.path, self.unique = self._folder(out, cfg)
            # (last/ : a sharded run's checkpoint folder)
            if _restarted_by_torchrun() and ((self.path / "last.pt").exists() or (self.path / "last").is_dir()):
                self.resume = self.path  # torchrun --max-restarts restarted us: continue, never start over
        self.task = task = build_task(cfg)
        cfg = task.config
        t, o, s = cfg["train"], cfg["optimizer"], cfg["scheduler"]
        log_keys = logged_keys(task.metrics, averaged=t.get("ema") is not None or t.get("swa") is not None)
        with_key("train.monitor", lambda m: Monitor(m).check_available(log_keys), t["monitor"])
        self.device = with_key("train.device", resolve_device, t["device"])
        self.strategy = t.get("strategy") or "auto"
        with_key("train.strategy", lambda s: resolve_strategy(s, launched_world()), self.strategy)
        if t.get("tensorboard"):  # a missing package fails now, before the run folder exists
            with_key("train.tensorboard", lambda _: loggers.require_tensorboard(), True)
        if t.get("mlflow"):  # likewise
            with_key("train.mlflow", lambda _: trackers.require_mlflow(), True)
        self.tracker: Any = None  # the MLflow logger once training starts (train.mlflow)
        seed_everything(t["seed"])  # the model's initial weights follow the run's seed
        self.model = task.new_model()
        self.optimizer = {"name": o["name"], **extras(o, "lr", "weight_decay")}
        # Dry build on the real model, exactly as fit() will: unknown keys and impossible values
        # fail here, before the run folder exists.
        opt = build_optimizer(self.optimizer, self.model, lr=o.get("lr"), weight_decay=o.get("weight_decay"))
        batches = math.ceil(len(task.train_data[0]) / t["batch_size"])
        steps = math.ceil(batches / t["grad_accum"])
        built = build_scheduler({"name": s["name"], **extras(s)}, opt, epochs=t["epochs"], steps_per_epoch=steps)
        del opt
        if lookup_optimizer(o["name"]).schedule_free:  # refused by fit too, but before any file exists
            with_key("scheduler.name", check_schedule, built)
        # step / multistep / exponential have no torch default for their one required argument:
        # record the one build_scheduler derived from the run, so config.toml says what ran.
        for key, value in built.recorded.items():
            s.setdefault(key, value)
        self.scheduler = {"name": s["name"], **extras(s)}
        self.schedule = {"name": s["name"], "interval": built.interval, **built.derived, **extras(s, "interval")}
        self.warmup_steps = built.warmup_steps  # for the header: warmup_epochs made steps
        if self.strategy == "fsdp":  # what fit would refuse under fsdp, refused before any file exists
            amp = AMP_DTYPES.get(t.get("amp"))
            with_key("train.strategy", lambda _: check_fsdp(self.optimizer, self.scheduler, amp), "fsdp")
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.cfg = cfg
        self.epochs, self.patience, self.monitor = t["epochs"], t["early_stopping"], t["monitor"]
        # How the loop trains: the same frozen settings fit() makes from its keywords.
        self.settings = with_key("train", lambda _: FitSettings(
            loss=t["loss"], optimizer=self.optimizer, lr=o.get("lr"), weight_decay=o.get("weight_decay"),
            scheduler=self.scheduler, epochs=t["epochs"], batch_size=t["batch_size"], metrics=t["metrics"],
            device=self.device, seed=t["seed"], grad_accum=t["grad_accum"], clip_grad_norm=t.get("clip_grad_norm"),
            amp=t.get("amp"), nonfinite=t["nonfinite"], strategy=self.strategy,
            config={**cfg, INFERENCE: task.inference()}), None)

    @staticmethod
    def _folder(out: str | os.PathLike | None, cfg: Mapping[str, Any]) -> tuple[Path, bool]:
        """The run folder and whether it must be created with a unique suffix."""
        multi = torchrun_rank() is not None
        if out is not None:
            check_writable(out, "out")
            # Under torchrun every rank names the same folder, and a restarted attempt finds its own.
            if not multi:
                ensure_empty(out, "out", ", or continue it (resume=)")
            return Path(out), False
        check_writable("runs", "the default run folder under")
        name = f"{short(cfg['data']['name'])}-{short(cfg['model']['name'])}-{cfg['optimizer']['name']}"
        if not multi:
            return Path("runs") / f"{name}-{stamp()}", True
        # Every rank must use the same folder, a restarted attempt too: rank 0's time, kept in
        # torchrun's store (without one, torchrun's run id, which every rank shares).
        path = agreed("run-folder", lambda: str(free_name(Path("runs") / f"{name}-{stamp()}")))
        return (Path(path) if path else Path("runs") / f"{name}-{os.environ['TORCHELASTIC_RUN_ID'][:12]}"), False

    @property
    def is_main_process(self) -> bool:
        """Rank 0 (or the only process): the one that writes files and prints."""
        return torchrun_rank() in (None, 0)

    _CONFIG_NOTE = ": the resolved config of this run. Re-run it with: optiloop train --config config.toml"

    def open_folder(self) -> RunFolder:
        """Create and lock the run folder; a new run's config.toml is written now, a resumed
        run's once its checkpoint is accepted (once; ``train`` calls it if you did not)."""
        if getattr(self, "folder", None) is None:
            folder = RunFolder.create(self.path, unique=self.unique)
            if self.is_main_process:
                folder.lock(new=self.resume is None and torchrun_rank() is None)
                if self.resume is None:
                    folder.write_config(self.cfg, self._CONFIG_NOTE)
            self.folder = folder
        return self.folder

    def train(self, *, progress: bool = True, callbacks: Sequence[Callback] = ()) -> TrainingResult:
        """Train; the files so far are named in any error. Returns the run's figures. ``callbacks``
        join the run's own (a search's ``OptunaPruning``)."""
        try:
            return self._train(progress, callbacks)
        finally:
            if self.tracker is not None:  # the folder's files beside the MLflow run, also after a stop
                self.tracker.log_artifacts(self.folder.path)
            self.folder.release()

    def _train(self, progress: bool, callbacks: Sequence[Callback] = ()) -> TrainingResult:
        folder = self.open_folder()
        t, o = self.cfg["train"], self.cfg["optimizer"]
        # Per-step loss and LR (and the gradient norm when asked, or free from clipping): steps.csv.
        norm = bool(t.get("grad_norm"))
        extra: list[Any] = [TensorBoard(folder.path / "tensorboard", grad_norm=norm)] if t.get("tensorboard") else []
        if t.get("mlflow"):
            self.tracker = trackers.MLflow(None if t["mlflow"] is True else t["mlflow"], run_name=folder.path.name,
                                           grad_norm=norm, tags={"optiloop.run_folder": str(folder.path.resolve())})
            extra.append(self.tracker)
        if self.patience:
            extra.append(EarlyStopping(monitor=t["monitor"], patience=self.patience))
        if t.get("ema") is not None:
            extra.append(EMA(decay=t["ema"]))
        if t.get("swa") is not None:
            extra.append(SWA(start_epoch=t["swa"], swa_lr=t.get("swa_lr")))
        extra += callbacks
        rec = run_callbacks(folder, monitor=t["monitor"], checkpoint_every=t.get("checkpoint_every"),
                            checkpoint_seconds=t["checkpoint_seconds"], grad_norm=norm,
                            config=self.cfg if self.changed else None, note=self._CONFIG_NOTE, extra=extra)
        t0 = time.perf_counter()
        with files_so_far(folder):
            history = run_fit(
                self.model, self.task.train_data, self.task.val_data, replace(self.settings, progress=progress),
                callbacks=rec.callbacks, resume=None if self.resume is None or self.from_start else str(self.resume),
                force_resume=self.force_resume)
        seconds = time.perf_counter() - t0
        best = best_row(history, rec)
        lr = f"{o['lr']:g}" if "lr" in o else "default"
        classification = self.task.preprocessing.task == "classification"
        title = f"{folder.path.name}: {o['name']} lr {lr}, {self.cfg['scheduler']['name']}"
        finish_run(folder, history, rec, title=title,
                   summary=self._summary(history, best, rec.info, seconds) if rec.info.is_main else {},
                   class_report=self._class_report if classification else None)
        return TrainingResult(folder, history, best, rec.info.stop_reason, seconds, rec.info.is_main)

    def _class_report(self, folder: RunFolder) -> dict[str, Any]:
        """Confusion matrix and per-class figures on the validation split, with the weights
        ``predict`` uses (best.pt): written as files, returned for summary.json."""
        from ..classification import run_class_report  # only classification runs count classes

        raw, classes = self.task.raw, self.task.preprocessing.classes
        run = load(folder.path)
        with warnings.catch_warnings():  # the header said what the validation rows need already
            warnings.simplefilter("ignore", DataWarning)
            report = run_class_report(run, raw.X_val, np.asarray(classes, dtype=object)[raw.y_val],
                                      where="validation")
        folder.write_class_report(report, title=f"{folder.path.name}: validation split, epoch {run.epoch} "
                                  f"({run.checkpoint.name}), accuracy {report.accuracy:.4f}")
        return {"checkpoint": run.checkpoint.name, "epoch": run.epoch, **report.to_dict()}

    def _summary(self, history, best, info, seconds) -> dict[str, Any]:
        cfg, task, prep = self.cfg, self.task, self.task.preprocessing
        out: dict[str, Any] = {
            "run": self.folder.path.name,
            "data": {"name": cfg["data"]["name"], "task": prep.task, "train_samples": len(task.train_data[0]),
                     "val_samples": len(task.val_data[0]), "features": len(prep.features),
                     "classes": len(prep.classes) or None, "target": prep.target,
                     "labels": prep.classes or None, "feature_names": prep.features},
            "model": {"name": cfg["model"]["name"], "parameters": self.parameters},
            "optimizer": cfg["optimizer"]["name"], "scheduler": cfg["scheduler"]["name"],
            "epochs_run": len(history), "epochs_max": cfg["train"]["epochs"],
            "early_stopping": self.patience or None,
            "stop_reason": info.stop_reason,
            "monitor": cfg["train"]["monitor"],
            "best": dict(best), "final": dict(history.rows[-1]),
            "seconds": round(seconds, 3), "device": info.device, "world_size": info.world_size,
            "versions": versions(),
        }
        if prep.y_scaler is not None:
            out["target_standardized"] = {"mean": float(prep.y_scaler.mean_[0]),
                                          "std": float(prep.y_scaler.scale_[0])}
        return out
