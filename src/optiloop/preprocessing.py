"""Preprocessing: what turns a user's rows into a model's inputs, and its outputs back into labels.

Fitted on the train split only (scikit-learn's ``StandardScaler`` for the features, and for a
regression target so one LR fits every data set); it also knows the feature names and order, the
label column and the original label values. It travels in checkpoints as plain data
(:meth:`Preprocessing.state_dict`): no pickled scikit-learn object, so a checkpoint stays loadable
with ``torch.load(weights_only=True)``, and the scaler is rebuilt with the very same statistics.

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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .datasets import Dataset, numeric_column
from .errors import OptiloopError


def _scaler_state(scaler: Any) -> dict[str, Any] | None:
    """A fitted StandardScaler as plain data (no pickled sklearn object in a checkpoint)."""
    if scaler is None:
        return None
    return {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(), "var": scaler.var_.tolist(),
            "n_samples_seen": float(scaler.n_samples_seen_), "dtype": str(scaler.mean_.dtype)}


def _scaler_from(state: Mapping[str, Any] | None) -> Any:
    """The StandardScaler ``_scaler_state`` described, rebuilt with the very same statistics."""
    if state is None:
        return None
    from sklearn.preprocessing import StandardScaler  # scikit-learn: imported when fitting

    scaler = StandardScaler()
    dtype = np.dtype(state["dtype"])
    scaler.mean_ = np.asarray(state["mean"], dtype=dtype)
    scaler.scale_ = np.asarray(state["scale"], dtype=dtype)
    scaler.var_ = np.asarray(state["var"], dtype=dtype)
    scaler.n_samples_seen_ = state["n_samples_seen"]
    scaler.n_features_in_ = len(scaler.mean_)
    return scaler


@dataclass
class Preprocessing:
    """Everything between a user's rows and the model, fitted on the train split.

    Attributes:
        task: "classification" or "regression".
        features: the feature names, in the order the model takes them.
        target: the label column's name (a CSV's own, else "target").
        classes: the original label values; class id ``i`` is ``classes[i]``.
        x_scaler: scikit-learn ``StandardScaler`` of the features, or None (data.standardize off).
        y_scaler: the same for a regression target (so one LR fits every data set), or None.
    """

    task: str
    features: list[str]
    target: str
    classes: list[Any]
    x_scaler: Any = None
    y_scaler: Any = None

    @classmethod
    def fit(cls, ds: Dataset, X_train: np.ndarray, y_train: np.ndarray, *, standardize: bool = True
            ) -> Preprocessing:
        """Fit on the train split only: nothing about the validation rows leaks into training.
        A feature with zero spread is only centred (StandardScaler's own rule)."""
        x_scaler = y_scaler = None
        if standardize:
            from sklearn.preprocessing import StandardScaler  # (as above)

            x_scaler = StandardScaler().fit(X_train)
            if ds.task == "regression":
                y_scaler = StandardScaler().fit(y_train.reshape(-1, 1))
        return cls(ds.task, list(ds.features), ds.target, list(ds.classes), x_scaler, y_scaler)

    @property
    def out_features(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    # -- rows in -------------------------------------------------------------------------------
    def matrix(self, X: Any, where: str = "inputs") -> np.ndarray:
        """The raw feature matrix (float32, the model's column order) from a DataFrame or a
        mapping of columns (matched by name: order free, extra columns ignored) or an array /
        tensor (by position)."""
        if hasattr(X, "columns") or isinstance(X, Mapping):
            have = [str(c) for c in (X.columns if hasattr(X, "columns") else X.keys())]
            missing = [f for f in self.features if f not in have]
            if missing:
                shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
                raise OptiloopError(f"{where}: missing feature column{'s' if len(missing) > 1 else ''} "
                                    f"{shown}; the run takes {len(self.features)}: "
                                    f"{', '.join(self.features[:10])}{' ...' if len(self.features) > 10 else ''}")
            if hasattr(X, "columns"):
                X = {str(c): X[c] for c in X.columns}
            cols = [numeric_column(_values(X[f]), f, where) for f in self.features]
            return np.column_stack(cols).astype(np.float32)
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        arr = np.asarray(X)
        if arr.ndim == 1:
            arr = arr[None, :] if len(self.features) > 1 else arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != len(self.features):
            raise OptiloopError(f"{where}: {arr.shape[1] if arr.ndim == 2 else arr.shape} columns, but the "
                                f"run takes {len(self.features)} features in this order: "
                                f"{', '.join(self.features[:10])}{' ...' if len(self.features) > 10 else ''} "
                                "(a DataFrame or a CSV is matched by column name)")
        try:
            arr = arr.astype(np.float32)
        except (ValueError, TypeError):
            raise OptiloopError(f"{where}: the inputs are not numeric") from None
        if not np.isfinite(arr).all():
            raise OptiloopError(f"{where}: the inputs have NaN or infinite values")
        return arr

    def inputs(self, X: Any, where: str = "inputs") -> np.ndarray:
        """The model's inputs: ``matrix(X)`` standardized with the train split's statistics."""
        M = self.matrix(X, where)
        if len(M) == 0:
            raise OptiloopError(f"{where}: no rows")
        return self.x_scaler.transform(M).astype(np.float32) if self.x_scaler is not None else M

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
                "classes": list(self.classes), "x_scaler": _scaler_state(self.x_scaler),
                "y_scaler": _scaler_state(self.y_scaler)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Preprocessing:
        return cls(state["task"], list(state["features"]), state["target"], list(state["classes"]),
                   _scaler_from(state["x_scaler"]), _scaler_from(state["y_scaler"]))


def _values(column: Any) -> Any:
    """A DataFrame column's values (pandas Series) or any sequence, as an array."""
    return column.to_numpy() if hasattr(column, "to_numpy") else column
