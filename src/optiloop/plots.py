"""Figures read from a History or from LR sequences, never from the loop. PNG via Agg, no display.

We build ``matplotlib.figure.Figure`` objects directly instead of going through pyplot: no global
backend switch, no figure registry to leak, and it works on machines without a display.

Example:
    >>> from optiloop.history import History
    >>> from optiloop.plots import plot_history
    >>> h = History([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "lr": 0.1},
    ...              {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "lr": 0.05}])
    >>> fig = plot_history(h, "/tmp/optiloop-doctest-curves.png")
    >>> [ax.get_title() for ax in fig.axes]
    ['loss', 'learning rate (per epoch)']
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, Protocol

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import OptiloopError
from .files import atomic_open


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


def _save(fig: Figure, path: str | os.PathLike | BinaryIO) -> None:
    """The PNG, atomically (a crash never leaves a half-written one); a binary file object is
    written as it is (the drawing helper's rehearsal, in memory)."""
    # zlib's fastest level: a third of the encoding time for files about 10% larger
    options = {"format": "png", "dpi": 110, "pil_kwargs": {"compress_level": 1}}
    if hasattr(path, "write"):
        fig.savefig(path, **options)
        return
    with atomic_open(path, "wb") as f:
        fig.savefig(f, **options)


def _finish_overlay(fig: Figure, ax: Any, path: str | os.PathLike, title: str | None) -> Figure:
    """Legend, title and file of a picture overlaying many runs."""
    # Outside the axes: with ten combinations a legend inside would cover the curves.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        ax.set_title(title)
    _save(fig, path)
    return fig


def moves_within_epochs(steps: Rows) -> bool:
    """Whether per-step rows show the LR changing inside an epoch: the schedule (or its warmup)
    is stepped per optimizer step, so a per-epoch value would hide its shape.

    Example:
        >>> from optiloop.history import Steps
        >>> moves_within_epochs(Steps([{"step": 1, "epoch": 0.5, "lr": 0.1}, {"step": 2, "epoch": 1.0, "lr": 0.1},
        ...                            {"step": 3, "epoch": 1.5, "lr": 0.05}]))
        False
    """
    seen: dict[int, float] = {}
    for r in steps.rows:
        if r.get("lr") is None or r.get("epoch") is None:
            continue
        epoch = math.ceil(r["epoch"] - 1e-9)  # the epoch the step belongs to (epoch = steps done / per epoch)
        if seen.setdefault(epoch, r["lr"]) != r["lr"]:
            return True
    return False


def _lr_keys(keys: Sequence[str]) -> list[str]:
    """"lr", or each group's "lr_group<i>" when the groups' LRs were recorded apart."""
    groups = sorted((k for k in keys if k.startswith("lr_group")), key=lambda k: int(k[len("lr_group"):]))
    return groups or (["lr"] if "lr" in keys else [])


def _stairs(ax: Any, values: Sequence[float], **kw: Any) -> None:
    """Per-epoch values held over their epoch: value e from x = e - 1 to x = e (steps-post)."""
    ax.plot(list(range(len(values) + 1)), [*values, values[-1]], drawstyle="steps-post", **kw)


def plot_history(history: Rows, path: str | os.PathLike, *, title: str | None = None,
                 best_epoch: int | None = None, lr_log: bool = False, per_step: bool | None = None) -> Figure:
    """Loss (train vs val), each metric (train vs val), the LR and, when recorded, the gradient
    norm, side by side. The x axis of every panel is epochs done (epoch 3's figures at x = 3).

    The LR: a schedule stepped per epoch is drawn as the steps it is (the LR holds over each
    epoch); one stepped per optimizer step (onecycle, warmup) is drawn per step from
    ``history.steps``, with the per-step training loss behind the per-epoch loss.

    Args:
        history: per-epoch rows with ``epoch``, ``train_loss`` and optionally ``val_*``, ``lr``;
            per-step rows in ``history.steps`` (``optiloop.loggers.StepHistory``) when recorded.
        path: the PNG to write.
        title: a line above the panels (e.g. the run's name).
        best_epoch: marked with a dashed line on every panel.
        lr_log: a log LR axis (default linear: a linear warmup looks linear).
        per_step: draw the per-step LR and loss; None: when the LR moves within an epoch.

    Returns:
        The figure (already written to ``path``).
    """
    if len(history) == 0:
        raise OptiloopError("history is empty: nothing to plot")
    keys = history.keys()
    epochs = history["epoch"] if "epoch" in keys else list(range(1, len(history) + 1))
    steps = getattr(history, "steps", None)
    steps = steps if steps is not None and len(steps) else None
    if per_step is None:
        per_step = steps is not None and moves_within_epochs(steps)
    per_step = bool(per_step and steps is not None)
    metrics = [k[len("train_"):] for k in keys
               if k.startswith("train_") and k != "train_loss" and isinstance(history.rows[0][k],
                                                                                (int, float))]
    lr_keys = _lr_keys(steps.keys() if per_step else keys)
    norms = steps is not None and "grad_norm" in steps.keys()
    panels = ["loss", *metrics] + (["lr"] if lr_keys else []) + (["grad_norm"] if norms else [])
    fig = Figure(figsize=(4.6 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "lr":
            for i, key in enumerate(lr_keys):
                label = "learning rate" if key == "lr" else f"group {key[len('lr_group'):]}"
                color = _LR if i == 0 else None
                if per_step:
                    ax.plot(steps["epoch"], steps[key], color=color, linewidth=1.5, label=label)
                else:
                    _stairs(ax, history[key], color=color, linewidth=1.5, label=label)
            ax.set_ylabel("learning rate")
            ax.set_title("learning rate (per step)" if per_step else "learning rate (per epoch)")
            if lr_log:
                ax.set_yscale("log")
        elif panel == "grad_norm":
            ax.plot(steps["epoch"], steps["grad_norm"], color="#9467bd", linewidth=1, label="per step")
            ax.set_ylabel("gradient norm (L2, before clipping)")
            ax.set_title("gradient norm")
            if _use_log(steps["grad_norm"]):
                ax.set_yscale("log")
        else:
            if panel == "loss" and per_step and "loss" in steps.keys():
                ax.plot(steps["epoch"], steps["loss"], color=_TRAIN, alpha=0.3, linewidth=0.8,
                        label="train (per step)")
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
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no "1.5"
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def _held_per_epoch(values: Sequence[float], steps_per_epoch: int) -> bool:
    return all(len(set(values[i:i + steps_per_epoch])) == 1 for i in range(0, len(values), steps_per_epoch))


def plot_schedules(curves: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                   steps_per_epoch: int = 1, title: str | None = None,
                   note: str | None = None, log: bool = False) -> Figure:
    """Overlay LR curves on one axis whose x reads in epochs done.

    A curve that holds its value over each epoch (a schedule stepped per epoch) is drawn as the
    steps it is; a curve that moves within epochs (stepped per optimizer step: onecycle, warmup)
    is drawn as a line through every step's LR, at x = steps done / ``steps_per_epoch``.

    Args:
        curves: legend label -> LR per optimizer step (or per epoch when ``steps_per_epoch=1``).
        path: the PNG to write.
        steps_per_epoch: optimizer steps per epoch in ``curves``.
        title: the figure's title.
        note: one line under the plot (e.g. what a plateau schedule was shown against).
        log: a log LR axis (default linear: a linear warmup looks linear, a tail near 0 stays small).

    Returns:
        The figure (already written to ``path``).

    Example:
        >>> fig = plot_schedules({"step": [0.1, 0.1, 0.01, 0.01]}, "/tmp/optiloop-doctest-sched.png")
        >>> fig.axes[0].lines[0].get_drawstyle()
        'steps-post'
    """
    if not curves:
        raise OptiloopError("no schedules to plot")
    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
    ax = fig.subplots()
    spe = steps_per_epoch
    for label, lrs in curves.items():
        lrs = list(lrs)
        if _held_per_epoch(lrs, spe):
            _stairs(ax, lrs[::spe], label=label, linewidth=1.8)
        else:  # value i is the LR of step i + 1: drawn where that step ends
            ax.plot([(i + 1) / spe for i in range(len(lrs))], lrs, label=label, linewidth=1.8)
    if log:
        ax.set_yscale("log")
    ax.set_xlim(left=0)
    ax.set_xlabel("epochs done" + (f" ({spe} optimizer steps each)" if spe > 1 else ""))
    ax.set_ylabel("learning rate" + (" (log scale)" if log else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    if note:
        fig.supxlabel(note, fontsize="small", color="0.3")
    _save(fig, path)
    return fig


# --- comparisons and the LR finder (optiloop compare / lr-find) --------------------------------
def plot_overlay(curves: Mapping[str, Sequence[Sequence[float]]], path: str | os.PathLike, *,
                 ylabel: str, title: str | None = None, styles: Mapping[str, dict] | None = None,
                 log: bool | None = None, xlabel: str = "epoch") -> Figure:
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

    Returns:
        The figure (already written to ``path``).

    Example:
        >>> fig = plot_overlay({"sgd": [[1.0, 0.5]], "adam": [[1.0, 0.3], [0.9, 0.4]]},
        ...              "/tmp/optiloop-doctest-overlay.png", ylabel="validation loss")
    """
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
    return _finish_overlay(fig, ax, path, title)


def plot_lr_runs(runs: Mapping[str, Rows], path: str | os.PathLike, *, base: Mapping[str, float] | None = None,
                 styles: Mapping[str, dict] | None = None, title: str | None = None, log: bool = False) -> Figure:
    """The LR each run followed, one line per label: per step where the LR moved within epochs
    (``history.steps``), else as the per-epoch steps it is.

    Args:
        runs: legend label -> a History (its per-step rows are used when present).
        path: the PNG to write.
        base: label -> the run's configured LR: curves are drawn as a multiple of it, so
            optimizers whose LRs differ 100x share one linear axis (put the LRs in the labels).
        styles: label -> matplotlib line keywords (colour, line style).
        title: the axis title.
        log: a log y axis (default linear).

    Returns:
        The figure (already written to ``path``).
    """
    if not runs:
        raise OptiloopError("no runs to plot")
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (label, h) in enumerate(runs.items()):
        scale = 1.0 / base[label] if base else 1.0
        # Runs on one schedule coincide: each later line is thinner, so every one stays in sight.
        kw = {"linewidth": 1.6 + 1.4 * (len(runs) - 1 - i), "alpha": 0.85,
              **{k: v for k, v in (styles or {}).get(label, {}).items() if k in ("color", "linestyle")}}
        name = label
        steps = getattr(h, "steps", None)
        if steps is not None and len(steps) and moves_within_epochs(steps):
            ax.plot(steps["epoch"], [v * scale for v in steps["lr"]], label=name, **kw)
        else:
            _stairs(ax, [v * scale for v in h["lr"]], label=name, **kw)
    if log:
        ax.set_yscale("log")
    ax.set_xlim(left=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("LR / the optimizer's LR" if base else "learning rate")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    return _finish_overlay(fig, ax, path, title)


def plot_lr_sensitivity(points: Mapping[str, Sequence[tuple[float, float, float]]], path: str | os.PathLike, *,
                        ylabel: str, chosen: Mapping[str, float] | None = None,
                        styles: Mapping[str, dict] | None = None, title: str | None = None) -> Figure:
    """The validation figure against the LR, one line per optimizer, on a log LR axis (the grids
    are log-spaced): how much of "A beats B" is only the LR each was given.

    Args:
        points: label -> (lr, mean, std) per LR tried; std draws error bars (0 for one seed).
        path: the PNG to write.
        ylabel: the figure's name (e.g. "best validation accuracy").
        chosen: label -> the LR picked for it: drawn as a filled marker.
        styles: label -> matplotlib keywords (color, marker).
        title: the axis title.

    Returns:
        The figure (already written to ``path``).

    Example:
        >>> fig = plot_lr_sensitivity({"sgd": [(0.01, 0.8, 0.0), (0.1, 0.9, 0.0)]},
        ...                           "/tmp/optiloop-doctest-sens.png", ylabel="val_acc", chosen={"sgd": 0.1})
        >>> len(fig.axes[0].lines) >= 2
        True
    """
    if not points:
        raise OptiloopError("no LR grid to plot")
    fig = Figure(figsize=(9.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for label, pts in points.items():
        pts = sorted(pts)
        style = (styles or {}).get(label, {})
        kw = {k: v for k, v in style.items() if k in ("color", "marker", "linestyle")}
        bars = ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], capsize=3,
                           linewidth=1.6, markerfacecolor="none", label=label, **{"marker": "o", **kw})
        if chosen and label in chosen:
            best = next(p for p in pts if p[0] == chosen[label])
            ax.plot([best[0]], [best[1]], linestyle="none", marker=kw.get("marker", "o"), markersize=10,
                    color=bars.lines[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale; filled: the LR chosen)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    return _finish_overlay(fig, ax, path, title)


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[Any], path: str | os.PathLike, *,
                   title: str | None = None) -> Figure:
    """A confusion matrix: rows the true class, columns the predicted one, each cell's count
    written in it and its colour the share of its row (so a small class reads as clearly as a
    large one; the diagonal is each class's recall).

    Args:
        matrix: counts, ``matrix[i][j]`` = samples of class i predicted as class j.
        labels: the class names, in the matrix's order.
        path: the PNG to write.
        title: the axis title.

    Returns:
        The figure (already written to ``path``).

    Example:
        >>> fig = plot_confusion([[5, 1], [0, 4]], ["cat", "dog"], "/tmp/optiloop-doctest-cm.png")
        >>> len(fig.axes[0].texts)
        4
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels) or m.shape[0] == 0:
        raise OptiloopError(f"a confusion matrix must be square with one row per label ({len(labels)}), "
                            f"got shape {m.shape}")
    n = len(labels)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(14.0, 3.0 + 0.55 * n)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    size = "medium" if n <= 8 else "small" if n <= 16 else "x-small"
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=size,
                    color="white" if share[i, j] > 0.5 else "black")
    names = [str(label) for label in labels]
    ax.set_xticks(range(n), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right"
                  if max(map(len, names)) > 3 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    _save(fig, path)
    return fig


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], path: str | os.PathLike, *,
                 smoothed: Sequence[float] | None = None,
                 suggestions: Mapping[str, float] | None = None, chosen: str | None = None,
                 title: str | None = None) -> Figure:
    """Loss against learning rate on a log x axis, with suggested LRs as labelled vertical lines.

    Args:
        lrs, losses: the LR of each step of the range test and the loss it gave.
        smoothed: the exponentially smoothed loss (drawn bold; the raw loss faint behind it).
        suggestions: rule name -> suggested LR; ``chosen`` is drawn solid, the others dashed.
        chosen: the rule whose suggestion is the answer.
        title: the axis title.

    Example:
        >>> fig = plot_lr_find([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.9, 0.5, 2.0],
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
    return fig
