"""Per-class figures of a classification run: the confusion matrix and each class's precision,
recall, F1 and support, from the run's predictions.

They are counted with numpy (one ``bincount``; the rest is arithmetic on that matrix) rather
than with scikit-learn's ``confusion_matrix`` / ``precision_recall_fscore_support``: importing
``sklearn.metrics`` costs about a second, at the end of every ``train`` and ``eval``, and
``train`` on a file imports no scikit-learn at all otherwise. The tests check every figure
against those two scikit-learn functions (same definitions, ``zero_division=0``).

``optiloop train`` writes them into the run folder for the validation split (with the weights
``predict`` uses: best.pt); ``optiloop eval`` prints them and, with ``--out``, writes them too.

Example:
    >>> r = class_report([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], ["a", "b", "c"])
    >>> r.matrix.tolist(), r.accuracy
    ([[1, 1, 0], [0, 1, 0], [1, 0, 1]], 0.6)
    >>> r.recall.round(2).tolist()
    [0.5, 1.0, 0.5]
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import drawing
from .errors import OptiloopError
from .files import atomic_open

FILES = ("confusion_matrix.csv", "confusion_matrix.png", "per_class.csv")


@dataclass
class ClassReport:
    """The confusion matrix (rows: true class, columns: predicted) and per-class figures.

    Attributes:
        labels: the class names (the user's own label values), in the matrix's order.
        matrix: counts, ``matrix[i, j]`` = samples of class i predicted as class j.
        precision, recall, f1: per class; 0 where undefined (no sample predicted / present).
        support: samples of each class.
    """

    labels: list[Any]
    matrix: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    @property
    def accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(np.trace(self.matrix)) / total if total else float("nan")

    def per_class(self) -> list[dict[str, Any]]:
        """One dict per class: class, precision, recall, f1, support."""
        return [{"class": _plain(c), "precision": float(p), "recall": float(r), "f1": float(f),
                 "support": int(n)}
                for c, p, r, f, n in zip(self.labels, self.precision, self.recall, self.f1, self.support,
                                         strict=True)]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: accuracy, labels, the matrix, per-class figures."""
        return {"accuracy": self.accuracy, "labels": [_plain(c) for c in self.labels],
                "confusion_matrix": self.matrix.tolist(), "per_class": self.per_class()}

    def format(self) -> str:
        """The per-class table and the matrix as aligned text for the terminal."""
        names = [str(c) for c in self.labels]
        w = max(5, *(len(n) for n in names))
        lines = [f"{'class':<{w}}  precision  recall      f1  support"]
        for n, row in zip(names, self.per_class(), strict=True):
            lines.append(f"{n:<{w}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['f1']:>6.4f}  "
                         f"{row['support']:>7d}")
        cell = max(4, *(len(n) for n in names), len(str(int(self.matrix.max(initial=0)))))
        lines += ["", "confusion matrix (rows: true class, columns: predicted)",
                  f"{'':<{w}}  " + " ".join(f"{n:>{cell}}" for n in names)]
        for n, counts in zip(names, self.matrix, strict=True):
            lines.append(f"{n:<{w}}  " + " ".join(f"{int(c):>{cell}d}" for c in counts))
        return "\n".join(lines)

    def write(self, folder: str | Path, *, title: str | None = None) -> list[str]:
        """confusion_matrix.csv, confusion_matrix.png and per_class.csv into ``folder`` (each
        written atomically); returns their names."""
        folder = Path(folder)
        names = [_plain(c) for c in self.labels]
        with atomic_open(folder / "confusion_matrix.csv", "w") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted", *names])
            w.writerows([name, *map(int, counts)] for name, counts in zip(names, self.matrix, strict=True))
        with atomic_open(folder / "per_class.csv", "w") as f:
            w = csv.DictWriter(f, fieldnames=["class", "precision", "recall", "f1", "support"])
            w.writeheader()
            w.writerows(self.per_class())
        drawing.draw("plot_confusion", self.matrix, names, folder / "confusion_matrix.png",
                     title=title or f"confusion matrix: accuracy {self.accuracy:.4f} on {int(self.matrix.sum())} "
                     "samples")
        return list(FILES)


def class_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[Any]) -> ClassReport:
    """Per-class figures from class ids (``0 .. len(labels) - 1``).

    Args:
        y_true, y_pred: the true and predicted class id of each sample.
        labels: the name of each class id; every class gets a row, present or not.
    """
    truth, pred = np.asarray(y_true, dtype=np.int64).reshape(-1), np.asarray(y_pred, dtype=np.int64).reshape(-1)
    n = len(labels)
    if len(truth) == 0 or len(truth) != len(pred):
        raise OptiloopError(f"a confusion matrix needs as many predictions as labels, at least one (got "
                            f"{len(truth)} labels, {len(pred)} predictions)")
    if min(truth.min(), pred.min()) < 0 or max(truth.max(), pred.max()) >= n:
        raise OptiloopError(f"class ids must lie in 0..{n - 1} (one per label)")
    matrix = np.bincount(truth * n + pred, minlength=n * n).reshape(n, n)
    hits, support, predicted = np.diag(matrix).astype(float), matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(n), where=both > 0)
    return ClassReport(list(labels), matrix, precision, recall, f1, support)


def run_class_report(run: Any, X: Any, y: Any, *, where: str = "data", batch_size: int = 1024) -> ClassReport:
    """The report of a loaded classification run (``optiloop.load``) on rows ``X`` with labels
    ``y`` in the user's own values; an unknown label is a one-line error."""
    if run.task != "classification":
        raise OptiloopError("a confusion matrix is for classification runs; this run is a regression")
    prep = run.preprocessing
    truth = prep.targets(y, where)
    predicted = run.predict_proba(X, batch_size=batch_size).argmax(axis=1)
    return class_report(np.asarray(truth), predicted, prep.classes)


def _plain(v: Any) -> Any:
    """numpy scalars as Python ones (JSON and CSV write them as the user wrote them)."""
    return v.item() if isinstance(v, np.generic) else v
