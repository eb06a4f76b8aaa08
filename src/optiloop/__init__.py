"""optiloop: torch.optim, torch.optim.lr_scheduler and the training loop, coupled correctly.

Every public name is imported on first use (PEP 562): ``import optiloop`` costs next to nothing,
and the command line's ``--help`` and ``list`` never import torch.

Example:
    >>> import torch, optiloop as ol
    >>> X, y = torch.randn(128, 8), torch.randint(0, 3, (128,))
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> history = ol.fit(model, (X, y), val_data=(X, y), optimizer="adamw", lr=1e-2,
    ...                  scheduler="cosine", epochs=3, metrics=["accuracy"], progress=False, seed=0)
    >>> len(history["val_acc"])
    3
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__  # re-exported: optiloop.__version__

# public name -> the module (under optiloop) that defines it
_WHERE: dict[str, str] = {
    "Callback": "callbacks", "CallbackList": "callbacks", "EarlyStopping": "callbacks", "LRMonitor": "callbacks",
    "Monitor": "callbacks", "ProgressBar": "callbacks", "TrainState": "callbacks",
    "Checkpoint": "checkpoint", "CheckpointFolder": "checkpoint", "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "EMA": "averaging", "SWA": "averaging",
    "Batches": "data",
    "FSDP": "distributed",
    "compare": "comparison", "summarize": "results", "to_frame": "results",
    "CheckpointError": "errors", "DiskError": "errors", "NonFiniteLossError": "errors", "OptiloopError": "errors",
    "TrainingInterrupted": "errors",
    "History": "history", "Steps": "history",
    "Logger": "loggers", "StepHistory": "loggers", "TensorBoard": "loggers",
    "MLflow": "trackers", "MLflowSweep": "trackers",
    "evaluate": "loop", "fit": "loop", "resolve_device": "distributed", "seed_everything": "distributed",
    "LRFindResult": "lr_finder", "lr_find": "lr_finder",
    "OPTIMIZERS": "optim", "build_optimizer": "optim", "optimizer_defaults": "optim",
    "Optimizers": "several", "manual": "several",
    "SCHEDULERS": "schedules", "Schedule": "schedules", "build_scheduler": "schedules",
    "preview_schedule": "schedules",
    "StepOutput": "steps",
    "predict": "inference", "make_model": "recipes",
    "Run": "runs", "load": "runs",
    "watch": "doctor",
    "export": "exporting",
    "OptunaPruning": "tuning", "tune": "tuning",
}

__all__ = [
    "FSDP", "OPTIMIZERS", "SCHEDULERS", "Batches", "Callback", "CallbackList", "Checkpoint", "CheckpointError",
    "CheckpointFolder", "DiskError", "EarlyStopping", "History", "LRFindResult", "LRMonitor", "Logger", "MLflow",
    "MLflowSweep", "Monitor", "NonFiniteLossError", "OptiloopError", "ProgressBar", "Run", "Schedule", "StepHistory",
    "StepOutput", "Steps", "TensorBoard", "TrainState", "TrainingInterrupted", "build_optimizer", "build_scheduler",
    "compare", "evaluate", "fit", "load", "load_checkpoint", "lr_find", "make_model", "optimizer_defaults", "predict",
    "preview_schedule", "resolve_device", "save_checkpoint", "seed_everything", "summarize", "to_frame", "watch",
    "export", "OptunaPruning", "tune", "EMA", "SWA", "manual", "Optimizers",
]  # static, for tools; tests check it names exactly the keys of _WHERE


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # ol.checkpoint.find_resumable
    raise AttributeError(f"module 'optiloop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_WHERE, "__version__"])  # the API, not this module's own imports


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from .averaging import EMA, SWA
    from .callbacks import Callback, CallbackList, EarlyStopping, LRMonitor, Monitor, ProgressBar, TrainState
    from .checkpoint import Checkpoint, CheckpointFolder, load_checkpoint, save_checkpoint
    from .comparison import compare
    from .data import Batches
    from .distributed import FSDP, resolve_device, seed_everything
    from .doctor import watch
    from .errors import CheckpointError, DiskError, NonFiniteLossError, OptiloopError, TrainingInterrupted
    from .exporting import export
    from .history import History, Steps
    from .inference import predict
    from .loggers import Logger, StepHistory, TensorBoard
    from .loop import evaluate, fit
    from .lr_finder import LRFindResult, lr_find
    from .optim import OPTIMIZERS, build_optimizer, optimizer_defaults
    from .recipes import make_model
    from .results import summarize, to_frame
    from .runs import Run, load
    from .schedules import SCHEDULERS, Schedule, build_scheduler, preview_schedule
    from .several import Optimizers, manual
    from .steps import StepOutput
    from .trackers import MLflow, MLflowSweep
    from .tuning import OptunaPruning, tune
