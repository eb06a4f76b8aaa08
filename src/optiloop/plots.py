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
from typing import Any, Protocol

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import OptiloopError


class Rows(Protocol):
    """What a plot reads from a History: per-epoch rows, their keys, a column by key. (A protocol,
    so this module never imports optiloop.history, which imports it to draw.)"""

    rows: list[dict[str, Any]]

    def keys(self) -> list[str]: ...

    def __getitem__(self, key: str) -> list[Any]: ...

    def __len__(self) -> int: ...

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


def plot_history(history: Rows, path: str | os.PathLike, *, title: str | None = None,
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no "1.5"
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


# --- comparisons and the LR finder (optiloop compare / lr-find) --------------------------------
def plot_overlay(curves: Mapping[str, Sequence[Sequence[float]]], path: str | os.PathLike, *,
                 ylabel: str, title: str | None = None, styles: Mapping[str, dict] | None = None,
                 log: bool | None = None, xlabel: str = "epoch") -> None:
    """Overlay one curve per label; several runs under one label (seeds) draw their mean with a
    shaded min-max band.

    Args:
        curves: legend label -> list of runs, each a value per epoch (runs may differ in length;
            the band covers the epochs all of them reached).
        path: the PNG to write.
        ylabel: the y axis's name (e.g. "validation loss").
        title: the axis title.
        styles: label -> matplotlib line keywords (color, linestyle) so that, e.g., one optimizer
            keeps one colour across schedulers.
        log: log y axis; None decides from the values (positive and spanning > 10x).
        xlabel: the x axis's name.

    Example:
        >>> plot_overlay({"sgd": [[1.0, 0.5]], "adam": [[1.0, 0.3], [0.9, 0.4]]},
        ...              "/tmp/optiloop-doctest-overlay.png", ylabel="validation loss")
    """
    import math

    if not curves:
        raise OptiloopError("no curves to plot")
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.subplots()
    values: list[float] = []
    for label, runs in curves.items():
        n = min(len(r) for r in runs)
        cols = [[float(r[i]) if r[i] is not None else math.nan for r in runs] for i in range(n)]
        x = list(range(1, n + 1))
        mean = [sum(c) / len(c) for c in cols]
        kw = {"linewidth": 1.8, "marker": ".", **(styles or {}).get(label, {})}
        if n > 30:  # markers on every epoch of a long run turn the line into a smear
            kw["markevery"] = max(1, n // 15)
        (line,) = ax.plot(x, mean, label=label, **kw)
        if len(runs) > 1:
            ax.fill_between(x, [min(c) for c in cols], [max(c) for c in cols],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        values += [v for c in cols for v in c if math.isfinite(v)]
    if log if log is not None else _use_log(values):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no "2.5"
    ax.grid(True, alpha=0.3)
    # Outside the axes: with ten combinations a legend inside would cover the curves.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], path: str | os.PathLike, *,
                 smoothed: Sequence[float] | None = None,
                 suggestions: Mapping[str, float] | None = None, chosen: str | None = None,
                 title: str | None = None) -> None:
    """Loss against learning rate on a log x axis, with suggested LRs as labelled vertical lines.

    Args:
        lrs, losses: the LR of each step of the range test and the loss it gave.
        smoothed: the exponentially smoothed loss (drawn bold; the raw loss faint behind it).
        suggestions: rule name -> suggested LR; ``chosen`` is drawn solid, the others dashed.
        chosen: the rule whose suggestion is the answer.
        title: the axis title.

    Example:
        >>> plot_lr_find([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.9, 0.5, 2.0],
        ...              "/tmp/optiloop-doctest-lrfind.png", suggestions={"valley": 1e-2},
        ...              chosen="valley")
    """
    if len(lrs) == 0:
        raise OptiloopError("the range test recorded no steps: nothing to plot")
    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(lrs, losses, color=_TRAIN, alpha=0.3 if smoothed is not None else 1.0, linewidth=1,
            label="loss per step")
    if smoothed is not None:
        ax.plot(lrs, smoothed, color=_TRAIN, linewidth=2, label="smoothed loss")
    shown = list(smoothed if smoothed is not None else losses)
    for i, (rule, lr) in enumerate((suggestions or {}).items()):
        color = _VAL if rule == chosen else ("#9467bd", "#8c564b", "#e377c2")[i % 3]
        style = "-" if rule == chosen else "--"
        text = f"{rule}: {lr:.2e}" + (" (suggested)" if rule == chosen else "")
        ax.axvline(lr, color=color, linestyle=style, linewidth=1.5, label=text)
    ax.set_xscale("log")
    # Zoom the y axis on the useful part: the diverging tail would squash the curve to a line.
    # Bottom: the lowest loss seen (a low percentile of the raw loss, so one lucky batch does not
    # set it); top: the loss at the start, with room for the legend.
    raw = sorted(losses)
    lo = min(min(shown), raw[len(raw) // 50])
    hi = max(shown[: max(1, len(shown) // 2)])
    pad = 0.05 * (hi - lo) if hi > lo else 0.1 * abs(hi) or 0.1
    ax.set_ylim(lo - pad, hi + 4 * pad)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    _save(fig, path)
