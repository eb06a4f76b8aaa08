"""Preprocessing: what turns a user's rows into a model's inputs, and its outputs back into labels.

Fitted on the train split only. Two forms, one interface:

- a table of numbers without an empty cell: numpy's standardization (:class:`Standardizer`,
  the arithmetic and statistics of scikit-learn's ``StandardScaler``, without its import, which
  costs seconds at every start), plus the train split's medians so that a row given later with an
  empty cell can still be predicted;
- any other table (categories, dates, empty cells): a fitted scikit-learn ``Pipeline``
  (``optiloop.tables.TableEncoder``).

Either way a regression target is standardized too (one LR fits every data set), and the
preprocessing knows the feature names and order, the label column and the original label values.
It travels in checkpoints as plain data (:meth:`Preprocessing.state_dict`): no pickled object, so a
checkpoint stays loadable with ``torch.load(weights_only=True)``, and loading rebuilds it with the
very same statistics.

Example:
    >>> import numpy as np
    >>> from optiloop.datasets import split
    >>> from optiloop.sources import load_dataset
    >>> ds = load_dataset("wine"); raw = split(ds)
    >>> prep = Preprocessing.fit(ds, raw.X_train, raw.y_train)
    >>> again = Preprocessing.from_state_dict(prep.state_dict())
    >>> np.array_equal(prep.inputs(raw.X_val), again.inputs(raw.X_val))
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .datasets import Dataset, is_missing, numeric_column
from .errors import DataWarning, OptiloopError
from .tables import TableEncoder, date_parts

_EPS = np.finfo(np.float64).eps


@dataclass
class Standardizer:
    """scikit-learn ``StandardScaler``'s fitted statistics and arithmetic, in numpy: the mean and
    variance accumulated in float64, a near-constant feature's scale set to 1 (its own rule), the
    transform computed in the data's float32 (its results equal, bit for bit)."""

    mean_: np.ndarray
    scale_: np.ndarray
    var_: np.ndarray
    n_samples_seen_: float

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        X64 = np.asarray(X, dtype=np.float64)
        mean, var, n = X64.mean(axis=0), X64.var(axis=0), len(X64)
        constant = var <= n * _EPS * var + (n * mean * _EPS) ** 2  # StandardScaler's _is_constant_feature
        scale = np.where(constant | (var == 0), 1.0, np.sqrt(var))
        return cls(mean, scale, var, float(n))

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return (X - self.mean_.astype(np.float32)) / self.scale_.astype(np.float32)

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) * self.scale_ + self.mean_

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean_.tolist(), "scale": self.scale_.tolist(), "var": self.var_.tolist(),
                "n_samples_seen": float(self.n_samples_seen_), "dtype": "float64"}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any] | None) -> Standardizer | None:
        if state is None:
            return None
        return cls(np.asarray(state["mean"], dtype=np.float64), np.asarray(state["scale"], dtype=np.float64),
                   np.asarray(state["var"], dtype=np.float64), float(state["n_samples_seen"]))


@dataclass
class Preprocessing:
    """Everything between a user's rows and the model, fitted on the train split.

    Attributes:
        task: "classification" or "regression".
        features: the columns the run takes, in order (a table's raw columns).
        target: the label column's name (a CSV's own, else "target").
        classes: the original label values; class id ``i`` is ``classes[i]``.
        x_scaler: the features' :class:`Standardizer`, or None (data.standardize off, or a table,
            whose pipeline scales).
        y_scaler: the same for a regression target (so one LR fits every data set), or None.
        fill: the train split's median of each feature (numbers only): what an empty cell becomes
            at predict time; None for runs that predate it or ``data.impute = false``.
        table: a table's fitted scikit-learn pipeline (``optiloop.tables.TableEncoder``), or None.
    """

    task: str
    features: list[str]
    target: str
    classes: list[Any]
    x_scaler: Standardizer | None = None
    y_scaler: Standardizer | None = None
    fill: np.ndarray | None = None
    table: TableEncoder | None = None

    @classmethod
    def fit(cls, ds: Dataset, X_train: np.ndarray, y_train: np.ndarray, *, standardize: bool = True,
            impute: bool = True) -> Preprocessing:
        """Fit on the train split only: nothing about the validation rows leaks into training.
        A feature with zero spread is only centred (StandardScaler's own rule)."""
        x_scaler = y_scaler = fill = table = None
        if ds.columns is not None:
            table = TableEncoder.fit(ds.columns, X_train, standardize=standardize)
        else:
            x_scaler = Standardizer.fit(X_train) if standardize else None
            fill = np.median(np.asarray(X_train, dtype=np.float64), axis=0) if impute else None
        if standardize and ds.task == "regression":
            y_scaler = Standardizer.fit(np.asarray(y_train).reshape(-1, 1))
        return cls(ds.task, list(ds.features), ds.target, list(ds.classes), x_scaler, y_scaler, fill, table)

    @property
    def out_features(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    @property
    def encoded(self) -> list[str]:
        """The model's input columns: the features, or a table's encoded columns (one-hot ...)."""
        return self.table.encoded if self.table is not None else list(self.features)

    # -- rows in -------------------------------------------------------------------------------
    def matrix(self, X: Any, where: str = "inputs") -> np.ndarray:
        """The rows as the run's columns, in its order: float64 (NaN where a cell is empty), or a
        table's cells (an object array). Takes a DataFrame, a mapping of columns, a list of row
        dicts, one row as a dict or a pandas Series (all matched by name: order free, extra
        columns ignored), or an array / tensor (by position)."""
        columns = _columns(X)
        if columns is not None:
            missing = [f for f in self.features if f not in columns]
            if missing:
                shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
                raise OptiloopError(f"{where}: missing feature column{'s' if len(missing) > 1 else ''} "
                                    f"{shown}; the run takes {len(self.features)}: "
                                    f"{', '.join(self.features[:10])}{' ...' if len(self.features) > 10 else ''}")
            if self.table is not None:
                return np.array([list(np.asarray(columns[f], dtype=object)) for f in self.features], dtype=object).T
            return np.column_stack([numeric_column(columns[f], f, where, empty=True) for f in self.features])
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        arr = np.asarray(X, dtype=object if self.table is not None else None)
        if arr.ndim == 1:
            arr = arr[None, :] if len(self.features) > 1 else arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != len(self.features):
            raise OptiloopError(f"{where}: {arr.shape[1] if arr.ndim == 2 else arr.shape} columns, but the "
                                f"run takes {len(self.features)} features in this order: "
                                f"{', '.join(self.features[:10])}{' ...' if len(self.features) > 10 else ''} "
                                "(a DataFrame or a CSV is matched by column name)")
        if self.table is not None:
            return arr
        if arr.dtype.kind not in "biuf":
            return np.column_stack([numeric_column(arr[:, j], f, where, empty=True)
                                    for j, f in enumerate(self.features)])
        return arr.astype(np.float64)

    def inputs(self, X: Any, where: str = "inputs", notes: list[str] | None = None) -> np.ndarray:
        """The model's inputs (float32): the rows through the fitted preprocessing. What it does
        beyond that (empty cells filled, categories never seen in training) goes into ``notes``,
        or is warned as an ``optiloop.errors.DataWarning`` when ``notes`` is None."""
        M = self.matrix(X, where)
        if len(M) == 0:
            raise OptiloopError(f"{where}: no rows")
        said: list[str] = []
        if self.table is not None:
            self._check_cells(M, where)
            said = self.table.report(M)
            out = self.table.transform(M)
        else:
            out = self._impute(M, where, said).astype(np.float32)
            if self.x_scaler is not None:
                out = self.x_scaler.transform(out)
        if notes is not None:
            notes.extend(said)
        for note in said if notes is None else ():
            warnings.warn(f"{where}: {note}", DataWarning, stacklevel=2)
        return out

    def encode(self, X: Any, where: str = "inputs") -> np.ndarray:
        """The rows as an export of the run takes them: numbers (and a table's date parts and
        category indicators) before the filling of empty cells and the standardization, which the
        export does itself; NaN where a cell is empty."""
        M = self.matrix(X, where)
        if self.table is None:
            return M.astype(np.float64)
        self._check_cells(M, where)
        return self.table.encode(M)

    def tail(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fill, mean, scale) per encoded column: what turns :meth:`encode`'s columns into the
        model's inputs (``(where_nan(x, fill) - mean) / scale``)."""
        if self.table is not None:
            return self.table.tail()
        n = len(self.features)
        fill = self.fill if self.fill is not None else np.full(n, np.nan)
        if self.x_scaler is None:
            return fill, np.zeros(n), np.ones(n)
        return fill, self.x_scaler.mean_, self.x_scaler.scale_

    def _impute(self, M: np.ndarray, where: str, said: list[str]) -> np.ndarray:
        empty = np.isnan(M)
        if not empty.any():
            return M
        counts = {f: int(n) for f, n in zip(self.features, empty.sum(axis=0), strict=True) if n}
        if self.fill is None:
            name = next(iter(counts))
            raise OptiloopError(f"{where}: column {name!r} has missing, NaN or infinite values (this run fills no "
                                "empty cells: it was trained with data.impute = false, or before optiloop did)")
        said.append("filled empty cells with the training median: " + ", ".join(f"{f} {n}" for f, n in counts.items()))
        return np.where(empty, self.fill, M)

    def _check_cells(self, M: np.ndarray, where: str) -> None:
        """A table's numbers and dates are what they were in training: one line naming a cell that is not."""
        state = self.table.state
        for c in state["numeric"]:
            numeric_column(M[:, self.features.index(c)], c, where, empty=True)
        for c in state["dates"]:
            col = M[:, [self.features.index(c)]]
            parts = date_parts(col)[:, 0]
            bad = [v for v, p in zip(col[:, 0], parts, strict=True) if np.isnan(p) and not is_missing(v)]
            if bad:
                raise OptiloopError(f"{where}: column {c!r} holds dates, but a cell holds {str(bad[0])[:40]!r} "
                                    "(write dates as YYYY-MM-DD)")

    def targets(self, y: Any, where: str = "labels") -> np.ndarray:
        """Training targets from original values: class ids, or the standardized regression value."""
        y = np.asarray(y).reshape(-1)
        if self.task == "classification":
            ids = {c: i for i, c in enumerate(self.classes)}
            out = np.empty(len(y), dtype=np.int64)
            for n, v in enumerate(y):
                key = v.item() if isinstance(v, np.generic) else v
                if key not in ids:
                    raise OptiloopError(f"{where}: label {key!r} is not among the run's classes "
                                        f"{', '.join(map(str, self.classes))}")
                out[n] = ids[key]
            return out
        try:
            values = y.astype(np.float32)
        except (ValueError, TypeError):
            raise OptiloopError(f"{where}: a regression target must be numeric") from None
        if self.y_scaler is None:
            return values
        return self.y_scaler.transform(values.reshape(-1, 1)).reshape(-1).astype(np.float32)

    # -- outputs back --------------------------------------------------------------------------
    def probabilities(self, outputs: torch.Tensor) -> np.ndarray:
        """Class probabilities from the model's outputs (logits, or log-probabilities for nll)."""
        return torch.softmax(outputs.float(), dim=1).numpy()

    def labels_of(self, outputs: torch.Tensor) -> np.ndarray:
        """Predicted labels in the original values, or regression values in the target's units."""
        if self.task == "classification":
            return np.asarray(self.classes)[outputs.argmax(dim=1).numpy()]
        values = outputs.float().reshape(len(outputs), -1)[:, 0].numpy().astype(np.float64)
        if self.y_scaler is not None:
            values = self.y_scaler.inverse_transform(values.reshape(-1, 1)).reshape(-1)
        return values

    # -- as plain data, for checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task, "features": list(self.features), "target": self.target,
                "classes": list(self.classes),
                "x_scaler": self.x_scaler.state_dict() if self.x_scaler is not None else None,
                "y_scaler": self.y_scaler.state_dict() if self.y_scaler is not None else None,
                "fill": self.fill.tolist() if self.fill is not None else None,
                "table": self.table.state_dict() if self.table is not None else None}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Preprocessing:
        table = None
        if state.get("table") is not None:
            table = TableEncoder.from_state_dict(state["table"])
        fill = state.get("fill")
        return cls(state["task"], list(state["features"]), state["target"], list(state["classes"]),
                   Standardizer.from_state_dict(state["x_scaler"]), Standardizer.from_state_dict(state["y_scaler"]),
                   np.asarray(fill, dtype=np.float64) if fill is not None else None, table)


def _columns(X: Any) -> Mapping[str, Any] | None:
    """Rows given by name, as columns: a DataFrame, a mapping of columns, one row (a mapping of
    scalars, a pandas Series), a list of row dicts. None for arrays and tensors (by position)."""
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # a DataFrame, without importing pandas
        return {str(c): X[c].to_numpy() for c in X.columns}
    if hasattr(X, "index") and hasattr(X, "to_numpy") and getattr(X, "ndim", 0) == 1:  # a Series: one row
        return {str(k): [v] for k, v in X.items()}
    if isinstance(X, Mapping):
        if all(np.ndim(v) == 0 for v in X.values()):  # one row
            return {str(k): [v] for k, v in X.items()}
        return {str(k): (v.to_numpy() if hasattr(v, "to_numpy") else v) for k, v in X.items()}
    if isinstance(X, (list, tuple)) and X and all(isinstance(r, Mapping) for r in X):
        rows = [{str(k): v for k, v in r.items()} for r in X]
        return {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    return None
