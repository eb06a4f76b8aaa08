"""A CSV file with a header row: feature columns by name, the label column named by ``data.target``
(default the last one). Cells stay as written until ``optiloop.tables`` types the columns (numbers,
dates, categories, IDs, empty cells)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import Dataset, finish, labels, read_csv, read_table
from ..errors import OptiloopError
from . import DataSource, register


@register
class CsvFile(DataSource):
    order = 20
    takes_target = True
    form = "a .csv file"

    def claims(self, spec: str) -> bool:
        return spec.lower().endswith(".csv")

    def load(self, spec: str, *, target: str | None, task: str) -> Dataset:
        X, y, features, target, notes = read_csv(Path(spec), target)
        ds = finish(spec, X, y, task, features, target)
        ds.notes = notes
        return ds

    def rows(self, spec: str, features: list[str], task: str, *, target: str, need_labels: bool, what: str,
             target_arg: str) -> tuple[Any, np.ndarray | None]:
        table = read_table(Path(spec), what)
        y = labels(table.pop(target)) if target in table else None
        if need_labels and y is None:
            raise OptiloopError(f"{what} {spec}: no label column {target!r} to evaluate against; columns: "
                                f"{', '.join(table)} (name it with {target_arg})")
        return table, y
