"""History: one row per epoch (epoch, train_loss, train_<metric>, val_..., lr, seconds), and
optionally one row per recorded optimizer step (``History.steps``: step, epoch, loss, lr, ...).

Per-step rows are filled by ``optiloop.loggers.StepHistory`` (``optiloop train`` always adds it):
collected on the device during an epoch and read once at its end, so recording them costs no
host sync per step.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from .directions import mode_for
from .errors import OptiloopError
from .files import atomic_open


class History:
    """Per-epoch records, indexable by key.

    Example:
        >>> h = History([{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}])
        >>> h["val_loss"]
        [0.5, 0.4]
        >>> h.best("val_loss")["epoch"]
        2

    ``monitor`` / ``mode``: the value the run watched and its direction (``fit`` records the
    first that its EarlyStopping or Checkpoint watch); ``best()`` with no key uses them.
    """

    monitor: str | None = None
    mode: str = "auto"

    def __init__(self, rows: Iterable[dict[str, Any]] = (), steps: Iterable[dict[str, Any]] = (), *,
                 monitor: str | None = None, mode: str = "auto"):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]
        self.steps = Steps(steps)  # per-step rows; empty unless a StepHistory recorded them
        self.monitor, self.mode = monitor, mode

    @classmethod
    def watching(cls, monitor: Any) -> History:
        """An empty History of a run that watches ``monitor`` (a ``callbacks.Monitor``, or None)."""
        return cls(monitor=monitor.monitor, mode=monitor.mode) if monitor is not None else cls()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.update(dict.fromkeys(r))
        return list(seen)

    def __getitem__(self, key: str) -> list[Any]:
        if key not in self.keys():
            raise OptiloopError(f"history has no {key!r}; it has: {', '.join(self.keys()) or 'nothing yet'}")
        return [r.get(key) for r in self.rows]

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and other.rows == self.rows

    def __repr__(self) -> str:
        return f"History({len(self.rows)} epochs, keys={self.keys()})"

    def best(self, key: str | None = None, mode: str = "auto") -> dict[str, Any]:
        """The row with the best finite value of ``key`` (the earliest on a tie).

        ``mode="auto"`` follows the direction rule EarlyStopping and Checkpoint use
        (``optiloop.directions``): lowest ``val_loss``, highest ``val_r2``; a name it cannot place
        needs ``mode="min"`` or ``"max"``. With no ``key``: the run's monitored value in its
        direction (``self.monitor``, ``self.mode``), else ``val_loss`` (``train_loss`` without
        validation), lowest first: the epoch best.pt holds.

        Example:
            >>> History([{"epoch": 1, "val_acc": 0.8}, {"epoch": 2, "val_acc": 0.7}], monitor="val_acc").best()
            {'epoch': 1, 'val_acc': 0.8}
        """
        if key is None:
            if self.monitor is not None:
                key, mode = self.monitor, (self.mode if mode == "auto" else mode)
            else:
                key = "val_loss" if "val_loss" in self.keys() else "train_loss"
        mode = mode_for(key, mode)
        values = [(v, i) for i, v in enumerate(self[key]) if isinstance(v, (int, float)) and math.isfinite(v)]
        if not values:
            raise OptiloopError(f"history has no finite {key!r} yet")
        pick = min if mode == "min" else max
        return self.rows[pick(values, key=lambda t: (t[0], -t[1]) if mode == "max" else t)[1]]

    # -- files ----------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike) -> None:
        with atomic_open(path, "w") as f:
            w = csv.DictWriter(f, fieldnames=self.keys())
            w.writeheader()
            w.writerows(self.rows)

    def to_json(self, path: str | os.PathLike) -> None:
        with atomic_open(path, "w") as f:
            json.dump(self.rows, f, indent=1)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> History:
        with open(path, newline="", encoding="utf-8") as f:
            return cls({k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> History:
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def plot(self, path: str | os.PathLike, *, lr_log: bool = False) -> None:
        """Write loss, metrics and LR per epoch as one PNG (see optiloop.plots): with per-step
        rows of a schedule stepped per step, the per-step LR and loss. ``lr_log``: log LR axis."""
        from .plots import plot_history  # matplotlib: imported when a picture is drawn

        plot_history(self, path, lr_log=lr_log)

    def state_dict(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]

    def load_state_dict(self, rows: list[dict[str, Any]]) -> None:
        self.rows = [dict(r) for r in rows]


class Steps(History):
    """Per-step rows, one per recorded optimizer step, indexable by key like a History.

    Columns: ``step`` (the run's optimizer step, from 1), ``epoch`` (epochs done after that step:
    ``step / steps_per_epoch``, so it lines up with history.csv's ``epoch``), ``loss`` (the
    step's training loss; under gradient accumulation the group's weighted mean), ``lr`` (param
    group 0's LR used by the step) and ``lr_group<i>`` for every group when the groups' LRs differ,
    ``grad_norm`` (total L2 norm of the unscaled gradients before clipping) when recorded.

    Example:
        >>> s = Steps([{"step": 1, "epoch": 0.5, "loss": 2.0, "lr": 0.1},
        ...            {"step": 2, "epoch": 1.0, "loss": 1.5, "lr": 0.05}])
        >>> s["lr"], s.steps_per_epoch()
        ([0.1, 0.05], 2)
    """

    def __init__(self, rows: Iterable[dict[str, Any]] = ()):
        self.rows = [dict(r) for r in rows]  # no .steps of its own

    def __repr__(self) -> str:
        return f"Steps({len(self.rows)} steps, keys={self.keys()})"

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch, read back from ``step / epoch`` (None: no rows)."""
        for r in self.rows:
            if r.get("epoch"):
                return max(1, round(r["step"] / r["epoch"]))
        return None


def _parse(v: str) -> Any:
    if v == "":
        return None
    try:
        i = int(v)
        return i
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v
