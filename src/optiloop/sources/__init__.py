"""Where a run's data comes from: one file per source in this package, found by itself.

A source claims the specs it reads (a built-in name, ``package.module:function``, a ``.csv`` or
``.npz`` path ...) and turns one into a :class:`~optiloop.datasets.Dataset` for training, or into
rows a trained run is applied to (``optiloop predict`` / ``eval``). Adding a source is one file
here: a :class:`DataSource` subclass decorated with :func:`register`; every module of this package
is imported when a spec is first looked up.

Example:
    >>> ds = load_dataset("wine")
    >>> ds.X.shape, ds.task
    ((178, 13), 'classification')
    >>> type(find_source("my.csv")).__name__, type(find_source("pkg.mod:fn")).__name__
    ('CsvFile', 'UserFunction')
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import numpy as np

from ..datasets import BUILTIN, TASKS, Dataset
from ..errors import OptiloopError, choices

_SOURCES: list[tuple[int, DataSource]] = []


class DataSource:
    """One kind of data spec. ``order``: claimed in increasing order (names before file suffixes);
    ``takes_target``: ``data.target`` (a column name) applies to it."""

    order = 100
    takes_target = False
    form = ""  # how the spec is written, for the one line that lists the valid forms

    def claims(self, spec: str) -> bool:
        raise NotImplementedError

    def load(self, spec: str, *, target: str | None, task: str) -> Dataset:
        """The whole data set, its task decided (``task`` may be "auto")."""
        raise NotImplementedError

    def rows(self, spec: str, features: list[str], task: str, *, target: str, need_labels: bool, what: str,
             target_arg: str) -> tuple[Any, np.ndarray | None]:
        """Rows to apply a run to: (a mapping of columns by name, or an array in ``features``' order;
        the labels in their original values, or None). By default: the whole data set, which must
        have the run's features (by name)."""
        ds = self.load(spec, target=None, task=task)
        missing = [f for f in features if f not in ds.features]
        if missing:  # (extra columns are fine: a run may have left some out)
            raise OptiloopError(f"{what} {spec} has {len(ds.features)} features but not the run's {len(features)}"
                                f" (missing: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''})")
        table = {f: ds.X[:, i] for i, f in enumerate(ds.features)}
        y = np.asarray(ds.classes, dtype=object)[ds.y] if ds.task == "classification" else ds.y
        return table, y


def register(cls: type[DataSource]) -> type[DataSource]:
    """Class decorator: make a source known (its module in this package is imported on first use)."""
    _SOURCES.append((cls.order, cls()))
    _SOURCES.sort(key=lambda pair: pair[0])
    return cls


def sources() -> list[DataSource]:
    """Every source, in the order they claim specs."""
    if not _SOURCES:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
    return [source for _, source in _SOURCES]


def find_source(spec: str) -> DataSource:
    """The source that reads ``spec``, or one line naming the valid forms."""
    for source in sources():
        if source.claims(spec):
            return source
    forms = ", ".join(s.form for s in sources() if s.form)
    raise OptiloopError(f"data.name: unknown data set {spec!r}; choose one of: {choices(BUILTIN)}, {forms}")


def load_dataset(spec: str, *, target: str | None = None, task: str = "auto") -> Dataset:
    """Load a data set by built-in name, ``.csv`` / ``.npz`` path, ``package.module:function``, or
    any other registered source.

    Args:
        spec: one of ``datasets.BUILTIN``, a CSV file (header row; ``target`` names the label column,
            default the last one), an ``.npz`` with arrays ``X`` and ``y``, or a function returning
            ``(X, y)`` arrays.
        target: the CSV column holding the target.
        task: "classification", "regression", or "auto" (integer-valued targets, or text labels,
            with at most 100 distinct values are classes; anything else is regression).
    """
    if task not in TASKS:
        raise OptiloopError(f"data.task: unknown {task!r}; choose one of: {choices(TASKS)}")
    source = find_source(spec)
    if target is not None and not source.takes_target:
        raise OptiloopError("data.target names a CSV column; it applies to .csv files only")
    return source.load(spec, target=target, task=task)
