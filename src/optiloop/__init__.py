"""optiloop: torch.optim, torch.optim.lr_scheduler and the training loop, coupled correctly.

Example:
    >>> import torch, optiloop as ol
    >>> X, y = torch.randn(128, 8), torch.randint(0, 3, (128,))
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> history = ol.fit(model, (X, y), val_data=(X, y), optimizer="adamw", lr=1e-2,
    ...                  scheduler="cosine", epochs=3, metrics=["accuracy"], progress=False, seed=0)
    >>> len(history["val_acc"])
    3
"""

from .callbacks import Callback, CallbackList, EarlyStopping, LRMonitor, Monitor, ProgressBar, TrainState
from .checkpoint import Checkpoint, CheckpointFolder, load_checkpoint, save_checkpoint
from .comparison import compare, summarize, to_frame
from .data import Batches
from .distributed import FSDP
from .errors import CheckpointError, NonFiniteLossError, OptiloopError
from .history import History
from .loop import evaluate, fit, resolve_device, seed_everything
from .lr_finder import LRFindResult, lr_find
from .optim import OPTIMIZERS, build_optimizer, optimizer_defaults
from .schedules import SCHEDULERS, Schedule, build_scheduler, preview_schedule
from .steps import StepOutput

__version__ = "0.1.0"


def __getattr__(name: str):
    # export needs torch.distributed.checkpoint (most of a second to import): loaded on first use.
    if name == "export":
        from .sharded import export

        return export
    raise AttributeError(f"module 'optiloop' has no attribute {name!r}")


__all__ = [
    "Batches", "Callback", "FSDP", "CallbackList", "Checkpoint", "CheckpointError", "CheckpointFolder", "EarlyStopping",
    "History", "LRFindResult", "LRMonitor", "Monitor", "NonFiniteLossError", "OPTIMIZERS", "OptiloopError",
    "ProgressBar", "SCHEDULERS", "Schedule", "StepOutput", "TrainState", "build_optimizer", "build_scheduler",
    "compare", "evaluate", "export", "fit", "load_checkpoint", "lr_find", "optimizer_defaults", "preview_schedule",
    "resolve_device", "save_checkpoint", "seed_everything", "summarize", "to_frame",
]
