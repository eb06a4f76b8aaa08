"""History: one row per epoch (epoch, train_loss, train_<metric>, val_..., lr, seconds)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

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
    """

    def __init__(self, rows: Iterable[dict[str, Any]] = ()):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]

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

    def best(self, key: str, mode: str = "auto") -> dict[str, Any]:
        """The row with the best finite value of ``key`` (the earliest on a tie).

        ``mode="auto"`` follows the direction rule EarlyStopping and Checkpoint use
        (``optiloop.directions``): lowest ``val_loss``, highest ``val_r2``; a name it cannot place
        needs ``mode="min"`` or ``"max"``.
        """
        from .directions import mode_for

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

    def plot(self, path: str | os.PathLike) -> None:
        """Write loss, metrics and LR per epoch as one PNG (see optiloop.plots)."""
        from .plots import plot_history

        plot_history(self, path)

    def state_dict(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]

    def load_state_dict(self, rows: list[dict[str, Any]]) -> None:
        self.rows = [dict(r) for r in rows]


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
