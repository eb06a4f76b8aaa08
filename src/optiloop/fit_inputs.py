"""What ``fit`` does with its inputs before it builds the loop: the habits a Python user brings.

- pandas: a DataFrame / Series as ``X`` / ``y`` becomes an array (its values, column order kept); a
  text column or an empty cell is one line saying what to do (``optiloop train`` encodes tables).
- ``validation_split=0.2`` (Keras' name): that share of the in-memory rows held out as
  ``val_data``, drawn with the seed (``seed``, or 0), stratified by class for a classification loss.
- ``callbacks=`` may be one callback.
- ``batch_size`` with a DataLoader: the loader batches by itself; a different ``batch_size`` warns.
- Labels and widths: float targets for ``cross_entropy``, a class id beyond the model's output
  width, an ``X`` wider or narrower than the model's first layer: one line naming which.

Example:
    >>> import numpy as np
    >>> X, y = np.zeros((10, 3), np.float32), np.array([0, 1] * 5)
    >>> train, val = split_off((X, y), 0.2, seed=0, classes=y)
    >>> len(train[0]), len(val[0]), sorted(val[1].tolist())
    (8, 2, [0, 1])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .callbacks import Callback
from .errors import OptiloopError
from .settings import check_fraction

DEFAULT_BATCH_SIZE = 32
CLASS_LOSSES = ("cross_entropy", "nll")


def prepared(model: nn.Module, args: Mapping[str, Any]) -> dict[str, Any]:
    """``fit``'s ``train_data``, ``val_data``, ``callbacks`` and ``batch_size``, as the loop takes
    them (``args``: fit's keywords by name)."""
    train, val = _frames(args["train_data"], "train_data"), _frames(args["val_data"], "val_data")
    loss, step, fraction = args["loss"], args["step"], args.get("validation_split")
    classes = _class_ids(train) if step is None and loss in CLASS_LOSSES else None
    if fraction is not None:
        check_fraction(fraction)
        if val is not None:
            raise OptiloopError("give val_data or validation_split, not both")
        seed = args["seed"] if args["seed"] is not None else 0
        train, val = split_off(train, fraction, seed=seed, classes=classes)
    callbacks = args["callbacks"]
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    batch_size = args["batch_size"]
    if isinstance(train, DataLoader) and batch_size is not None and batch_size != train.batch_size:
        warnings.warn(f"batch_size={batch_size} is not used: a DataLoader batches by itself (its batch_size is "
                      f"{train.batch_size}); pass a Dataset or arrays for fit to batch", UserWarning, stacklevel=3)
    if step is None and isinstance(loss, str) and loss != "model":
        for name, data in (("train_data", train), ("val_data", val)):
            check_pair(model, data, loss, name)
    return {"train_data": train, "val_data": val, "callbacks": callbacks,
            "batch_size": DEFAULT_BATCH_SIZE if batch_size is None else batch_size}


# --- pandas ---------------------------------------------------------------------------------------
def _is_frame(a: Any) -> bool:
    return hasattr(a, "to_numpy") and (hasattr(a, "columns") or hasattr(a, "index"))  # without importing pandas


def _frames(data: Any, name: str) -> Any:
    """An ``(X, y)`` pair (or a lone X) whose parts are pandas objects, as arrays."""
    if isinstance(data, tuple | list) and len(data) == 2 and any(_is_frame(a) for a in data):
        return type(data)(_array(a, f"{name} {'X' if i == 0 else 'y'}") if _is_frame(a) else a
                          for i, a in enumerate(data))
    if _is_frame(data) and hasattr(data, "columns"):
        return _array(data, f"{name} X")
    return data


def _array(frame: Any, where: str) -> np.ndarray:
    """A DataFrame's or Series' values: numbers as they are (float32 for floats), one line for text
    or empty cells."""
    columns = list(frame.columns) if hasattr(frame, "columns") else [getattr(frame, "name", None) or "values"]
    values = [frame[c].to_numpy() for c in frame.columns] if hasattr(frame, "columns") else [frame.to_numpy()]
    for c, v in zip(columns, values, strict=True):
        if v.dtype.kind not in "biuf":
            shown = ", ".join(repr(x) for x in list(dict.fromkeys(v.tolist()))[:3])
            hint = ("map the labels to class ids 0..C-1 first (pandas.factorize)" if where.endswith(" y") else
                    "encode it first (pandas.get_dummies), or train on the table with optiloop train, "
                    "which encodes text and dates")
            raise OptiloopError(f"{where}: column {str(c)!r} is not numeric ({v.dtype}: {shown}); {hint}")
        if v.dtype.kind == "f" and np.isnan(v).any():
            raise OptiloopError(f"{where}: column {str(c)!r} has {int(np.isnan(v).sum())} empty cells (NaN); fill "
                                "them first (e.g. df.fillna(df.median())), or train on the table with optiloop train, "
                                "which fills them")
    arr = np.column_stack(values) if hasattr(frame, "columns") else values[0]
    return arr.astype(np.float32) if arr.dtype.kind == "f" else np.array(arr)  # (copies: pandas gives read-only views)


# --- validation_split ---------------------------------------------------------------------------------
def _class_ids(data: Any) -> np.ndarray | None:
    """The class ids of an in-memory ``(X, y)`` pair, when they are integers; else None."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        return None
    y = data[1]
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype.kind not in "biu":
        return None
    return y


def split_off(data: Any, fraction: float, *, seed: int, classes: np.ndarray | None = None) -> tuple[Any, Any]:
    """(train, validation): ``fraction`` of the rows of in-memory data held out, drawn with ``seed``;
    with ``classes``, that share of each class (stratified). Each part keeps the data's structure
    (a tuple / list / dict of arrays or tensors) and the rows' order."""
    leaves = list(data.values()) if isinstance(data, Mapping) else list(data) if isinstance(data, tuple | list) \
        else [data]
    if not leaves or not all(isinstance(a, torch.Tensor | np.ndarray) for a in leaves):
        raise OptiloopError("validation_split holds out rows of in-memory data ((X, y) arrays, tensors or "
                            "DataFrames); for a DataLoader or Dataset, split it yourself "
                            "(torch.utils.data.random_split) and pass val_data")
    n = len(leaves[0])
    rng = np.random.default_rng(seed)
    if classes is not None and len(classes) == n:
        held = []
        for c in np.unique(classes):
            rows = rng.permutation(np.flatnonzero(classes == c))
            held.append(rows[: int(round(len(rows) * fraction))])
        val_rows = np.sort(np.concatenate(held))
    else:
        val_rows = np.sort(rng.permutation(n)[: int(round(n * fraction))])
    if not 1 <= len(val_rows) <= n - 1:
        raise OptiloopError(f"validation_split={fraction} of {n} rows leaves an empty train or validation part")
    keep = np.ones(n, dtype=bool)
    keep[val_rows] = False
    train_rows = np.flatnonzero(keep)

    def take(rows: np.ndarray) -> Any:
        parts = [a[torch.from_numpy(rows).to(a.device)] if isinstance(a, torch.Tensor) else a[rows] for a in leaves]
        if isinstance(data, Mapping):
            return dict(zip(data.keys(), parts, strict=True))
        return type(data)(parts) if isinstance(data, tuple | list) else parts[0]

    return take(train_rows), take(val_rows)


# --- labels and widths ------------------------------------------------------------------------------
def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that hold parameters themselves, in registration order."""
    return [(n, m) for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def check_pair(model: nn.Module, data: Any, loss: str, name: str) -> None:
    """One line for what would otherwise fail inside the first step with torch's own message:
    float targets for a class loss, a class id beyond the model's output width, an X whose width
    is not what the model's first layer takes."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        return
    X, y = data
    if not all(isinstance(a, torch.Tensor | np.ndarray) for a in (X, y)):
        return
    if loss in CLASS_LOSSES and y.ndim == 1 and (y.dtype.kind == "f" if isinstance(y, np.ndarray)
                                                 else y.is_floating_point()):
        raise OptiloopError(f"{name}: loss={loss!r} takes class ids (integers), but y holds floats ({y.dtype}); "
                            "for classes pass y as integers (y.long() / y.astype(int)); for a regression use "
                            "loss='mse'")
    layers = _layers(model)
    if not layers or X.ndim != 2:
        return
    first_name, first = layers[0]
    last_name, last = layers[-1]
    wide_in = isinstance(first, nn.Linear) and X.shape[1] != first.in_features
    top = int(y.max()) if loss in CLASS_LOSSES and len(y) and y.ndim == 1 else None
    beyond = top is not None and isinstance(last, nn.Linear) and top >= last.out_features
    if not (wide_in or beyond):
        return
    # Registration order need not be the forward's: confirm on two rows before saying anything.
    device = next(model.parameters()).device
    rows = torch.as_tensor(np.asarray(X[:2]) if isinstance(X, np.ndarray) else X[:2]).to(device)
    rows = rows.to(torch.get_default_dtype()) if rows.is_floating_point() else rows
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(rows)
    except RuntimeError:
        if wide_in:
            raise OptiloopError(f"{name}: X has {X.shape[1]} columns (features), but the model's first layer "
                                f"({type(first).__name__} {first_name or 'model'!r}) takes {first.in_features}; "
                                "make them match") from None
        return  # some other failure: the loop's first step says it in torch's words
    finally:
        model.train(was_training)
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.ndim == 2 else None
    if top is not None and width is not None and top >= width:
        raise OptiloopError(f"{name}: class id {top} is beyond the model's output width {width} (its "
                            f"{width} outputs take class ids 0..{width - 1}); give the last layer "
                            f"({type(last).__name__} {last_name!r}) one output per class")
