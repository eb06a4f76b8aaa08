"""Figures read from a History or from LR sequences, never from the loop. PNG via Agg, no display.

We build ``matplotlib.figure.Figure`` objects directly instead of going through pyplot: no global
backend switch, no figure registry to leak, and it works on machines without a display.

Example:
    >>> from optiloop.history import History
    >>> from optiloop.plots import plot_history
    >>> h = History([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "lr": 0.1},
    ...              {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "lr": 0.05}])
    >>> plot_history(h, "/tmp/optiloop-doctest-curves.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from .errors import OptiloopError

if TYPE_CHECKING:
    from .history import History

_TRAIN, _VAL, _LR = "#1f77b4", "#d62728", "#2ca02c"
_METRIC_NAMES = {"acc": "accuracy", "mae": "mean absolute error", "mse": "mean squared error"}


def _use_log(values: Sequence[float]) -> bool:
    """A log axis helps when the values are positive and span more than a factor of 10."""
    pos = [v for v in values if v is not None and v > 0]
    return len(pos) == len([v for v in values if v is not None]) and bool(pos) \
        and max(pos) / min(pos) > 10


def _save(fig: Figure, path: str | os.PathLike) -> None:
    from .files import atomic_open

    with atomic_open(path, "wb") as f:  # a crash never leaves a half-written PNG
        fig.savefig(f, format="png", dpi=110)


def plot_history(history: History, path: str | os.PathLike, *, title: str | None = None,
                 best_epoch: int | None = None) -> None:
    """Loss (train vs val), each metric (train vs val) and the LR per epoch, side by side.

    Args:
        history: per-epoch rows with ``epoch``, ``train_loss`` and optionally ``val_*``, ``lr``.
        path: the PNG to write.
        title: a line above the panels (e.g. the run's name).
        best_epoch: marked with a dashed line on every panel.
    """
    if len(history) == 0:
        raise OptiloopError("history is empty: nothing to plot")
    keys = history.keys()
    epochs = history["epoch"] if "epoch" in keys else list(range(1, len(history) + 1))
    metrics = [k[len("train_"):] for k in keys
               if k.startswith("train_") and k != "train_loss" and isinstance(history.rows[0][k],
                                                                                (int, float))]
    panels = ["loss", *metrics] + (["lr"] if "lr" in keys else [])
    fig = Figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "lr":
            lrs = history["lr"]
            ax.plot(epochs, lrs, color=_LR, marker=".", label="learning rate")
            ax.set_ylabel("learning rate")
            if _use_log(lrs):
                ax.set_yscale("log")
            ax.set_title("learning rate (at each epoch's start)")
        else:
            for split, color in (("train", _TRAIN), ("val", _VAL)):
                key = f"{split}_{panel}"
                if key in keys:
                    ax.plot(epochs, history[key], color=color, marker=".", label=split)
            name = _METRIC_NAMES.get(panel, panel)
            ax.set_ylabel(name)
            ax.set_title(name)
            if panel == "loss" and _use_log(history["train_loss"]):
                ax.set_yscale("log")  # losses fall by orders of magnitude: log shows the late part
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.5", linestyle="--", linewidth=1,
                       label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_schedules(curves: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                   steps_per_epoch: int = 1, title: str | None = None,
                   note: str | None = None) -> None:
    """Overlay LR curves on one axis, each value held over its epoch (or step). With
    ``steps_per_epoch > 1`` each curve is per step and the x axis still reads in epochs.

    Args:
        curves: legend label -> LR per epoch (or per step).
        path: the PNG to write.
        steps_per_epoch: optimizer steps per epoch in ``curves``.
        title: the figure's title.
        note: one line under the plot (e.g. what a plateau schedule was shown against).
    """
    if not curves:
        raise OptiloopError("no schedules to plot")
    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
    ax = fig.subplots()
    all_values = []
    for label, lrs in curves.items():
        # Value i holds from x = i / steps_per_epoch until the next one: x reads as "epochs of
        # training done", and the last value is drawn across the whole last epoch (or step).
        x = [i / steps_per_epoch for i in range(len(lrs))] + [len(lrs) / steps_per_epoch]
        ax.plot(x, [*lrs, lrs[-1]], label=label, linewidth=1.8, drawstyle="steps-post")
        all_values += list(lrs)
    if _use_log(all_values):
        ax.set_yscale("log")
    ax.set_xlabel("epochs done" + (f" ({steps_per_epoch} steps each)" if steps_per_epoch > 1
                                   else ""))
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    if note:
        fig.supxlabel(note, fontsize="small", color="0.3")
    _save(fig, path)
