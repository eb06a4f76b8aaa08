"""A run loaded back: :func:`load` makes a :class:`Run` that predicts on new rows.

Everything it needs (preprocessing statistics, feature names and order, the original labels, the
task, the model's constructor and arguments) travels in the checkpoint, under
``config["inference"]``, as plain data: checkpoints stay loadable with
``torch.load(weights_only=True)``, and the training data may be gone.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..checkpoint_checks import check_run_checkpoint
from ..config import validate
from ..datasets import split
from ..errors import OptiloopError
from ..files import atomic_open
from ..inference import predict
from ..loop import evaluate
from ..models import build_model
from ..preprocessing import Preprocessing
from ..recipes import rebuild
from ..sources import find_source
from ..training_state import inference_weights, load_model_weights
from .task import INFERENCE, build_task, run_dataset


class _OriginalUnits(nn.Module):
    """The model with its regression output put back into the target's units."""

    def __init__(self, model: nn.Module, mean: float, scale: float):
        super().__init__()
        self.model, self.mean, self.scale = model, mean, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale + self.mean


class Run:
    """A trained run, ready to apply to new rows (``optiloop.load`` makes one).

    Attributes:
        model: the trained module, in eval mode, on the CPU.
        preprocessing: the run's :class:`Preprocessing` (features, labels, scalers).
        config: the run's resolved config.
        checkpoint: the file the weights came from; ``epoch``: the epoch they are from.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, config: dict[str, Any],
                 checkpoint: Path, epoch: int | None, input_shape: Sequence[int] | None = None):
        self.model, self.preprocessing, self.config = model.eval(), preprocessing, config
        self.checkpoint, self.epoch = checkpoint, epoch
        self.input_shape = tuple(input_shape) if input_shape else None  # per row, when not flat (fit's images)

    @property
    def task(self) -> str:
        return self.preprocessing.task

    @property
    def features(self) -> list[str]:
        return list(self.preprocessing.features)

    @property
    def classes(self) -> list[Any]:
        return list(self.preprocessing.classes)

    def __repr__(self) -> str:
        return (f"Run({str(self.checkpoint)!r}, {self.task}, {len(self.features)} features"
                + (f", classes {self.classes}" if self.classes else "") + ")")

    def _outputs(self, X: Any, batch_size: int, where: str = "X") -> torch.Tensor:
        return predict(self.model, self._inputs(X, where), batch_size=batch_size)

    def _inputs(self, X: Any, where: str) -> np.ndarray:
        rows = self.preprocessing.inputs(X, where)
        return rows.reshape(len(rows), *self.input_shape) if self.input_shape else rows

    def predict(self, X: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Predicted labels (the original values) for classification, the value in the target's
        original units for regression; one per row.

        Args:
            X: a DataFrame or a mapping of columns (matched by name: order free, extra columns such
                as the label ignored), or an array / tensor with the features in training order.
        """
        return np.asarray(self.preprocessing.labels_of(self._outputs(X, batch_size)))

    def predict_proba(self, X: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities, one row per input, columns in the order of ``classes``."""
        if self.task != "classification":
            raise OptiloopError("predict_proba is for classification runs; this run is a regression "
                                "(predict gives values in the target's units)")
        return self.preprocessing.probabilities(self._outputs(X, batch_size))

    def evaluate(self, X: Any, y: Any, *, batch_size: int = 256, device: str = "cpu",
                 where: str = "data") -> dict[str, float]:
        """The run's loss and metrics on rows ``X`` with labels ``y`` (original values).
        Regression figures are in the target's original units."""
        prep = self.preprocessing
        inputs, targets = self._inputs(X, where), prep.targets(y, where)
        model: nn.Module = self.model
        if prep.y_scaler is not None:  # compare in the user's units, not the standardized ones
            targets = np.asarray(y, dtype=np.float32).reshape(-1)
            model = _OriginalUnits(self.model, float(prep.y_scaler.mean_[0]), float(prep.y_scaler.scale_[0]))
        t = self.config["train"]
        loss = t.get("loss", "mse" if prep.task == "regression" else "cross_entropy")
        metrics = t.get("metrics", ["mae"] if prep.task == "regression" else ["accuracy"])
        try:
            return evaluate(model, (inputs, targets), loss=loss, metrics=metrics, batch_size=batch_size,
                            device=device)
        finally:
            self.model.cpu().eval()

    def validation_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The run's own validation split, rebuilt from its data (which must still be there):
        raw features and original labels."""
        d = self.config.get("data")
        if d is None:
            raise OptiloopError("it was trained by fit() on data of its own, which optiloop cannot load again")
        ds = run_dataset(d)
        raw = split(ds, val_fraction=d["val_fraction"], seed=d["seed"])
        y = np.asarray(ds.classes, dtype=object)[raw.y_val] if ds.task == "classification" else raw.y_val
        return raw.X_val, y


def load(run: str | os.PathLike, *, checkpoint: str = "best") -> Run:
    """Load a run folder (or one of its checkpoints) as a :class:`Run` that predicts on new rows.

    Only the checkpoint is read: the training data may be gone. Loading runs no code from the file
    (``weights_only=True``); a run whose model is ``package.module:function`` imports that module.

    Args:
        run: a run folder (``runs/NAME``) or a ``.pt`` file in one.
        checkpoint: in a folder, ``"best"`` (best.pt, else last.pt) or ``"last"``.

    Example:
        >>> model = ol.load("runs/NAME")                               # doctest: +SKIP
        >>> model.predict(df), model.predict_proba(df), model.classes  # doctest: +SKIP
    """
    path = Path(run)
    sharded = (path / ".metadata").is_file()  # a sharded (FSDP) checkpoint folder itself
    if path.is_dir() and not sharded:
        if checkpoint not in ("best", "last"):
            raise OptiloopError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        names = ["best.pt", "last.pt"] if checkpoint == "best" else ["last.pt"]
        found = [path / n for name in names for n in (name, name.removesuffix(".pt"))  # X.pt, or X/ (FSDP)
                 if (path / n).exists()]
        if not found:
            raise OptiloopError(f"{path} holds no {' or '.join(names)}: is it a run folder of optiloop "
                                "train? (a compare run keeps checkpoints only when asked: checkpoints=True)")
        path = found[0]
        sharded = path.is_dir()
    elif not path.exists():
        raise OptiloopError(f"no run folder or checkpoint at {path}")
    if sharded:  # consolidated on this process: the model whole, no optimizer
        from ..sharded import read_consolidated  # torch.distributed.checkpoint: sharded runs only

        ckpt = read_consolidated(path)
    else:
        ckpt = load_checkpoint(path)
    check_run_checkpoint(ckpt, path)  # each part of the type optiloop writes, before any is used
    raw = ckpt["config"]
    cfg = {k: v for k, v in raw.items() if k != INFERENCE}
    info = raw.get(INFERENCE)
    if info is None:  # a run from before checkpoints carried their preprocessing: rebuild it
        task = build_task(validate(cfg))
        info, cfg = task.inference(), task.config
    m = info["model"]
    if "name" in m:  # optiloop train's model: a built-in name or package.module:function
        model = build_model(m["name"], m["in_features"], m["out_features"], **m["options"])
    else:  # fit(out=...)'s: an import path and its arguments, or why there is none
        model = rebuild(m, path)
    if info.get("preprocessing") is None:
        raise OptiloopError(f"{path}: {info.get('no_rows', 'its inputs are not rows of features')}, so optiloop "
                            "cannot apply it to rows of a file; in Python: ol.load_checkpoint(...)['model'] holds "
                            "the weights")
    load_model_weights(model, inference_weights(ckpt))  # an EMA / SWA average where the run validated one
    return Run(model, Preprocessing.from_state_dict(info["preprocessing"]), cfg, path, ckpt.get("epoch"),
               info.get("input_shape"))


# --- new rows from files -----------------------------------------------------------------------
def read_rows(spec: str, run: Run, *, target: str | None = None, need_labels: bool = False,
              what: str = "data", target_arg: str = "target") -> tuple[Any, np.ndarray | None]:
    """Rows to apply ``run`` to, read by the spec's source (``optiloop.sources``): a CSV (columns by
    name; the label column optional), an ``.npz`` (``X`` by position, ``y`` optional), a built-in
    data set or ``package.module:function``.
    ``what`` and ``target_arg`` name the arguments in error messages (the CLI: --data, --target).

    Returns:
        (the features: a mapping of columns or an array, the labels in original values or None).
    """
    return find_source(spec).rows(spec, run.features, run.task, target=target or run.preprocessing.target,
                                  need_labels=need_labels, what=what, target_arg=target_arg)


def prediction_table(run: Run, X: Any, *, batch_size: int = 1024, where: str = "X"
                     ) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of a predictions file: the predicted label (or value), then one
    probability column per class (``proba_<label>``) for classification."""
    prep = run.preprocessing
    outputs = run._outputs(X, batch_size, where)
    predicted = prep.labels_of(outputs)
    if prep.task != "classification":
        return [prep.target], [[_cell(v)] for v in predicted]
    proba = prep.probabilities(outputs)
    header = [prep.target, *(f"proba_{c}" for c in prep.classes)]
    return header, [[_cell(label), *(_cell(p) for p in row)] for label, row in zip(predicted, proba, strict=True)]


def _cell(v: Any) -> Any:
    """Numbers with every digit a float32 has (so a file round-trips); labels as they are."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.9g}"
    return v.item() if isinstance(v, np.generic) else v


def write_csv_rows(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file, atomically."""
    with atomic_open(path, "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
