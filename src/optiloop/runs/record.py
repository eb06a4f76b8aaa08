"""What a run folder records, shared by ``optiloop train`` (:class:`~optiloop.runs.TrainingRun`)
and ``fit(out=...)``: the callbacks that write it as training goes, and its files at the end.

:func:`run_callbacks` makes the folder's callbacks (``Checkpoint``: best.pt / last.pt; ``StepHistory``:
steps.csv; :class:`RunFiles`: history.csv after every epoch; :class:`RunInfo`: what only the loop
knows); :func:`finish_run` writes curves.png, the classification report and summary.json once the
loop has returned; :func:`files_so_far` names the folder in any error training raises.

Example:
    >>> import tempfile, torch, optiloop as ol
    >>> from optiloop.runs import RunFolder
    >>> folder = RunFolder.create(Path(tempfile.mkdtemp()) / "demo", unique=False)
    >>> rec = run_callbacks(folder, monitor="train_loss", checkpoint_seconds=0)
    >>> X, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    >>> h = ol.fit(torch.nn.Linear(3, 2), (X, y), epochs=2, progress=False, seed=0, callbacks=rec.callbacks)
    >>> summary = finish_run(folder, h, rec, title="demo", summary={"run": "demo"})
    >>> [f for f in folder.files() if not f.startswith("last")]
    ['best.pt', 'curves.png', 'history.csv', 'steps.csv', 'summary.json']
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import drawing
from ..callbacks import Callback
from ..checkpoint import Checkpoint
from ..errors import OptiloopError, SettingsChanged, TrainingInterrupted
from ..loggers import StepHistory
from .folder import RunFolder


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


class RunFiles(Callback):
    """The run's files as training goes: config.toml once a resume is accepted (with the settings
    it changed), history.csv and steps.csv after every epoch (a killed run keeps its epochs)."""

    order = 150  # after Checkpoint: history.csv never lists an epoch that last.pt cannot resume
    main_process_only = True

    def __init__(self, folder: RunFolder, config: Mapping[str, Any] | None = None, note: str = ""):
        self.folder, self.config, self.note = folder, config, note

    def on_fit_start(self, state, logs):
        if self.config is not None:  # fit has loaded the checkpoint: the resume is accepted
            self.folder.write_config(self.config, self.note)

    def on_epoch_end(self, state, logs):
        self.folder.write_history(state.history)
        self.folder.write_steps(state.history)  # StepHistory (order 90) has handed the epoch's steps over

    def on_exception(self, state, error):
        if isinstance(error, TrainingInterrupted) and len(state.history):  # a stop asked for: show it
            self.folder.write_curves(state.history, best_epoch=None, title=f"{self.folder.path.name} "
                                     f"(stopped by {error.signal_name} at epoch {error.epoch})")


@dataclass
class RunCallbacks:
    """The callbacks that write a run folder; ``callbacks`` is what the loop gets."""

    checkpoint: Checkpoint
    info: RunInfo
    files: RunFiles
    steps: StepHistory
    extra: list[Callback]

    @property
    def callbacks(self) -> list[Callback]:
        return [self.checkpoint, self.info, self.files, self.steps, *self.extra]


def run_callbacks(folder: RunFolder, *, monitor: str | None, checkpoint: Checkpoint | None = None,
                  checkpoint_every: int | None = None, checkpoint_seconds: float = 60.0, grad_norm: bool = False,
                  config: Mapping[str, Any] | None = None, note: str = "",
                  extra: list[Callback] | None = None) -> RunCallbacks:
    """The callbacks that write ``folder`` while training runs.

    Args:
        folder: the run folder (created and locked).
        monitor: what best.pt keeps the best of (None: last.pt only).
        checkpoint: a ``Checkpoint`` on ``folder`` to use as it is (its own timing); None: one
            made from ``monitor``, ``checkpoint_every`` and ``checkpoint_seconds``.
        grad_norm: record every step's gradient norm in steps.csv (free with clipping).
        config, note: a config.toml to write once a resume is accepted (None: nothing to write).
        extra: more callbacks of the run (TensorBoard ...).
    """
    ckpt = checkpoint or Checkpoint(folder.path, monitor=monitor, every_n_steps=checkpoint_every,
                                    every_seconds=checkpoint_seconds)
    return RunCallbacks(ckpt, RunInfo(), RunFiles(folder, config, note), StepHistory(grad_norm=grad_norm),
                        list(extra or []))


def best_row(history: Any, rec: RunCallbacks) -> dict[str, Any]:
    """The epoch best.pt holds (the last epoch when nothing was monitored)."""
    epoch = rec.checkpoint.best_epoch
    return dict(history.rows[epoch - 1] if epoch else history.rows[-1])


def finish_run(folder: RunFolder, history: Any, rec: RunCallbacks, *, title: str, summary: Mapping[str, Any],
               class_report: Callable[[RunFolder], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """The files of a finished run (rank 0 only): curves.png, for classification the confusion
    matrix and per-class figures (``class_report(folder)`` writes them and returns their figures
    for summary.json), then summary.json. Returns the summary written."""
    out = dict(summary)
    if not rec.info.is_main:
        return out
    with drawing.pictures():  # with the command line's helper, the pictures are drawn beside the rest
        folder.write_curves(history, best_epoch=rec.checkpoint.best_epoch, title=title)
        if class_report is not None:
            figures = class_report(folder)
            if figures is not None:
                out["validation_classes"] = figures
        folder.write_summary(out)
    return out


@contextlib.contextmanager
def files_so_far(folder: RunFolder | Path) -> Iterator[None]:
    """An OptiloopError training raises names the folder (the same kind: a DiskError stays one)."""
    path = folder.path if isinstance(folder, RunFolder) else Path(folder)
    try:
        yield
    except SettingsChanged:  # refused before anything was trained: its remedy ends the line
        raise
    except OptiloopError as e:
        raise type(e)(f"{e} (files so far are in {path}/)") from None
