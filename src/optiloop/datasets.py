"""Data sets for the command line: scikit-learn's embedded ones, CSV / .npz files, user functions.

Every source becomes a :class:`Dataset` of numpy arrays plus its task, its feature names and its
class labels (the original values). :func:`split` makes the train / validation split with a fixed
seed; preprocessing (standardization fitted on the train split) is ``optiloop.runs``'s.

Example:
    >>> from optiloop.datasets import load_dataset, split
    >>> ds = load_dataset("wine")
    >>> ds.X.shape, ds.task, ds.classes, ds.features[:2]
    ((178, 13), 'classification', [0, 1, 2], ['alcohol', 'malic_acid'])
    >>> s = split(ds, val_fraction=0.2, seed=0)
    >>> len(s.X_train), len(s.X_val)
    (142, 36)
"""

from __future__ import annotations

import csv
import importlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OptiloopError, choices

TASKS = ("auto", "classification", "regression")


def _sklearn(loader: str) -> Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]:
    def load() -> tuple[np.ndarray, np.ndarray, list[str]]:
        import sklearn.datasets  # imported on use: it takes a moment and most commands skip it

        bunch = getattr(sklearn.datasets, loader)()
        return bunch.data, bunch.target, [str(f) for f in bunch.feature_names]

    return load


# name -> (loader of (X, y, feature names), task, one-line description). All ship inside
# scikit-learn: no download.
BUILTIN: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray, list[str]]], str, str]] = {
    "digits": (_sklearn("load_digits"), "classification",
               "handwritten digits, 8x8 images: 1797 samples, 64 features, 10 classes"),
    "breast_cancer": (_sklearn("load_breast_cancer"), "classification",
                      "breast cancer Wisconsin: 569 samples, 30 features, 2 classes"),
    "wine": (_sklearn("load_wine"), "classification",
             "wine recognition: 178 samples, 13 features, 3 classes"),
    "diabetes": (_sklearn("load_diabetes"), "regression",
                 "diabetes progression: 442 samples, 10 features, regression target"),
}


@dataclass
class Dataset:
    """Features ``X`` (float32, 2-D), targets ``y`` (int64 class indices or float32), the task."""

    name: str
    X: np.ndarray
    y: np.ndarray
    task: str  # "classification" | "regression"
    classes: list[Any] = field(default_factory=list)  # original labels, index = class id
    features: list[str] = field(default_factory=list)  # column names, in X's order
    target: str = "target"  # the label column's name (a CSV's own; "target" otherwise)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def out_features(self) -> int:
        """Width of the model's output: one logit per class, or 1 for regression."""
        return self.num_classes if self.task == "classification" else 1


@dataclass
class Split:
    """A train / validation split of a Dataset (raw values; rows shuffled with the split's seed)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


def is_user_function(spec: str) -> bool:
    """``package.module:function`` form (and not a Windows drive like ``C:\\data.csv``)."""
    mod, sep, fn = spec.partition(":")
    return bool(sep) and fn.isidentifier() and all(p.isidentifier() for p in mod.split("."))


def import_function(spec: str, what: str) -> Callable[..., Any]:
    """Import ``package.module:function``; a one-line OptiloopError if it is not there."""
    mod_name, _, fn_name = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise OptiloopError(f"{what} {spec!r}: cannot import {mod_name!r} ({e})") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module may raise anything: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OptiloopError(f"{what} {spec!r}: importing {mod_name!r} raised {type(e).__name__}"
                            f"{': ' + first[:200] if first else ''}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise OptiloopError(f"{what} {spec!r}: module {mod_name!r} has no function {fn_name!r}")
    return fn


def load_dataset(spec: str, *, target: str | None = None, task: str = "auto") -> Dataset:
    """Load a data set by built-in name, ``.csv`` / ``.npz`` path, or ``package.module:function``.

    Args:
        spec: one of :data:`BUILTIN`, a CSV file (header row; ``target`` names the label column,
            default the last one), an ``.npz`` with arrays ``X`` and ``y``, or a function returning
            ``(X, y)`` arrays.
        target: the CSV column holding the target.
        task: "classification", "regression", or "auto" (integer-valued targets, or text labels,
            with at most 100 distinct values are classes; anything else is regression).
    """
    if task not in TASKS:
        raise OptiloopError(f"data.task: unknown {task!r}; choose one of: {choices(TASKS)}")
    if target is not None and not str(spec).lower().endswith(".csv"):
        raise OptiloopError("data.target names a CSV column; it applies to .csv files only")
    features: list[str] | None = None
    if spec in BUILTIN:
        loader, builtin_task, _ = BUILTIN[spec]
        X, y, features = loader()
        task = builtin_task if task == "auto" else task
    elif is_user_function(spec):
        out = call_user_function(import_function(spec, "data"), f"data {spec!r}")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise OptiloopError(f"data {spec!r} must return (X, y) arrays, "
                                f"got {type(out).__name__}")
        X, y = out
        if hasattr(X, "columns"):  # a pandas DataFrame: keep its column names
            features = [str(c) for c in X.columns]
    elif spec.lower().endswith(".csv"):
        X, y, features, target = read_csv(Path(spec), target)
    elif spec.lower().endswith(".npz"):
        X, y = _read_npz(Path(spec))
    else:
        raise OptiloopError(
            f"data.name: unknown data set {spec!r}; choose one of: {choices(BUILTIN)}, "
            "a .csv or .npz file, or package.module:function"
        )
    ds = _finish(spec, X, y, task)
    ds.features = features or [f"x{i}" for i in range(ds.X.shape[1])]
    ds.target = target or "target"
    return ds


def call_user_function(fn: Callable[..., Any], what: str, **kwargs: Any) -> Any:
    """Call a user's ``package.module:function``; whatever it raises becomes one line naming it."""
    try:
        return fn(**kwargs)
    except OptiloopError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything; say so in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OptiloopError(f"{what} raised {type(e).__name__}{': ' + first[:200] if first else ''}") from None


def read_table(path: Path, what: str = "data.name") -> dict[str, list[str]]:
    """A CSV file's columns by header name, as text (one line for a missing, undecodable or ragged
    file)."""
    if not path.is_file():
        raise OptiloopError(f"{what}: no CSV file at {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise OptiloopError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start}); "
                            "save the CSV as UTF-8") from None
    except csv.Error as e:
        raise OptiloopError(f"{path}: not a readable CSV ({e})") from None
    if len(rows) < 2:
        raise OptiloopError(f"{path}: needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise OptiloopError(f"{path}: line {bad[0]} has a different number of fields "
                            "than the header")
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise OptiloopError(f"{path}: column {twice[0]!r} appears more than once in the header")
    return {h: [r[i].strip() for r in body] for i, h in enumerate(header)}


def numeric_column(values: Any, name: str, where: Any) -> np.ndarray:
    """One feature column as float64; a non-numeric or missing value is one line naming it."""
    try:
        col = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise OptiloopError(f"{where}: column {name!r} is not numeric; "
                            "only numeric feature columns are supported") from None
    if col.ndim != 1:
        raise OptiloopError(f"{where}: column {name!r} must hold one number per row")
    if not np.isfinite(col).all():
        raise OptiloopError(f"{where}: column {name!r} has missing, NaN or infinite values")
    beyond = np.abs(col) > np.finfo(np.float32).max
    if beyond.any():
        raise OptiloopError(f"{where}: column {name!r} has the value {col[beyond][0]:g}, beyond the float32 range "
                            "(±3.4e+38) the model computes in")
    return col


def labels(values: list[str]) -> np.ndarray:
    """Text labels as the user wrote them: integers if all are, else numbers, else text."""
    for dtype in (np.int64, np.float64):
        try:
            return np.array([dtype(v) for v in values], dtype=dtype)
        except ValueError:
            continue
    return np.array(values)


def read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(X, y, feature names, target name) of a CSV; ``target`` defaults to the last column."""
    table = read_table(path)
    header = list(table)
    if target is None:
        target = header[-1]
    if target not in table:
        raise OptiloopError(f"data.target: {path} has no column {target!r}; "
                            f"columns: {', '.join(header)}")
    features = [h for h in header if h != target]
    if not features:
        raise OptiloopError(f"{path}: no feature columns besides the target {target!r}")
    X = np.column_stack([numeric_column(table[h], h, path) for h in features])
    return X, labels(table[target]), features, target


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise OptiloopError(f"data.name: no .npz file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:  # no pickles: loading data runs no code
            missing = [k for k in ("X", "y") if k not in z.files]
            if missing:
                raise OptiloopError(f"{path}: needs arrays X and y; "
                                    f"it has: {', '.join(z.files) or 'none'}")
            return z["X"], z["y"]
    except OptiloopError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # empty, truncated, not an npz
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptiloopError(f"{path}: not a readable .npz of arrays X and y ({first[:160]})") from None


def _finish(name: str, X: Any, y: Any, task: str) -> Dataset:
    X, y = _array(X, name, "X"), _array(y, name, "y")
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        X = X.reshape(len(X), -1)  # images etc.: flattened; the cnn model reshapes them back
    if y.ndim != 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise OptiloopError(f"data {name!r}: y must be one target per sample, got shape {y.shape}")
    y = y.reshape(-1)
    if len(X) != len(y):
        raise OptiloopError(f"data {name!r}: X has {len(X)} samples but y has {len(y)}")
    if len(X) < 2:
        raise OptiloopError(f"data {name!r}: needs at least 2 samples, got {len(X)}")
    try:
        X = X.astype(np.float32)
    except ValueError:
        raise OptiloopError(f"data {name!r}: X must be numeric") from None
    if not np.isfinite(X).all():
        raise OptiloopError(f"data {name!r}: X has NaN or infinite values")
    numeric = np.issubdtype(y.dtype, np.number) or y.dtype == bool
    if task == "auto":
        integral = numeric and np.all(np.mod(y.astype(np.float64), 1) == 0)
        few = len(np.unique(y)) <= 100
        task = "classification" if (not numeric or integral) and few else "regression"
    if task == "regression":
        if not numeric:
            raise OptiloopError(f"data {name!r}: a regression target must be numeric")
        y = y.astype(np.float32)
        if not np.isfinite(y).all():
            raise OptiloopError(f"data {name!r}: y has NaN or infinite values")
        return Dataset(name, X, y, "regression")
    classes, codes = np.unique(y, return_inverse=True)
    return Dataset(name, X, codes.astype(np.int64), "classification", [c.item() for c in classes])


def _array(values: Any, name: str, what: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except ValueError as e:  # rows of different lengths, mostly
        first = str(e).strip().splitlines()[0][:160]
        raise OptiloopError(f"data {name!r}: {what} is not a table of numbers (rows of different lengths?): "
                            f"{first}") from None


def split(ds: Dataset, *, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Shuffle with ``seed`` and hold out ``val_fraction`` of the rows for validation."""
    if ds.task == "classification" and ds.num_classes < 2:
        raise OptiloopError(f"data {ds.name!r}: training a classifier needs at least 2 classes, "
                            f"got {ds.num_classes}")
    n = len(ds.X)
    n_val = int(round(n * val_fraction))
    if not 1 <= n_val <= n - 1:
        raise OptiloopError(f"data.val_fraction: {val_fraction} of {n} samples leaves an empty "
                            "train or validation split")
    order = np.random.default_rng(seed).permutation(n)
    tr, va = order[n_val:], order[:n_val]
    return Split(ds.X[tr], ds.y[tr], ds.X[va], ds.y[va])


def describe_builtin() -> dict[str, str]:
    """Built-in name -> one line."""
    return {k: v[2] for k, v in BUILTIN.items()}

