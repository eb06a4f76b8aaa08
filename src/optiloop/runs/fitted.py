"""``fit(..., out="runs/NAME")``: the Python door into the run folder ``optiloop train`` writes.

The same folder and files (config.toml, history.csv after every epoch, steps.csv, best.pt /
last.pt under the run lock, curves.png, summary.json, and for classification the confusion matrix
and per-class figures), written by the same callbacks (``runs.record``); ``fit(..., resume=
"runs/NAME")`` continues it in place, exactly.

What the command line knows from its config, fit records from its arguments, as far as they are
plain data: the model's recipe (``optiloop.recipes``: an import path and its arguments, checked
against the weights), the loss and metric names, the optimizer and scheduler names, and, when
the data are ``(X, y)`` arrays and the default step trains on them, rows of features (``x0``,
``x1`` ...) with class ids as labels (a classification loss on integer targets) or a value
(regression). ``optiloop predict`` / ``eval`` / ``ol.load`` then apply the run to new rows;
where that is impossible they say in one line what is missing. ``optiloop export`` needs
nothing but the weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..callbacks import Callback, CallbackList, EarlyStopping
from ..checkpoint import Checkpoint, load_checkpoint
from ..classification import class_report
from ..config import FIXED, FORCED, resume_policy, tomllib
from ..distributed import launched_world
from ..errors import OptiloopError, SettingsChanged
from ..files import check_writable
from ..history import History
from ..inference import predict
from ..preprocessing import Preprocessing
from ..recipes import checked_recipe
from ..settings import FitSettings
from ..training_state import load_model_weights
from .folder import RunFolder, ensure_empty, versions
from .record import RunCallbacks, best_row, files_so_far, finish_run, run_callbacks
from .task import INFERENCE

MADE_BY = "optiloop.fit"  # config.toml's [fit] made_by: a folder fit(resume=) continues as a run folder
NOTE = (": the settings of a run made by optiloop.fit(out=...). Continue it from Python with "
        "fit(..., resume=<this folder>)")
CLASS_LOSSES = ("cross_entropy", "nll")


def is_fit_run(path: Any) -> bool:
    """A run folder ``fit(out=...)`` made (its config.toml says so)."""
    return saved_config(path).get("fit", {}).get("made_by") == MADE_BY


def saved_config(path: Any) -> dict[str, Any]:
    """A run folder's config.toml as data ({} when there is none or it does not read)."""
    if not isinstance(path, (str, os.PathLike)):
        return {}
    file = Path(path) / "config.toml"
    try:
        with open(file, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def wants_folder(out: Any, resume: Any) -> bool:
    """Whether fit writes a run folder: ``out`` given, or ``resume`` is one fit made."""
    return out is not None or (resume is not None and is_fit_run(resume))


def fit_in_folder(run_fit: Callable[..., History], model: nn.Module, train_data: Any, val_data: Any,
                  settings: FitSettings, *, callbacks: Iterable[Callback] = (), out: str | os.PathLike | None = None,
                  resume: str | os.PathLike | None = None, force_resume: bool = False) -> History:
    """``fit`` writing a run folder: a new one (``out``, new or empty) or, with ``resume``, the
    one it continues. See ``optiloop.fit``'s ``out``. ``run_fit``: the loop's (``loop.run_fit``;
    handed in, since the loop calls this module)."""
    if not isinstance(model, nn.Module):
        raise OptiloopError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    main = launched_world().is_main
    user = list(callbacks)
    for cb in user:
        if not isinstance(cb, Callback):
            raise OptiloopError(f"callbacks must be ol.Callback instances, got {type(cb).__name__}")
    if out is not None and resume is not None and Path(out).resolve() != Path(resume).resolve():
        raise OptiloopError(f"resume={str(resume)!r} continues that run folder in place; drop out= (or give "
                            "the same folder)")
    if resume is not None:
        path = Path(resume)
        if not is_fit_run(path):
            raise OptiloopError(f"resume={str(resume)!r}: not a run folder of fit(out=...) (no config.toml "
                                f"saying so); a run of optiloop train continues with: optiloop train --resume {path}")
    else:
        check_writable(out, "out")
        path = Path(out)
        if main:  # under torchrun every rank names the folder; rank 0 alone checks, locks and writes
            ensure_empty(out, "out", ", or continue it (resume=)")
    # The checkpoint of the folder: a Checkpoint of the user's on this very folder (its timing),
    # else one like optiloop train's on the monitor the user's callbacks watch.
    own = next((cb for cb in user if isinstance(cb, Checkpoint) and cb.dir.resolve() == path.resolve()), None)
    watched = CallbackList(user).monitor()  # as the loop will find it: the History's monitor
    if own is not None:
        user.remove(own)
    monitor = watched.monitor if watched is not None else ("val_loss" if val_data is not None else "train_loss")
    rows = _Rows.of(train_data, val_data, settings)
    recipe = checked_recipe(model)
    config = _config(settings, model, recipe, monitor, user)
    settings = replace(settings, config={**(settings.config or {}), **config,
                                         INFERENCE: rows.inference(recipe)})
    saved = saved_config(path) if resume is not None else None
    if saved is not None:
        _check_changes(path, saved, config, force_resume)
    restart = resume is not None and not any((path / n).exists() for n in ("last.pt", "last.prev.pt"))

    folder = RunFolder.create(path, unique=False)
    if main:
        folder.lock(new=resume is None)
    try:
        if resume is None and main:
            folder.write_config(config, NOTE)
        rec = run_callbacks(folder, monitor=monitor, checkpoint=own, grad_norm=False,
                            config=config if saved is not None and saved != config else None,
                            note=NOTE)
        t0 = time.perf_counter()
        with files_so_far(folder):
            history = run_fit(model, train_data, val_data, settings, callbacks=[*user, *rec.callbacks],
                              resume=None if resume is None or restart else str(path), force_resume=force_resume)
        seconds = time.perf_counter() - t0
        summary = _summary(folder, history, rec, config, rows, recipe, model, user, seconds)
        classes = (lambda f: rows.class_report(f, model, rec)) if rows.task == "classification" else None
        finish_run(folder, history, rec, title=_title(folder, config), summary=summary, class_report=classes)
    finally:
        folder.release()
    return history


def _check_changes(path: Path, saved: Mapping[str, Any], config: Mapping[str, Any], force: bool) -> None:
    """A resume may change what the command line's may (``config.resume_policy``): how the run is
    carried out freely, its length, batch, accumulation, clipping and AMP with ``force_resume``,
    never the model, optimizer, scheduler, seed, loss, metrics or monitor (that is a new run)."""
    old, new = _flat(saved), _flat(config)
    diffs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    what = {k: f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diffs}
    policy = {k: FORCED if k == "train.clip_grad_value" else resume_policy(k) for k in diffs}
    fixed = [k for k in diffs if policy[k] == FIXED]
    if fixed:
        raise OptiloopError(f"cannot resume {path}: {'; '.join(what[k] for k in fixed)}: these define the saved "
                            "state; train a new run (out=) instead")
    forced = [k for k in diffs if policy[k] == FORCED]
    if forced and not force:
        raise SettingsChanged(path, "; ".join(what[k] for k in forced))


def _flat(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in cfg.items() if isinstance(section, Mapping) for k, v in section.items()}


# --- what the arguments say -------------------------------------------------------------------------
@dataclass
class _Rows:
    """The data as rows of features, when they are: ``(X, y)`` arrays trained by the default step.
    ``task`` None: they are not (``why``)."""

    task: str | None
    why: str
    X_val: Any = None
    y_val: Any = None
    width: int = 0  # features per row (the inputs flattened)
    shape: list[int] | None = None  # one input's shape
    classes: int = 0
    samples: tuple[int | None, int | None] = (None, None)  # train, validation

    @classmethod
    def of(cls, train: Any, val: Any, settings: FitSettings) -> _Rows:
        samples = (_length(train), _length(val))
        if not settings.default_step:
            return cls(None, "it was trained with a step of its own, so its inputs are not known as rows",
                       samples=samples)
        pair = _pair(train)
        if pair is None:
            return cls(None, f"it was trained on a {type(train).__name__}, not on (X, y) arrays", samples=samples)
        X, y = pair
        if not _floating(X) or X.ndim < 2:
            return cls(None, f"its inputs are {X.dtype} of shape {tuple(X.shape)}, not rows of numbers",
                       samples=samples)
        shape = list(X.shape[1:])
        width = math.prod(shape)
        vpair = _pair(val) if val is not None else None
        integer = not _floating(y) and str(y.dtype) not in ("bool", "torch.bool")
        loss = settings.loss if isinstance(settings.loss, str) else None
        if loss in CLASS_LOSSES and integer and y.ndim == 1:
            top = int(y.max()) if len(y) else 0
            if vpair is not None and len(vpair[1]):
                top = max(top, int(vpair[1].max()))
            return cls("classification", "", *(vpair or (None, None)), width, shape, top + 1, samples)
        if not integer and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            return cls("regression", "", *(vpair or (None, None)), width, shape, 0, samples)
        return cls(None, f"its targets ({y.dtype}, shape {tuple(y.shape)}) are neither class ids nor one value",
                   samples=samples)

    def preprocessing(self) -> Preprocessing | None:
        if self.task is None:
            return None
        classes = list(range(self.classes)) if self.task == "classification" else []
        return Preprocessing(self.task, [f"x{i}" for i in range(self.width)], "y", classes)

    def inference(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """What applying the model needs, as plain data (the checkpoint's config["inference"])."""
        prep = self.preprocessing()
        out: dict[str, Any] = {"model": dict(recipe), "preprocessing": prep.state_dict() if prep else None}
        if prep is None:
            out["no_rows"] = self.why
        elif len(self.shape or []) > 1:
            out["input_shape"] = list(self.shape)
        return out

    def class_report(self, folder: RunFolder, model: nn.Module, rec: RunCallbacks) -> dict[str, Any] | None:
        """Confusion matrix and per-class figures on the validation data, with the weights predict
        uses (best.pt, else last.pt); the model gets its own weights back afterwards."""
        if self.X_val is None:
            return None
        ckpt_path = next((p for p in (rec.checkpoint.best_path, rec.checkpoint.last_path) if p.is_file()), None)
        if ckpt_path is None:
            return None
        ckpt = load_checkpoint(ckpt_path)
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            load_model_weights(model, ckpt["model"])
            predicted = predict(model, self.X_val).argmax(dim=1).numpy()
        finally:
            model.load_state_dict(own)
        truth = self.y_val.cpu().numpy() if isinstance(self.y_val, torch.Tensor) else np.asarray(self.y_val)
        n = max(self.classes, int(predicted.max()) + 1)
        report = class_report(truth, predicted, list(range(n)))
        report.write(folder.path, title=f"{folder.path.name}: validation data, epoch {ckpt.get('epoch')} "
                     f"({ckpt_path.name}), accuracy {report.accuracy:.4f}")
        return {"checkpoint": ckpt_path.name, "epoch": ckpt.get("epoch"), **report.to_dict()}


def _floating(a: Any) -> bool:
    return a.dtype.is_floating_point if isinstance(a, torch.Tensor) else np.issubdtype(a.dtype, np.floating)


def _pair(data: Any) -> tuple[Any, Any] | None:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(a, (torch.Tensor, np.ndarray)) for a in data) and len(data[0]) == len(data[1]):
        return data[0], data[1]
    return None


def _length(data: Any) -> int | None:
    pair = _pair(data)
    if pair is not None:
        return len(pair[0])
    try:
        return len(data.dataset) if hasattr(data, "dataset") else None
    except TypeError:
        return None


def _name(spec: Any) -> Any:
    """An optimizer / scheduler given by name or dict as it is; a built one or a function by its
    class or function name (for people to read: it cannot be built from that)."""
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return {k: v for k, v in spec.items() if _plain_value(v)}
    if callable(spec) and not isinstance(spec, torch.optim.Optimizer) and hasattr(spec, "__qualname__"):
        return f"{spec.__module__}.{spec.__qualname__}"
    return f"{type(spec).__module__}.{type(spec).__qualname__} (built)"


def _plain_value(v: Any) -> bool:
    if isinstance(v, (bool, int, float, str)):
        return True
    return isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v)


def _config(s: FitSettings, model: nn.Module, recipe: Mapping[str, Any], monitor: str,
            user: list[Callback]) -> dict[str, Any]:
    """The run's settings as plain data: config.toml and the checkpoints' config."""
    opt = _name(s.optimizer)
    optimizer = dict(opt) if isinstance(opt, Mapping) else {"name": opt}
    for key in ("lr", "weight_decay"):
        if getattr(s, key) is not None:
            optimizer[key] = getattr(s, key)
    sched = _name(s.scheduler)
    scheduler = dict(sched) if isinstance(sched, Mapping) else {"name": sched or "constant"}
    stopping = next((cb for cb in user if isinstance(cb, EarlyStopping)), None)
    # loss and metrics by name only: eval applies them by name (a function is noted, not applied)
    loss = s.loss if s.step is None and isinstance(s.loss, str) else None
    train = {"epochs": s.epochs, "batch_size": s.batch_size, "loss": loss,
             "loss_function": _name(s.loss) if s.step is None and loss is None else None,
             "step": _name(s.step) if s.step is not None else None,
             "metrics": [m for m in s.metrics if isinstance(m, str)] if not isinstance(s.metrics, Mapping) else None,
             "monitor": monitor, "early_stopping": stopping.patience if stopping is not None else 0,
             "seed": s.seed, "grad_accum": s.grad_accum, "clip_grad_norm": s.clip_grad_norm,
             "clip_grad_value": s.clip_grad_value, "amp": s.amp, "device": str(s.device), "nonfinite": s.nonfinite}
    model_section = {"class": f"{type(model).__module__}.{type(model).__qualname__}", **recipe}
    cfg = {"fit": {"made_by": MADE_BY}, "model": model_section, "optimizer": optimizer, "scheduler": scheduler,
           "train": train}
    return _toml(cfg)


def _toml(value: Any) -> Any:
    """None dropped, tuples as lists: what TOML (and a weights-only checkpoint) holds."""
    if isinstance(value, Mapping):
        return {str(k): _toml(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml(v) for v in value if v is not None]
    return value


def _title(folder: RunFolder, config: Mapping[str, Any]) -> str:
    o = config["optimizer"]
    lr = f"{o['lr']:g}" if isinstance(o.get("lr"), (int, float)) else "default"
    return f"{folder.path.name}: {o.get('name')} lr {lr}, {config['scheduler'].get('name')}"


def _summary(folder: RunFolder, history: History, rec: RunCallbacks, config: Mapping[str, Any], rows: _Rows,
             recipe: Mapping[str, Any], model: nn.Module, user: list[Callback], seconds: float) -> dict[str, Any]:
    t = config["train"]
    return {
        "run": folder.path.name, "made_by": MADE_BY,
        "data": {"task": rows.task, "train_samples": rows.samples[0], "val_samples": rows.samples[1],
                 "features": rows.width or None, "classes": rows.classes or None,
                 **({"not_rows": rows.why} if rows.task is None else {})},
        "model": {"class": config["model"]["class"], "parameters": sum(p.numel() for p in model.parameters()),
                  **recipe},
        "optimizer": config["optimizer"].get("name"), "scheduler": config["scheduler"].get("name"),
        "epochs_run": len(history), "epochs_max": t["epochs"], "early_stopping": t.get("early_stopping") or None,
        "stop_reason": rec.info.stop_reason, "monitor": t["monitor"],
        "best": best_row(history, rec), "final": dict(history.rows[-1]) if len(history) else None,
        "seconds": round(seconds, 3), "device": rec.info.device, "world_size": rec.info.world_size,
        "versions": versions(),
    }
