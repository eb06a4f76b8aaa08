"""``predict``: a trained module's outputs on new inputs, batched, in order, without gradients.

It takes whatever ``fit`` takes as inputs: tensors, numpy arrays, pandas DataFrames (their values,
in column order), an ``(X, y)`` pair (``y`` is ignored) or a DataLoader (the first element of each
batch is the input). A run folder's model, with its preprocessing and labels, is ``optiloop.load``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import resolve_device
from .errors import OptiloopError


def predict(model: nn.Module, data: Any, *, batch_size: int = 1024,
            device: str | torch.device | None = None) -> torch.Tensor | list[Any]:
    """The outputs of ``model`` on ``data``, one row per input row, on the CPU.

    The model runs in eval mode under ``torch.no_grad()`` and gets its train / eval mode back
    afterwards.

    Args:
        model: any module, e.g. one ``fit`` trained.
        data: a tensor, numpy array or DataFrame of inputs, an ``(X, y)`` tuple, or an iterable of
            batches such as a DataLoader (a tuple / list batch contributes its first element).
        batch_size: rows per forward pass for in-memory inputs.
        device: where to run; None: where the model's parameters are (the CPU if it has none).

    Returns:
        The outputs concatenated along the first dimension (a tensor); a list of the per-batch
        outputs if the model returns something other than a tensor.

    Example:
        >>> import torch, optiloop as ol
        >>> ol.predict(torch.nn.Linear(3, 2), torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """
    if not isinstance(model, nn.Module):
        raise OptiloopError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptiloopError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if device is None:
        first = next(model.parameters(), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
        model.to(dev)
    was_training = model.training
    model.eval()
    outputs: list[Any] = []
    try:
        with torch.no_grad():
            for x in _batches(data, batch_size):
                out = model(x.to(dev) if isinstance(x, torch.Tensor) else x)
                outputs.append(out.cpu() if isinstance(out, torch.Tensor) else out)
    finally:
        model.train(was_training)
    if not outputs:
        raise OptiloopError("predict got no inputs (0 rows)")
    if all(isinstance(o, torch.Tensor) for o in outputs):
        return torch.cat(outputs)
    return outputs


def as_tensor(X: Any) -> torch.Tensor:
    """Inputs as one tensor: floats in torch's default dtype (a numpy float64 array would not
    match the model's float32 weights), a DataFrame by its values."""
    if hasattr(X, "to_numpy") and hasattr(X, "columns"):  # a pandas DataFrame, without importing pandas
        X = X.to_numpy()
    if isinstance(X, torch.Tensor):
        return X
    try:
        arr = np.asarray(X)
    except (ValueError, TypeError):
        raise OptiloopError(f"inputs must be a tensor, an array or a DataFrame, got {type(X).__name__}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise OptiloopError(f"inputs must be numeric, got an array of {arr.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.to(torch.get_default_dtype()) if t.is_floating_point() else t


def _batches(data: Any, batch_size: int) -> Iterator[Any]:
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], (int, float)):
        data = data[0]  # an (X, y) pair: the inputs
    if isinstance(data, (torch.Tensor, np.ndarray, list)) or hasattr(data, "columns"):
        X = as_tensor(data)
        for start in range(0, len(X), batch_size):
            yield X[start:start + batch_size]
        return
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Iterable):
        raise OptiloopError("a map-style Dataset: wrap it in a DataLoader (or pass its tensors)")
    if isinstance(data, Iterable):  # a DataLoader or any iterable of batches
        for batch in data:
            yield batch[0] if isinstance(batch, (tuple, list)) else batch
        return
    raise OptiloopError(f"cannot predict on {type(data).__name__}: pass a tensor, an array, a "
                        "DataFrame, an (X, y) pair or a DataLoader")
