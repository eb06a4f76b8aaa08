"""Data sets for the command line: scikit-learn's embedded ones, CSV / .npz files, user functions.

Every source (``optiloop.sources``: one file each) becomes a :class:`Dataset` of numpy arrays
plus its task, its feature names and its class labels (the original values). :func:`split`
makes the train / validation split with a fixed seed; preprocessing (standardization fitted on
the train split) is ``optiloop.runs``'s.

Example:
    >>> from optiloop.datasets import split
    >>> from optiloop.sources import load_dataset
    >>> ds = load_dataset("wine")
    >>> ds.X.shape, ds.task, ds.classes, ds.features[:2]
    ((178, 13), 'classification', [0, 1, 2], ['alcohol', 'malic_acid'])
    >>> s = split(ds, val_fraction=0.2, seed=0)
    >>> len(s.X_train), len(s.X_val)
    (142, 36)
"""

from __future__ import annotations

import csv
import gzip
import importlib
import importlib.util
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OptiloopError

TASKS = ("auto", "classification", "regression")


def _sklearn_data(name: str) -> Path:
    """A data file inside the installed scikit-learn, found without importing it (its import pulls
    in scipy and costs seconds; reading an 8x8 digits array needs neither)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise OptiloopError("the built-in data sets ship inside scikit-learn: pip install scikit-learn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


def _gz_text(name: str) -> np.ndarray:
    with gzip.open(_sklearn_data(name), "rt", encoding="utf-8") as f:
        return np.loadtxt(f, delimiter="," if name.startswith("digits") else None)


def _counted_csv(name: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``n_samples,n_features,class names`` header, then rows of features + class id."""
    with open(_sklearn_data(name), encoding="utf-8") as f:
        header = f.readline().split(",")
        rows = np.loadtxt(f, delimiter=",", ndmin=2)
    n, k = int(header[0]), int(header[1])
    return rows[:n, :k], rows[:n, k].astype(np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    data = _gz_text("digits.csv.gz")
    return data[:, :-1], data[:, -1].astype(np.int64), [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]


def _wine() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return (*_counted_csv("wine_data.csv"), list(WINE_FEATURES))


def _breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return (*_counted_csv("breast_cancer.csv"), list(CANCER_FEATURES))


def _diabetes() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's ``load_diabetes()``: each feature centred and scaled by its standard deviation
    times the square root of the sample count (its ``scaled=True`` default)."""
    data, target = _gz_text("diabetes_data_raw.csv.gz"), _gz_text("diabetes_target.csv.gz")
    data = (data - data.mean(axis=0)) / data.std(axis=0)
    return data / len(data) ** 0.5, target, ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


WINE_FEATURES = ("alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
                 "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
                 "od280/od315_of_diluted_wines", "proline")
_CANCER = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave points",
           "symmetry", "fractal dimension")
CANCER_FEATURES = (*(f"mean {m}" for m in _CANCER), *(f"{m} error" for m in _CANCER), *(f"worst {m}" for m in _CANCER))

# name -> (loader of (X, y, feature names), task, one-line description). All ship inside
# scikit-learn's package folder (no download); read with numpy, without importing scikit-learn.
BUILTIN: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray, list[str]]], str, str]] = {
    "digits": (_digits, "classification",
               "handwritten digits, 8x8 images: 1797 samples, 64 features, 10 classes"),
    "breast_cancer": (_breast_cancer, "classification",
                      "breast cancer Wisconsin: 569 samples, 30 features, 2 classes"),
    "wine": (_wine, "classification",
             "wine recognition: 178 samples, 13 features, 3 classes"),
    "diabetes": (_diabetes, "regression",
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
    notes: list[str] = field(default_factory=list)  # what reading it did (rows left out ...): the run header says it
    columns: Any = None  # a table's typed columns (optiloop.tables.Columns) when X holds raw cells

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


MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})  # cells read as empty (any case)


def is_missing(v: Any) -> bool:
    """An empty cell: None, NaN, NaT, pandas' NA, or text such as "", "NA", "null"."""
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip().lower() in MISSING
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    if isinstance(v, np.datetime64):
        return bool(np.isnat(v))
    return type(v).__name__ in ("NAType", "NaTType")  # pandas' missing markers, without importing pandas


def to_number(v: Any) -> float:
    """A cell as a float (NaN when empty); ValueError when it is not a number."""
    if is_missing(v):
        return math.nan
    if isinstance(v, str):
        return float(v.strip())
    if isinstance(v, (bool, np.bool_, int, float, np.integer, np.floating)):
        return float(v)
    raise ValueError(v)


def numeric_column(values: Any, name: str, where: Any, *, empty: bool = False) -> np.ndarray:
    """One feature column as float64; a non-numeric value is one line naming it, and so is an
    empty cell unless ``empty`` (then NaN)."""
    col = np.asarray(values)
    if col.ndim != 1:
        raise OptiloopError(f"{where}: column {name!r} must hold one number per row")
    if col.dtype.kind not in "biuf":
        try:
            col = np.array([to_number(v) for v in col], dtype=np.float64)
        except (ValueError, TypeError):
            bad = next(v for v in col if not _is_number(v))
            raise OptiloopError(f"{where}: column {name!r} is not numeric (a cell holds {str(bad)[:40]!r}); "
                                "the run took numbers there") from None
    col = col.astype(np.float64)
    if np.isinf(col).any() or not empty and np.isnan(col).any():
        raise OptiloopError(f"{where}: column {name!r} has missing, NaN or infinite values")
    beyond = np.abs(col) > np.finfo(np.float32).max
    if beyond.any():
        raise OptiloopError(f"{where}: column {name!r} has the value {col[beyond][0]:g}, beyond the float32 range "
                            "(±3.4e+38) the model computes in")
    return col


def _is_number(v: Any) -> bool:
    try:
        to_number(v)
        return True
    except (ValueError, TypeError):
        return False


def labels(values: list[str]) -> np.ndarray:
    """Text labels as the user wrote them: integers if all are, else numbers, else text."""
    for dtype in (np.int64, np.float64):
        try:
            return np.array([dtype(v) for v in values], dtype=dtype)
        except ValueError:
            continue
    return np.array(values)


def read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray, list[str], str, list[str]]:
    """(cells, y, feature names, target name, notes) of a CSV; ``target`` defaults to the last
    column. The cells stay text (``optiloop.tables`` types them); rows without a label are left out,
    said in the notes."""
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
    X = np.array([table[h] for h in features], dtype=object).T
    y = np.array(table[target], dtype=object)
    unlabelled = np.array([is_missing(v) for v in y], dtype=bool)
    notes = []
    if unlabelled.any():
        if unlabelled.all():
            raise OptiloopError(f"{path}: the target column {target!r} is empty in every row")
        notes.append(f"left out {int(unlabelled.sum())} row{'s' if unlabelled.sum() > 1 else ''} with an empty "
                     f"{target!r} (no label to learn from)")
        X, y = X[~unlabelled], y[~unlabelled]
    return X, labels(list(y)), features, target, notes


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def finish(name: str, X: Any, y: Any, task: str, features: list[str] | None = None,
           target: str | None = None) -> Dataset:
    """A source's arrays as a checked :class:`Dataset`: X 2-D float32, the task decided ("auto":
    integer-valued or text targets with at most 100 distinct values are classes), class labels
    kept in their original values, features named (``x0``, ``x1`` ... when the source has no names)."""
    ds = _checked(name, X, y, task)
    ds.features = features or [f"x{i}" for i in range(ds.X.shape[1])]
    ds.target = target or "target"
    return ds


def _checked(name: str, X: Any, y: Any, task: str) -> Dataset:
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
    X = _cells(name, X)
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
    return Dataset(name, X, codes.astype(np.int64), "classification",
                   [c.item() if isinstance(c, np.generic) else c for c in classes])


def _cells(name: str, X: np.ndarray) -> np.ndarray:
    """Numbers as float32 (NaN where a cell is empty); anything else (text, dates, a mix) as the
    cells themselves, an object array that ``optiloop.tables`` types column by column."""
    if X.dtype.kind in "biuf":
        X = X.astype(np.float32)
        if np.isinf(X).any():
            raise OptiloopError(f"data {name!r}: X has infinite values")
        return X
    try:
        numbers = X.astype(np.float32)
    except (ValueError, TypeError):
        return X.astype(object)
    return numbers if np.isfinite(numbers).all() else X.astype(object)


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

