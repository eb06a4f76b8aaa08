"""A run: built from a config, trained into a folder of files, loaded back to make predictions.

- :func:`build_task` is the one way from a resolved config (``config.resolve``) to what training
  needs: the data set, the train / validation split, the preprocessing fitted on the train split
  (``optiloop.preprocessing``: scikit-learn's ``StandardScaler``), the model, the default loss and
  metrics. ``optiloop train``, ``eval``, ``predict``, ``compare`` and ``lr-find`` all start there.
- :class:`TrainingRun` is ``optiloop train`` as a library: everything built and checked first,
  then the folder, ``fit``, and the run's files.
- :class:`RunFolder` is the one writer of a run's files (config.toml, history.csv, steps.csv,
  curves.png, summary.json, and for classification confusion_matrix.png / .csv and
  per_class.csv) into a folder that was new or empty: runs are never overwritten.
- :func:`load` brings a run back as a :class:`Run` that predicts on new rows. Everything it needs
  (preprocessing statistics, feature names and order, the original labels, the task, the model's
  constructor and arguments) travels in the checkpoint, under ``config["inference"]``, as plain
  data: checkpoints stay loadable with ``torch.load(weights_only=True)``.

Example:
    >>> from optiloop.config import resolve
    >>> task = build_task(resolve(sets=["data.name=wine"]))
    >>> task.description, task.loss, task.metrics
    ('wine (142 train / 36 val, classification), mlp', 'cross_entropy', ['accuracy'])
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .callbacks import Callback
from .datasets import Dataset, Split, is_user_function, labels, load_dataset, read_table, split
from .errors import OptiloopError
from .files import LOCK_NAME, TEMP_SUFFIX, FolderLock, check_writable, write_text
from .preprocessing import Preprocessing

INFERENCE = "inference"  # the key of the checkpoint config that holds what applying the model needs


def with_key(key: str, fn: Callable[[Any], Any], value: Any) -> Any:
    """Call a library check and put the config key in front of its message."""
    try:
        return fn(value)
    except OptiloopError as e:
        raise OptiloopError(f"{key}: {e}") from None


# --- the task: config -> data -> split -> preprocessing -> model, loss, metrics ----------------
@dataclass
class Task:
    """What a run trains on, built from a resolved config by :func:`build_task`.

    Attributes:
        config: the config it was built from, completed: ``data.name`` absolute for files,
            ``data.task``, ``train.loss`` and ``train.metrics`` filled in.
        dataset, raw: the data set and its raw train / validation split.
        preprocessing: fitted on the train split.
        train_data, val_data: ``(inputs, targets)`` ready for ``fit``.
        loss, metrics, batch_size: the training settings.
    """

    config: dict[str, Any]
    dataset: Dataset
    raw: Split
    preprocessing: Preprocessing
    train_data: tuple[np.ndarray, np.ndarray]
    val_data: tuple[np.ndarray, np.ndarray]
    loss: str
    metrics: list[str]
    batch_size: int

    def new_model(self) -> nn.Module:
        """A freshly initialised model (seed the RNG first for reproducible weights)."""
        from .config import extras
        from .models import build_model

        m = self.config["model"]
        return build_model(m["name"], len(self.preprocessing.features), self.preprocessing.out_features,
                           **extras(m))

    @property
    def description(self) -> str:
        """e.g. ``digits (1438 train / 359 val, classification), mlp``."""
        return (f"{self.dataset.name} ({len(self.train_data[0])} train / {len(self.val_data[0])} val, "
                f"{self.dataset.task}), {self.config['model']['name']}")

    def inference(self) -> dict[str, Any]:
        """What applying the model needs, as plain data: it goes into every checkpoint."""
        from .config import extras

        m = self.config["model"]
        return {"preprocessing": self.preprocessing.state_dict(),
                "model": {"name": m["name"], "in_features": len(self.preprocessing.features),
                          "out_features": self.preprocessing.out_features, "options": extras(m)}}


def build_task(cfg: Mapping[str, Any]) -> Task:
    """Load the data and make the split, preprocessing, model, loss and metrics a resolved config
    (``config.resolve``) describes. Every problem is one line that names its config key.

    Example:
        >>> from optiloop.config import resolve
        >>> t = build_task(resolve(sets=["data.name=diabetes"]))
        >>> t.loss, t.metrics, t.preprocessing.task, len(t.train_data[0]) + len(t.val_data[0])
        ('mse', ['mae'], 'regression', 442)
    """
    from .metrics import get_loss, resolve_metric

    cfg = copy.deepcopy(dict(cfg))
    d, t = cfg["data"], cfg["train"]
    if not is_user_function(d["name"]) and Path(d["name"]).suffix.lower() in (".csv", ".npz"):
        d["name"] = str(Path(d["name"]).resolve())  # re-runnable from any folder
    ds = load_dataset(d["name"], target=d.get("target"), task=d.get("task", "auto"))
    d["task"] = ds.task
    raw = split(ds, val_fraction=d["val_fraction"], seed=d["seed"])
    prep = Preprocessing.fit(ds, raw.X_train, raw.y_train, standardize=d.get("standardize", True))
    regression = ds.task == "regression"
    t.setdefault("loss", "mse" if regression else "cross_entropy")
    t.setdefault("metrics", ["mae"] if regression else ["accuracy"])
    with_key("train.loss", get_loss, t["loss"])
    for m in t["metrics"]:
        with_key("train.metrics", resolve_metric, m)
    task = Task(config=cfg, dataset=ds, raw=raw, preprocessing=prep,
                train_data=(prep.inputs(raw.X_train, ds.name), _targets(prep, raw.y_train)),
                val_data=(prep.inputs(raw.X_val, ds.name), _targets(prep, raw.y_val)),
                loss=t["loss"], metrics=list(t["metrics"]), batch_size=t["batch_size"])
    task.new_model()  # a bad model key fails now, before any folder exists
    return task


def _targets(prep: Preprocessing, y: np.ndarray) -> np.ndarray:
    """A split's targets for training: class ids as they are, regression values standardized."""
    return y if prep.task == "classification" else prep.targets(y)


# --- run folders -------------------------------------------------------------------------------
def _candidates(path: Path):
    """``path``, then ``path-2``, ``path-3`` ... (default names never collide)."""
    yield path
    for i in range(2, 1000):
        yield path.with_name(f"{path.name}-{i}")


def free_name(path: str | os.PathLike) -> Path:
    """``path``, or the first of ``path-2``, ``path-3`` ... that does not exist."""
    for candidate in _candidates(Path(path)):
        if not candidate.exists():
            return candidate
    raise OptiloopError(f"cannot find a free folder name next to {path}")


def _leftover(name: str) -> bool:
    """optiloop's own bookkeeping (a lock, a killed writer's temporary): not a result."""
    return name == LOCK_NAME or name.endswith(TEMP_SUFFIX)


def ensure_empty(path: str | os.PathLike, what: str = "out", hint: str = "") -> Path:
    """Refuse a ``path`` that exists and is not an empty folder (results are never overwritten).
    ``what`` names the argument in the message; ``hint`` is appended to it. A folder holding only
    optiloop's own leftovers (a lock file, a temporary) counts as empty."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(not _leftover(p.name) for p in path.iterdir())):
        raise OptiloopError(f"{what} {path} already exists and is not an empty folder; choose a new "
                            f"folder (results are never overwritten){hint}")
    return path


def stamp() -> str:
    """The time part of default folder names: ``20250131-142502``."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def short(spec: str) -> str:
    """A readable piece of a folder name: 'digits', 'mydata' for mydata.csv, 'fn' for pkg.mod:fn."""
    s = spec.rpartition(":")[2] if ":" in spec and not Path(spec).exists() else Path(spec).stem
    return "".join(c if c.isalnum() or c in "_" else "-" for c in s)[:24] or "data"


class RunFolder:
    """A run's folder and the files in it, written atomically.

    Example:
        >>> import tempfile
        >>> folder = RunFolder.create(Path(tempfile.mkdtemp()) / "demo", unique=True)
        >>> folder.write_summary({"best": {"val_loss": 0.1}}); folder.files()
        ['summary.json']
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock: FolderLock | None = None

    def lock(self, *, new: bool, what: str = "out") -> RunFolder:
        """Hold the folder for this process (a second optiloop process is refused in one line)
        before anything is written in it; ``new``: then check it is still empty, since another
        run may have filled it between our check and our lock."""
        if self._lock is None:
            self._lock = FolderLock(self.path).acquire()
            if new:
                try:
                    ensure_empty(self.path, what)
                except OptiloopError:
                    self.release()
                    raise
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @classmethod
    def create(cls, path: str | os.PathLike, *, unique: bool) -> RunFolder:
        """Make the folder. ``unique``: ``path`` or the first free ``path-N``, created atomically
        (two runs started in the same second get different folders); otherwise ``path`` itself,
        which the caller checked with ``ensure_empty`` (or is resuming)."""
        path = Path(path)
        if not unique:
            path.mkdir(parents=True, exist_ok=True)
            return cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for candidate in _candidates(path):
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                continue
        raise OptiloopError(f"cannot find a free run folder name next to {path}")

    def write_config(self, cfg: Mapping[str, Any], note: str) -> None:
        """config.toml: ``cfg`` as TOML under a comment line (``note``) saying how to re-run it."""
        import tomli_w

        from . import __version__

        write_text(self.path / "config.toml", f"# optiloop {__version__}{note}\n\n" + tomli_w.dumps(dict(cfg)))

    def write_history(self, history: Any) -> None:
        history.to_csv(self.path / "history.csv")

    def write_curves(self, history: Any, *, best_epoch: int | None, title: str) -> None:
        from .plots import plot_history  # matplotlib: imported when a picture is drawn

        plot_history(history, self.path / "curves.png", best_epoch=best_epoch, title=title)

    def write_steps(self, history: Any) -> None:
        """steps.csv: the recorded per-step rows (``History.steps``), when there are any."""
        if len(history.steps):
            history.steps.to_csv(self.path / "steps.csv")

    def write_class_report(self, report: Any, *, title: str | None = None) -> list[str]:
        """confusion_matrix.png / .csv and per_class.csv of a ``classification.ClassReport``."""
        return report.write(self.path, title=title)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_text(self.path / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    def files(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if not p.name.startswith("."))


def versions() -> dict[str, str]:
    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "optiloop": __version__}


# --- optiloop train as a library --------------------------------------------------------------
def torchrun_rank() -> int | None:
    """This process's rank when torchrun launched several; None for a plain process."""
    from .distributed import launched_by_torchrun

    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"])
    return None


def _restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


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


class _RunFiles(Callback):
    """The run's files as training goes: config.toml once a resume is accepted (with the settings
    it changed), history.csv after every epoch (a killed run keeps its epochs)."""

    order = 150  # after Checkpoint: history.csv never lists an epoch that last.pt cannot resume
    main_process_only = True

    def __init__(self, folder: RunFolder, config: Mapping[str, Any] | None, note: str):
        self.folder, self.config, self.note = folder, config, note

    def on_fit_start(self, state, logs):
        if self.config is not None:  # fit has loaded the checkpoint: the resume is accepted
            self.folder.write_config(self.config, self.note)

    def on_epoch_end(self, state, logs):
        self.folder.write_history(state.history)
        self.folder.write_steps(state.history)  # StepHistory (order 90) has handed the epoch's steps over

    def on_exception(self, state, error):
        from .errors import TrainingInterrupted

        if isinstance(error, TrainingInterrupted) and len(state.history):  # a stop asked for: show it
            self.folder.write_curves(state.history, best_epoch=None, title=f"{self.folder.path.name} "
                                     f"(stopped by {error.signal_name} at epoch {error.epoch})")


# Settings a resume may change, by what they change: how the run is carried out (applied and
# recorded), what each step computes (only with force_resume), or what the saved state is.
_FREE = {"train.device", "train.checkpoint_every", "train.checkpoint_seconds", "train.nonfinite",
         "train.tensorboard", "train.grad_norm"}
_FORCED_SECTIONS = ("data",)
_FORCED = {"train.epochs", "train.early_stopping", "train.batch_size", "train.grad_accum",
           "train.clip_grad_norm", "train.amp", "train.strategy"}


def _flat(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in cfg.items() if isinstance(section, Mapping) for k, v in section.items()}


def resume_changes(run_dir: Path, cfg: Mapping[str, Any], force: bool) -> list[str]:
    """The settings ``cfg`` changes from the run's own config.toml, checked before anything is
    written: refused when they define the saved state (or need ``force``); else returned."""
    from .config import resolve

    saved_file = run_dir / "config.toml"
    if not saved_file.is_file():
        return []
    old, new = _flat(resolve(saved_file)), _flat(cfg)
    diffs = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    what = {k: f"{k} {a!r} -> {b!r}" for k, (a, b) in diffs.items()}
    fixed = [k for k in diffs if k not in _FREE and k not in _FORCED and not k.startswith(_FORCED_SECTIONS)]
    if fixed:
        raise OptiloopError(f"cannot resume {run_dir}: {'; '.join(what[k] for k in fixed)}: these define the "
                            f"saved state; start a new run from {run_dir}/config.toml with the new values")
    forced = [k for k in diffs if k not in _FREE]
    if forced and not force:
        raise OptiloopError(f"cannot resume {run_dir}: settings changed ({'; '.join(what[k] for k in forced)}); "
                            "pass force_resume=True to continue anyway")
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
        from .callbacks import Monitor
        from .config import extras
        from .distributed import launched_world, resolve_strategy
        from .loop import AMP_DTYPES, check_fsdp, logged_keys, resolve_device, seed_everything
        from .optim import build_optimizer
        from .schedules import build_scheduler

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
        log_keys = logged_keys(task.metrics)
        with_key("train.monitor", lambda m: Monitor(m).check_available(log_keys), t["monitor"])
        self.device = with_key("train.device", resolve_device, t["device"])
        self.strategy = t.get("strategy") or "auto"
        with_key("train.strategy", lambda s: resolve_strategy(s, launched_world()), self.strategy)
        if t.get("tensorboard"):  # a missing package fails now, before the run folder exists
            from .loggers import require_tensorboard

            with_key("train.tensorboard", lambda _: require_tensorboard(), True)
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
        # step / multistep / exponential have no torch default for their one required argument:
        # record the one build_scheduler derived from the run, so config.toml says what ran.
        for key, value in built.recorded.items():
            s.setdefault(key, value)
        self.scheduler = {"name": s["name"], **extras(s)}
        self.schedule = {"name": s["name"], "interval": built.interval, **built.derived, **extras(s, "interval")}
        if self.strategy == "fsdp":  # what fit would refuse under fsdp, refused before any file exists
            amp = AMP_DTYPES.get(t.get("amp"))
            with_key("train.strategy", lambda _: check_fsdp(self.optimizer, self.scheduler, amp), "fsdp")
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.cfg = cfg
        self.epochs, self.patience, self.monitor = t["epochs"], t["early_stopping"], t["monitor"]

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
        from .distributed import agreed

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

    def train(self, *, progress: bool = True) -> TrainingResult:
        """Train; the files so far are named in any error. Returns the run's figures."""
        try:
            return self._train(progress)
        finally:
            self.folder.release()

    def _train(self, progress: bool) -> TrainingResult:
        from .callbacks import EarlyStopping
        from .checkpoint import Checkpoint
        from .loggers import StepHistory, TensorBoard
        from .loop import fit

        folder = self.open_folder()
        t, o = self.cfg["train"], self.cfg["optimizer"]
        ckpt = Checkpoint(folder.path, monitor=t["monitor"], every_n_steps=t.get("checkpoint_every"),
                          every_seconds=t["checkpoint_seconds"])
        info = RunInfo()
        files = _RunFiles(folder, self.cfg if self.changed else None, self._CONFIG_NOTE)
        # Per-step loss and LR (and the gradient norm when asked, or free from clipping): steps.csv.
        norm = bool(t.get("grad_norm"))
        callbacks: list[Any] = [ckpt, info, files, StepHistory(grad_norm=norm)]
        if t.get("tensorboard"):
            callbacks.append(TensorBoard(folder.path / "tensorboard", grad_norm=norm))
        if self.patience:
            callbacks.insert(0, EarlyStopping(monitor=t["monitor"], patience=self.patience))
        t0 = time.perf_counter()
        try:
            history = fit(
                self.model, self.task.train_data, val_data=self.task.val_data, loss=t["loss"],
                optimizer=self.optimizer, lr=o.get("lr"), weight_decay=o.get("weight_decay"),
                scheduler=self.scheduler, epochs=t["epochs"], batch_size=t["batch_size"],
                metrics=t["metrics"], callbacks=callbacks, device=self.device, seed=t["seed"],
                grad_accum=t["grad_accum"], clip_grad_norm=t.get("clip_grad_norm"), amp=t.get("amp"),
                nonfinite=t["nonfinite"], config={**self.cfg, INFERENCE: self.task.inference()},
                resume=None if self.resume is None or self.from_start else str(self.resume),
                force_resume=self.force_resume, progress=progress, strategy=self.strategy,
            )
        except OptiloopError as e:  # the same kind of error (a DiskError stays one), with where to look
            raise type(e)(f"{e} (files so far are in {folder.path}/)") from None
        seconds = time.perf_counter() - t0
        best = history.rows[ckpt.best_epoch - 1] if ckpt.best_epoch else history.rows[-1]
        if info.is_main:
            lr = f"{o['lr']:g}" if "lr" in o else "default"
            folder.write_curves(history, best_epoch=ckpt.best_epoch,
                                title=f"{folder.path.name}: {o['name']} lr {lr}, {self.cfg['scheduler']['name']}")
            summary = self._summary(history, best, info, seconds)
            if self.task.preprocessing.task == "classification":
                summary["validation_classes"] = self._class_report(folder)
            folder.write_summary(summary)
        return TrainingResult(folder, history, dict(best), info.stop_reason, seconds, info.is_main)

    def _class_report(self, folder: RunFolder) -> dict[str, Any]:
        """Confusion matrix and per-class figures on the validation split, with the weights
        ``predict`` uses (best.pt): written as files, returned for summary.json."""
        from .classification import run_class_report

        raw, classes = self.task.raw, self.task.preprocessing.classes
        run = load(folder.path)
        report = run_class_report(run, raw.X_val, np.asarray(classes, dtype=object)[raw.y_val], where="validation")
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


# --- a run loaded back -------------------------------------------------------------------------
class _OriginalUnits(nn.Module):
    """The model with its regression output put back into the target's units."""

    def __init__(self, model: nn.Module, mean: float, scale: float):
        super().__init__()
        self.model, self.mean, self.scale = model, mean, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale + self.mean


class Run:
    """A trained run, ready to apply to new rows (``optiloop.load`` makes one).

    Attributes:
        model: the trained module, in eval mode, on the CPU.
        preprocessing: the run's :class:`Preprocessing` (features, labels, scalers).
        config: the run's resolved config.
        checkpoint: the file the weights came from; ``epoch``: the epoch they are from.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, config: dict[str, Any],
                 checkpoint: Path, epoch: int | None):
        self.model, self.preprocessing, self.config = model.eval(), preprocessing, config
        self.checkpoint, self.epoch = checkpoint, epoch

    @property
    def task(self) -> str:
        return self.preprocessing.task

    @property
    def features(self) -> list[str]:
        return list(self.preprocessing.features)

    @property
    def classes(self) -> list[Any]:
        return list(self.preprocessing.classes)

    def __repr__(self) -> str:
        return (f"Run({str(self.checkpoint)!r}, {self.task}, {len(self.features)} features"
                + (f", classes {self.classes}" if self.classes else "") + ")")

    def _outputs(self, X: Any, batch_size: int, where: str = "X") -> torch.Tensor:
        from .inference import predict

        return predict(self.model, self.preprocessing.inputs(X, where), batch_size=batch_size)

    def predict(self, X: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Predicted labels (the original values) for classification, the value in the target's
        original units for regression; one per row.

        Args:
            X: a DataFrame or a mapping of columns (matched by name: order free, extra columns such
                as the label ignored), or an array / tensor with the features in training order.
        """
        return np.asarray(self.preprocessing.labels_of(self._outputs(X, batch_size)))

    def predict_proba(self, X: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities, one row per input, columns in the order of ``classes``."""
        if self.task != "classification":
            raise OptiloopError("predict_proba is for classification runs; this run is a regression "
                                "(predict gives values in the target's units)")
        return self.preprocessing.probabilities(self._outputs(X, batch_size))

    def evaluate(self, X: Any, y: Any, *, batch_size: int = 256, device: str = "cpu",
                 where: str = "data") -> dict[str, float]:
        """The run's loss and metrics on rows ``X`` with labels ``y`` (original values).
        Regression figures are in the target's original units."""
        from .loop import evaluate

        prep = self.preprocessing
        inputs, targets = prep.inputs(X, where), prep.targets(y, where)
        model: nn.Module = self.model
        if prep.y_scaler is not None:  # compare in the user's units, not the standardized ones
            targets = np.asarray(y, dtype=np.float32).reshape(-1)
            model = _OriginalUnits(self.model, float(prep.y_scaler.mean_[0]), float(prep.y_scaler.scale_[0]))
        t = self.config["train"]
        loss = t.get("loss", "mse" if prep.task == "regression" else "cross_entropy")
        metrics = t.get("metrics", ["mae"] if prep.task == "regression" else ["accuracy"])
        try:
            return evaluate(model, (inputs, targets), loss=loss, metrics=metrics, batch_size=batch_size,
                            device=device)
        finally:
            self.model.cpu().eval()

    def validation_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The run's own validation split, rebuilt from its data (which must still be there):
        raw features and original labels."""
        d = self.config["data"]
        ds = load_dataset(d["name"], target=d.get("target"), task=d["task"])
        raw = split(ds, val_fraction=d["val_fraction"], seed=d["seed"])
        y = np.asarray(ds.classes, dtype=object)[raw.y_val] if ds.task == "classification" else raw.y_val
        return raw.X_val, y


def load(run: str | os.PathLike, *, checkpoint: str = "best") -> Run:
    """Load a run folder (or one of its checkpoints) as a :class:`Run` that predicts on new rows.

    Only the checkpoint is read: the training data may be gone. Loading runs no code from the file
    (``weights_only=True``); a run whose model is ``package.module:function`` imports that module.

    Args:
        run: a run folder (``runs/NAME``) or a ``.pt`` file in one.
        checkpoint: in a folder, ``"best"`` (best.pt, else last.pt) or ``"last"``.

    Example:
        >>> model = ol.load("runs/NAME")                               # doctest: +SKIP
        >>> model.predict(df), model.predict_proba(df), model.classes  # doctest: +SKIP
    """
    from .checkpoint import load_checkpoint, load_model_weights
    from .checkpoint_checks import check_run_checkpoint
    from .models import build_model

    path = Path(run)
    sharded = (path / ".metadata").is_file()  # a sharded (FSDP) checkpoint folder itself
    if path.is_dir() and not sharded:
        if checkpoint not in ("best", "last"):
            raise OptiloopError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        names = ["best.pt", "last.pt"] if checkpoint == "best" else ["last.pt"]
        found = [path / n for name in names for n in (name, name.removesuffix(".pt"))  # X.pt, or X/ (FSDP)
                 if (path / n).exists()]
        if not found:
            raise OptiloopError(f"{path} holds no {' or '.join(names)}: is it a run folder of optiloop "
                                "train? (a compare run keeps checkpoints only when asked: checkpoints=True)")
        path = found[0]
        sharded = path.is_dir()
    elif not path.exists():
        raise OptiloopError(f"no run folder or checkpoint at {path}")
    if sharded:  # consolidated on this process: the model whole, no optimizer
        from .sharded import read_consolidated

        ckpt = read_consolidated(path)
    else:
        ckpt = load_checkpoint(path)
    check_run_checkpoint(ckpt, path)  # each part of the type optiloop writes, before any is used
    raw = ckpt["config"]
    cfg = {k: v for k, v in raw.items() if k != INFERENCE}
    info = raw.get(INFERENCE)
    if info is None:  # a run from before checkpoints carried their preprocessing: rebuild it
        from .config import validate

        task = build_task(validate(cfg))
        info, cfg = task.inference(), task.config
    m = info["model"]
    model = build_model(m["name"], m["in_features"], m["out_features"], **m["options"])
    load_model_weights(model, ckpt["model"])
    return Run(model, Preprocessing.from_state_dict(info["preprocessing"]), cfg, path, ckpt.get("epoch"))


# --- new rows from files (the command line's --data) ------------------------------------------
def rows_to_use(run: Run, data: str | None, *, target: str | None, need_labels: bool = False,
                hint: str) -> tuple[Any, np.ndarray | None]:
    """The command line's rows: ``--data``'s, or without it the run's own validation split; ``hint``
    ends the error when that split cannot be rebuilt (its data has moved)."""
    if data is None:
        try:
            return run.validation_rows()
        except OptiloopError as e:
            raise OptiloopError(f"cannot rebuild the validation split of {run.checkpoint} ({e}); {hint}") from None
    return read_rows(data, run, target=target, need_labels=need_labels, what="--data", target_arg="--target")


def read_rows(spec: str, run: Run, *, target: str | None = None, need_labels: bool = False,
              what: str = "data", target_arg: str = "target") -> tuple[Any, np.ndarray | None]:
    """Rows to apply ``run`` to, from a CSV (columns by name; the label column optional), an
    ``.npz`` (``X`` by position, ``y`` optional), a built-in data set or ``package.module:function``.
    ``what`` and ``target_arg`` name the arguments in error messages (the CLI: --data, --target).

    Returns:
        (the features: a mapping of columns or an array, the labels in original values or None).
    """
    target = target or run.preprocessing.target
    where = f"{what} {spec}"
    if spec.lower().endswith(".csv"):
        table = read_table(Path(spec), what)
        y = labels(table.pop(target)) if target in table else None
        if need_labels and y is None:
            raise OptiloopError(f"{where}: no label column {target!r} to evaluate against; columns: "
                                f"{', '.join(table)} (name it with {target_arg})")
        return table, y
    if spec.lower().endswith(".npz"):
        path = Path(spec)
        if not path.is_file():
            raise OptiloopError(f"{what}: no .npz file at {path}")
        with np.load(path, allow_pickle=False) as z:  # no pickles: loading data runs no code
            if "X" not in z.files or (need_labels and "y" not in z.files):
                raise OptiloopError(f"{where}: needs array X{' and y' if need_labels else ''}; it has: "
                                    f"{', '.join(z.files) or 'none'}")
            X = z["X"].reshape(len(z["X"]), -1) if z["X"].ndim > 2 else z["X"]
            return X, (z["y"].reshape(-1) if "y" in z.files else None)
    ds = load_dataset(spec, task=run.task)
    if len(ds.features) != len(run.features) or set(ds.features) != set(run.features):
        missing = [f for f in run.features if f not in ds.features]
        raise OptiloopError(f"{where} has {len(ds.features)} features but not the run's {len(run.features)}"
                            f" (missing: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''})")
    table = {f: ds.X[:, i] for i, f in enumerate(ds.features)}
    y = np.asarray(ds.classes, dtype=object)[ds.y] if ds.task == "classification" else ds.y
    return table, y


def prediction_table(run: Run, X: Any, *, batch_size: int = 1024, where: str = "X"
                     ) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of a predictions file: the predicted label (or value), then one
    probability column per class (``proba_<label>``) for classification."""
    prep = run.preprocessing
    outputs = run._outputs(X, batch_size, where)
    predicted = prep.labels_of(outputs)
    if prep.task != "classification":
        return [prep.target], [[_cell(v)] for v in predicted]
    proba = prep.probabilities(outputs)
    header = [prep.target, *(f"proba_{c}" for c in prep.classes)]
    return header, [[_cell(label), *(_cell(p) for p in row)] for label, row in zip(predicted, proba, strict=True)]


def _cell(v: Any) -> Any:
    """Numbers with every digit a float32 has (so a file round-trips); labels as they are."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.9g}"
    return v.item() if isinstance(v, np.generic) else v


def write_csv_rows(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file, atomically."""
    import csv

    from .files import atomic_open

    with atomic_open(path, "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
